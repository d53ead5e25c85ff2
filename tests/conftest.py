"""Shared fixtures: tiny synthetic data and a tiny Keras model, so loop tests take seconds."""

from __future__ import annotations

import numpy as np
import pytest

import data_common

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
}


@pytest.fixture(scope="session", autouse=True)
def _configure_tensorflow():
    """One TensorFlow thread and deterministic kernels, before any test initializes TF."""
    import experiment
    experiment.configure_tensorflow(1)


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
    import data_common
    monkeypatch.delenv("AL_DATA_DIR", raising=False)
    root = tmp_path / "repo_data"
    root.mkdir()
    monkeypatch.setattr(data_common, "DEFAULT_DATA_ROOT", root)
    return tmp_path
