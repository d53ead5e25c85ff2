"""code/stopping_cv.py: cross-validated F1 replayed on finished runs, for the learning curve."""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest

import conftest
import plot_perf
import stopping_cv
from al import loop, runs
from al.stopping import cv_path, replayed_cv_f1

DATASET = "toyreplay"  # the dataset name is the script stopping_cv imports


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """One finished entropy run of the loop on the synthetic data (made once)."""
    data = conftest.make_synthetic_dataset()
    root = tmp_path_factory.mktemp("results")
    run = loop.run_active_learning(dataset=DATASET, data=data, build_model=conftest.tiny_build_model,
                                   config=dict(conftest.LOOP_CONFIG), strategy="entropy", seed=1, results_dir=root)
    return root / DATASET, run, data


@pytest.fixture
def finished_run(one_run, tmp_path, monkeypatch):
    """A copy of that run's folder, and its dataset script importable by name."""
    folder, run, data = one_run
    script = types.ModuleType(DATASET)
    script.load_data = lambda config, data_dir=None: data
    script.build_model = conftest.tiny_build_model
    monkeypatch.setitem(sys.modules, DATASET, script)
    copy = tmp_path / DATASET
    shutil.copytree(folder, copy)
    return copy, run, data


def recording_fits(monkeypatch):
    fitted = []
    real = loop.train_fresh_model

    def train(build_model, config, x, y, n_classes, seed_seq):
        fitted.append((x.copy(), list(seed_seq)))
        return real(build_model, config, x, y, n_classes, seed_seq)
    monkeypatch.setattr(loop, "train_fresh_model", train)
    return fitted


def test_replay_cross_validates_each_step_on_its_labeled_set_only(finished_run, monkeypatch):
    folder, run, data = finished_run
    fitted = recording_fits(monkeypatch)
    assert stopping_cv.main([str(folder)]) == 0
    record = json.loads(cv_path(folder / "entropy_seed1.json").read_text())
    assert [s["step"] for s in record["steps"]] == [0, 1, 2, 3]
    assert [s["n_labeled"] for s in record["steps"]] == [20, 30, 40, 50]
    assert all(s["folds"] == 3 and 0 <= s["cv_macro_f1"] <= 1 for s in record["steps"])
    assert len(fitted) == 4 * 3
    selected = [np.asarray(s["selected"]) for s in run["steps"]]
    for x, (seed, step, stream, fold) in fitted:
        labeled = {r.tobytes() for r in data.x_train[np.concatenate(selected[: step + 1])]}
        assert {r.tobytes() for r in x} <= labeled  # never a label outside the selected set
        assert (seed, stream) == (1, stopping_cv.CV_STREAM) and len(x) < len(labeled)
    assert replayed_cv_f1(folder / "entropy_seed1.json", run) == {
        s["step"]: s["cv_macro_f1"] for s in record["steps"]}


def test_replay_resumes_and_every_k_keeps_the_last_step(finished_run, monkeypatch):
    folder, run, _ = finished_run
    fitted = recording_fits(monkeypatch)
    assert stopping_cv.main([str(folder), "--every", "2"]) == 0
    record = json.loads(cv_path(folder / "entropy_seed1.json").read_text())
    assert [s["step"] for s in record["steps"]] == [0, 2, 3]
    n = len(fitted)
    assert stopping_cv.main([str(folder), "--every", "2"]) == 0
    assert len(fitted) == n  # nothing refitted


def test_a_replay_of_another_run_or_an_edited_replay_is_not_read(finished_run):
    folder, run, _ = finished_run
    assert stopping_cv.main([str(folder), "--every", "3", "--max-folds", "2"]) == 0
    path = cv_path(folder / "entropy_seed1.json")
    assert replayed_cv_f1(folder / "entropy_seed1.json", run)
    assert replayed_cv_f1(folder / "entropy_seed1.json", {**run, "sha256": "0" * 64}) == {}
    record = json.loads(path.read_text())
    record["steps"][0]["cv_macro_f1"] = 1.0
    runs.write_json_atomic(path, record)
    assert replayed_cv_f1(folder / "entropy_seed1.json", run) == {}


def test_the_stopping_table_reads_the_learning_curve_from_the_replay(finished_run):
    folder, run, _ = finished_run
    assert all("learning_curve" not in row for row in plot_perf.stopping_table([run], ["entropy"]))
    assert stopping_cv.main([str(folder), "--max-folds", "2"]) == 0
    lines = plot_perf.stopping_table([run], ["entropy"], plot_perf.replayed_cv(folder, [run]))
    assert any("learning_curve" in row for row in lines)


def test_a_replay_still_under_way_is_left_out_of_the_stopping_table(finished_run):
    folder, run, _ = finished_run
    assert stopping_cv.main([str(folder), "--max-folds", "2"]) == 0
    path = cv_path(folder / "entropy_seed1.json")
    record = json.loads(path.read_text())
    record["steps"] = record["steps"][:-1]  # as if interrupted before the last step
    record["sha256"] = runs.content_digest(record)
    runs.write_json_atomic(path, record)
    assert replayed_cv_f1(folder / "entropy_seed1.json", run)  # a valid, partial replay
    assert plot_perf.replayed_cv(folder, [run]) == {}
    lines = plot_perf.stopping_table([run], ["entropy"], plot_perf.replayed_cv(folder, [run]))
    assert all("learning_curve" not in row for row in lines)


def test_bad_arguments_are_clear_errors(finished_run, tmp_path):
    folder, _, _ = finished_run
    with pytest.raises(SystemExit, match="no complete runs"):
        stopping_cv.main([str(folder), "--strategies", "margin"])
    with pytest.raises(SystemExit, match="range such as 0-4"):
        stopping_cv.main([str(folder), "--seeds", "a-b"])
    with pytest.raises(SystemExit, match="no results folder"):
        stopping_cv.main([str(tmp_path / "nowhere")])
    assert stopping_cv.parse_seeds("0-2,5") == {0, 1, 2, 5}
