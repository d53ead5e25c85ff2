"""Speed benchmark: one active-learning step of the published code vs this project's step.

Run by hand (not in CI), on the machine whose protocol run it should be compared with::

    python code/benchmark.py                                # all datasets, everything measured
    python code/benchmark.py --ref-train-epochs-measured 5 --ref-score-fraction 0.2
    python code/benchmark.py --smoke                        # minutes; tests the script only
    python code/benchmark.py --ref-epochs 0,1,2             # epochs the MNIST reference trains

For each dataset it measures, at the smallest and the largest label count of the protocol,

* a **reference step**, written the way the published code (github CVxTz/active_learning,
  ``code/active_learning_ecg.py`` and ``code/active_learning_mnist.py``) does it
  (:data:`REFERENCES`), with TensorFlow's default threads (all cores), as the published
  single-process code ran:

  - MIT-BIH: the published 1D CNN trained 45 epochs at batch size 32; the whole pool scored
    with one ``model.predict(batch_size=32)``, the entropy in a Python loop, top-k by
    sorting; the test set predicted at batch size 32;
  - MNIST: the published CNN (conv 64-64, 128-128, 256-256, global max pooling, Dense 64 with
    dropout that stays on at inference, twice; Adam 1e-4) on raw pixel values 0..255, fit at
    batch size 32 on the labeled set with a 256-image validation set drawn from the pool,
    ModelCheckpoint (best val_acc), ReduceLROnPlateau (patience 30) and EarlyStopping
    (patience 40), at most 120 epochs, then the best checkpoint loaded; the rest of the pool
    scored by 5 ``model.predict`` passes (batch 32) averaged, the published entropy in a list
    comprehension, the published sorted-threshold selection; the test set predicted at batch
    size 1024. Keras-3 adaptations are noted where they are made;

* **our step**: the dataset script's ``build_model`` and default hyperparameters, timed
  through ``al.loop.train_fresh_model``, ``al.loop.select_next`` (entropy) and
  ``al.loop.evaluate``, in a process configured like a protocol worker: ``--threads``
  TensorFlow threads (default 1, the protocol's default ``--threads``), deterministic kernels.

Every measurement runs in its own spawned process (TensorFlow's thread settings are per
process and fixed once it starts), which first runs one untimed tiny step so that
TensorFlow's one-time start-up is not charged to the step; a protocol worker pays it once
for hundreds of steps, and the published process once for the whole protocol.

A full reference step is slow (MNIST: tens of minutes on a few cores). ``--ref-train-epochs-measured
K`` trains only K epochs and extrapolates: the K epochs as measured plus, for each missing
epoch, the mean time of epochs 2..K (epoch 1 carries the one-time graph tracing; with K = 1
it is used as it is). A reference with early stopping (MNIST) is extrapolated to its cap of
120 epochs unless it stopped within the K: an upper bound, flagged as such. ``--ref-score-fraction
f`` scores only a fraction f of the pool and scales the scoring time by 1 / f. Scaled numbers
are flagged in both outputs.

``--measurements-from FILE`` measures nothing: it rebuilds the report from the step times stored in
an earlier ``benchmark.json`` of this machine (same CPU model and cores, same dataset configs) and
reads the protocol wall time from the grid logs as they are now, so a protocol run made after the
benchmark (both need the machine to themselves) joins the measured steps; the report names the
file, date and commit the measurements come from.

``--ref-epochs SEEDS`` runs no benchmark: it trains the early-stopping reference (MNIST) fully
at both label counts once per seed and reports how many epochs early stopping ran, the best
epoch and the seconds (``<out-dir>/benchmark_ref_epochs.md`` / ``.json``).

The reference times at the two label counts are interpolated linearly in the number of
labels to project the published code's whole protocol (``N_SEEDS`` x ``STRATEGIES`` x all
steps, one process), which is compared with the wall time of this project's last complete
protocol run on this machine with the same config (``--threads`` included), read from
``results/<dataset>/grid_log.jsonl``; a grid that resumed runs counts only if every step of
every run file (read with ``al.runs.read_run``) finished during it.

The dataset scripts ``code/mnist.py`` and ``code/mitbih.py`` are loaded as modules (their
``main`` does not run) for their hyperparameters, ``load_data`` and ``build_model``; what
the benchmark scripts share lives in ``al.bench``.

Writes ``<out-dir>/benchmark.md`` (a table) and ``<out-dir>/benchmark.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from al import bench, cli, models, runs
from al.bench import DATASETS, LABEL_SEED
from al.data_common import Dataset, resolve_repo_path, shown_path
from al.loop import evaluate, select_next, train_fresh_model
from al.strategies import get_strategy

COMPONENTS = ("train", "score", "eval")
REF_BATCH_SIZE = 32  # the published code fits, predicts and runs MC dropout at batch size 32
QUERY_STRATEGY = "entropy"
SMOKE = {"pool": 512, "test": 256, "epochs": 2, "ref_epochs_measured": 1, "ref_score_fraction": 0.5}
TINY = {"labeled": 64, "pool": 160, "test": 64}  # the untimed warm-up step of every process


# --------------------------------------------------------------------------- reference models
def build_reference_ecg_net(input_shape, n_classes):
    """The published MIT-BIH 1D CNN (:func:`al.models.published_ecg_cnn`); Adam 1e-3."""
    return models.published_ecg_cnn({"learning_rate": 1e-3}, input_shape, n_classes)


@lru_cache(maxsize=1)
def permanent_dropout_class():
    """Keras layer class of the published ``PermaDropout``: dropout in training *and* inference.

    Published (Keras 2): ``Lambda(lambda x: K.dropout(x, level=rate))``. Keras 3 has no
    ``keras.backend.dropout``, and a ``Lambda`` around ``keras.random.dropout`` without a
    seed generator would draw one fixed mask per traced function; so (adaptation) it is a
    ``Dropout`` whose ``training`` is always True: a fresh inverted-dropout mask (kept units
    scaled by ``1 / (1 - rate)``, as ``K.dropout``) at every call, ``predict`` included.
    """
    import keras

    class PermanentDropout(keras.layers.Dropout):
        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    return PermanentDropout


def build_reference_mnist_cnn(input_shape, n_classes):
    """The published MNIST network (``get_model`` of CVxTz/active_learning
    ``code/active_learning_mnist.py``), functional API.

    Conv2D 64-64 (3x3, same) - MaxPool 2 - Dropout 0.1 - Conv2D 128-128 (same) - MaxPool 2 -
    Dropout 0.1 - Conv2D 256-256 (valid) - GlobalMaxPool - Dropout 0.1 - Dense 64 ("dense_1")
    - PermanentDropout 0.1 - Dense 64 ("dense_2") - PermanentDropout 0.1 - Dense softmax, all
    ReLU; input ``(None, None, channels)`` as published; Adam(1e-4), sparse categorical
    cross-entropy, metric ``"acc"`` (the callbacks monitor ``val_acc``).
    """
    import keras
    from keras import layers

    permanent_dropout = permanent_dropout_class()
    inputs = keras.Input(shape=(None, None, input_shape[-1]))
    x = layers.Conv2D(64, 3, activation="relu", padding="same")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Conv2D(128, 3, activation="relu", padding="same")(x)
    x = layers.Conv2D(128, 3, activation="relu", padding="same")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Conv2D(256, 3, activation="relu", padding="valid")(x)
    x = layers.Conv2D(256, 3, activation="relu", padding="valid")(x)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(64, activation="relu", name="dense_1")(x)
    x = permanent_dropout(0.1)(x)
    x = layers.Dense(64, activation="relu", name="dense_2")(x)
    x = permanent_dropout(0.1)(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                  metrics=["acc"])
    return model


def published_mnist_callbacks(checkpoint_path: str) -> list:
    """The published MNIST fit callbacks, in the published order.

    ``ModelCheckpoint`` (best ``val_acc``, weights only), ``ReduceLROnPlateau(val_acc,
    patience 30, min_lr 1e-7)``, ``EarlyStopping(val_acc, patience 40)``; all other
    arguments at their defaults (factor 0.1, min_delta 1e-4 / 0, mode "auto" = max for an
    accuracy), which Keras 3 shares with Keras 2. Adaptations: Keras 3 wants a weights-only
    checkpoint named ``*.weights.h5`` (published ``model.h5`` in the working folder; here a
    temporary folder), and ``verbose`` is 0 (published 1: it printed each improvement).
    """
    import keras

    return [keras.callbacks.ModelCheckpoint(filepath=checkpoint_path, monitor="val_acc",
                                            save_best_only=True, save_weights_only=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_acc", patience=30, min_lr=1e-7),
            keras.callbacks.EarlyStopping(patience=40, monitor="val_acc")]


def published_mnist_pixels(x: np.ndarray) -> np.ndarray:
    """MNIST images as the published code feeds them: raw pixel values 0..255 as float64.

    Published: ``X.astype(np.float)`` of the uint8 images, no scaling. The dataset script
    loads them scaled to [0, 1] in float32; ``x * 255`` rounded gives the bytes back exactly.
    """
    return np.round(np.asarray(x, dtype=np.float64) * 255.0)


def as_loaded(x: np.ndarray) -> np.ndarray:
    """Inputs as the dataset script loads them (MIT-BIH: the published code's own CSV scale)."""
    return x


def published_entropy(probs) -> float:
    """Entropy of one probability row, the published ``entropy(l)`` verbatim:
    ``-sum([x * np.log(np.clip(x, 1e-12, 1 - 1e-12)) for x in l])``."""
    return -sum([x * np.log(np.clip(x, 1e-12, 1 - 1e-12)) for x in probs])


def published_list_entropy(probs: np.ndarray) -> list[float]:
    """Entropy of every row as published: ``probs.tolist()``, then :func:`published_entropy`
    in a list comprehension."""
    return [published_entropy(row) for row in probs.tolist()]


def python_loop_entropy(probs) -> list[float]:
    """Entropy (nats) of each row, computed sample by sample in pure Python like the published code."""
    return [-sum(p_i * math.log(p_i) for p_i in p if p_i > 0) for p in probs]


def top_k_by_sorting(scores: list[float], k: int) -> list[int]:
    """Positions of the ``k`` highest scores, by sorting the whole list (published style)."""
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:k]


def select_by_sorted_threshold(scores: list[float], k: int) -> list[int]:
    """The published MNIST selection, positions instead of sample ids.

    Published: ``threshold = sorted(entr, reverse=True)[step_size]`` then every sample with
    ``v >= threshold``: the ``k + 1`` highest (more on ties at the threshold; the published
    code's off-by-one is kept). Needs more than ``k`` scores, as the published code does.
    """
    if len(scores) <= k:
        raise ValueError(f"the sorted-threshold selection needs more than k = {k} scores, got "
                         f"{len(scores)}; score a larger pool (--ref-score-fraction)")
    threshold = sorted(scores, reverse=True)[k]
    return [i for i, v in zip(range(len(scores)), scores) if v >= threshold]


@dataclass(frozen=True)
class Reference:
    """How the published code runs one step of one dataset.

    Attributes
    ----------
    build : ``build(input_shape, n_classes)`` -> compiled Keras model.
    epochs : training epochs of every step; with ``callbacks``, the cap (early stopping may
        end sooner).
    predict_passes : ``model.predict`` passes over the pool at batch size 32, averaged (more
        than 1 only makes sense with dropout that stays on at inference).
    entropy : pool probabilities -> list of entropies (a Python loop, as published).
    select : ``select(entropies, k)`` -> chosen positions.
    inputs : images/signals -> what the published code feeds the network.
    validation_size : samples drawn from the pool as the fit's validation data (never
        scored); 0 = no validation.
    callbacks : ``callbacks(checkpoint_path)`` -> the fit's callbacks; the weights of
        ``checkpoint_path`` are loaded after the fit. None = none.
    test_batch_size : ``model.predict`` batch size on the test set.
    """

    build: Callable
    epochs: int
    predict_passes: int = 1
    entropy: Callable = python_loop_entropy
    select: Callable = top_k_by_sorting
    inputs: Callable = as_loaded
    validation_size: int = 0
    callbacks: Callable | None = None
    test_batch_size: int = REF_BATCH_SIZE


REFERENCES = {
    # code/active_learning_ecg.py: 45 epochs, one predict (batch 32) of pool and test.
    "mitbih": Reference(build_reference_ecg_net, epochs=45),
    # code/active_learning_mnist.py: at most 120 epochs with a 256-image validation set and
    # its callbacks; 5 predicts of the pool averaged; test predicted at batch size 1024.
    "mnist": Reference(build_reference_mnist_cnn, epochs=120, predict_passes=5,
                       entropy=published_list_entropy, select=select_by_sorted_threshold,
                       inputs=published_mnist_pixels, validation_size=256,
                       callbacks=published_mnist_callbacks, test_batch_size=1024),
}


# --------------------------------------------------------------------------- pure functions
def extrapolate_train_seconds(t_start: float, fit_start: float, epoch_ends: list[float],
                              fit_end: float, full_epochs: int) -> float:
    """Training time of ``full_epochs`` epochs from a run that trained only ``len(epoch_ends)``.

    The measured part (model build, the measured epochs, fit teardown) is kept as it is; each
    missing epoch costs the mean of epochs 2..K, because epoch 1 also pays the one-time graph
    tracing. With K = 1 the first epoch is all there is, so it is used.

    Parameters
    ----------
    t_start : clock before the model is built.
    fit_start : clock when ``fit`` is called.
    epoch_ends : clock at the end of each measured epoch.
    fit_end : clock when ``fit`` returned.
    full_epochs : epochs of the real step.
    """
    measured = fit_end - t_start
    k = len(epoch_ends)
    if k >= full_epochs:
        return measured
    per_epoch = (epoch_ends[-1] - epoch_ends[0]) / (k - 1) if k >= 2 else epoch_ends[0] - fit_start
    return measured + (full_epochs - k) * per_epoch


def interpolate(n: float, points: dict[int, float]) -> float:
    """Linear interpolation in ``n`` through two ``{n: value}`` points, never below 0.

    Outside the points it extrapolates (only a smoke run does); a duration cannot be
    negative, so the line is cut at 0.
    """
    ordered = sorted(points.items())
    (n0, v0), (n1, v1) = ordered[0], ordered[-1]
    if n1 == n0:
        return v0
    return max(0.0, v0 + (v1 - v0) * (n - n0) / (n1 - n0))


def protocol_label_counts(start_size: int, batch_size: int, n_steps: int) -> list[int]:
    """Labels after each step 0..n_steps of the protocol."""
    return [start_size + step * batch_size for step in range(n_steps + 1)]


def project_protocol_seconds(step_seconds: dict[int, dict[str, float]], start_size: int,
                             batch_size: int, n_steps: int, n_seeds: int,
                             strategies: list[str]) -> dict[str, float]:
    """Serial seconds of a whole protocol, from per-component step times at two label counts.

    Every step trains and evaluates a model at its label count. Scoring happens at steps
    1..n_steps of strategies that use the model (not ``random``); the scoring of step s
    uses the model trained at step s - 1, so it costs what scoring costs at the label count
    of step s - 1 (that model's pool is the one scored).

    Parameters
    ----------
    step_seconds : ``{n_labeled: {"train": s, "score": s, "eval": s}}`` at two label counts.
    start_size, batch_size, n_steps : the protocol's budget.
    n_seeds : runs per strategy.
    strategies : strategy names of the grid.

    Returns
    -------
    ``{"train": s, "score": s, "eval": s, "total": s}`` summed over all runs.
    """
    def at(n, component):
        return interpolate(n, {k: v[component] for k, v in step_seconds.items()})

    counts = protocol_label_counts(start_size, batch_size, n_steps)
    per_run = {"train": sum(at(n, "train") for n in counts),
               "eval": sum(at(n, "eval") for n in counts)}
    scored = sum(at(n, "score") for n in counts[:-1])  # score of step s at counts[s - 1]
    n_scoring = sum(get_strategy(s).uses_model for s in strategies)
    totals = {"train": n_seeds * len(strategies) * per_run["train"],
              "score": n_seeds * n_scoring * scored,
              "eval": n_seeds * len(strategies) * per_run["eval"]}
    return {**totals, "total": sum(totals.values())}


# --------------------------------------------------------------------------- protocol records
def is_protocol_grid(line: dict, config: dict, n_seeds: int, strategies: list[str],
                     cpu_cores: int | None, cpu_model: str | None = None) -> bool:
    """True if a grid-log line ran the default protocol: its seeds, strategies and config,
    on ``cpu_cores`` cores of ``cpu_model`` (None: any).

    The grid must be exactly ``n_seeds`` seeds x ``strategies``: a wider grid's wall time
    holds extra runs and would not be comparable with the projection; nor would a grid of
    another CPU model.
    """
    same_config = json.dumps(line.get("config"), sort_keys=True) == json.dumps(config, sort_keys=True)
    return (same_config
            and len(set(line.get("seeds", []))) == n_seeds
            and sorted(line.get("strategies", [])) == sorted(strategies)
            and (cpu_cores is None or line.get("cpu_cores") == cpu_cores)
            and (cpu_model is None or line.get("cpu_model") == cpu_model)
            and line.get("backend", "local") == "local"  # a cluster's time is not this machine's
            and isinstance(line.get("wall_seconds"), (int, float)))


def computed_every_step(line: dict, results_dir: Path, dataset: str) -> bool:
    """True if the grid's wall time covers every step of every run.

    A ``--fresh`` grid recomputes everything, and a line is only logged after all its runs
    returned. A grid that was not fresh may have resumed earlier runs, so it counts only if
    every run file (``al.runs.run_path``) passes ``al.runs.read_run`` (a missing, corrupt or
    hand-edited file does not), is complete, has the grid's config, and every step finished
    inside the grid's time window (no step was taken over from an earlier grid; runs
    overwritten since then cannot be verified and are rejected).
    """
    if line.get("fresh") is True:
        return True
    started = line["started_at"]
    ended = started + line["wall_seconds"] + 60  # slack: the log is written after the last step
    n_steps = line["config"].get("n_steps")
    for strategy in line["strategies"]:
        for seed in line["seeds"]:
            try:
                run = runs.read_run(runs.run_path(results_dir, dataset, strategy, seed))
            except runs.RunFileError:
                return False
            finished = [s.get("finished_at") for s in run["steps"]]
            if (not run["complete"] or run["config"] != line["config"]
                    or len(run["steps"]) != n_steps + 1 or None in finished
                    or not all(started <= t <= ended for t in finished)):
                return False
    return True


def latest_protocol_run(results_dir: Path, dataset: str, config: dict, n_seeds: int,
                        strategies: list[str], cpu_cores: int | None,
                        cpu_model: str | None = None) -> dict | None:
    """The latest complete default-protocol grid of ``dataset`` in its grid log, or None."""
    path = Path(results_dir) / dataset / "grid_log.jsonl"
    lines = [line for line in runs.read_jsonl(path)
             if is_protocol_grid(line, config, n_seeds, strategies, cpu_cores, cpu_model)
             and computed_every_step(line, results_dir, dataset)]
    return max(lines, key=lambda line: line["started_at"], default=None)


# --------------------------------------------------------------------------- dataset plans
def dataset_script(dataset: str):
    """The dataset script ``code/<dataset>.py`` as a module (its ``main`` does not run)."""
    return importlib.import_module(dataset)


def results_folder(module, config: dict, dataset: str) -> str:
    """Folder name the script writes its results to (MIT-BIH depends on the split)."""
    name_of = getattr(module, "results_name", None)
    return name_of(config) if callable(name_of) else dataset


def benchmark_label_counts(protocol: dict, smoke: bool) -> list[int]:
    """The smallest and the largest label count of the protocol (smoke: small stand-ins)."""
    if smoke:
        return [protocol["start_size"] // 4, protocol["start_size"] // 2]
    counts = protocol_label_counts(protocol["start_size"], protocol["batch_size"], protocol["n_steps"])
    return [counts[0], counts[-1]]


# --------------------------------------------------------------------------- data of one step
def subset(data: Dataset, labeled: np.ndarray, pool: np.ndarray,
           test: np.ndarray) -> tuple[Dataset, np.ndarray]:
    """A dataset whose train part is ``labeled`` then ``pool``; returns it and the labeled positions."""
    train = np.concatenate([labeled, pool])
    part = replace(data, x_train=data.x_train[train], y_train=data.y_train[train],
                   x_test=data.x_test[test], y_test=data.y_test[test])
    return part, np.arange(len(labeled))


def step_data(data: Dataset, n_labeled: int, smoke: bool,
              seed: int = LABEL_SEED) -> tuple[Dataset, np.ndarray]:
    """The benchmark's labeled set (``default_rng(seed)``), the rest of the pool, the test set."""
    rng = np.random.default_rng(seed)
    labeled = rng.choice(len(data.x_train), n_labeled, replace=False)
    pool = np.setdiff1d(np.arange(len(data.x_train)), labeled)
    test = np.arange(len(data.x_test))
    if smoke:
        pool = np.sort(rng.choice(pool, min(SMOKE["pool"], len(pool)), replace=False))
        test = test[: SMOKE["test"]]
    return subset(data, labeled, pool, test)


def tiny_data(data: Dataset) -> tuple[Dataset, np.ndarray]:
    """A few samples for the untimed warm-up step."""
    n_lab, n_pool = TINY["labeled"], TINY["pool"]
    return subset(data, np.arange(n_lab), np.arange(n_lab, n_lab + n_pool), np.arange(TINY["test"]))


# --------------------------------------------------------------------------- the two steps
def timed_fit(model, x, y, epochs: int, batch_size: int, validation_data=None,
              callbacks: list | None = None) -> tuple[float, list[float], float, dict]:
    """Fit without logging; return the clock at fit start, at each epoch end, at fit end, and
    the fit's history (``{metric: [value per epoch]}``)."""
    import keras

    ends: list[float] = []

    class EpochEnds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    fit_start = time.perf_counter()
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                        validation_data=validation_data, callbacks=[*(callbacks or []), EpochEnds()])
    return fit_start, ends, time.perf_counter(), history.history


def reference_probs(model, x_pool: np.ndarray, passes: int) -> np.ndarray:
    """Class probabilities of the pool: ``passes`` ``model.predict`` calls at batch size 32,
    averaged as published (``pred += model.predict(X_unused) / 5``; one pass: the plain predict)."""
    if passes == 1:
        return model.predict(x_pool, batch_size=REF_BATCH_SIZE, verbose=0)
    total = 0
    for _ in range(passes):
        total += model.predict(x_pool, batch_size=REF_BATCH_SIZE, verbose=0) / passes
    return total


def reference_split(n_train: int, n_labeled: int, validation_size: int,
                    seed: int = LABEL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Validation and scored-pool positions of a :func:`step_data` train part.

    The first ``n_labeled`` positions are the labeled set; ``validation_size`` of the others
    (``default_rng([seed, 2])``, without replacement; the published ``np.random.choice``
    drew with replacement) are the validation set, the rest is the pool that is scored.
    """
    rest = np.arange(n_labeled, n_train)
    if validation_size > len(rest) - 1:
        raise ValueError(f"a validation set of {validation_size} needs a pool of more than "
                         f"{validation_size} samples, got {len(rest)}")
    val = np.sort(np.random.default_rng([seed, 2]).choice(rest, validation_size, replace=False))
    return val, np.setdiff1d(rest, val)


def reference_train(ref: Reference, data: Dataset, labeled_idx: np.ndarray, val_idx: np.ndarray,
                    epochs_measured: int) -> tuple[object, dict]:
    """Build and fit the reference model as published; at most ``epochs_measured`` epochs.

    With ``ref.callbacks`` the fit validates on ``val_idx`` every epoch, the callbacks may
    stop it early, and the best checkpoint is loaded after it (all timed). The Keras session is
    cleared first (untimed), as the published loop does after every step. Returns the model
    and ``{"seconds", "measured_seconds", "scaled", "epochs"}``: a fit that the measurement
    cut short (neither all ``ref.epochs`` nor stopped early) is extrapolated to ``ref.epochs``
    (:func:`extrapolate_train_seconds`); for an early-stopping reference that is an upper bound.
    """
    import keras

    # The published loop ends every step with clear_session(); without it the second MNIST
    # model of a process would auto-name its output layer "dense_1", the name of its first Dense.
    keras.backend.clear_session()
    x_lab, y_lab = data.x_train[labeled_idx], data.y_train[labeled_idx]
    validation = (data.x_train[val_idx], data.y_train[val_idx]) if len(val_idx) else None
    epochs_measured = min(epochs_measured, ref.epochs)
    with tempfile.TemporaryDirectory(prefix="benchmark_ref_") as folder:
        checkpoint = os.path.join(folder, "model.weights.h5")
        t0 = time.perf_counter()
        model = ref.build(x_lab.shape[1:], len(data.class_names))
        callbacks = ref.callbacks(checkpoint) if ref.callbacks else None
        fit_start, epoch_ends, fit_end, history = timed_fit(
            model, x_lab, y_lab, epochs_measured, REF_BATCH_SIZE, validation, callbacks)
        if ref.callbacks:
            model.load_weights(checkpoint)
            fit_end = time.perf_counter()
    epochs_run = len(epoch_ends)
    stopped_early = epochs_run < epochs_measured
    complete = stopped_early or epochs_run >= ref.epochs
    train = (fit_end - t0 if complete
             else extrapolate_train_seconds(t0, fit_start, epoch_ends, fit_end, ref.epochs))
    val_acc = history.get("val_acc")
    epochs = {"full": ref.epochs, "measured": epochs_measured, "run": epochs_run,
              "stopped_early": stopped_early, "early_stopping": ref.callbacks is not None,
              "best": int(np.argmax(val_acc)) + 1 if val_acc else None,
              "best_val_acc": float(max(val_acc)) if val_acc else None}
    return model, {"seconds": train, "measured_seconds": fit_end - t0, "scaled": not complete,
                   "epochs": epochs}


def reference_step(ref: Reference, data: Dataset, labeled_idx: np.ndarray, k: int,
                   epochs_measured: int, score_fraction: float, seed: int = LABEL_SEED) -> dict:
    """Time one published-style step; train and score may be measured in part and scaled.

    ``data`` already holds ``ref.inputs`` of the images (the published code converts once,
    before its loop). The pool scored is the train part minus the labeled and validation sets.
    """
    val_idx, pool_idx = reference_split(len(data.x_train), len(labeled_idx), ref.validation_size, seed)
    model, train = reference_train(ref, data, labeled_idx, val_idx, epochs_measured)

    n_pool = len(pool_idx)
    n_scored = min(n_pool, max(k + 1, math.ceil(score_fraction * n_pool)))
    x_scored = data.x_train[pool_idx[:n_scored]]
    t0 = time.perf_counter()
    ref.select(ref.entropy(reference_probs(model, x_scored, ref.predict_passes)), k)
    score_measured = time.perf_counter() - t0

    t0 = time.perf_counter()
    y_pred = model.predict(data.x_test, batch_size=ref.test_batch_size, verbose=0).argmax(axis=1)
    macro_f1 = f1_score(data.y_test, y_pred, average="macro")
    accuracy_score(data.y_test, y_pred)  # the published code reports both; the cost is part of eval
    eval_seconds = time.perf_counter() - t0
    return {"seconds": {"train": train["seconds"], "score": score_measured * n_pool / n_scored,
                        "eval": eval_seconds},
            "measured_seconds": {"train": train["measured_seconds"], "score": score_measured,
                                 "eval": eval_seconds},
            "scaled": {"train": train["scaled"], "score": n_scored < n_pool, "eval": False},
            "epochs": train["epochs"], "n_pool": int(n_pool), "n_validation": len(val_idx),
            "n_scored": int(n_scored), "macro_f1": float(macro_f1)}


def our_step(module, config: dict, data: Dataset, labeled_idx: np.ndarray) -> dict:
    """Time one step of this project's loop, through the loop's own functions."""
    n_classes = len(data.class_names)
    t0 = time.perf_counter()
    model = train_fresh_model(module.build_model, config, data.x_train[labeled_idx],
                              data.y_train[labeled_idx], n_classes, [LABEL_SEED, 0])
    train = time.perf_counter() - t0
    t0 = time.perf_counter()
    rng = np.random.default_rng([LABEL_SEED, 1])
    chosen = select_next(get_strategy(QUERY_STRATEGY), model, data, labeled_idx, config, rng)
    score = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(model, data)
    evaluate_seconds = time.perf_counter() - t0
    subsample = int(config.get("pool_subsample") or 0)
    n_pool = len(data.x_train) - len(labeled_idx)
    seconds = {"train": train, "score": score, "eval": evaluate_seconds}
    return {"seconds": seconds, "measured_seconds": dict(seconds),
            "scaled": {c: False for c in COMPONENTS},
            "epochs": {"full": config["epochs"], "measured": config["epochs"]},
            "n_scored": min(subsample, n_pool) if subsample > 0 else n_pool,
            "macro_f1": metrics["macro_f1"], "n_selected": len(chosen)}


# --------------------------------------------------------------------------- worker processes
def published_inputs(ref: Reference, data: Dataset) -> Dataset:
    """``data`` with ``ref.inputs`` applied to its train and test inputs."""
    return replace(data, x_train=ref.inputs(data.x_train), x_test=ref.inputs(data.x_test))


def measure(spec: dict, data: Dataset, warm_up: bool) -> dict:
    """One measurement (dataset x label count x kind), after an untimed tiny step if ``warm_up``."""
    module = dataset_script(spec["dataset"])
    config, ref = bench.default_config(module, spec["threads"]), REFERENCES[spec["dataset"]]
    if spec["smoke"]:
        config["epochs"] = SMOKE["epochs"]
        if "train_steps" in config:  # a fixed number of updates caps like --quick does
            config["train_steps"] = min(config["train_steps"], cli.QUICK["train_steps"])
        ref = replace(ref, epochs=SMOKE["epochs"])

    def run(part: Dataset, labeled_idx: np.ndarray, tiny: bool = False) -> dict:
        if spec["kind"] == "ours":
            return our_step(module, {**config, "epochs": 1} if tiny else config, part, labeled_idx)
        part = published_inputs(ref, part)  # untimed: the published code converts once, up front
        if tiny:  # a tiny pool: a smaller validation set and k, so that the selection has a pool
            small = TINY["pool"] // 4
            return reference_step(replace(ref, validation_size=min(ref.validation_size, small)),
                                  part, labeled_idx, min(config["batch_size"], small), 1, 1.0)
        epochs_measured = spec["ref_epochs_measured"] or ref.epochs  # None: all
        return reference_step(ref, part, labeled_idx, config["batch_size"], epochs_measured,
                              spec["ref_score_fraction"])

    if warm_up:
        run(*tiny_data(data), tiny=True)
    part, labeled_idx = step_data(data, spec["n_labeled"], spec["smoke"])
    result = run(part, labeled_idx)
    result["seconds"]["total"] = sum(result["seconds"][c] for c in COMPONENTS)
    return {**{k: spec[k] for k in ("dataset", "kind", "n_labeled")},
            "n_pool": len(part.x_train) - len(labeled_idx), "n_test": len(part.x_test),
            "score_fraction": spec["ref_score_fraction"] if spec["kind"] == "reference" else 1.0,
            **result}


def run_measurements(specs: list[dict]) -> list[dict]:
    """Worker entry point: all ``specs`` share this process's thread setting (same kind).

    The first measurement is preceded by an untimed tiny step: TensorFlow's one-time start-up
    belongs to the process, not to a step.
    """
    faulthandler.enable()  # a native crash (TensorFlow) then leaves a traceback on stderr
    first = specs[0]
    setting = bench.configure_process(first["kind"], first["threads"])
    loaded: dict[str, Dataset] = {}
    results = []
    for spec in specs:
        if spec["dataset"] not in loaded:
            module = dataset_script(spec["dataset"])
            loaded[spec["dataset"]] = module.load_data(bench.default_config(module, spec["threads"]),
                                                       spec["data_dir"])
        warm_up = not results
        results.append({**measure(spec, loaded[spec["dataset"]], warm_up), **setting})
    return results


def process_groups(specs: list[dict], smoke: bool) -> list[list[dict]]:
    """One process per measurement; a smoke run shares one per kind to stay fast."""
    if not smoke:
        return [[spec] for spec in specs]
    return [[s for s in specs if s["kind"] == kind] for kind in ("reference", "ours")
            if any(s["kind"] == kind for s in specs)]


# --------------------------------------------------------------------------- reference epochs
def early_stopping_datasets(datasets: list[str]) -> list[str]:
    """Those of ``datasets`` whose reference trains with early stopping (callbacks)."""
    return [ds for ds in datasets if REFERENCES[ds].callbacks is not None]


def reference_epochs_specs(plans: dict, seeds: list[int], args) -> list[dict]:
    """One full reference training per early-stopping dataset x label count x seed."""
    return [{"dataset": ds, "n_labeled": n, "seed": seed, "smoke": args.smoke, "data_dir": args.data_dir}
            for ds, plan in plans.items() if ds in early_stopping_datasets([ds])
            for n in plan["label_counts"] for seed in seeds]


def run_reference_epochs(specs: list[dict]) -> list[dict]:
    """Worker entry point of ``--ref-epochs``: train the reference fully, as published
    (early stopping decides the epochs), for each spec; TensorFlow's default threads.

    Seed ``s`` draws the labeled set (``default_rng(s)``, :func:`step_data`; seed 0 is the
    benchmark's own set), the validation set (:func:`reference_split`) and, through
    ``keras.utils.set_random_seed(s)``, the initial weights and dropout masks. The test set
    is then predicted as published (batch 1024), for its macro-F1.
    """
    import keras

    faulthandler.enable()
    setting = bench.configure_process("reference")
    loaded: dict[str, Dataset] = {}
    results = []
    for spec in specs:
        ds = spec["dataset"]
        module = dataset_script(ds)
        if ds not in loaded:
            loaded[ds] = module.load_data(bench.default_config(module), spec["data_dir"])
        ref = REFERENCES[ds]
        if spec["smoke"]:
            ref = replace(ref, epochs=SMOKE["epochs"])
        part, labeled_idx = step_data(loaded[ds], spec["n_labeled"], spec["smoke"], spec["seed"])
        part = published_inputs(ref, part)
        val_idx, _ = reference_split(len(part.x_train), len(labeled_idx), ref.validation_size, spec["seed"])
        keras.utils.set_random_seed(spec["seed"])
        model, train = reference_train(ref, part, labeled_idx, val_idx, ref.epochs)
        t0 = time.perf_counter()
        y_pred = model.predict(part.x_test, batch_size=ref.test_batch_size, verbose=0).argmax(axis=1)
        eval_seconds = time.perf_counter() - t0
        results.append({**spec, **train["epochs"], "train_seconds": train["seconds"],
                        "eval_seconds": eval_seconds, "n_test": len(part.x_test),
                        "test_macro_f1": float(f1_score(part.y_test, y_pred, average="macro")),
                        **setting})
    return results


def reference_epochs_markdown(report: dict) -> str:
    """``benchmark_ref_epochs.md``: one row per training, then min / mean / max per label count."""
    smoke = ["", "**SMOKE RUN: tiny data, 2 epochs; the numbers mean nothing.**"] if report["smoke"] else []
    rows = [f"| {r['dataset']} | {r['n_labeled']} | {r['seed']} | {r['run']} | {r['best']} | "
            f"{r['best_val_acc']:.3f} | {'yes' if r['stopped_early'] else 'no'} | {r['train_seconds']:.0f} | "
            f"{r['test_macro_f1']:.4f} |" for r in report["measurements"]]
    summary = []
    for (ds, n), group in sorted(group_by_budget(report["measurements"]).items()):
        run = [r["run"] for r in group]
        best = [r["best"] for r in group]
        secs = [r["train_seconds"] for r in group]
        summary.append(f"| {ds} | {n} | {len(group)} | {min(run)} / {np.mean(run):.1f} / {max(run)} | "
                       f"{min(best)} / {np.mean(best):.1f} / {max(best)} | {np.mean(secs):.0f} | "
                       f"{np.mean(secs) / np.mean(run):.1f} |")
    lines = [
        *bench.side_by_side_header(report, "Epochs of the published MNIST recipe under early stopping"),
        f"- Trainings: {len(report['measurements'])} of {report['planned']} planned"
        f"{'' if len(report['measurements']) == report['planned'] else ' (interrupted or still running)'}.",
        "- Reference training as in `code/benchmark.py` (published network, 256-image validation "
        "set, ModelCheckpoint / ReduceLROnPlateau(30) / EarlyStopping(40) on val_acc, at most "
        f"{max(r['full'] for r in report['measurements'])} epochs, batch 32); TensorFlow's default "
        "threads, one process per training.",
        "- Labeled sets drawn at random (`default_rng(seed)`; seed 0 is the benchmark's set), not by "
        "entropy as in a real protocol run.",
        "- Epochs and best epochs do not depend on the machine's load; seconds do.",
        *smoke, "",
        "| dataset | labels | seed | epochs run | best epoch | best val acc | stopped early | train s | test macro-F1 |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
        *rows, "",
        "| dataset | labels | trainings | epochs run min / mean / max | best epoch min / mean / max "
        "| mean train s | s per epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *summary, "",
    ]
    return "\n".join(lines)


def group_by_budget(measurements: list[dict]) -> dict:
    """``{(dataset, n_labeled): [measurements]}``."""
    groups: dict = {}
    for m in measurements:
        groups.setdefault((m["dataset"], m["n_labeled"]), []).append(m)
    return groups


def main_reference_epochs(args, argv) -> dict:
    """``--ref-epochs``: full reference trainings, one fresh process each (smoke: one in all).

    The report is rewritten after every training, so an interrupted run keeps what it measured.
    """
    plans = {ds: plan_dataset(ds, args.smoke, args.threads) for ds in early_stopping_datasets(args.datasets)}
    specs = reference_epochs_specs(plans, args.ref_epochs, args)
    report = {"command": bench.command_line("benchmark", argv), "cpu_cores": os.cpu_count(),
              "cpu_model": runs.cpu_model(), "git_commit": runs.git_commit(),
              "created_at": time.strftime("%Y-%m-%d %H:%M:%S %z"), "smoke": args.smoke,
              "planned": len(specs), "measurements": []}
    for group in ([specs] if args.smoke else [[s] for s in specs]):
        for m in bench.in_fresh_process(group, run_reference_epochs):
            print(f"{m['dataset']:>6} {m['n_labeled']:5d} labels seed {m['seed']}: {m['run']} epochs "
                  f"(best {m['best']}, val acc {m['best_val_acc']:.3f}, stopped early: {m['stopped_early']}), "
                  f"train {m['train_seconds']:.0f} s, test macro-F1 {m['test_macro_f1']:.4f}", flush=True)
            report["measurements"].append(m)
            report.update(tensorflow=m["tensorflow"], gpus=m["gpus"])
        runs.write_json_atomic(args.out_dir / "benchmark_ref_epochs.json", report)
        runs.write_text_atomic(args.out_dir / "benchmark_ref_epochs.md", reference_epochs_markdown(report))
    print(f"wrote {args.out_dir / 'benchmark_ref_epochs.md'} and benchmark_ref_epochs.json")
    return report


# --------------------------------------------------------------------------- report
def ratio(numerator, denominator):
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def dataset_report(dataset: str, plan: dict, measurements: list[dict], protocol_dir: Path) -> dict:
    """Per-step comparison, projected reference protocol and measured protocol of one dataset."""
    mine = [m for m in measurements if m["dataset"] == dataset]
    by = {(m["kind"], m["n_labeled"]): m for m in mine}
    steps = {}
    for n in plan["label_counts"]:
        ref, ours = by[("reference", n)]["seconds"], by[("ours", n)]["seconds"]
        steps[n] = {"reference": ref, "ours": ours, "speedup": ratio(ref["total"], ours["total"])}
    p = plan["protocol"]
    budget = (p["start_size"], p["batch_size"], p["n_steps"], p["n_seeds"], p["strategies"])
    projected = project_protocol_seconds({n: s["reference"] for n, s in steps.items()}, *budget)
    ours_serial = project_protocol_seconds({n: s["ours"] for n, s in steps.items()}, *budget)
    run = latest_protocol_run(protocol_dir, plan["results_folder"], plan["config"], p["n_seeds"],
                              p["strategies"], os.cpu_count(), runs.cpu_model())
    measured_min = run["wall_seconds"] / 60 if run else None
    return {"label_counts": plan["label_counts"], "protocol": p, "config": plan["config"],
            "steps": {str(n): s for n, s in steps.items()},
            "speedup_step_final": steps[plan["label_counts"][-1]]["speedup"],
            "reference_protocol_minutes_projected": projected["total"] / 60,
            "reference_protocol_minutes_projected_by_component": {k: v / 60 for k, v in projected.items()},
            "ours_protocol_minutes_projected_serial": ours_serial["total"] / 60,
            # one single-threaded process per core, the runs spread evenly: a lower bound
            "ours_protocol_minutes_projected_parallel": ours_serial["total"] / 60 / (os.cpu_count() or 1),
            "protocol_run": run, "protocol_minutes_measured": measured_min,
            "speedup_protocol": ratio(projected["total"] / 60, measured_min),
            "measurements": mine}


def build_report(plans: dict, measurements: list[dict], args, command: str) -> dict:
    """Everything ``benchmark.json`` holds; top-level sums cover the benchmarked datasets."""
    per_dataset = {ds: dataset_report(ds, plan, measurements, args.protocol_results_dir)
                   for ds, plan in plans.items()}
    projected = sum(r["reference_protocol_minutes_projected"] for r in per_dataset.values())
    measured = [r["protocol_minutes_measured"] for r in per_dataset.values()]
    measured_total = None if None in measured else sum(measured)
    ours = next(m for m in measurements if m["kind"] == "ours")
    return {
        **{f"speedup_step_{ds}": (per_dataset[ds]["speedup_step_final"] if ds in per_dataset else None)
           for ds in DATASETS},
        "reference_protocol_minutes_projected": projected,
        "protocol_minutes_measured": measured_total,
        "speedup_protocol": ratio(projected, measured_total),
        "cpu_cores": os.cpu_count(), "cpu_model": runs.cpu_model(),
        "tensorflow": ours["tensorflow"], "gpus": ours["gpus"], "ours_threads": ours["threads"],
        "command": command, "smoke": args.smoke, "git_commit": runs.git_commit(),
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "options": {"datasets": list(plans), "ref_train_epochs_measured": args.ref_train_epochs_measured,
                    "ref_score_fraction": args.ref_score_fraction, "threads": args.threads,
                    "protocol_results_dir": str(args.protocol_results_dir)},
        "datasets": per_dataset,
    }


def fmt(seconds, scaled=False) -> str:
    """Seconds with one decimal; ``*`` marks a number scaled from a partial measurement."""
    return "–" if seconds is None else f"{seconds:.1f}{'*' if scaled else ''}"


def fmt_ratio(value) -> str:
    """A speed-up as ``12.3x``, or a dash when unknown."""
    return "–" if value is None else f"{value:.1f}x"


def step_rows(report: dict) -> list[str]:
    """Markdown rows: per dataset and label count, reference and our seconds and the ratio."""
    rows = []
    for ds, r in report["datasets"].items():
        for m_ref in (m for m in r["measurements"] if m["kind"] == "reference"):
            n = m_ref["n_labeled"]
            m_ours = next(m for m in r["measurements"] if m["kind"] == "ours" and m["n_labeled"] == n)
            ref = [fmt(m_ref["seconds"][c], m_ref["scaled"][c]) for c in COMPONENTS]
            ours = [fmt(m_ours["seconds"][c]) for c in COMPONENTS]
            total_scaled = any(m_ref["scaled"].values())
            ref_total = fmt(m_ref["seconds"]["total"], total_scaled)
            rows.append(f"| {ds} | {n} | {' | '.join(ref)} | {ref_total} | "
                        f"{' | '.join(ours)} | {fmt(m_ours['seconds']['total'])} | "
                        f"{fmt_ratio(r['steps'][str(n)]['speedup'])} |")
    return rows


def scaling_notes(report: dict) -> list[str]:
    """Which reference numbers were measured in part and how they were scaled, and how many
    epochs an early-stopping reference trained."""
    notes = []
    for m in (m for r in report["datasets"].values() for m in r["measurements"] if m["kind"] == "reference"):
        where = f"{m['dataset']} at {m['n_labeled']} labels"
        epochs = m["epochs"]
        if m["scaled"]["train"] and epochs.get("early_stopping"):
            notes.append(f"- {where}: train measured over {epochs['measured']} epoch(s) "
                         f"({m['measured_seconds']['train']:.1f} s), early stopping had not ended it; "
                         f"extrapolated to the cap of {epochs['full']} epochs: an upper bound.")
        elif m["scaled"]["train"]:
            notes.append(f"- {where}: train measured over {epochs['measured']} of {epochs['full']} "
                         f"epochs ({m['measured_seconds']['train']:.1f} s), extrapolated to all epochs.")
        elif epochs.get("early_stopping"):
            notes.append(f"- {where}: trained in full, {epochs['run']} of at most {epochs['full']} epochs "
                         f"({'stopped early' if epochs['stopped_early'] else 'not stopped early'}; "
                         f"best epoch {epochs['best']}).")
        if m["scaled"]["score"]:
            notes.append(f"- {where}: scoring measured on {m['n_scored']} of {m['n_pool']} pool samples "
                         f"({m['measured_seconds']['score']:.1f} s), "
                         f"scaled by {m['n_pool'] / m['n_scored']:.2f}.")
    return notes or ["- none: every reference number was measured in full."]


def protocol_rows(report: dict) -> list[str]:
    """Markdown rows: projected reference protocol vs the measured protocol run, per dataset."""
    rows = []
    for ds, r in report["datasets"].items():
        run = r["protocol_run"]
        used = (f"grid of {time.strftime('%Y-%m-%d %H:%M', time.localtime(run['started_at']))}, "
                f"jobs {run['jobs']}, threads {run.get('threads')}, "
                f"code {str(run.get('git_commit'))[:12]}, "
                f"{'fresh' if run.get('fresh') else 'verified from result files'}"
                if run else "no complete default-protocol run in grid_log.jsonl")
        rows.append(f"| {ds} | {r['reference_protocol_minutes_projected']:.1f} | "
                    f"{fmt(r['ours_protocol_minutes_projected_serial'])} | "
                    f"{fmt(r['ours_protocol_minutes_projected_parallel'])} | "
                    f"{fmt(r['protocol_minutes_measured'])} | {fmt_ratio(r['speedup_protocol'])} | {used} |")
    total = report["protocol_minutes_measured"]
    serial = sum(r["ours_protocol_minutes_projected_serial"] for r in report["datasets"].values())
    parallel = sum(r["ours_protocol_minutes_projected_parallel"] for r in report["datasets"].values())
    rows.append(f"| **all** | {report['reference_protocol_minutes_projected']:.1f} | {fmt(serial)} | "
                f"{fmt(parallel)} | {fmt(total)} | "
                f"{fmt_ratio(report['speedup_protocol'])} | "
                f"{'sum of the datasets' if total is not None else 'not available: a dataset lacks a run'} |")
    return rows


def stored_note(report: dict) -> list[str]:
    """The line naming the earlier report whose step times a ``--measurements-from`` report uses."""
    src = report.get("measurements_from")
    if not src:
        return []
    return [f"- Step times not measured by this command: taken from `{src['path']}` "
            f"(`{src['command']}`, {src['created_at']}, code at {src['git_commit']}); the protocol "
            "wall time is read from the grid logs as they are now."]


def markdown(report: dict) -> str:
    """``benchmark.md``: machine, command, per-step table, protocol projection vs measurement."""
    smoke = ["", "**SMOKE RUN: tiny data, 2 epochs; the numbers mean nothing.**"] if report["smoke"] else []
    lines = [
        *bench.side_by_side_header(report, "Speed benchmark: published-style step vs this project's step"),
        f"- Reference: TensorFlow's default threads (all cores), one process. Ours: "
        f"{report['ours_threads']} TensorFlow thread(s) per process, as a protocol worker with "
        f"--threads {report['ours_threads']}.",
        *smoke, *stored_note(report), "",
        "## Seconds per active-learning step (train + score pool + evaluate on test)", "",
        "| dataset | labels | ref train | ref score | ref eval | ref total | ours train | ours score "
        "| ours eval | ours total | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *step_rows(report), "",
        "`*` scaled from a partial measurement; all other numbers are measured. Reference training:",
        *scaling_notes(report), "",
        "## Whole protocol (all seeds x strategies x steps), minutes", "",
        "Reference: each component interpolated linearly in the number of labels between the two "
        "measured label counts and summed over the protocol's steps (no scoring at step 0 nor for "
        "random; one process, so the sum is the wall time). Ours projected: our measured steps "
        "summed the same way, in one process, and that divided by the machine's "
        f"{report['cpu_cores']} cores (one run per core, spread evenly: a lower bound on the wall "
        "time). Measured: wall time of this project's latest complete default-protocol run on this "
        f"machine, same config and threads (`{shown_path(report['options']['protocol_results_dir'])}"
        "/<dataset>/grid_log.jsonl`); speed-up: "
        "reference projected over ours measured.",
        "",
        f"| dataset | reference projected | ours projected, 1 process | ours projected, "
        f"{report['cpu_cores']} cores | ours measured | speed-up | protocol run used |",
        "|---|---:|---:|---:|---:|---:|---|",
        *protocol_rows(report), "",
    ]
    return "\n".join(lines)


def write_outputs(report: dict, out_dir: Path) -> None:
    """``benchmark.json`` and ``benchmark.md`` in ``out_dir``, each written atomically."""
    runs.write_json_atomic(out_dir / "benchmark.json", report)
    runs.write_text_atomic(out_dir / "benchmark.md", markdown(report))


# --------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python code/benchmark.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), metavar="A,B",
                        help=f"comma-separated datasets to benchmark (default {','.join(DATASETS)})")
    parser.add_argument("--ref-train-epochs-measured", type=int, default=None, metavar="K",
                        help="train the reference only this many epochs and extrapolate (default: all)")
    parser.add_argument("--ref-score-fraction", type=float, default=None, metavar="F",
                        help="score only this fraction of the pool in the reference and scale (default 1.0)")
    parser.add_argument("--threads", type=int, default=cli.DEFAULT_THREADS, metavar="T",
                        help="TensorFlow threads of our worker, as a protocol run's --threads "
                             f"(default {cli.DEFAULT_THREADS}); the reference keeps TensorFlow's defaults")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder searched first for the data (then $AL_DATA_DIR/<dataset>, data/)")
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help="where benchmark.md/.json go (default results/; --smoke: a temporary folder)")
    parser.add_argument("--protocol-results-dir", default="results", metavar="DIR",
                        help="results folder whose grid logs give the protocol wall time (default results/)")
    parser.add_argument("--ref-epochs", default=None, metavar="S1,S2",
                        help="instead of the benchmark: train the early-stopping references (mnist) "
                             "fully at both label counts once per seed (labeled set, validation set and "
                             "weights drawn from the seed) and report the epochs early stopping ran, "
                             "to <out-dir>/benchmark_ref_epochs.md/.json")
    parser.add_argument("--measurements-from", default=None, metavar="FILE",
                        help="measure nothing: rebuild the report from the step times in an earlier "
                             "benchmark.json of this machine, with the protocol wall time read now from "
                             "--protocol-results-dir (a protocol run made after the benchmark)")
    parser.add_argument("--smoke", action="store_true",
                        help="test the script only: 512 pool and 256 test samples, labels START_SIZE/4 "
                             "and /2, 2 epochs (reference: 1 measured; a fixed TRAIN_STEPS capped at "
                             f"{cli.QUICK['train_steps']} as with --quick), half the pool scored, "
                             "one process per kind instead of per measurement")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown or not args.datasets:
        parser.error(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
    if args.measurements_from is not None:
        clash = [flag for flag, given in (("--smoke", args.smoke), ("--ref-epochs", args.ref_epochs is not None),
                                          ("--ref-train-epochs-measured", args.ref_train_epochs_measured is not None),
                                          ("--ref-score-fraction", args.ref_score_fraction is not None)) if given]
        if clash:
            parser.error(f"--measurements-from measures nothing, so it takes no {', '.join(clash)}: the "
                         "stored report's own settings are used")
    if args.ref_train_epochs_measured is None and args.smoke:
        args.ref_train_epochs_measured = SMOKE["ref_epochs_measured"]
    if args.ref_score_fraction is None:
        args.ref_score_fraction = SMOKE["ref_score_fraction"] if args.smoke else 1.0
    if (args.ref_train_epochs_measured or 1) < 1 or not 0 < args.ref_score_fraction <= 1:
        parser.error("--ref-train-epochs-measured must be >= 1 and --ref-score-fraction in (0, 1]")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.ref_epochs is not None:
        try:
            args.ref_epochs = [int(s) for s in args.ref_epochs.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--ref-epochs takes comma-separated integer seeds, e.g. 0,1,2; got {args.ref_epochs!r}")
        if not args.ref_epochs or min(args.ref_epochs) < 0:
            parser.error("--ref-epochs needs at least one seed, each >= 0 (e.g. 0,1,2)")
        if not early_stopping_datasets(args.datasets):
            parser.error(f"--ref-epochs measures references with early stopping "
                         f"({', '.join(early_stopping_datasets(list(DATASETS)))}); "
                         f"--datasets {','.join(args.datasets)} has none")
    args.out_dir = bench.out_folder("benchmark", args.out_dir, args.smoke)
    args.protocol_results_dir = resolve_repo_path(args.protocol_results_dir)
    return args


def plan_dataset(dataset: str, smoke: bool, threads: int = cli.DEFAULT_THREADS) -> dict:
    """What to measure for a dataset, read from its script: config, protocol, label counts."""
    module = dataset_script(dataset)
    config = bench.default_config(module, threads)
    protocol = bench.protocol_of(module)
    return {"config": config, "protocol": protocol, "results_folder": results_folder(module, config, dataset),
            "label_counts": benchmark_label_counts(protocol, smoke)}


def measurement_specs(plans: dict, args) -> list[dict]:
    """Reference and ours at each label count, interleaved so slow drifts in load hit both."""
    return [{"dataset": ds, "kind": kind, "n_labeled": n, "smoke": args.smoke, "threads": args.threads,
             "ref_epochs_measured": args.ref_train_epochs_measured,
             "ref_score_fraction": args.ref_score_fraction, "data_dir": args.data_dir}
            for ds, plan in plans.items() for n in plan["label_counts"] for kind in ("reference", "ours")]


def describe(m: dict) -> str:
    """One progress line per measurement; ``*`` marks scaled numbers."""
    parts = ", ".join(f"{c} {fmt(m['seconds'][c], m['scaled'][c])}" for c in COMPONENTS)
    total = m["seconds"]["total"]
    return f"{m['dataset']:>6} {m['kind']:>9} {m['n_labeled']:5d} labels: {parts}, total {total:.1f} s"


def stored_measurements(path: Path, plans: dict, args) -> tuple[dict, list[dict]]:
    """The measurements of the earlier report at ``path`` for the datasets of ``plans``.

    Refused (``SystemExit`` with the reason) unless the file is a benchmark report that is not a
    smoke run, holds every dataset with the config its script runs with now, and was measured on
    a machine with this CPU model and core count (a protocol wall time of another machine would
    not be comparable). Sets ``args``' partial-measurement options to the stored ones.
    """
    def refuse(why):
        raise SystemExit(f"error: --measurements-from {path}: {why}; run python code/benchmark.py "
                         "to measure the steps again")
    try:
        earlier = json.loads(Path(path).read_text())
        machine = (earlier["cpu_model"], earlier["cpu_cores"])
        options = earlier["options"]
        held = earlier["datasets"]
    except OSError as exc:
        refuse(f"cannot be read ({exc.strerror or exc})")
    except (ValueError, KeyError, TypeError) as exc:
        refuse(f"not a benchmark report ({exc!r})")
    missing = [ds for ds in plans if not isinstance(held.get(ds), dict)
               or not isinstance(held[ds].get("measurements"), list)]
    if missing:
        refuse(f"it holds no measurements of {', '.join(missing)} (pass --datasets "
               f"{','.join(ds for ds in plans if ds not in missing) or '...'}, or measure them)")
    stored = {ds: held[ds] for ds in plans}
    if earlier.get("smoke"):
        refuse("it is a smoke run, whose numbers mean nothing")
    if machine != (runs.cpu_model(), os.cpu_count()):
        refuse(f"measured on {machine[1]} cores of {machine[0]!r}, this machine has "
               f"{os.cpu_count()} of {runs.cpu_model()!r}")
    for ds, plan in plans.items():
        if stored[ds].get("config") != plan["config"]:
            refuse(f"{ds} was measured with another config than code/{ds}.py runs with now "
                   f"(--threads included: {plan['config'].get('threads')} now)")
    args.ref_train_epochs_measured = options.get("ref_train_epochs_measured")
    args.ref_score_fraction = options.get("ref_score_fraction")
    return earlier, [m for ds in plans for m in stored[ds]["measurements"]]


def main(argv=None) -> dict:
    """Measure every dataset x label count x kind in its own process, then write the report
    (``--ref-epochs``: :func:`main_reference_epochs` instead; ``--measurements-from``: the
    report from stored measurements)."""
    args = parse_args(argv)
    if args.ref_epochs is not None:
        return main_reference_epochs(args, argv)
    plans = {ds: plan_dataset(ds, args.smoke, args.threads) for ds in args.datasets}
    earlier = None
    if args.measurements_from is not None:
        earlier, measurements = stored_measurements(Path(args.measurements_from), plans, args)
    else:
        measurements = []
        for group in process_groups(measurement_specs(plans, args), args.smoke):
            for m in bench.in_fresh_process(group, run_measurements):
                print(describe(m), flush=True)
                measurements.append(m)
    report = build_report(plans, measurements, args, bench.command_line("benchmark", argv))
    if earlier is not None:  # where the step times were measured; a rebuilt report keeps its origin
        report["measurements_from"] = earlier.get("measurements_from") or {
            "path": str(args.measurements_from), "command": earlier["command"],
            "created_at": earlier["created_at"], "git_commit": earlier["git_commit"]}
    write_outputs(report, args.out_dir)
    for key in ("speedup_step_mitbih", "speedup_step_mnist", "reference_protocol_minutes_projected",
                "protocol_minutes_measured", "speedup_protocol"):
        print(f"{key}: {report[key] if report[key] is None else round(report[key], 2)}")
    print(f"wrote {args.out_dir / 'benchmark.md'} and benchmark.json")
    return report


if __name__ == "__main__":
    main()
