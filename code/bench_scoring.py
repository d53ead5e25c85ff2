"""Selection cost side by side: every strategy picking one batch from a dataset's pool.

Run by hand (not in CI)::

    python code/bench_scoring.py                                  # both datasets, all strategies
    python code/bench_scoring.py --datasets mitbih --strategies bald,entropy_mc
    python code/bench_scoring.py --smoke                          # seconds; tests the script only

Training and evaluation cost the same for every strategy; what a strategy adds to a step is
its ``select`` call on the unlabeled pool. For each dataset this builds the script's model
(untrained: the cost of a forward pass does not depend on the weights), labels a random set
of the protocol's final budget (``default_rng(LABEL_SEED)``), and times ``select`` of one
batch on the rest of the training set (or its first ``--pool-size`` samples), in one spawned
process configured like a protocol worker (``cpu_count // jobs`` TensorFlow threads), after
one untimed warm-up call per strategy (TensorFlow's one-time start-up; graph tracing is paid
on every call, as in a protocol step). ``bald`` and ``entropy_mc`` are also timed with their
MC passes run layer by layer in eager mode (``graph = False``), the way this project ran them
before; the table says whether both modes picked the same batch. Writes
``<out-dir>/bench_scoring.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import time

import numpy as np

import benchmark

SMOKE_POOL = 512
EAGER = " (eager MC passes)"


def variants(names: list[str]) -> list[str]:
    """The strategies to time, each MC-dropout one followed by its eager variant."""
    import strategies
    out = []
    for name in names:
        out.append(name)
        if issubclass(strategies.STRATEGIES[name], strategies.MCDropoutStrategy):
            out.append(name + EAGER)
    return out


def make_strategy(variant: str):
    import strategies
    strategy = strategies.get_strategy(variant.removesuffix(EAGER))
    if variant.endswith(EAGER):
        strategy.graph = False
    return strategy


def measure_dataset(specs: list[dict]) -> list[dict]:
    """Worker entry point: every variant of one dataset (``specs`` holds one spec)."""
    import keras
    faulthandler.enable()
    spec = specs[0]
    setting = benchmark.configure_process("ours", spec["jobs"], n_runs=1)  # like a protocol worker
    module = benchmark.script_module(spec["dataset"])
    config = benchmark.default_config(module)
    protocol = benchmark.protocol_of(module)
    data = module.load_data(config, spec["data_dir"])
    n_labeled = protocol["start_size"] + protocol["n_steps"] * protocol["batch_size"]
    labeled = np.random.default_rng(benchmark.LABEL_SEED).choice(len(data.x_train), n_labeled,
                                                                  replace=False)
    pool = np.setdiff1d(np.arange(len(data.x_train)), labeled)[:spec["pool_size"] or None]
    x_pool, x_labeled = data.x_train[pool], data.x_train[labeled]
    keras.utils.set_random_seed(benchmark.LABEL_SEED)
    model = module.build_model(config, data.x_train.shape[1:], len(data.class_names))
    rows = []
    for variant in spec["variants"]:
        strategy = make_strategy(variant)
        seconds = []
        for repeat in range(1 + spec["repeats"]):  # the first call is an untimed warm-up
            t0 = time.perf_counter()  # the same rng every call: the same batch every call
            picked = strategy.select(model, x_pool, protocol["batch_size"], np.random.default_rng(0),
                                     x_labeled=x_labeled)
            if repeat:
                seconds.append(time.perf_counter() - t0)
        rows.append({"dataset": spec["dataset"], "strategy": variant, "pool": len(pool),
                     "labeled": n_labeled, "batch_size": protocol["batch_size"],
                     "threads": setting["threads"], "select_seconds": min(seconds),
                     "select_seconds_repeats": seconds, "picked": sorted(int(i) for i in picked),
                     "tensorflow": setting["tensorflow"], "gpus": setting["gpus"]})
    return rows


def markdown(report: dict) -> str:
    lines = benchmark.side_by_side_header(report, "Selection cost per step: each strategy picking one batch")
    lines += [("- Seconds: the fastest of the repeats (all in the JSON), after one untimed call. "
              "Same batch: whether the eager MC passes picked the batch the graph passes picked."), "",
             "| dataset | pool | labeled | strategy | threads | select s | time vs entropy | same batch |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    rows = report["measurements"]
    for m in rows:
        base = next((b for b in rows if b["dataset"] == m["dataset"] and b["strategy"] == "entropy"), None)
        vs = f"{m['select_seconds'] / base['select_seconds']:.2f}x" if base else "-"
        graph = next((g for g in rows if g["dataset"] == m["dataset"]
                      and g["strategy"] == m["strategy"].removesuffix(EAGER)), m)
        same = ("yes" if graph["picked"] == m["picked"] else "no") if graph is not m else ""
        lines.append(f"| {m['dataset']} | {m['pool']} | {m['labeled']} | {m['strategy']} | "
                     f"{m['threads']} | {m['select_seconds']:.2f} | {vs} | {same} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    import strategies
    names = list(strategies.STRATEGIES)
    parser = argparse.ArgumentParser(prog="python code/bench_scoring.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(benchmark.DATASETS), metavar="A,B")
    parser.add_argument("--strategies", default=",".join(names), metavar="A,B",
                        help=f"strategies to time (default all: {', '.join(names)})")
    parser.add_argument("--pool-size", type=int, default=0, metavar="N",
                        help="time on the first N pool samples (default 0: the whole pool)")
    benchmark.add_side_by_side_arguments(
        parser, "bench_scoring", "timed calls per strategy; the table shows the fastest (default 2)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a pool of {SMOKE_POOL}, one repeat: tests the script only")
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.strategies = list(dict.fromkeys(s for s in args.strategies.split(",") if s))
    bad = sorted(set(args.datasets) - set(benchmark.DATASETS)) + sorted(set(args.strategies) - set(names))
    if bad or not args.datasets or not args.strategies:
        parser.error(f"unknown or missing datasets or strategies {bad}; datasets: "
                     f"{', '.join(benchmark.DATASETS)}; strategies: {', '.join(names)}")
    batch = max(benchmark.protocol_of(benchmark.script_module(d))["batch_size"] for d in args.datasets)
    if args.jobs < 1 or args.repeats < 1 or not (args.pool_size == 0 or args.pool_size >= batch):
        parser.error(f"--jobs and --repeats must be >= 1, --pool-size 0 (whole pool) or at least "
                     f"the batch size ({batch})")
    if args.smoke:
        args.pool_size, args.repeats = SMOKE_POOL, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    measurements = []
    for dataset in args.datasets:
        spec = {"dataset": dataset, "variants": variants(args.strategies), "jobs": args.jobs,
                "repeats": args.repeats, "pool_size": args.pool_size, "data_dir": args.data_dir}
        rows = benchmark.in_fresh_process([spec], measure_dataset)
        for m in rows:
            print(f"{dataset:>6} {m['strategy']:>32}: {m['select_seconds']:7.2f} s", flush=True)
        measurements += rows
    return benchmark.write_side_by_side("bench_scoring", args, argv, measurements, markdown)

if __name__ == "__main__":
    main()
