"""Average the run files of every dataset and write plots and summary tables.

    python code/plot_perf.py [--results-dir results]
    python code/plot_perf.py --compare results/recipe_v1/pool_subsample_10000/mnist results/recipe_v1/mnist
    python code/plot_perf.py --reality-check results/recipe_v1 results
    python code/plot_perf.py --crossover results/low_budget results
    python code/plot_perf.py --patients results/mitbih_patient

For each ``results/<dataset>/`` holding ``<strategy>_seed<k>.json`` files it writes
``results/<dataset>_perf.png`` (mean macro-F1 vs labels, +-1 std band, random and entropy),
``results/<dataset>_strategies.png`` (the same with every strategy, when there are others),
``results/<dataset>_classes.png`` (per-class F1 and the class mix each strategy selected)
and ``results/<dataset>_summary.md`` (the tables below). Partial runs are used up to the
steps they completed and listed as incomplete; invalid files (not JSON, wrong schema, or
content that does not match the sha256 the run file carries, i.e. edited or truncated; read
with :func:`al.runs.read_run`, the reader resume uses) are reported by name and skipped,
never averaged in. Files converted from the old two-file format whose old checksum did not
exist are counted as not verifiable. Summaries and plots are written atomically.

Statistics: mean +- std over seeds at each budget; labels to target (fewest labels at
which a strategy's *mean* reaches random's final mean, or a published target); the
normalized area under the budget curve (AUBC: trapezoid area of macro-F1 over the label
range, divided by that range) per run; paired Wilcoxon signed-rank tests over seeds
(scipy) against random, per budget, and against random and entropy at the final budget
and for AUBC (the ranking table).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from al.runs import RunFileError, read_run as read_run_file, write_bytes_atomic, write_text_atomic
from al.data_common import REPO_ROOT, resolve_repo_path, shown_path
from al.stopping import cv_record, cv_scores, first_stop, get_criterion, rounds_of_run

PUBLISHED_TARGETS = {"mitbih": 0.74, "mnist": 0.96}  # the published text's reference F1 levels
BASELINE = "random"
REPRODUCED = ("random", "entropy")  # the published comparison: <dataset>_perf.png shows these
TIME_KEYS = ("train_seconds", "score_seconds", "eval_seconds")
# Stopping criteria and the thresholds the stopping table measures (al/stopping.py).
STOPPING_SWEEP = (*[("stabilizing_predictions", {"threshold": t}) for t in (0.99, 0.98, 0.97, 0.95)],
                  *[("overall_uncertainty", {"threshold": t}) for t in (0.02, 0.05, 0.1)],
                  *[("max_uncertainty", {"threshold": t}) for t in (0.5, 0.8)],
                  *[("learning_curve", {"min_gain": g}) for g in (0.01, 0.005, 0.002, 0.001)])  # needs code/stopping_cv.py
AAMI_CLASSES = ("N", "S", "V", "F")  # MIT-BIH: the AAMI classes with enough beats to score


class InvalidRunFile(ValueError):
    pass


# --------------------------------------------------------------------------- reading
def read_run(path: Path, warnings: list[str] | None = None) -> dict:
    """Load and verify one run file (:func:`al.runs.read_run`); raise InvalidRunFile naming it.

    A converted run whose old result carried no checksum is read, with a note appended to
    ``warnings``.
    """
    try:
        run = read_run_file(path)
    except RunFileError as err:
        raise InvalidRunFile(str(err)) from None
    if run.get("converted", {}).get("checksum_before_conversion") == "none" and warnings is not None:
        warnings.append(f"{path}: converted from a result written before checksums existed; "
                        "its content is not verified")
    return run


def load_runs(folder: Path, warnings: list[str] | None = None) -> tuple[list[dict], list[str]]:
    runs, problems = [], []
    for path in sorted(folder.glob("*_seed*.json")):
        try:
            runs.append(read_run(path, warnings))
        except InvalidRunFile as err:
            problems.append(str(err))
    return runs, problems


def curves(runs: list[dict]) -> pd.DataFrame:
    """One row per (strategy, seed, step)."""
    rows = [{"strategy": r["strategy"], "seed": r["seed"], "step": s["step"],
             "n_labeled": s["n_labeled"], "macro_f1": s["macro_f1"],
             **{k: s.get(k, 0.0) for k in TIME_KEYS}}
            for r in runs for s in r["steps"]]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- statistics
def mean_std(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and seed count of macro-F1 per strategy and budget."""
    return (df.groupby(["strategy", "n_labeled"])["macro_f1"]
              .agg(mean="mean", std="std", n="count").reset_index())


def labels_to_reach(stats: pd.DataFrame, strategy: str, target: float) -> int | None:
    """Fewest labels at which ``strategy``'s mean macro-F1 reaches ``target`` (None: never)."""
    rows = stats[(stats.strategy == strategy) & (stats["mean"] >= target)]
    return int(rows.n_labeled.min()) if len(rows) else None


def labels_to_stay(stats: pd.DataFrame, strategy: str, target: float) -> int | None:
    """First budget from which ``strategy``'s mean stays at or above ``target`` (None: never)."""
    st = stats[stats.strategy == strategy].sort_values("n_labeled")
    below = np.flatnonzero(st["mean"].to_numpy() < target)
    if len(below) == 0:
        return int(st.n_labeled.iloc[0]) if len(st) else None
    return int(st.n_labeled.iloc[below[-1] + 1]) if below[-1] + 1 < len(st) else None


def holm(pvalues: list) -> list:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order; None stays None.

    With m tests sorted ascending, the i-th (0-based) is multiplied by m - i, then made
    non-decreasing by a running maximum and capped at 1.
    """
    known = [(i, p) for i, p in enumerate(pvalues) if p is not None]
    adjusted: list = [None] * len(pvalues)
    running, m = 0.0, len(known)
    for rank, (i, p) in enumerate(sorted(known, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def aubc(df: pd.DataFrame) -> pd.DataFrame:
    """Normalized area under the budget curve per run, over the budgets it completed."""
    def area(run):
        run = run.sort_values("n_labeled")
        x, y = run.n_labeled.to_numpy(float), run.macro_f1.to_numpy(float)
        return float(y[0]) if len(x) < 2 else float(np.trapezoid(y, x) / (x[-1] - x[0]))
    out = df.groupby(["strategy", "seed"])[["n_labeled", "macro_f1"]].apply(area)
    return out.rename("aubc").reset_index()


def paired_wilcoxon(values: pd.DataFrame, column: str, strategy: str, baseline: str) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value over seeds both strategies share (None if < 2)."""
    from scipy.stats import wilcoxon
    a = values[values.strategy == strategy].set_index("seed")[column]
    b = values[values.strategy == baseline].set_index("seed")[column]
    seeds = a.index.intersection(b.index)
    if len(seeds) < 2:
        return None
    diff = a[seeds].to_numpy() - b[seeds].to_numpy()
    if np.allclose(diff, 0):
        return 1.0
    return float(wilcoxon(diff).pvalue)


# --------------------------------------------------------------------------- tables
def fmt(mean, std=None, digits=4):
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "-"
    if std is None or np.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_p(p):
    return "-" if p is None else f"{p:.3g}"


def budget_table(df: pd.DataFrame, stats: pd.DataFrame, strategies: list[str]) -> list[str]:
    """Mean ± std per budget, and per strategy the paired p-values against random at every
    budget, Holm-corrected over that strategy's budgets (one family per strategy)."""
    others = [s for s in strategies if s != BASELINE and BASELINE in strategies]
    head = ["labels"] + [f"{s} (n)" for s in strategies] + [f"p {s} vs {BASELINE} (Holm)" for s in others]
    budgets = sorted(stats.n_labeled.unique())
    # The first budget is the shared initial set, the same for every strategy under a seed:
    # it tests nothing about a strategy and stays out of the family.
    adjusted = {s: [None] + holm([paired_wilcoxon(df[df.n_labeled == n], "macro_f1", s, BASELINE)
                                  for n in budgets[1:]]) for s in others}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, n in enumerate(budgets):
        cells = [str(n)]
        for s in strategies:
            row = stats[(stats.strategy == s) & (stats.n_labeled == n)]
            cells.append("-" if row.empty else f"{fmt(row['mean'].iloc[0], row['std'].iloc[0])} ({row.n.iloc[0]})")
        cells += [fmt_p(adjusted[s][k]) for s in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def final_values(df: pd.DataFrame) -> pd.DataFrame:
    """Macro-F1 of every run at the grid's final budget (runs that got there)."""
    return df[df.n_labeled == df.n_labeled.max()]


def strategy_table(dataset: str, df, stats, areas, strategies) -> list[str]:
    """Ranking by mean final macro-F1, with AUBC, labels to target and paired p-values.

    p-values compare each strategy with ``random`` and with ``entropy`` (where present):
    two-sided Wilcoxon signed-rank over the seeds both ran, at the final budget and on AUBC.
    """
    # Labels to a target: over the runs that reached the final budget only, so that seeds still
    # under way do not move the mean of the early budgets alone.
    finished = mean_std(df.merge(final_values(df)[["strategy", "seed"]], on=["strategy", "seed"]))
    final_random = None
    if BASELINE in strategies and BASELINE in set(finished.strategy):
        rand = finished[finished.strategy == BASELINE]
        final_random = float(rand.sort_values("n_labeled")["mean"].iloc[-1])
    references = [r for r in (BASELINE, "entropy") if r in strategies]
    published = PUBLISHED_TARGETS.get(dataset.split("_")[0])
    head = ["rank", "strategy", "final labels", "final macro-F1 (seeds)",
            *[f"p final vs {r}" for r in references], "AUBC",
            *[f"p AUBC vs {r}" for r in references],
            f"labels to random's final ({fmt(final_random)})", "labels to stay at it"]
    if published:
        head.append(f"labels to {published}")
    finals = final_values(df)
    final_mean = finals.groupby("strategy").macro_f1.mean()
    # Strategies that have not reached the grid's final budget yet come last, unranked.
    ranked = sorted(strategies, key=lambda s: (s not in final_mean, -final_mean.get(s, 0.0)))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, s in enumerate(ranked, 1):
        st = stats[stats.strategy == s].sort_values("n_labeled")
        a = areas[areas.strategy == s].aubc
        cells = [str(rank) if s in final_mean else "-", s, str(st.n_labeled.iloc[-1]),
                 f"{fmt(st['mean'].iloc[-1], st['std'].iloc[-1])} ({st.n.iloc[-1]})",
                 *["-" if s == r else fmt_p(paired_wilcoxon(finals, "macro_f1", s, r)) for r in references],
                 fmt(a.mean(), a.std()),
                 *["-" if s == r else fmt_p(paired_wilcoxon(areas, "aubc", s, r)) for r in references],
                 reached(labels_to_reach(finished, s, final_random)) if final_random is not None else "-",
                 reached(labels_to_stay(finished, s, final_random)) if final_random is not None else "-"]
        if published:
            cells.append(reached(labels_to_reach(finished, s, published)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def reached(labels: int | None) -> str:
    """A labels-to-target cell: the budget (0 included), or "not reached"."""
    return "not reached" if labels is None else str(labels)


def time_table(df: pd.DataFrame, strategies: list[str]) -> list[str]:
    """Where the compute goes: seconds per step (mean) and in total, per strategy and phase."""
    head = ["strategy", "steps"] + [f"{k.split('_')[0]} s/step" for k in TIME_KEYS] + ["total core-minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in strategies:
        part = df[df.strategy == s]
        means = [f"{part[k].mean():.2f}" for k in TIME_KEYS]
        total = part[list(TIME_KEYS)].to_numpy().sum() / 60
        lines.append(f"| {s} | {len(part)} | " + " | ".join(means) + f" | {total:.1f} |")
    return lines


def final_class_table(runs: list[dict], key: str, strategies: list[str], digits: int) -> list[str]:
    """Mean over seeds of a per-class dict (``per_class_f1`` or ``labeled_class_counts``) at the last step."""
    frame = final_class_frame(runs, key)
    classes = list(frame.columns)
    lines = ["| strategy | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for s in strategies:
        if s in frame.index:
            lines.append(f"| {s} | " + " | ".join(f"{v:.{digits}f}" for v in frame.loc[s]) + " |")
    return lines


def final_class_frame(runs: list[dict], key: str) -> pd.DataFrame:
    longest = {r["strategy"]: max(len(x["steps"]) for x in runs if x["strategy"] == r["strategy"]) for r in runs}
    rows = [{"strategy": r["strategy"], **r["steps"][-1][key]} for r in runs
            if len(r["steps"]) == longest[r["strategy"]]]
    return pd.DataFrame(rows).groupby("strategy", sort=False).mean()


# --------------------------------------------------------------------------- plots
def plot_curves(dataset: str, stats: pd.DataFrame, strategies: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    many = len(strategies) > 3  # lighter bands so that every curve stays readable
    fig, ax = plt.subplots(figsize=(8, 5) if many else (7, 4.5))
    for s in strategies:
        st = stats[stats.strategy == s].sort_values("n_labeled")
        std = st["std"].fillna(0)
        ax.plot(st.n_labeled, st["mean"], marker="o", ms=3, label=f"{s} (n={st.n.max()} seeds)",
                lw=2.2 if s in REPRODUCED else 1.4)
        ax.fill_between(st.n_labeled, st["mean"] - std, st["mean"] + std, alpha=0.08 if many else 0.2)
    ax.set_xlabel("number of labeled samples")
    ax.set_ylabel("macro-F1 on the test set")
    ax.set_title(f"{dataset}: mean ± 1 std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_classes(dataset: str, runs: list[dict], strategies: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "per_class_f1", "per-class F1 at the final budget"),
                           (axes[1], "labeled_class_counts", "class mix of the selected labels")):
        frame = final_class_frame(runs, key).reindex([s for s in strategies])
        frame.T.plot.bar(ax=ax, rot=0)
        ax.set_title(title)
        ax.set_xlabel("class")
        ax.grid(alpha=0.3, axis="y")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("labeled samples (mean over seeds, log scale)")
    axes[0].set_ylabel("F1 (mean over seeds)")
    fig.suptitle(dataset)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- two configs
def compare_folders(folder_a: Path, folder_b: Path) -> list[str]:
    """Each strategy run in both folders (e.g. two configs of one dataset), paired by seed.

    Rows: final macro-F1 and AUBC (mean ± std) in each folder and the two-sided Wilcoxon
    signed-rank p-value over the seeds both folders ran. Only runs that completed count, and
    both folders must end at the same budget.
    """
    frames, finals = {}, {}
    for tag, folder in (("a", folder_a), ("b", folder_b)):
        loaded, problems = load_runs(folder)
        runs = [r for r in loaded if r["complete"]]
        for p in problems:
            print(f"warning: skipped invalid run file: {p}", file=sys.stderr)
        if len(runs) < len(loaded):
            print(f"note: {folder}: {len(loaded) - len(runs)} incomplete run(s) left out", file=sys.stderr)
        if not runs:
            raise InvalidRunFile(f"{folder}: no complete run files (<strategy>_seed<k>.json)")
        df = curves(runs)
        frames[tag] = (final_values(df), aubc(df))
        finals[tag] = int(df.n_labeled.max())
    if finals["a"] != finals["b"]:
        raise InvalidRunFile(f"{folder_a} ends at {finals['a']} labels and {folder_b} at {finals['b']}: "
                             "final F1 and AUBC would compare different budgets")
    shared = sorted(set(frames["a"][0].strategy) & set(frames["b"][0].strategy))
    if not shared:
        raise InvalidRunFile(f"{folder_a} and {folder_b} have no strategy in common")
    head = ["strategy", "value", f"A: {shown_path(folder_a)}", f"B: {shown_path(folder_b)}", "paired seeds",
            "p (A vs B)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in shared:
        for i, (name, column) in enumerate((("final macro-F1", "macro_f1"), ("AUBC", "aubc"))):
            a, b = (frames[t][i][frames[t][i].strategy == s].assign(strategy=t) for t in ("a", "b"))
            both = pd.concat([a, b])
            seeds = len(set(a.seed) & set(b.seed))
            cells = [s, name, fmt(a[column].mean(), a[column].std()), fmt(b[column].mean(), b[column].std()),
                     str(seeds), fmt_p(paired_wilcoxon(both, column, "a", "b"))]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- stopping
def stopping_frame(runs: list[dict], cv: dict | None = None) -> pd.DataFrame:
    """One row per (complete run, criterion setting): where the criterion would have stopped.

    A run that never triggers the criterion counts as stopping at the final budget (no
    labels saved, no F1 given up). Runs that did not record what a criterion reads are left
    out of that criterion's rows. ``cv``: {(strategy, seed): {step: cross-validated F1}}
    replayed by ``code/stopping_cv.py``, which the learning curve reads.
    """
    rows = []
    for run in runs:
        if not run["complete"]:
            continue
        rounds, steps = rounds_of_run(run, (cv or {}).get((run["strategy"], run["seed"]))), run["steps"]
        for name, settings in STOPPING_SWEEP:
            criterion = get_criterion(name, **settings)
            if not criterion.measurable(rounds):
                continue
            i = first_stop(criterion, rounds)
            at = steps[-1] if i is None else steps[i]
            rows.append({"strategy": run["strategy"], "seed": run["seed"], "criterion": criterion.label(),
                         "stopped": i is not None, "stop_labels": at["n_labeled"],
                         "saved": steps[-1]["n_labeled"] - at["n_labeled"],
                         "f1_given_up": steps[-1]["macro_f1"] - at["macro_f1"]})
    return pd.DataFrame(rows)


def replayed_cv(folder: Path, runs: list[dict]) -> dict:
    """{(strategy, seed): {step: F1}} from ``folder/cv/`` (``code/stopping_cv.py``), for the runs
    whose replay matches their file and has reached their last step. A replay still under way
    is left out: read as it stands it would count as a run the learning curve never stopped."""
    replays = {}
    for r in runs:
        record = cv_record(folder / f"{r['strategy']}_seed{r['seed']}.json", r)
        if record and any(s["step"] == len(r["steps"]) - 1 for s in record["steps"]):
            replays[(r["strategy"], r["seed"])] = cv_scores(record)
    return replays


def stopping_table(runs: list[dict], strategies: list[str], cv: dict | None = None) -> list[str]:
    """Per strategy and criterion setting: runs stopped, stop budget, labels saved, F1 given up."""
    frame = stopping_frame(runs, cv)
    if frame.empty:
        return ["No complete run recorded what the stopping criteria read (stop-set predictions)."]
    head = ["strategy", "criterion", "stopped (runs)", "stop at labels", "labels saved", "test macro-F1 given up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [label for label in dict.fromkeys(frame.criterion)]
    for s in strategies:
        for label in order:
            part = frame[(frame.strategy == s) & (frame.criterion == label)]
            if part.empty:
                continue
            cells = [s, label, f"{int(part.stopped.sum())} of {len(part)}",
                     fmt(part.stop_labels.mean(), part.stop_labels.std(), 0),
                     fmt(part.saved.mean(), part.saved.std(), 0),
                     fmt(part.f1_given_up.mean(), part.f1_given_up.std())]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- AAMI (MIT-BIH)
def aami_metrics(matrix, class_names: list[str]) -> dict:
    """AAMI-style figures from a test confusion matrix (rows true, columns predicted):
    sensitivity (Se), positive predictivity (+P) and F1 of SVEB (S) and VEB (V), overall
    accuracy, and macro-F1 over N, S, V, F (Q has too few beats to score)."""
    m = np.asarray(matrix, dtype=float)
    out = {"accuracy": float(np.trace(m) / m.sum())}
    f1s = {}
    for c in class_names:
        i = class_names.index(c)
        tp, true, predicted = m[i, i], m[i].sum(), m[:, i].sum()
        se = tp / true if true else float("nan")
        ppv = tp / predicted if predicted else float("nan")
        f1s[c] = 2 * tp / (true + predicted) if true + predicted else 0.0
        if c in ("S", "V"):
            label = {"S": "SVEB", "V": "VEB"}[c]
            out.update({f"{label} Se": se, f"{label} +P": ppv, f"{label} F1": f1s[c]})
    out["macro-F1 NSVF"] = float(np.mean([f1s[c] for c in AAMI_CLASSES]))
    return out


def aami_table(runs: list[dict], strategies: list[str]) -> list[str]:
    """AAMI figures at the final budget (mean ± std over the complete runs with a confusion matrix)."""
    rows = []
    for run in runs:
        last = run["steps"][-1]
        if run["complete"] and "confusion_matrix" in last:
            classes = list(last["per_class_f1"])
            if set(AAMI_CLASSES) <= set(classes):
                rows.append({"strategy": run["strategy"], **aami_metrics(last["confusion_matrix"], classes)})
    if not rows:
        return ["No complete run recorded a test confusion matrix yet (runs written before it was recorded)."]
    frame = pd.DataFrame(rows)
    columns = [c for c in frame.columns if c != "strategy"]
    lines = ["| strategy (runs) | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for s in strategies:
        part = frame[frame.strategy == s]
        if len(part):
            lines.append(f"| {s} ({len(part)}) | " + " | ".join(fmt(part[c].mean(), part[c].std(), 3)
                                                              for c in columns) + " |")
    return lines


# --------------------------------------------------------------------------- patient adaptation
PATIENT_FIGURES = ("VEB Se", "VEB +P", "SVEB Se", "SVEB +P")


def patient_frames(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From ``root/record_<n>/`` run folders (``code/mitbih_patient.py``): one row per (record,
    strategy, seed, labels) with the test confusion matrix, and the gross figures per (strategy,
    seed, labels): that run's confusion matrices added up over the records it has at that
    budget, then Se / +P (the AAMI gross statistic), with the number of records."""
    rows = []
    for folder in sorted(root.glob("record_*")):
        for run in load_runs(folder)[0]:
            for step in run["steps"]:
                if "confusion_matrix" in step:
                    rows.append({"record": folder.name.removeprefix("record_"), "strategy": run["strategy"],
                                 "seed": run["seed"], "n_labeled": step["n_labeled"],
                                 "classes": tuple(step["per_class_f1"]),
                                 "matrix": np.asarray(step["confusion_matrix"], dtype=float)})
    per_record = pd.DataFrame(rows)
    if per_record.empty:
        return per_record, per_record
    gross = []
    for (strategy, seed, n), part in per_record.groupby(["strategy", "seed", "n_labeled"]):
        classes = list(part.classes.iloc[0])
        gross.append({"strategy": strategy, "seed": seed, "n_labeled": n, "records": len(part),
                      **aami_metrics(np.sum(np.stack(part.matrix.to_list()), axis=0), classes)})
    return per_record, pd.DataFrame(gross)


def patient_report(root: Path) -> tuple[list[str], pd.DataFrame]:
    per_record, gross = patient_frames(root)
    lines = [f"# Patient-adaptive active learning: {shown_path(root)}", "",
             f"Generated by `python code/plot_perf.py --patients {shown_path(root)}` from the run files of "
             "`code/mitbih_patient.py`. Gross figures: each run's test confusion matrices (the later part of "
             "each DS2 record) added up over the records, then VEB / SVEB sensitivity (Se) and positive "
             "predictivity (+P); mean ± std over seeds. labels: the patient's labeled beats (the common DS1 "
             "set is in every training set).", ""]
    if gross.empty:
        return lines + ["No run files with confusion matrices yet."], gross
    complete = gross[gross.records == gross.records.max()]
    strategies = [s for s in [BASELINE, *sorted(set(complete.strategy) - {BASELINE})] if s in set(complete.strategy)]
    lines += [f"Records: {int(gross.records.max())}; a (strategy, seed, budget) that does not have every record "
              "yet is left out.", "",
              "| labels | strategy (seeds) | " + " | ".join(PATIENT_FIGURES) + " | macro-F1 NSVF |",
              "|" + "---|" * (len(PATIENT_FIGURES) + 3)]
    for n in sorted(set(complete.n_labeled)):
        for strategy in strategies:
            part = complete[(complete.n_labeled == n) & (complete.strategy == strategy)]
            if len(part):
                cells = [fmt(part[c].mean(), part[c].std(), 3) for c in (*PATIENT_FIGURES, "macro-F1 NSVF")]
                lines.append(f"| {n} | {strategy} ({len(part)}) | " + " | ".join(cells) + " |")
    lines += patient_comparison(complete, strategies)
    final = int(per_record.n_labeled.max())
    lines += ["", f"## Per record at {final} labeled beats (mean over seeds; VEB Se / +P, SVEB Se / +P)", "",
              "| record | beats V / S in its test part | " + " | ".join(strategies) + " |",
              "|" + "---|" * (len(strategies) + 2)]
    for record, part in per_record[per_record.n_labeled == final].groupby("record"):
        classes = list(part.classes.iloc[0])
        matrix = part.matrix.iloc[0]
        counts = f"{int(matrix[classes.index('V')].sum())} / {int(matrix[classes.index('S')].sum())}"
        cells = []
        for strategy in strategies:
            figures = [aami_metrics(m, classes) for m in part[part.strategy == strategy].matrix]
            if not figures:
                cells.append("-")
                continue
            defined = {k: [f[k] for f in figures if not np.isnan(f[k])] for k in PATIENT_FIGURES}
            mean = {k: float(np.mean(v)) if v else float("nan") for k, v in defined.items()}
            cells.append(" / ".join(fmt(mean[k], None, 2) for k in PATIENT_FIGURES))
        lines.append(f"| {record} | {counts} | " + " | ".join(cells) + " |")
    return lines, complete


def patient_comparison(gross: pd.DataFrame, strategies: list[str], reference: str = "sequential",
                       target_se: float = 0.95) -> list[str]:
    """Each strategy against ``reference`` (the first beats of the record): the gross VEB Se and +P
    difference per budget with two-sided Wilcoxon p-values paired by seed, Holm-corrected over the
    budgets of each (strategy, figure); and the fewest beats at which the strategy's mean VEB Se
    alone, and VEB Se and +P together, reach the reference's at its largest budget, and at which
    its mean VEB Se reaches ``target_se``."""
    if reference not in strategies:
        return []
    budgets = sorted(set(gross.n_labeled))
    top = gross[(gross.strategy == reference) & (gross.n_labeled == budgets[-1])]
    if top.empty:  # the reference has not reached the last budget yet: nothing to match
        return []
    ref_se, ref_ppv = top["VEB Se"].mean(), top["VEB +P"].mean()
    lines = ["", f"## Against `{reference}` (the record's first beats)", "",
             f"Gross VEB Se and +P minus `{reference}`'s at the same budget, mean over seeds, with the two-sided "
             "Wilcoxon p-value paired by seed, Holm-corrected over the budgets (budget 0 has no patient label "
             f"and is left out). Beats to match: the fewest beats at which the mean reaches `{reference}`'s "
             f"at {budgets[-1]} beats (VEB Se {ref_se:.3f}, +P {ref_ppv:.3f}); '-': not within "
             f"{budgets[-1]}.", "",
             "| strategy | " + " | ".join(f"{n} beats: dSe (p) / d+P (p)" for n in budgets[1:])
             + f" | beats to match Se | to match Se and +P | beats to VEB Se {target_se} |",
             "|" + "---|" * (len(budgets) + 3)]
    means = gross.groupby(["strategy", "n_labeled"])[["VEB Se", "VEB +P"]].mean()
    for strategy in (s for s in strategies if s != reference):
        figures = {}
        for figure in ("VEB Se", "VEB +P"):
            pvalues = [paired_wilcoxon(gross[gross.n_labeled == n], figure, strategy, reference) for n in budgets[1:]]
            figures[figure] = holm(pvalues)
        cells = []
        for i, n in enumerate(budgets[1:]):
            if (strategy, n) not in means.index or (reference, n) not in means.index:
                cells.append("-")  # a budget not every record has reached yet
                continue
            parts = [f"{means.loc[(strategy, n), f] - means.loc[(reference, n), f]:+.3f} ({fmt_p(figures[f][i])})"
                     for f in ("VEB Se", "VEB +P")]
            cells.append(" / ".join(parts))
        curve = means.loc[strategy]

        def first(mask):
            hits = curve.index[mask]
            return str(int(hits.min())) if len(hits) else "-"
        cells += [first(curve["VEB Se"] >= ref_se),
                  first((curve["VEB Se"] >= ref_se) & (curve["VEB +P"] >= ref_ppv)),
                  first(curve["VEB Se"] >= target_se)]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def write_patient_report(root: Path) -> list[str]:
    """Write ``root/patients.md`` (and ``patients.png`` when there are runs); return its lines."""
    lines, gross = patient_report(root)
    if not gross.empty:
        plot_patients(gross, root / "patients.png")
    write_text_atomic(root / "patients.md", "\n".join(lines))
    return lines


def plot_patients(gross: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, figure in zip(axes.ravel(), PATIENT_FIGURES):
        for strategy in sorted(set(gross.strategy)):
            st = gross[gross.strategy == strategy].groupby("n_labeled")[figure].agg(["mean", "std"]).reset_index()
            ax.errorbar(st.n_labeled, st["mean"], yerr=st["std"].fillna(0), marker="o", ms=3, capsize=2,
                        label=strategy, lw=2.0 if strategy in (BASELINE, "sequential") else 1.3)
        ax.set_title(f"gross {figure}")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("labeled beats of the patient")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Patient adaptation on the 22 DS2 records (mean ± std over seeds)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- two recipes
def recipe_figures(folder: Path) -> dict[str, dict]:
    """Per strategy, over the complete runs of ``folder``: final macro-F1 and AUBC (mean, std),
    the gain over random at the final budget (mean of the paired differences) with its
    two-sided Wilcoxon p, and the labels at which the mean first reaches random's final mean."""
    loaded, problems = load_runs(folder)
    for p in problems:
        print(f"warning: skipped invalid run file: {p}", file=sys.stderr)
    runs = [r for r in loaded if r["complete"]]
    if not runs:
        return {}
    df = curves(runs)
    stats, finals, areas = mean_std(df), final_values(df), aubc(df)
    random_final = stats[stats.strategy == BASELINE].sort_values("n_labeled")["mean"]
    target = float(random_final.iloc[-1]) if len(random_final) else None
    out = {}
    for s in sorted(set(df.strategy)):
        f, a = finals[finals.strategy == s], areas[areas.strategy == s]
        row = {"seeds": len(f), "final": (f.macro_f1.mean(), f.macro_f1.std()),
               "aubc": (a.aubc.mean(), a.aubc.std()), "gain": None, "p": None, "labels": None}
        if target is not None and s != BASELINE:
            paired = f.set_index("seed").macro_f1 - finals[finals.strategy == BASELINE].set_index("seed").macro_f1
            row.update(gain=float(paired.dropna().mean()), p=paired_wilcoxon(finals, "macro_f1", s, BASELINE))
        if target is not None:
            row["labels"] = labels_to_reach(stats, s, target)
        out[s] = row
    return out


def reality_check(old_root: Path, new_root: Path) -> list[str]:
    """Markdown: for each dataset folder in both roots, both recipes side by side per strategy."""
    lines = [f"# Reality check: {old_root.name} vs {new_root.name}", "",
             f"Generated by `python code/plot_perf.py --reality-check {shown_path(old_root)} {shown_path(new_root)}` "
             "from the complete runs of each folder. gain: mean over paired seeds of (strategy - random) "
             "final macro-F1, p: two-sided Wilcoxon signed-rank over those pairs (uncorrected); labels to "
             "random's final: the first budget at which the strategy's mean reaches random's final mean "
             "under the same recipe.", ""]
    for folder in sorted(f for f in old_root.iterdir() if f.is_dir() and (new_root / f.name).is_dir()):
        old, new = recipe_figures(folder), recipe_figures(new_root / folder.name)
        strategies = [s for s in [BASELINE, *sorted((set(old) | set(new)) - {BASELINE})] if s in old or s in new]
        if not strategies:
            continue
        head = ["strategy", "seeds (old / new)", "final macro-F1 old", "final macro-F1 new", "AUBC old", "AUBC new",
                "gain vs random old (p)", "gain vs random new (p)", "labels to random's final old", "new"]
        lines += [f"## {folder.name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in strategies:
            a, b = old.get(s), new.get(s)

            def cell(r, key):
                if r is None:
                    return "not run"
                if key in ("final", "aubc"):
                    return fmt(*r[key])
                if key == "gain":
                    return "-" if r["gain"] is None else f"{r['gain']:+.4f} ({fmt_p(r['p'])})"
                return str(r["labels"]) if r["labels"] is not None else "not reached"
            lines.append("| " + " | ".join([s, f"{a['seeds'] if a else 0} / {b['seeds'] if b else 0}",
                                            cell(a, "final"), cell(b, "final"), cell(a, "aubc"), cell(b, "aubc"),
                                            cell(a, "gain"), cell(b, "gain"), cell(a, "labels"),
                                            cell(b, "labels")]) + " |")
        lines.append("")
    return lines


# --------------------------------------------------------------------------- two protocols
CROSSOVER_STRATEGY = "entropy"  # the published uncertainty strategy whose crossover is measured
MIN_PAIRS_FOR_VERDICT = 6  # fewer pairs: no two-sided Wilcoxon p can fall below 0.05 (5 pairs: 0.0625)


def paired_differences(df: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """Per budget after the shared initial one: mean and std over seeds of (strategy - random)
    macro-F1, the seed pairs, the two-sided Wilcoxon p (uncorrected) and Holm-corrected over
    the budgets of this protocol (one family per strategy, as in the budget table)."""
    budgets = sorted(df.n_labeled.unique())[1:]
    rows = []
    for n in budgets:
        at = df[df.n_labeled == n]
        a = at[at.strategy == strategy].set_index("seed").macro_f1
        b = at[at.strategy == BASELINE].set_index("seed").macro_f1
        diff = (a - b).dropna()
        rows.append({"n_labeled": int(n), "mean": float(diff.mean()) if len(diff) else np.nan,
                     "std": float(diff.std()) if len(diff) > 1 else np.nan, "pairs": len(diff),
                     "p": paired_wilcoxon(at, "macro_f1", strategy, BASELINE)})
    out = pd.DataFrame(rows, columns=["n_labeled", "mean", "std", "pairs", "p"])
    out = out[out.pairs > 0].reset_index(drop=True)  # budgets no pair of runs has reached yet
    out["p_holm"] = holm([None if pd.isna(p) else float(p) for p in out.p]) if len(out) else []
    return out


def crossover_budget(diffs: pd.DataFrame) -> int | None:
    """First budget from which the strategy's mean paired gain over random stays above 0
    (None: it ends at or below random), over the budgets ``diffs`` holds."""
    gain = diffs["mean"].to_numpy()
    if not len(gain) or not gain[-1] > 0:
        return None
    below = np.flatnonzero(~(gain > 0))
    return int(diffs.n_labeled.iloc[below[-1] + 1 if len(below) else 0])


def crossover_frames(roots: list[Path], dataset: str) -> list[tuple[str, pd.DataFrame]]:
    """(protocol label, curves) for each root that holds runs of ``dataset``."""
    frames = []
    for root in roots:
        runs = [r for r in load_runs(root / dataset)[0] if r["steps"]] if (root / dataset).is_dir() else []
        if runs:
            c = runs[0]["config"]
            frames.append((f"{shown_path(root)} (start {c['start_size']}, batch {c['batch_size']})", curves(runs)))
    return frames


def crossover_report(low_root: Path, standard_root: Path) -> tuple[list[str], dict]:
    """Markdown and, per dataset, ``(protocol label, curves, {strategy: paired_differences})``:
    every strategy's paired gain over random per budget, in the low-budget and the standard
    protocol, and where entropy crosses random."""
    lines = [f"# Low budget vs standard protocol: {shown_path(low_root)} and {shown_path(standard_root)}", "",
             f"Generated by `python code/plot_perf.py --crossover {shown_path(low_root)} {shown_path(standard_root)}`. "
             "gain: mean ± std over paired seeds of (strategy - random) test macro-F1; p: two-sided Wilcoxon "
             "signed-rank over those pairs, uncorrected and Holm-corrected over the budgets of one strategy in "
             "one protocol (the initial budget, shared by all strategies, is left out); n: the number of "
             "paired seeds. With 10 pairs the smallest p is 0.002. crossover: the first budget from which the "
             f"mean gain stays above 0, stated only where every budget has at least {MIN_PAIRS_FOR_VERDICT} "
             "pairs (with fewer, no two-sided p can fall below 0.05), as is the plot.", ""]
    frames = {}
    datasets = sorted(f.name for f in low_root.iterdir() if f.is_dir() and any(f.glob("*_seed*.json")))
    for dataset in datasets:
        protocols = []
        lines += [f"## {dataset}", ""]
        for label, df in crossover_frames([low_root, standard_root], dataset):
            others = [s for s in sorted(set(df.strategy)) if s != BASELINE]
            diffs = {s: paired_differences(df, s) for s in others} if BASELINE in set(df.strategy) else {}
            protocols.append((label, df, diffs))
            if not diffs:
                continue
            lines += [f"### {label}", "", "| labels | " + " | ".join(f"{s} gain (n, p, Holm p)" for s in others) + " |",
                      "|" + "---|" * (len(others) + 1)]
            for n in sorted(set().union(*(set(d.n_labeled) for d in diffs.values()))):
                cells = []
                for s in others:
                    row = diffs[s][diffs[s].n_labeled == n]
                    cells.append("-" if row.empty or np.isnan(row["mean"].iloc[0]) else
                                 f"{row['mean'].iloc[0]:+.4f}"
                                 + ("" if np.isnan(row['std'].iloc[0]) else f" ± {row['std'].iloc[0]:.4f}")
                                 + f" (n {row.pairs.iloc[0]}, {fmt_p(row.p.iloc[0])}, {fmt_p(row.p_holm.iloc[0])})")
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
            for s in others:
                d = diffs[s]
                worse = d[(d["mean"] < 0) & (d.p < 0.05)].n_labeled.tolist()
                better = d[(d["mean"] > 0) & (d.p < 0.05)].n_labeled.tolist()
                worse_holm = d[(d["mean"] < 0) & (d.p_holm.astype(float) < 0.05)].n_labeled.tolist()
                better_holm = d[(d["mean"] > 0) & (d.p_holm.astype(float) < 0.05)].n_labeled.tolist()
                cross = crossover_budget(d)
                last = int(d.n_labeled.max()) if len(d) else None
                if last is None or last < int(df.n_labeled.max()):
                    verdict = f"incomplete (paired runs up to {last} labels of {int(df.n_labeled.max())})"
                elif int(d.pairs.min()) < MIN_PAIRS_FOR_VERDICT:
                    verdict = (f"not stated (as few as {int(d.pairs.min())} paired seed(s) at a budget; "
                               f"it needs {MIN_PAIRS_FOR_VERDICT})")
                else:
                    verdict = str(cross) if cross is not None else "none (ends at or below random)"
                lines.append(f"- {s}: crossover {verdict}; "
                             f"below random at p < 0.05: {worse or 'none'} (Holm: {worse_holm or 'none'}); "
                             f"above at p < 0.05: {better or 'none'} (Holm: {better_holm or 'none'})")
            lines.append("")
        if not enough_pairs_to_plot(protocols):
            lines += [f"No plot for {dataset}: a protocol has fewer than {MIN_PAIRS_FOR_VERDICT} paired seeds "
                      "at some budget.", ""]
        frames[dataset] = protocols
    return lines, frames


def enough_pairs_to_plot(protocols: list[tuple[str, pd.DataFrame, dict]]) -> bool:
    """Whether every protocol's paired gains have at least :data:`MIN_PAIRS_FOR_VERDICT` pairs at
    every budget (a crossover plot of fewer seeds would read as a finding)."""
    gains = [d for _, _, diffs in protocols for d in diffs.values()]
    return bool(gains) and all(len(d) and int(d.pairs.min()) >= MIN_PAIRS_FOR_VERDICT for d in gains)


def plot_crossover(dataset: str, protocols: list[tuple[str, pd.DataFrame, dict]], path: Path) -> None:
    """Top: mean macro-F1 vs labels (log scale) of every strategy in both protocols; bottom: the
    paired gain over random (``crossover_report``'s differences), filled markers where p < 0.05
    (uncorrected)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8.5, 7.5), sharex=True, height_ratios=(3, 2))
    strategies = sorted({s for _, df, _ in protocols for s in set(df.strategy)})
    colors = {s: f"C{i}" for i, s in enumerate(strategies)}
    for k, (label, df, diffs) in enumerate(protocols):
        style = ("-", "--")[k % 2]
        stats = mean_std(df)
        for s in strategies:
            st = stats[stats.strategy == s].sort_values("n_labeled")
            if st.empty:
                continue
            top.plot(st.n_labeled, st["mean"], style, color=colors[s], marker="o", ms=2.5,
                     lw=2.0 if s in (BASELINE, CROSSOVER_STRATEGY) else 1.2,
                     label=s if k == 0 or s not in set(protocols[0][1].strategy) else None)
            if s not in diffs:
                continue
            d = diffs[s]
            bottom.plot(d.n_labeled, d["mean"], style, color=colors[s], lw=1.2)
            sig = d.p.astype(float) < 0.05
            bottom.scatter(d.n_labeled[sig], d["mean"][sig], color=colors[s], s=18, zorder=3)
            bottom.scatter(d.n_labeled[~sig], d["mean"][~sig], facecolors="none", edgecolors=colors[s], s=18)
    bottom.axhline(0, color="black", lw=0.8)
    top.set_xscale("log")
    top.set_ylabel("macro-F1 on the test set (mean over seeds)")
    bottom.set_ylabel("gain over random (paired mean)")
    bottom.set_xlabel("number of labeled samples (log scale)")
    names = " and ".join(f"{('solid', 'dashed')[k % 2]}: {label}" for k, (label, _, _) in enumerate(protocols))
    top.set_title(f"{dataset}: low-budget and standard protocol\n{names}", fontsize=9)
    bottom.set_title("filled: p < 0.05 (paired Wilcoxon over seeds, uncorrected)", fontsize=9)
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    top.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def thread_note(runs: list[dict]) -> list[str]:
    """A summary line when the folder mixes TensorFlow thread counts (paired, not bit-comparable)."""
    counts: dict = {}
    for run in runs:
        threads = run["config"].get("threads")
        counts.setdefault(threads, {}).setdefault(run["strategy"], 0)
        counts[threads][run["strategy"]] += 1
    if len(counts) < 2:
        return []
    parts = []
    for threads in sorted(counts, key=lambda t: (t is None, t or 0)):
        label = "not recorded" if threads is None else f"{threads} thread(s)"
        parts.append(f"{label}: " + ", ".join(f"{s} ({n})" for s, n in sorted(counts[threads].items())))
    return ["Thread counts differ between runs (paired by seed, but not bit-comparable): " + "; ".join(parts)]


def save_figure(fig, path: Path) -> None:
    """Render ``fig`` as PNG in memory, then write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_bytes_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- driver
def summarize_dataset(folder: Path, out_dir: Path) -> str | None:
    dataset = folder.name
    notes: list[str] = []
    runs, problems = load_runs(folder, notes)
    for p in problems:
        print(f"warning: skipped invalid run file: {p}", file=sys.stderr)
    for note in notes[:3]:
        print(f"note: {note}", file=sys.stderr)
    if len(notes) > 3:
        print(f"note: ... and {len(notes) - 3} more such notes for {folder}", file=sys.stderr)
    runs = [r for r in runs if r["steps"]]
    if not runs:
        return None
    df = curves(runs)
    stats = mean_std(df)
    # AUBC only over runs that reached the final budget: a partial run's area covers fewer,
    # earlier (lower) budgets and would drag its strategy's mean down.
    areas = aubc(df).merge(final_values(df)[["strategy", "seed"]], on=["strategy", "seed"])
    order = [BASELINE] if BASELINE in set(df.strategy) else []
    strategies = order + sorted(set(df.strategy) - {BASELINE})
    incomplete = [f"{r['strategy']}_seed{r['seed']} ({len(r['steps'])} of "
                  f"{r['config']['n_steps'] + 1} steps)" for r in runs if not r["complete"]]
    reproduced = [s for s in strategies if s in REPRODUCED] or strategies
    plot_curves(dataset, stats, reproduced, out_dir / f"{dataset}_perf.png")
    if len(strategies) > len(reproduced):
        plot_curves(dataset, stats, strategies, out_dir / f"{dataset}_strategies.png")
    plot_classes(dataset, runs, strategies, out_dir / f"{dataset}_classes.png")
    lines = [f"# {dataset}: {len(runs)} runs", "",
             f"Generated by `python code/plot_perf.py` from `{folder.relative_to(out_dir.parent) if folder.is_relative_to(out_dir.parent) else folder}`.",
             "Incomplete runs (used up to their last step): " + (", ".join(incomplete) or "none"),
             *([f"Invalid files skipped: {len(problems)}"] if problems else []),
             *([f"Files not verifiable (written before checksums existed): {len(notes)}"] if notes else []),
             *thread_note(runs),
             "",
             "## Strategies, ranked by final macro-F1", "",
             *strategy_table(dataset, df, stats, areas, strategies), "",
             "AUBC: area under the macro-F1 vs labels curve divided by the label range. p: two-sided "
             "Wilcoxon signed-rank test over paired seeds (same initial labeled set per seed); with "
             "n pairs the smallest possible p is 2 / 2^n (0.002 for 10, 0.0625 for 5). The p-values in "
             "this table are uncorrected (one test per cell). Labels to random's final (over the runs "
             "that reached the final budget): the first budget at which the mean reaches it; to stay at it: the first budget from which the "
             "mean never falls below it again. Final F1 and "
             "AUBC count only the runs that reached the final budget; unranked (-): none has yet.", "",
             "## Macro-F1 per budget (mean ± std, seeds)", "", *budget_table(df, stats, strategies), "",
             "p: paired Wilcoxon against random at each budget, Holm-corrected over the budgets of "
             "each strategy after the initial one (family-wise error 0.05 at p < 0.05).", "",
             "## When to stop labeling (stopping criteria on the simulated protocol)", "",
             *stopping_table(runs, strategies, replayed_cv(folder, runs)), "",
             "Each criterion reads every step of a complete run with only the history up to that step, "
             "as a live session would (al/stopping.py); the learning curve reads cross-validated F1 of the "
             "labeled set, replayed after the run by `code/stopping_cv.py` (runs without it, or whose replay has not reached the last step, are left out). stop at labels: the first budget at which it "
             "says stop, a run it never stops counting at the final budget; labels saved: final budget "
             "minus that; test macro-F1 given up: final macro-F1 minus macro-F1 at the stop (negative: "
             "the stop was better). Mean ± std over the runs. Runs that did not record what a criterion "
             "reads (stop-set entropy arrived after the first runs of the new recipe) are left out of it.", "",
             *(["## AAMI figures at the final budget (test set)", "", *aami_table(runs, strategies), "",
                "Se: sensitivity, +P: positive predictivity, from the step's test confusion matrix; "
                "macro-F1 NSVF leaves out Q (a handful of beats).", ""]
               if dataset.startswith("mitbih") else []),
             "## Compute time (from the steps' own timers; one process per run)", "",
             *time_table(df, strategies), "",
             "## Per-class F1 at the final budget (mean over seeds)", "",
             *final_class_table(runs, "per_class_f1", strategies, 3), "",
             "## Class mix of the labeled set at the final budget (mean over seeds)", "",
             *final_class_table(runs, "labeled_class_counts", strategies, 1), ""]
    summary = out_dir / f"{dataset}_summary.md"
    write_text_atomic(summary, "\n".join(lines))
    return str(summary)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"),
                        help="folder with one subfolder of run files per dataset")
    parser.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), default=None,
                        help="instead: compare the strategies run in two result folders of one dataset "
                             "(e.g. two configs), paired by seed, and print the table")
    parser.add_argument("--reality-check", nargs=2, metavar=("OLD_ROOT", "NEW_ROOT"), default=None,
                        help="instead: put two recipes' results folders side by side for every dataset both "
                             "hold, and write NEW_ROOT/reality_check.md")
    parser.add_argument("--crossover", nargs=2, metavar=("LOW_ROOT", "STANDARD_ROOT"), default=None,
                        help="instead: for every dataset of LOW_ROOT (the low-budget protocol's results), the "
                             "paired gain of each strategy over random per budget in both protocols; writes "
                             "LOW_ROOT/crossover.md and LOW_ROOT/<dataset>_crossover.png")
    parser.add_argument("--patients", metavar="ROOT", default=None,
                        help="instead: the patient-adaptive runs of code/mitbih_patient.py under ROOT "
                             "(record_<n>/ folders): gross VEB / SVEB Se and +P per budget; writes "
                             "ROOT/patients.md and ROOT/patients.png")
    args = parser.parse_args(argv)
    if args.patients:
        root = resolve_repo_path(args.patients)
        if not root.is_dir():
            print(f"error: no results folder at {root}", file=sys.stderr)
            return 1
        print("\n".join(write_patient_report(root)))
        return 0
    two_roots = args.crossover or args.reality_check
    if two_roots:
        first, second = (resolve_repo_path(d) for d in two_roots)
        missing = [root for root in (first, second) if not root.is_dir()]
        if missing:
            print(f"error: no results folder at {missing[0]}", file=sys.stderr)
            return 1
        if args.crossover:
            lines, frames = crossover_report(first, second)
            for dataset, protocols in frames.items():
                path = first / f"{dataset}_crossover.png"
                if enough_pairs_to_plot(protocols):
                    plot_crossover(dataset, protocols, path)
                else:
                    path.unlink(missing_ok=True)  # an earlier plot of these runs would no longer match
            write_text_atomic(first / "crossover.md", "\n".join(lines))
        else:
            lines = reality_check(first, second)
            write_text_atomic(second / "reality_check.md", "\n".join(lines))
        print("\n".join(lines))
        return 0
    if args.compare:
        try:
            print("\n".join(compare_folders(*(resolve_repo_path(d) for d in args.compare))))
        except InvalidRunFile as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    root = resolve_repo_path(args.results_dir)
    if not root.is_dir():
        print(f"No results folder at {root}. Run the experiments first: bash run.sh", file=sys.stderr)
        return 1
    folders = [f for f in sorted(root.iterdir()) if f.is_dir() and any(f.glob("*_seed*.json"))]
    written = [s for s in (summarize_dataset(f, root) for f in folders) if s]
    for patients in (f for f in sorted(root.iterdir()) if f.is_dir() and any(f.glob("record_*/*_seed*.json"))):
        write_patient_report(patients)
        written.append(shown_path(patients / "patients.md"))
    if not written:
        print(f"No run files (<dataset>/<strategy>_seed<k>.json) under {root}. "
              "Run the experiments first: bash run.sh", file=sys.stderr)
        return 1
    for s in written:
        print(f"wrote {s} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
