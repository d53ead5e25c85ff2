"""Command line and run grid shared by the dataset scripts.

A dataset script is a page of UPPER_CASE hyperparameters, a data loader, a model builder and
one call::

    experiment.main("mnist", globals(), load_data, build_model)

Each UPPER_CASE constant becomes a command-line option (``EPOCHS`` -> ``--epochs``) and a
lowercase key of the run config. ``N_SEEDS`` and ``STRATEGIES`` define the grid of runs
(strategy x seed) and are not part of a run's config, so adding seeds or strategies later
reuses the runs already on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_common import REPO_ROOT, resolve_repo_path

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
                     help="parallel runs (default: number of CPU cores, 1 with a GPU)")
    run.add_argument("--quick", action="store_true",
                     help=f"smoke run: overrides {QUICK} and writes to results/quick")
    return parser


def parse_config(dataset: str, defaults: dict, argv=None, doc=None):
    """Parse the command line into (run config, grid settings, run-control namespace)."""
    args = build_parser(dataset, defaults, doc).parse_args(argv)
    values = {k: getattr(args, k) for k in defaults}
    if args.quick:
        values.update({k: min(values[k], v) for k, v in QUICK.items() if k in values})
    for key in ("n_seeds", "start_size", "batch_size", "epochs"):
        if key in values and values[key] <= 0:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be positive, got {values[key]}")
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


def execute_task(task: RunTask, load_data: Callable, build_model: Callable, progress=None) -> dict:
    """Run one (strategy, seed); the dataset is loaded once per process."""
    from al_loop import run_active_learning
    key = (task.dataset, task.data_dir, json.dumps(task.config, sort_keys=True))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_data(task.config, task.data_dir)
    label = f"{task.dataset} {task.strategy:>8} seed {task.seed}"

    def report(record):
        t = record
        line = (f"{label} step {t['step']:2d}  labels {t['n_labeled']:5d}  macro-F1 {t['macro_f1']:.4f}"
                f"  acc {t['accuracy']:.4f}  (train {t['train_seconds']:.1f}s, score "
                f"{t['score_seconds']:.1f}s, eval {t['eval_seconds']:.1f}s)")
        if progress is not None:
            progress.put(line)

    return run_active_learning(dataset=task.dataset, data=_DATA_CACHE[key], build_model=build_model,
                               config=task.config, strategy=task.strategy, seed=task.seed,
                               results_dir=task.results_dir, fresh=task.fresh, on_step=report)


def _worker_init(threads: int) -> None:
    configure_tensorflow(threads)


# --------------------------------------------------------------------------- the grid
def run_grid(tasks: list[RunTask], load_data: Callable, build_model: Callable, jobs: int) -> list[dict]:
    """Run all tasks, ``jobs`` at a time, with a progress bar over steps."""
    import multiprocessing as mp
    import queue
    import threading

    from tqdm import tqdm

    total_steps = sum(t.config["n_steps"] + 1 for t in tasks)
    bar = tqdm(total=total_steps, desc=f"{tasks[0].dataset} steps", unit="step", dynamic_ncols=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")
    manager = ctx.Manager() if jobs > 1 else None
    lines = manager.Queue() if manager else queue.Queue()
    stop = threading.Event()

    def drain():
        while not stop.is_set() or not lines.empty():
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            bar.write(line)
            bar.update(1)

    printer = threading.Thread(target=drain, daemon=True)
    printer.start()
    try:
        if jobs == 1:
            configure_tensorflow(threads)
            results = [execute_task(t, load_data, build_model, lines) for t in tasks]
        else:
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                futures = [pool.submit(execute_task, t, load_data, build_model, lines) for t in tasks]
                results = [f.result() for f in futures]
    finally:
        stop.set()
        printer.join()
        bar.close()
        if manager:
            manager.shutdown()
    return results


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


def main(dataset: str | Callable[[dict], str], namespace: dict, load_data: Callable,
         build_model: Callable, argv=None) -> list[dict]:
    """Entry point of a dataset script: parse options, run every strategy x seed, summarize.

    ``dataset`` names the results folder; it may be a function of the config (e.g. MIT-BIH
    writes ``mitbih_inter`` for the inter-patient split). ``load_data(config, data_dir)``
    returns a ``data_common.Dataset``; ``build_model(config, input_shape, n_classes)`` a
    compiled Keras model.
    """
    from al_loop import git_commit
    from strategies import STRATEGIES

    script = namespace.get("__file__", "script")
    prog = dataset if isinstance(dataset, str) else Path(script).stem
    config, grid, args = parse_config(prog, hyperparameters(namespace), argv, namespace.get("__doc__"))
    dataset = dataset if isinstance(dataset, str) else dataset(config)
    unknown = [s for s in grid["strategies"] if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"error: unknown strategies {unknown}; choose from {sorted(STRATEGIES)}")
    seeds = range(args.first_seed, args.first_seed + grid["n_seeds"])
    tasks = [RunTask(dataset, s, seed, config, str(args.results_dir), args.fresh, args.data_dir)
             for seed in seeds for s in grid["strategies"]]
    jobs = args.jobs or default_jobs(len(tasks))
    print(f"{dataset}: {len(tasks)} runs ({', '.join(grid['strategies'])} x {grid['n_seeds']} seeds), "
          f"{jobs} in parallel, results in {args.results_dir / dataset}")
    started = time.time()
    results = run_grid(tasks, load_data, build_model, jobs)
    wall = time.time() - started
    log_grid(args.results_dir, dataset, {
        "started_at": round(started, 3), "wall_seconds": round(wall, 2), "jobs": jobs,
        "cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "n_runs": len(tasks), "strategies": grid["strategies"], "seeds": list(seeds),
        "fresh": args.fresh, "git_commit": git_commit(), "config": config})
    for r in results:
        last = r["steps"][-1]
        print(f"  {r['strategy']:>16} seed {r['seed']}: macro-F1 {last['macro_f1']:.4f} "
              f"at {last['n_labeled']} labels")
    print(f"{dataset}: done in {wall / 60:.1f} min")
    return results
