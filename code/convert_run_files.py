"""Convert result folders of the old two-file format into one run file per run (format 2).

    python code/convert_run_files.py                 # every results/**/state/ folder
    python code/convert_run_files.py results/mnist   # one folder

The old format kept ``<dataset>/<strategy>_seed<k>.json`` (metrics) and
``<dataset>/state/<same name>`` (the selections and a sha256 of the result). For each pair
this script

* verifies the old checksum: a result that does not match it is **not** converted (the
  script names it and exits non-zero); a state written before checksums existed is
  converted and marked ``"checksum_before_conversion": "none"`` (plot_perf counts these);
  "verified", or "previous" (the old writer was killed between its two writes: the result
  is the one before the state's last selection), otherwise;
* moves each step's selections into its step record (``selected``);
* records what the old files did not: ``format``, the ``provenance`` block with the data's
  origin and hash set to None (not recorded), and the TensorFlow thread count, inferred
  from the folder's ``grid_log.jsonl`` (every step must lie in the time window of a logged
  grid that ran this strategy and seed; threads = cores // min(jobs, runs) as the old runner
  set them). Where that is not certain (a step outside every logged grid, or steps with
  different counts), ``config["threads"]`` is None and the reason is written in
  ``converted.threads_source``; such keys are listed in ``converted.unrecorded_keys``;
* checks the new run file against the schema, writes it atomically with its digest, reads
  it back, then deletes the state file (a result already in the new format with a state
  file left beside it, from an interrupted conversion, only loses the state file); the grid
  log moves to ``<dataset>/grid_log.jsonl``, its lines get the thread count their workers
  ran with, and the empty ``state/`` folder is removed.

Metrics, selections and configs are copied unchanged, so summaries regenerated from the
converted files are the same. Converting a folder twice does nothing the second time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from al import runs
from al.data_common import REPO_ROOT, resolve_repo_path

WINDOW_SLACK_SECONDS = 60  # the old log line was written after the grid's last step


class ConversionError(RuntimeError):
    pass


def old_checksum_status(text: str, result: dict, state: dict) -> str:
    """"verified", "previous" (killed between the two old writes) or "none"; raises if modified."""
    if "result_sha256" not in state:
        return "none"
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest == state["result_sha256"]:
        return "verified"
    if digest == state.get("previous_result_sha256") and len(result["steps"]) == len(state["selected"]) - 1:
        return "previous"
    raise ConversionError("content does not match the sha256 in its state file (modified after the run)")


def grid_threads(line: dict) -> int | None:
    """TensorFlow threads the old runner gave each worker of a logged local grid."""
    backend = line.get("backend", "local") or "local"
    if backend != "local" or not line.get("cpu_cores") or not line.get("jobs"):
        return None
    return max(1, line["cpu_cores"] // max(1, min(line["jobs"], line.get("n_runs") or line["jobs"])))


def infer_threads(result: dict, log: list[dict]) -> tuple[int | None, str]:
    """The run's thread count from the grid log, or None, with how it was found."""
    found = []
    for step in result["steps"]:
        t = step.get("finished_at")
        grids = [line for line in log
                 if t is not None and result["strategy"] in line.get("strategies", [])
                 and result["seed"] in line.get("seeds", [])
                 and line["started_at"] <= t <= line["started_at"] + line["wall_seconds"] + WINDOW_SLACK_SECONDS]
        counts = {grid_threads(line) for line in grids}
        found.append(counts.pop() if len(counts) == 1 else None)
    if None in found:
        missing = [i for i, f in enumerate(found) if f is None]
        return None, (f"unknown: step(s) {missing} finished outside every logged grid of this "
                      "strategy and seed (an interrupted grid is not logged)")
    if len(set(found)) > 1:
        return None, f"mixed: thread counts per step {found}"
    return found[0], "inferred from grid_log.jsonl (cores // min(jobs, runs) of the logged grid)"


def convert_pair(result_path: Path, state_path: Path, log: list[dict]) -> dict:
    text = result_path.read_text()
    result = json.loads(text)
    state = json.loads(state_path.read_text())
    status = old_checksum_status(text, result, state)
    if len(state["selected"]) < len(result["steps"]):
        raise ConversionError(f"{len(state['selected'])} selections for {len(result['steps'])} steps")
    threads, source = infer_threads(result, log)
    config = {**result["config"], "threads": threads}
    steps = [{**step, "selected": [int(i) for i in state["selected"][i]]}
             for i, step in enumerate(result["steps"])]
    return {
        "format": runs.FORMAT, "dataset": result["dataset"], "strategy": result["strategy"],
        "seed": result["seed"], "config": config, "git_commit": result["git_commit"],
        "versions": result["versions"],
        "provenance": {"data": {"origin": None, "sha256": None, "n_train": None, "n_test": None},
                       "cpu_model": None, "threads": threads, "settings": None, "resumed": []},
        "complete": result["complete"], "steps": steps,
        "converted": {"from": "format 1 (result + state/ selections)",
                      "checksum_before_conversion": status,
                      "threads_source": source,
                      "unrecorded_keys": ["threads"] if threads is None else [],
                      "converted_by_commit": runs.git_commit()},
        "sha256": "",
    }


def upgrade_grid_log(path: Path) -> None:
    """Give old grid-log lines the thread count their workers ran with (top level and config).

    The benchmark compares a line's config with the script's, which now holds ``threads``.
    """
    lines = runs.read_jsonl(path)
    if not lines or all("threads" in line for line in lines):
        return
    for line in lines:
        if "threads" not in line:
            line["threads"] = grid_threads(line)
            line["config"] = {**line["config"], "threads": line["threads"]}
    runs.write_text_atomic(path, "".join(json.dumps(line) + "\n" for line in lines))


def convert_folder(folder: Path) -> tuple[int, list[str]]:
    """Convert every pair in ``folder``; returns (files converted, problems)."""
    state_dir = folder / "state"
    log_path = state_dir / "grid_log.jsonl"
    log = runs.read_jsonl(log_path)
    converted, problems = 0, []
    for result_path in sorted(folder.glob("*_seed*.json")):
        state_path = state_dir / result_path.name
        if not state_path.exists():
            continue  # already converted (or never had a state file: left for read_run to refuse)
        if json.loads(result_path.read_text()).get("format") == runs.FORMAT:
            state_path.unlink()  # converted by an interrupted earlier call: only the state was left
            continue
        try:
            run = convert_pair(result_path, state_path, log)
            run["sha256"] = runs.content_digest(run)
            invalid = runs.schema_problems(run)
            if invalid:  # checked before the old result is replaced
                raise ConversionError("; ".join(invalid))
        except (ConversionError, json.JSONDecodeError, KeyError, TypeError) as err:
            problems.append(f"{result_path}: not converted ({err})")
            continue
        runs.save_run(result_path, run)
        runs.read_run(result_path)  # the new file must read back
        state_path.unlink()
        converted += 1
    if log_path.exists() and not problems:
        target = folder / "grid_log.jsonl"
        old = target.read_text() if target.exists() else ""
        runs.write_text_atomic(target, log_path.read_text() + old)
        log_path.unlink()
    upgrade_grid_log(folder / "grid_log.jsonl")
    if state_dir.is_dir() and not any(state_dir.iterdir()):
        state_dir.rmdir()
    return converted, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", help="result folders (default: every results/**/state/ parent)")
    args = parser.parse_args(argv)
    folders = ([resolve_repo_path(f) for f in args.folders] if args.folders
               else sorted({p.parent for p in (REPO_ROOT / "results").rglob("state") if p.is_dir()}
                           | {p.parent for p in (REPO_ROOT / "results").rglob("grid_log.jsonl")}))
    failed = False
    for folder in folders:
        n, problems = convert_folder(folder)
        print(f"{folder}: converted {n} run file(s)")
        for problem in problems:
            print(f"  error: {problem}", file=sys.stderr)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
