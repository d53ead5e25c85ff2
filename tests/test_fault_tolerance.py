"""Faults: a worker SIGKILLed mid-run, lost workers, a killed driver, run files edited by hand.

A run lives in one run file (``results/<dataset>/<strategy>_seed<k>.json``), replaced
atomically after every step, with each step's ``selected`` indices and a digest of the whole
content: a killed run resumes from it to the uninterrupted result, and a file changed by
hand is refused by every reader (resume, the pre-flight check, plot_perf).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from al import cli, grid, loop, runs
from al.grid import RunTask
from al.strategies import get_strategy
from conftest import (LOOP_CONFIG, NAMESPACE, make_synthetic_dataset, strip_timing, tiny_build_model,
                      tmp_files, toy_load_data)

HERE = Path(__file__).resolve().parent
CODE = HERE.parent / "code"
STRATEGIES = ("random", "entropy")


def run(results_dir, strategy="entropy", seed=0, **kwargs):
    return loop.run_active_learning(
        dataset="toy", data=make_synthetic_dataset(), build_model=tiny_build_model,
        config=dict(LOOP_CONFIG), strategy=strategy, seed=seed, results_dir=results_dir, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """results/toy/{random,entropy}_seed0.json of runs that nothing interrupted."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    for strategy in STRATEGIES:
        run(folder, strategy)
    return folder


def read(results_dir, strategy="entropy", seed=0) -> dict:
    return runs.read_run(runs.run_path(Path(results_dir), "toy", strategy, seed))


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- killed runs
def test_run_file_of_a_run_killed_between_steps_resumes_to_the_same_result(uninterrupted, tmp_path):
    # A kill between two steps leaves the file of the last completed step: a valid earlier version.
    reference = read(uninterrupted)
    path = runs.run_path(tmp_path, "toy", "entropy", 0)
    runs.save_run(path, {**json.loads(json.dumps(reference)), "steps": reference["steps"][:2],
                         "complete": False})
    assert len(runs.read_run(path)["steps"]) == 2
    resumed = run(tmp_path)
    assert resumed["steps"][:2] == reference["steps"][:2]
    assert strip_timing(resumed["steps"]) == strip_timing(reference["steps"])
    assert resumed["provenance"]["resumed"][0]["step"] == 2


# --------------------------------------------------------------------------- edited run files
@pytest.fixture
def copied(uninterrupted, tmp_path):
    """A copy of the uninterrupted folder; returns the entropy run's file."""
    shutil.copytree(uninterrupted / "toy", tmp_path / "toy")
    return runs.run_path(tmp_path, "toy", "entropy", 0)


def edit(path: Path, change) -> None:
    """Change a run file the way a person would: valid JSON, the old digest left in place."""
    run_dict = json.loads(path.read_text())
    change(run_dict)
    path.write_text(json.dumps(run_dict, indent=1))


def test_hand_edited_run_file_is_refused_by_the_reader_and_by_resume(copied, tmp_path):
    edit(copied, lambda r: r["steps"][1].update(macro_f1=0.99))  # still valid JSON and schema
    with pytest.raises(runs.RunFileError, match="modified or truncated") as err:
        runs.read_run(copied)
    assert str(copied) in str(err.value)
    with pytest.raises(loop.ModifiedRunError, match="--fresh"):
        loop.load_previous(copied, dict(LOOP_CONFIG), make_synthetic_dataset(), get_strategy("entropy"))
    with pytest.raises(loop.ConfigMismatchError, match="modified or truncated"):
        run(tmp_path)


@pytest.mark.parametrize("damage, problem", [
    (lambda path: edit(path, lambda r: r["steps"][2].update(accuracy=r["steps"][2]["accuracy"] / 2)),
     "modified or truncated"),
    (lambda path: path.write_text(path.read_text()[:-40]), "not valid JSON"),
], ids=["edited", "truncated"])
def test_damaged_run_file_is_refused_by_the_pre_flight_check(copied, tmp_path, monkeypatch, damage, problem):
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: pytest.fail("the grid was started"))
    damage(copied)
    with pytest.raises(SystemExit) as err:
        cli.main("toy", NAMESPACE, toy_load_data, tiny_build_model,
                 ["--strategies", "entropy", "--results-dir", str(tmp_path)])
    message = str(err.value.code)
    assert message.startswith(f"error: {tmp_path / 'toy'} already holds runs")
    assert "run files that cannot be resumed" in message
    assert str(copied) in message and problem in message


def test_hand_edited_run_outside_the_grid_is_left_alone_with_a_warning(copied, tmp_path, capsys):
    edit(copied, lambda r: r["steps"][0].update(macro_f1=0.5))
    tasks = [RunTask("toy", "random", 1, dict(LOOP_CONFIG), str(tmp_path), False, None)]
    assert cli.check_results_folder(tasks, make_synthetic_dataset()) == {}
    err = capsys.readouterr().err
    assert f"warning: {copied}" in err and "not part of this grid: left alone" in err


# What read_run refuses and why (schema, truncation, renames, old format): test_runs.py.


def test_edited_run_is_skipped_by_plot_perf_with_its_name(copied, tmp_path, capsys):
    import plot_perf  # reworked alongside; only this test depends on it
    edit(copied, lambda r: r["steps"][0].update(macro_f1=0.5))
    with pytest.raises(plot_perf.InvalidRunFile, match="modified or truncated"):
        plot_perf.read_run(copied)
    (copied.parent / "random_seed0.json").unlink()
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 1  # the only run: nothing left
    assert "entropy_seed0.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- local backend
def toy_tasks(results_dir, data_dir=None, strategies=STRATEGIES, n_steps=LOOP_CONFIG["n_steps"]):
    config = {**LOOP_CONFIG, "n_steps": n_steps}
    return [RunTask("toy", s, 0, config, str(results_dir), False, None if data_dir is None else str(data_dir))
            for s in strategies]


_BUILDS: list[int] = []  # models built in this (worker) process


def build_killing_once(config, input_shape, n_classes):
    """Kill this worker (SIGKILL) at its second model, once per test, after the other run ended.

    The second model is step 1's, built after the step's selection: the run file holds step
    0. The first worker to get there kills itself, but only once the other worker's run is
    complete (and its result back in the driver), so exactly one run is interrupted and
    resubmitted. Its run file at the kill is kept as ``at_the_kill.json``.
    """
    _BUILDS.append(1)
    marks = Path(os.environ["AL_TEST_KILL_DIR"])
    if len(_BUILDS) == 2:
        try:
            fd = os.open(marks / "killed_once", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            folder = marks / "results" / "toy"
            deadline = time.time() + 120
            while time.time() < deadline and not any(
                    json.loads(p.read_text()).get("complete") for p in runs.run_files(folder)):
                time.sleep(0.05)
            time.sleep(1.0)  # the finished run's result travels back to the driver
            for path in runs.run_files(folder):
                if not json.loads(path.read_text())["complete"]:  # this worker's run
                    shutil.copy(path, marks / "at_the_kill.json")
                    # What a writer killed inside write_bytes_atomic leaves; the resumed run removes it.
                    (path.parent / f".{path.name}.dead1234.tmp").write_text('{"steps": [')
            os.kill(os.getpid(), signal.SIGKILL)
    return tiny_build_model(config, input_shape, n_classes)


@pytest.mark.slow
def test_local_backend_resumes_the_run_of_a_worker_killed_mid_run(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.setenv("AL_TEST_KILL_DIR", str(tmp_path))  # inherited by the spawned workers
    tasks = toy_tasks(tmp_path / "results", n_steps=1)
    outcome = grid.run_grid(tasks, toy_load_data, build_killing_once, backend="local", jobs=2, max_retries=2)
    assert int((tmp_path / "killed_once").read_text()) != os.getpid()
    assert outcome.failures == {} and outcome.worker_losses == 1
    at_the_kill = json.loads((tmp_path / "at_the_kill.json").read_text())
    assert len(at_the_kill["steps"]) == 1 and not at_the_kill["complete"]
    resumed = []
    for t, result in zip(tasks, outcome.results, strict=True):
        assert result == read(tmp_path / "results", t.strategy) and result["complete"]
        # Steps 0 and 1 do not depend on n_steps: the uninterrupted 3-step run's first two.
        reference = read(uninterrupted, t.strategy)
        assert strip_timing(result["steps"]) == strip_timing(reference["steps"][:2])
        assert [s["selected"] for s in result["steps"]] == [s["selected"] for s in reference["steps"][:2]]
        if result["provenance"]["resumed"]:
            resumed.append(t.strategy)
            assert t.strategy == at_the_kill["strategy"]
            assert result["steps"][:1] == at_the_kill["steps"], "the step on disk is kept, not recomputed"
            assert result["provenance"]["resumed"] == [
                {"step": 1, "git_commit": runs.git_commit(), "cpu_model": runs.cpu_model(), "devices": []}]
            assert {**result["provenance"], "resumed": []} == {**reference["provenance"], "resumed": []}
    assert resumed == [at_the_kill["strategy"]], "exactly the killed run resumed from its file"
    assert tmp_files(tmp_path) == [], "the resumed run removed the killed writer's temporary file"


def load_always_killing(config, data_dir):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_local_backend_gives_up_after_its_retries(tmp_path):
    tasks = toy_tasks(tmp_path / "results")  # two runs: two worker processes
    outcome = grid.run_grid(tasks, load_always_killing, tiny_build_model, backend="local", jobs=2,
                            max_retries=1)
    assert outcome.worker_losses == 2 and "died 2 times" in outcome.failures[0]
    assert outcome.results == [None, None]
    assert "FAILED toy random seed 0" in "\n".join(grid.summary_lines(tasks, outcome, 1.0))


# --------------------------------------------------------------------------- killed driver
KILLED_DRIVER = """
import sys
sys.path[:0] = [{code!r}, {tests!r}]
from al import grid
import test_fault_tolerance as t
tasks = t.toy_tasks({results!r}, {marks!r})
grid.run_grid(tasks, t.load_sleeping, t.tiny_build_model, backend="local", jobs=2)
"""


def load_sleeping(config, data_dir):
    """Records its pid, then blocks the way a long training step would."""
    Path(data_dir, f"worker_{os.getpid()}").write_text("")
    time.sleep(300)


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker processes")
def test_killing_the_driver_ends_its_worker_processes(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    script = KILLED_DRIVER.format(code=str(CODE), tests=str(HERE), results=str(tmp_path / "r"),
                                  marks=str(marks))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    helpers: set[int] = set()
    try:
        wait_for(lambda: len(list(marks.glob("worker_*"))) == 2, 120, "both workers", driver)
        workers = {int(p.name.split("_")[1]) for p in marks.glob("worker_*")}
        helpers = children(driver.pid)  # pool workers, the progress-queue manager, resource tracker
        assert workers <= helpers
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(alive(p) for p in helpers):
            time.sleep(0.1)
        assert not [p for p in helpers if alive(p)], "processes outlived the killed driver"
    finally:
        driver.kill()
        driver.wait()
        for pid in helpers:  # only if the test failed: the processes this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
