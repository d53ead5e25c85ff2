"""Pure functions of the speed benchmark (no TensorFlow training; the benchmark itself runs by hand)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import benchmark
from al_loop import run_paths
from strategies import entropy, top_k_positions

CONFIG = {"n_steps": 1, "epochs": 3, "conv_filters": [32, 64]}
SEEDS = list(range(10))


# --------------------------------------------------------------------------- entropy and top-k
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_python_loop_entropy_equals_the_vectorized_entropy(dtype):
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=200)
    probs[:20, 0] = 0.0  # zeros are skipped, as 0 * log 0 = 0
    probs[20] = np.eye(5)[2]
    probs = probs.astype(dtype)
    np.testing.assert_allclose(benchmark.python_loop_entropy(probs), entropy(probs), rtol=1e-5, atol=1e-6)


def test_top_k_by_sorting_equals_the_projects_top_k():
    scores = list(np.random.default_rng(1).random(100))
    assert benchmark.top_k_by_sorting(scores, 7) == top_k_positions(np.array(scores), 7).tolist()


# --------------------------------------------------------------------------- scaling and projection
def test_train_time_extrapolates_from_the_epochs_after_the_first():
    # build 1 s, epochs end at 3, 4, 5 (steady 1 s/epoch), fit returns at 5.5; 7 epochs missing.
    assert benchmark.extrapolate_train_seconds(0.0, 1.0, [3.0, 4.0, 5.0], 5.5, 10) == pytest.approx(12.5)


def test_train_time_from_one_epoch_scales_that_epoch():
    assert benchmark.extrapolate_train_seconds(0.0, 1.0, [3.0], 3.2, 4) == pytest.approx(9.2)


def test_train_time_of_all_epochs_is_measured_as_is():
    assert benchmark.extrapolate_train_seconds(0.0, 1.0, [2.0, 3.0], 3.5, 2) == pytest.approx(3.5)


def test_interpolate_is_linear_between_and_beyond_the_points():
    points = {300: 5.0, 100: 1.0}
    assert benchmark.interpolate(200, points) == pytest.approx(3.0)
    assert benchmark.interpolate(400, points) == pytest.approx(7.0)
    assert benchmark.interpolate(50, {100: 2.0}) == 2.0
    assert benchmark.interpolate(1000, {100: 2.0, 200: 1.0}) == 0.0  # durations stay >= 0


def test_protocol_projection_sums_a_hand_computed_example():
    # Labels 10, 20, 30. Train 1, 2, 3 (sum 6); eval 0.5, 1, 1.5 (sum 3) for every run; scoring
    # at steps 1 and 2 with the models of 10 and 20 labels: 4 + 3 = 7, for entropy runs only.
    step_seconds = {10: {"train": 1.0, "score": 4.0, "eval": 0.5},
                    30: {"train": 3.0, "score": 2.0, "eval": 1.5}}
    got = benchmark.project_protocol_seconds(step_seconds, 10, 10, 2, n_seeds=2,
                                             strategies=["random", "entropy"])
    assert got == pytest.approx({"train": 24.0, "score": 14.0, "eval": 12.0, "total": 50.0})


def test_label_counts_are_the_first_and_final_budget_of_each_script():
    import mitbih
    import mnist
    assert benchmark.benchmark_label_counts(benchmark.protocol_of(mnist), smoke=False) == [256, 1408]
    assert benchmark.benchmark_label_counts(benchmark.protocol_of(mitbih), smoke=False) == [256, 2944]
    assert benchmark.default_config(mnist)["epochs"] == mnist.EPOCHS
    assert not set(benchmark.default_config(mnist)) & {"n_seeds", "strategies"}


def test_step_data_puts_the_seeded_labeled_set_first_and_keeps_the_rest_as_pool(synthetic_dataset):
    part, labeled_idx = benchmark.step_data(synthetic_dataset, 30, smoke=False)
    chosen = np.random.default_rng(0).choice(len(synthetic_dataset.x_train), 30, replace=False)
    np.testing.assert_array_equal(part.x_train[labeled_idx], synthetic_dataset.x_train[chosen])
    assert len(part.x_train) == len(synthetic_dataset.x_train)
    rows = {r.tobytes() for r in part.x_train}
    assert rows == {r.tobytes() for r in synthetic_dataset.x_train}


# --------------------------------------------------------------------------- grid log
def grid_line(started_at, **changes) -> dict:
    line = {"started_at": started_at, "wall_seconds": 1000.0, "jobs": 2, "cpu_cores": 2,
            "machine": "x86_64", "n_runs": 20, "strategies": ["random", "entropy"],
            "seeds": SEEDS, "fresh": True, "git_commit": "abc", "config": CONFIG}
    return {**line, **changes}


def write_log(results_dir, lines, extra_text="") -> None:
    path = results_dir / "mnist" / "state" / "grid_log.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + extra_text)


def write_results(results_dir, finished_at, config=CONFIG, complete=True) -> None:
    for strategy in ("random", "entropy"):
        for seed in SEEDS:
            result_path, _ = run_paths(results_dir, "mnist", strategy, seed)
            result_path.parent.mkdir(parents=True, exist_ok=True)
            steps = [{"step": s, "finished_at": finished_at + s} for s in range(CONFIG["n_steps"] + 1)]
            result_path.write_text(json.dumps({"complete": complete, "config": config, "steps": steps}))


def latest(results_dir):
    return benchmark.latest_protocol_run(results_dir, "mnist", CONFIG, 10, ["entropy", "random"], 2)


def test_grid_log_picks_the_latest_fresh_default_protocol_run(tmp_path):
    write_log(tmp_path, [
        grid_line(100),
        grid_line(50),
        grid_line(300, config={**CONFIG, "n_steps": 2}),     # not the default budget
        grid_line(400, seeds=[0, 1]),                          # too few seeds
        grid_line(500, strategies=["random", "entropy", "margin"]),  # wider grid
        grid_line(600, fresh=False),                           # may have resumed: no result files
        grid_line(700, cpu_cores=16),                          # another machine
    ], extra_text='{"started_at": 900, "wall_')                # an interrupted append
    assert latest(tmp_path)["started_at"] == 100


def test_grid_log_accepts_a_resumable_run_whose_steps_all_finished_during_it(tmp_path):
    write_log(tmp_path, [grid_line(100), grid_line(2000, fresh=False)])
    write_results(tmp_path, finished_at=2500)
    assert latest(tmp_path)["started_at"] == 2000


def test_grid_log_rejects_a_run_that_took_over_steps_from_an_earlier_run(tmp_path):
    write_log(tmp_path, [grid_line(100), grid_line(2000, fresh=False)])
    write_results(tmp_path, finished_at=1500)  # steps finished before the grid started
    assert latest(tmp_path)["started_at"] == 100


def test_grid_log_rejects_a_resumable_run_with_incomplete_results(tmp_path):
    write_log(tmp_path, [grid_line(2000, fresh=False)])
    write_results(tmp_path, finished_at=2500, complete=False)
    assert latest(tmp_path) is None


def test_missing_grid_log_gives_none(tmp_path):
    assert benchmark.read_grid_log(tmp_path / "nothing.jsonl") == []
    assert latest(tmp_path) is None


# --------------------------------------------------------------------------- report
def fake_measurement(dataset, kind, n, total):
    third = total / 3
    return {"dataset": dataset, "kind": kind, "n_labeled": n, "n_pool": 1000, "n_test": 100,
            "seconds": {"train": third, "score": third, "eval": third, "total": total},
            "measured_seconds": {"train": third / 2, "score": third, "eval": third},
            "scaled": {"train": kind == "reference", "score": False, "eval": False},
            "epochs": {"full": 4, "measured": 2}, "n_scored": 1000, "score_fraction": 1.0,
            "tensorflow": "x", "gpus": [], "jobs": 2, "threads": 1}


def test_report_has_the_promised_keys_and_ratios(tmp_path):
    plan = {"config": CONFIG, "results_folder": "mnist", "label_counts": [10, 30],
            "protocol": {"start_size": 10, "batch_size": 10, "n_steps": 2, "n_seeds": 10,
                         "strategies": ["random", "entropy"]}}
    measurements = [fake_measurement("mnist", kind, n, total) for kind, n, total in
                    [("reference", 10, 30.0), ("ours", 10, 3.0), ("reference", 30, 60.0), ("ours", 30, 4.0)]]
    write_log(tmp_path, [grid_line(100, wall_seconds=120.0)])
    args = argparse.Namespace(protocol_results_dir=tmp_path, smoke=False, jobs=None,
                              ref_train_epochs_measured=2, ref_score_fraction=1.0)
    report = benchmark.build_report({"mnist": plan}, measurements, args, "python code/benchmark.py")
    assert report["speedup_step_mnist"] == pytest.approx(15.0)
    assert report["speedup_step_mitbih"] is None
    assert report["protocol_minutes_measured"] == pytest.approx(2.0)
    projected = report["reference_protocol_minutes_projected"]
    assert report["speedup_protocol"] == pytest.approx(projected / 2.0)
    assert report["cpu_cores"] >= 1
    text = benchmark.markdown(report)
    assert "| mnist | 30 |" in text and "15.0x" in text and "10.0*" in text
    json.dumps(report)  # everything is serializable
