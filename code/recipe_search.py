"""Training-recipe search, scored on the development split only (never on the test set).

    python code/recipe_search.py                          # every candidate of both datasets
    python code/recipe_search.py --datasets mitbih --candidates default,epochs40
    python code/recipe_search.py --smoke                  # seconds; tests the script only

For each dataset, the development split of the script's ``DEV_SIZE`` samples is carved out
of the training pool (:func:`al.data_common.hold_out_dev`, seed 0: the split the protocol
removes from its pool). For each candidate recipe (a set of changes to the first recipe,
:data:`V1`), each budget (the protocol's
initial and final label counts) and each of ``SEEDS`` seeds, a fresh model is trained on a
random subset of the remaining pool of that size (drawn from ``default_rng([seed,
budget])``, so every candidate sees the same subsets) and scored by macro-F1 on the
development split. The test set is never loaded into the search's decisions: the loaders
return it, and this script drops it.

Every fit runs in a worker process with one TensorFlow thread (``--jobs`` workers side by
side, one per core by default); fit seconds are that process's wall time of
``al.loop.train_fresh_model``, graph tracing included. Each finished fit is appended to
``<out-dir>/recipe_search_<dataset>.jsonl``, so an interrupted search resumes; the report
``<out-dir>/recipe_search.md`` (and ``.json``) gives per candidate and budget the mean and
std of dev macro-F1 over seeds and the mean fit seconds, and the default is chosen from it
as README "Training recipe" states. Records carry their full config; a resumed search reuses
only records of the same candidate, budget, seed and config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from sklearn.metrics import f1_score

from al import bench, runs
from al.data_common import hold_out_dev, resolve_repo_path
from al.keras_ops import configure_tensorflow, predict_proba
from al.loop import final_budget, train_fresh_model
from al.models import build

SEEDS = 5
# Every candidate is a change to the first (v1) recipe, spelled out here in full so that the
# search means the same whatever the scripts' current defaults are.
V1 = {
    "mitbih": {"architecture": "ecg_cnn", "train_steps": 0, "epochs": 20, "fit_batch_size": 64,
               "learning_rate": 1e-3, "lr_schedule": "constant", "optimizer": "adam", "weight_decay": 0.0,
               "label_smoothing": 0.0, "class_weight": "none", "augment": 0, "stem_pool": 1,
               "conv_filters": [16, 32, 32, 64], "kernel_sizes": [5, 3, 3, 3], "dense_units": [64, 64],
               "dropout": 0.1, "batch_norm": 1, "bn_momentum": 0.9},
    "mnist": {"architecture": "mnist_cnn", "train_steps": 0, "epochs": 20, "fit_batch_size": 32,
              "learning_rate": 1e-3, "lr_schedule": "constant", "optimizer": "adam", "weight_decay": 0.0,
              "label_smoothing": 0.0, "class_weight": "none", "augment": 0, "conv_filters": [32, 64],
              "dense_units": 128, "dropout": 0.25},
}
ECG_AUGMENT = {"augment": 1, "augment_shift": 5, "augment_scale": 0.1, "augment_wander": 0.05,
               "augment_noise": 0.01}
DIGIT_AUGMENT = {"augment": 1, "augment_shift": 0.08, "augment_rotation": 10.0}
STEM_POOL2_WIDE = {"stem_pool": 2, "conv_filters": [32, 64, 64, 128]}
RESNET = {"architecture": "ecg_resnet", "res_filters": 32, "res_blocks": 5}
ONECYCLE_1000 = {"train_steps": 1000, "lr_schedule": "onecycle", "learning_rate": 3e-3}
CANDIDATES = {
    "mitbih": {
        "default": {},
        "epochs40": {"epochs": 40},
        "steps1000": {"train_steps": 1000},
        "steps1000_onecycle": ONECYCLE_1000,
        "cosine": {"lr_schedule": "cosine"},
        "adamw": {"optimizer": "adamw", "weight_decay": 1e-3},
        "label_smoothing": {"label_smoothing": 0.1},
        "class_weight_sqrt": {"class_weight": "sqrt"},
        "augment": ECG_AUGMENT,
        "last_block_256": {"conv_filters": [16, 32, 32, 256]},
        "stem_pool2_wide": STEM_POOL2_WIDE,
        "bn_momentum_0.99": {"bn_momentum": 0.99},
        "no_batchnorm": {"batch_norm": 0},
        "published_net": {"architecture": "published_ecg_cnn", "epochs": 45, "fit_batch_size": 32},
        "resnet_kachuee": RESNET,
        # second round: the single changes that paid, combined
        "pool2wide_steps1000_onecycle": {**STEM_POOL2_WIDE, **ONECYCLE_1000},
        "resnet_steps1000_onecycle": {**RESNET, **ONECYCLE_1000},
        "resnet_steps1000_onecycle_augment": {**RESNET, **ONECYCLE_1000, **ECG_AUGMENT},
        "resnet_epochs40": {**RESNET, "epochs": 40},
    },
    "mnist": {
        "default": {},
        "epochs40": {"epochs": 40},
        "steps1500": {"train_steps": 1500},
        "steps1500_onecycle": {"train_steps": 1500, "lr_schedule": "onecycle", "learning_rate": 3e-3},
        "cosine": {"lr_schedule": "cosine"},
        "adamw": {"optimizer": "adamw", "weight_decay": 1e-3},
        "label_smoothing": {"label_smoothing": 0.1},
        "augment": DIGIT_AUGMENT,
        "augment_epochs40": {**DIGIT_AUGMENT, "epochs": 40},
        # second round: the single changes that paid, combined
        "augment_smoothing": {**DIGIT_AUGMENT, "label_smoothing": 0.1},
        "augment_smoothing_epochs40": {**DIGIT_AUGMENT, "label_smoothing": 0.1, "epochs": 40},
        "augment_smoothing_onecycle": {**DIGIT_AUGMENT, "label_smoothing": 0.1, "lr_schedule": "onecycle",
                                       "learning_rate": 3e-3},
    },
}
SMOKE = {"seeds": 1, "dev": 300, "budgets": (64, 128), "epochs": 1}


def script_defaults(dataset: str) -> tuple[object, dict]:
    """The dataset script as a module (its ``main`` does not run) and the search's base config:
    the script's page (protocol, data, dev_size) with the v1 recipe (:data:`V1`) over it."""
    module = importlib.import_module(dataset)
    return module, {**bench.default_config(module, threads=1), **V1[dataset]}


def candidate_config(base: dict, changes: dict, smoke: bool) -> dict:
    config = {**base, **changes}
    if smoke:
        config["epochs"] = SMOKE["epochs"]
        config.pop("train_steps", None)
    return config


def job_key(job: dict) -> str:
    return f"{job['candidate']}|{job['budget']}|{job['seed']}"


def run_jobs(jobs: list[dict]) -> list[dict]:
    """Worker entry point: every job of one dataset in this process, on one TensorFlow thread."""
    configure_tensorflow(1)
    dataset = jobs[0]["dataset"]
    module, base = script_defaults(dataset)
    data = module.load_data({**base, "dev_size": 0}, jobs[0]["data_dir"])  # the whole pool, then
    pool, (x_dev, y_dev) = hold_out_dev(data, jobs[0]["dev_size"])        # the protocol's split
    n_classes = len(data.class_names)
    labels = list(range(n_classes))
    out = []
    for job in jobs:
        config = candidate_config(base, job["changes"], job["smoke"])
        subset = np.random.default_rng([job["seed"], job["budget"]]).choice(len(pool.y_train), job["budget"],
                                                                            replace=False)
        t0 = time.perf_counter()
        model = train_fresh_model(build, config, pool.x_train[subset], pool.y_train[subset], n_classes,
                                  [job["seed"], job["budget"]])
        seconds = time.perf_counter() - t0
        predicted = predict_proba(model, x_dev).argmax(axis=1)
        f1 = float(f1_score(y_dev, predicted, labels=labels, average="macro", zero_division=0))
        per_class = f1_score(y_dev, predicted, labels=labels, average=None, zero_division=0)
        out.append({**{k: job[k] for k in ("dataset", "candidate", "budget", "seed", "changes")},
                    "config": config,
                    "dev_macro_f1": f1, "dev_per_class_f1": dict(zip(data.class_names, map(float, per_class))),
                    "fit_seconds": round(seconds, 3), "n_dev": int(len(y_dev)), "threads": 1,
                    "cpu_model": runs.cpu_model(), "git_commit": runs.git_commit()})
    return out


def summarize(records: list[dict]) -> dict:
    """{dataset: {candidate: {budget: {mean, std, n, fit_seconds}}}}."""
    table: dict = {}
    for r in records:
        table.setdefault(r["dataset"], {}).setdefault(r["candidate"], {}).setdefault(str(r["budget"]), []).append(r)
    out: dict = {}
    for ds, candidates in table.items():
        for name, budgets in candidates.items():
            for budget, rows in budgets.items():
                f1 = np.array([r["dev_macro_f1"] for r in rows])
                out.setdefault(ds, {}).setdefault(name, {})[budget] = {
                    "mean": float(f1.mean()), "std": float(f1.std(ddof=1)) if len(f1) > 1 else None,
                    "n": len(f1), "fit_seconds": float(np.mean([r["fit_seconds"] for r in rows]))}
    return out


def markdown(report: dict) -> str:
    lines = ["# Training-recipe search on the development split", "",
             f"- Command: `{report['command']}`",
             f"- Machine: {report['cpu_cores']} CPU cores ({report['cpu_model']}); every fit on one "
             f"TensorFlow thread, {report['jobs']} worker process(es) side by side",
             f"- Code at {report['git_commit']}, {report['created_at']}",
             "- Score: macro-F1 on the development split (held out of the pool, never the test set); "
             "mean ± std over seeds (random labeled subsets of the pool, the same for every candidate); "
             "fit s: mean seconds of one training on one thread.", ""]
    for ds, candidates in report["summary"].items():
        budgets = sorted({b for c in candidates.values() for b in c}, key=int)
        lines += [f"## {ds} (development split: {report['dev_size'][ds]} samples)", "",
                  "| candidate | changes | " + " | ".join(f"dev F1 at {b} | fit s at {b}" for b in budgets) + " |",
                  "|---|---|" + "---:|---:|" * len(budgets)]
        final = budgets[-1]
        order = sorted(candidates, key=lambda c: -(candidates[c].get(final, {}).get("mean") or 0))
        for name in order:
            cells = []
            for b in budgets:
                st = candidates[name].get(b)
                if st is None:
                    cells += ["-", "-"]
                    continue
                spread = f" ± {st['std']:.4f}" if st["std"] is not None else ""
                cells += [f"{st['mean']:.4f}{spread} ({st['n']})", f"{st['fit_seconds']:.1f}"]
            changes = json.dumps(report["candidates"][ds][name]) if report["candidates"][ds][name] else "today's default"
            lines.append(f"| {name} | `{changes}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python code/recipe_search.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="mitbih,mnist", metavar="A,B")
    parser.add_argument("--candidates", default=None, metavar="A,B", help="default: all of each dataset")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (one thread each)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out-dir", default="results/recipe_search")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets, 1 seed, 1 epoch: tests the script")
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    bad = [d for d in args.datasets if d not in CANDIDATES]
    if bad:
        parser.error(f"unknown datasets {bad}; choose from {', '.join(CANDIDATES)}")
    if args.candidates:
        args.candidates = [c for c in args.candidates.split(",") if c]
        unknown = [c for c in args.candidates if not any(c in CANDIDATES[d] for d in args.datasets)]
        if unknown:
            parser.error(f"unknown candidates {unknown}")
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    if args.smoke:
        args.seeds = SMOKE["seeds"]
    args.out_dir = resolve_repo_path(args.out_dir)
    return args


def plan(args) -> list[dict]:
    jobs = []
    for ds in args.datasets:
        _, base = script_defaults(ds)
        budgets = SMOKE["budgets"] if args.smoke else (base["start_size"], final_budget(base))
        dev_size = SMOKE["dev"] if args.smoke else base["dev_size"]
        for name, changes in CANDIDATES[ds].items():
            if args.candidates and name not in args.candidates:
                continue
            for budget in budgets:
                for seed in range(args.seeds):
                    jobs.append({"dataset": ds, "candidate": name, "changes": changes, "budget": int(budget),
                                 "seed": seed, "smoke": args.smoke, "data_dir": args.data_dir,
                                 "dev_size": dev_size, "config": candidate_config(base, changes, args.smoke)})
    return jobs


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = "python code/recipe_search.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    records = []
    todo = []
    for job in plan(args):
        log = args.out_dir / f"recipe_search_{job['dataset']}.jsonl"
        done = {job_key(r): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
        old = done.get(job_key(job))
        # Records from before configs were recorded ran on the v1 base, which is what V1 spells out.
        if old and old["changes"] == job["changes"] and old.get("config", job["config"]) == job["config"]:
            records.append(old)
        else:
            todo.append(job)
    print(f"{len(records)} fits already done, {len(todo)} to run on {args.jobs} worker(s)", flush=True)
    # One chunk per worker call keeps each process's data loaded; chunks of one dataset only.
    chunks = []
    for ds in args.datasets:
        mine = [j for j in todo if j["dataset"] == ds]
        size = max(1, min(10, len(mine) // max(1, args.jobs) or 1))
        chunks += [mine[i:i + size] for i in range(0, len(mine), size)]
    if chunks:
        import multiprocessing as mp
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_jobs, chunk) for chunk in chunks]
            for future in as_completed(futures):
                for r in future.result():
                    runs.append_line_atomic(args.out_dir / f"recipe_search_{r['dataset']}.jsonl", json.dumps(r))
                    records.append(r)
                    print(f"{r['dataset']:>6} {r['candidate']:>20} {r['budget']:5d} labels seed {r['seed']}: "
                          f"dev F1 {r['dev_macro_f1']:.4f}, fit {r['fit_seconds']:.1f} s", flush=True)
    report = {"command": command.strip(), "cpu_cores": os.cpu_count(), "cpu_model": runs.cpu_model(),
              "jobs": args.jobs, "git_commit": runs.git_commit(),
              "created_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "smoke": args.smoke,
              "dev_size": {ds: (SMOKE["dev"] if args.smoke else script_defaults(ds)[1]["dev_size"])
                           for ds in args.datasets},
              "candidates": {ds: CANDIDATES[ds] for ds in args.datasets},
              "summary": summarize(records), "records": records}
    runs.write_json_atomic(args.out_dir / "recipe_search.json", report)
    runs.write_text_atomic(args.out_dir / "recipe_search.md", markdown(report))
    print(f"wrote {args.out_dir / 'recipe_search.md'}")
    return report


if __name__ == "__main__":
    main()
