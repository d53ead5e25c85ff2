"""Faults: a run killed with SIGKILL mid-step, a lost worker, killed drivers, edited run files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import al_loop
import experiment
import plot_perf
import runfiles
import runner
from conftest import LOOP_CONFIG, make_synthetic_dataset, tiny_build_model

HERE = Path(__file__).resolve().parent
CODE = HERE.parent / "code"


def strip_timing(steps):
    return [{k: v for k, v in s.items() if k not in runfiles.TIMING_KEYS} for s in steps]


def tmp_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".tmp")]


def read_run(results_dir, strategy="entropy", seed=0, dataset="toy"):
    result_path, state_path = al_loop.run_paths(Path(results_dir), dataset, strategy, seed)
    return json.loads(result_path.read_text()), json.loads(state_path.read_text())


def run(results_dir, strategy="entropy", seed=0, **kwargs):
    return al_loop.run_active_learning(
        dataset="toy", data=make_synthetic_dataset(), build_model=tiny_build_model,
        config=dict(LOOP_CONFIG), strategy=strategy, seed=seed, results_dir=results_dir, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    run(folder)
    return folder


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


def steps_on_disk(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["steps"])
    except (OSError, ValueError, KeyError):
        return 0


# --------------------------------------------------------------------------- SIGKILL mid-step
KILLED_RUN = """
import sys, time
sys.path[:0] = [{code!r}, {tests!r}]
import experiment
experiment.configure_tensorflow(1)
import al_loop, conftest

def slow_build(*args):  # a slower step (same result), so the kill lands inside one
    time.sleep(0.4)
    return conftest.tiny_build_model(*args)

al_loop.run_active_learning(dataset="toy", data=conftest.make_synthetic_dataset(),
                            build_model=slow_build, config=dict(conftest.LOOP_CONFIG),
                            strategy="entropy", seed=0, results_dir={results!r})
"""


@pytest.mark.slow
def test_run_killed_mid_step_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    script = KILLED_RUN.format(code=str(CODE), tests=str(HERE), results=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    result_path, state_path = al_loop.run_paths(tmp_path, "toy", "entropy", 0)
    try:
        wait_for(lambda: steps_on_disk(result_path) >= 1, 120, "the first step", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    partial = json.loads(result_path.read_text())  # never a partial file: writes are atomic
    assert 1 <= len(partial["steps"]) < LOOP_CONFIG["n_steps"] + 1 and not partial["complete"]
    # What a writer killed inside write_text_atomic leaves behind; the next run removes it.
    stale = [result_path.parent / f".{result_path.name}.dead1234.tmp",
             state_path.parent / f".{state_path.name}.dead5678.tmp"]
    for path in stale:
        path.write_text('{"steps": [')

    resumed = run(tmp_path)
    assert resumed["complete"]
    result_a, state_a = read_run(uninterrupted)
    result_b, state_b = read_run(tmp_path)
    assert strip_timing(result_b["steps"]) == strip_timing(result_a["steps"])
    assert state_b["selected"] == state_a["selected"]
    assert set(result_b) == set(al_loop.RESULT_KEYS)
    assert tmp_files(tmp_path) == []
    assert runfiles.read_result(result_path)[1] == "verified"


def test_killed_between_state_and_result_write_is_accepted_everywhere(uninterrupted, tmp_path):
    # The state (and its checksum) is one step ahead of the result: a valid earlier version.
    result, state = read_run(uninterrupted)
    folder = tmp_path / "toy"
    result_path, state_path = folder / "entropy_seed0.json", folder / "state" / "entropy_seed0.json"
    earlier = {**result, "steps": result["steps"][:2], "complete": False}
    previous = runfiles.save_run(result_path, state_path, earlier,
                                 {"config_hash": "x", "selected": state["selected"][:2]}, None)
    text = json.dumps({**result, "steps": result["steps"][:3]}, indent=1)
    runfiles.write_json_atomic(state_path, {"config_hash": "x", "selected": state["selected"][:3],
                                            "result_sha256": runfiles.sha256_text(text),
                                            "previous_result_sha256": previous})
    assert runfiles.read_result(result_path)[1] == "previous"
    assert len(plot_perf.read_run(result_path)["steps"]) == 2
    loaded = al_loop.load_previous(result_path, state_path, LOOP_CONFIG)
    assert len(loaded[0]["steps"]) == 2 and len(loaded[1]) == 2 and loaded[2] == previous


# --------------------------------------------------------------------------- edited run files
@pytest.fixture
def copied(uninterrupted, tmp_path):
    import shutil
    shutil.copytree(uninterrupted / "toy", tmp_path / "toy")
    return al_loop.run_paths(tmp_path, "toy", "entropy", 0)


def edit(path: Path, change) -> None:
    run_dict = json.loads(path.read_text())
    change(run_dict)
    path.write_text(json.dumps(run_dict, indent=1))


def test_hand_edited_result_is_refused_by_plot_and_resume(copied, tmp_path):
    result_path, state_path = copied
    edit(result_path, lambda r: r["steps"][1].update(macro_f1=0.99))  # still valid JSON and schema
    with pytest.raises(plot_perf.InvalidRunFile, match="modified or truncated") as err:
        plot_perf.read_run(result_path)
    assert str(result_path) in str(err.value)
    with pytest.raises(al_loop.ModifiedRunError, match="--fresh"):
        al_loop.load_previous(result_path, state_path, LOOP_CONFIG)
    with pytest.raises(al_loop.ConfigMismatchError, match="modified or truncated"):
        run(tmp_path)


def test_result_with_steps_cut_off_is_refused(copied):
    result_path, _ = copied
    edit(result_path, lambda r: r.update(steps=r["steps"][:2], complete=False))
    with pytest.raises(plot_perf.InvalidRunFile, match="modified or truncated"):
        plot_perf.read_run(result_path)


def test_truncated_result_is_refused_naming_the_file(copied):
    result_path, _ = copied
    result_path.write_text(result_path.read_text()[:-40])
    with pytest.raises(plot_perf.InvalidRunFile, match="not valid JSON") as err:
        plot_perf.read_run(result_path)
    assert "entropy_seed0.json" in str(err.value)


def test_result_without_its_state_file_is_refused(copied):
    result_path, state_path = copied
    state_path.unlink()
    with pytest.raises(plot_perf.InvalidRunFile, match="state file .* is missing"):
        plot_perf.read_run(result_path)


def test_old_state_without_checksum_is_read_with_a_note(copied, tmp_path, capsys):
    result_path, state_path = copied
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({"config_hash": state["config_hash"], "selected": state["selected"]}))
    notes = []
    assert plot_perf.read_run(result_path, notes)["complete"]
    assert "not verified" in notes[0]
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 0
    assert "entropy_seed0.json: no checksum" in capsys.readouterr().err


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["steps"][0].update(macro_f1="0.9"), "bad macro_f1"),
    (lambda r: r["steps"][0].update(accuracy=1.5), "bad accuracy"),
    (lambda r: r["steps"][2].update(n_labeled=20), "bad n_labeled"),
    (lambda r: r["steps"][1]["labeled_class_counts"].update(N=-1), "bad labeled_class_counts"),
    (lambda r: r["steps"][0].update(train_seconds=None), "bad train_seconds"),
    (lambda r: r.update(seed="0"), "seed should be an int"),
    (lambda r: r.update(complete="yes"), "complete should be a bool"),
    (lambda r: r.update(notes="hand-made"), "unexpected keys ['notes']"),
    (lambda r: r.pop("versions"), "missing keys ['versions']"),
    (lambda r: r.update(complete=False), "complete is False with 4 of 4 steps"),
])
def test_schema_violations_are_named(copied, change, problem):
    result_path, _ = copied
    edit(result_path, change)
    with pytest.raises(plot_perf.InvalidRunFile) as err:
        plot_perf.read_run(result_path)
    assert problem in str(err.value) and str(result_path) in str(err.value)


def test_result_renamed_to_another_run_is_refused(copied):
    result_path, state_path = copied
    other = result_path.with_name("entropy_seed7.json")
    result_path.rename(other)
    state_path.rename(state_path.with_name(other.name))
    with pytest.raises(plot_perf.InvalidRunFile, match="belongs in entropy_seed0.json"):
        plot_perf.read_run(other)


def test_edited_run_is_skipped_by_plot_perf_with_its_name(copied, tmp_path, capsys):
    result_path, _ = copied
    edit(result_path, lambda r: r["steps"][0].update(macro_f1=0.5))
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 1  # the only run: nothing left
    err = capsys.readouterr().err
    assert "skipped invalid run file" in err and "entropy_seed0.json" in err


# --------------------------------------------------------------------------- local backend
def load_killing_once(config, data_dir):
    """Kills its worker process the first time it is called (marker file in ``data_dir``)."""
    marker = Path(data_dir) / "killed_once"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return make_synthetic_dataset()


def toy_tasks(results_dir, data_dir, strategies=("random", "entropy"), seeds=(0,), n_steps=1):
    config = {**LOOP_CONFIG, "n_steps": n_steps}
    return [experiment.RunTask("toy", s, seed, config, str(results_dir), False, str(data_dir))
            for seed in seeds for s in strategies]


@pytest.mark.slow
def test_local_backend_resubmits_the_runs_of_a_lost_worker(tmp_path):
    tasks = toy_tasks(tmp_path / "results", tmp_path)
    outcome = runner.run_grid(tasks, load_killing_once, tiny_build_model, backend="local", jobs=2,
                              threads=1, max_retries=2)
    assert (tmp_path / "killed_once").exists()
    assert outcome.failures == {} and outcome.worker_losses == 1
    assert [r["complete"] for r in outcome.results] == [True, True]
    for task, result in zip(tasks, outcome.results):
        assert result == read_run(tmp_path / "results", task.strategy)[0]
    assert tmp_files(tmp_path) == []


def load_always_killing(config, data_dir):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_local_backend_gives_up_after_its_retries(tmp_path):
    tasks = toy_tasks(tmp_path / "results", tmp_path)  # two runs: two worker processes
    outcome = runner.run_grid(tasks, load_always_killing, tiny_build_model, backend="local", jobs=2,
                              threads=1, max_retries=1)
    assert outcome.worker_losses == 2 and "died 2 times" in outcome.failures[0]
    assert outcome.results == [None, None]
    assert "FAILED toy random seed 0" in "\n".join(runner.summary_lines(tasks, outcome, 1.0))


# --------------------------------------------------------------------------- killed driver
KILLED_DRIVER = """
import sys
sys.path[:0] = [{code!r}, {tests!r}]
import experiment, runner, test_fault_tolerance as t
tasks = t.toy_tasks({results!r}, {marks!r}, strategies=("random", "entropy"))
runner.run_grid(tasks, t.load_sleeping, t.tiny_build_model, backend="local", jobs=2, threads=1)
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
