"""Cross-validated macro-F1 of every step of finished protocol runs, for the learning-curve
stopping criterion (``al.stopping.LearningCurve``).

    python code/stopping_cv.py results/mnist                    # every complete run there
    python code/stopping_cv.py results/mitbih --strategies random,entropy --seeds 0-4 --every 2
    python code/plot_perf.py                                    # the stopping table now has it

The protocol's run files hold what the label-free criteria read (the stop-set predictions)
but not the learning curve's statistic: cross-validated macro-F1 *of the labeled set*, which
needs fresh models per fold. This script recomputes it afterwards for each step of each
complete run the way a live session does (``annotate.py status`` uses the same function,
:func:`al.stopping.cross_validated_macro_f1`, with its own trainer and up to 5 folds): stratified k-fold over the labels
selected up to that step, a fresh model per fold with the run's own recipe
(``<script>.build_model`` and ``al.loop.train_fresh_model`` with the run's config), no
label outside the selected set and never the test set.

Output: ``<folder>/cv/<strategy>_seed<k>.json`` per run, rewritten atomically after each
step (an interrupted replay resumes), tied to the run file by its sha256; ``plot_perf.py``
merges it into the run's rounds. Every fit runs on one TensorFlow thread; start one command
per core (e.g. split by ``--seeds``) to use more.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from al import keras_ops, loop, runs
from al.data_common import DataCorruptError, DataNotFoundError, resolve_repo_path
from al.stopping import CV_FORMAT, cross_validated_macro_f1, cv_path, cv_record

# --- what is replayed
STRATEGIES = []        # empty: every strategy with complete runs in the folder
SEEDS = ""             # "0-4" or "0,2,5"; empty: every seed
EVERY = 1              # cross-validate every EVERY-th step (and always the last)
MAX_FOLDS = 3          # k = min(MAX_FOLDS, labels of the rarest class); 3 keeps the replay affordable
CV_STREAM = 7          # the fold models' seeds: [seed, step, CV_STREAM, fold]; the run's models use [seed, step]


def parse_seeds(text: str) -> set[int] | None:
    """"0-4" or "0,2,5" -> set of seeds; "" -> None (every seed)."""
    if not text:
        return None
    try:
        seeds = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            seeds.update(range(int(lo), int(hi or lo) + 1))
        return seeds
    except ValueError:
        raise SystemExit(f"error: --seeds {text!r}: give a range such as 0-4 or a list such as 0,2,5") from None


def script_for(dataset: str):
    """The dataset script (``code/<name>.py``) that wrote runs of ``dataset`` (mitbih_inter -> mitbih)."""
    name = dataset.split("_")[0]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise SystemExit(f"error: no dataset script code/{name}.py for runs of dataset {dataset!r}") from None


def previous_record(run_file: Path, run: dict, max_folds: int) -> dict | None:
    """The replay on disk of ``run_file`` for this very run and fold count, or None (then it
    starts over)."""
    record = cv_record(run_file, run)
    return record if record is not None and record.get("max_folds") == max_folds else None


def replay_run(run_file: Path, run: dict, data, module, every: int, max_folds: int) -> dict:
    """Cross-validate the labeled set of every ``every``-th step (and the last) of ``run``."""
    path = cv_path(run_file)
    record = previous_record(run_file, run, max_folds) or {
        "format": CV_FORMAT, "dataset": run["dataset"], "strategy": run["strategy"], "seed": run["seed"],
        "run_sha256": run["sha256"], "max_folds": max_folds, "cv_stream": CV_STREAM,
        "git_commit": runs.git_commit(), "versions": runs.library_versions(), "cpu_model": runs.cpu_model(),
        "threads": run["config"]["threads"], "steps": [], "sha256": ""}
    done = {s["step"] for s in record["steps"]}
    config, n_classes, seed = run["config"], len(data.class_names), run["seed"]
    last = len(run["steps"]) - 1
    selected = [np.asarray(s["selected"], dtype=np.int64) for s in run["steps"]]
    for step in range(last + 1):
        if step in done or (step % every and step != last):
            continue
        labeled = np.concatenate(selected[: step + 1])
        x, y = data.x_train[labeled], data.y_train[labeled]

        def fit_predict(x_fit, y_fit, x_held_out, fold):
            model = loop.train_fresh_model(module.build_model, config, x_fit, y_fit, n_classes,
                                      [seed, step, CV_STREAM, fold])
            return keras_ops.predict_proba(model, x_held_out).argmax(axis=1)

        started = time.perf_counter()
        score, folds, note = cross_validated_macro_f1(fit_predict, x, y, n_classes, seed, max_folds)
        record["steps"].append({"step": step, "n_labeled": int(len(labeled)), "cv_macro_f1": score,
                                "folds": folds, "note": note.lstrip("; "),
                                "seconds": round(time.perf_counter() - started, 2)})
        record["steps"].sort(key=lambda s: s["step"])
        record["sha256"] = runs.content_digest(record)
        runs.write_json_atomic(path, record)
        print(f"{run['strategy']} seed {seed} step {step} ({len(labeled)} labels): cross-validated macro-F1 "
              + ("-" if score is None else f"{score:.4f}") + f" ({folds} folds, {record['steps'][-1]['seconds']} s)",
              flush=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a results folder of one dataset, e.g. results/mnist")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated; default: every strategy with complete runs")
    parser.add_argument("--seeds", default=SEEDS, help="e.g. 0-4 or 0,2,5; default: every seed")
    parser.add_argument("--every", type=int, default=EVERY, help="cross-validate every k-th step (and the last)")
    parser.add_argument("--max-folds", type=int, default=MAX_FOLDS, help="at most this many folds")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset (searched first)")
    args = parser.parse_args(argv)
    if args.every < 1 or args.max_folds < 2:
        raise SystemExit("error: --every must be >= 1 and --max-folds >= 2")
    folder = resolve_repo_path(args.folder)
    if not folder.is_dir():
        raise SystemExit(f"error: no results folder at {folder}")
    wanted = {s for s in args.strategies.split(",") if s}
    seeds = parse_seeds(args.seeds)
    chosen = []
    for path in sorted(folder.glob("*_seed*.json")):
        try:
            run = runs.read_run(path)
        except runs.RunFileError as err:
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        if run["complete"] and (not wanted or run["strategy"] in wanted) and (seeds is None or run["seed"] in seeds):
            chosen.append((path, run))
    if not chosen:
        raise SystemExit(f"error: no complete runs in {folder} match --strategies {args.strategies or '(all)'} "
                         f"--seeds {args.seeds or '(all)'}")
    threads = {run["config"]["threads"] for _, run in chosen}
    if len(threads) > 1:
        raise SystemExit(f"error: the runs used different thread counts {sorted(threads)}; replay them separately")
    keras_ops.configure_tensorflow(threads.pop())
    loaded = {}
    for path, run in chosen:
        module = script_for(run["dataset"])
        key = (run["dataset"], json.dumps(run["config"], sort_keys=True))
        if key not in loaded:
            try:
                loaded[key] = module.load_data(run["config"], args.data_dir)
            except (DataNotFoundError, DataCorruptError, ValueError) as err:
                raise SystemExit(f"error: {err}") from None
        data = loaded[key]
        if data.has_base:
            raise SystemExit(f"error: {path}: the run's data has base samples (code/mitbih_patient.py); "
                             "cross-validating them is not supported")
        difference = runs.data_difference(run, data.provenance())
        if difference:
            raise SystemExit(f"error: {path}: {difference}; replay needs the data the run was made on")
        replay_run(path, run, data, module, args.every, args.max_folds)
    print(f"cross-validated F1 of {len(chosen)} runs in {folder / 'cv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
