"""Shared fixtures: tiny synthetic data and a tiny Keras model, so loop tests take seconds."""

from __future__ import annotations

import numpy as np
import pytest

from al import data_common

CLASS_NAMES = ("N", "S", "V")  # not "0", "1", "2": keys must come from class_names, not indices
CENTERS = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])

LOOP_CONFIG = {
    "start_size": 20,
    "batch_size": 10,
    "n_steps": 3,
    "epochs": 2,
    "fit_batch_size": 32,
    "val_fraction": 0.0,
    "patience": 0,
    "class_weight": "none",
    "pool_subsample": 0,
    "threads": 1,
}


@pytest.fixture(scope="session", autouse=True)
def _configure_tensorflow():
    """One TensorFlow thread and deterministic kernels, before any test initializes TF."""
    from al.keras_ops import configure_tensorflow
    configure_tensorflow(1)


def make_synthetic_dataset(n_train: int = 300, n_test: int = 100, seed: int = 0) -> data_common.Dataset:
    """Three well-separated 2-D Gaussian blobs; every row (train and test) is unique."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.arange(n) % len(CLASS_NAMES)
        rng.shuffle(y)
        x = CENTERS[y] + rng.normal(scale=0.6, size=(n, 2))
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    rows = {r.tobytes() for r in np.concatenate([x_train, x_test])}
    assert len(rows) == n_train + n_test, "synthetic rows must be unique to be identifiable"
    return data_common.Dataset(x_train, y_train, x_test, y_test, CLASS_NAMES, source="synthetic")


def tiny_build_model(config, input_shape, n_classes):
    """Dense(8) -> Dropout -> softmax; compiles in well under a second.

    The dropout lets the MC-dropout strategies (bald, entropy_mc) run in loop tests.
    """
    import keras
    model = keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(n_classes, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="session")
def synthetic_dataset() -> data_common.Dataset:
    return make_synthetic_dataset()


@pytest.fixture(scope="session")
def build_model():
    return tiny_build_model


@pytest.fixture
def loop_config() -> dict:
    return dict(LOOP_CONFIG)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Only the folders a test names are searched: no AL_DATA_DIR, an empty repo data root.

    Returns ``tmp_path``; the empty default data root is ``tmp_path / "repo_data"``.
    """
    monkeypatch.delenv("AL_DATA_DIR", raising=False)
    root = tmp_path / "repo_data"
    root.mkdir()
    monkeypatch.setattr(data_common, "DEFAULT_DATA_ROOT", root)
    return tmp_path


# --------------------------------------------------------------------------- shared helpers
def strip_timing(steps: list[dict]) -> list[dict]:
    """Step records without their timings: what must agree between two runs of the same seed."""
    from al.runs import TIMING_KEYS
    return [{k: v for k, v in s.items() if k not in TIMING_KEYS} for s in steps]


def tmp_files(folder) -> list[str]:
    """Temporary files (``*.tmp``) anywhere under ``folder``: an atomic writer leaves none."""
    import os
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".tmp")]


N_FEATURES = 3


def feature_pool(n: int, seed: int = 0, n_features: int = N_FEATURES) -> np.ndarray:
    """``n`` random float32 samples of ``n_features`` features (a pool for real tiny models)."""
    return np.random.default_rng(seed).normal(size=(n, n_features)).astype(np.float32)


def tiny_sequential(*hidden, n_inputs: int = N_FEATURES, n_classes: int = 4, seed: int = 0):
    """``keras.Sequential``: Input -> ``hidden`` layers -> Dense softmax, seeded weights."""
    import keras
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(shape=(n_inputs,)), *hidden,
                             keras.layers.Dense(n_classes, activation="softmax")])


@pytest.fixture(scope="module")
def real_model():
    """A tiny real model every strategy can use: BatchNorm, Dropout, a Dense penultimate layer."""
    import keras
    return tiny_sequential(keras.layers.Dense(16, activation="relu"), keras.layers.BatchNormalization(),
                           keras.layers.Dropout(0.5), keras.layers.Dense(8, activation="relu"))


# --------------------------------------------------------------------------- driver-side helpers
# Shared by test_cli, test_grid, test_fault_tolerance and test_bad_input. Functions passed to
# spawned grid workers live here (module ``conftest``, on the workers' inherited sys.path),
# so the workers unpickle them without importing a test module.

NAMESPACE = {
    "__doc__": "Toy dataset script for the tests.",
    "START_SIZE": 20,
    "BATCH_SIZE": 10,
    "N_STEPS": 1,
    "N_SEEDS": 1,
    "STRATEGIES": ["random", "entropy"],
    "POOL_SUBSAMPLE": 0,
    "EPOCHS": 1,
    "FIT_BATCH_SIZE": 32,
    "LEARNING_RATE": 1e-3,
    "VAL_FRACTION": 0.0,
    "PATIENCE": 0,
    "CLASS_WEIGHT": "none",
    "CONV_FILTERS": (32, 64),
    "USE_BIAS": True,
    "_PRIVATE": 1,
    "lowercase": 2,
    "NOT_A_HYPERPARAMETER": {"a": 1},
}


def toy_load_data(config, data_dir=None):
    """Module-level (picklable) loader of the synthetic blobs, for worker processes."""
    return make_synthetic_dataset()


SIGNAL_CLASSES = ("early", "middle", "late")
SIGNAL_LENGTH = 16


def make_signal_dataset(n_train: int = 96, n_test: int = 48, seed: int = 0) -> data_common.Dataset:
    """Noisy 1-D signals of shape (n, 16, 1): class c is a bump centred at sample 3 + 5c."""
    rng = np.random.default_rng(seed)
    t = np.arange(SIGNAL_LENGTH)

    def split(n):
        y = np.arange(n) % len(SIGNAL_CLASSES)
        rng.shuffle(y)
        bumps = np.exp(-0.5 * ((t[None, :] - (3 + 5 * y)[:, None]) / 1.5) ** 2)
        x = bumps + rng.normal(scale=0.35, size=(n, SIGNAL_LENGTH))
        return x[..., None].astype(np.float32), y.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return data_common.Dataset(x_train, y_train, x_test, y_test, SIGNAL_CLASSES,
                               source="synthetic signals", origin="synthetic signals")


def load_signals(config, data_dir=None):
    """Module-level (picklable) loader of the 1-D signals, for worker processes."""
    return make_signal_dataset()


def conv_build_model(config, input_shape, n_classes):
    """Conv1D(4, 3) -> MaxPooling1D -> Flatten -> Dropout -> Dense softmax: a tiny CONV net.

    Compiled to run eagerly: on a few dozen samples, tracing ``fit``/``predict`` for every
    fresh model would cost more than the training (MC-dropout passes still run as a graph).
    With ``$AL_TEST_THREAD_LOG`` set, appends "<pid> <TensorFlow intra-op threads>" to that
    file: which process built the model, on how many threads it actually runs.
    """
    import os

    import keras
    log = os.environ.get("AL_TEST_THREAD_LOG")
    if log:
        import tensorflow as tf  # already imported (quietly) by configure_tensorflow
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {tf.config.threading.get_intra_op_parallelism_threads()}\n")
    model = keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Conv1D(4, 3, activation="relu"),
        keras.layers.MaxPooling1D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(n_classes, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  run_eagerly=True)
    return model


# MNIST idx files (tiny, synthetic) ----------------------------------------------------------
def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    import struct
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else {1: 2049, 3: 2051}[array.ndim]
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path, array: np.ndarray, magic: int | None = None):
    import gzip
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(array, magic))
    return path


def write_mnist(folder, n_train: int = 6, n_test: int = 4, size: int = 5, **override):
    """The four MNIST files with tiny random content; ``override`` replaces arrays by key."""
    from al.data_mnist import FILES
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size)),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.integers(0, 256, (n_test, size, size)),
        "y_test": np.arange(n_test) % 10,
        **override,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in FILES.items():
        write_idx(folder / name, arrays[key])
    return folder


# CSV tables (annotate.py's data, queues and label files) ------------------------------------
def write_table(path, header, rows):
    """A CSV with a header row; returns its path."""
    import csv
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_table(path) -> list[dict]:
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# MIT-BIH Kaggle-style CSVs ------------------------------------------------------------------
def write_csv(path, n_rows, n_columns=None, labels=None, seed=0):
    """A headerless CSV of ``n_rows`` beats (187 samples + class by default); returns the table."""
    from al.data_mitbih import BEAT_LENGTH, CLASS_NAMES as MITBIH_CLASSES
    rng = np.random.default_rng(seed)
    table = rng.random((n_rows, BEAT_LENGTH + 1 if n_columns is None else n_columns))
    table[:, -1] = np.arange(n_rows) % len(MITBIH_CLASSES) if labels is None else labels
    np.savetxt(path, table, delimiter=",", fmt="%.8e")
    return table
