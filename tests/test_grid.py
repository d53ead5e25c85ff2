"""al.grid: one grid, interchangeable backends; a run's numbers do not depend on how it ran.

The key test runs the same grid of a small CONV net (random, entropy, badge, bald x 2 seeds)
in this process (``jobs=1``) and in two spawned worker processes (``jobs=2``), and requires
every step record to agree exactly, timings aside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from al import grid, runs
from al.data_common import REPO_ROOT
from al.grid import RunTask
from conftest import (LOOP_CONFIG, conv_build_model, load_signals, make_synthetic_dataset, strip_timing,
                      tiny_build_model, toy_load_data)

COMPARED_STEP_KEYS = {"step", "n_labeled", "macro_f1", "accuracy", "per_class_f1",
                      "labeled_class_counts", "selected", "stop_set_predictions", "stop_set_mean_entropy",
                      "stop_set_max_entropy", "confusion_matrix"}


def progress_lines(monkeypatch) -> list[str]:
    """Collect the progress lines the driver prints (one per finished step)."""
    lines = []
    original = grid.Progress.line
    monkeypatch.setattr(grid.Progress, "line", lambda self, text: (lines.append(text), original(self, text)))
    return lines


# --------------------------------------------------------------------------- unit
def test_tasks_ask_for_a_gpu_when_the_cluster_has_one_else_a_cpu():
    assert grid.ray_task_options({"CPU": 8.0, "GPU": 2.0}) == {"num_gpus": 1}
    assert grid.ray_task_options({"CPU": 8.0}) == {"num_cpus": 1}
    assert grid.ray_task_options({"CPU": 8.0, "GPU": 0.0}) == {"num_cpus": 1}
    assert grid.ray_task_options({"CPU": 8.0}, threads=4) == {"num_cpus": 4}
    assert grid.ray_task_options({"CPU": 8.0}, threads=4, largest_node_cpus=4.0) == {"num_cpus": 4}
    with pytest.raises(grid.GridError, match="largest node of the Ray cluster has 2: no run could ever start"):
        grid.ray_task_options({"CPU": 8.0}, threads=4, largest_node_cpus=2.0)  # 4 nodes of 2: never schedulable


def test_workers_get_the_repository_modules_on_their_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    parts = grid.worker_pythonpath().split(os.pathsep)
    assert str(REPO_ROOT / "code") in parts
    assert str(Path(__file__).parent) in parts  # pytest put tests/ on sys.path
    assert parts[-1] == "/elsewhere"
    assert not [p for p in parts if ".venv" in p]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT / "code",
                          capture_output=True, text=True, timeout=60)


def test_a_pool_worker_skips_interpreter_finalization_but_keeps_its_output():
    # A handler registered before the worker's first task stands for TensorFlow's: it
    # must not run (finalization is where workers hung), while unflushed output survives.
    done = run_python("import atexit, sys\nfrom al import grid\n"
                      "atexit.register(lambda: print('FINALIZED', flush=True))\n"
                      "grid.skip_finalization_at_exit(); grid.skip_finalization_at_exit()\n"
                      "sys.stdout.write('result written')\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "result written"


def task(threads: int = 1, **change) -> RunTask:
    fields = dict(dataset="toy", strategy="random", seed=0, config={**LOOP_CONFIG, "threads": threads},
                  results_dir="unused", fresh=False, data_dir=None)
    return RunTask(**{**fields, **change})


@pytest.fixture
def fake_run(monkeypatch):
    """run_task without TensorFlow: records the thread counts asked for and the runs started."""
    calls = SimpleNamespace(threads=[], runs=[], fast_exit=[])
    monkeypatch.setattr(grid, "configure_tensorflow", calls.threads.append)
    monkeypatch.setattr(grid, "run_active_learning", lambda **kw: calls.runs.append(kw) or {"steps": []})
    monkeypatch.setattr(grid, "skip_finalization_at_exit", lambda: calls.fast_exit.append(1))
    return calls


def test_a_task_runs_on_its_own_configured_thread_count(fake_run):
    # Never cores // jobs: the count is the run's config["threads"], whatever runs beside it.
    data = make_synthetic_dataset(30, 10)
    grid.run_task(task(threads=3), None, tiny_build_model, None, data)
    assert fake_run.threads == [3]
    assert fake_run.runs[0]["config"]["threads"] == 3 and fake_run.runs[0]["data"] is data


def test_only_pool_workers_ask_for_the_fast_exit(fake_run, monkeypatch):
    # jobs == 1 runs tasks in the driver itself, which must finalize normally.
    data = make_synthetic_dataset(30, 10)
    grid.run_task(task(), None, tiny_build_model, None, data)
    assert fake_run.fast_exit == []
    monkeypatch.setattr(grid, "_IN_POOL_WORKER", True)
    grid.run_task(task(), None, tiny_build_model, None, data)
    assert fake_run.fast_exit == [1]

    def failing_run(**kwargs):
        raise RuntimeError("task failed")
    monkeypatch.setattr(grid, "run_active_learning", failing_run)
    with pytest.raises(RuntimeError, match="task failed"):
        grid.run_task(task(), None, tiny_build_model, None, data)
    assert fake_run.fast_exit == [1, 1]  # a failed task has started TensorFlow too


def test_a_worker_loads_its_dataset_once_and_again_for_another_config(fake_run, monkeypatch):
    monkeypatch.setattr(grid, "_WORKER_DATA", {})
    loads = []

    def load(config, data_dir):
        loads.append((config["epochs"], data_dir))
        return make_synthetic_dataset(30, 10)

    grid.run_task(task(strategy="random"), load, tiny_build_model, None)
    grid.run_task(task(strategy="entropy", seed=1), load, tiny_build_model, None)
    assert loads == [(LOOP_CONFIG["epochs"], None)]
    grid.run_task(task(config={**LOOP_CONFIG, "epochs": 5}), load, tiny_build_model, None)
    assert loads[-1] == (5, None) and len(loads) == 2


def test_a_loader_error_is_raised_before_tensorflow_starts(fake_run, monkeypatch):
    monkeypatch.setattr(grid, "_WORKER_DATA", {})

    def broken(config, data_dir):
        raise FileNotFoundError("no data here")

    with pytest.raises(FileNotFoundError, match="no data here"):
        grid.run_task(task(), broken, tiny_build_model, None)
    assert fake_run.threads == []


def test_unknown_backend_and_misplaced_address_are_refused(tmp_path):
    tasks = [task(results_dir=str(tmp_path))]
    with pytest.raises(ValueError, match="unknown backend"):
        grid.run_grid(tasks, toy_load_data, tiny_build_model, backend="slurm")
    with pytest.raises(ValueError, match="--address"):
        grid.run_grid(tasks, toy_load_data, tiny_build_model, backend="local", address="auto")


def test_a_failed_task_is_reported_and_the_grid_goes_on(tmp_path):
    good = task(results_dir=str(tmp_path), config={**LOOP_CONFIG, "n_steps": 0})
    bad = task(results_dir=str(tmp_path), strategy="entropy",
               config={**LOOP_CONFIG, "n_steps": 0, "start_size": 10_000})  # more than the pool
    outcome = grid.run_grid([bad, good], toy_load_data, tiny_build_model, backend="local", jobs=1)
    assert list(outcome.failures) == [0] and "10000" in outcome.failures[0]
    assert outcome.results[0] is None and outcome.results[1]["complete"]
    summary = "\n".join(grid.summary_lines([bad, good], outcome, 1.0))
    assert "1 of 2 runs done" in summary and "FAILED toy entropy seed 0" in summary


# --------------------------------------------------------------------------- jobs=1 vs jobs=2, CONV
CONV_STRATEGIES = ("random", "entropy", "badge", "bald")
CONV_SEEDS = (0, 1)
CONV_CONFIG = {**LOOP_CONFIG, "start_size": 12, "batch_size": 6, "n_steps": 2, "epochs": 1,
               "fit_batch_size": 16}
# TensorFlow's C++ start-up banner, which spawned workers must not print.
BANNER = ("absl::InitializeLog", "oneDNN custom operations")

# The jobs=2 grid runs in a driver process of its own, so that its stderr (and its spawned
# workers', which inherit it) can be read: a worker printing TensorFlow's banner shows there.
PARALLEL_GRID = """
import json, sys
sys.path[:0] = [{code!r}, {tests!r}]
import conftest
from al import grid
tasks = [grid.RunTask("signals", s, seed, {config!r}, {results!r}, False, None)
         for seed in {seeds!r} for s in {strategies!r}]
outcome = grid.run_grid(tasks, conftest.load_signals, conftest.conv_build_model, backend="local", jobs=2)
print("OUTCOME " + json.dumps({{"failures": outcome.failures, "description": outcome.description,
                               "results": outcome.results}}))
"""


def conv_tasks(results_dir) -> list[RunTask]:
    return [RunTask("signals", s, seed, CONV_CONFIG, str(results_dir), False, None)
            for seed in CONV_SEEDS for s in CONV_STRATEGIES]


@pytest.fixture(scope="module")
def conv_grids(tmp_path_factory):
    """The same CONV grid in this process (jobs=1) and in two spawned workers (jobs=2)."""
    root = tmp_path_factory.mktemp("conv")
    script = PARALLEL_GRID.format(code=str(REPO_ROOT / "code"), tests=str(Path(__file__).parent),
                                  config=CONV_CONFIG, results=str(root / "jobs2"), seeds=CONV_SEEDS,
                                  strategies=CONV_STRATEGIES)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the library's own
    env["AL_TEST_THREAD_LOG"] = str(root / "threads2.log")
    parallel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    try:  # meanwhile, the jobs=1 grid in this process
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AL_TEST_THREAD_LOG", str(root / "threads1.log"))
            lines = progress_lines(mp)
            one = grid.run_grid(conv_tasks(root / "jobs1"), load_signals, conv_build_model,
                                backend="local", jobs=1)
        stdout, stderr = parallel.communicate(timeout=600)
    finally:
        parallel.kill()
        parallel.wait()
    assert parallel.returncode == 0, stderr[-5000:]
    outcome = json.loads(stdout.rsplit("OUTCOME ", 1)[1])
    threads = {jobs: [tuple(map(int, line.split()))  # (pid, TensorFlow intra-op threads) per model
                      for line in (root / f"threads{jobs}.log").read_text().splitlines()]
               for jobs in (1, 2)}
    return SimpleNamespace(root=root, one=one, lines=lines, two=outcome, stdout=stdout, stderr=stderr,
                           threads=threads)


def conv_run(conv_grids, jobs: int, strategy: str, seed: int) -> dict:
    return runs.read_run(runs.run_path(conv_grids.root / f"jobs{jobs}", "signals", strategy, seed))


@pytest.mark.slow
def test_conv_grid_gives_the_same_runs_in_one_process_and_in_two_workers(conv_grids):
    assert conv_grids.one.failures == {} and conv_grids.two["failures"] == {}
    assert conv_grids.one.description == "local, 1 process(es) x 1 TF thread(s)"
    assert conv_grids.two["description"] == "local, 2 process(es) x 1 TF thread(s)"
    for strategy in CONV_STRATEGIES:
        for seed in CONV_SEEDS:
            one, two = (conv_run(conv_grids, jobs, strategy, seed) for jobs in (1, 2))
            assert one["complete"] and len(one["steps"]) == CONV_CONFIG["n_steps"] + 1
            assert set(strip_timing(one["steps"])[0]) == COMPARED_STEP_KEYS
            for a, b in zip(strip_timing(one["steps"]), strip_timing(two["steps"]), strict=True):
                assert a == b, f"{strategy} seed {seed} step {a['step']} differs between jobs=1 and jobs=2"
            assert one["provenance"] == two["provenance"] and one["config"] == two["config"]


@pytest.mark.slow
def test_conv_grid_runs_on_one_thread_in_both_modes(conv_grids):
    # What TensorFlow really ran with, in each process that built a model ...
    assert {pid for pid, _ in conv_grids.threads[1]} == {os.getpid()}
    assert len({pid for pid, _ in conv_grids.threads[2]}) == 2, "two worker processes built models"
    assert os.getpid() not in {pid for pid, _ in conv_grids.threads[2]}
    for jobs in (1, 2):
        assert {threads for _, threads in conv_grids.threads[jobs]} == {1}, f"jobs={jobs}"
    # ... and what the run files record.
    for jobs in (1, 2):
        for strategy in CONV_STRATEGIES:
            for seed in CONV_SEEDS:
                run = conv_run(conv_grids, jobs, strategy, seed)
                assert run["provenance"]["threads"] == 1 and run["config"]["threads"] == 1


@pytest.mark.slow
def test_conv_grid_comparison_is_not_vacuous(conv_grids):
    # The runs compared above must differ where the protocol says they differ: otherwise
    # "jobs=1 equals jobs=2" could hold for a loop that ignores its strategy or seed.
    runs_of = {(s, seed): conv_run(conv_grids, 1, s, seed) for s in CONV_STRATEGIES for seed in CONV_SEEDS}
    for seed in CONV_SEEDS:
        first_steps = {tuple(runs_of[s, seed]["steps"][0]["selected"]) for s in CONV_STRATEGIES}
        assert len(first_steps) == 1, "strategies under one seed start from the same labeled set"
        later = {tuple(runs_of[s, seed]["steps"][1]["selected"]) for s in CONV_STRATEGIES}
        assert len(later) == len(CONV_STRATEGIES), "every strategy picks its own batch"
    assert runs_of["random", 0]["steps"][0]["selected"] != runs_of["random", 1]["steps"][0]["selected"]
    predictions = {runs_of[s, 0]["steps"][-1]["stop_set_predictions"] for s in CONV_STRATEGIES}
    assert len(predictions) > 1


@pytest.mark.slow
def test_conv_grid_results_are_the_run_files_and_every_step_is_reported(conv_grids):
    tasks = conv_tasks("unused")
    for jobs, results in ((1, conv_grids.one.results), (2, conv_grids.two["results"])):
        for t, result in zip(tasks, results, strict=True):
            assert result == conv_run(conv_grids, jobs, t.strategy, t.seed)
    lines = conv_grids.lines  # every step reaches the driver (the bar counts them)
    assert sum(" step " in line and "macro-F1" in line for line in lines) == \
        len(tasks) * (CONV_CONFIG["n_steps"] + 1)
    for t in tasks:
        for step in range(CONV_CONFIG["n_steps"] + 1):
            assert sum(f"{t.strategy:>8} seed {t.seed} step {step:2d}" in line for line in lines) == 1
    printed = [line for line in conv_grids.stdout.splitlines() if " step " in line and "macro-F1" in line]
    assert len(printed) == len(tasks)  # one line per run: its last step
    assert all(line.endswith(grid.RUN_COMPLETE) and f"step {CONV_CONFIG['n_steps']:2d}" in line for line in printed)


@pytest.mark.slow
def test_spawned_workers_print_no_tensorflow_banner(conv_grids):
    assert "2 process(es)" in conv_grids.two["description"]  # workers did start
    banner = [line for line in conv_grids.stderr.splitlines() if any(b in line for b in BANNER)]
    assert banner == [], "\n".join(banner[:4])


# --------------------------------------------------------------------------- local vs Ray
RAY_RUNS = (("entropy", 0), ("bald", 1))  # two runs of the CONV grid, compared with its jobs=1 runs


def load_killing_first_worker(config, data_dir):
    """The first call kills its own worker process (SIGKILL): a lost worker; later calls load.
    Every call records its worker's niceness in ``niceness_<pid>``."""
    (Path(data_dir) / f"niceness_{os.getpid()}").write_text(str(os.nice(0)))
    marker = Path(data_dir) / "killed_once"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return load_signals(config, None)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def on_ray(conv_grids):
    """Two runs of the CONV grid on a 2-CPU local Ray cluster; the first worker is SIGKILLed once."""
    pytest.importorskip("ray")
    root = conv_grids.root
    (root / "marks").mkdir()
    tasks = [RunTask("signals", s, seed, CONV_CONFIG, str(root / "ray"), False, str(root / "marks"))
             for s, seed in RAY_RUNS]
    with pytest.MonkeyPatch.context() as mp:
        lines = progress_lines(mp)
        outcome = grid.run_grid(tasks, load_killing_first_worker, conv_build_model, backend="ray",
                                jobs=2, max_retries=2)
    return SimpleNamespace(root=root, outcome=outcome, lines=lines)


@pytest.mark.slow
def test_ray_backend_gives_the_local_backends_results(conv_grids, on_ray):
    assert on_ray.outcome.failures == {}
    for (strategy, seed), result in zip(RAY_RUNS, on_ray.outcome.results, strict=True):
        local = conv_run(conv_grids, 1, strategy, seed)
        assert result["complete"] and strip_timing(result["steps"]) == strip_timing(local["steps"])
        assert result["provenance"]["threads"] == 1
        assert runs.read_run(runs.run_path(on_ray.root / "ray", "signals", strategy, seed)) == result


@pytest.mark.slow
def test_ray_retries_the_task_whose_worker_was_killed(on_ray):
    marker = on_ray.root / "marks" / "killed_once"
    assert marker.exists(), "no worker was killed: the retry path was not exercised"
    assert int(marker.read_text()) != os.getpid()  # it ran in a Ray worker, not in the driver
    assert on_ray.outcome.failures == {}, "the killed task was not retried"
    assert all(r["complete"] for r in on_ray.outcome.results)
    assert "Ray" in on_ray.outcome.description and "1 TF thread(s)" in on_ray.outcome.description


@pytest.mark.slow
def test_local_ray_workers_run_at_the_drivers_niceness(on_ray):
    # Ray's default would be 15: beside other work its runs would crawl, unlike the local backend's
    recorded = [p.read_text() for p in (on_ray.root / "marks").glob("niceness_*")]
    assert len(recorded) >= 2, recorded  # the killed worker and at least one more
    assert set(recorded) == {str(os.nice(0))}


@pytest.mark.slow
def test_ray_backend_reports_every_step_to_the_driver(on_ray):
    assert len(on_ray.lines) == len(RAY_RUNS) * (CONV_CONFIG["n_steps"] + 1)
    for strategy, seed in RAY_RUNS:
        for step in range(CONV_CONFIG["n_steps"] + 1):
            assert sum(f"{strategy:>8} seed {seed} step {step:2d}" in line for line in on_ray.lines) == 1


@pytest.mark.slow
def test_ray_refuses_runs_that_ask_more_cpus_than_any_node_has(tmp_path):
    ray = pytest.importorskip("ray")
    tasks = [RunTask("signals", "random", 0, {**CONV_CONFIG, "threads": 2}, str(tmp_path), False, None)]
    ray.init(num_cpus=1, include_dashboard=False)  # a real one-CPU cluster on this machine
    try:
        with pytest.raises(grid.GridError, match="has 1: no run could ever start. Use --threads 1"):
            grid.run_grid(tasks, load_signals, conv_build_model, backend="ray", jobs=1, max_retries=0)
        assert not (tmp_path / "signals").exists()  # refused before any run started
    finally:
        ray.shutdown()
