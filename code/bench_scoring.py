"""Selection cost side by side: every strategy picking one batch from a dataset's pool.

Run by hand (not in CI)::

    python code/bench_scoring.py                                  # both datasets, all strategies
    python code/bench_scoring.py --datasets mitbih --strategies bald,entropy_mc
    python code/bench_scoring.py --smoke                          # seconds; tests the script only

Training and evaluation cost the same for every strategy; what a strategy adds to a step is
its ``select`` call on the unlabeled pool. For each dataset this builds the dataset script's
model (``code/<dataset>.py``, loaded as a module; untrained: the cost of a forward pass does
not depend on the weights), labels a random set of the protocol's final budget
(``default_rng(al.bench.LABEL_SEED)``), and times ``select`` of one batch on the rest of the
training set (or its first ``--pool-size`` samples), in one spawned process configured like a
protocol worker (``--threads`` TensorFlow threads, default 1 as the protocol's ``--threads``),
after one untimed warm-up call per strategy (TensorFlow's one-time start-up; graph tracing is
paid on every call, as in a protocol step).

``bald`` and ``entropy_mc`` are also timed with their MC passes run eagerly, layer by layer:
:func:`eager_select` composes ``al.keras_ops.mc_predict_proba(..., graph=False)``, the
strategy's ``score_mc`` and ``al.strategies.top_k_positions``, which is what the strategy's
``select`` computes with graph passes; the table says whether both picked the same batch.
Writes ``<out-dir>/bench_scoring.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import time

import numpy as np

from al import bench, strategies
from al.keras_ops import mc_predict_proba, n_samples

SMOKE_POOL = 512
EAGER = " (eager MC passes)"


def variants(names: list[str]) -> list[str]:
    """The strategies to time, each MC-dropout one followed by its eager variant."""
    out = []
    for name in names:
        out.append(name)
        if issubclass(strategies.STRATEGIES[name], strategies.MCDropoutStrategy):
            out.append(name + EAGER)
    return out


def make_strategy(variant: str) -> strategies.QueryStrategy:
    """The production strategy a variant times (its eager variant runs through :func:`eager_select`)."""
    return strategies.get_strategy(variant.removesuffix(EAGER))


def eager_select(strategy: strategies.MCDropoutStrategy, model, x_pool, batch_size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``strategy.select`` with the MC passes run eagerly: same masks from ``rng``, same batch.

    ``mc_predict_proba(..., graph=False)``, then ``strategy.score_mc``, then the
    ``batch_size`` highest scores (:func:`al.strategies.top_k_positions`).
    """
    strategies.check_batch(n_samples(x_pool), batch_size)
    mc_probs = mc_predict_proba(model, x_pool, strategy.mc_passes, rng,
                                purpose=f"strategy {strategy.name!r}", graph=False)
    return strategies.top_k_positions(strategy.score_mc(mc_probs), batch_size)


def select_variant(variant: str, strategy, model, x_pool, batch_size: int, rng: np.random.Generator,
                   x_labeled) -> np.ndarray:
    """The positions a variant picks from ``x_pool``: the strategy's own ``select``, or eager passes."""
    if variant.endswith(EAGER):
        return eager_select(strategy, model, x_pool, batch_size, rng)
    return strategy.select(model, x_pool, batch_size, rng, x_labeled)


def measure_dataset(specs: list[dict]) -> list[dict]:
    """Worker entry point: every variant of one dataset (``specs`` holds one spec)."""
    faulthandler.enable()
    spec = specs[0]
    setting = bench.configure_process("ours", spec["threads"])  # like a protocol worker
    import keras  # after TensorFlow is set up (and its start-up banner filtered)
    module = importlib.import_module(spec["dataset"])  # the dataset script code/<dataset>.py
    config = bench.default_config(module, spec["threads"])
    protocol = bench.protocol_of(module)
    data = module.load_data(config, spec["data_dir"])
    n_labeled = bench.final_budget(protocol)
    labeled = np.random.default_rng(bench.LABEL_SEED).choice(len(data.x_train), n_labeled,
                                                              replace=False)
    pool = np.setdiff1d(np.arange(len(data.x_train)), labeled)[:spec["pool_size"] or None]
    x_pool, x_labeled = data.x_train[pool], data.x_train[labeled]
    keras.utils.set_random_seed(bench.LABEL_SEED)
    model = module.build_model(config, data.x_train.shape[1:], len(data.class_names))
    rows = []
    for variant in spec["variants"]:
        strategy = make_strategy(variant)
        seconds = []
        for repeat in range(1 + spec["repeats"]):  # the first call is an untimed warm-up
            t0 = time.perf_counter()  # the same rng every call: the same batch every call
            picked = select_variant(variant, strategy, model, x_pool, protocol["batch_size"],
                                    np.random.default_rng(0), x_labeled)
            if repeat:
                seconds.append(time.perf_counter() - t0)
        rows.append({"dataset": spec["dataset"], "strategy": variant, "pool": len(pool),
                     "labeled": n_labeled, "batch_size": protocol["batch_size"],
                     "threads": setting["threads"], "select_seconds": min(seconds),
                     "select_seconds_repeats": seconds, "picked": sorted(int(i) for i in picked),
                     "tensorflow": setting["tensorflow"], "gpus": setting["gpus"]})
    return rows


def markdown(report: dict) -> str:
    lines = bench.side_by_side_header(report, "Selection cost per step: each strategy picking one batch")
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
    names = list(strategies.STRATEGIES)
    parser = argparse.ArgumentParser(prog="python code/bench_scoring.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(bench.DATASETS), metavar="A,B")
    parser.add_argument("--strategies", default=",".join(names), metavar="A,B",
                        help=f"strategies to time (default all: {', '.join(names)})")
    parser.add_argument("--pool-size", type=int, default=0, metavar="N",
                        help="time on the first N pool samples (default 0: the whole pool)")
    bench.add_side_by_side_arguments(
        parser, "bench_scoring", "timed calls per strategy; the table shows the fastest (default 2)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a pool of {SMOKE_POOL}, one repeat: tests the script only")
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.strategies = list(dict.fromkeys(s for s in args.strategies.split(",") if s))
    bad = sorted(set(args.datasets) - set(bench.DATASETS)) + sorted(set(args.strategies) - set(names))
    if bad or not args.datasets or not args.strategies:
        parser.error(f"unknown or missing datasets or strategies {bad}; datasets: "
                     f"{', '.join(bench.DATASETS)}; strategies: {', '.join(names)}")
    batch = max(bench.protocol_of(importlib.import_module(d))["batch_size"] for d in args.datasets)
    if args.threads < 1 or args.repeats < 1 or not (args.pool_size == 0 or args.pool_size >= batch):
        parser.error(f"--threads and --repeats must be >= 1, --pool-size 0 (whole pool) or at least "
                     f"the batch size ({batch})")
    if args.smoke:
        args.pool_size, args.repeats = SMOKE_POOL, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    measurements = []
    for dataset in args.datasets:
        spec = {"dataset": dataset, "variants": variants(args.strategies), "threads": args.threads,
                "repeats": args.repeats, "pool_size": args.pool_size, "data_dir": args.data_dir}
        rows = bench.in_fresh_process([spec], measure_dataset)
        for m in rows:
            print(f"{dataset:>6} {m['strategy']:>32}: {m['select_seconds']:7.2f} s", flush=True)
        measurements += rows
    return bench.write_side_by_side("bench_scoring", args, argv, measurements, markdown)


if __name__ == "__main__":
    main()
