"""bench_training: option overrides, argument checks and one real smoke run on MNIST."""

from __future__ import annotations

import json
import os

import pytest

import bench_training


def test_options_change_the_config_and_never_reach_zero_epochs():
    config = {"epochs": 20, "fit_batch_size": 32}
    assert bench_training.option_config(config, "epochs_half") == {"epochs": 10, "fit_batch_size": 32}
    assert bench_training.option_config(config, "batch2x") == {"epochs": 20, "fit_batch_size": 64}
    assert bench_training.option_config({"epochs": 1, "fit_batch_size": 8}, "epochs_half")["epochs"] == 1
    assert bench_training.option_config(config, "xla") == config


def test_model_options_apply_only_where_the_model_has_the_setting():
    assert not bench_training.applies("no_batchnorm", {"epochs": 20})
    assert bench_training.applies("no_batchnorm", {"batch_norm": 1})
    assert bench_training.option_config({"batch_norm": 1}, "no_batchnorm") == {"batch_norm": 0}


def test_default_is_always_measured_first_and_unknown_names_are_refused(capsys):
    args = bench_training.parse_args(["--smoke", "--options", "xla,default,xla"])
    assert args.options == ["default", "xla"]
    assert args.threads == 1  # a protocol worker's default --threads
    for bad in (["--options", "fast"], ["--datasets", "cifar"], ["--threads", "0"], ["--repeats", "0"],
                ["--jobs", "2"]):
        with pytest.raises(SystemExit):
            bench_training.parse_args(bad)
    assert "fast" in capsys.readouterr().err


def test_smoke_run_writes_one_row_per_option(tmp_path, capsys):
    if not os.environ.get("AL_DATA_DIR"):
        pytest.skip("set AL_DATA_DIR to a folder holding mnist/ to run the benchmark smoke test")
    report = bench_training.main(["--smoke", "--datasets", "mnist", "--options", "steps16,no_batchnorm",
                                  "--repeats", "2", "--out-dir", str(tmp_path)])
    # no_batchnorm does not apply to the MNIST model: skipped, said so.
    assert [m["option"] for m in report["measurements"]] == ["default", "steps16"]
    assert "no_batchnorm: skipped" in capsys.readouterr().out
    assert all(len(m["fit_seconds_repeats"]) == 2 for m in report["measurements"])
    assert all(m["fit_seconds"] > 0 and "macro_f1" not in m for m in report["measurements"])
    assert all(m["threads"] == 1 for m in report["measurements"])
    assert json.loads((tmp_path / "bench_training.json").read_text())["measurements"][1]["option"] == "steps16"
    table = (tmp_path / "bench_training.md").read_text()
    assert "| mnist | 64 | default |" in table and "| mnist | 64 | steps16 |" in table
