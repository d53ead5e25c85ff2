"""What the benchmark scripts share: worker processes, dataset plans and side-by-side reports.

``code/benchmark.py``, ``code/bench_training.py`` and ``code/bench_scoring.py`` are scripts;
this module is their common library. It never imports a script: a benchmark script loads a
dataset script (``code/<dataset>.py``, one of :data:`DATASETS`) itself and passes the module
in, and :func:`default_config` / :func:`protocol_of` read the UPPER_CASE hyperparameters of
that page the way :func:`al.cli.main` does.

Every measurement runs in a fresh spawned process (:func:`in_fresh_process`): TensorFlow's
thread settings are per process and fixed once it has started. :func:`configure_process`
sets a worker up either like a protocol run (``threads`` TensorFlow threads, the protocol's
``--threads``, default :data:`al.cli.DEFAULT_THREADS`; deterministic kernels) or like the
published single-process code (TensorFlow's own defaults).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from al import cli, keras_ops, loop, runs
from al.data_common import resolve_repo_path

DATASETS = ("mnist", "mitbih")  # the dataset scripts code/<name>.py the benchmarks know
LABEL_SEED = 0  # np.random.default_rng(LABEL_SEED) draws a benchmark's labeled set
KINDS = ("reference", "ours")


# --------------------------------------------------------------------------- dataset plans
def default_config(script, threads: int = cli.DEFAULT_THREADS) -> dict:
    """The run config a dataset script runs with by default.

    ``script`` is the dataset script's module (or its namespace dict): its UPPER_CASE
    hyperparameters minus the grid keys (``n_seeds``, ``strategies``), plus ``threads``,
    as :func:`al.cli.parse_config` builds it with ``--threads threads``.
    """
    namespace = script if isinstance(script, dict) else vars(script)
    config = {k: v for k, v in cli.hyperparameters(namespace).items() if k not in cli.GRID_KEYS}
    return {**config, "threads": int(threads)}


def protocol_of(script) -> dict:
    """Budget and grid of a dataset script's default protocol.

    Returns ``{"start_size", "batch_size", "n_steps", "n_seeds", "strategies"}``.
    """
    namespace = script if isinstance(script, dict) else vars(script)
    hp = cli.hyperparameters(namespace)
    return {"start_size": hp["start_size"], "batch_size": hp["batch_size"], "n_steps": hp["n_steps"],
            "n_seeds": hp["n_seeds"], "strategies": list(hp["strategies"])}


def final_budget(protocol: dict) -> int:
    """Labels at the end of a protocol run (:func:`al.loop.final_budget`)."""
    return loop.final_budget(protocol)


# --------------------------------------------------------------------------- worker processes
def configure_process(kind: str, threads: int = cli.DEFAULT_THREADS) -> dict:
    """Set this process's TensorFlow up for one kind of measurement; call before TensorFlow runs.

    ``"ours"``: like a protocol worker, :func:`al.keras_ops.configure_tensorflow` with
    ``threads`` (the protocol's ``--threads``; fixed for the process). ``"reference"``:
    nothing set, as the published code did (TensorFlow's default threads, all cores, no
    deterministic kernels); ``threads`` is ignored.

    Returns ``{"threads", "tensorflow", "gpus"}`` to record with the measurements.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tf = keras_ops.import_tensorflow()
    if kind == "ours":
        setting = {"threads": keras_ops.configure_tensorflow(threads)}
    else:
        tf.get_logger().setLevel("ERROR")
        setting = {"threads": "TensorFlow default (all cores)"}
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {**setting, "tensorflow": tf.__version__, "gpus": gpus}


def in_fresh_process(specs: list[dict], worker: Callable[[list[dict]], list[dict]]) -> list[dict]:
    """``worker(specs)`` in a new spawned Python process, so TensorFlow starts from scratch.

    ``worker`` must be picklable by reference: a module-level function of a module the child
    can import, or of the script run as ``__main__`` (spawn re-imports it as ``__mp_main__``).
    A worker process that dies (killed, out of memory, native crash) raises RuntimeError
    naming the measurements.
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(worker, specs).result()
        except BrokenProcessPool:
            which = ", ".join(" ".join(str(s[k]) for k in ("dataset", "kind", "option", "n_labeled")
                                       if k in s) for s in specs)
            raise RuntimeError(f"the worker process measuring {which} died (killed, out of memory, "
                               "or a native crash: see its stderr above); rerun the benchmark") from None


# --------------------------------------------------------------------------- side-by-side reports
def add_side_by_side_arguments(parser: argparse.ArgumentParser, name: str, repeats_help: str) -> None:
    """The run-control options bench_training.py and bench_scoring.py share."""
    parser.add_argument("--threads", type=int, default=cli.DEFAULT_THREADS, metavar="T",
                        help="TensorFlow threads of the worker, as a protocol run's --threads "
                             f"(default {cli.DEFAULT_THREADS})")
    parser.add_argument("--repeats", type=int, default=2, metavar="R", help=repeats_help)
    parser.add_argument("--data-dir", default=None, metavar="DIR")
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help=f"where {name}.md/.json go (default results/; --smoke: a temporary folder)")


def command_line(name: str, argv=None) -> str:
    """How the script ``code/<name>.py`` was called (``argv`` None: this process's arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return f"python code/{name}.py {' '.join(map(shlex.quote, args))}".strip()


def out_folder(name: str, out_dir, smoke: bool):
    """Where a benchmark writes: ``out_dir`` (from the repository), else a temporary folder for
    a smoke run and ``results/`` otherwise."""
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix=f"{name}_smoke_") if smoke else "results"
    return resolve_repo_path(out_dir)


def write_side_by_side(name: str, args, argv, measurements: list[dict],
                       markdown: Callable[[dict], str]) -> dict:
    """Report of a side-by-side benchmark (machine, commit, command, measurements).

    Written atomically to ``<out-dir>/<name>.json`` and ``<name>.md`` (``markdown(report)``);
    with ``args.out_dir`` None, ``--smoke`` writes to a temporary folder, otherwise to
    ``results/``. Every measurement carries ``tensorflow`` and ``gpus``. Returns the report.
    """
    out_dir = out_folder(name, args.out_dir, args.smoke)
    args.out_dir = out_dir
    report = {"command": command_line(name, argv), "cpu_cores": os.cpu_count(), "cpu_model": runs.cpu_model(),
              "tensorflow": measurements[0]["tensorflow"], "gpus": measurements[0]["gpus"],
              "git_commit": runs.git_commit(), "created_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "smoke": args.smoke, "measurements": measurements}
    runs.write_json_atomic(out_dir / f"{name}.json", report)
    runs.write_text_atomic(out_dir / f"{name}.md", markdown(report))
    print(f"wrote {out_dir / (name + '.md')} and {name}.json")
    return report


def side_by_side_header(report: dict, title: str) -> list[str]:
    """Title, command, machine and commit lines of a benchmark's markdown."""
    return [f"# {title}", "",
            f"- Command: `{report['command']}`",
            (f"- Machine: {report['cpu_cores']} CPU cores ({report['cpu_model']}), TensorFlow "
             f"{report['tensorflow']}, GPU: {', '.join(report['gpus']) or 'none'}"),
            f"- Date: {report['created_at']}, code at {report['git_commit']}"]
