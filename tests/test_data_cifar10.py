"""CIFAR-10: the batch-folder loader, its lookup order and errors, and a quick run of code/cifar10.py.

No CIFAR-10 copy exists here: every test writes a tiny ``cifar-10-batches-py`` folder of the
official format (pickled dicts with ``b"data"`` uint8 (n, 3072) and ``b"labels"``).
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

import cifar10
from al import cli, data_common, loop, runs
from al.data_cifar10 import CLASS_NAMES, FILES, SUBFOLDER, load_cifar10, read_batch
from al.data_common import REPO_ROOT, DataCorruptError, DataNotFoundError
from al.keras_ops import embed_and_predict


def write_batch(path, data, labels, protocol=2):
    batch = {b"batch_label": path.name.encode(), b"labels": list(map(int, labels)), b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def write_cifar(folder, n_per_batch=8, n_test=10, seed=0):
    """The six batch files with random images; labels cycle through the 10 classes. Returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, name in enumerate(FILES):
        n = n_test if name == "test_batch" else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = (np.arange(n) + i) % 10
        write_batch(folder / name, data, labels)
        arrays[name] = (data, labels)
    return arrays


@pytest.fixture
def no_download(monkeypatch):
    """keras.datasets.cifar10.load_data fails as it does offline (and records that it was asked)."""
    import keras
    calls = []

    def offline():
        calls.append(1)
        raise OSError("no internet here")
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    return calls


# --------------------------------------------------------------------------- reading the batches
def test_batches_load_as_channels_last_images_in_0_1_with_their_labels(isolated):
    arrays = write_cifar(isolated / "c10")
    data = load_cifar10(isolated / "c10", allow_download=False)
    assert data.x_train.shape == (40, 32, 32, 3) and data.x_test.shape == (10, 32, 32, 3)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    raw = arrays["data_batch_1"][0][0].astype(np.float32) / np.float32(255.0)  # first image's 3072 values
    image = data.x_train[0]
    assert image[0, 0, 0] == raw[0]       # red of pixel (0, 0)
    assert image[0, 0, 1] == raw[1024]    # green: the second 1024 values
    assert image[0, 0, 2] == raw[2048]    # blue: the third
    assert image[0, 1, 0] == raw[1]       # row-major: next column
    assert image[1, 0, 0] == raw[32]      # next row
    assert image[31, 31, 2] == raw[3071]
    expected_train = np.concatenate([arrays[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert np.array_equal(data.y_train, expected_train)  # batches 1..5 in order
    assert np.array_equal(data.y_test, arrays["test_batch"][1])
    assert data.class_names == CLASS_NAMES and len(CLASS_NAMES) == 10


def test_provenance_names_the_kind_of_copy_and_hashes_the_content(isolated):
    write_cifar(isolated / "a")
    write_cifar(isolated / "b" / SUBFOLDER)
    write_cifar(isolated / "other", seed=1)
    a, b = load_cifar10(isolated / "a"), load_cifar10(isolated / "b")
    assert a.provenance()["origin"] == "CIFAR-10 python batches"
    assert a.provenance() == b.provenance() and len(a.sha256) == 64
    assert load_cifar10(isolated / "other").sha256 != a.sha256


def test_a_batch_written_with_the_newest_pickle_protocol_reads_too(isolated):
    folder = isolated / "c10"
    write_cifar(folder)
    write_batch(folder / "test_batch", np.zeros((3, 3072), np.uint8), [1, 2, 3],
                protocol=pickle.HIGHEST_PROTOCOL)
    assert list(load_cifar10(folder).y_test) == [1, 2, 3]


# --------------------------------------------------------------------------- lookup order
def test_data_dir_comes_before_al_data_dir_which_comes_before_the_repo_data_folder(isolated, monkeypatch):
    write_cifar(isolated / "given", seed=1)
    write_cifar(isolated / "env" / "cifar10", seed=2)
    write_cifar(data_common.DEFAULT_DATA_ROOT / "cifar10" / SUBFOLDER, seed=3)
    monkeypatch.setenv("AL_DATA_DIR", str(isolated / "env"))
    sources = [load_cifar10(isolated / "given").source, load_cifar10().source]
    monkeypatch.delenv("AL_DATA_DIR")
    sources.append(load_cifar10().source)
    expected = [isolated / "given", isolated / "env" / "cifar10",
                data_common.DEFAULT_DATA_ROOT / "cifar10" / SUBFOLDER]
    assert [s.split(" in ")[-1] for s in sources] == [str(p) for p in expected]


def test_the_keras_download_is_the_last_resort(isolated, monkeypatch):
    import keras
    rng = np.random.default_rng(0)
    fake = ((rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.arange(6)[:, None] % 10),
            (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), np.arange(4)[:, None] % 10))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: fake)
    data = load_cifar10()
    assert data.origin == "keras.datasets.cifar10" and data.x_train.shape == (6, 32, 32, 3)
    assert data.y_train.shape == (6,) and np.array_equal(data.x_test, fake[1][0] / np.float32(255.0))
    write_cifar(isolated / "here")
    assert load_cifar10(isolated / "here").origin == "CIFAR-10 python batches"


def test_nothing_found_lists_every_path_tried_and_how_to_get_the_data(isolated, no_download, monkeypatch):
    monkeypatch.setenv("AL_DATA_DIR", str(isolated / "env"))
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(isolated / "given")
    message = str(err.value)
    for path in (isolated / "given", isolated / "env" / "cifar10", data_common.DEFAULT_DATA_ROOT / "cifar10"):
        assert str(path) in message
    assert message.index(str(isolated / "given")) < message.index(str(isolated / "env" / "cifar10"))
    assert "keras.datasets.cifar10.load_data() failed: no internet here" in message
    assert "cifar-10-python.tar.gz" in message and "data_batch_1" in message and no_download == [1]


def test_with_download_disabled_keras_is_not_asked(isolated, no_download):
    with pytest.raises(DataNotFoundError, match="download disabled"):
        load_cifar10(allow_download=False)
    assert no_download == []


def test_a_partial_folder_names_the_missing_files(isolated, no_download):
    folder = isolated / "c10"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing \['data_batch_3', 'test_batch'\]"):
        load_cifar10(folder)
    assert no_download == [], "a partial copy is an error, not a reason to download"


# --------------------------------------------------------------------------- corrupt files
def test_a_truncated_batch_names_the_file(isolated):
    folder = isolated / "c10"
    write_cifar(folder)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataCorruptError, match="data_batch_2.*truncated"):
        load_cifar10(folder)


@pytest.mark.parametrize("content, problem", [
    ({b"data": np.zeros((2, 3072), np.uint8)}, "b'labels'"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"shape \(n, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "2 images but 3 labels"),
    ([1, 2, 3], "dict with b'data'"),
])
def test_a_batch_of_the_wrong_content_says_what_is_wrong(tmp_path, content, problem):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)
    with pytest.raises(DataCorruptError, match=problem):
        read_batch(path)


def test_labels_outside_0_to_9_are_refused(isolated):
    folder = isolated / "c10"
    write_cifar(folder)
    write_batch(folder / "test_batch", np.zeros((2, 3072), np.uint8), [3, 10])
    with pytest.raises(DataCorruptError, match="labels must lie in 0..9"):
        load_cifar10(folder)


class _Payload:
    """Unpickling this would create ``marker``: the loader must refuse it instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "was_run"
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataCorruptError, match="refusing to load"):
        read_batch(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- the script
def test_the_script_defines_every_loop_and_grid_key_and_the_low_budget_protocol():
    hp = cli.hyperparameters(vars(cifar10))
    assert (set(loop.LOOP_KEYS) - {"threads"}) | set(cli.GRID_KEYS) <= set(hp) and "threads" not in hp
    assert (hp["start_size"], hp["batch_size"], hp["n_steps"]) == (256, 128, 10)
    assert hp["architecture"] == "cifar_cnn"


def test_the_script_help_works_from_inside_code():
    proc = subprocess.run([sys.executable, "cifar10.py", "--help"], cwd=REPO_ROOT / "code",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--augment-flip" in proc.stdout and "--data-dir" in proc.stdout


def test_a_quick_run_of_the_script_on_a_tiny_folder_writes_complete_run_files(isolated, no_download, capsys):
    folder = isolated / "c10"
    write_cifar(folder)
    results = isolated / "results"
    # Tiny sizes, one step, no augmentation or batch norm: each fresh model's tracing is the cost here.
    argv = ["--quick", "--data-dir", str(folder), "--results-dir", str(results), "--jobs", "1",
            "--seeds", "1", "--dev-size", "0", "--start-size", "8", "--batch-size", "4", "--n-steps", "1",
            "--strategies", "typiclust", "--conv-filters", "4", "--dense-units", "8", "--augment", "0",
            "--batch-norm", "0"]
    (run,) = cli.main("cifar10", vars(cifar10), cifar10.load_data, cifar10.build_model, argv)
    assert run == runs.read_run(results / "cifar10" / "typiclust_seed0.json")
    assert run["complete"] and [s["n_labeled"] for s in run["steps"]] == [8, 12]
    assert run["config"]["architecture"] == "cifar_cnn" and run["config"]["epochs"] == 2
    assert run["provenance"]["data"] == load_cifar10(folder).provenance()
    assert "done in" in capsys.readouterr().out
    assert no_download == []


@pytest.mark.parametrize("augment, flip", [(1, 1), (1, 0), (0, 1)])
def test_the_cifar_cnn_of_the_script_ends_in_a_flat_embedding_and_softmax(augment, flip):
    import keras
    config = {**cli.hyperparameters(vars(cifar10)), "augment": augment, "augment_flip": flip}
    model = cifar10.build_model(config, (32, 32, 3), 10)
    assert model.output_shape == (None, 10) and model.layers[-1].activation.__name__ == "softmax"
    kinds = [type(layer) for layer in model.layers]
    assert (keras.layers.RandomFlip in kinds) == bool(augment and flip)
    assert kinds.count(keras.layers.Conv2D) == 2 * len(config["conv_filters"])
    assert kinds.count(keras.layers.BatchNormalization) == 2 * len(config["conv_filters"])
    features, probs = embed_and_predict(model, np.zeros((3, 32, 32, 3), np.float32))
    assert features.shape == (3, config["dense_units"]) and probs.shape == (3, 10)


def test_a_missing_folder_ends_the_script_with_the_paths_tried(isolated, no_download):
    with pytest.raises(SystemExit) as err:
        cli.main("cifar10", vars(cifar10), cifar10.load_data, cifar10.build_model,
                 ["--data-dir", str(isolated / "nowhere"), "--results-dir", str(isolated / "r")])
    message = str(err.value.code)
    assert message.startswith("error: CIFAR-10 not found") and str(isolated / "nowhere") in message
    assert not (isolated / "r").exists()
