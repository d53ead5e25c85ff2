"""Which patient model for ``code/mitbih_patient.py``: a head on frozen features, or the whole net fine-tuned?

Scored on DS1 patients only (never DS2, the patient protocol's test patients):

    python code/patient_model_search.py             # every candidate, about half an hour on one core
    python code/patient_model_search.py --smoke     # seconds; tests the script only

``HOLDOUT`` DS1 records play the new patients. A development global model is trained, with
``code/mitbih_patient.py``'s global recipe and seed, on the other DS1 records only, and the common
set of DS1 beats (``BASE_PER_CLASS`` per class) is drawn from those same records. Each held-out
record is split in time as in the protocol (the first ``POOL_FRACTION`` of its beats the pool, the
rest the evaluation part). For every candidate, seed and budget, the patient model is trained on
the common set plus the first ``budget`` beats of a random order of the pool (drawn from
``default_rng([seed, record])``: nested budgets, the same beats for every candidate), then scored
on the evaluation part. No active learning here: the question is only which patient model learns
more from the same patient labels.

Candidates (:data:`CANDIDATES`):

- ``head``: the protocol's patient model, a dense head (``mitbih_patient.py``'s ``ARCHITECTURE``
  and training settings) on the development global model's frozen last hidden layer;
- ``finetune_*``: the development global model itself, its trained weights the starting point,
  every layer trained with the patient training settings (``TRAIN_STEPS`` updates, one-cycle) at
  the learning rate named;
- ``last_layer_*``: only the global model's softmax layer, on the same frozen features as the
  head and at the head's cost, starting from its trained weights (the head starts from scratch).

Each finished fit is appended to ``<out-dir>/patient_model_search.jsonl`` (an interrupted search
resumes); the report ``patient_model_search.md`` (and ``.json``) gives, per candidate and budget,
the gross VEB and SVEB Se / +P over the held-out records (their confusion matrices added up per
seed), mean ± std over seeds, and the mean fit seconds (one TensorFlow thread, build and tracing
included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from sklearn.metrics import confusion_matrix

import mitbih
import mitbih_patient
import plot_perf
from al import cli, data_mitbih, keras_ops, loop, models, runs
from al.data_common import resolve_repo_path

HOLDOUT = [106, 119, 208, 215, 223]  # DS1 records rich in V beats (208: also 373 F beats, like DS2's 213)
BUDGETS = [0, 20, 40, 80]
SEEDS = 5
CANDIDATES = {
    "head": {},
    "finetune_lr3e-4": {"learning_rate": 3e-4},
    "finetune_lr3e-3": {"learning_rate": 3e-3},
    "last_layer_lr3e-4": {"learning_rate": 3e-4},
    "last_layer_lr3e-3": {"learning_rate": 3e-3},
}
FIGURES = ("VEB Se", "VEB +P", "SVEB Se", "SVEB +P", "macro-F1 NSVF")
_DEV_STREAM = 2 ** 31 - 5  # the development global model's seed sequence: [GLOBAL_SEED, _DEV_STREAM]


def patient_config(threads: int = 1) -> dict:
    """``code/mitbih_patient.py``'s settings (its page of constants)."""
    return {**cli.hyperparameters(vars(mitbih_patient)), "threads": threads}


def finetune_config(config: dict, changes: dict) -> dict:
    """The global net's recipe, trained with the patient's training settings and ``changes``."""
    training = {k: config[k] for k in ("train_steps", "epochs", "fit_batch_size", "learning_rate", "lr_schedule",
                                       "optimizer", "weight_decay", "label_smoothing", "val_fraction",
                                       "patience", "class_weight")}
    return {**mitbih_patient.global_config(config), **training, **changes}


def candidate_config(config: dict, candidate: str) -> dict:
    """The training config of ``candidate`` (what its journal records carry)."""
    if candidate == "head":
        return config
    if candidate.startswith("finetune"):
        return finetune_config(config, CANDIDATES[candidate])
    return {**config, **CANDIDATES[candidate], "architecture": "global_last_layer"}


def last_layer_builder(kernel: np.ndarray, bias: np.ndarray):
    """A softmax layer on the features that starts from the global model's last layer."""
    def build_model(config, input_shape, n_classes):
        import keras
        inputs = keras.Input(input_shape)
        model = keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(inputs))
        model.layers[-1].set_weights([kernel, bias])
        return models.compile_model(model, config, n_classes)
    return build_model


def finetune_builder(global_cfg: dict, weights_path: str):
    """A builder of the global net that starts from the weights in ``weights_path``."""
    def build_model(config, input_shape, n_classes):
        model = mitbih.build_model(global_cfg, input_shape, n_classes)
        with warnings.catch_warnings():  # the file also holds the global fit's optimizer: not wanted here
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(weights_path)
        return models.compile_model(model, config, n_classes)
    return build_model


def gross(records: list[dict], class_names: list[str]) -> list[dict]:
    """Per candidate, budget and seed: the held-out records' matrices added up, then the figures."""
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["candidate"], r["budget"], r["seed"]), []).append(r)
    rows = []
    for (candidate, budget, seed), part in sorted(groups.items()):
        matrix = np.sum([np.asarray(r["confusion_matrix"]) for r in part], axis=0)
        figures = plot_perf.aami_metrics(matrix, class_names)
        rows.append({"candidate": candidate, "budget": budget, "seed": seed, "records": len(part),
                     "fit_seconds": float(np.mean([r["fit_seconds"] for r in part])),
                     **{k: float(figures[k]) for k in FIGURES}})
    return rows


def markdown(rows: list[dict], command: str, n_records: int) -> str:
    lines = ["# Patient-model search (DS1 patients held out; DS2 not used)", "",
             f"Command: `{command}`. Gross figures over the {n_records} held-out records, mean ± std over "
             "seeds; fit s: mean seconds of one fit (one TensorFlow thread, build and tracing included). "
             "Rows with fewer records than the others are still running.", "",
             "| candidate | patient beats | seeds | " + " | ".join(FIGURES) + " | fit s |",
             "|" + "---|" * (len(FIGURES) + 4)]
    keys = sorted({(r["candidate"], r["budget"]) for r in rows}, key=lambda k: (k[1], list(CANDIDATES).index(k[0])
                                                                             if k[0] in CANDIDATES else 99))
    for candidate, budget in keys:
        part = [r for r in rows if r["candidate"] == candidate and r["budget"] == budget and r["records"] == n_records]
        if not part:
            continue
        cells = [plot_perf.fmt(np.mean([r[k] for r in part]), np.std([r[k] for r in part], ddof=1)
                               if len(part) > 1 else None, 3) for k in FIGURES]
        lines.append(f"| {candidate} | {budget} | {len(part)} | " + " | ".join(cells)
                     + f" | {np.mean([r['fit_seconds'] for r in part]):.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help=f"comma-separated, from {', '.join(CANDIDATES)}")
    parser.add_argument("--out-dir", default="results/patient_model_search")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="2 records, 1 seed, budgets 0 and 5, a few updates: tests the script only")
    args = parser.parse_args(argv)
    args.candidates = [c for c in args.candidates.split(",") if c]
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    config = patient_config()
    holdout, budgets, seeds = HOLDOUT, BUDGETS, range(SEEDS)
    if args.smoke:
        holdout, budgets, seeds = HOLDOUT[:2], [0, 5], range(1)
        config = {**config, "train_steps": 5, "global_train_steps": 5}
    keras_ops.configure_tensorflow(config["threads"])
    out_dir = resolve_repo_path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = out_dir / "patient_model_search.jsonl"
    done = {(r["candidate"], r["record"], r["seed"], r["budget"]) for r in runs.read_jsonl(journal)
            if r["candidate"] in CANDIDATES and r["config"] == candidate_config(config, r["candidate"])}

    beats = data_mitbih.load_record_beats(args.data_dir, rr_features=True)
    keep = np.isin(beats.record_ids, data_mitbih.DS1)
    x, y, record_ids = beats.x[keep][..., None], beats.y[keep], beats.record_ids[keep]
    train = ~np.isin(record_ids, holdout)
    n_classes = len(data_mitbih.CLASS_NAMES)
    global_cfg = mitbih_patient.global_config(config)
    print(f"Training the development global model on {int(train.sum())} beats of {len(data_mitbih.DS1) - len(holdout)} "
          f"DS1 records (held out: {', '.join(map(str, holdout))}) ...", flush=True)
    model = loop.train_fresh_model(mitbih.build_model, global_cfg, x[train], y[train], n_classes,
                                   [config["global_seed"], _DEV_STREAM])
    features, _ = keras_ops.embed_and_predict(model, x, purpose="patient features")
    last_layer = last_layer_builder(*model.layers[-1].get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "global.weights.h5")
        model.save_weights(weights)
        base = mitbih_patient.common_set(y, np.flatnonzero(train), config["base_per_class"], config["base_seed"])
        for record in holdout:
            beats_of = np.flatnonzero(record_ids == record)  # in time order
            n_pool = int(round(len(beats_of) * config["pool_fraction"]))
            pool, test = beats_of[:n_pool], beats_of[n_pool:]
            for seed in seeds:
                order = pool[np.random.default_rng([seed, record]).permutation(len(pool))]
                for budget in budgets:
                    chosen = np.concatenate([base, order[:budget]])
                    for candidate in args.candidates:
                        if (candidate, record, seed, budget) in done:
                            continue
                        cfg = candidate_config(config, candidate)
                        if candidate == "head":
                            build, inputs = mitbih_patient.build_model, features
                        elif candidate.startswith("finetune"):
                            build, inputs = finetune_builder(global_cfg, weights), x
                        else:
                            build, inputs = last_layer, features
                        started = time.perf_counter()
                        fitted = loop.train_fresh_model(build, cfg, inputs[chosen], y[chosen], n_classes,
                                                        [seed, record, budget])
                        seconds = time.perf_counter() - started
                        predicted = keras_ops.predict_proba(fitted, inputs[test]).argmax(axis=1)
                        matrix = confusion_matrix(y[test], predicted, labels=list(range(n_classes)))
                        runs.append_line_atomic(journal, json.dumps(
                            {"candidate": candidate, "record": record, "seed": seed, "budget": budget,
                             "confusion_matrix": matrix.tolist(), "fit_seconds": round(seconds, 3), "config": cfg,
                             "git_commit": runs.git_commit(), "cpu_model": runs.cpu_model()}, sort_keys=True))
                        print(f"{candidate} record {record} seed {seed} {budget} beats: {seconds:.1f} s", flush=True)
    records = [r for r in runs.read_jsonl(journal) if r["record"] in holdout]
    rows = gross(records, data_mitbih.CLASS_NAMES)
    command = "python code/patient_model_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command.strip(), "holdout": holdout, "budgets": budgets, "seeds": list(seeds),
              "git_commit": runs.git_commit(), "versions": runs.library_versions(), "cpu_model": runs.cpu_model(),
              "data": beats.origin, "rows": rows}
    runs.write_json_atomic(out_dir / "patient_model_search.json", report)
    runs.write_text_atomic(out_dir / "patient_model_search.md", markdown(rows, command.strip(), len(holdout)))
    print(markdown(rows, command.strip(), len(holdout)))
    return rows


if __name__ == "__main__":
    main()
