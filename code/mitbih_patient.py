"""Patient-adaptive active learning on MIT-BIH: which beats of a new patient should a cardiologist label?

A global model is trained once on every labeled beat of the 22 DS1 patients (de Chazal's
training records: "the other patients"), with the MIT-BIH script's recipe and RR features. For
each of the 22 DS2 patients, that patient's beats are split in time: the first ``POOL_FRACTION``
is the pool a strategy picks from, the rest is the test set, the same for every strategy and
budget. The patient model is a small dense head on the global model's frozen features (its last
hidden layer), trained fresh at every step on a fixed common set of DS1 beats
(``BASE_PER_CLASS`` per class, after Kiranyaz et al. 2016's "common training set") plus the
patient's labeled beats. Step 0 has none of them: the patient model before any expert label.
``sequential`` labels the first beats of the record, the classic patient-specific protocol.

Every run goes through the shared loop (``al.loop``) and writes the usual run files, one folder
per record: ``results/mitbih_patient/record_<n>/<strategy>_seed<k>.json``. ``python
code/plot_perf.py --patients results/mitbih_patient`` adds up the 22 records' confusion matrices
(gross VEB and SVEB sensitivity and positive predictivity per budget) and plots them.

    python code/mitbih_patient.py                  # every DS2 record, all strategies and seeds
    python code/mitbih_patient.py --record 213     # one record

The global model and its features are cached in ``data/mitbih/patient_features_<hash>.npz``
(the hash covers the global recipe, its seed and the beat and RR recipes). Every UPPER_CASE
constant is a command-line option (``python code/mitbih_patient.py --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys

import numpy as np

import mitbih
from al import cli, data_common, keras_ops, loop, models, runs
from al.data_common import Dataset
from al import data_mitbih
from al.data_mitbih import load_record_beats

# --- the patients
RECORD = 0             # one DS2 record, or 0: each of the 22 DS2 records in turn
POOL_FRACTION = 0.5    # the first half of the record's beats is the pool; the second half the test set
BASE_PER_CLASS = 75    # DS1 beats per class (fewer where DS1 has fewer) in every training set
BASE_SEED = 0          # draws that common set once, the same for every run
# --- active-learning protocol (this patient's labels)
START_SIZE = 0         # step 0: the patient model before any of the patient's labels
BATCH_SIZES = [5, 5, 10, 20, 40]  # per step: 0, 5, 10, 20, 40, 80 beats of the patient
BATCH_SIZE = 5         # (BATCH_SIZES decides)
N_STEPS = 5
N_SEEDS = 10
STRATEGIES = ["random", "sequential", "entropy", "margin", "coreset"]
POOL_SUBSAMPLE = 0
# --- the patient model: a dense head on the global model's features, trained fresh every step
ARCHITECTURE = "mlp"
DENSE_UNITS = [32]
DROPOUT = 0.1
TRAIN_STEPS = 150      # optimizer updates per training (about 25 epochs of the ~400 beats)
EPOCHS = 20            # (unused while TRAIN_STEPS > 0)
FIT_BATCH_SIZE = 64
LEARNING_RATE = 3e-3
LR_SCHEDULE = "onecycle"
OPTIMIZER = "adam"
WEIGHT_DECAY = 0.0
LABEL_SMOOTHING = 0.0
VAL_FRACTION = 0.0
PATIENCE = 0
CLASS_WEIGHT = "none"
# --- the global model: code/mitbih.py's recipe with RR features, on every DS1 label
GLOBAL_SEED = 0
GLOBAL_TRAIN_STEPS = 1000  # the protocol recipe's count (chosen at 256-2944 labels; not tuned for 51k)

_GLOBAL_STREAM = 2 ** 31 - 3  # the global model's seed sequence: [GLOBAL_SEED, _GLOBAL_STREAM]
# (a leading underscore: not an option)


def global_config(config: dict) -> dict:
    """code/mitbih.py's recipe with RR features and this script's global settings."""
    return {**cli.hyperparameters(vars(mitbih)), "rr_features": 1, "train_steps": config["global_train_steps"], "threads": config["threads"]}


def features_cache_path(config: dict, origin: str):
    from importlib.metadata import version
    key = {"global": global_config(config), "seed": config["global_seed"], "data": origin,
           "keras": version("keras"), "tensorflow": version("tensorflow")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return data_common.DEFAULT_DATA_ROOT / "mitbih" / f"patient_features_{digest}.npz"


def global_features(config: dict, data_dir=None) -> dict:
    """Features (the global model's last hidden layer), labels and record numbers of the DS1 and
    DS2 beats; the global model is trained once and its features cached."""
    beats = load_record_beats(data_dir, rr_features=True)
    path = features_cache_path(config, beats.origin)
    if path.exists():
        with np.load(path) as cached:
            return {k: cached[k] for k in ("features", "y", "record_ids")} | {"source": beats.source,
                                                                             "cache": str(path)}
    keras_ops.configure_tensorflow(config["threads"])
    keep = np.isin(beats.record_ids, data_mitbih.DS1 + data_mitbih.DS2)
    x, y, record_ids = beats.x[keep][..., None], beats.y[keep], beats.record_ids[keep]
    train = np.isin(record_ids, data_mitbih.DS1)
    print(f"Training the global model on {int(train.sum())} DS1 beats (once; cached in {path}) ...", flush=True)
    model = loop.train_fresh_model(mitbih.build_model, global_config(config), x[train], y[train], len(data_mitbih.CLASS_NAMES),
                              [config["global_seed"], _GLOBAL_STREAM])
    features, _ = keras_ops.embed_and_predict(model, x, purpose="patient features")
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, features=features.astype(np.float32), y=y, record_ids=record_ids)
    runs.write_bytes_atomic(path, buffer.getvalue())
    return {"features": features.astype(np.float32), "y": y, "record_ids": record_ids,
            "source": beats.source, "cache": str(path)}


def common_set(y: np.ndarray, candidates: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` indices of each class among ``candidates``, drawn from ``seed``, sorted."""
    rng = np.random.default_rng([seed, 1])
    chosen = [rng.choice(members, min(per_class, len(members)), replace=False)
              for c in range(len(data_mitbih.CLASS_NAMES)) if len(members := candidates[y[candidates] == c])]
    return np.sort(np.concatenate(chosen))


def load_data(config, data_dir=None):
    record = config["record"]
    if record not in data_mitbih.DS2:
        raise ValueError(f"--record {record} is not a DS2 record; choose one of {', '.join(map(str, data_mitbih.DS2))}")
    if not 0 < config["pool_fraction"] < 1:
        raise ValueError(f"--pool-fraction must lie strictly between 0 and 1, got {config['pool_fraction']}")
    f = global_features(config, data_dir)
    beats = np.flatnonzero(f["record_ids"] == record)  # in time order
    n_pool = int(round(len(beats) * config["pool_fraction"]))
    pool, test = beats[:n_pool], beats[n_pool:]
    base = common_set(f["y"], np.flatnonzero(np.isin(f["record_ids"], data_mitbih.DS1)), config["base_per_class"],
                      config["base_seed"])
    x, y = f["features"], f["y"]
    how = (f"record {record}: first {n_pool} beats the pool, last {len(test)} the test set; "
           f"{len(base)} DS1 beats in every training set")
    return Dataset(x[pool], y[pool], x[test], y[test], data_mitbih.CLASS_NAMES,
                   source=f"global-model features ({f['cache']}) of {f['source']}; {how}",
                   origin=f"MIT-BIH patient adaptation, global-model features; {how}",
                   x_base=x[base], y_base=y[base])


build_model = models.build  # the head named by ARCHITECTURE (code/al/models.py)


def results_name(config):
    return f"record_{config['record']}"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = argparse.ArgumentParser(add_help=False)
    wanted.add_argument("--record", type=int, default=RECORD)
    wanted.add_argument("--results-dir", default=None)
    known, _ = wanted.parse_known_args(argv)
    if known.results_dir is None and "--quick" not in argv:
        argv += ["--results-dir", str(cli.DEFAULT_RESULTS / "mitbih_patient")]
    records = [known.record] if known.record else list(data_mitbih.DS2)
    for record in records:
        cli.main(results_name, {**globals(), "RECORD": record}, load_data, build_model,
                 argv=argv + (["--record", str(record)] if not known.record else []))


if __name__ == "__main__":
    main()
