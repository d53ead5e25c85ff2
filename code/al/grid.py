"""Execute the grid of runs (dataset x strategy x seed) on a backend, with progress and retries.

One interface, two interchangeable backends::

    grid.run_grid(tasks, load_data, build_model, backend="local", jobs=2)
    grid.run_grid(tasks, load_data, build_model, backend="ray", address="auto")

Every task is one :class:`RunTask`, executed by :func:`run_task` in a worker: it loads
the data (once per process), sets TensorFlow to the run's own thread count
(``config["threads"]``, never derived from ``jobs`` or the number of cores, so a run's
numbers do not depend on how many run beside it), and calls
:func:`al.loop.run_active_learning`, which writes the run file to the (shared) results
directory and resumes from it: a task retried after its worker died continues from its
last completed step and ends with the same result as an uninterrupted run.

``local`` (default)
    ``jobs`` spawned processes on this machine (``jobs == 1``: in this process, with the
    data the driver already loaded). Progress lines (one per finished step) come back
    through a multiprocessing manager queue. When a worker process dies (killed, out of
    memory), the pool breaks; the runs not finished yet are resubmitted to a new pool, at
    most ``max_retries`` times. Workers exit when the driver dies (``prctl(PR_SET_PDEATHSIG)``
    on Linux, and a thread polling ``os.getppid()`` everywhere), so killing the driver
    leaves no orphan writing to the results.

``ray``
    One Ray task per run. ``address=None`` starts a local Ray instance with ``jobs`` CPUs;
    ``address="auto"`` or ``"HOST:PORT"`` joins an existing cluster (``ray start --head`` /
    ``ray start --address HOST:PORT`` on the nodes). A task requests ``num_gpus=1`` when the
    cluster has GPUs, else ``num_cpus=1``, and is retried up to ``max_retries`` times when
    its worker process or node dies (application errors are not retried: they would fail
    again). Progress lines come back per step through a ``ray.util.queue.Queue``. The
    workers import this repository's modules from the same path as the driver (the
    driver's ``sys.path`` entries inside the repository are passed on as ``PYTHONPATH``),
    so every node needs the repository, its environment, the data and the results directory
    at the same paths (a shared filesystem), like the results themselves.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

from al.data_common import REPO_ROOT, Dataset
from al.keras_ops import configure_tensorflow
from al.loop import run_active_learning

BACKENDS = ("local", "ray")
DEFAULT_RETRIES = 2
PARENT_POLL_SECONDS = 1.0


class GridError(RuntimeError):
    """The Ray backend cannot start (Ray missing)."""


@dataclass(frozen=True)
class RunTask:
    """One run of the grid: everything a worker needs, and nothing it has to look up."""
    dataset: str
    strategy: str
    seed: int
    config: dict
    results_dir: str
    fresh: bool
    data_dir: str | None

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.strategy} seed {self.seed}"


@dataclass
class GridOutcome:
    results: list            # result dict per task, in task order (None where the task failed)
    failures: dict = field(default_factory=dict)   # task index -> error text
    worker_losses: int = 0   # worker processes lost and retried (local backend; Ray logs its own)
    description: str = ""


# --------------------------------------------------------------------------- in the workers
_IN_POOL_WORKER = False      # set by the local pool's initializer, never in the driver
_WORKER_DATA: dict = {}      # this process's dataset, loaded once (key -> Dataset)


def data_key(task: RunTask) -> tuple:
    return (task.dataset, task.data_dir, json.dumps(task.config, sort_keys=True))


def worker_data(task: RunTask, load_data: Callable) -> Dataset:
    """The task's dataset, loaded once per worker process (the cache holds one dataset)."""
    key = data_key(task)
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = load_data(task.config, task.data_dir)
    return _WORKER_DATA[key]


RUN_COMPLETE = "[run complete]"


def step_line(task: RunTask, record: dict) -> str:
    """The progress line of one finished step; the last step of a run ends in ``RUN_COMPLETE``."""
    t = record
    line = (f"{task.dataset} {task.strategy:>8} seed {task.seed} step {t['step']:2d}  labels "
            f"{t['n_labeled']:5d}  macro-F1 {t['macro_f1']:.4f}  acc {t['accuracy']:.4f}  (train "
            f"{t['train_seconds']:.1f}s, score {t['score_seconds']:.1f}s, eval {t['eval_seconds']:.1f}s)")
    return line + ("  " + RUN_COMPLETE if t["step"] == task.config["n_steps"] else "")


def run_task(task: RunTask, load_data: Callable, build_model: Callable, progress,
             data: Dataset | None = None) -> dict:
    """What a worker runs for one task: the run, on the run's own TensorFlow thread count."""
    if data is None:
        data = worker_data(task, load_data)  # first: a loader error needs no TensorFlow start-up
    configure_tensorflow(task.config["threads"])
    try:
        return run_active_learning(
            dataset=task.dataset, data=data, build_model=build_model, config=task.config,
            strategy=task.strategy, seed=task.seed, results_dir=task.results_dir, fresh=task.fresh,
            on_step=lambda record: progress.put(step_line(task, record)))
    finally:  # also after a failed task: TensorFlow has started in this worker either way
        if _IN_POOL_WORKER:
            skip_finalization_at_exit()


def skip_finalization_at_exit() -> None:
    """Make this worker process end with ``os._exit(0)`` as soon as it starts shutting down.

    A spawned worker that has run TensorFlow can hang at shutdown in native code, with every
    result already written (seen once; README "Speed"). This skips the atexit handlers
    registered before it and the interpreter's and C++ teardown, not multiprocessing's own finalizers nor the join
    of non-daemon threads, which run earlier. Nothing is left to do at that point:
    result files are written atomically during the run, and ``Process._bootstrap`` has
    flushed multiprocessing's queues (``util._exit_function``) before ``atexit`` handlers
    run. Registered after TensorFlow's own handlers (``atexit`` runs the newest first), so
    it runs before them. Only for local pool workers: never called in the driver.
    """
    atexit.unregister(_flush_and_exit)  # re-registered after each task: stays the newest handler
    atexit.register(_flush_and_exit)


def _flush_and_exit() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(0)


def init_pool_worker(parent_pid: int) -> None:
    """Initializer of the local backend's worker processes."""
    global _IN_POOL_WORKER
    _IN_POOL_WORKER = True
    exit_with_parent(parent_pid)


def exit_with_parent(parent_pid: int) -> None:
    """End this process as soon as ``parent_pid`` (its parent, the driver) is gone.

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); a daemon
    thread polling ``os.getppid()`` covers other systems and a parent that died before the
    prctl call. Atomic writes make a kill at any moment safe for the result files.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(PARENT_POLL_SECONDS)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# --------------------------------------------------------------------------- the driver
class Progress:
    """A tqdm bar over steps, fed with one line per finished step from any backend.

    Prints the line of a run's last step (one line per run); with ``verbose``, every step's.
    """

    def __init__(self, total: int, initial: int, desc: str, verbose: bool = False):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        self.verbose = verbose

    def line(self, text: str) -> None:
        if self.verbose or text.endswith(RUN_COMPLETE):
            self.bar.write(text)
        self.bar.update(1)

    def note(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


def run_grid(tasks: list, load_data: Callable, build_model: Callable, *, backend: str = "local",
             jobs: int = 1, address: str | None = None, max_retries: int = DEFAULT_RETRIES,
             steps_done: int = 0, data: Dataset | None = None, verbose: bool = False) -> GridOutcome:
    """Run every task on ``backend`` and return the outcome (never raises for a failed task).

    ``steps_done``: steps already on disk, where the bar starts. ``data``: the dataset the
    driver loaded, used when the tasks run in this process (local backend, ``jobs == 1``).
    ``verbose``: print a line per step instead of one per run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "local" and address:
        raise ValueError("--address only applies to --backend ray")
    total = sum(t.config["n_steps"] + 1 for t in tasks)
    progress = Progress(total, min(steps_done, total), f"{tasks[0].dataset} steps", verbose)
    try:
        if backend == "local":
            return _run_local(tasks, load_data, build_model, jobs, max_retries, progress, data)
        return _run_ray(tasks, load_data, build_model, jobs, address, max_retries, progress)
    finally:
        progress.close()


# --------------------------------------------------------------------------- local backend
def _run_local(tasks, load_data, build_model, jobs, max_retries, progress, data) -> GridOutcome:
    jobs = max(1, min(jobs, len(tasks)))
    threads = tasks[0].config["threads"]
    outcome = GridOutcome(results=[None] * len(tasks),
                          description=f"local, {jobs} process(es) x {threads} TF thread(s)")
    if jobs == 1:
        lines = SimpleNamespace(put=progress.line)
        for i, task in enumerate(tasks):
            try:
                outcome.results[i] = run_task(task, load_data, build_model, lines, data)
            except Exception:  # noqa: BLE001 - reported with its traceback, the grid goes on
                outcome.failures[i] = traceback.format_exc()
        return outcome

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing.managers import SyncManager

    ctx = mp.get_context("spawn")
    manager = SyncManager(ctx=ctx)
    manager.start(exit_with_parent, (os.getpid(),))
    lines = manager.Queue()
    stop = threading.Event()

    def drain():
        while not stop.is_set() or not lines.empty():
            try:
                progress.line(lines.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):  # manager gone
                return

    printer = threading.Thread(target=drain, daemon=True)
    printer.start()
    remaining = dict(enumerate(tasks))
    try:
        while remaining:
            broken = False
            with ProcessPoolExecutor(min(jobs, len(remaining)), mp_context=ctx,
                                     initializer=init_pool_worker, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(run_task, task, load_data, build_model, lines): i
                           for i, task in remaining.items()}
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        outcome.results[i] = future.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except Exception as err:  # noqa: BLE001
                        outcome.failures[i] = "".join(traceback.format_exception(err))
                    del remaining[i]
            if broken and remaining:
                outcome.worker_losses += 1
                if outcome.worker_losses > max_retries:
                    for i in remaining:
                        outcome.failures[i] = (f"a worker process died {outcome.worker_losses} times "
                                               f"(retries: {max_retries}); run not finished")
                    break
                progress.note(f"a worker process died (killed or out of memory); resubmitting "
                              f"{len(remaining)} unfinished run(s), retry {outcome.worker_losses} "
                              f"of {max_retries}; they resume from their last completed step")
    finally:
        stop.set()
        printer.join()
        manager.shutdown()
    return outcome


# --------------------------------------------------------------------------- Ray backend
def worker_pythonpath() -> str:
    """The driver's module folders inside the repository (code/, tests/...), then PYTHONPATH."""
    inside = []
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        if (path == str(REPO_ROOT) or path.startswith(str(REPO_ROOT) + os.sep)) \
                and os.path.isdir(path) and ".venv" not in path.split(os.sep) and path not in inside:
            inside.append(path)
    code = str(REPO_ROOT / "code")
    if code not in inside:
        inside.insert(0, code)
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(inside + [p for p in extra if p not in inside])


RAY_WORKER_NICENESS = "RAY_worker_niceness"  # read by the raylet that ray.init starts


def ray_task_options(resources: dict, threads: int = 1, largest_node_cpus: float | None = None) -> dict:
    """Resources one run asks for: a GPU when the cluster has any, else its ``threads`` CPUs.

    A run asking for more CPUs than the largest node has could never be scheduled (Ray would
    wait for ever): that is refused with :class:`GridError`.
    """
    if resources.get("GPU", 0) > 0:
        return {"num_gpus": 1}
    if largest_node_cpus is not None and threads > largest_node_cpus:
        raise GridError(f"--threads {threads} asks {threads} CPUs for each run, but the largest node of the "
                        f"Ray cluster has {largest_node_cpus:g}: no run could ever start. Use --threads "
                        f"{max(1, int(largest_node_cpus))} or less, or add larger nodes.")
    return {"num_cpus": threads}


def _run_ray(tasks, load_data, build_model, jobs, address, max_retries, progress) -> GridOutcome:
    try:
        import ray
        from ray.util.queue import Empty, Queue
    except ImportError:
        raise GridError("--backend ray needs Ray: pip install -r requirements.txt") from None

    env = {"PYTHONPATH": worker_pythonpath(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if os.environ.get("AL_DATA_DIR"):
        env["AL_DATA_DIR"] = os.path.abspath(os.environ["AL_DATA_DIR"])
    threads = tasks[0].config["threads"]
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, runtime_env={"env_vars": env})
        else:  # room for ``jobs`` runs of ``threads`` TensorFlow threads each
            # Ray starts its workers at niceness 15 (``RAY_worker_niceness``), so beside other work
            # they get a small share of the cores; the local backend's workers inherit the driver's
            # niceness, and so do these unless the user set the variable.
            os.environ.setdefault(RAY_WORKER_NICENESS, str(os.nice(0)))
            ray.init(num_cpus=jobs * threads, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
        options = ray_task_options(resources, threads, largest)
        where = f"Ray cluster at {address}" if address else "local Ray instance"
        outcome = GridOutcome(
            results=[None] * len(tasks),
            description=(f"{where}: {resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs; one task per run "
                         f"({'1 GPU' if gpus else f'{threads} CPU(s)'}, {threads} TF thread(s)), "
                         f"up to {max_retries} retries"))
        progress.note(outcome.description)
        lines = Queue(actor_options={"num_cpus": 0})
        remote = ray.remote(run_task).options(max_retries=max_retries, **options)
        refs = {remote.remote(task, load_data, build_model, lines): i
                for i, task in enumerate(tasks)}

        def drain():
            while True:
                try:
                    progress.line(lines.get_nowait())
                except Empty:
                    return

        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            drain()
            for ref in done:
                i = refs[ref]
                try:
                    outcome.results[i] = ray.get(ref)
                except ray.exceptions.RayError as err:
                    outcome.failures[i] = str(err)
        drain()
        return outcome
    finally:
        if started_here:
            ray.shutdown()


# --------------------------------------------------------------------------- summary
def summary_lines(tasks: list, outcome: GridOutcome, wall: float) -> list[str]:
    lines = []
    for task, result in zip(tasks, outcome.results):
        if result is not None and result["steps"]:
            last = result["steps"][-1]
            lines.append(f"  {task.strategy:>16} seed {task.seed}: macro-F1 {last['macro_f1']:.4f} "
                         f"at {last['n_labeled']} labels")
    n_ok = len(tasks) - len(outcome.failures)
    retried = f", {outcome.worker_losses} lost worker(s) retried" if outcome.worker_losses else ""
    lines.append(f"{tasks[0].dataset}: {n_ok} of {len(tasks)} runs done in {wall / 60:.1f} min "
                 f"({outcome.description}{retried})")
    for i, error in sorted(outcome.failures.items()):
        lines.append(f"  FAILED {tasks[i].label}: {error.strip().splitlines()[-1] if error.strip() else error}")
    return lines
