"""Bad input through the script entry point: a clear ``error: ...`` naming the problem, no traceback."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

import mitbih
import mnist
import plot_perf
from al import cli, grid
from al.data_common import REPO_ROOT, Dataset
from conftest import (NAMESPACE, make_synthetic_dataset, tiny_build_model, toy_load_data, write_csv,
                      write_mnist)


@pytest.fixture
def no_workers(monkeypatch):
    """Fail the test if the grid is started: errors must come before any worker."""
    def fail(*args, **kwargs):
        raise AssertionError("the grid was started despite bad input")
    monkeypatch.setattr(grid, "run_grid", fail)


def main_error(dataset, namespace, load_data, argv, build_model=tiny_build_model) -> str:
    with pytest.raises(SystemExit) as err:
        cli.main(dataset, namespace, load_data, build_model, argv)
    message = str(err.value.code)
    assert message.startswith("error: "), message
    return message


# --------------------------------------------------------------------------- dataset files
def test_partial_mnist_folder_gives_a_clean_error_from_the_script(tmp_path):
    folder = write_mnist(tmp_path / "mnist")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    proc = subprocess.run([sys.executable, "code/mnist.py", "--data-dir", str(folder),
                           "--results-dir", str(tmp_path / "results")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "t10k-labels-idx1-ubyte.gz" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_truncated_mnist_file_names_the_file(isolated, no_workers):
    folder = write_mnist(isolated / "mnist")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    message = main_error("mnist", vars(mnist), mnist.load_data,
                         ["--data-dir", str(folder), "--results-dir", str(isolated / "r")])
    assert str(path) in message and "truncated" in message


def test_mnist_file_of_the_wrong_kind_names_the_file(isolated, no_workers):
    folder = write_mnist(isolated / "mnist")
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not an idx file at all")
    message = main_error("mnist", vars(mnist), mnist.load_data,
                         ["--data-dir", str(folder), "--results-dir", str(isolated / "r")])
    assert "train-labels-idx1-ubyte.gz" in message and "not an idx file" in message


def test_corrupt_mitbih_csv_gives_a_clean_error(isolated, no_workers):
    folder = isolated / "mitbih"
    folder.mkdir()
    write_csv(folder / "mitbih_train.csv", 20, n_columns=50)  # wrong number of columns
    write_csv(folder / "mitbih_test.csv", 10)
    message = main_error(mitbih.results_name, vars(mitbih), mitbih.load_data,
                         ["--data-dir", str(folder), "--results-dir", str(isolated / "r")])
    assert "mitbih_train.csv" in message


def test_unknown_mitbih_split_gives_a_clean_error(tmp_path, no_workers):
    message = main_error(mitbih.results_name, vars(mitbih), mitbih.load_data,
                         ["--split", "diagonal", "--results-dir", str(tmp_path)])
    assert "diagonal" in message and "intra" in message


@pytest.mark.parametrize("broken, problem", [
    (dict(y_train=np.full(300, 7)), "labels must lie in 0..2"),
    (dict(y_test=np.zeros(3, dtype=np.int64)), "100 samples but 3 labels"),
    (dict(x_test=np.zeros((100, 3), dtype=np.float32)),
     "train samples have shape (2,) but test samples (3,)"),
])
def test_dataset_whose_labels_or_shapes_do_not_match(tmp_path, no_workers, broken, problem):
    good = make_synthetic_dataset()

    def load(config, data_dir=None):
        arrays = {k: getattr(good, k) for k in ("x_train", "y_train", "x_test", "y_test")}
        return Dataset(**{**arrays, **broken}, class_names=good.class_names, source="toy files")

    message = main_error("toy", NAMESPACE, load, ["--results-dir", str(tmp_path)])
    assert problem in message and "toy files" in message


# --------------------------------------------------------------------------- options
def test_budget_larger_than_the_pool_is_refused_before_workers_start(tmp_path, no_workers):
    message = main_error("toy", NAMESPACE, toy_load_data,
                         ["--n-steps", "100", "--jobs", "2", "--results-dir", str(tmp_path)])
    assert "= 1020 labels" in message and "only 300 samples" in message
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, problem", [
    (["--fit-batch-size", "0"], "--fit-batch-size must be a positive integer"),
    (["--n-steps", "-1"], "--n-steps must be 0 or a positive integer"),
    (["--pool-subsample", "-5"], "--pool-subsample must be 0 or a positive integer"),
    (["--pool-subsample", "5"], "--pool-subsample (5) must be 0 (off) or at least --batch-size"),
    (["--val-fraction", "1.0"], "--val-fraction must be in [0, 1)"),
    (["--class-weight", "heavy"], "--class-weight must be one of"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--retries", "-1"], "--retries must be at least 0"),
    (["--first-seed", "-1"], "--first-seed must be at least 0"),
    (["--address", "auto"], "--address needs --backend ray"),
    (["--strategies", ","], "--strategies is empty"),
    (["--strategies", "random,oracle"], "unknown strategies ['oracle']"),
])
def test_bad_options_are_named(tmp_path, no_workers, argv, problem):
    assert problem in main_error("toy", NAMESPACE, toy_load_data, argv + ["--results-dir", str(tmp_path)])


def test_unknown_backend_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model, ["--backend", "slurm"])
    assert err.value.code == 2 and "--backend" in capsys.readouterr().err


def test_unknown_dataset_in_run_sh_is_named_before_any_setup():
    proc = subprocess.run(["bash", "run.sh", "--quick"], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "DATASETS": "mnist cifar"}, timeout=60)
    assert proc.returncode == 2
    assert "unknown dataset 'cifar'" in proc.stderr and "mnist mitbih" in proc.stderr


# Results folders holding other configs, other data or modified files: test_cli.py and
# test_fault_tolerance.py.


# --------------------------------------------------------------------------- plot_perf
def test_plot_perf_on_a_missing_results_dir_says_so(tmp_path, capsys):
    assert plot_perf.main(["--results-dir", str(tmp_path / "absent")]) == 1
    assert "No results folder" in capsys.readouterr().err


def test_plot_perf_on_an_empty_results_dir_says_so(tmp_path, capsys):
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 1
    assert "No run files" in capsys.readouterr().err
