"""Pure functions of the speed benchmark and of al.bench (no TensorFlow training; the
benchmark itself runs by hand)."""

from __future__ import annotations

import argparse
import ast
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import benchmark
import mitbih
import mnist
from al import bench, cli, data_common, runs
from al.strategies import entropy, top_k_positions

CONFIG = {"n_steps": 1, "epochs": 3, "conv_filters": [32, 64], "threads": 1}
SEEDS = list(range(10))
CODE = Path(__file__).resolve().parents[1] / "code"


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
    assert benchmark.benchmark_label_counts(bench.protocol_of(mnist), smoke=False) == [256, 1408]
    assert benchmark.benchmark_label_counts(bench.protocol_of(mitbih), smoke=False) == [256, 2944]
    assert bench.final_budget(bench.protocol_of(mnist)) == 1408
    assert bench.default_config(mnist)["epochs"] == mnist.EPOCHS
    assert not set(bench.default_config(mnist)) & {"n_seeds", "strategies"}


def test_default_config_is_the_config_the_dataset_script_runs_with():
    # what cli.parse_config builds from the script's page with no options, --threads included
    for script in (mnist, mitbih):
        config, grid, _ = cli.parse_config(script.__name__, cli.hyperparameters(vars(script)), [])
        assert bench.default_config(script) == config
        assert bench.default_config(vars(script), threads=3) == {**config, "threads": 3}
        assert bench.protocol_of(script)["strategies"] == grid["strategies"]
    assert bench.default_config(mnist)["threads"] == cli.DEFAULT_THREADS == 1


def test_the_library_imports_no_script_and_no_script_imports_another_script():
    scripts = {p.stem for p in CODE.glob("*.py")}
    for path in [CODE / "al" / "bench.py", *(CODE / f"{s}.py" for s in ("benchmark", "bench_training",
                                                                         "bench_scoring"))]:
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & scripts, f"{path.name} imports the scripts {imported & scripts}"
        nested = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                  for inner in ast.walk(node) if isinstance(inner, ast.ImportFrom)
                  and (inner.module or "").split(".")[0] == "al"]
        assert not nested, f"{path.name} imports project modules inside functions"


def test_benchmark_threads_option_replaces_jobs(tmp_path, capsys):
    out = ["--out-dir", str(tmp_path)]
    assert benchmark.parse_args(["--smoke", *out]).threads == cli.DEFAULT_THREADS
    args = benchmark.parse_args(["--smoke", "--threads", "4", *out])
    assert args.threads == 4 and args.out_dir == tmp_path
    for bad in (["--threads", "0"], ["--jobs", "2"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(bad)
    assert "--jobs" in capsys.readouterr().err
    plans = {"mnist": benchmark.plan_dataset("mnist", smoke=True, threads=4)}
    assert plans["mnist"]["config"]["threads"] == 4
    specs = benchmark.measurement_specs(plans, args)
    assert {s["threads"] for s in specs} == {4} and not any("jobs" in s for s in specs)


def test_step_data_puts_the_seeded_labeled_set_first_and_keeps_the_rest_as_pool(synthetic_dataset):
    part, labeled_idx = benchmark.step_data(synthetic_dataset, 30, smoke=False)
    chosen = np.random.default_rng(0).choice(len(synthetic_dataset.x_train), 30, replace=False)
    np.testing.assert_array_equal(part.x_train[labeled_idx], synthetic_dataset.x_train[chosen])
    assert len(part.x_train) == len(synthetic_dataset.x_train)
    rows = {r.tobytes() for r in part.x_train}
    assert rows == {r.tobytes() for r in synthetic_dataset.x_train}


# --------------------------------------------------------------------------- grid log
def grid_line(started_at, **changes) -> dict:
    line = {"started_at": started_at, "wall_seconds": 1000.0, "jobs": 2, "threads": 1, "cpu_cores": 2,
            "cpu_model": "AMD EPYC", "machine": "x86_64", "n_runs": 20, "strategies": ["random", "entropy"],
            "seeds": SEEDS, "fresh": True, "git_commit": "abc", "config": CONFIG}
    return {**line, **changes}


def write_log(results_dir, lines, extra_text="") -> None:
    path = results_dir / "mnist" / "grid_log.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + extra_text)


def run_file(strategy, seed, finished_at, config=CONFIG, complete=True) -> dict:
    """A run that al.runs.read_run accepts: step 0 labels 2 samples, each later step 1 more."""
    n_steps = config["n_steps"] + (0 if complete else -1)
    steps = [{"step": s, "n_labeled": 2 + s, "macro_f1": 0.5, "accuracy": 0.5,
              "per_class_f1": {"0": 0.5, "1": 0.5}, "labeled_class_counts": {"0": 1, "1": 1 + s},
              "train_seconds": 1.0, "score_seconds": 0.0, "eval_seconds": 0.1,
              "finished_at": finished_at + s, "selected": [0, 1] if s == 0 else [1 + s]}
             for s in range(n_steps + 1)]
    return {"format": runs.FORMAT, "dataset": "mnist", "strategy": strategy, "seed": seed,
            "config": config, "git_commit": "abc", "versions": {},
            "provenance": {"data": {"origin": "x", "sha256": "0" * 64, "n_train": 10, "n_test": 5},
                           "cpu_model": "x", "threads": 1, "settings": {}, "resumed": []},
            "complete": complete, "steps": steps, "sha256": ""}


def write_results(results_dir, finished_at, config=CONFIG, complete=True) -> None:
    for strategy in ("random", "entropy"):
        for seed in SEEDS:
            path = runs.run_path(results_dir, "mnist", strategy, seed)
            runs.save_run(path, run_file(strategy, seed, finished_at, config, complete))
            runs.read_run(path)  # the fixture itself is a valid run file


def latest(results_dir):
    return benchmark.latest_protocol_run(results_dir, "mnist", CONFIG, 10, ["entropy", "random"], 2, "AMD EPYC")


def test_grid_log_picks_the_latest_fresh_default_protocol_run(tmp_path):
    write_log(tmp_path, [
        grid_line(100),
        grid_line(50),
        grid_line(300, config={**CONFIG, "n_steps": 2}),     # not the default budget
        grid_line(400, seeds=[0, 1]),                          # too few seeds
        grid_line(500, strategies=["random", "entropy", "margin"]),  # wider grid
        grid_line(600, fresh=False),                           # may have resumed: no result files
        grid_line(700, cpu_cores=16),                          # another machine
        grid_line(800, cpu_model="Intel(R) Xeon(R) Processor"),  # another CPU model
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


def test_grid_log_rejects_a_resumable_run_whose_run_file_was_edited_or_is_missing(tmp_path):
    write_log(tmp_path, [grid_line(2000, fresh=False)])
    write_results(tmp_path, finished_at=2500)
    assert latest(tmp_path)["started_at"] == 2000
    path = runs.run_path(tmp_path, "mnist", "entropy", 3)
    edited = json.loads(path.read_text())
    edited["steps"][1]["macro_f1"] = 0.9  # a hand edit: the digest no longer matches
    path.write_text(json.dumps(edited))
    assert latest(tmp_path) is None
    path.unlink()
    assert latest(tmp_path) is None


def test_grid_log_of_another_thread_count_is_not_the_protocol(tmp_path):
    write_log(tmp_path, [grid_line(100, config={**CONFIG, "threads": 2})])
    assert latest(tmp_path) is None


def test_missing_grid_log_gives_none(tmp_path):
    assert runs.read_jsonl(tmp_path / "nothing.jsonl") == []
    assert latest(tmp_path) is None


# --------------------------------------------------------------------------- report
def fake_measurement(dataset, kind, n, total):
    third = total / 3
    return {"dataset": dataset, "kind": kind, "n_labeled": n, "n_pool": 1000, "n_test": 100,
            "seconds": {"train": third, "score": third, "eval": third, "total": total},
            "measured_seconds": {"train": third / 2, "score": third, "eval": third},
            "scaled": {"train": kind == "reference", "score": False, "eval": False},
            "epochs": {"full": 4, "measured": 2}, "n_scored": 1000, "score_fraction": 1.0,
            "tensorflow": "x", "gpus": [], "threads": 1 if kind == "ours" else "TensorFlow default"}


def test_report_has_the_promised_keys_and_ratios(tmp_path):
    plan = {"config": CONFIG, "results_folder": "mnist", "label_counts": [10, 30],
            "protocol": {"start_size": 10, "batch_size": 10, "n_steps": 2, "n_seeds": 10,
                         "strategies": ["random", "entropy"]}}
    measurements = [fake_measurement("mnist", kind, n, total) for kind, n, total in
                    [("reference", 10, 30.0), ("ours", 10, 3.0), ("reference", 30, 60.0), ("ours", 30, 4.0)]]
    write_log(tmp_path, [grid_line(100, wall_seconds=120.0, cpu_cores=os.cpu_count(), cpu_model=runs.cpu_model())])
    args = argparse.Namespace(protocol_results_dir=tmp_path, smoke=False, threads=1,
                              ref_train_epochs_measured=2, ref_score_fraction=1.0)
    report = benchmark.build_report({"mnist": plan}, measurements, args, "python code/benchmark.py")
    assert report["speedup_step_mnist"] == pytest.approx(15.0)
    assert report["speedup_step_mitbih"] is None
    assert report["protocol_minutes_measured"] == pytest.approx(2.0)
    projected = report["reference_protocol_minutes_projected"]
    assert report["speedup_protocol"] == pytest.approx(projected / 2.0)
    assert report["cpu_cores"] >= 1
    assert report["ours_threads"] == 1 and report["options"]["threads"] == 1 and "ours_jobs" not in report
    text = benchmark.markdown(report)
    assert "| mnist | 30 |" in text and "15.0x" in text and "10.0*" in text
    mnist = report["datasets"]["mnist"]
    # ours, one process: each component is a third of the step (1 s at 10 labels, 4/3 s at 30,
    # 7/6 s at 20 interpolated); 10 seeds x 2 strategies train and evaluate at 10, 20 and 30
    # labels; the 10 entropy runs score at 10 and 20 labels
    serial = (20 * 2 * (1 + 7 / 6 + 4 / 3) + 10 * (1 + 7 / 6)) / 60
    assert mnist["ours_protocol_minutes_projected_serial"] == pytest.approx(serial)
    assert mnist["ours_protocol_minutes_projected_parallel"] == pytest.approx(serial / report["cpu_cores"])
    assert f"| mnist | {projected:.1f} | {serial:.1f} | {serial / report['cpu_cores']:.1f} | 2.0 |" in text
    assert "--threads 1" in text and "--jobs" not in text and "state/" not in text
    json.dumps(report)  # everything is serializable
    benchmark.write_outputs(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "out" / "benchmark.md").read_text() == text
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporary file


# --------------------------------------------------------------------------- al.bench
def test_side_by_side_options_and_report(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_side_by_side_arguments(parser, "bench_x", "repeats")
    args = parser.parse_args([])
    assert args.threads == cli.DEFAULT_THREADS and args.repeats == 2 and args.out_dir is None
    args = parser.parse_args(["--threads", "3", "--out-dir", str(tmp_path)])
    args.smoke = False
    rows = [{"tensorflow": "2.x", "gpus": [], "value": 1}]
    report = bench.write_side_by_side("bench_x", args, ["--threads", "3"], rows,
                                      lambda r: "\n".join(bench.side_by_side_header(r, "Title")) + "\n")
    assert report["command"] == "python code/bench_x.py --threads 3"
    assert json.loads((tmp_path / "bench_x.json").read_text())["measurements"] == rows
    md = (tmp_path / "bench_x.md").read_text()
    assert md.startswith("# Title\n") and "- Command: `python code/bench_x.py --threads 3`" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_configure_process_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="kind"):
        bench.configure_process("published")


def double_each(specs):
    return [{**s, "value": 2 * s["value"], "pid": os.getpid()} for s in specs]


def test_in_fresh_process_runs_the_worker_in_another_process():
    got = bench.in_fresh_process([{"value": 1}, {"value": 4}], double_each)
    assert [g["value"] for g in got] == [2, 8]
    assert got[0]["pid"] != os.getpid()


# --------------------------------------------------------------------------- the published references
# CVxTz/active_learning code/active_learning_mnist.py, get_model(): the layer stack, in order.
PUBLISHED_MNIST_STACK = [
    ("InputLayer", None), ("Conv2D", (64, "same")), ("Conv2D", (64, "same")), ("MaxPooling2D", 2),
    ("Dropout", 0.1), ("Conv2D", (128, "same")), ("Conv2D", (128, "same")), ("MaxPooling2D", 2),
    ("Dropout", 0.1), ("Conv2D", (256, "valid")), ("Conv2D", (256, "valid")),
    ("GlobalMaxPooling2D", None), ("Dropout", 0.1), ("Dense", 64), ("PermanentDropout", 0.1),
    ("Dense", 64), ("PermanentDropout", 0.1), ("Dense", 10),
]
# 3x3 convolutions 1-64-64-128-128-256-256, Dense 256-64-64-10, with biases
PUBLISHED_MNIST_PARAMS = (9 * 1 * 64 + 64) + (9 * 64 * 64 + 64) + (9 * 64 * 128 + 128) + (9 * 128 * 128 + 128) \
    + (9 * 128 * 256 + 256) + (9 * 256 * 256 + 256) + (256 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)


def layer_signature(layer):
    kind = type(layer).__name__
    if kind == "Conv2D":
        assert layer.kernel_size == (3, 3) and layer.activation.__name__ == "relu"
        return kind, (layer.filters, layer.padding)
    if kind == "MaxPooling2D":
        return kind, layer.pool_size[0]
    if kind in ("Dropout", "PermanentDropout"):
        return kind, layer.rate
    if kind == "Dense":
        return kind, layer.units
    return kind, None


def test_mnist_reference_is_the_published_network_optimizer_and_metric():
    import keras
    keras.backend.clear_session()
    model = benchmark.build_reference_mnist_cnn((28, 28, 1), 10)
    assert [layer_signature(layer) for layer in model.layers] == PUBLISHED_MNIST_STACK
    assert model.count_params() == PUBLISHED_MNIST_PARAMS == 1_165_514
    assert tuple(model.inputs[0].shape) == (None, None, None, 1)  # Input(shape=(None, None, 1))
    assert [layer.activation.__name__ for layer in model.layers if type(layer).__name__ == "Dense"] \
        == ["relu", "relu", "softmax"]
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4)
    logs = model.evaluate(np.zeros((2, 28, 28, 1)), np.zeros(2), verbose=0, return_dict=True)
    assert set(logs) == {"loss", "acc"}  # metrics=['acc']: what the callbacks monitor as val_acc


def test_permanent_dropout_samples_a_fresh_inverted_mask_in_predict_too():
    import keras
    layer = benchmark.permanent_dropout_class()(0.5)
    model = keras.Sequential([keras.Input(shape=(200,)), layer])
    ones = np.ones((4, 200), dtype=np.float32)
    first, second = model.predict(ones, verbose=0), model.predict(ones, verbose=0)
    assert set(np.unique(first)) == {0.0, 2.0}  # kept units scaled by 1 / (1 - rate), as K.dropout
    assert not np.array_equal(first, second)
    assert not np.array_equal(first[0], first[1])  # every sample its own mask


def test_mnist_reference_predictions_differ_between_passes_only_through_the_permanent_dropout():
    import keras
    keras.backend.clear_session()  # as reference_train does: the network names two layers dense_1/_2
    model = benchmark.build_reference_mnist_cnn((28, 28, 1), 10)
    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype(np.float64)
    assert not np.allclose(model.predict(x, verbose=0), model.predict(x, verbose=0))
    for layer in model.layers:
        if type(layer).__name__ == "PermanentDropout":
            layer.rate = 0.0
    # eager inference calls (a compiled predict would keep the traced rate)
    np.testing.assert_allclose(model(x, training=False), model(x, training=False), rtol=1e-5)


def test_mnist_reference_callbacks_are_the_published_ones():
    import keras
    check, reduce, early = benchmark.published_mnist_callbacks("/tmp/x/model.weights.h5")
    assert isinstance(check, keras.callbacks.ModelCheckpoint)
    assert (check.monitor, check.save_best_only, check.save_weights_only) == ("val_acc", True, True)
    assert isinstance(reduce, keras.callbacks.ReduceLROnPlateau)
    assert (reduce.monitor, reduce.patience, reduce.min_lr, reduce.factor) == ("val_acc", 30, 1e-7, 0.1)
    assert isinstance(early, keras.callbacks.EarlyStopping)
    assert (early.monitor, early.patience, early.restore_best_weights) == ("val_acc", 40, False)


def test_references_run_the_published_recipe_of_each_dataset():
    mnist_ref, ecg_ref = benchmark.REFERENCES["mnist"], benchmark.REFERENCES["mitbih"]
    assert mnist_ref.build is benchmark.build_reference_mnist_cnn
    assert (mnist_ref.epochs, mnist_ref.predict_passes, mnist_ref.validation_size, mnist_ref.test_batch_size) \
        == (120, 5, 256, 1024)
    assert mnist_ref.callbacks is benchmark.published_mnist_callbacks
    assert mnist_ref.entropy is benchmark.published_list_entropy
    assert mnist_ref.select is benchmark.select_by_sorted_threshold
    assert mnist_ref.inputs is benchmark.published_mnist_pixels
    assert ecg_ref == benchmark.Reference(benchmark.build_reference_ecg_net, epochs=45)  # unchanged
    assert (ecg_ref.predict_passes, ecg_ref.validation_size, ecg_ref.callbacks, ecg_ref.test_batch_size) \
        == (1, 0, None, 32)
    assert benchmark.early_stopping_datasets(["mitbih", "mnist"]) == ["mnist"]


class RecordingModel:
    """Stands in for a Keras model: ``predict`` returns fixed probabilities and records its calls."""

    def __init__(self, outputs):
        self.outputs, self.calls = list(outputs), []

    def predict(self, x, batch_size=None, verbose=None):
        self.calls.append((len(x), batch_size))
        return self.outputs[len(self.calls) - 1]


def test_reference_scoring_averages_the_published_number_of_predict_passes_at_batch_32():
    rng = np.random.default_rng(0)
    outputs = [rng.dirichlet(np.ones(3), size=6) for _ in range(5)]
    model = RecordingModel(outputs)
    probs = benchmark.reference_probs(model, np.zeros((6, 2)), benchmark.REFERENCES["mnist"].predict_passes)
    assert model.calls == [(6, 32)] * 5
    np.testing.assert_allclose(probs, np.mean(outputs, axis=0))
    single = RecordingModel(outputs)
    np.testing.assert_array_equal(benchmark.reference_probs(single, np.zeros((6, 2)), 1), outputs[0])
    assert single.calls == [(6, 32)]


def test_published_entropy_is_the_clipped_entropy_of_each_row():
    probs = np.random.default_rng(2).dirichlet(np.ones(4), size=50)
    probs[0] = np.eye(4)[1]  # a one-hot row: the clip makes it (almost) 0, no nan
    got = benchmark.published_list_entropy(probs)
    assert isinstance(got, list) and len(got) == 50
    np.testing.assert_allclose(got, entropy(probs), rtol=1e-9, atol=1e-9)


def test_sorted_threshold_selection_keeps_the_published_k_plus_one_and_ties():
    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    assert benchmark.select_by_sorted_threshold(scores, 2) == [1, 2, 3]  # the 3 highest
    assert benchmark.select_by_sorted_threshold([0.2, 0.5, 0.5, 0.5, 0.1], 1) == [1, 2, 3]
    with pytest.raises(ValueError, match="more than k = 3"):
        benchmark.select_by_sorted_threshold([0.1, 0.2, 0.3], 3)


def test_published_mnist_pixels_are_the_raw_bytes_as_float64():
    raw = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    scaled = (raw.astype(np.float32) / 255.0)  # what al.data_mnist loads
    pixels = benchmark.published_mnist_pixels(scaled)
    assert pixels.dtype == np.float64
    np.testing.assert_array_equal(pixels, raw.astype(np.float64))


def test_reference_split_takes_the_validation_set_out_of_the_scored_pool():
    val, pool = benchmark.reference_split(100, 10, 20, seed=3)
    assert len(val) == 20 and len(pool) == 70
    assert not set(val) & set(pool) and min(val.min(), pool.min()) >= 10
    assert set(val) | set(pool) == set(range(10, 100))
    np.testing.assert_array_equal(val, benchmark.reference_split(100, 10, 20, seed=3)[0])
    assert len(benchmark.reference_split(100, 10, 0)[0]) == 0
    with pytest.raises(ValueError, match="validation set of 90"):
        benchmark.reference_split(100, 10, 90)


def constant_model(input_shape, n_classes):
    """Softmax of frozen weights: val_acc never changes, so early stopping ends at its patience."""
    import keras
    model = keras.Sequential([keras.Input(shape=input_shape), keras.layers.Flatten(),
                              keras.layers.Dense(n_classes, activation="softmax", trainable=False)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["acc"])
    return model


def test_published_callbacks_stop_after_40_and_cut_the_rate_after_30_epochs_without_gain():
    import keras
    model = constant_model((2,), 3)
    model.evaluate(np.zeros((2, 2)), np.zeros(2), verbose=0)  # builds the metric the modes are read from
    callbacks = keras.callbacks.CallbackList(benchmark.published_mnist_callbacks("/nonexistent/x.weights.h5"),
                                             model=model)
    check, reduce, early = callbacks.callbacks
    check.on_epoch_end = lambda epoch, logs=None: None  # no file; only ReduceLROnPlateau and EarlyStopping
    callbacks.on_train_begin()
    rates, epochs = [], 0
    while not model.stop_training and epochs < 120:
        logs = {"val_acc": 0.5 if epochs == 0 else 0.4, "loss": 1.0}  # best at epoch 1, then worse
        callbacks.on_epoch_end(epochs, logs)
        rates.append(float(model.optimizer.learning_rate))
        epochs += 1
    assert epochs == 41  # epoch 1 then 40 epochs without improvement
    np.testing.assert_allclose(rates, [1e-3] * 30 + [1e-4] * 11, rtol=1e-6)  # cut after epoch 31


def short_patience_callbacks(path, seen):
    """Checkpoint and early stopping with patience 2; at the end of the fit the weights are
    overwritten with zeros, so only loading the checkpoint gives the best ones back."""
    import keras

    class ZeroWeightsAtTheEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen["best"] = self.model.get_weights()  # frozen weights: the checkpoint's
            self.model.set_weights([np.zeros_like(w) for w in seen["best"]])

    return [keras.callbacks.ModelCheckpoint(path, monitor="val_acc", save_best_only=True, save_weights_only=True),
            keras.callbacks.EarlyStopping(monitor="val_acc", patience=2), ZeroWeightsAtTheEnd()]


def test_reference_training_stops_early_loads_the_best_checkpoint_and_is_measured_in_full(synthetic_dataset):
    import keras
    keras.utils.set_random_seed(0)  # the tests run TensorFlow with deterministic ops (conftest)
    seen = {}
    ref = replace(benchmark.REFERENCES["mnist"], build=constant_model,
                  callbacks=lambda path: short_patience_callbacks(path, seen))
    val, _ = benchmark.reference_split(len(synthetic_dataset.x_train), 16, 16)
    model, train = benchmark.reference_train(ref, synthetic_dataset, np.arange(16), val, ref.epochs)
    assert {k: train["epochs"][k] for k in ("full", "measured", "run", "stopped_early", "early_stopping", "best")} \
        == {"full": 120, "measured": 120, "run": 3, "stopped_early": True, "early_stopping": True, "best": 1}
    assert train["scaled"] is False and train["seconds"] == train["measured_seconds"]
    for got, best in zip(model.get_weights(), seen["best"]):
        np.testing.assert_array_equal(got, best)
    assert np.abs(seen["best"][0]).sum() > 0


def test_reference_training_cut_short_extrapolates_to_the_cap(synthetic_dataset):
    import keras
    keras.utils.set_random_seed(0)
    ref = replace(benchmark.REFERENCES["mnist"], build=constant_model)
    val, _ = benchmark.reference_split(len(synthetic_dataset.x_train), 16, 16)
    _, train = benchmark.reference_train(ref, synthetic_dataset, np.arange(16), val, 3)
    assert train["epochs"]["run"] == 3 and not train["epochs"]["stopped_early"]
    assert train["scaled"] is True and train["seconds"] > train["measured_seconds"]


def test_mnist_reference_step_scores_the_pool_without_the_validation_set():
    import keras
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    data = data_common.Dataset(rng.random((120, 28, 28, 1), dtype=np.float32), np.arange(120) % 10,
                               rng.random((20, 28, 28, 1), dtype=np.float32), np.arange(20) % 10,
                               tuple(str(d) for d in range(10)), source="synthetic")
    ref = replace(benchmark.REFERENCES["mnist"], build=constant_model, validation_size=24)
    data = benchmark.published_inputs(ref, data)
    assert data.x_train.dtype == np.float64 and data.x_train.max() > 1
    got = benchmark.reference_step(ref, data, np.arange(32), 10, epochs_measured=1, score_fraction=0.5)
    assert (got["n_validation"], got["n_pool"], got["n_scored"]) == (24, 64, 32)
    assert got["scaled"] == {"train": True, "score": True, "eval": False}
    assert got["epochs"]["run"] == 1 and got["epochs"]["full"] == 120
    assert got["seconds"]["score"] == pytest.approx(2 * got["measured_seconds"]["score"])


def test_ref_epochs_option_takes_seeds_and_needs_an_early_stopping_dataset(tmp_path, capsys):
    args = benchmark.parse_args(["--ref-epochs", "0,1,2", "--out-dir", str(tmp_path)])
    assert args.ref_epochs == [0, 1, 2]
    plans = {"mnist": benchmark.plan_dataset("mnist", smoke=False)}
    specs = benchmark.reference_epochs_specs(plans, args.ref_epochs, args)
    assert [(s["n_labeled"], s["seed"]) for s in specs] == [(n, s) for n in (256, 1408) for s in (0, 1, 2)]
    assert benchmark.parse_args(["--out-dir", str(tmp_path)]).ref_epochs is None
    for bad in (["--ref-epochs", "a"], ["--ref-epochs", ","], ["--ref-epochs", "0", "--datasets", "mitbih"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args([*bad, "--out-dir", str(tmp_path)])
    assert "has none" in capsys.readouterr().err


def test_reference_epochs_report_summarizes_each_budget(tmp_path):
    rows = [{"dataset": "mnist", "n_labeled": n, "seed": s, "full": 120, "measured": 120, "run": run,
             "stopped_early": run < 120, "early_stopping": True, "best": run - 40, "best_val_acc": 0.9,
             "train_seconds": 2.0 * run, "eval_seconds": 1.0, "n_test": 10, "test_macro_f1": 0.8}
            for n, s, run in [(256, 0, 60), (256, 1, 80), (1408, 0, 120)]]
    report = {"command": "python code/benchmark.py --ref-epochs 0,1", "cpu_cores": 2, "cpu_model": "x",
              "tensorflow": "x", "gpus": [], "git_commit": "abc", "created_at": "now", "smoke": False,
              "planned": 4, "measurements": rows}
    text = benchmark.reference_epochs_markdown(report)
    assert "| mnist | 256 | 1 | 80 | 40 | 0.900 | yes | 160 | 0.8000 |" in text
    assert "| mnist | 256 | 2 | 60 / 70.0 / 80 | 20 / 30.0 / 40 | 140 | 2.0 |" in text
    assert "| mnist | 1408 | 1 | 120 / 120.0 / 120 |" in text and "at most 120 epochs" in text
    assert "3 of 4 planned (interrupted or still running)" in text


# --------------------------------------------------------------------------- --measurements-from
def stored_report(tmp_path, plan):
    """An earlier benchmark report of this machine, with no protocol run yet."""
    measurements = [fake_measurement("mnist", kind, n, total) for kind, n, total in
                    [("reference", 256, 30.0), ("ours", 256, 3.0), ("reference", 1408, 60.0), ("ours", 1408, 4.0)]]
    args = argparse.Namespace(protocol_results_dir=tmp_path / "none", smoke=False, threads=1,
                              ref_train_epochs_measured=None, ref_score_fraction=0.5)
    report = benchmark.build_report({"mnist": plan}, measurements, args, "python code/benchmark.py")
    benchmark.write_outputs(report, tmp_path / "earlier")
    return report, tmp_path / "earlier" / "benchmark.json"


def test_measurements_from_joins_stored_step_times_with_a_later_protocol_run(tmp_path, capsys):
    plan = benchmark.plan_dataset("mnist", smoke=False)
    earlier, path = stored_report(tmp_path, plan)
    assert earlier["protocol_minutes_measured"] is None
    write_log(tmp_path / "later", [grid_line(100, wall_seconds=600.0, config=plan["config"],
                                             cpu_cores=os.cpu_count(), cpu_model=runs.cpu_model())])
    out = tmp_path / "out"
    report = benchmark.main(["--datasets", "mnist", "--measurements-from", str(path),
                             "--protocol-results-dir", str(tmp_path / "later"), "--out-dir", str(out)])
    assert report["protocol_minutes_measured"] == pytest.approx(10.0)
    assert report["datasets"]["mnist"]["measurements"] == earlier["datasets"]["mnist"]["measurements"]
    assert report["reference_protocol_minutes_projected"] == pytest.approx(earlier["reference_protocol_minutes_projected"])
    assert report["options"]["ref_score_fraction"] == 0.5  # the stored measurement's options
    assert report["measurements_from"] == {"path": str(path), "command": "python code/benchmark.py",
                                           "created_at": earlier["created_at"], "git_commit": earlier["git_commit"]}
    text = (out / "benchmark.md").read_text()
    assert f"taken from `{path}`" in text and "| mnist | " in text and "| 10.0 |" in text
    assert f"(`{tmp_path / 'later'}/<dataset>/grid_log.jsonl`)" in text  # the folder it read
    assert "taken from" not in benchmark.markdown(earlier)
    again = benchmark.main(["--datasets", "mnist", "--measurements-from", str(out / "benchmark.json"),
                            "--protocol-results-dir", str(tmp_path / "later"), "--out-dir", str(out)])
    assert again["measurements_from"] == report["measurements_from"]  # the origin, not the rebuild
    assert again["datasets"]["mnist"]["measurements"] == earlier["datasets"]["mnist"]["measurements"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(smoke=True), "smoke run"),
    (lambda r: r.update(cpu_model="another CPU"), "measured on"),
    (lambda r: r.update(cpu_cores=999), "measured on"),
    (lambda r: r["datasets"]["mnist"]["config"].update(n_steps=3), "another config"),
    (lambda r: r["datasets"]["mnist"]["config"].update(threads=2), "--threads included"),
    (lambda r: r["datasets"].pop("mnist"), "holds no measurements of mnist"),
    (lambda r: r.pop("options"), "not a benchmark report"),
])
def test_measurements_from_refuses_reports_it_cannot_join(tmp_path, change, message):
    plan = benchmark.plan_dataset("mnist", smoke=False)
    earlier, path = stored_report(tmp_path, plan)
    change(earlier)
    path.write_text(json.dumps(earlier))
    with pytest.raises(SystemExit, match=message):
        benchmark.main(["--datasets", "mnist", "--measurements-from", str(path), "--out-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "benchmark.json").exists()


def test_measurements_from_a_missing_or_corrupt_file_says_so(tmp_path):
    for content, message in ((None, "cannot be read"), ("{not json", "not a benchmark report")):
        path = tmp_path / "benchmark.json"
        if content is not None:
            path.write_text(content)
        with pytest.raises(SystemExit, match=message):
            benchmark.main(["--datasets", "mnist", "--measurements-from", str(path), "--out-dir", str(tmp_path / "out")])


@pytest.mark.parametrize("flags", [["--smoke"], ["--ref-epochs", "0"], ["--ref-score-fraction", "0.5"],
                                   ["--ref-train-epochs-measured", "3"]])
def test_measurements_from_takes_no_measuring_options(tmp_path, capsys, flags):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--measurements-from", str(tmp_path / "b.json"), *flags])
    assert f"takes no {flags[0]}" in capsys.readouterr().err
