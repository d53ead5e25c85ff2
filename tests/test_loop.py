"""The active-learning loop on tiny synthetic data: result files, reproducibility, resume, budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import al_loop
from al_loop import LOOP_KEYS, RESULT_KEYS, STEP_KEYS, run_active_learning
from strategies import STRATEGIES

TIMING_KEYS = ("train_seconds", "score_seconds", "eval_seconds", "finished_at")
BASE = {"start_size": 20, "batch_size": 10, "n_steps": 3, "epochs": 2, "fit_batch_size": 32,
        "val_fraction": 0.0, "patience": 0, "class_weight": "none", "pool_subsample": 0}


def strip_timing(steps):
    return [{k: v for k, v in s.items() if k not in TIMING_KEYS} for s in steps]


def run(data, build_model, results_dir, strategy="entropy", seed=0, config=None, **kwargs):
    return run_active_learning(dataset="toy", data=data, build_model=build_model,
                               config=dict(config or BASE), strategy=strategy, seed=seed,
                               results_dir=results_dir, **kwargs)


def read_files(results_dir, strategy="entropy", seed=0):
    result_path, state_path = al_loop.run_paths(Path(results_dir), "toy", strategy, seed)
    return json.loads(result_path.read_text()), json.loads(state_path.read_text())


def tmp_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".tmp")]


class StopAfter(Exception):
    """Raised by an on_step callback to simulate a run killed after a step was saved."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_dataset, build_model):
    """Every strategy under seed 0, entropy again under seed 0 (other folder) and under seed 1."""
    main = tmp_path_factory.mktemp("results")
    again = tmp_path_factory.mktemp("again")
    for name in sorted(STRATEGIES):
        run(synthetic_dataset, build_model, main, strategy=name, seed=0)
    run(synthetic_dataset, build_model, main, strategy="entropy", seed=1)
    run(synthetic_dataset, build_model, again, strategy="entropy", seed=0)
    return {"main": main, "again": again}


def test_base_config_is_the_shared_loop_config_with_every_loop_key(loop_config):
    assert loop_config == BASE
    assert set(BASE) == set(LOOP_KEYS)


# --------------------------------------------------------------------------- result files
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_result_file_has_exactly_the_documented_keys(finished, strategy):
    result, _ = read_files(finished["main"], strategy)
    assert set(result) == set(RESULT_KEYS)
    assert result["dataset"] == "toy" and result["strategy"] == strategy and result["seed"] == 0
    assert result["complete"] is True
    assert result["config"] == BASE
    assert len(result["steps"]) == BASE["n_steps"] + 1


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_step_record_is_complete_and_consistent(finished, strategy, synthetic_dataset):
    result, state = read_files(finished["main"], strategy)
    names = list(synthetic_dataset.class_names)
    for k, step in enumerate(result["steps"]):
        assert set(STEP_KEYS) <= set(step)
        assert step["step"] == k
        assert step["n_labeled"] == BASE["start_size"] + k * BASE["batch_size"]
        assert 0.0 <= step["macro_f1"] <= 1.0 and 0.0 <= step["accuracy"] <= 1.0
        assert list(step["per_class_f1"]) == names
        assert all(0.0 <= v <= 1.0 for v in step["per_class_f1"].values())
        assert list(step["labeled_class_counts"]) == names
        assert sum(step["labeled_class_counts"].values()) == step["n_labeled"]
        labeled = np.concatenate(state["selected"][: k + 1])
        counts = np.bincount(synthetic_dataset.y_train[labeled], minlength=len(names))
        assert list(step["labeled_class_counts"].values()) == counts.tolist()
        assert all(step[key] >= 0 for key in ("train_seconds", "score_seconds", "eval_seconds"))


def test_macro_f1_is_the_mean_of_per_class_f1(finished):
    result, _ = read_files(finished["main"], "entropy")
    for step in result["steps"]:
        assert step["macro_f1"] == pytest.approx(np.mean(list(step["per_class_f1"].values())))


def test_tiny_model_learns_the_separable_toy_problem(finished):
    # Sanity check that training happens (chance is ~0.33); 2 epochs on 20-50 labels is noisy.
    result, _ = read_files(finished["main"], "random")
    assert max(step["macro_f1"] for step in result["steps"]) > 0.8


def test_state_file_holds_one_selection_per_step(finished):
    _, state = read_files(finished["main"], "entropy")
    sizes = [len(s) for s in state["selected"]]
    assert sizes == [BASE["start_size"]] + [BASE["batch_size"]] * BASE["n_steps"]
    assert state["config_hash"] == al_loop.config_hash(BASE)


def test_result_records_versions_and_commit(finished):
    result, _ = read_files(finished["main"], "random")
    assert {"python", "numpy", "tensorflow", "keras", "scikit-learn"} <= set(result["versions"])
    assert isinstance(result["git_commit"], str) and result["git_commit"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_selections_never_repeat_and_never_touch_labeled_samples(finished, strategy, synthetic_dataset):
    _, state = read_files(finished["main"], strategy)
    everything = np.concatenate(state["selected"])
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0 and everything.max() < len(synthetic_dataset.x_train)


def test_no_tmp_files_are_left_behind(finished):
    assert tmp_files(finished["main"]) == []
    assert tmp_files(finished["again"]) == []


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_every_strategy_the_same_initial_set(finished):
    first = {name: read_files(finished["main"], name)[1]["selected"][0] for name in STRATEGIES}
    assert len({tuple(s) for s in first.values()}) == 1


def test_same_seed_gives_identical_step_zero_metrics_for_random_and_entropy(finished):
    rand = strip_timing(read_files(finished["main"], "random")[0]["steps"][:1])
    ent = strip_timing(read_files(finished["main"], "entropy")[0]["steps"][:1])
    assert rand == ent


def test_same_seed_twice_gives_identical_steps_and_selections(finished):
    result_a, state_a = read_files(finished["main"], "entropy")
    result_b, state_b = read_files(finished["again"], "entropy")
    assert strip_timing(result_a["steps"]) == strip_timing(result_b["steps"])
    assert state_a["selected"] == state_b["selected"]


def test_different_seed_gives_a_different_initial_set(finished):
    seed0 = read_files(finished["main"], "entropy", seed=0)[1]["selected"][0]
    seed1 = read_files(finished["main"], "entropy", seed=1)[1]["selected"][0]
    assert set(seed0) != set(seed1)


def test_entropy_and_random_make_different_selections(finished):
    rand = read_files(finished["main"], "random")[1]["selected"][1]
    ent = read_files(finished["main"], "entropy")[1]["selected"][1]
    assert set(rand) != set(ent)


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(finished, tmp_path, synthetic_dataset, build_model):
    def stop(record):
        if record["step"] == 1:
            raise StopAfter

    with pytest.raises(StopAfter):
        run(synthetic_dataset, build_model, tmp_path, on_step=stop)
    partial, _ = read_files(tmp_path)
    assert partial["complete"] is False and len(partial["steps"]) == 2

    resumed = run(synthetic_dataset, build_model, tmp_path)
    result_b, state_b = read_files(tmp_path)
    result_a, state_a = read_files(finished["main"])
    assert resumed["complete"] is True
    assert strip_timing(result_b["steps"]) == strip_timing(result_a["steps"])
    assert state_b["selected"] == state_a["selected"]
    assert tmp_files(tmp_path) == []


INTERRUPTED_RUN = """
import sys
sys.path[:0] = [{code!r}, {tests!r}]
import experiment
experiment.configure_tensorflow(1)
import al_loop, conftest

def stop(record):
    if record["step"] == 1:
        sys.exit(3)

al_loop.run_active_learning(dataset="toy", data=conftest.make_synthetic_dataset(),
                            build_model=conftest.tiny_build_model, config=dict(conftest.LOOP_CONFIG),
                            strategy="entropy", seed=0, results_dir={results!r}, on_step=stop)
"""


@pytest.mark.slow
def test_run_interrupted_in_another_process_resumes_to_the_same_result(
        finished, tmp_path, synthetic_dataset, build_model):
    # The real use case: the interrupted process is gone, a new one continues.
    here = Path(__file__).resolve().parent
    script = INTERRUPTED_RUN.format(code=str(here.parent / "code"), tests=str(here),
                                    results=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert len(read_files(tmp_path)[0]["steps"]) == 2

    run(synthetic_dataset, build_model, tmp_path)
    result_a, state_a = read_files(finished["main"])
    result_b, state_b = read_files(tmp_path)
    assert state_b["selected"] == state_a["selected"]
    assert strip_timing(result_b["steps"]) == strip_timing(result_a["steps"])


def test_resume_trusts_the_result_when_the_state_holds_one_step_more(
        finished, tmp_path, synthetic_dataset, build_model, monkeypatch):
    # Killed between writing the state and the result: the extra selection is redone.
    import runfiles
    real_write = runfiles.write_text_atomic

    def killed_before_the_last_result(path, text):
        if Path(path).parent.name != "state" and json.loads(text)["complete"]:
            raise StopAfter
        real_write(path, text)

    monkeypatch.setattr(runfiles, "write_text_atomic", killed_before_the_last_result)
    with pytest.raises(StopAfter):
        run(synthetic_dataset, build_model, tmp_path)
    monkeypatch.undo()
    result, state = read_files(tmp_path)
    assert len(result["steps"]) == 3 and len(state["selected"]) == 4

    run(synthetic_dataset, build_model, tmp_path)
    result_a, state_a = read_files(finished["main"])
    result_b, state_b = read_files(tmp_path)
    assert strip_timing(result_b["steps"]) == strip_timing(result_a["steps"])
    assert state_b["selected"] == state_a["selected"]


def test_rerunning_a_complete_run_returns_without_training(finished, tmp_path, synthetic_dataset,
                                                           build_model, monkeypatch):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")

    def fail(*args, **kwargs):
        raise AssertionError("a complete run must not retrain")

    monkeypatch.setattr(al_loop, "train_fresh_model", fail)
    result = run(synthetic_dataset, build_model, tmp_path)
    assert result["complete"] is True
    assert result == read_files(finished["main"])[0]


def test_result_with_another_config_raises_naming_the_key(finished, tmp_path, synthetic_dataset, build_model):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    with pytest.raises(al_loop.ConfigMismatchError, match="epochs") as err:
        run(synthetic_dataset, build_model, tmp_path, config={**BASE, "epochs": 5})
    assert "--fresh" in str(err.value)


def test_fresh_overwrites_a_result_with_another_config(finished, tmp_path, synthetic_dataset, build_model):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    small = {**BASE, "n_steps": 0}
    with pytest.raises(al_loop.ConfigMismatchError, match="n_steps"):
        run(synthetic_dataset, build_model, tmp_path, config=small)
    run(synthetic_dataset, build_model, tmp_path, config=small, fresh=True)
    result, state = read_files(tmp_path)
    assert result["config"] == small and result["complete"] is True
    assert len(result["steps"]) == 1 and len(state["selected"]) == 1
    assert tmp_files(tmp_path) == []


def test_unreadable_result_file_raises_instead_of_being_overwritten(
        finished, tmp_path, synthetic_dataset, build_model):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    result_path, _ = al_loop.run_paths(tmp_path, "toy", "entropy", 0)
    result_path.write_text(result_path.read_text()[:50])
    with pytest.raises(al_loop.ConfigMismatchError, match="--fresh"):
        run(synthetic_dataset, build_model, tmp_path)


def test_config_without_loop_keys_is_rejected(tmp_path, synthetic_dataset, build_model):
    config = {k: v for k, v in BASE.items() if k != "patience"}
    with pytest.raises(ValueError, match="patience"):
        run_active_learning(dataset="toy", data=synthetic_dataset, build_model=build_model,
                            config=config, strategy="random", seed=0, results_dir=tmp_path)


def test_unknown_strategy_is_rejected_before_any_file_is_written(tmp_path, synthetic_dataset, build_model):
    with pytest.raises(ValueError, match="unknown strategy"):
        run(synthetic_dataset, build_model, tmp_path, strategy="nope")
    assert not any(tmp_path.iterdir())


def test_config_mismatch_lists_every_differing_key():
    diffs = al_loop.config_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    assert len(diffs) == 2
    assert diffs[0].startswith("b: 2 on disk vs 3 now") and diffs[1].startswith("c: None")


# --------------------------------------------------------------------------- label budget
def recording_builder(build_model, calls):
    """Wrap ``build_model`` so each model records what ``fit`` is given."""
    def build(config, input_shape, n_classes):
        model = build_model(config, input_shape, n_classes)
        original_fit = model.fit

        def fit(x, y, **kwargs):
            validation = kwargs.get("validation_data")
            calls.append({"x": np.array(x), "y": np.array(y),
                          "val": None if validation is None else tuple(map(np.array, validation)),
                          "class_weight": kwargs.get("class_weight")})
            return original_fit(x, y, **kwargs)

        model.fit = fit
        return model
    return build


def row_index(x_train):
    return {row.tobytes(): i for i, row in enumerate(x_train)}


@pytest.mark.parametrize("early_stopping", [False, True], ids=["no_validation", "validation_split"])
def test_training_only_sees_selected_labels(tmp_path, synthetic_dataset, build_model, early_stopping):
    data = synthetic_dataset
    config = {**BASE, "n_steps": 2}
    if early_stopping:
        config.update(patience=1, val_fraction=0.25, epochs=3, class_weight="balanced")
    calls = []
    run(data, recording_builder(build_model, calls), tmp_path, strategy="entropy", config=config)
    _, state = read_files(tmp_path)
    index = row_index(data.x_train)
    test_rows = {row.tobytes() for row in data.x_test}
    assert len(calls) == config["n_steps"] + 1

    for step, call in enumerate(calls):
        labeled = set(np.concatenate(state["selected"][: step + 1]).tolist())
        parts = [(call["x"], call["y"])] + ([call["val"]] if call["val"] is not None else [])
        seen = []
        for x, y in parts:
            for row, label in zip(x, y):
                assert row.tobytes() not in test_rows, "a test sample was used for training"
                i = index[row.tobytes()]
                assert i in labeled, f"step {step}: trained on unselected sample {i}"
                assert label == data.y_train[i]
                seen.append(i)
        assert sorted(seen) == sorted(labeled), "train + validation must be exactly the labeled set"
        if early_stopping:
            assert call["val"] is not None
            n_val = int(round(config["val_fraction"] * len(labeled)))
            assert len(call["val"][0]) == n_val
            # Class weights come from the fit part of the labeled set only.
            expected = al_loop.class_weights(call["y"], len(data.class_names), "balanced")
            assert call["class_weight"] == expected
        else:
            assert call["val"] is None and call["class_weight"] is None


@pytest.mark.slow
def test_pool_subsample_keeps_selections_unique_and_unlabeled(tmp_path, synthetic_dataset, build_model):
    config = {**BASE, "pool_subsample": 30, "n_steps": 4}
    run(synthetic_dataset, build_model, tmp_path, strategy="margin", config=config)
    _, state = read_files(tmp_path, "margin")
    everything = np.concatenate(state["selected"])
    assert len(everything) == 20 + 4 * 10
    assert len(np.unique(everything)) == len(everything)


def test_select_next_excludes_labeled_samples(synthetic_dataset):
    from strategies import get_strategy
    labeled = np.arange(0, 290)  # leaves exactly 10 unlabeled samples
    chosen = al_loop.select_next(get_strategy("random"), None, synthetic_dataset, labeled,
                                 {**BASE, "batch_size": 10}, np.random.default_rng(0))
    assert sorted(chosen.tolist()) == list(range(290, 300))



class RecordingStrategy:
    """A strategy with the pre-``x_labeled`` signature, unless ``uses_labeled`` is set."""

    name, uses_model = "recording", True

    def __init__(self, uses_labeled):
        self.uses_labeled, self.calls = uses_labeled, []
        if uses_labeled:
            self.select = self.select_with_labeled

    def select(self, model, x_unlabeled, batch_size, rng):
        self.calls.append({"x_unlabeled": x_unlabeled})
        return np.arange(batch_size)

    def select_with_labeled(self, model, x_unlabeled, batch_size, rng, x_labeled=None):
        self.calls.append({"x_unlabeled": x_unlabeled, "x_labeled": x_labeled})
        return np.arange(batch_size)


@pytest.mark.parametrize("uses_labeled", [False, True])
def test_select_next_passes_labeled_samples_only_to_strategies_that_declare_it(synthetic_dataset,
                                                                               uses_labeled):
    strategy = RecordingStrategy(uses_labeled)
    labeled = np.array([5, 3, 17, 250])
    al_loop.select_next(strategy, object(), synthetic_dataset, labeled, BASE, np.random.default_rng(0))
    (call,) = strategy.calls
    assert ("x_labeled" in call) == uses_labeled
    if uses_labeled:
        assert np.array_equal(call["x_labeled"], synthetic_dataset.x_train[labeled])
    assert len(call["x_unlabeled"]) == len(synthetic_dataset.x_train) - len(labeled)


# --------------------------------------------------------------------------- check_budget
def test_check_budget_accepts_a_budget_that_exactly_fills_the_pool():
    al_loop.check_budget(BASE, 50)


def test_check_budget_rejects_a_budget_larger_than_the_pool():
    with pytest.raises(ValueError, match=r"= 50 labels.*only 49 samples"):
        al_loop.check_budget(BASE, 49)


@pytest.mark.parametrize("key", ["start_size", "batch_size", "epochs", "fit_batch_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_check_budget_rejects_non_positive_sizes(key, value):
    with pytest.raises(ValueError, match=f"{key} must be positive"):
        al_loop.check_budget({**BASE, key: value}, 1000)


def test_check_budget_rejects_negative_n_steps():
    with pytest.raises(ValueError, match="n_steps"):
        al_loop.check_budget({**BASE, "n_steps": -1}, 1000)


def test_check_budget_allows_zero_steps():
    al_loop.check_budget({**BASE, "n_steps": 0}, 20)


def test_check_budget_rejects_pool_subsample_smaller_than_batch_size():
    # A subsampled pool smaller than the batch cannot fill it: fail before training, not at step 1.
    with pytest.raises(ValueError, match="pool_subsample"):
        al_loop.check_budget({**BASE, "pool_subsample": 5}, 1000)


@pytest.mark.parametrize("val_fraction", [1.0, 1.5])
def test_check_budget_rejects_a_validation_fraction_that_leaves_nothing_to_train_on(val_fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        al_loop.check_budget({**BASE, "patience": 2, "val_fraction": val_fraction}, 1000)


def test_validation_split_always_leaves_training_samples(synthetic_dataset, build_model):
    # round(0.98 * 20) = 20: every labeled sample went to validation and fit() trained on nothing
    # (Keras only warns "Your input ran out of data"), silently giving an untrained model.
    calls = []
    config = {**BASE, "patience": 1, "val_fraction": 0.98}
    x, y = synthetic_dataset.x_train[:20], synthetic_dataset.y_train[:20]
    try:
        al_loop.train_fresh_model(recording_builder(build_model, calls), config, x, y, 3, [0, 0])
    except ValueError:
        return  # refusing is fine too
    assert len(calls[0]["x"]) > 0, "fit() got zero training samples"


# --------------------------------------------------------------------------- class weights
def test_balanced_class_weights_come_from_labeled_counts():
    weights = al_loop.class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights == pytest.approx({0: 4 / (2 * 3), 1: 4 / (2 * 1), 2: 1.0})


def test_balanced_class_weights_of_a_balanced_set_are_one():
    assert al_loop.class_weights(np.array([0, 1, 2, 0, 1, 2]), 3, "balanced") == pytest.approx(
        {0: 1.0, 1: 1.0, 2: 1.0})


@pytest.mark.parametrize("mode", [None, "none", ""])
def test_no_class_weights_when_disabled(mode):
    assert al_loop.class_weights(np.array([0, 1]), 2, mode) is None


def test_unknown_class_weight_mode_is_rejected():
    with pytest.raises(ValueError, match="balanced"):
        al_loop.class_weights(np.array([0, 1]), 2, "inverse")


# --------------------------------------------------------------------------- files
def test_write_json_atomic_replaces_the_file_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "sub" / "x.json"
    al_loop.write_json_atomic(path, {"a": 1})
    al_loop.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert tmp_files(tmp_path) == []


def test_write_json_atomic_keeps_the_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "x.json"
    al_loop.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        al_loop.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert tmp_files(tmp_path) == []


def test_write_json_atomic_files_are_readable_by_others(tmp_path):
    # Result files are shared (plots, other users): they should get the usual umask mode, not 0600.
    path = tmp_path / "x.json"
    old = os.umask(0o022)
    try:
        al_loop.write_json_atomic(path, {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o044 == 0o044
