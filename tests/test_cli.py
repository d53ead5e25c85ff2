"""Command line and run grid shared by the dataset scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import al_loop
import experiment
from data_common import REPO_ROOT

NAMESPACE = {
    "__doc__": "Toy dataset script for the tests.",
    "START_SIZE": 20,
    "BATCH_SIZE": 10,
    "N_STEPS": 1,
    "N_SEEDS": 1,
    "STRATEGIES": ["random", "entropy"],
    "POOL_SUBSAMPLE": 0,
    "EPOCHS": 1,
    "FIT_BATCH_SIZE": 32,
    "LEARNING_RATE": 1e-3,
    "VAL_FRACTION": 0.0,
    "PATIENCE": 0,
    "CLASS_WEIGHT": "none",
    "CONV_FILTERS": (32, 64),
    "USE_BIAS": True,
    "_PRIVATE": 1,
    "lowercase": 2,
    "NOT_A_HYPERPARAMETER": {"a": 1},
}


def parse(*argv):
    return experiment.parse_config("toy", experiment.hyperparameters(NAMESPACE), list(argv))


# --------------------------------------------------------------------------- hyperparameters
def test_hyperparameters_are_the_public_upper_case_constants():
    hp = experiment.hyperparameters(NAMESPACE)
    assert "start_size" in hp and hp["strategies"] == ["random", "entropy"]
    assert not {"_private", "lowercase", "not_a_hyperparameter", "__doc__"} & set(hp)


def test_mnist_script_defines_every_loop_and_grid_key():
    import mnist
    hp = experiment.hyperparameters(vars(mnist))
    assert set(al_loop.LOOP_KEYS) | set(experiment.GRID_KEYS) <= set(hp)


# --------------------------------------------------------------------------- parse_config
def test_defaults_become_the_run_config():
    config, grid, args = parse()
    assert config["start_size"] == 20 and config["learning_rate"] == 1e-3
    assert config["conv_filters"] == [32, 64]
    assert grid == {"n_seeds": 1, "strategies": ["random", "entropy"]}
    assert args.results_dir == REPO_ROOT / "results"
    assert args.fresh is False and args.first_seed == 0


def test_grid_keys_are_not_in_the_run_config():
    config, grid, _ = parse()
    assert not set(experiment.GRID_KEYS) & set(config)
    assert set(grid) == set(experiment.GRID_KEYS)


def test_int_option_is_parsed_as_int():
    config, _, _ = parse("--epochs", "3")
    assert config["epochs"] == 3 and isinstance(config["epochs"], int)


def test_float_and_string_options_keep_their_types():
    config, _, _ = parse("--learning-rate", "0.01", "--class-weight", "balanced")
    assert config["learning_rate"] == 0.01 and config["class_weight"] == "balanced"


def test_list_option_is_comma_separated():
    _, grid, _ = parse("--strategies", "random, entropy,")
    assert grid["strategies"] == ["random", "entropy"]


def test_list_option_items_take_the_type_of_the_default_items():
    config, _, _ = parse("--conv-filters", "8,16")
    assert config["conv_filters"] == [8, 16]


def test_list_option_with_an_item_of_the_wrong_type_exits(capsys):
    with pytest.raises(SystemExit) as err:
        parse("--conv-filters", "8,wide")
    assert err.value.code == 2
    assert "--conv-filters" in capsys.readouterr().err


def test_list_option_given_its_default_value_gives_the_default_config():
    # Passing the default explicitly must not change the run config: a resumed run compares
    # configs, so ["32", "64"] vs [32, 64] would raise ConfigMismatchError for the same setting.
    default, _, _ = parse()
    explicit, _, _ = parse("--conv-filters", "32,64")
    assert explicit == default


@pytest.mark.parametrize("text, expected", [("true", True), ("1", True), ("False", False), ("no", False)])
def test_bool_option_accepts_words(text, expected):
    config, _, _ = parse("--use-bias", text)
    assert config["use_bias"] is expected


@pytest.mark.parametrize("flag", ["--seeds", "--n-seeds"])
def test_seeds_is_an_alias_for_n_seeds(flag):
    _, grid, _ = parse(flag, "2")
    assert grid["n_seeds"] == 2


def test_quick_caps_values_and_writes_to_results_quick():
    config, grid, args = experiment.parse_config(
        "toy", {**experiment.hyperparameters(NAMESPACE), "n_steps": 9, "epochs": 30, "n_seeds": 10},
        ["--quick"])
    assert grid["n_seeds"] == 2 and config["n_steps"] == 2 and config["epochs"] == 2
    assert args.results_dir == REPO_ROOT / "results" / "quick"


def test_quick_keeps_values_below_the_caps():
    config, grid, _ = parse("--quick", "--epochs", "1")
    assert config["epochs"] == 1 and config["n_steps"] == 1 and grid["n_seeds"] == 1


def test_quick_respects_an_explicit_results_dir(tmp_path):
    _, _, args = parse("--quick", "--results-dir", str(tmp_path))
    assert args.results_dir == tmp_path


def test_relative_results_dir_resolves_from_the_repository(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _, _, args = parse("--results-dir", "results/other")
    assert args.results_dir == REPO_ROOT / "results" / "other"


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--start-size", "-5"], ["--epochs", "0"],
                                  ["--seeds", "0"]])
def test_non_positive_sizes_exit(argv):
    with pytest.raises(SystemExit) as err:
        parse(*argv)
    assert "must be positive" in str(err.value.code)


def test_wrong_type_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        parse("--epochs", "many")
    assert err.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_help_exits_zero_and_lists_the_options(capsys):
    with pytest.raises(SystemExit) as err:
        parse("--help")
    assert err.value.code == 0
    out = capsys.readouterr().out
    for option in ("--start-size", "--batch-size", "--strategies", "--seeds", "--quick", "--fresh",
                   "--results-dir", "--data-dir", "--jobs"):
        assert option in out


# --------------------------------------------------------------------------- main
def toy_load_data_factory(dataset):
    calls = []

    def load_data(config, data_dir=None):
        calls.append((config, data_dir))
        return dataset
    return load_data, calls


def test_main_runs_the_grid_and_logs_it(tmp_path, synthetic_dataset, build_model, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "_DATA_CACHE", {})
    load_data, calls = toy_load_data_factory(synthetic_dataset)
    results = experiment.main("toy", NAMESPACE, load_data, build_model,
                              ["--jobs", "1", "--results-dir", str(tmp_path)])
    assert len(results) == 2 and all(r["complete"] for r in results)
    assert len(calls) == 1, "the dataset is loaded once per process"
    folder = tmp_path / "toy"
    for strategy in ("random", "entropy"):
        run = json.loads((folder / f"{strategy}_seed0.json").read_text())
        assert run["complete"] and len(run["steps"]) == 2
        assert set(run["config"]) == set(experiment.hyperparameters(NAMESPACE)) - set(experiment.GRID_KEYS)
        assert (folder / "state" / f"{strategy}_seed0.json").exists()
    log = [json.loads(line) for line in (folder / "state" / "grid_log.jsonl").read_text().splitlines()]
    assert len(log) == 1
    assert log[0]["n_runs"] == 2 and log[0]["jobs"] == 1 and log[0]["seeds"] == [0]
    assert log[0]["strategies"] == ["random", "entropy"] and log[0]["wall_seconds"] >= 0
    assert "done in" in capsys.readouterr().out


def test_main_with_a_dataset_name_computed_from_the_config(tmp_path, synthetic_dataset, build_model,
                                                           monkeypatch):
    monkeypatch.setattr(experiment, "_DATA_CACHE", {})
    load_data, _ = toy_load_data_factory(synthetic_dataset)
    experiment.main(lambda config: f"toy_{config['class_weight']}", NAMESPACE, load_data, build_model,
                    ["--jobs", "1", "--results-dir", str(tmp_path), "--strategies", "random",
                     "--n-steps", "0", "--first-seed", "3"])
    assert (tmp_path / "toy_none" / "random_seed3.json").exists()
    assert (tmp_path / "toy_none" / "state" / "grid_log.jsonl").exists()


def test_main_rejects_unknown_strategies_before_running(tmp_path, build_model):
    def load_data(config, data_dir=None):
        raise AssertionError("must not load data")

    with pytest.raises(SystemExit, match="nope"):
        experiment.main("toy", NAMESPACE, load_data, build_model,
                        ["--strategies", "random,nope", "--results-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def load_toy(config, data_dir=None):
    """Module-level (picklable) loader for the worker-process test."""
    from conftest import make_synthetic_dataset
    return make_synthetic_dataset()


@pytest.mark.slow
def test_main_with_parallel_jobs_writes_the_same_runs(tmp_path, build_model):
    from conftest import tiny_build_model
    results = experiment.main("toy", NAMESPACE, load_toy, tiny_build_model,
                              ["--jobs", "2", "--results-dir", str(tmp_path), "--n-steps", "0"])
    assert sorted(r["strategy"] for r in results) == ["entropy", "random"]
    for strategy in ("random", "entropy"):
        assert json.loads((tmp_path / "toy" / f"{strategy}_seed0.json").read_text())["complete"]
    log = json.loads((tmp_path / "toy" / "state" / "grid_log.jsonl").read_text())
    assert log["jobs"] == 2


# --------------------------------------------------------------------------- scripts from code/
def test_plot_perf_help_works_from_inside_code():
    proc = subprocess.run([sys.executable, "plot_perf.py", "--help"], cwd=REPO_ROOT / "code",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--results-dir" in proc.stdout


def test_mnist_help_works_from_inside_code():
    proc = subprocess.run([sys.executable, "mnist.py", "--help"], cwd=REPO_ROOT / "code",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--start-size" in proc.stdout
