"""Command line and run grid shared by the dataset scripts.

A dataset script is a page of UPPER_CASE hyperparameters, a data loader, a model builder and
one call::

    cli.main("mnist", globals(), load_data, build_model)

Each UPPER_CASE constant becomes a command-line option (``EPOCHS`` -> ``--epochs``) and a
lowercase key of the run config. ``N_SEEDS`` and ``STRATEGIES`` define the grid of runs
(strategy x seed) and are not part of a run's config, so adding seeds or strategies later
reuses the runs already on disk.

``--threads`` (default 1) is the TensorFlow thread count of every run, whatever ``--jobs``
and the number of cores: it is part of the run config, so a run's numbers do not depend on
how many runs share the machine, and resuming with another thread count is refused.

Before any worker starts, the driver checks what it can: strategy names, the config
(:func:`al.loop.check_config`, including that the dataset holds the final budget), and
that the results folder holds no runs of another config or other data, and no modified
run files. Problems end the script with ``error: ...`` and what to do, not a traceback.
Runs already complete are read, not rerun; the others run on a backend of :mod:`al.grid`
(``--backend local``: processes on this machine; ``--backend ray [--address
auto|HOST:PORT]``: a Ray cluster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable

from al import grid as grid_backend
from al import runs
from al.data_common import REPO_ROOT, DataCorruptError, DataNotFoundError, Dataset, resolve_repo_path
from al.grid import RunTask
from al.keras_ops import gpu_available
from al.loop import check_config, run_differences
from al.strategies import STRATEGIES, get_strategy

GRID_KEYS = ("n_seeds", "strategies")
QUICK = {"n_seeds": 2, "n_steps": 2, "epochs": 2, "train_steps": 40}  # --quick: a smoke run in minutes
DEFAULT_RESULTS = REPO_ROOT / "results"
DEFAULT_THREADS = 1


# --------------------------------------------------------------------------- command line
def hyperparameters(namespace: dict) -> dict:
    """UPPER_CASE constants of a dataset script, as {lowercase_name: default}."""
    return {k.lower(): v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and isinstance(v, (int, float, str, list, tuple))}


def list_parser(default: list | tuple):
    """Parse "a,b,c" into a list whose items have the type of the default's items."""
    item_type = type(default[0]) if len(default) else str

    def parse(text: str) -> list:
        try:
            return [item_type(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {item_type.__name__}, got {text!r}") from None
    return parse


def build_parser(dataset: str, defaults: dict, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python code/{dataset}.py", description=doc,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hp = parser.add_argument_group("hyperparameters (UPPER_CASE constants at the top of the script)")
    for name, default in defaults.items():
        flags = [f"--{name.replace('_', '-')}"] + (["--seeds"] if name == "n_seeds" else [])
        if isinstance(default, (list, tuple)):
            hp.add_argument(*flags, dest=name, type=list_parser(default), default=list(default),
                            help="comma-separated list")
        elif isinstance(default, bool):
            hp.add_argument(*flags, dest=name, type=lambda s: s.lower() in ("1", "true", "yes"),
                            default=default)
        else:
            hp.add_argument(*flags, dest=name, type=type(default), default=default)
    run = parser.add_argument_group("run control")
    run.add_argument("--data-dir", help="folder holding the dataset (searched first)")
    run.add_argument("--results-dir", default=None,
                     help=f"root of the results (default {DEFAULT_RESULTS}; results/quick with --quick)")
    run.add_argument("--fresh", action="store_true", help="start runs over instead of resuming")
    run.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+n_seeds-1")
    run.add_argument("--jobs", type=int, default=None,
                     help="parallel runs (default: number of CPU cores, 1 with a GPU); with "
                          "--backend ray and no --address, the CPUs of the local Ray instance")
    run.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                     help="TensorFlow threads of every run, whatever --jobs (part of the run "
                          "config: results depend on it, resume refuses another value)")
    run.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="local: worker processes on this machine; ray: one Ray task per run")
    run.add_argument("--address", default=None,
                     help="with --backend ray: 'auto' or HOST:PORT of a running Ray cluster "
                          "(default: start a local Ray instance with --jobs CPUs)")
    run.add_argument("--retries", type=int, default=2,
                     help="times a run is resubmitted after its worker process died")
    run.add_argument("--verbose", action="store_true",
                     help="print a line per finished step (default: one line per finished run)")
    run.add_argument("--quick", action="store_true",
                     help=f"smoke run: overrides {QUICK} and writes to results/quick")
    return parser


def parse_config(dataset: str, defaults: dict, argv=None, doc=None):
    """Parse the command line into (run config, grid settings, run-control namespace)."""
    args = build_parser(dataset, defaults, doc).parse_args(argv)
    values = {k: getattr(args, k) for k in defaults}
    if args.quick:
        values.update({k: min(values[k], v) for k, v in QUICK.items() if k in values})
        if values.get("batch_sizes"):  # per-step batches: keep those of the steps that remain
            values["batch_sizes"] = values["batch_sizes"][: values["n_steps"]]
    values["threads"] = args.threads
    if values["n_seeds"] <= 0:
        raise SystemExit(f"error: --n-seeds must be positive, got {values['n_seeds']}")
    for key, low in (("jobs", 1), ("retries", 0), ("first_seed", 0)):
        if getattr(args, key) is not None and getattr(args, key) < low:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be at least {low}, "
                             f"got {getattr(args, key)}")
    if args.address and args.backend != "ray":
        raise SystemExit("error: --address needs --backend ray")
    grid = {k: values.pop(k) for k in GRID_KEYS}
    try:  # start_size 0 needs base samples: checked again once the data is loaded
        check_config(values, has_base=True)
    except ValueError as err:
        raise SystemExit(f"error: {option_names(str(err))}") from None
    if args.results_dir is None:
        args.results_dir = DEFAULT_RESULTS / "quick" if args.quick else DEFAULT_RESULTS
    args.results_dir = resolve_repo_path(args.results_dir)
    return values, grid, args


def option_names(message: str) -> str:
    """A config error with its keys written as the command-line options users type."""
    keys = "|".join(("start_size", "batch_size", "n_steps", "fit_batch_size", "pool_subsample",
                     "val_fraction", "class_weight", "epochs", "patience", "threads"))
    return re.sub(rf"\b({keys})\b", lambda m: "--" + m.group(1).replace("_", "-"), message)


# --------------------------------------------------------------------------- pre-flight
def default_jobs(n_tasks: int, threads: int = DEFAULT_THREADS) -> int:
    """Parallel runs by default: one per ``threads`` cores (1 with a GPU), at most one per task."""
    if gpu_available():
        return 1
    return max(1, min((os.cpu_count() or 1) // max(1, threads), n_tasks))


def load_and_check_data(task: RunTask, load_data: Callable) -> Dataset:
    """Load the dataset in the driver and check the label budget, before any worker starts.

    A missing, corrupt or mismatched dataset and a budget larger than the pool end the
    script with ``error: ...``.
    """
    try:
        data = load_data(task.config, task.data_dir)
    except (DataNotFoundError, DataCorruptError) as err:
        raise SystemExit(f"error: {err}") from None
    except ValueError as err:  # e.g. an unknown split: a bad option value
        raise SystemExit(f"error: cannot load {task.dataset}: {err}") from None
    try:
        check_config(task.config, len(data.x_train), data.has_base)
    except ValueError as err:
        raise SystemExit(f"error: {task.dataset}: {option_names(str(err))}") from None
    return data


def check_results_folder(tasks: list[RunTask], data: Dataset) -> dict[str, dict]:
    """Refuse a results folder holding runs of another config or data, or modified files.

    Reads every run file in ``<results>/<dataset>/`` with :func:`al.runs.read_run` and
    compares it with :func:`al.loop.run_differences`, the comparison resume uses: one written
    with other hyperparameters, other numeric settings or on other data would be mixed into
    the same plots (or stop its worker), and one that fails its digest cannot be resumed.
    Runs that are only read (complete runs of this grid, and runs outside it) may differ in
    their thread count, or not have recorded it (converted runs): a note says so. ``--fresh``
    overwrites the grid's own runs, never the others. Returns the grid's readable runs by
    file name (none with ``--fresh``).
    """
    folder = Path(tasks[0].results_dir) / tasks[0].dataset
    config, fresh = tasks[0].config, tasks[0].fresh
    in_grid = {f"{t.strategy}_seed{t.seed}.json" for t in tasks}
    provenance = data.provenance()
    other_config, modified, found, notes, unrecorded_data = [], [], {}, [], 0
    for path in runs.run_files(folder):
        overwritten = fresh and path.name in in_grid
        if overwritten:
            continue
        try:
            run = runs.read_run(path)
        except runs.RunFileError as err:
            if path.name in in_grid:
                modified.append(f"  {err}")
            else:
                print(f"warning: {err} (not part of this grid: left alone)", file=sys.stderr)
            continue
        try:
            strategy = get_strategy(run["strategy"])
        except ValueError as err:
            other_config.append(f"  {path}: {err}")
            continue
        lenient = path.name not in in_grid or run["complete"]
        problems, soft = run_differences(run, config, provenance, strategy, lenient=lenient)
        unrecorded_data += run["provenance"]["data"].get("sha256") is None
        if problems:
            other_config.append(f"  {path}: {'; '.join(problems)}")
            continue
        if soft:
            notes.append(f"{path.name} ({'; '.join(soft)})")
        if path.name in in_grid:
            found[path.name] = run
    if notes:
        print(f"note: {len(notes)} run(s) in {folder} were made with another thread count or did not record "
              f"it (converted); they are read as they are, paired by seed but not bit-comparable with "
              f"{config['threads']}-thread runs: {', '.join(notes[:3])}{' ...' if len(notes) > 3 else ''}",
              file=sys.stderr)
    if unrecorded_data:
        print(f"note: {unrecorded_data} run file(s) in {folder} were converted from the old format and do "
              "not record their data; they are not checked against it", file=sys.stderr)
    if other_config or modified:
        text = [f"error: {folder} already holds runs that this grid cannot use:"]
        if other_config:
            text += ["runs of another config, other settings or other data (key: on disk vs now):",
                     *other_config]
        if modified:
            text += ["run files that cannot be resumed:", *modified]
        text.append("Choose another --results-dir for this config, or move those files away"
                    + ("; --fresh overwrites the runs of this grid (same strategies and seeds)"
                       if not fresh else "") + ".")
        raise SystemExit("\n".join(text))
    return found


def log_grid(results_dir: Path, dataset: str, record: dict) -> None:
    """Append the grid's wall time to ``<results>/<dataset>/grid_log.jsonl`` (read by the benchmark)."""
    runs.append_line_atomic(Path(results_dir) / dataset / "grid_log.jsonl", json.dumps(record))


# --------------------------------------------------------------------------- entry point
def main(dataset: str | Callable[[dict], str], namespace: dict, load_data: Callable,
         build_model: Callable, argv=None) -> list[dict]:
    """Entry point of a dataset script: parse options, check, run every strategy x seed, summarize.

    ``dataset`` names the results folder; it may be a function of the config (e.g. MIT-BIH
    writes ``mitbih_inter`` for the inter-patient split). ``load_data(config, data_dir)``
    returns a ``data_common.Dataset``; ``build_model(config, input_shape, n_classes)`` a
    compiled Keras model. Everything that can be checked is checked before workers start.
    """
    script = namespace.get("__file__", "script")
    prog = dataset if isinstance(dataset, str) else Path(script).stem
    config, grid, args = parse_config(prog, hyperparameters(namespace), argv, namespace.get("__doc__"))
    dataset = dataset if isinstance(dataset, str) else dataset(config)
    unknown = [s for s in grid["strategies"] if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"error: unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
    if not grid["strategies"]:
        raise SystemExit(f"error: --strategies is empty; choose from {sorted(STRATEGIES)}")
    seeds = range(args.first_seed, args.first_seed + grid["n_seeds"])
    # Absolute (from the working directory, as before): workers may run elsewhere.
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir)) if args.data_dir else None
    tasks = [RunTask(dataset, s, seed, config, str(args.results_dir), args.fresh, data_dir)
             for seed in seeds for s in grid["strategies"]]
    data = load_and_check_data(tasks[0], load_data)
    found = check_results_folder(tasks, data)
    if args.fresh:
        # Start over now: the grid's own earlier run files go before any worker starts, and every
        # task resumes only what this grid writes, so a task retried after a worker died goes on
        # from its last step instead of starting over again.
        for task in tasks:
            (args.results_dir / dataset / f"{task.strategy}_seed{task.seed}.json").unlink(missing_ok=True)
        tasks = [dataclasses.replace(task, fresh=False) for task in tasks]
    done = {f"{t.strategy}_seed{t.seed}.json" for t in tasks
            if found.get(f"{t.strategy}_seed{t.seed}.json", {}).get("complete")}
    todo = [t for t in tasks if f"{t.strategy}_seed{t.seed}.json" not in done]
    folder = args.results_dir / dataset
    if not todo:
        print(f"{len(tasks)} of {len(tasks)} runs already complete in {folder}; pass --results-dir DIR "
              "to reproduce them from scratch")
        return [found[f"{t.strategy}_seed{t.seed}.json"] for t in tasks]
    steps_done = sum(len(found[f"{t.strategy}_seed{t.seed}.json"]["steps"]) for t in todo
                     if f"{t.strategy}_seed{t.seed}.json" in found)
    if args.backend == "local":
        jobs = args.jobs or default_jobs(len(todo), config["threads"])
        where = f"{min(jobs, len(todo))} in parallel"
    else:
        jobs = args.jobs or (os.cpu_count() or 1)
        where = (f"Ray cluster {args.address}" if args.address
                 else f"local Ray instance with {jobs * config['threads']} CPUs")
    print(f"{dataset}: {len(tasks)} runs ({', '.join(grid['strategies'])} x {grid['n_seeds']} seeds), "
          + (f"{len(done)} already complete, " if done else "")
          + f"{where}, {config['threads']} TF thread(s) each, results in {folder}")
    started = time.time()
    try:
        outcome = grid_backend.run_grid(
            todo, load_data, build_model, backend=args.backend, jobs=jobs, address=args.address,
            max_retries=args.retries, steps_done=steps_done, data=data, verbose=args.verbose)
    except grid_backend.GridError as err:
        raise SystemExit(f"error: {err}") from None
    wall = time.time() - started
    for line in grid_backend.summary_lines(todo, outcome, wall):
        print(line)
    if outcome.failures:
        for i, error in sorted(outcome.failures.items()):
            print(f"--- {todo[i].label} failed:\n{error}", file=sys.stderr)
        raise SystemExit(f"error: {len(outcome.failures)} of {len(todo)} runs failed (details above). "
                         "Fix the cause and rerun the same command: finished runs are kept, the "
                         "others resume from their last completed step.")
    log_grid(args.results_dir, dataset, {
        "started_at": round(started, 3), "wall_seconds": round(wall, 2), "jobs": jobs,
        "threads": config["threads"],
        "backend": args.backend if not args.address else f"ray {args.address}",
        "cpu_cores": os.cpu_count(), "cpu_model": runs.cpu_model(),
        "machine": platform.processor() or platform.machine(),
        "n_runs": len(todo), "strategies": grid["strategies"], "seeds": list(seeds),
        "runs_already_complete": len(done),
        "fresh": args.fresh, "git_commit": runs.git_commit(), "config": config})
    print(f"{dataset}: done in {wall / 60:.1f} min")
    by_name = {f"{t.strategy}_seed{t.seed}.json": r for t, r in zip(todo, outcome.results)}
    return [by_name.get(n) or found.get(n) for n in (f"{t.strategy}_seed{t.seed}.json" for t in tasks)]
