"""bench_scoring: variant list, the eager MC composition, argument checks and one real smoke run on MNIST."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import bench_scoring
from al import strategies


def test_mc_dropout_strategies_are_also_timed_with_eager_passes():
    assert bench_scoring.variants(["random", "bald", "margin", "entropy_mc"]) == [
        "random", "bald", "bald" + bench_scoring.EAGER, "margin",
        "entropy_mc", "entropy_mc" + bench_scoring.EAGER]
    eager = bench_scoring.make_strategy("entropy_mc" + bench_scoring.EAGER)
    assert type(eager) is strategies.MCEntropySampling  # the production class, untouched
    assert type(bench_scoring.make_strategy("bald")) is strategies.BALDSampling


@pytest.mark.parametrize("name", ["bald", "entropy_mc"])
def test_eager_passes_pick_the_batch_the_strategy_picks(name, synthetic_dataset, build_model, loop_config):
    import keras
    keras.utils.set_random_seed(0)
    model = build_model(loop_config, synthetic_dataset.x_train.shape[1:], len(synthetic_dataset.class_names))
    model.fit(synthetic_dataset.x_train[:60], synthetic_dataset.y_train[:60], epochs=2, verbose=0)
    x_pool, x_labeled = synthetic_dataset.x_train[60:], synthetic_dataset.x_train[:60]
    strategy = bench_scoring.make_strategy(name)
    graph = strategy.select(model, x_pool, 10, np.random.default_rng(7), x_labeled)
    eager = bench_scoring.select_variant(name + bench_scoring.EAGER, strategy, model, x_pool, 10,
                                         np.random.default_rng(7), x_labeled)
    np.testing.assert_array_equal(eager, graph)
    assert len(set(eager.tolist())) == 10
    same = bench_scoring.select_variant(name, strategy, model, x_pool, 10, np.random.default_rng(7),
                                        x_labeled)
    np.testing.assert_array_equal(same, graph)
    with pytest.raises(ValueError, match="cannot select"):
        bench_scoring.eager_select(strategy, model, x_pool[:5], 10, np.random.default_rng(7))


def test_unknown_names_and_bad_numbers_are_refused(capsys):
    for bad in (["--strategies", "bait"], ["--datasets", "cifar"], ["--threads", "0"], ["--jobs", "2"],
                ["--repeats", "0"], ["--pool-size", "-1"], ["--pool-size", "100"], ["--strategies", ","]):
        with pytest.raises(SystemExit):
            bench_scoring.parse_args(bad)
    assert "bait" in capsys.readouterr().err
    args = bench_scoring.parse_args(["--strategies", "bald,margin,bald"])
    assert args.strategies == ["bald", "margin"] and args.threads == 1


def test_smoke_run_writes_one_row_per_variant(tmp_path):
    if not os.environ.get("AL_DATA_DIR"):
        pytest.skip("set AL_DATA_DIR to a folder holding mnist/ to run the benchmark smoke test")
    report = bench_scoring.main(["--smoke", "--datasets", "mnist", "--strategies", "entropy,bald,coreset",
                                 "--out-dir", str(tmp_path)])
    rows = report["measurements"]
    assert [m["strategy"] for m in rows] == ["entropy", "bald", "bald" + bench_scoring.EAGER, "coreset"]
    assert all(m["pool"] == bench_scoring.SMOKE_POOL and m["labeled"] == 1408 for m in rows)
    assert all(len(m["select_seconds_repeats"]) == 1 and m["select_seconds"] > 0 for m in rows)
    written = json.loads((tmp_path / "bench_scoring.json").read_text())
    assert written["measurements"][3]["strategy"] == "coreset"
    table = (tmp_path / "bench_scoring.md").read_text()
    eager_row = next(line for line in table.splitlines() if "bald (eager MC passes)" in line)
    assert eager_row.startswith("| mnist | 512 | 1408 | bald (eager MC passes) | 1 |")  # --threads 1
    assert eager_row.endswith("| yes |")  # graph and eager passes picked the same batch
