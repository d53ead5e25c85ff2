"""Command line and run grid shared by the dataset scripts.

A dataset script is a page of UPPER_CASE hyperparameters, a data loader, a model builder and
one call::

    experiment.main("mnist", globals(), load_data, build_model)

Each UPPER_CASE constant becomes a command-line option (``EPOCHS`` -> ``--epochs``) and a
lowercase key of the run config. ``N_SEEDS`` and ``STRATEGIES`` define the grid of runs
(strategy x seed) and are not part of a run's config, so adding seeds or strategies later
reuses the runs already on disk.

Before any worker starts, the driver checks what it can: strategy names, sizes, that the
dataset loads and holds enough samples for ``start_size + n_steps * batch_size`` labels,
and that the results folder holds no runs of another config (or modified run files).
Problems end the script with ``error: ...`` and what to do, not a traceback. The grid then
runs on a backend of ``runner`` (``--backend local``: processes on this machine;
``--backend ray [--address auto|HOST:PORT]``: a Ray cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_common import REPO_ROOT, DataCorruptError, DataNotFoundError, resolve_repo_path

GRID_KEYS = ("n_seeds", "strategies")
QUICK = {"n_seeds": 2, "n_steps": 2, "epochs": 2}  # --quick: a smoke run in a few minutes
DEFAULT_RESULTS = REPO_ROOT / "results"


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
    run.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="local: worker processes on this machine; ray: one Ray task per run")
    run.add_argument("--address", default=None,
                     help="with --backend ray: 'auto' or HOST:PORT of a running Ray cluster "
                          "(default: start a local Ray instance with --jobs CPUs)")
    run.add_argument("--retries", type=int, default=2,
                     help="times a run is resubmitted after its worker process died")
    run.add_argument("--quick", action="store_true",
                     help=f"smoke run: overrides {QUICK} and writes to results/quick")
    return parser


def parse_config(dataset: str, defaults: dict, argv=None, doc=None):
    """Parse the command line into (run config, grid settings, run-control namespace)."""
    args = build_parser(dataset, defaults, doc).parse_args(argv)
    values = {k: getattr(args, k) for k in defaults}
    if args.quick:
        values.update({k: min(values[k], v) for k, v in QUICK.items() if k in values})
    for key in ("n_seeds", "start_size", "batch_size", "epochs", "fit_batch_size"):
        if key in values and values[key] <= 0:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be positive, got {values[key]}")
    for key in ("n_steps", "pool_subsample"):
        if key in values and values[key] < 0:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be 0 or more, got {values[key]}")
    for key, low in (("jobs", 1), ("retries", 0), ("first_seed", 0)):
        if getattr(args, key) is not None and getattr(args, key) < low:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be at least {low}, "
                             f"got {getattr(args, key)}")
    if args.address and args.backend != "ray":
        raise SystemExit("error: --address needs --backend ray")
    grid = {k: values.pop(k) for k in GRID_KEYS}
    if args.results_dir is None:
        args.results_dir = DEFAULT_RESULTS / "quick" if args.quick else DEFAULT_RESULTS
    args.results_dir = resolve_repo_path(args.results_dir)
    return values, grid, args


# --------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class RunTask:
    dataset: str
    strategy: str
    seed: int
    config: dict
    results_dir: str
    fresh: bool
    data_dir: str | None


_DATA_CACHE: dict = {}


def gpu_available() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def configure_tensorflow(threads: int) -> None:
    """Threads per process, deterministic kernels, GPU memory grown on demand."""
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # retracing notices for every fresh model are expected
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # TensorFlow already initialized in this process: keep its setting
        pass
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    tf.config.experimental.enable_op_determinism()


def data_key(task: RunTask) -> tuple:
    return (task.dataset, task.data_dir, json.dumps(task.config, sort_keys=True))


def task_data(task: RunTask, load_data: Callable):
    """The task's dataset, loaded once per process (the cache holds one dataset)."""
    key = data_key(task)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(task.config, task.data_dir)
    return _DATA_CACHE[key]


def execute_task(task: RunTask, load_data: Callable, build_model: Callable, progress=None) -> dict:
    """Run one (strategy, seed); the dataset is loaded once per process."""
    from al_loop import run_active_learning
    data = task_data(task, load_data)
    label = f"{task.dataset} {task.strategy:>8} seed {task.seed}"

    def report(record):
        t = record
        line = (f"{label} step {t['step']:2d}  labels {t['n_labeled']:5d}  macro-F1 {t['macro_f1']:.4f}"
                f"  acc {t['accuracy']:.4f}  (train {t['train_seconds']:.1f}s, score "
                f"{t['score_seconds']:.1f}s, eval {t['eval_seconds']:.1f}s)")
        if progress is not None:
            progress.put(line)

    return run_active_learning(dataset=task.dataset, data=data, build_model=build_model,
                               config=task.config, strategy=task.strategy, seed=task.seed,
                               results_dir=task.results_dir, fresh=task.fresh, on_step=report)


def run_grid(tasks: list[RunTask], load_data: Callable, build_model: Callable, jobs: int) -> list[dict]:
    """Run all tasks on local processes, ``jobs`` at a time (see ``runner`` for other backends)."""
    import runner
    outcome = runner.run_grid(tasks, load_data, build_model, backend="local", jobs=jobs)
    if outcome.failures:
        raise runner.GridError("\n".join(outcome.failures.values()))
    return outcome.results


def default_jobs(n_tasks: int) -> int:
    if gpu_available():
        return 1
    return max(1, min(os.cpu_count() or 1, n_tasks))


def log_grid(results_dir: Path, dataset: str, record: dict) -> None:
    """Append the grid's wall time to results/<dataset>/state/grid_log.jsonl (read by the benchmark)."""
    path = results_dir / dataset / "state" / "grid_log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def load_and_check_data(tasks: list[RunTask], load_data: Callable) -> None:
    """Load the dataset in the driver and check the label budget, before any worker starts.

    A missing, corrupt or mismatched dataset and a budget larger than the pool end the
    script with ``error: ...``. The data stays cached for runs in this process.
    """
    from al_loop import check_budget
    task = tasks[0]
    try:
        data = load_data(task.config, task.data_dir)
    except (DataNotFoundError, DataCorruptError) as err:
        raise SystemExit(f"error: {err}") from None
    except ValueError as err:  # e.g. an unknown split: a bad option value
        raise SystemExit(f"error: cannot load {task.dataset}: {err}") from None
    try:
        check_budget(task.config, len(data.x_train))
    except ValueError as err:
        raise SystemExit(f"error: {task.dataset}: {err}") from None
    _DATA_CACHE.clear()
    _DATA_CACHE[data_key(task)] = data


def check_results_folder(tasks: list[RunTask], fresh: bool) -> int:
    """Refuse to start on a results folder holding runs of another config or modified files.

    Looks at every ``<strategy>_seed<k>.json`` in ``<results>/<dataset>/``: one written with
    other hyperparameters would be mixed into the same plots (or stop its worker), and one
    that fails its checksum cannot be resumed. ``--fresh`` overwrites the grid's own runs,
    never the others. Returns the number of steps already done by the grid's runs.
    """
    from al_loop import config_differences
    from runfiles import RunFileError, read_result

    folder = Path(tasks[0].results_dir) / tasks[0].dataset
    config = tasks[0].config
    in_grid = {f"{t.strategy}_seed{t.seed}.json" for t in tasks}
    other_config, modified, steps_done = [], [], 0
    for path in sorted(folder.glob("*_seed*.json")) if folder.is_dir() else []:
        overwritten = fresh and path.name in in_grid
        try:
            result, _, _ = read_result(path)
        except RunFileError as err:
            if path.name in in_grid and not overwritten:
                modified.append(f"  {err}")
            elif not overwritten:
                print(f"warning: {err} (not part of this grid: left alone)", file=sys.stderr)
            continue
        diffs = config_differences(result["config"], config)
        if diffs and not overwritten:
            other_config.append(f"  {path}: {'; '.join(diffs)}")
        elif not diffs and path.name in in_grid and not fresh:
            steps_done += len(result["steps"])
    if other_config or modified:
        text = [f"error: {folder} already holds runs that this grid cannot use:"]
        if other_config:
            text += ["runs of another config (key: on disk vs now):", *other_config]
        if modified:
            text += ["run files that cannot be resumed:", *modified]
        text.append("Choose another --results-dir for this config, or move those files away"
                    + ("; --fresh overwrites the runs of this grid (same strategies and seeds)"
                       if not fresh else "") + ".")
        raise SystemExit("\n".join(text))
    return steps_done


def main(dataset: str | Callable[[dict], str], namespace: dict, load_data: Callable,
         build_model: Callable, argv=None) -> list[dict]:
    """Entry point of a dataset script: parse options, check, run every strategy x seed, summarize.

    ``dataset`` names the results folder; it may be a function of the config (e.g. MIT-BIH
    writes ``mitbih_inter`` for the inter-patient split). ``load_data(config, data_dir)``
    returns a ``data_common.Dataset``; ``build_model(config, input_shape, n_classes)`` a
    compiled Keras model. Everything that can be checked is checked before workers start.
    """
    import runner
    from al_loop import git_commit
    from strategies import STRATEGIES

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
    steps_done = check_results_folder(tasks, args.fresh)
    load_and_check_data(tasks, load_data)
    if args.backend == "local":
        jobs = args.jobs or default_jobs(len(tasks))
        where = f"{min(jobs, len(tasks))} in parallel"
    else:
        jobs = args.jobs or (os.cpu_count() or 1)
        where = f"Ray cluster {args.address}" if args.address else f"local Ray instance with {jobs} CPUs"
    if not (args.backend == "local" and min(jobs, len(tasks)) == 1):
        _DATA_CACHE.clear()  # the workers load their own copy
    print(f"{dataset}: {len(tasks)} runs ({', '.join(grid['strategies'])} x {grid['n_seeds']} seeds), "
          f"{where}, results in {args.results_dir / dataset}")
    started = time.time()
    try:
        outcome = runner.run_grid(tasks, load_data, build_model, backend=args.backend, jobs=jobs,
                                  address=args.address, max_retries=args.retries,
                                  steps_done=steps_done)
    finally:
        _DATA_CACHE.clear()
    wall = time.time() - started
    for line in runner.summary_lines(tasks, outcome, wall):
        print(line)
    if outcome.failures:
        for i, error in sorted(outcome.failures.items()):
            print(f"--- {runner.task_label(tasks[i])} failed:\n{error}", file=sys.stderr)
        raise SystemExit(f"error: {len(outcome.failures)} of {len(tasks)} runs failed (details above). "
                         "Fix the cause and rerun the same command: finished runs are kept, the "
                         "others resume from their last completed step.")
    log_grid(args.results_dir, dataset, {
        "started_at": round(started, 3), "wall_seconds": round(wall, 2), "jobs": jobs,
        "backend": args.backend if not args.address else f"ray {args.address}",
        "cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "n_runs": len(tasks), "strategies": grid["strategies"], "seeds": list(seeds),
        "fresh": args.fresh, "git_commit": git_commit(), "config": config})
    print(f"{dataset}: done in {wall / 60:.1f} min")
    return outcome.results
