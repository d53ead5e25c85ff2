"""Training-speed options side by side: one step's training at the protocol's final budget.

Run by hand (not in CI)::

    python code/bench_training.py                       # both datasets, every option
    python code/bench_training.py --datasets mitbih --options default,xla
    python code/bench_training.py --smoke               # seconds; tests the script only

Training is most of a protocol step (``results/benchmark.md``), so this measures what the
usual CPU levers do to it: each option trains the dataset script's model (``code/<dataset>.py``,
loaded as a module) on the same labeled set (``default_rng(al.bench.LABEL_SEED)``, the final
budget) in its own spawned process configured like a protocol worker (``--threads``
TensorFlow threads, default 1 as the protocol's ``--threads``; ``threads2x`` doubles them),
after an untimed tiny fit, and reports fit seconds (graph tracing included: every step builds
a fresh model). It reports no F1: the quality of a training choice is measured by
``code/recipe_search.py`` on the development split with several seeds, never on the test set.
Writes ``<out-dir>/bench_training.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from al import bench
from al.loop import class_weights


@dataclass(frozen=True)
class Option:
    """One way to train: what it changes, config changes, compile arguments, dtype policy, threads."""
    what: str
    config: Callable[[dict], dict] = lambda c: {}
    compile: dict = field(default_factory=dict)
    policy: str | None = None
    threads_factor: int = 1
    needs: tuple = ()   # config keys the dataset must have for the option to apply
    deterministic: bool = True  # the protocol enables TensorFlow's op determinism


def halve(key: str) -> Callable[[dict], dict]:
    return lambda c: {key: max(1, c[key] // 2)}


OPTIONS = {
    "default": Option("the protocol's own settings"),
    # Keras silently ignores jit_compile while op determinism is on, so XLA runs without it.
    "xla": Option("jit_compile=True (XLA; op determinism off, else Keras ignores it)",
                  compile={"jit_compile": True}, deterministic=False),
    "bf16": Option("mixed_bfloat16 policy (AMX/AVX-512 bf16 where the CPU has it)", policy="mixed_bfloat16"),
    "steps16": Option("steps_per_execution=16 (fewer Python round trips)",
                      compile={"steps_per_execution": 16}),
    "batch2x": Option("twice the fit batch size (half the updates)",
                      config=lambda c: {"fit_batch_size": 2 * c["fit_batch_size"]}),
    "epochs_half": Option("half the epochs (half the updates)", config=halve("epochs")),
    "no_batchnorm": Option("BatchNormalization off (where the model has it)",
                           config=lambda c: {"batch_norm": 0}, needs=("batch_norm",)),
    "threads2x": Option("twice the TensorFlow threads of --threads", threads_factor=2),
}
SMOKE = {"labeled": 64, "epochs": 1}


def option_config(config: dict, name: str) -> dict:
    """The dataset config with an option's changes applied."""
    return {**config, **OPTIONS[name].config(config)}


def applies(name: str, config: dict) -> bool:
    return all(key in config for key in OPTIONS[name].needs)


def fit_once(module, config: dict, option: str, x, y, n_classes: int):
    """Build the script's model as the loop does, recompile with the option, fit; return (model, s)."""
    import keras

    compile_overrides, policy = OPTIONS[option].compile, OPTIONS[option].policy
    t0 = time.perf_counter()
    keras.utils.set_random_seed(bench.LABEL_SEED)
    keras.backend.clear_session(free_memory=False)  # also resets the dtype policy: set it after
    keras.mixed_precision.set_global_policy(policy or "float32")
    model = module.build_model(config, x.shape[1:], n_classes)
    if compile_overrides:
        optimizer = type(model.optimizer).from_config(model.optimizer.get_config())
        model.compile(optimizer=optimizer, loss=model.loss, **compile_overrides)
    model.fit(x, y, epochs=config["epochs"], batch_size=config["fit_batch_size"], verbose=0,
              class_weight=class_weights(y, n_classes, config.get("class_weight")))
    return model, time.perf_counter() - t0


def measure_option(specs: list[dict]) -> list[dict]:
    """Worker entry point: one option of one dataset (``specs`` holds one spec).

    TensorFlow runs with the spec's ``threads`` (times the option's ``threads_factor``), as a
    protocol worker with that ``--threads``.
    """
    faulthandler.enable()  # a native crash (TensorFlow) then leaves a traceback on stderr
    spec = specs[0]
    threads = spec["threads"] * OPTIONS[spec["option"]].threads_factor
    setting = bench.configure_process("ours", threads)
    if not OPTIONS[spec["option"]].deterministic:
        from tensorflow.python.framework import config as tf_config  # no public switch back
        tf_config.disable_op_determinism()
    module = importlib.import_module(spec["dataset"])  # the dataset script code/<dataset>.py
    config = bench.default_config(module, threads)
    data = module.load_data(config, spec["data_dir"])
    if spec["smoke"]:
        config["epochs"] = SMOKE["epochs"]
    config = option_config(config, spec["option"])
    n_classes = len(data.class_names)
    labeled = np.random.default_rng(bench.LABEL_SEED).choice(len(data.x_train), spec["n_labeled"],
                                                              replace=False)
    x, y = data.x_train[labeled], data.y_train[labeled]
    fit_once(module, {**config, "epochs": 1}, spec["option"], x[:64], y[:64], n_classes)  # warm-up
    repeats = []
    for _ in range(spec["repeats"]):  # the same seed each time: the same computation
        _, seconds = fit_once(module, config, spec["option"], x, y, n_classes)
        repeats.append(seconds)
    return [{**spec, "fit_seconds": min(repeats), "fit_seconds_repeats": repeats,
             "epochs": config["epochs"], "fit_batch_size": config["fit_batch_size"], **setting}]


def markdown(report: dict) -> str:
    lines = bench.side_by_side_header(report, "Training-speed options: one training at the final budget")
    lines += ["- Fit seconds: the fastest of the repeats (all listed in the JSON); they include "
             "building the model and tracing its graph, as every step trains a fresh model. "
             "No F1 here: quality is measured on the development split by code/recipe_search.py.", "",
             "| dataset | labels | option | what it changes | threads | epochs | fit batch | fit s | time vs default |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in report["measurements"]:
        base = next(b for b in report["measurements"]
                    if b["dataset"] == m["dataset"] and b["option"] == "default")
        lines.append(f"| {m['dataset']} | {m['n_labeled']} | {m['option']} | {OPTIONS[m['option']].what} | "
                     f"{m['threads']} | {m['epochs']} | {m['fit_batch_size']} | {m['fit_seconds']:.1f} | "
                     f"{m['fit_seconds'] / base['fit_seconds']:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python code/bench_training.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(bench.DATASETS), metavar="A,B")
    parser.add_argument("--options", default=",".join(OPTIONS), metavar="A,B",
                        help=f"options to time (default all: {', '.join(OPTIONS)}); default is always included")
    bench.add_side_by_side_arguments(
        parser, "bench_training", "fits per option (same seed); the table shows the fastest (default 2)")
    parser.add_argument("--smoke", action="store_true", help="64 labels, 1 epoch: tests the script only")
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.options = list(dict.fromkeys(["default"] + [o for o in args.options.split(",") if o]))
    bad = sorted(set(args.datasets) - set(bench.DATASETS)) + sorted(set(args.options) - set(OPTIONS))
    if bad or not args.datasets:
        parser.error(f"unknown datasets or options {bad}; datasets: {', '.join(bench.DATASETS)}; "
                     f"options: {', '.join(OPTIONS)}")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    measurements = []
    for dataset in args.datasets:
        module = importlib.import_module(dataset)  # the dataset script code/<dataset>.py
        final = bench.final_budget(bench.protocol_of(module))
        for option in args.options:
            if not applies(option, bench.default_config(module, args.threads)):
                print(f"{dataset:>6} {option:>11}: skipped, the model has no {OPTIONS[option].needs}")
                continue
            spec = {"dataset": dataset, "option": option, "threads": args.threads, "smoke": args.smoke,
                    "repeats": args.repeats,
                    "n_labeled": SMOKE["labeled"] if args.smoke else final, "data_dir": args.data_dir}
            m = bench.in_fresh_process([spec], measure_option)[0]
            print(f"{dataset:>6} {option:>11}: fit {m['fit_seconds']:.1f} s",
                  flush=True)
            measurements.append(m)
    return bench.write_side_by_side("bench_training", args, argv, measurements, markdown)


if __name__ == "__main__":
    main()
