"""Run files on disk: atomic writes, the result schema, and checksums that catch edited files.

A run is two files: the result ``<results>/<dataset>/<strategy>_seed<k>.json`` (read by
``plot_perf``) and its state ``<results>/<dataset>/state/<strategy>_seed<k>.json`` (the
selections, for resuming). After every step the state is written first, then the result,
each atomically (temporary file + ``os.replace``). The state records the sha256 of the
result text about to be written (``result_sha256``) and of the result it replaces
(``previous_result_sha256``), so:

* a result file that matches ``result_sha256`` is the one the loop wrote;
* one that matches ``previous_result_sha256`` and holds one step less than the state's
  selections is the previous version: the writer was killed between the two writes;
* anything else was modified or truncated after it was written, and is refused.

State files written before checksums existed (no ``result_sha256``) cannot be verified;
they are accepted as ``unverified`` (plot_perf says so). This module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

RESULT_KEYS = ("dataset", "strategy", "seed", "config", "git_commit", "versions", "complete", "steps")
STEP_KEYS = ("step", "n_labeled", "macro_f1", "accuracy", "per_class_f1", "labeled_class_counts",
             "train_seconds", "score_seconds", "eval_seconds")
TIMING_KEYS = ("train_seconds", "score_seconds", "eval_seconds", "finished_at")


class RunFileError(ValueError):
    """A run file is unreadable, malformed, or does not match the checksum in its state file."""


# --------------------------------------------------------------------------- writing
def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers never see a partial file, even if killed mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    """Serialize first (a TypeError leaves the old file alone), then write atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1))


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


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def save_run(result_path: Path, state_path: Path, result: dict, state: dict,
             previous_sha256: str | None) -> str:
    """Write the state (with the result's checksum), then the result; return the checksum.

    ``previous_sha256`` is the checksum of the result file now on disk (None if there is
    none), so a reader can tell "killed between the two writes" from "edited by hand".
    """
    text = json.dumps(result, indent=1)  # exactly the bytes that will be on disk
    digest = sha256_text(text)
    write_json_atomic(state_path, {**state, "result_sha256": digest,
                                   "previous_result_sha256": previous_sha256})
    write_text_atomic(result_path, text)
    return digest


# --------------------------------------------------------------------------- checking
def verify_checksum(result_path: Path, state_path: Path, text: str, result: dict) -> tuple[str, dict]:
    """Check ``text`` (the result file's content) against the state file.

    Returns ``(status, state)`` with status ``"verified"``, ``"previous"`` (the writer was
    killed after the state was written and before the result was) or ``"unverified"`` (a
    state file from before checksums). Raises RunFileError otherwise.
    """
    try:
        state = json.loads(Path(state_path).read_text())
    except FileNotFoundError:
        raise RunFileError(
            f"{result_path}: its state file {state_path} is missing, so the result cannot be "
            "verified; restore the state folder from the same run, or rerun with --fresh.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"{result_path}: its state file {state_path} is unreadable ({err}); "
                           "rerun with --fresh.") from None
    if not isinstance(state, dict) or not isinstance(state.get("selected"), list):
        raise RunFileError(f"{result_path}: its state file {state_path} is malformed; rerun with --fresh.")
    if "result_sha256" not in state:
        return "unverified", state
    digest = sha256_text(text)
    if digest == state["result_sha256"]:
        return "verified", state
    n_steps = len(result.get("steps", [])) if isinstance(result, dict) else -1
    if digest == state.get("previous_result_sha256") and n_steps == len(state["selected"]) - 1:
        return "previous", state
    raise RunFileError(
        f"{result_path}: content does not match the sha256 recorded in {state_path}; the file "
        "was modified or truncated after the run wrote it. Restore it, delete it, or rerun that "
        "run with --fresh.")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def schema_problems(run) -> list[str]:
    """What is wrong with a result dict's structure and field types (empty list: nothing)."""
    if not isinstance(run, dict):
        return [f"top level is a {type(run).__name__}, not an object"]
    problems = []
    missing = [k for k in RESULT_KEYS if k not in run]
    extra = sorted(set(run) - set(RESULT_KEYS))
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    types = {"dataset": str, "strategy": str, "config": dict, "git_commit": str, "versions": dict,
             "complete": bool, "steps": list}
    for key, kind in types.items():
        if key in run and not isinstance(run[key], kind):
            problems.append(f"{key} should be a {kind.__name__}, got {type(run[key]).__name__}")
    if "seed" in run and not _integer(run["seed"]):
        problems.append(f"seed should be an int, got {run['seed']!r}")
    if problems or not isinstance(run.get("steps"), list):
        return problems
    previous_n = 0
    for i, step in enumerate(run["steps"]):
        if not isinstance(step, dict):
            problems.append(f"step {i} is malformed (not an object)")
            continue
        lost = [k for k in STEP_KEYS if k not in step]
        if lost or step.get("step") != i:
            problems.append(f"step {i} is malformed (missing {lost} or out of order)")
            continue
        bad = []
        if not _integer(step["n_labeled"]) or step["n_labeled"] <= previous_n:
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
        if bad:
            problems.append(f"step {i} is malformed (bad {', '.join(bad)})")
        if _integer(step["n_labeled"]):
            previous_n = step["n_labeled"]
    n_steps = run["config"].get("n_steps")
    if _integer(n_steps) and not problems:
        if len(run["steps"]) > n_steps + 1:
            problems.append(f"{len(run['steps'])} steps but config n_steps is {n_steps}")
        elif run["complete"] != (len(run["steps"]) == n_steps + 1):
            problems.append(f"complete is {run['complete']} with {len(run['steps'])} of "
                            f"{n_steps + 1} steps")
    return problems


def state_path_for(result_path: Path) -> Path:
    result_path = Path(result_path)
    return result_path.parent / "state" / result_path.name


def read_result(result_path: Path, state_path: Path | None = None) -> tuple[dict, str, dict | None]:
    """Load, validate and verify a result file: ``(result, status, state)``.

    ``status`` is as in :func:`verify_checksum`. Raises RunFileError naming the file and the
    problem: unreadable, not JSON, schema violation, or checksum mismatch.
    """
    result_path = Path(result_path)
    state_path = state_path_for(result_path) if state_path is None else Path(state_path)
    try:
        text = result_path.read_text()
        run = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"{result_path}: not valid JSON ({err}); it is truncated or corrupt. "
                           "Delete it or rerun that run with --fresh.") from None
    problems = schema_problems(run)
    if problems:
        raise RunFileError(f"{result_path}: {'; '.join(problems)}")
    status, state = verify_checksum(result_path, state_path, text, run)
    return run, status, state
