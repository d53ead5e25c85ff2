"""bench_scoring: variant list, argument checks and one real smoke run on MNIST."""

from __future__ import annotations

import json
import os

import bench_scoring
import pytest


def test_mc_dropout_strategies_are_also_timed_with_eager_passes():
    assert bench_scoring.variants(["random", "bald", "margin", "entropy_mc"]) == [
        "random", "bald", "bald" + bench_scoring.EAGER, "margin",
        "entropy_mc", "entropy_mc" + bench_scoring.EAGER]
    assert bench_scoring.make_strategy("bald").graph is True
    eager = bench_scoring.make_strategy("entropy_mc" + bench_scoring.EAGER)
    assert eager.name == "entropy_mc" and eager.graph is False
    # the switch is per instance: the classes keep graph mode
    assert bench_scoring.make_strategy("entropy_mc").graph is True
    assert bench_scoring.make_strategy("bald").graph is True


def test_unknown_names_and_bad_numbers_are_refused(capsys):
    for bad in (["--strategies", "bait"], ["--datasets", "cifar"], ["--jobs", "0"],
                ["--repeats", "0"], ["--pool-size", "-1"], ["--pool-size", "100"], ["--strategies", ","]):
        with pytest.raises(SystemExit):
            bench_scoring.parse_args(bad)
    assert "bait" in capsys.readouterr().err
    assert bench_scoring.parse_args(["--strategies", "bald,margin,bald"]).strategies == ["bald", "margin"]


def test_smoke_run_writes_one_row_per_variant(tmp_path):
    if not os.environ.get("AL_DATA_DIR"):
        pytest.skip("set AL_DATA_DIR to a folder holding mnist/ to run the benchmark smoke test")
    report = bench_scoring.main(["--smoke", "--datasets", "mnist", "--strategies", "entropy,bald,coreset",
                                 "--out-dir", str(tmp_path)])
    rows = report["measurements"]
    assert [m["strategy"] for m in rows] == ["entropy", "bald", "bald" + bench_scoring.EAGER, "coreset"]
    assert all(m["pool"] == bench_scoring.SMOKE_POOL and m["labeled"] == 1408 for m in rows)
    assert all(len(m["select_seconds_repeats"]) == 1 and m["select_seconds"] > 0 for m in rows)
    assert json.loads((tmp_path / "bench_scoring.json").read_text())["measurements"][3]["strategy"] == "coreset"
    table = (tmp_path / "bench_scoring.md").read_text()
    threads = max(1, (os.cpu_count() or 1) // 2)  # configured like one of 2 protocol jobs
    eager_row = next(line for line in table.splitlines() if "bald (eager MC passes)" in line)
    assert eager_row.startswith(f"| mnist | 512 | 1408 | bald (eager MC passes) | {threads} |")
    assert eager_row.endswith("| yes |")  # graph and eager passes picked the same batch
