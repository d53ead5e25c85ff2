"""al.loop on tiny synthetic data: run files, reproducibility, resume, stop set, provenance, budget.

Finished runs are shared through the module-scoped ``finished`` fixture; tests that need to
change a run work on copies (``partial`` writes a truncated, re-stamped copy of a finished run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import al
from al import data_common, keras_ops, loop, runs
from al.data_common import Dataset
from al.loop import LOOP_KEYS, ConfigMismatchError, ModifiedRunError, run_active_learning
from al.runs import OPTIONAL_STEP_KEYS, RESULT_KEYS, STEP_KEYS
from al.strategies import STRATEGIES, entropy, get_strategy
from conftest import LOOP_CONFIG, strip_timing, tmp_files

# Two selection steps are enough for every loop property (and a resume in the middle); the
# strategies other than the references of the resume tests run one (the loop is the same).
CONFIG = {**LOOP_CONFIG, "n_steps": 2}
ONE_STEP = {**CONFIG, "n_steps": 1}
REFERENCES = ("entropy", "random")
SEED = 0


def config_of(strategy: str) -> dict:
    return CONFIG if strategy in REFERENCES else ONE_STEP


def run(data, build_model, results_dir, strategy="entropy", seed=SEED, config=None, **kwargs):
    return run_active_learning(dataset="toy", data=data, build_model=build_model,
                               config=dict(config or CONFIG), strategy=strategy, seed=seed,
                               results_dir=results_dir, **kwargs)


def path_of(results_dir, strategy="entropy", seed=SEED) -> Path:
    return runs.run_path(Path(results_dir), "toy", strategy, seed)


def read(results_dir, strategy="entropy", seed=SEED) -> dict:
    return runs.read_run(path_of(results_dir, strategy, seed))


def selections(run_dict) -> list[list[int]]:
    return [step["selected"] for step in run_dict["steps"]]


def partial(finished_dir, results_dir, strategy="entropy", n_steps=2, edit=None) -> dict:
    """Save the first ``n_steps`` steps of a finished run under ``results_dir``, re-stamped."""
    run_dict = read(finished_dir, strategy)
    run_dict["steps"] = run_dict["steps"][:n_steps]
    run_dict["complete"] = False
    if edit:
        edit(run_dict)
    runs.save_run(path_of(results_dir, strategy), run_dict)
    return run_dict


def no_training(*args, **kwargs):
    raise AssertionError("trained a model")


class StopAfter(Exception):
    """Raised to simulate a run killed at a given point."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_dataset, build_model):
    """Every strategy under seed 0 (``config_of``), and entropy's step 0 under seed 1 (other folder)."""
    main = tmp_path_factory.mktemp("results")
    seed1 = tmp_path_factory.mktemp("seed1")
    for name in sorted(STRATEGIES):
        run(synthetic_dataset, build_model, main, strategy=name, config=config_of(name))
    run(synthetic_dataset, build_model, seed1, strategy="entropy", seed=1, config={**CONFIG, "n_steps": 0})
    return {"main": main, "seed1": seed1}


def test_the_shared_loop_config_has_every_loop_key_and_is_valid(loop_config):
    assert loop_config == LOOP_CONFIG
    assert set(loop_config) == set(LOOP_KEYS)
    loop.check_config(loop_config, 300)


# --------------------------------------------------------------------------- run files
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_run_file_has_exactly_the_documented_keys_and_verifies(finished, strategy):
    result = read(finished["main"], strategy)
    assert set(result) == set(RESULT_KEYS)
    assert result["format"] == runs.FORMAT
    assert result["sha256"] == runs.content_digest(result)
    assert result["dataset"] == "toy" and result["strategy"] == strategy and result["seed"] == SEED
    assert result["complete"] is True
    assert result["config"] == config_of(strategy)
    assert len(result["steps"]) == config_of(strategy)["n_steps"] + 1


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_step_record_is_complete_and_consistent(finished, strategy, synthetic_dataset):
    result = read(finished["main"], strategy)
    names = list(synthetic_dataset.class_names)
    for k, step in enumerate(result["steps"]):
        assert set(STEP_KEYS) <= set(step) <= set(STEP_KEYS) | set(OPTIONAL_STEP_KEYS)
        assert step["step"] == k
        assert step["n_labeled"] == CONFIG["start_size"] + k * CONFIG["batch_size"]
        assert len(step["selected"]) == (CONFIG["batch_size"] if k else CONFIG["start_size"])
        assert 0.0 <= step["macro_f1"] <= 1.0 and 0.0 <= step["accuracy"] <= 1.0
        assert list(step["per_class_f1"]) == names
        assert all(0.0 <= v <= 1.0 for v in step["per_class_f1"].values())
        assert list(step["labeled_class_counts"]) == names
        labeled = np.concatenate(selections(result)[: k + 1])
        counts = np.bincount(synthetic_dataset.y_train[labeled], minlength=len(names))
        assert list(step["labeled_class_counts"].values()) == counts.tolist()
        assert all(step[key] >= 0 for key in ("train_seconds", "score_seconds", "eval_seconds"))


def test_each_step_record_holds_its_own_selection(finished):
    sizes = [len(s) for s in selections(read(finished["main"], "entropy"))]
    assert sizes == [CONFIG["start_size"]] + [CONFIG["batch_size"]] * CONFIG["n_steps"]


def test_macro_f1_is_the_mean_of_per_class_f1(finished):
    for step in read(finished["main"], "entropy")["steps"]:
        assert step["macro_f1"] == pytest.approx(np.mean(list(step["per_class_f1"].values())))


def test_tiny_model_learns_the_separable_toy_problem(finished):
    # Sanity check that training happens (chance is ~0.33); 2 epochs on 20-40 labels is noisy.
    assert max(step["macro_f1"] for step in read(finished["main"], "random")["steps"]) > 0.8


def test_run_file_records_versions_and_commit(finished):
    result = read(finished["main"], "random")
    assert {"python", "numpy", "tensorflow", "keras", "scikit-learn"} <= set(result["versions"])
    assert isinstance(result["git_commit"], str) and result["git_commit"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_selections_never_repeat_and_never_touch_labeled_samples(finished, strategy, synthetic_dataset):
    everything = np.concatenate(selections(read(finished["main"], strategy)))
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0 and everything.max() < len(synthetic_dataset.x_train)


def test_no_tmp_files_are_left_behind(finished):
    for folder in finished.values():
        assert tmp_files(folder) == []


def test_only_run_files_are_written(finished):
    # One file per run: no state/ folder, nothing else.
    names = sorted(p.relative_to(finished["main"]).as_posix() for p in finished["main"].rglob("*"))
    assert names == sorted(["toy"] + [f"toy/{s}_seed{SEED}.json" for s in STRATEGIES])


# --------------------------------------------------------------------------- provenance
@pytest.mark.parametrize("strategy, mc_passes", [("random", None), ("bald", 10)])
def test_run_file_records_its_provenance(finished, synthetic_dataset, strategy, mc_passes):
    provenance = read(finished["main"], strategy)["provenance"]
    assert provenance["data"] == synthetic_dataset.provenance()
    assert provenance["data"]["sha256"] == synthetic_dataset.sha256
    assert provenance["data"]["n_train"] == 300 and provenance["data"]["n_test"] == 100
    assert provenance["threads"] == CONFIG["threads"] == 1
    assert provenance["cpu_model"] == runs.cpu_model()
    assert provenance["settings"] == {"predict_batch_size": keras_ops.PREDICT_BATCH_SIZE,
                                      "stop_set_size": loop.STOP_SET_SIZE, "mc_passes": mc_passes}
    assert provenance["resumed"] == []


def with_one_test_value_changed(data: Dataset) -> Dataset:
    x_test = data.x_test.copy()
    x_test[7, 1] += 0.5
    return Dataset(data.x_train, data.y_train, x_test, data.y_test, data.class_names, data.source,
                   data.origin)


def test_resume_on_data_with_other_content_is_refused_naming_the_data(
        finished, tmp_path, synthetic_dataset, build_model, monkeypatch):
    partial(finished["main"], tmp_path)
    before = path_of(tmp_path).read_bytes()
    other = with_one_test_value_changed(synthetic_dataset)
    assert other.provenance()["n_test"] == synthetic_dataset.provenance()["n_test"]
    monkeypatch.setattr(loop, "train_fresh_model", no_training)
    with pytest.raises(ConfigMismatchError, match=r"\bdata\b.*sha256") as err:
        run(other, build_model, tmp_path)
    assert not isinstance(err.value, ModifiedRunError)
    assert path_of(tmp_path).read_bytes() == before  # left alone


def test_resume_with_another_thread_count_is_refused_naming_threads(
        finished, tmp_path, synthetic_dataset, build_model, monkeypatch):
    partial(finished["main"], tmp_path)
    monkeypatch.setattr(loop, "train_fresh_model", no_training)
    with pytest.raises(ConfigMismatchError, match=r"threads: 1 on disk vs 2 now"):
        run(synthetic_dataset, build_model, tmp_path, config={**CONFIG, "threads": 2})


def test_resume_with_other_numeric_settings_is_refused(finished, tmp_path, synthetic_dataset,
                                                        build_model, monkeypatch):
    partial(finished["main"], tmp_path)
    monkeypatch.setattr(loop, "train_fresh_model", no_training)
    monkeypatch.setattr(loop, "PREDICT_BATCH_SIZE", 1024)
    with pytest.raises(ConfigMismatchError, match=r"settings .*predict_batch_size"):
        run(synthetic_dataset, build_model, tmp_path)


# --------------------------------------------------------------------------- stop set
def test_stop_set_indices_are_a_fixed_sorted_sample_of_the_pool():
    a = loop.stop_set_indices(3, 5000)
    assert len(a) == loop.STOP_SET_SIZE == 2000 and len(np.unique(a)) == len(a)
    assert np.array_equal(a, np.sort(a)) and a.min() >= 0 and a.max() < 5000
    assert np.array_equal(a, loop.stop_set_indices(3, 5000))
    assert not np.array_equal(a, loop.stop_set_indices(4, 5000))
    assert np.array_equal(loop.stop_set_indices(3, 300), np.arange(300))  # pool smaller than the set
    assert len(loop.stop_set_indices(3, 5000, size=50)) == 50


def model_of_step(run_dict, step, data, build_model):
    """Retrain the model of ``step`` as the loop did."""
    labeled = np.concatenate(selections(run_dict)[: step + 1])
    return loop.train_fresh_model(build_model, run_dict["config"], data.x_train[labeled],
                                  data.y_train[labeled], len(data.class_names), [run_dict["seed"], step])


def test_step_records_carry_the_stop_set_predictions_of_their_model(finished, synthetic_dataset,
                                                                    build_model):
    data = synthetic_dataset
    result = read(finished["main"], "entropy")
    stop_idx = loop.stop_set_indices(SEED, len(data.x_train))
    assert len(stop_idx) == min(loop.STOP_SET_SIZE, len(data.x_train))
    decoded = [runs.decode_uint8(step["stop_set_predictions"]) for step in result["steps"]]
    for predictions in decoded:
        assert predictions.shape == (len(stop_idx),)
        assert predictions.min() >= 0 and predictions.max() < len(data.class_names)
    last = CONFIG["n_steps"]
    model = model_of_step(result, last, data, build_model)
    probs = keras_ops.predict_proba(model, data.x_train[stop_idx])
    assert np.array_equal(decoded[last], probs.argmax(axis=1))
    uncertainty = entropy(probs)
    step = result["steps"][last]
    assert step["stop_set_mean_entropy"] == pytest.approx(uncertainty.mean(), abs=1e-6)
    assert step["stop_set_max_entropy"] == pytest.approx(uncertainty.max(), abs=1e-6)
    test_predictions = keras_ops.predict_proba(model, data.x_test).argmax(axis=1)
    expected = np.zeros((len(data.class_names),) * 2, dtype=int)
    np.add.at(expected, (data.y_test, test_predictions), 1)
    assert step["confusion_matrix"] == expected.tolist()  # rows true, columns predicted


@pytest.fixture(scope="module")
def small_stop_set(finished, tmp_path_factory, synthetic_dataset, build_model):
    """badge seed 0 again (one step), with a stop set of 50 samples drawn by the real function."""
    folder = tmp_path_factory.mktemp("small_stop_set")
    real = loop.stop_set_indices
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "stop_set_indices", lambda seed, n_pool: real(seed, n_pool, size=50))
        run(synthetic_dataset, build_model, folder, strategy="badge", config={**CONFIG, "n_steps": 1})
    return read(folder, "badge")


def test_the_stop_set_does_not_change_any_selection_or_metric(finished, small_stop_set):
    # badge draws from the step's rng and uses the model: a stop set taken from either would show.
    reference = read(finished["main"], "badge")
    assert len(small_stop_set["steps"]) == len(reference["steps"]) == 2
    assert selections(small_stop_set) == selections(reference)

    def without_stop_set(steps):
        return [{k: v for k, v in s.items() if not k.startswith("stop_set_")} for s in strip_timing(steps)]
    assert without_stop_set(small_stop_set["steps"]) == without_stop_set(reference["steps"])


def test_a_smaller_stop_set_is_predicted_on_its_own_samples(small_stop_set, synthetic_dataset, build_model):
    stop_idx = loop.stop_set_indices(SEED, len(synthetic_dataset.x_train), size=50)
    last = 1
    predictions = runs.decode_uint8(small_stop_set["steps"][last]["stop_set_predictions"])
    assert len(predictions) == 50
    model = model_of_step(small_stop_set, last, synthetic_dataset, build_model)
    expected = keras_ops.predict_proba(model, synthetic_dataset.x_train[stop_idx]).argmax(axis=1)
    assert np.array_equal(predictions, expected)


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_every_strategy_the_same_initial_set(finished):
    first = {name: read(finished["main"], name)["steps"][0]["selected"] for name in STRATEGIES}
    assert len({tuple(s) for s in first.values()}) == 1


def test_same_seed_gives_identical_step_zero_metrics_for_random_and_entropy(finished):
    rand = strip_timing(read(finished["main"], "random")["steps"][:1])
    ent = strip_timing(read(finished["main"], "entropy")["steps"][:1])
    assert rand == ent


def test_same_seed_twice_gives_identical_steps_and_selections(finished, recorded):
    # ``recorded`` is entropy seed 0 again, in another folder, with one step.
    a, b = read(finished["main"]), recorded["run"]
    assert len(b["steps"]) == 2
    assert strip_timing(a["steps"][:2]) == strip_timing(b["steps"])
    assert selections(a)[:2] == selections(b)


def test_different_seed_gives_a_different_initial_set(finished):
    seed0 = read(finished["main"])["steps"][0]["selected"]
    seed1 = read(finished["seed1"], seed=1)["steps"][0]["selected"]
    assert set(seed0) != set(seed1)


def test_entropy_and_random_make_different_selections(finished):
    assert set(read(finished["main"], "random")["steps"][1]["selected"]) != set(
        read(finished["main"], "entropy")["steps"][1]["selected"])


# --------------------------------------------------------------------------- resume
RESUME_IN_A_NEW_PROCESS = """
import sys
sys.path[:0] = [{code!r}, {tests!r}]
from al import keras_ops, loop
keras_ops.configure_tensorflow(1)
import conftest

loop.run_active_learning(dataset="toy", data=conftest.make_synthetic_dataset(),
                         build_model=conftest.tiny_build_model, config={config!r},
                         strategy="entropy", seed={seed!r}, results_dir={results!r})
"""


@pytest.fixture(scope="module")
def resumed(finished, tmp_path_factory):
    """entropy seed 0 resumed by a new process from a copy of its first two steps, alone in a folder.

    The real use case: the interrupted process is gone, another one continues from the file
    (it must rebuild the model that scores step 2). The copy also records an earlier resume,
    which the new one must keep.
    """
    folder = tmp_path_factory.mktemp("resumed")
    earlier = {"step": 1, "git_commit": "0" * 40, "cpu_model": "an older CPU"}
    before = partial(finished["main"], folder,
                     edit=lambda r: r["provenance"].update(resumed=[earlier]))
    code = Path(al.__file__).resolve().parents[1]  # the library these tests import
    script = RESUME_IN_A_NEW_PROCESS.format(code=str(code), tests=str(Path(__file__).resolve().parent),
                                            config=CONFIG, seed=SEED, results=str(folder))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"before": before, "after": read(folder), "folder": folder, "earlier": earlier}


def test_resume_in_a_new_process_continues_from_the_run_file_to_the_uninterrupted_result(finished, resumed):
    reference = read(finished["main"])
    after = resumed["after"]
    assert after["complete"] is True
    assert strip_timing(after["steps"]) == strip_timing(reference["steps"])
    assert selections(after) == selections(reference)
    assert sorted(p.name for p in resumed["folder"].rglob("*")) == ["entropy_seed0.json", "toy"]


def test_resume_keeps_the_completed_step_records_as_they_were(resumed):
    assert resumed["after"]["steps"][:2] == resumed["before"]["steps"]  # timings included: not redone


def test_resume_appends_to_the_provenance(resumed, finished):
    provenance = resumed["after"]["provenance"]
    earlier, new = provenance["resumed"]
    assert earlier == resumed["earlier"]
    assert set(new) == {"step", "git_commit", "cpu_model", "devices"}
    assert new["step"] == 2 and new["cpu_model"] == runs.cpu_model()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", new["git_commit"])  # the resuming process's code
    reference = read(finished["main"])["provenance"]
    assert {k: v for k, v in provenance.items() if k != "resumed"} == {
        k: v for k, v in reference.items() if k != "resumed"}


def test_resume_continues_from_the_selections_in_the_file(finished, tmp_path, synthetic_dataset,
                                                          build_model):
    # The file is the only state: a resumed run builds on the selections it holds, whatever they are.
    data = synthetic_dataset
    initial = read(finished["main"], "random")["steps"][0]["selected"]
    other = [int(i) for i in np.setdiff1d(np.arange(len(data.x_train)), initial)[-10:]]

    def edit(r):
        r["steps"][1]["selected"] = other

    partial(finished["main"], tmp_path, strategy="random", edit=edit)
    run(data, build_model, tmp_path, strategy="random")
    after = read(tmp_path, "random")
    assert after["complete"] and after["steps"][1]["selected"] == other
    labeled = np.concatenate(selections(after))
    assert len(np.unique(labeled)) == len(labeled)
    counts = np.bincount(data.y_train[labeled], minlength=3).tolist()
    assert list(after["steps"][2]["labeled_class_counts"].values()) == counts


def test_resuming_on_another_cpu_model_says_so_and_records_it(finished, tmp_path, synthetic_dataset,
                                                              build_model, capsys):
    def elsewhere(r):
        r["provenance"]["cpu_model"] = "Some Other CPU"

    partial(finished["main"], tmp_path, strategy="random", edit=elsewhere)
    run(synthetic_dataset, build_model, tmp_path, strategy="random")
    err = capsys.readouterr().err
    assert "random_seed0.json resumes at step 2 on other hardware (cpu_model 'Some Other CPU' -> " in err
    assert read(tmp_path, "random")["provenance"]["resumed"][-1]["cpu_model"] == runs.cpu_model()
    partial(finished["main"], tmp_path, strategy="random")  # the same CPU: no note
    run(synthetic_dataset, build_model, tmp_path, strategy="random")
    assert "other hardware" not in capsys.readouterr().err


def test_a_run_killed_while_writing_a_step_keeps_the_last_file_and_resumes_to_the_same_result(
        finished, tmp_path, synthetic_dataset, build_model, monkeypatch):
    # Killed during the atomic write of step 2: the file still holds steps 0-1, and the killed
    # writer's temporary file is left over; rerunning clears it and ends as if never interrupted.
    partial(finished["main"], tmp_path, strategy="random")
    path = path_of(tmp_path, "random")
    before = path.read_bytes()
    real_write = runs.write_bytes_atomic

    def killed_writing_step_2(target, data):
        if len(json.loads(data)["steps"]) == 3:
            (Path(target).parent / f".{Path(target).name}.dead0123.tmp").write_bytes(data[:40])
            raise StopAfter
        real_write(target, data)

    monkeypatch.setattr(runs, "write_bytes_atomic", killed_writing_step_2)
    with pytest.raises(StopAfter):
        run(synthetic_dataset, build_model, tmp_path, strategy="random")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert len(tmp_files(tmp_path)) == 1

    returned = run(synthetic_dataset, build_model, tmp_path, strategy="random")
    reference, after = read(finished["main"], "random"), read(tmp_path, "random")
    assert returned == after
    assert strip_timing(after["steps"]) == strip_timing(reference["steps"])
    assert selections(after) == selections(reference)
    assert tmp_files(tmp_path) == []


def test_rerunning_a_complete_run_returns_it_without_training(finished, tmp_path, synthetic_dataset,
                                                              build_model, monkeypatch):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    monkeypatch.setattr(loop, "train_fresh_model", no_training)
    result = run(synthetic_dataset, build_model, tmp_path)
    assert result["complete"] is True
    assert result == read(finished["main"])
    assert result["provenance"]["resumed"] == []


def test_run_file_of_another_config_raises_naming_the_key(finished, tmp_path, synthetic_dataset, build_model):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    with pytest.raises(ConfigMismatchError, match="epochs: 2 on disk vs 5 now") as err:
        run(synthetic_dataset, build_model, tmp_path, config={**CONFIG, "epochs": 5})
    assert "--fresh" in str(err.value)


def test_fresh_overwrites_a_run_file_of_another_config(finished, tmp_path, synthetic_dataset, build_model):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    small = {**CONFIG, "n_steps": 0}
    with pytest.raises(ConfigMismatchError, match="n_steps"):
        run(synthetic_dataset, build_model, tmp_path, config=small)
    run(synthetic_dataset, build_model, tmp_path, config=small, fresh=True)
    result = read(tmp_path)
    assert result["config"] == small and result["complete"] is True
    assert len(result["steps"]) == 1 and len(result["steps"][0]["selected"]) == CONFIG["start_size"]
    assert tmp_files(tmp_path) == []


def test_truncated_run_file_raises_instead_of_being_overwritten(finished, tmp_path, synthetic_dataset,
                                                                 build_model):
    shutil.copytree(finished["main"] / "toy", tmp_path / "toy")
    path = path_of(tmp_path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(ModifiedRunError, match="--fresh"):
        run(synthetic_dataset, build_model, tmp_path)
    assert len(path.read_text()) == 50


def test_edited_run_file_raises_instead_of_being_resumed(finished, tmp_path, synthetic_dataset,
                                                         build_model, monkeypatch):
    partial(finished["main"], tmp_path)
    path = path_of(tmp_path)
    content = json.loads(path.read_text())
    content["steps"][1]["macro_f1"] = 0.99  # sha256 left as it was
    path.write_text(json.dumps(content))
    monkeypatch.setattr(loop, "train_fresh_model", no_training)
    with pytest.raises(ModifiedRunError, match="sha256"):
        run(synthetic_dataset, build_model, tmp_path)


def test_config_without_loop_keys_is_rejected(tmp_path, synthetic_dataset, build_model):
    config = {k: v for k, v in CONFIG.items() if k != "patience"}
    with pytest.raises(ValueError, match="patience"):
        run(synthetic_dataset, build_model, tmp_path, strategy="random", config=config)
    assert not any(tmp_path.iterdir())


def test_unknown_strategy_is_rejected_before_any_file_is_written(tmp_path, synthetic_dataset, build_model):
    with pytest.raises(ValueError, match="unknown strategy"):
        run(synthetic_dataset, build_model, tmp_path, strategy="nope")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- check_config
def test_check_config_accepts_a_budget_that_exactly_fills_the_pool():
    loop.check_config(CONFIG, 40)
    assert loop.final_budget(CONFIG) == 40


def test_check_config_rejects_a_budget_larger_than_the_pool():
    with pytest.raises(ValueError, match=r"= 40 labels, but the pool holds only 39 samples"):
        loop.check_config(CONFIG, 39)


def test_check_config_without_a_pool_does_not_check_the_budget():
    loop.check_config({**CONFIG, "start_size": 10 ** 9})


@pytest.mark.parametrize("key", LOOP_KEYS)
def test_check_config_names_a_missing_key(key):
    with pytest.raises(ValueError, match=rf"lacks the loop hyperparameters \['{key}'\]"):
        loop.check_config({k: v for k, v in CONFIG.items() if k != key})


@pytest.mark.parametrize("key", ["start_size", "batch_size", "epochs", "fit_batch_size", "threads"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "3"])
def test_check_config_rejects_sizes_that_are_not_positive_integers(key, value):
    with pytest.raises(ValueError, match=rf"^{key} must be a positive integer, got {value!r}"):
        loop.check_config({**CONFIG, key: value}, 1000)


@pytest.mark.parametrize("key", ["n_steps", "patience", "pool_subsample"])
def test_check_config_rejects_negative_counts(key):
    with pytest.raises(ValueError, match=rf"^{key} must be 0 or a positive integer, got -1"):
        loop.check_config({**CONFIG, key: -1}, 1000)


def test_check_config_allows_zero_steps_and_zero_patience():
    loop.check_config({**CONFIG, "n_steps": 0, "patience": 0}, 20)


@pytest.mark.parametrize("val_fraction", [-0.1, 1.0, 1.5])
def test_check_config_rejects_a_validation_fraction_outside_0_1(val_fraction):
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        loop.check_config({**CONFIG, "patience": 2, "val_fraction": val_fraction}, 1000)


@pytest.mark.parametrize("val_fraction", [0.0, 0.5, 0.99])
def test_check_config_accepts_a_validation_fraction_in_0_1(val_fraction):
    loop.check_config({**CONFIG, "patience": 2, "val_fraction": val_fraction}, 1000)


@pytest.mark.parametrize("subsample", [1, 9])
def test_check_config_rejects_pool_subsample_smaller_than_batch_size(subsample):
    # A subsampled pool smaller than the batch cannot fill it: fail before training, not at step 1.
    with pytest.raises(ValueError, match=rf"pool_subsample \({subsample}\) must be 0 \(off\) or at least "
                                         r"batch_size \(10\)"):
        loop.check_config({**CONFIG, "pool_subsample": subsample}, 1000)


@pytest.mark.parametrize("subsample", [0, 10, 500])
def test_check_config_accepts_pool_subsample_off_or_at_least_batch_size(subsample):
    loop.check_config({**CONFIG, "pool_subsample": subsample}, 1000)


@pytest.mark.parametrize("mode", ["inverse", "Balanced"])
def test_check_config_rejects_an_unknown_class_weight_mode(mode):
    assert {"none", "balanced"} <= set(loop.CLASS_WEIGHT_MODES)
    with pytest.raises(ValueError, match=re.escape(f"class_weight must be one of {loop.CLASS_WEIGHT_MODES}, "
                                                   f"got '{mode}'")):
        loop.check_config({**CONFIG, "class_weight": mode}, 1000)


@pytest.mark.parametrize("mode", [*loop.CLASS_WEIGHT_MODES, None])
def test_check_config_accepts_the_class_weight_modes(mode):
    loop.check_config({**CONFIG, "class_weight": mode}, 1000)


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


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, synthetic_dataset, build_model):
    """entropy seed 0 with one step, every ``fit`` call recorded."""
    folder = tmp_path_factory.mktemp("recorded")
    calls = []
    run(synthetic_dataset, recording_builder(build_model, calls), folder, config={**CONFIG, "n_steps": 1})
    return {"calls": calls, "run": read(folder)}


def check_training_saw_only_selected_labels(data, calls, run_dict, early_stopping):
    config = run_dict["config"]
    chosen = selections(run_dict)
    index = row_index(data.x_train)
    test_rows = {row.tobytes() for row in data.x_test}
    assert len(calls) == config["n_steps"] + 1

    for step, call in enumerate(calls):
        labeled = set(np.concatenate(chosen[: step + 1]).tolist())
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
            n_val = round(config["val_fraction"] * len(labeled))
            assert len(call["val"][0]) == n_val
            # Class weights come from the fit part of the labeled set only.
            expected = loop.class_weights(call["y"], len(data.class_names), "balanced")
            assert call["class_weight"] == expected
        else:
            assert call["val"] is None and call["class_weight"] is None


def test_training_only_sees_selected_labels(recorded, synthetic_dataset):
    check_training_saw_only_selected_labels(synthetic_dataset, recorded["calls"], recorded["run"], False)


def test_training_with_a_validation_split_only_sees_selected_labels(tmp_path, synthetic_dataset, build_model):
    config = {**CONFIG, "n_steps": 1, "patience": 1, "val_fraction": 0.25, "epochs": 3,
              "class_weight": "balanced"}
    calls = []
    run(synthetic_dataset, recording_builder(build_model, calls), tmp_path, config=config)
    check_training_saw_only_selected_labels(synthetic_dataset, calls, read(tmp_path), True)


def test_validation_split_always_leaves_training_samples(synthetic_dataset, build_model):
    # round(0.98 * 20) = 20: every labeled sample went to validation and fit() trained on nothing
    # (Keras only warns "Your input ran out of data"), silently giving an untrained model.
    calls = []
    config = {**CONFIG, "patience": 1, "val_fraction": 0.98}
    x, y = synthetic_dataset.x_train[:20], synthetic_dataset.y_train[:20]
    try:
        loop.train_fresh_model(recording_builder(build_model, calls), config, x, y, 3, [0, 0])
    except ValueError:
        return  # refusing is fine too
    assert len(calls[0]["x"]) > 0, "fit() got zero training samples"


# --------------------------------------------------------------------------- select_next
class RecordingStrategy:
    """Records the arguments of ``select`` and returns the first ``batch_size`` positions (or ``answer``)."""

    name, uses_model = "recording", True

    def __init__(self, answer=None):
        self.calls, self.answer = [], answer

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        self.calls.append({"model": model, "x_unlabeled": x_unlabeled, "batch_size": batch_size,
                           "rng": rng, "x_labeled": x_labeled})
        return np.arange(batch_size) if self.answer is None else np.asarray(self.answer)


def test_select_next_passes_the_samples_of_the_pool_and_of_the_labeled_set(synthetic_dataset):
    data = synthetic_dataset
    strategy, model, rng = RecordingStrategy(), object(), np.random.default_rng(0)
    labeled = np.array([5, 3, 17, 250])
    chosen = loop.select_next(strategy, model, data, labeled, CONFIG, rng)
    (call,) = strategy.calls
    unlabeled = np.setdiff1d(np.arange(len(data.x_train)), labeled)
    assert call["model"] is model and call["rng"] is rng and call["batch_size"] == CONFIG["batch_size"]
    assert np.array_equal(call["x_labeled"], data.x_train[labeled])      # samples, in labeled order
    assert np.array_equal(call["x_unlabeled"], data.x_train[unlabeled])  # samples, not indices
    assert chosen.tolist() == unlabeled[:CONFIG["batch_size"]].tolist()  # positions -> dataset indices


def test_select_next_excludes_labeled_samples(synthetic_dataset):
    labeled = np.arange(0, 290)  # leaves exactly 10 unlabeled samples
    chosen = loop.select_next(get_strategy("random"), None, synthetic_dataset, labeled,
                              {**CONFIG, "batch_size": 10}, np.random.default_rng(0))
    assert sorted(chosen.tolist()) == list(range(290, 300))


def test_select_next_scores_a_random_unlabeled_subsample(synthetic_dataset):
    data = synthetic_dataset
    strategy = RecordingStrategy(answer=[29, 0, 5, 7, 11, 2, 3, 13, 17, 19])
    labeled = np.arange(0, 300, 2)
    chosen = loop.select_next(strategy, object(), data, labeled, {**CONFIG, "pool_subsample": 30},
                              np.random.default_rng(0))
    pool = strategy.calls[0]["x_unlabeled"]
    index = row_index(data.x_train)
    scored = [index[row.tobytes()] for row in pool]
    assert len(scored) == 30 and len(set(scored)) == 30 and not set(scored) & set(labeled.tolist())
    assert np.array_equal(data.x_train[chosen], pool[strategy.answer])


def test_select_next_refuses_a_strategy_that_repeats_a_sample(synthetic_dataset):
    strategy = RecordingStrategy(answer=[0, 1, 2, 3, 4, 5, 6, 7, 8, 8])
    with pytest.raises(RuntimeError, match="duplicate"):
        loop.select_next(strategy, object(), synthetic_dataset, np.arange(20), CONFIG,
                         np.random.default_rng(0))


# --------------------------------------------------------------------------- class weights
def test_balanced_class_weights_come_from_labeled_counts():
    weights = loop.class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights == pytest.approx({0: 4 / (2 * 3), 1: 4 / (2 * 1), 2: 1.0})


def test_balanced_class_weights_of_a_balanced_set_are_one():
    assert loop.class_weights(np.array([0, 1, 2, 0, 1, 2]), 3, "balanced") == pytest.approx(
        {0: 1.0, 1: 1.0, 2: 1.0})


@pytest.mark.parametrize("mode", [None, "none", ""])
def test_no_class_weights_when_disabled(mode):
    assert loop.class_weights(np.array([0, 1]), 2, mode) is None


def test_unknown_class_weight_mode_is_rejected():
    with pytest.raises(ValueError, match="balanced"):
        loop.class_weights(np.array([0, 1]), 2, "inverse")


# --------------------------------------------------------------------------- base samples
def with_base(data, n_base=30):
    """The synthetic data with its first ``n_base`` pool samples moved to the base set."""
    return data_common.Dataset(data.x_train[n_base:], data.y_train[n_base:], data.x_test, data.y_test,
                               data.class_names, source="synthetic with base", origin="synthetic",
                               x_base=data.x_train[:n_base], y_base=data.y_train[:n_base])


def test_base_samples_are_in_every_training_set_but_never_selected_or_counted(
        synthetic_dataset, build_model, tmp_path, monkeypatch):
    data = with_base(synthetic_dataset)
    trained = []
    real = loop.train_fresh_model

    def train(build, config, x, y, n_classes, seed_seq):
        trained.append({r.tobytes() for r in x})
        return real(build, config, x, y, n_classes, seed_seq)
    monkeypatch.setattr(loop, "train_fresh_model", train)
    result = run(data, build_model, tmp_path, strategy="margin", config={**CONFIG, "start_size": 0})
    assert [s["n_labeled"] for s in result["steps"]] == [0, 10, 20]
    assert result["steps"][0]["selected"] == []
    base = {r.tobytes() for r in data.x_base}
    for step, rows in zip(result["steps"], trained):
        chosen = {data.x_train[i].tobytes() for s in result["steps"][: step["step"] + 1] for i in s["selected"]}
        assert rows == base | chosen  # base samples plus the selected ones, nothing else
    assert all(0 <= i < len(data.y_train) for s in result["steps"] for i in s["selected"])
    assert result["provenance"]["data"]["n_base"] == 30


def test_start_size_zero_needs_base_samples(synthetic_dataset, build_model, tmp_path):
    with pytest.raises(ValueError, match="0 only for data with base samples"):
        run(synthetic_dataset, build_model, tmp_path, config={**CONFIG, "start_size": 0})


def test_base_samples_change_the_data_hash_and_their_absence_keeps_the_old_one(synthetic_dataset):
    plain = data_common.Dataset(synthetic_dataset.x_train, synthetic_dataset.y_train, synthetic_dataset.x_test,
                                synthetic_dataset.y_test, synthetic_dataset.class_names, source="s")
    assert plain.sha256 == synthetic_dataset.sha256 and "n_base" not in plain.provenance()
    assert with_base(synthetic_dataset, 30).sha256 != with_base(synthetic_dataset, 31).sha256
    with pytest.raises(ValueError, match="give both or neither"):
        data_common.Dataset(plain.x_train, plain.y_train, plain.x_test, plain.y_test, plain.class_names,
                            source="s", x_base=plain.x_train[:3])


def test_per_step_batch_sizes_set_each_steps_selection(synthetic_dataset, build_model, tmp_path):
    result = run(synthetic_dataset, build_model, tmp_path, strategy="random",
                 config={**CONFIG, "batch_sizes": [5, 15]})
    assert [s["n_labeled"] for s in result["steps"]] == [20, 25, 40]
    assert [len(s["selected"]) for s in result["steps"]] == [20, 5, 15]
    assert loop.final_budget({**CONFIG, "batch_sizes": [5, 15]}) == 40


@pytest.mark.parametrize("sizes", [[5], [5, 0], [5, 2.5]])
def test_per_step_batch_sizes_need_one_positive_integer_per_step(sizes):
    with pytest.raises(ValueError, match="one positive integer per step"):
        loop.check_config({**CONFIG, "batch_sizes": sizes})


def test_the_hash_of_data_without_base_samples_is_the_one_earlier_runs_recorded():
    # computed with the code before base samples existed (commit 7d860db)
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    y = np.array([0, 1, 2, 0, 1, 2])
    data = data_common.Dataset(x, y, x[:3], y[:3], ("a", "b", "c"), source="s")
    assert data.sha256 == "4527d7da60f0c3cf63822be12bd4ce6a765230fbf03b7fded7230e1c83defa52"


def test_a_run_with_an_empty_first_step_resumes_to_the_same_selections(synthetic_dataset, build_model, tmp_path):
    data = with_base(synthetic_dataset)
    config = {**CONFIG, "start_size": 0}
    finished = run(data, build_model, tmp_path / "a", strategy="margin", config=config)
    partial(tmp_path / "a", tmp_path / "b", strategy="margin", n_steps=1)  # only the empty step 0
    resumed = run(data, build_model, tmp_path / "b", strategy="margin", config=config)
    assert selections(resumed) == selections(finished) and resumed["complete"]


def test_sequential_takes_the_next_beats_in_order_at_every_step(synthetic_dataset, build_model, tmp_path):
    data = with_base(synthetic_dataset)
    result = run(data, build_model, tmp_path, strategy="sequential", config={**CONFIG, "start_size": 0})
    assert selections(result) == [[], list(range(0, 10)), list(range(10, 20))]
