"""Run files: one JSON per run (strategy x seed), written atomically, verified when read.

``<results>/<dataset>/<strategy>_seed<k>.json`` holds everything about a run: its config,
provenance (code commit, library versions, data origin and content hash, CPU model,
threads and every other setting that changes numbers) and one record per completed step,
including the step's ``selected`` dataset indices, so a run resumes from its own file.

The file carries ``sha256``, a digest of all its other content (canonical JSON), so a
hand-edited or truncated file is refused by resume, by the pre-flight check and by
``plot_perf.py``: :func:`read_run` is the one reader all three use. Each step replaces the
whole file with one atomic write (:func:`write_bytes_atomic`), so an interrupted run loses
at most the step in progress and a reader never sees half a file.

Files converted from the earlier two-file format (result + ``state/`` selections) carry
``"converted"``, which records whether the old checksum verified them (see
``code/convert_run_files.py``). This module imports nothing heavy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import platform
import secrets
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from al.data_common import REPO_ROOT

FORMAT = 2
RESULT_KEYS = ("format", "dataset", "strategy", "seed", "config", "git_commit", "versions",
               "provenance", "complete", "steps", "sha256")
OPTIONAL_RESULT_KEYS = ("converted",)
STEP_KEYS = ("step", "n_labeled", "macro_f1", "accuracy", "per_class_f1", "labeled_class_counts",
             "train_seconds", "score_seconds", "eval_seconds", "selected")
OPTIONAL_STEP_KEYS = ("finished_at", "stop_set_predictions", "stop_set_mean_entropy", "stop_set_max_entropy",
                      "confusion_matrix")
TIMING_KEYS = ("train_seconds", "score_seconds", "eval_seconds", "finished_at")


class RunFileError(ValueError):
    """A run file is unreadable, malformed, or its content does not match its digest."""


# --------------------------------------------------------------------------- atomic writes
def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file.

    Temporary file in the same folder (created with mode 0666 minus the process umask, as
    ``open`` would, so results stay shareable without touching the umask), fsync, rename
    over ``path``, fsync of the folder. A writer killed at any point leaves either the old
    file or the new one, plus at most a ``.<name>.*.tmp`` that :func:`remove_stale_tmp` clears.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj) -> None:
    """Serialize first (a TypeError leaves the old file alone), then write atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1))


def append_line_atomic(path: Path, line: str) -> None:
    """Append one line to a small log by rewriting it atomically (one writer at a time)."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text_atomic(path, old + line.rstrip("\n") + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of a log such as ``grid_log.jsonl``; unreadable lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) a killed writer of ``path`` left behind.

    Only call this from the one process that writes ``path``: a live writer's temporary file
    would be deleted from under it.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


# --------------------------------------------------------------------------- provenance
@lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the code that produced a result; ``-dirty`` if ``code/`` has local edits."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "code")
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=1)
def library_versions() -> dict:
    import keras
    import sklearn
    import tensorflow as tf
    return {"python": platform.python_version(), "numpy": np.__version__,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "scikit-learn": sklearn.__version__}


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo (Linux), else the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_path(results_dir: Path, dataset: str, strategy: str, seed: int) -> Path:
    return Path(results_dir) / dataset / f"{strategy}_seed{seed}.json"


# --------------------------------------------------------------------------- compact arrays
def encode_uint8(values) -> str:
    """Small non-negative integers (class indices) as a base64 string of uint8."""
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("encode_uint8 takes integers in 0..255")
    return base64.b64encode(values.astype(np.uint8).tobytes()).decode("ascii")


def decode_uint8(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).astype(np.int64)


# --------------------------------------------------------------------------- digest
def content_digest(run: dict) -> str:
    """sha256 of the canonical JSON of everything in ``run`` except its ``sha256`` field."""
    body = {k: v for k, v in run.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_run(path: Path, run: dict) -> None:
    """Stamp ``run`` with its digest and write it atomically (one write per step)."""
    run["sha256"] = content_digest(run)
    write_json_atomic(path, run)


# --------------------------------------------------------------------------- checking
def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _step_problems(i: int, step, previous_n: int, empty_start: bool = False) -> list[str]:
    """What is wrong with step ``i``; ``empty_start``: the run's data has base samples, so its
    first step may hold no selected samples (start_size 0)."""
    may_be_empty = empty_start and i == 0
    if not isinstance(step, dict):
        return [f"step {i} is malformed (not an object)"]
    lost = [k for k in STEP_KEYS if k not in step]
    if lost or step.get("step") != i:
        return [f"step {i} is malformed (missing {lost} or out of order)"]
    unknown = sorted(set(step) - set(STEP_KEYS) - set(OPTIONAL_STEP_KEYS))
    bad = [f"unexpected keys {unknown}"] if unknown else []
    if not _integer(step["n_labeled"]) or step["n_labeled"] < (0 if may_be_empty else previous_n + 1):
        bad.append("n_labeled (a growing positive int)")
    for key in ("macro_f1", "accuracy"):
        if not (_number(step[key]) and 0 <= step[key] <= 1):
            bad.append(f"{key} (a number in [0, 1])")
    f1 = step["per_class_f1"]
    if not (isinstance(f1, dict) and f1 and all(_number(v) and 0 <= v <= 1 for v in f1.values())):
        bad.append("per_class_f1 (class -> number in [0, 1])")
    counts = step["labeled_class_counts"]
    if not (isinstance(counts, dict) and all(_integer(v) and v >= 0 for v in counts.values())
            and sum(counts.values()) == step["n_labeled"]):
        bad.append("labeled_class_counts (class -> count, summing to n_labeled)")
    for key in TIMING_KEYS:
        if (key in step or key != "finished_at") and not (_number(step.get(key)) and step[key] >= 0):
            bad.append(f"{key} (a number >= 0)")
    selected = step["selected"]
    if not (isinstance(selected, list) and (selected or may_be_empty) and all(_integer(v) and v >= 0 for v in selected)):
        bad.append("selected (a non-empty list of dataset indices)")
    if "stop_set_predictions" in step and not isinstance(step["stop_set_predictions"], str):
        bad.append("stop_set_predictions (a base64 string)")
    for key in ("stop_set_mean_entropy", "stop_set_max_entropy"):
        if key in step and not (_number(step[key]) and step[key] >= 0):
            bad.append(f"{key} (a number >= 0)")
    if "confusion_matrix" in step:
        matrix, n = step["confusion_matrix"], len(f1) if isinstance(f1, dict) else -1
        if not (isinstance(matrix, list) and len(matrix) == n and all(
                isinstance(row, list) and len(row) == n and all(_integer(v) and v >= 0 for v in row)
                for row in matrix)):
            bad.append("confusion_matrix (classes x classes counts, rows true, columns predicted)")
    return [f"step {i} is malformed (bad {', '.join(bad)})"] if bad else []


def schema_problems(run) -> list[str]:
    """What is wrong with a run dict's structure and field types (empty list: nothing)."""
    if not isinstance(run, dict):
        return [f"top level is a {type(run).__name__}, not an object"]
    problems = []
    missing = [k for k in RESULT_KEYS if k not in run]
    extra = sorted(set(run) - set(RESULT_KEYS) - set(OPTIONAL_RESULT_KEYS))
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    types = {"dataset": str, "strategy": str, "config": dict, "git_commit": str, "versions": dict,
             "provenance": dict, "complete": bool, "steps": list, "sha256": str}
    for key, kind in types.items():
        if key in run and not isinstance(run[key], kind):
            problems.append(f"{key} should be a {kind.__name__}, got {type(run[key]).__name__}")
    for key in ("seed", "format"):
        if key in run and not _integer(run[key]):
            problems.append(f"{key} should be an int, got {run[key]!r}")
    if problems:
        return problems
    if run["format"] != FORMAT:
        return [f"run-file format {run['format']}, this code reads format {FORMAT}"]
    if not isinstance(run["provenance"].get("data"), dict):
        return ["provenance.data should be an object (origin, sha256)"]
    previous_n, seen = 0, set()
    empty_start = "n_base" in run["provenance"]["data"]
    for i, step in enumerate(run["steps"]):
        step_problems = _step_problems(i, step, previous_n, empty_start)
        problems += step_problems
        if step_problems:
            continue
        previous_n = step["n_labeled"]
        if len(set(step["selected"]) | seen) != len(seen) + len(step["selected"]):
            problems.append(f"step {i} selects samples twice (a dataset index repeats)")
        seen.update(step["selected"])
        if len(seen) != step["n_labeled"]:
            problems.append(f"step {i}: n_labeled {step['n_labeled']} but {len(seen)} samples selected")
    n_steps = run["config"].get("n_steps")
    if _integer(n_steps) and not problems:
        if len(run["steps"]) > n_steps + 1:
            problems.append(f"{len(run['steps'])} steps but config n_steps is {n_steps}")
        elif run["complete"] != (len(run["steps"]) == n_steps + 1):
            problems.append(f"complete is {run['complete']} with {len(run['steps'])} of "
                            f"{n_steps + 1} steps")
    return problems


def read_run(path: Path) -> dict:
    """Load, validate and verify a run file; the one reader of resume, pre-flight and plots.

    Raises RunFileError naming the file and the problem: unreadable, not JSON, schema
    violation, a digest that does not match the content (edited or truncated after the run
    wrote it), or a file name that does not match its strategy and seed.
    """
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"{path}: not valid JSON ({err}); it is truncated or corrupt. "
                           "Delete it or rerun that run with --fresh.") from None
    if isinstance(run, dict) and "format" not in run and "sha256" not in run and "steps" in run:
        raise RunFileError(f"{path}: a run file of the old two-file format (result + state/); "
                           "convert the folder once with python code/convert_run_files.py DIR.")
    problems = schema_problems(run)
    if problems:
        raise RunFileError(f"{path}: {'; '.join(problems)}")
    if content_digest(run) != run["sha256"]:
        raise RunFileError(
            f"{path}: content does not match its sha256; the file was modified or truncated after "
            "the run wrote it. Restore it, delete it, or rerun that run with --fresh.")
    expected = f"{run['strategy']}_seed{run['seed']}.json"
    if path.name != expected:
        raise RunFileError(f"{path}: holds {run['strategy']} seed {run['seed']}, which belongs in "
                           f"{expected}; the file was renamed or copied over another run.")
    return run


def run_files(folder: Path) -> list[Path]:
    """The run files of a results folder, sorted (none if the folder does not exist)."""
    folder = Path(folder)
    return sorted(folder.glob("*_seed*.json")) if folder.is_dir() else []


# --------------------------------------------------------------------------- comparing
# Hyperparameters added after run files were first written, each with the value that does
# what the code did before the key existed: a run file without the key ran with that value.
LATER_KEYS = {"rr_features": 0, "evaluate_on": "test", "batch_sizes": []}


def differing_keys(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between config ``old`` (on disk) and ``new``; a key of
    ``LATER_KEYS`` that ``old`` lacks counts as its old-behaviour value."""
    def value(config, k):
        return config.get(k, LATER_KEYS.get(k))
    return [k for k in sorted(set(old) | set(new)) if value(old, k) != value(new, k)]


def config_differences(old: dict, new: dict, keys: list[str] | None = None) -> list[str]:
    """``key: old on disk vs new now`` for every hyperparameter that differs (or of ``keys``)."""
    return [f"{k}: {old.get(k)!r} on disk vs {new.get(k)!r} now"
            for k in (differing_keys(old, new) if keys is None else keys)]


def data_difference(run: dict, data_provenance: dict) -> str | None:
    """Why ``run`` was made on other data than ``data_provenance`` describes, or None.

    A converted run that did not record its data (``sha256`` None) is not compared.
    """
    recorded = run["provenance"].get("data", {})
    if recorded.get("sha256") is None or recorded.get("sha256") == data_provenance["sha256"]:
        return None
    return (f"data {recorded.get('origin')!r} (sha256 {recorded['sha256'][:12]}) on disk vs "
            f"{data_provenance['origin']!r} (sha256 {data_provenance['sha256'][:12]}) now")
