"""plot_perf: summary tables, plots and statistics from hand-made run files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import plot_perf
from al import runs

CONFIG = {"start_size": 20, "batch_size": 10, "n_steps": 2, "epochs": 2, "fit_batch_size": 32,
          "val_fraction": 0.0, "patience": 0, "class_weight": "none", "pool_subsample": 0, "threads": 1}
# macro-F1 per seed (rows) and step (columns, 20 / 30 / 40 labels)
F1 = {
    "random": [[0.40, 0.50, 0.60], [0.40, 0.60, 0.70], [0.40, 0.70, 0.80]],
    "entropy": [[0.40, 0.60, 0.90], [0.40, 0.70, 0.90], [0.40, 0.80, 0.90]],
}


def run_dict(strategy, seed, f1s, complete=True, n_steps=2):
    steps = []
    for k, f1 in enumerate(f1s):
        n = 20 + 10 * k
        steps.append({
            "step": k, "n_labeled": n, "macro_f1": f1, "accuracy": f1,
            "per_class_f1": {"a": f1 - 0.05, "b": f1 + 0.05},
            "labeled_class_counts": {"a": n // 2 + seed, "b": n - n // 2 - seed},
            "train_seconds": 0.1, "score_seconds": 0.0, "eval_seconds": 0.1, "finished_at": 1.0,
            "selected": list(range(20 + 10 * (k - 1), n)) if k else list(range(20))})
    return {"format": runs.FORMAT, "dataset": "toy", "strategy": strategy, "seed": seed,
            "config": {**CONFIG, "n_steps": n_steps}, "git_commit": "abc", "versions": {"python": "3"},
            "provenance": {"data": {"origin": "toy", "sha256": "0" * 64}, "threads": 1},
            "complete": complete, "steps": steps, "sha256": ""}


def write_run(folder: Path, run: dict) -> Path:
    """Write a run the way the loop does: stamped with its digest, atomically."""
    path = folder / f"{run['strategy']}_seed{run['seed']}.json"
    runs.save_run(path, run)
    return path


@pytest.fixture
def results(tmp_path):
    """tmp/results/toy/ with 2 strategies x 3 seeds x 3 steps, all complete."""
    folder = tmp_path / "results" / "toy"
    for strategy, rows in F1.items():
        for seed, f1s in enumerate(rows):
            write_run(folder, run_dict(strategy, seed, f1s))
    return tmp_path / "results"


def summarize(results_dir) -> tuple[int, str]:
    code = plot_perf.main(["--results-dir", str(results_dir)])
    summary = results_dir / "toy_summary.md"
    return code, summary.read_text() if summary.exists() else ""


def table_cell(summary: str, row: str, column: str, section: str) -> str:
    """The cell in the row whose strategy (or first cell) is ``row``, under header ``column``."""
    part = summary.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in part.splitlines() if line.startswith("|") and not line.startswith("|---")]
    head = rows[0]
    key = head.index("strategy") if "strategy" in head else 0
    matches = [r for r in rows[1:] if r[key] == row]
    assert matches, f"no row {row!r} under {section!r}:\n{part}"
    return matches[0][head.index(column)]


def table_row(summary: str, first_cell: str, section: str) -> list[str]:
    """Cells of the row starting with ``first_cell`` in the table under heading ``section``."""
    part = summary.split(section, 1)[1].split("\n## ", 1)[0]
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} under {section!r}:\n{part}")


# --------------------------------------------------------------------------- the script
def test_main_writes_plots_and_summary(results, capsys):
    code, summary = summarize(results)
    assert code == 0
    for name in ("toy_perf.png", "toy_classes.png", "toy_summary.md"):
        path = results / name
        assert path.exists() and path.stat().st_size > 0
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "toy_summary.md" in capsys.readouterr().out
    assert summary.startswith("# toy: 6 runs")


def test_summary_table_has_hand_computed_mean_and_std(results):
    _, summary = summarize(results)
    # At 30 labels: random 0.5, 0.6, 0.7 -> mean 0.6, sample std 0.1; entropy 0.6, 0.7, 0.8.
    row = table_row(summary, "30", "## Macro-F1 per budget")
    assert row[1] == "0.6000 ± 0.1000 (3)"
    assert row[2] == "0.7000 ± 0.1000 (3)"
    # At 40 labels entropy is constant across seeds: std 0.
    assert table_row(summary, "40", "## Macro-F1 per budget")[2] == "0.9000 ± 0.0000 (3)"


def test_summary_strategy_table_has_final_f1_aubc_and_labels_to_random_final(results):
    _, summary = summarize(results)
    section = "## Strategies"

    def cell(row, column):
        return table_cell(summary, row, column, section)
    assert cell("random", "final labels") == "40"
    assert cell("random", "final macro-F1 (seeds)") == "0.7000 ± 0.1000 (3)"
    # AUBC entropy seed 0: ((0.4 + 0.6) / 2 * 10 + (0.6 + 0.9) / 2 * 10) / 20 = 0.625; seeds +0.05 each.
    assert cell("entropy", "AUBC") == "0.6750 ± 0.0500"
    # Random's final mean 0.7 is reached by entropy's mean at 30 labels, by random at 40.
    assert cell("entropy", "labels to random's final (0.7000)") == "30"
    assert cell("random", "labels to random's final (0.7000)") == "40"


def test_other_strategies_get_their_own_plot_and_the_reproduction_plot_stays(results, monkeypatch):
    plotted = []
    monkeypatch.setattr(plot_perf, "plot_curves",
                        lambda dataset, stats, strategies, path: plotted.append((path.name, strategies)))
    assert summarize(results)[0] == 0
    assert plotted == [("toy_perf.png", ["random", "entropy"])]
    for seed in range(3):
        write_run(results / "toy", run_dict("margin", seed, [0.4, 0.5, 0.8]))
    plotted.clear()
    assert summarize(results)[0] == 0
    assert plotted == [("toy_perf.png", ["random", "entropy"]),
                       ("toy_strategies.png", ["random", "entropy", "margin"])]


def test_a_strategy_short_of_the_final_budget_is_listed_unranked(results):
    for seed in range(3):  # best F1 of all so far, but only up to 30 labels
        write_run(results / "toy", run_dict("margin", seed, [0.4, 0.95], complete=False))
    _, summary = summarize(results)
    assert table_cell(summary, "margin", "rank", "## Strategies") == "-"
    assert table_cell(summary, "margin", "AUBC", "## Strategies") == "-"  # no complete run yet
    assert table_cell(summary, "entropy", "rank", "## Strategies") == "1"
    assert table_cell(summary, "random", "rank", "## Strategies") == "2"


def test_strategy_table_ranks_by_final_f1_with_p_values_vs_random_and_entropy(results):
    folder = results / "toy"
    for seed, f1s in enumerate([[0.4, 0.5, 0.80], [0.4, 0.5, 0.81], [0.4, 0.5, 0.82]]):
        write_run(folder, run_dict("margin", seed, f1s))
    _, summary = summarize(results)

    def cell(row, column):
        return table_cell(summary, row, column, "## Strategies")
    # Final means: entropy 0.9, margin 0.81, random 0.7.
    assert [cell(s, "rank") for s in ("entropy", "margin", "random")] == ["1", "2", "3"]
    # Exact two-sided Wilcoxon over 3 seeds, all differences of one sign: p = 2 / 2**3 = 0.25.
    assert cell("margin", "p final vs random") == "0.25"
    assert cell("margin", "p final vs entropy") == "0.25"
    assert cell("entropy", "p final vs entropy") == "-" and cell("random", "p AUBC vs random") == "-"
    assert cell("margin", "p AUBC vs entropy") == "0.25"


def test_summary_lists_random_first_and_reports_no_incomplete_runs(results):
    _, summary = summarize(results)
    assert "Incomplete runs (used up to their last step): none" in summary
    header = next(line for line in summary.splitlines() if line.startswith("| labels"))
    assert header.index("random") < header.index("entropy")


def test_incomplete_run_is_listed_as_incomplete(results):
    write_run(results / "toy", run_dict("entropy", 3, [0.4, 0.6], complete=False))
    code, summary = summarize(results)
    assert code == 0
    # Its AUBC (over 20..30 labels only) stays out of the strategy's mean: still 0.675 over 3 seeds.
    assert table_cell(summary, "entropy", "AUBC", "## Strategies") == "0.6750 ± 0.0500"
    assert "entropy_seed3 (2 of 3 steps)" in summary
    # Used up to its last step: 4 entropy seeds at 30 labels, 3 at 40.
    assert table_row(summary, "30", "## Macro-F1 per budget")[2].endswith("(4)")
    assert table_row(summary, "40", "## Macro-F1 per budget")[2].endswith("(3)")


def test_truncated_run_file_is_reported_and_skipped(results, capsys):
    path = write_run(results / "toy", run_dict("entropy", 3, [0.0, 0.0, 0.0]))
    path.write_text(path.read_text()[:100])
    code, summary = summarize(results)
    assert code == 0
    err = capsys.readouterr().err
    assert "entropy_seed3.json" in err and "skipped" in err
    assert "Invalid files skipped: 1" in summary
    assert table_row(summary, "30", "## Macro-F1 per budget")[2] == "0.7000 ± 0.1000 (3)"


def test_run_file_with_missing_keys_is_reported_and_skipped(results, capsys):
    bad = run_dict("entropy", 3, [0.0, 0.0, 0.0])
    del bad["steps"][1]["macro_f1"]
    write_run(results / "toy", bad)
    assert summarize(results)[0] == 0
    assert "step 1 is malformed" in capsys.readouterr().err


def test_missing_results_dir_returns_1_with_a_message(tmp_path, capsys):
    assert plot_perf.main(["--results-dir", str(tmp_path / "nothing")]) == 1
    assert "No results folder" in capsys.readouterr().err


def test_empty_results_dir_returns_1_with_a_message(tmp_path, capsys):
    (tmp_path / "toy").mkdir()
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 1
    assert "No run files" in capsys.readouterr().err


def test_results_dir_with_only_invalid_files_returns_1(tmp_path, capsys):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "random_seed0.json").write_text("{")
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "random_seed0.json" in err and "No run files" in err


def test_grid_log_and_subfolders_are_not_read_as_runs(results):
    (results / "toy" / "grid_log.jsonl").write_text("{}\n")
    (results / "toy" / "old").mkdir()
    (results / "toy" / "old" / "random_seed0.json").write_text(json.dumps({"selected": [[1, 2]]}))
    code, summary = summarize(results)
    assert code == 0 and summary.startswith("# toy: 6 runs")


def test_hand_edited_run_file_is_refused_by_its_digest(results, capsys):
    path = results / "toy" / "entropy_seed0.json"
    edited = json.loads(path.read_text())
    edited["steps"][2]["macro_f1"] = 0.99  # still a valid schema: only the digest can tell
    path.write_text(json.dumps(edited))
    code, summary = summarize(results)
    assert code == 0
    assert "entropy_seed0.json: content does not match its sha256" in capsys.readouterr().err
    assert "Invalid files skipped: 1" in summary


def test_converted_runs_without_an_old_checksum_are_counted_as_not_verifiable(results):
    path = results / "toy" / "random_seed0.json"
    run = json.loads(path.read_text())
    run["converted"] = {"checksum_before_conversion": "none"}
    runs.save_run(path, run)
    run = json.loads((results / "toy" / "random_seed1.json").read_text())
    run["converted"] = {"checksum_before_conversion": "verified"}
    runs.save_run(results / "toy" / "random_seed1.json", run)
    code, summary = summarize(results)
    assert code == 0 and "Files not verifiable (written before checksums existed): 1" in summary


def test_summary_and_plots_are_written_atomically(results, monkeypatch):
    import al.runs
    written = []
    original = al.runs.write_bytes_atomic
    monkeypatch.setattr(al.runs, "write_bytes_atomic", lambda path, data: (written.append(Path(path).name),
                                                                          original(path, data)))
    monkeypatch.setattr(plot_perf, "write_bytes_atomic", al.runs.write_bytes_atomic)
    assert summarize(results)[0] == 0
    assert {"toy_summary.md", "toy_perf.png", "toy_classes.png"} <= set(written)


def test_single_seed_has_no_std_and_no_p_value(tmp_path):
    folder = tmp_path / "toy"
    write_run(folder, run_dict("random", 0, [0.4, 0.5, 0.6]))
    write_run(folder, run_dict("entropy", 0, [0.4, 0.6, 0.7]))
    code, summary = summarize(tmp_path)
    assert code == 0
    assert table_row(summary, "30", "## Macro-F1 per budget")[1:] == ["0.5000 (1)", "0.6000 (1)", "-"]


# --------------------------------------------------------------------------- statistics
def frame(rows):
    return pd.DataFrame(rows, columns=["strategy", "seed", "n_labeled", "macro_f1"])


def test_aubc_is_the_normalized_trapezoid_area():
    df = frame([("s", 0, 10, 0.2), ("s", 0, 20, 0.4), ("s", 0, 40, 0.8)])
    # (0.2 + 0.4) / 2 * 10 + (0.4 + 0.8) / 2 * 20 = 3 + 12 = 15, over the range 30
    assert plot_perf.aubc(df).aubc.tolist() == pytest.approx([0.5])


def test_aubc_sorts_by_budget_and_is_per_run():
    df = frame([("s", 0, 20, 1.0), ("s", 0, 10, 0.0), ("s", 1, 10, 0.5), ("s", 1, 20, 0.5)])
    out = plot_perf.aubc(df).set_index("seed").aubc
    assert out[0] == pytest.approx(0.5) and out[1] == pytest.approx(0.5)


def test_aubc_of_a_single_step_is_its_f1():
    assert plot_perf.aubc(frame([("s", 0, 10, 0.3)])).aubc.tolist() == pytest.approx([0.3])


def test_aubc_of_a_constant_curve_is_the_constant():
    df = frame([("s", 0, n, 0.7) for n in (10, 25, 100)])
    assert plot_perf.aubc(df).aubc.iloc[0] == pytest.approx(0.7)


def stats_frame():
    return pd.DataFrame({"strategy": ["a"] * 3 + ["b"] * 3,
                         "n_labeled": [10, 20, 30] * 2,
                         "mean": [0.5, 0.7, 0.9, 0.4, 0.5, 0.6]})


@pytest.mark.parametrize("strategy, target, expected", [
    ("a", 0.7, 20),   # reached exactly counts
    ("a", 0.69, 20),
    ("a", 0.1, 10),
    ("a", 0.95, None),
    ("b", 0.6, 30),
    ("c", 0.0, None),  # unknown strategy
])
def test_labels_to_reach(strategy, target, expected):
    assert plot_perf.labels_to_reach(stats_frame(), strategy, target) == expected


def test_labels_to_reach_returns_an_int():
    assert type(plot_perf.labels_to_reach(stats_frame(), "a", 0.7)) is int


def wilcoxon_frame(a, b, seeds_a=None, seeds_b=None):
    rows = [("x", s, v) for s, v in zip(seeds_a or range(len(a)), a)]
    rows += [("random", s, v) for s, v in zip(seeds_b or range(len(b)), b)]
    return pd.DataFrame(rows, columns=["strategy", "seed", "v"])


def test_paired_wilcoxon_of_identical_values_is_one():
    df = wilcoxon_frame([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert plot_perf.paired_wilcoxon(df, "v", "x", "random") == 1.0


def test_paired_wilcoxon_with_fewer_than_two_shared_seeds_is_none():
    assert plot_perf.paired_wilcoxon(wilcoxon_frame([0.5], [0.4]), "v", "x", "random") is None
    df = wilcoxon_frame([0.5, 0.6], [0.4, 0.3], seeds_a=[0, 1], seeds_b=[1, 2])  # share seed 1 only
    assert plot_perf.paired_wilcoxon(df, "v", "x", "random") is None


def test_paired_wilcoxon_all_positive_differences_gives_the_exact_p():
    # n = 5, all differences positive and distinct: exact two-sided p = 2 / 2**5.
    df = wilcoxon_frame([0.2, 0.4, 0.6, 0.8, 1.0], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert plot_perf.paired_wilcoxon(df, "v", "x", "random") == pytest.approx(0.0625)


def test_paired_wilcoxon_pairs_by_seed_not_by_row_order():
    df = wilcoxon_frame([0.3, 0.2, 0.1], [0.1, 0.2, 0.3], seeds_a=[2, 1, 0], seeds_b=[0, 1, 2])
    assert plot_perf.paired_wilcoxon(df, "v", "x", "random") == 1.0


def test_mean_std_uses_the_sample_std():
    df = frame([("s", 0, 10, 0.5), ("s", 1, 10, 0.6), ("s", 2, 10, 0.7)])
    row = plot_perf.mean_std(df).iloc[0]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1) and row["n"] == 3


def test_fmt_handles_missing_values():
    assert plot_perf.fmt(None) == "-"
    assert plot_perf.fmt(float("nan")) == "-"
    assert plot_perf.fmt(0.5, np.nan) == "0.5000"
    assert plot_perf.fmt(0.5, 0.25, digits=2) == "0.50 ± 0.25"


def test_compare_pairs_the_same_strategy_across_two_folders(results, tmp_path, capsys):
    other = tmp_path / "other" / "toy"
    for seed, f1s in enumerate([[0.4, 0.6, 0.91], [0.4, 0.7, 0.92], [0.4, 0.8, 0.93]]):
        write_run(other, run_dict("entropy", seed, f1s))
    assert plot_perf.main(["--compare", str(other), str(results / "toy")]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| entropy | final macro-F1"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # A: 0.91, 0.92, 0.93 vs B: 0.9 each; all three differences positive: exact p = 0.25.
    assert cells[2:] == ["0.9200 ± 0.0100", "0.9000 ± 0.0000", "3", "0.25"]
    assert "| random |" not in table  # random ran in one folder only


def test_compare_without_common_runs_is_a_clear_error(results, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert plot_perf.main(["--compare", str(tmp_path / "empty"), str(results / "toy")]) == 1
    assert "no complete run files" in capsys.readouterr().err
    write_run(tmp_path / "margin_only", run_dict("margin", 0, [0.4, 0.5, 0.6]))
    assert plot_perf.main(["--compare", str(tmp_path / "margin_only"), str(results / "toy")]) == 1
    assert "no strategy in common" in capsys.readouterr().err


def test_compare_refuses_folders_that_end_at_different_budgets(results, tmp_path, capsys):
    write_run(tmp_path / "longer", run_dict("entropy", 0, [0.4, 0.5, 0.6, 0.7], n_steps=3))
    assert plot_perf.main(["--compare", str(tmp_path / "longer"), str(results / "toy")]) == 1
    assert "ends at 50 labels" in capsys.readouterr().err


# --------------------------------------------------------------------------- corrections
def test_holm_matches_hand_computed_values_in_input_order():
    # sorted: 0.01 (x3), 0.02 (x2 -> 0.04), 0.04 (x1 -> 0.04, then the running max)
    assert plot_perf.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])


def test_holm_keeps_none_and_caps_at_one():
    assert plot_perf.holm([None, 0.6, 0.5]) == [None, 1.0, 1.0]


def test_labels_to_stay_ignores_an_early_peak():
    stats = pd.DataFrame({"strategy": ["e"] * 4, "n_labeled": [10, 20, 30, 40],
                          "mean": [0.8, 0.5, 0.8, 0.9]})
    assert plot_perf.labels_to_reach(stats, "e", 0.7) == 10
    assert plot_perf.labels_to_stay(stats, "e", 0.7) == 30
    assert plot_perf.labels_to_stay(stats, "e", 0.95) is None


def test_budget_table_p_values_are_holm_corrected(results):
    code, summary = summarize(results)
    df = plot_perf.curves(plot_perf.load_runs(results / "toy")[0])
    raw = [plot_perf.paired_wilcoxon(df[df.n_labeled == n], "macro_f1", "entropy", "random") for n in (30, 40)]
    corrected = plot_perf.holm(raw)  # the initial budget (20) is not part of the family
    assert corrected[1] > raw[1]  # the correction changes the final budget's p
    assert table_row(summary, "40", "## Macro-F1 per budget")[-1] == plot_perf.fmt_p(corrected[1])
    assert table_row(summary, "20", "## Macro-F1 per budget")[-1] == "-"


def test_a_folder_mixing_thread_counts_says_so(results):
    path = results / "toy" / "entropy_seed0.json"
    run = json.loads(path.read_text())
    run["config"]["threads"] = 2
    runs.save_run(path, run)
    summary = summarize(results)[1]
    assert "Thread counts differ" in summary and "2 thread(s): entropy (1)" in summary
    run["config"]["threads"] = 1
    runs.save_run(path, run)
    assert "Thread counts differ" not in summarize(results)[1]


# --------------------------------------------------------------------------- stopping and AAMI tables
def with_stop_set(run: dict, predictions: list[np.ndarray], mean_entropy: list[float] | None = None) -> dict:
    for k, step in enumerate(run["steps"]):
        step["stop_set_predictions"] = runs.encode_uint8(predictions[k])
        if mean_entropy is not None:
            step["stop_set_mean_entropy"] = mean_entropy[k]
            step["stop_set_max_entropy"] = 0.69
    return run


def test_the_stopping_table_says_where_each_criterion_would_have_stopped(tmp_path):
    folder = tmp_path / "results" / "toy"
    base = np.arange(60) % 2
    flipped = 1 - base
    f1s = [0.4, 0.7, 0.8, 0.82, 0.85]
    # seed 0: predictions stable from step 1 on -> window 3 first complete at step 4 (labels 60)
    # seed 1: always changing -> never stops (counts at the final budget)
    write_run(folder, with_stop_set(run_dict("random", 0, f1s, n_steps=4), [flipped, base, base, base, base],
                                    mean_entropy=[0.6, 0.3, 0.01, 0.01, 0.01]))
    write_run(folder, with_stop_set(run_dict("random", 1, f1s, n_steps=4), [base, flipped] * 2 + [base],
                                    mean_entropy=[0.6, 0.5, 0.4, 0.3, 0.2]))
    code, summary = summarize(tmp_path / "results")
    assert code == 0
    section = "## When to stop labeling"
    kappa = "stabilizing_predictions (threshold 0.99, window 3)"
    assert table_cell(summary, "random", "stopped (runs)", section) == "1 of 2"  # first row: kappa 0.99
    row = table_row(summary, "random", section)
    assert row[1] == kappa
    assert row[3] == "60 ± 0"         # both end at 60: seed 0 stops there, seed 1 never
    assert row[4] == "0 ± 0" and row[5] == "0.0000 ± 0.0000"
    # Overall uncertainty below 0.05 of log(2): seed 0 from step 2 (40 labels: 20 saved, F1 0.85 - 0.8 given up)
    part = summary.split(section, 1)[1].split("\n## ", 1)[0]
    line = next(l for l in part.splitlines() if "overall_uncertainty (threshold 0.05)" in l)
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[2] == "1 of 2" and cells[3] == "50 ± 14" and cells[4] == "10 ± 14"
    assert cells[5] == "0.0250 ± 0.0354"


def test_aami_metrics_come_from_the_confusion_matrix():
    classes = ["N", "S", "V", "F", "Q"]
    # rows true, columns predicted
    matrix = [[90, 5, 5, 0, 0],
              [4, 6, 0, 0, 0],
              [2, 0, 18, 0, 0],
              [1, 0, 1, 2, 0],
              [0, 0, 0, 0, 1]]
    m = plot_perf.aami_metrics(matrix, classes)
    assert m["SVEB Se"] == pytest.approx(6 / 10) and m["SVEB +P"] == pytest.approx(6 / 11)
    assert m["VEB Se"] == pytest.approx(18 / 20) and m["VEB +P"] == pytest.approx(18 / 24)
    assert m["SVEB F1"] == pytest.approx(12 / 21)
    assert m["accuracy"] == pytest.approx(117 / 135)
    f1 = {"N": 180 / (100 + 97), "S": 12 / 21, "V": 36 / 44, "F": 4 / 6}
    assert m["macro-F1 NSVF"] == pytest.approx(np.mean(list(f1.values())))  # Q left out


def test_the_reality_check_puts_two_recipes_side_by_side(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for strategy, rows in F1.items():
        for seed, f1s in enumerate(rows):
            write_run(old / "toy", run_dict(strategy, seed, f1s))
            # the new recipe: random up by 0.1 everywhere, entropy the same as before
            write_run(new / "toy", run_dict(strategy, seed, [f + (0.1 if strategy == "random" else 0) for f in f1s]))
    write_run(new / "toy", run_dict("margin", 0, [0.4, 0.5], complete=False))  # incomplete: left out
    assert plot_perf.main(["--reality-check", str(old), str(new)]) == 0
    text = (new / "reality_check.md").read_text()
    section = "## toy"
    assert table_cell(text, "random", "final macro-F1 old", section) == "0.7000 ± 0.1000"
    assert table_cell(text, "random", "final macro-F1 new", section) == "0.8000 ± 0.1000"
    # entropy's paired gain over random: 0.9 - (0.6, 0.7, 0.8) = 0.2 old, 0.9 - (0.7, 0.8, 0.9) = 0.1 new
    assert table_cell(text, "entropy", "gain vs random old (p)", section) == "+0.2000 (0.25)"
    assert table_cell(text, "entropy", "gain vs random new (p)", section) == "+0.1000 (0.5)"
    # random's final mean: 0.7 old (entropy's mean 0.7 reaches it at 30 labels), 0.8 new (at 40)
    assert table_cell(text, "entropy", "labels to random's final old", section) == "30"
    assert table_cell(text, "entropy", "new", section) == "40"
    assert table_cell(text, "random", "new", section) == "40"
    assert [line.split("|")[1].strip() for line in text.split(section, 1)[1].splitlines()
            if line.startswith("| ") and "strategy" not in line] == ["random", "entropy"]


def test_paired_differences_are_per_budget_means_of_seed_pairs_with_holm(results):
    runs_ = plot_perf.load_runs(results / "toy")[0]
    diffs = plot_perf.paired_differences(plot_perf.curves(runs_), "entropy").set_index("n_labeled")
    assert list(diffs.index) == [30, 40]  # the shared initial budget is left out
    assert diffs.loc[30, "mean"] == pytest.approx(0.1) and diffs.loc[30, "std"] == pytest.approx(0.0, abs=1e-12)
    assert diffs.loc[40, "mean"] == pytest.approx(0.2) and diffs.loc[40, "pairs"] == 3
    assert diffs.loc[40, "p"] == pytest.approx(0.25)  # 3 positive pairs: exact two-sided 2 / 2^3
    assert diffs.loc[30, "p_holm"] == pytest.approx(0.5)  # 2 tests of p 0.25: 2 x 0.25, then the running max


@pytest.mark.parametrize("gains, expected", [
    ([-0.1, 0.05, -0.01, 0.02, 0.03], 50),   # the last dip below 0 decides, not the first rise
    ([0.01, 0.02, 0.03, 0.04, 0.05], 20),
    ([-0.1, -0.05, 0.02, 0.03, 0.0], None),  # ends level with random: no crossover
    ([-0.1, -0.05, -0.02, -0.01, -0.01], None),
])
def test_crossover_is_the_first_budget_from_which_the_gain_stays_positive(gains, expected):
    diffs = pd.DataFrame({"n_labeled": [20, 30, 40, 50, 60], "mean": gains})
    assert plot_perf.crossover_budget(diffs) == expected


def test_crossover_report_covers_both_protocols_and_names_significant_budgets(tmp_path, results):
    low = tmp_path / "low"
    for seed in range(6):  # entropy below random at 30 in every seed, above at 40 and 50
        write_run(low / "toy", run_dict("random", seed, [0.3, 0.5, 0.6, 0.6], n_steps=3))
        write_run(low / "toy", run_dict("entropy", seed, [0.3, 0.4 - 0.01 * seed, 0.65, 0.7], n_steps=3))
    for strategy, rows in F1.items():  # seeds 3-5 for the standard protocol: 6 pairs, enough for the plot
        for seed, f1s in enumerate(rows, start=3):
            write_run(results / "toy", run_dict(strategy, seed, f1s))
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    text = (low / "crossover.md").read_text()
    assert (low / "toy_crossover.png").stat().st_size > 0 and "No plot" not in text
    assert "start 20, batch 10" in text and text.count("### ") == 2
    assert "| 30 | -0.1" in text
    low_line = next(l for l in text.splitlines() if l.startswith("- entropy") and "[30]" in l)
    assert "crossover 40" in low_line and "below random at p < 0.05: [30]" in low_line
    assert "above at p < 0.05: [40, 50]" in low_line
    assert plot_perf.main(["--crossover", str(tmp_path / "nowhere"), str(results)]) == 1


def test_crossover_rows_are_every_budget_of_any_strategy_not_only_the_first_ones(tmp_path, results):
    low = tmp_path / "low"
    for seed in range(6):  # badge (first in name order) stops at 30 labels, entropy goes on to 50
        write_run(low / "toy", run_dict("random", seed, [0.3, 0.5, 0.6, 0.6], n_steps=3))
        write_run(low / "toy", run_dict("entropy", seed, [0.3, 0.4, 0.65, 0.7 + 0.01 * seed], n_steps=3))
        write_run(low / "toy", run_dict("badge", seed, [0.3, 0.55], complete=False, n_steps=3))
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    low_section = (low / "crossover.md").read_text().split("### ")[1]
    assert [row[1] for row in (line.split(" | ") for line in low_section.splitlines() if line[:3] == "| 4"
                               or line[:3] == "| 5")] == ["-", "-"]  # badge has no pair at 40 and 50
    assert "| 50 | - | +0.1" in low_section and "(n 6, 0.031" in low_section
    assert "- entropy: crossover 40" in low_section and "- badge: crossover incomplete" in low_section


def test_too_few_paired_seeds_give_no_crossover_verdict_and_no_plot(tmp_path, results):
    low = tmp_path / "low"
    (low / "toy").mkdir(parents=True)
    stale = low / "toy_crossover.png"
    stale.write_bytes(b"an earlier plot")
    for seed in range(5):  # 5 pairs: the smallest two-sided Wilcoxon p is 0.0625
        write_run(low / "toy", run_dict("random", seed, [0.3, 0.5, 0.6]))
        write_run(low / "toy", run_dict("entropy", seed, [0.3, 0.4, 0.7]))
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    text = (low / "crossover.md").read_text()
    low_line = next(l for l in text.split("### ")[1].splitlines() if l.startswith("- entropy"))
    assert "crossover not stated (as few as 5 paired seed(s) at a budget; it needs 6)" in low_line
    assert "No plot for toy" in text and not stale.exists()
    write_run(low / "toy", run_dict("random", 5, [0.3, 0.5, 0.6]))
    write_run(low / "toy", run_dict("entropy", 5, [0.3, 0.4, 0.7]))
    # with a sixth pair in the low protocol, the standard one (results: 3 pairs) still blocks the plot
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    assert "- entropy: crossover 40" in (low / "crossover.md").read_text() and not stale.exists()
    for strategy, rows in F1.items():  # the standard protocol gets 6 pairs too: now the plot is drawn
        for seed, f1s in enumerate(rows, start=3):
            write_run(results / "toy", run_dict(strategy, seed, f1s))
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    assert stale.exists() and "No plot" not in (low / "crossover.md").read_text()
    (low / "toy" / "entropy_seed5.json").unlink()  # and the low protocol back to 5 pairs: withheld again
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    assert not stale.exists() and "No plot for toy" in (low / "crossover.md").read_text()


def test_budgets_without_pairs_leave_the_holm_family_and_mark_the_crossover_incomplete(tmp_path, results):
    runs_ = plot_perf.load_runs(results / "toy")[0]
    df = plot_perf.curves(runs_)
    # entropy seeds 1 and 2 stop before 40 labels: one pair left there, none for a seed-less budget
    df = df[~((df.strategy == "entropy") & (df.seed > 0) & (df.n_labeled == 40))]
    diffs = plot_perf.paired_differences(df, "entropy").set_index("n_labeled")
    assert diffs.loc[40, "pairs"] == 1 and pd.isna(diffs.loc[40, "p"]) and pd.isna(diffs.loc[40, "p_holm"])
    assert diffs.loc[30, "p_holm"] == pytest.approx(0.25)  # a family of one test: Holm leaves it alone
    df = df[~((df.strategy == "entropy") & (df.n_labeled == 40))]
    assert list(plot_perf.paired_differences(df, "entropy").n_labeled) == [30]
    low = tmp_path / "low"
    for seed in range(3):
        write_run(low / "toy", run_dict("random", seed, [0.3, 0.5, 0.6]))
        write_run(low / "toy", run_dict("entropy", seed, [0.3, 0.6], complete=False))
    assert plot_perf.main(["--crossover", str(low), str(results)]) == 0
    assert "crossover incomplete (paired runs up to 30 labels of 40)" in (low / "crossover.md").read_text()


def test_a_target_reached_with_no_label_at_all_is_a_budget_of_zero_not_never():
    stats = pd.DataFrame({"strategy": ["random", "random"], "n_labeled": [0, 10], "mean": [0.5, 0.6]})
    assert plot_perf.reached(plot_perf.labels_to_reach(stats, "random", 0.4)) == "0"
    assert plot_perf.reached(plot_perf.labels_to_reach(stats, "random", 0.9)) == "not reached"


def test_labels_to_random_final_count_only_runs_that_reached_the_final_budget(results):
    # A fourth entropy seed still under way, far below the others at 30 labels: left out.
    write_run(results / "toy", run_dict("entropy", 3, [0.4, 0.1], complete=False))
    _, summary = summarize(results)
    assert table_cell(summary, "entropy", "labels to random's final (0.7000)", "## Strategies") == "30"
    assert table_row(summary, "30", "## Macro-F1 per budget")[2].endswith("(4)")  # the curve still shows it
