"""al.cli: the command line and the grid driver shared by the dataset scripts."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import subprocess
import sys

import pytest

from al import cli, grid, loop, runs
from al.data_common import REPO_ROOT
from conftest import NAMESPACE, make_synthetic_dataset, tiny_build_model, toy_load_data


def parse(*argv):
    return cli.parse_config("toy", cli.hyperparameters(NAMESPACE), list(argv))


# --------------------------------------------------------------------------- hyperparameters
def test_hyperparameters_are_the_public_upper_case_constants():
    hp = cli.hyperparameters(NAMESPACE)
    assert "start_size" in hp and hp["strategies"] == ["random", "entropy"]
    assert not {"_private", "lowercase", "not_a_hyperparameter", "__doc__"} & set(hp)


@pytest.mark.parametrize("script", ["mnist", "mitbih"])
def test_dataset_scripts_define_every_loop_and_grid_key_but_threads(script):
    # threads comes from --threads (run control), never from a script constant.
    hp = cli.hyperparameters(vars(importlib.import_module(script)))
    assert (set(loop.LOOP_KEYS) - {"threads"}) | set(cli.GRID_KEYS) <= set(hp)
    assert "threads" not in hp


# --------------------------------------------------------------------------- parse_config
def test_defaults_become_the_run_config():
    config, grid_settings, args = parse()
    assert config["start_size"] == 20 and config["learning_rate"] == 1e-3
    assert config["conv_filters"] == [32, 64]
    assert grid_settings == {"n_seeds": 1, "strategies": ["random", "entropy"]}
    assert args.results_dir == REPO_ROOT / "results"
    assert args.fresh is False and args.first_seed == 0


def test_run_config_is_the_hyperparameters_plus_threads():
    config, _, _ = parse()
    assert set(config) == set(cli.hyperparameters(NAMESPACE)) - set(cli.GRID_KEYS) | {"threads"}


def test_threads_default_to_one_whatever_the_jobs():
    assert parse()[0]["threads"] == 1
    assert parse("--jobs", "2")[0]["threads"] == 1
    assert parse("--jobs", "1", "--threads", "3")[0]["threads"] == 3


@pytest.mark.parametrize("value", ["0", "-2"])
def test_non_positive_threads_exit_naming_the_option(value):
    with pytest.raises(SystemExit) as err:
        parse("--threads", value)
    assert "--threads must be a positive integer" in str(err.value.code)


def test_grid_keys_are_not_in_the_run_config():
    config, grid_settings, _ = parse()
    assert not set(cli.GRID_KEYS) & set(config)
    assert set(grid_settings) == set(cli.GRID_KEYS)


def test_int_option_is_parsed_as_int():
    config, _, _ = parse("--epochs", "3")
    assert config["epochs"] == 3 and isinstance(config["epochs"], int)


def test_float_and_string_options_keep_their_types():
    config, _, _ = parse("--learning-rate", "0.01", "--class-weight", "balanced")
    assert config["learning_rate"] == 0.01 and config["class_weight"] == "balanced"


def test_list_option_is_comma_separated():
    _, grid_settings, _ = parse("--strategies", "random, entropy,")
    assert grid_settings["strategies"] == ["random", "entropy"]


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
    # configs, so ["32", "64"] vs [32, 64] would refuse the same setting.
    default, _, _ = parse()
    explicit, _, _ = parse("--conv-filters", "32,64")
    assert explicit == default


@pytest.mark.parametrize("text, expected", [("true", True), ("1", True), ("False", False), ("no", False)])
def test_bool_option_accepts_words(text, expected):
    config, _, _ = parse("--use-bias", text)
    assert config["use_bias"] is expected


@pytest.mark.parametrize("flag", ["--seeds", "--n-seeds"])
def test_seeds_is_an_alias_for_n_seeds(flag):
    _, grid_settings, _ = parse(flag, "2")
    assert grid_settings["n_seeds"] == 2


def test_quick_caps_values_and_writes_to_results_quick():
    config, grid_settings, args = cli.parse_config(
        "toy", {**cli.hyperparameters(NAMESPACE), "n_steps": 9, "epochs": 30, "n_seeds": 10},
        ["--quick"])
    assert grid_settings["n_seeds"] == 2 and config["n_steps"] == 2 and config["epochs"] == 2
    assert args.results_dir == REPO_ROOT / "results" / "quick"


def test_quick_keeps_values_below_the_caps():
    config, grid_settings, _ = parse("--quick", "--epochs", "1")
    assert config["epochs"] == 1 and config["n_steps"] == 1 and grid_settings["n_seeds"] == 1


def test_quick_respects_an_explicit_results_dir(tmp_path):
    _, _, args = parse("--quick", "--results-dir", str(tmp_path))
    assert args.results_dir == tmp_path


def test_relative_results_dir_resolves_from_the_repository(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _, _, args = parse("--results-dir", "results/other")
    assert args.results_dir == REPO_ROOT / "results" / "other"


@pytest.mark.parametrize("argv, problem", [
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--start-size", "-5"], "--start-size must be a positive integer"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--seeds", "0"], "--n-seeds must be positive"),
])
def test_non_positive_sizes_exit(argv, problem):
    with pytest.raises(SystemExit) as err:
        parse(*argv)
    assert problem in str(err.value.code)


def test_config_errors_name_the_command_line_options():
    assert cli.option_names("fit_batch_size must be positive; threads too") == \
        "--fit-batch-size must be positive; --threads too"


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
                   "--results-dir", "--data-dir", "--jobs", "--threads"):
        assert option in out


# --------------------------------------------------------------------------- main
def counting_loader(dataset):
    calls = []

    def load_data(config, data_dir=None):
        calls.append((config, data_dir))
        return dataset
    return load_data, calls


def grid_log(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "grid_log.jsonl").read_text().splitlines()]


@pytest.fixture
def grid_calls(monkeypatch):
    """Record what main hands to al.grid.run_grid, then run it in this process (jobs=1)."""
    calls = []
    real = grid.run_grid

    def spy(tasks, load_data, build_model, **kwargs):
        calls.append({"tasks": list(tasks), **kwargs})
        return real(tasks, load_data, build_model, **{**kwargs, "jobs": 1})
    monkeypatch.setattr(grid, "run_grid", spy)
    return calls


@pytest.fixture
def no_grid(monkeypatch):
    """Fail the test if main starts the grid."""
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("the grid was started"))


def test_main_runs_the_grid_and_logs_it(tmp_path, synthetic_dataset, capsys):
    load_data, calls = counting_loader(synthetic_dataset)
    results = cli.main("toy", NAMESPACE, load_data, tiny_build_model,
                       ["--jobs", "1", "--results-dir", str(tmp_path)])
    assert len(results) == 2 and all(r["complete"] for r in results)
    assert len(calls) == 1, "the driver loads the dataset once and hands it to the in-process runs"
    folder = tmp_path / "toy"
    for strategy, result in zip(("random", "entropy"), results):
        run = runs.read_run(folder / f"{strategy}_seed0.json")
        assert run == result and len(run["steps"]) == 2
        assert run["config"]["threads"] == 1 and run["provenance"]["threads"] == 1
        assert run["provenance"]["data"] == synthetic_dataset.provenance()
    assert not (folder / "state").exists(), "no state/ folder any more"
    assert sorted(p.name for p in folder.iterdir()) == ["entropy_seed0.json", "grid_log.jsonl",
                                                        "random_seed0.json"]
    (log,) = grid_log(folder)
    assert log["n_runs"] == 2 and log["jobs"] == 1 and log["seeds"] == [0]
    assert log["strategies"] == ["random", "entropy"] and log["wall_seconds"] >= 0
    assert log["threads"] == 1 and log["cpu_model"] == runs.cpu_model() and log["cpu_model"]
    assert log["runs_already_complete"] == 0 and log["config"] == results[0]["config"]
    out = capsys.readouterr().out
    assert "1 TF thread(s) each" in out and "done in" in out


def test_log_grid_appends_to_the_datasets_grid_log(tmp_path):
    cli.log_grid(tmp_path, "toy", {"wall_seconds": 1.5, "threads": 1})
    cli.log_grid(tmp_path, "toy", {"wall_seconds": 2.5, "threads": 2})
    assert [r["threads"] for r in grid_log(tmp_path / "toy")] == [1, 2]
    assert not (tmp_path / "toy" / "state").exists()


def test_main_hands_jobs_and_threads_to_the_grid(tmp_path, grid_calls, capsys):
    cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
             ["--jobs", "2", "--results-dir", str(tmp_path), "--n-steps", "0"])
    (call,) = grid_calls
    assert call["jobs"] == 2 and call["backend"] == "local"
    assert all(t.config["threads"] == 1 for t in call["tasks"])
    assert "2 in parallel, 1 TF thread(s) each" in capsys.readouterr().out
    (log,) = grid_log(tmp_path / "toy")
    assert log["jobs"] == 2 and log["threads"] == 1


def test_main_with_a_dataset_name_computed_from_the_config(tmp_path, synthetic_dataset):
    load_data, _ = counting_loader(synthetic_dataset)
    cli.main(lambda config: f"toy_{config['class_weight']}", NAMESPACE, load_data, tiny_build_model,
             ["--jobs", "1", "--results-dir", str(tmp_path), "--strategies", "random",
              "--n-steps", "0", "--first-seed", "3"])
    assert runs.read_run(tmp_path / "toy_none" / "random_seed3.json")["seed"] == 3
    assert (tmp_path / "toy_none" / "grid_log.jsonl").exists()


def test_main_rejects_unknown_strategies_before_running(tmp_path):
    def load_data(config, data_dir=None):
        raise AssertionError("must not load data")

    with pytest.raises(SystemExit, match="nope"):
        cli.main("toy", NAMESPACE, load_data, tiny_build_model,
                 ["--strategies", "random,nope", "--results-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- resuming a folder
ONE_RUN = ["--jobs", "1", "--strategies", "random", "--n-steps", "0"]


@pytest.fixture(scope="module")
def one_complete_run(tmp_path_factory):
    """results/toy/random_seed0.json: complete, 1 thread, n_steps 0 (one cheap training)."""
    results = tmp_path_factory.mktemp("one_run")
    cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model, ONE_RUN + ["--results-dir", str(results)])
    return results


@pytest.fixture
def folder_with_one_run(one_complete_run, tmp_path):
    shutil.copytree(one_complete_run, tmp_path / "results")
    return tmp_path / "results"


def main_error(argv, load_data=toy_load_data) -> str:
    with pytest.raises(SystemExit) as err:
        cli.main("toy", NAMESPACE, load_data, tiny_build_model, argv)
    message = str(err.value.code)
    assert message.startswith("error: "), message
    return message


def test_a_complete_grid_is_read_not_rerun(folder_with_one_run, no_grid, capsys):
    folder = folder_with_one_run / "toy"
    results = cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
                       ONE_RUN + ["--results-dir", str(folder_with_one_run)])
    assert results == [runs.read_run(folder / "random_seed0.json")]
    out = capsys.readouterr().out
    assert f"1 of 1 runs already complete in {folder}; pass --results-dir DIR" in out


def test_only_the_runs_not_complete_go_to_the_grid(folder_with_one_run, grid_calls, capsys):
    results = cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
                       ["--jobs", "1", "--n-steps", "0", "--results-dir", str(folder_with_one_run)])
    (call,) = grid_calls
    assert [(t.strategy, t.seed) for t in call["tasks"]] == [("entropy", 0)]
    assert [r["strategy"] for r in results] == ["random", "entropy"]
    assert results[0] == runs.read_run(folder_with_one_run / "toy" / "random_seed0.json")
    assert "1 already complete" in capsys.readouterr().out
    first, log = grid_log(folder_with_one_run / "toy")  # the fixture's grid, then this one
    assert first["n_runs"] == 1 and first["runs_already_complete"] == 0
    assert log["n_runs"] == 1 and log["runs_already_complete"] == 1


def make_unfinished(path):
    """The complete one-step run as the first step of a run of two steps (n_steps 1)."""
    run = runs.read_run(path)
    run["config"]["n_steps"], run["complete"] = 1, False
    runs.save_run(path, run)


def test_resuming_with_another_thread_count_is_refused(folder_with_one_run, no_grid):
    make_unfinished(folder_with_one_run / "toy" / "random_seed0.json")
    argv = ["--jobs", "1", "--strategies", "random", "--n-steps", "1"]
    message = main_error(argv + ["--threads", "2", "--results-dir", str(folder_with_one_run)])
    assert str(folder_with_one_run / "toy" / "random_seed0.json") in message
    assert "threads: 1 on disk vs 2 now" in message


def test_a_complete_run_of_the_grid_with_another_thread_count_is_read_with_a_note(folder_with_one_run,
                                                                                    no_grid, capsys):
    results = cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
                       ONE_RUN + ["--threads", "2", "--results-dir", str(folder_with_one_run)])
    assert results == [runs.read_run(folder_with_one_run / "toy" / "random_seed0.json")]
    captured = capsys.readouterr()
    assert "1 of 1 runs already complete" in captured.out
    assert "random_seed0.json (threads: 1 on disk vs 2 now)" in captured.err


def test_the_pre_flight_check_refuses_other_numeric_settings(folder_with_one_run, no_grid):
    path = folder_with_one_run / "toy" / "random_seed0.json"
    run = runs.read_run(path)
    run["provenance"]["settings"]["predict_batch_size"] = 17
    runs.save_run(path, run)
    message = main_error(ONE_RUN + ["--results-dir", str(folder_with_one_run)])
    assert str(path) in message and "settings" in message and "17" in message


def test_default_jobs_leave_a_core_per_thread(monkeypatch):
    monkeypatch.setattr(cli, "gpu_available", lambda: False)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    assert cli.default_jobs(100) == 8
    assert cli.default_jobs(100, threads=2) == 4
    assert cli.default_jobs(3, threads=2) == 3
    assert cli.default_jobs(100, threads=16) == 1


def test_a_run_outside_the_grid_with_another_thread_count_only_gets_a_note(folder_with_one_run, monkeypatch,
                                                                          capsys):
    started = []
    monkeypatch.setattr(grid, "run_grid", lambda tasks, *a, **k: started.append(tasks) or grid.GridOutcome(
        results=[None] * len(tasks), description="not run"))
    cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
             ["--strategies", "entropy", "--n-steps", "0", "--threads", "2", "--jobs", "1",
              "--results-dir", str(folder_with_one_run)])
    assert [t.config["threads"] for t in started[0]] == [2]
    err = capsys.readouterr().err
    assert "note: 1 run(s)" in err and "random_seed0.json (threads: 1 on disk vs 2 now)" in err


def test_a_folder_holding_a_run_on_other_data_is_refused(folder_with_one_run, no_grid):
    data = make_synthetic_dataset()
    x_train = data.x_train.copy()
    x_train[0, 0] += 1.0  # one value changed: another sha256
    other = dataclasses.replace(data, x_train=x_train)
    assert other.sha256 != data.sha256
    message = main_error(ONE_RUN + ["--results-dir", str(folder_with_one_run)], lambda c, d=None: other)
    path = folder_with_one_run / "toy" / "random_seed0.json"
    assert (f"{path}: data 'unknown' (sha256 {data.sha256[:12]}) on disk vs 'unknown' "
            f"(sha256 {other.sha256[:12]}) now") in message


def test_results_of_another_config_are_listed_before_workers_start(folder_with_one_run, no_grid):
    message = main_error(ONE_RUN + ["--epochs", "2", "--results-dir", str(folder_with_one_run)])
    assert str(folder_with_one_run / "toy" / "random_seed0.json") in message
    assert "epochs: 1 on disk vs 2 now" in message and "--fresh" in message
    # --fresh may overwrite the grid's own runs, never other runs in the folder.
    message = main_error(["--strategies", "entropy", "--n-steps", "0", "--epochs", "2", "--fresh",
                          "--results-dir", str(folder_with_one_run)])
    assert "random_seed0.json" in message and "another --results-dir" in message


def test_fresh_overwrites_the_grids_runs_of_another_config(folder_with_one_run):
    results = cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
                       ONE_RUN + ["--epochs", "2", "--fresh", "--results-dir", str(folder_with_one_run)])
    assert results[0]["config"]["epochs"] == 2
    assert runs.read_run(folder_with_one_run / "toy" / "random_seed0.json") == results[0]


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
    assert "--start-size" in proc.stdout and "--threads" in proc.stdout


def test_quick_caps_the_training_budget_of_both_recipes():
    import mitbih
    import mnist
    for script in (mitbih, mnist):
        config, grid_settings, _ = cli.parse_config(script.__name__, cli.hyperparameters(vars(script)), ["--quick"])
        assert config["n_steps"] == 2 and config["epochs"] == 2 and grid_settings["n_seeds"] == 2
        assert config["train_steps"] == min(40, cli.hyperparameters(vars(script))["train_steps"])


def test_fresh_removes_the_grids_own_runs_first_so_a_retried_task_resumes(folder_with_one_run, monkeypatch):
    outside = folder_with_one_run / "toy" / "random_seed7.json"  # not part of the grid below: kept
    shutil.copy(folder_with_one_run / "toy" / "random_seed0.json", outside)
    started = []

    def record(tasks, *a, **k):
        started.append((tasks, (folder_with_one_run / "toy" / "random_seed0.json").exists()))
        return grid.GridOutcome(results=[None] * len(tasks), description="not run")
    monkeypatch.setattr(grid, "run_grid", record)
    cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
             ONE_RUN + ["--epochs", "2", "--fresh", "--results-dir", str(folder_with_one_run)])
    tasks, old_file_still_there = started[0]
    assert [t.fresh for t in tasks] == [False] and not old_file_still_there
    assert outside.exists()
