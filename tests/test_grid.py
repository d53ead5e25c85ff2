"""runner: one grid, interchangeable backends (local processes, a real local Ray cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import experiment
import runfiles
import runner
from conftest import LOOP_CONFIG, make_synthetic_dataset, tiny_build_model
from data_common import REPO_ROOT

STRATEGIES = ("random", "entropy")
SEEDS = (0, 1)
N_STEPS = 1


def grid(results_dir, data_dir):
    config = {**LOOP_CONFIG, "n_steps": N_STEPS}
    return [experiment.RunTask("toy", s, seed, config, str(results_dir), False, str(data_dir))
            for seed in SEEDS for s in STRATEGIES]


def load_toy(config, data_dir):
    return make_synthetic_dataset()


def load_killing_first_worker(config, data_dir):
    """The first call kills its own worker process (SIGKILL): a lost worker; later calls load."""
    marker = Path(data_dir) / "killed_once"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return make_synthetic_dataset()
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def comparable(result: dict) -> dict:
    return {**result, "steps": [{k: v for k, v in s.items() if k not in runfiles.TIMING_KEYS}
                                for s in result["steps"]]}


# --------------------------------------------------------------------------- unit
def test_tasks_ask_for_a_gpu_when_the_cluster_has_one_else_a_cpu():
    assert runner.ray_task_options({"CPU": 8.0, "GPU": 2.0}) == {"num_gpus": 1}
    assert runner.ray_task_options({"CPU": 8.0}) == {"num_cpus": 1}
    assert runner.ray_task_options({"CPU": 8.0, "GPU": 0.0}) == {"num_cpus": 1}


def test_workers_get_the_repository_modules_on_their_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    parts = runner.worker_pythonpath().split(os.pathsep)
    assert parts[0] == str(REPO_ROOT / "code") or str(REPO_ROOT / "code") in parts
    assert str(Path(__file__).parent) in parts  # pytest put tests/ on sys.path
    assert parts[-1] == "/elsewhere"
    assert not [p for p in parts if ".venv" in p]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT / "code",
                          capture_output=True, text=True, timeout=60)


def test_a_pool_worker_skips_interpreter_finalization_but_keeps_its_output():
    # A handler registered before the worker's first task stands for TensorFlow's: it
    # must not run (finalization is where workers hung), while unflushed output survives.
    done = run_python("import atexit, sys, runner\n"
                      "atexit.register(lambda: print('FINALIZED', flush=True))\n"
                      "runner.skip_finalization_at_exit(); runner.skip_finalization_at_exit()\n"
                      "sys.stdout.write('result written')\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "result written"


def test_only_pool_workers_ask_for_the_fast_exit(monkeypatch):
    # jobs == 1 runs tasks in the driver itself, which must finalize normally.
    monkeypatch.setattr(experiment, "task_data", lambda task, load: None)
    monkeypatch.setattr(experiment, "execute_task", lambda *args: {"steps": []})
    monkeypatch.setattr(runner, "_CONFIGURED_THREADS", 1)
    calls = []
    monkeypatch.setattr(runner, "skip_finalization_at_exit", lambda: calls.append(1))
    runner.run_task(None, None, None, None, 1)
    assert calls == []
    monkeypatch.setattr(runner, "_IN_POOL_WORKER", True)
    runner.run_task(None, None, None, None, 1)
    assert calls == [1]

    def failing_task(*args):
        raise RuntimeError("task failed")
    monkeypatch.setattr(experiment, "execute_task", failing_task)
    with pytest.raises(RuntimeError, match="task failed"):
        runner.run_task(None, None, None, None, 1)
    assert calls == [1, 1]  # a failed task has started TensorFlow too


def test_unknown_backend_and_misplaced_address_are_refused(tmp_path):
    tasks = grid(tmp_path, tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        runner.run_grid(tasks, load_toy, tiny_build_model, backend="slurm")
    with pytest.raises(ValueError, match="--address"):
        runner.run_grid(tasks, load_toy, tiny_build_model, backend="local", address="auto")


# --------------------------------------------------------------------------- local vs Ray
@pytest.fixture(scope="module")
def both_backends(tmp_path_factory):
    """The same grid in this process (local, 1 job) and on a 2-CPU local Ray cluster.

    On Ray, the first task's worker process is killed (SIGKILL) once: Ray retries it.
    """
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("backends")
    local_tasks = grid(root / "local", root)
    local = runner.run_grid(local_tasks, load_toy, tiny_build_model, backend="local", jobs=1,
                            threads=1)
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        original = runner.Progress.line
        mp.setattr(runner.Progress, "line", lambda self, text: (lines.append(text), original(self, text)))
        (root / "marks").mkdir()
        ray_tasks = grid(root / "ray", root / "marks")
        ray = runner.run_grid(ray_tasks, load_killing_first_worker, tiny_build_model, backend="ray",
                              jobs=2, threads=1, max_retries=2)
    return {"root": root, "local": local, "ray": ray, "ray_lines": lines, "tasks": ray_tasks}


@pytest.mark.slow
def test_ray_backend_gives_the_local_backends_results(both_backends):
    local, ray = both_backends["local"], both_backends["ray"]
    assert local.failures == {} and ray.failures == {}
    assert len(ray.results) == len(SEEDS) * len(STRATEGIES)
    for a, b in zip(local.results, ray.results):
        assert b["complete"] and len(b["steps"]) == N_STEPS + 1
        assert comparable(a) == comparable(b)
    root = both_backends["root"]
    for task in both_backends["tasks"]:
        name = f"{task.strategy}_seed{task.seed}.json"
        state_local = json.loads((root / "local" / "toy" / "state" / name).read_text())
        state_ray = json.loads((root / "ray" / "toy" / "state" / name).read_text())
        assert state_local["selected"] == state_ray["selected"]
        assert runfiles.read_result(root / "ray" / "toy" / name)[1] == "verified"


@pytest.mark.slow
def test_ray_retries_the_task_whose_worker_was_killed(both_backends):
    marker = both_backends["root"] / "marks" / "killed_once"
    assert marker.exists(), "no worker was killed: the retry path was not exercised"
    assert int(marker.read_text()) != os.getpid()  # it ran in a Ray worker, not in the driver
    assert all(r["complete"] for r in both_backends["ray"].results)
    assert "Ray" in both_backends["ray"].description


@pytest.mark.slow
def test_ray_backend_reports_every_step_to_the_driver(both_backends):
    lines = both_backends["ray_lines"]
    assert len(lines) == len(SEEDS) * len(STRATEGIES) * (N_STEPS + 1)
    for strategy in STRATEGIES:
        for seed in SEEDS:
            for step in range(N_STEPS + 1):
                assert sum(f"{strategy:>8} seed {seed} step {step:2d}" in line for line in lines) == 1
