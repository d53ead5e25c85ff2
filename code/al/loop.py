"""The active-learning loop, shared by every dataset script. It knows nothing about datasets.

Protocol (one run = one strategy under one seed):

1. draw ``start_size`` labeled samples at random from the seed alone, so every strategy
   under the same seed starts from the same set (paired comparison);
2. train a *fresh* model on all labeled samples (and the data's base samples, labeled before
   the run, if it has any: then ``start_size`` may be 0) and evaluate it on the full test set;
3. ``n_steps`` times: let the strategy pick ``batch_size`` new samples (step k:
   ``batch_sizes[k - 1]`` when the config lists them) from the unlabeled
   pool, retrain a fresh model, evaluate.

Labels are the budget: training, early stopping and class weights only ever see the
selected samples (and the data's base samples, labeled before the run, when it has any); the test set is used for the reported evaluation and nothing else.

After every step the whole run file (``al.runs``) is replaced atomically, with the step's
``selected`` dataset indices, so an interrupted run loses at most the step in progress.
Rerunning continues from the last completed step and makes the same selections as an
uninterrupted run: every random draw is seeded from (seed, step), and the model that
scores the pool is retrained deterministically on the same thread count
(``config["threads"]``, which the worker sets before TensorFlow starts).

Each step also records the model's predicted classes and its mean and largest prediction
entropy on a fixed *stop set*: ``STOP_SET_SIZE`` pool samples drawn from a generator of their
own (:func:`stop_set_indices`), so that label-free stopping criteria (:mod:`al.stopping`) can
be evaluated later without rerunning the grid; and the test-set confusion matrix (rows: true
class, columns: predicted), from which any per-class metric can be derived.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from al import runs
from al.data_common import Dataset
from al.keras_ops import PREDICT_BATCH_SIZE, configure_tensorflow, configured_threads, gpu_names, predict_proba
from al.strategies import MCDropoutStrategy, entropy, get_strategy

LOOP_KEYS = ("start_size", "batch_size", "n_steps", "epochs", "fit_batch_size",
             "val_fraction", "patience", "class_weight", "pool_subsample", "threads")
STOP_SET_SIZE = 2000
STOP_SET_STREAM = 2 ** 32 - 1   # the stop set's generator: default_rng([seed, STOP_SET_STREAM])
CLASS_WEIGHT_MODES = ("none", "balanced", "sqrt")
LR_SCHEDULES = ("constant", "cosine", "onecycle")
MIN_EPOCH_SAMPLES = 2048  # with train_steps, small labeled sets are tiled into epochs this long


class ConfigMismatchError(RuntimeError):
    """A run file on disk was written with other hyperparameters, data or settings."""


class ModifiedRunError(ConfigMismatchError):
    """A run file on disk is corrupt, or its content does not match its digest."""


# --------------------------------------------------------------------------- the config
def final_budget(config: dict) -> int:
    """Labels at the end of a run: ``start_size`` plus every step's batch."""
    return int(config["start_size"]) + sum(batch_size_at(config, k) for k in range(1, int(config["n_steps"]) + 1))


def batch_size_at(config: dict, step: int) -> int:
    """Samples selected at ``step`` (1..n_steps): ``batch_sizes[step - 1]`` if the config lists
    per-step sizes (for budgets such as 0, 5, 10, 20, 40, 80), else ``batch_size``."""
    sizes = config.get("batch_sizes") or []
    return int(sizes[step - 1]) if sizes else int(config["batch_size"])


def check_config(config: dict, n_pool: int | None = None, has_base: bool = False) -> None:
    """The one validation point of a run config; raises ValueError saying what to change.

    Checks that every loop key is there, sizes are positive, fractions in range, and (with
    ``n_pool``) that the pool holds the final budget. ``start_size`` may be 0 only when the
    data carries base samples (``has_base``: the first model is trained on those alone).
    """
    missing = [k for k in LOOP_KEYS if k not in config]
    if missing:
        raise ValueError(f"config lacks the loop hyperparameters {missing}")
    if has_base and config["start_size"] == 0:
        pass
    elif not isinstance(config["start_size"], int) or config["start_size"] <= 0:
        raise ValueError(f"start_size must be a positive integer, got {config['start_size']!r}"
                         + ("" if has_base else " (0 only for data with base samples labeled before the run)"))
    for key in ("batch_size", "epochs", "fit_batch_size", "threads"):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise ValueError(f"{key} must be a positive integer, got {config[key]!r}")
    for key in ("n_steps", "patience", "pool_subsample", "train_steps"):
        if key not in config:
            continue
        if not isinstance(config[key], int) or config[key] < 0:
            raise ValueError(f"{key} must be 0 or a positive integer, got {config[key]!r}")
    if not 0 <= config["val_fraction"] < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {config['val_fraction']}")
    if (config["class_weight"] or "none") not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {config['class_weight']!r}")
    if (config.get("lr_schedule") or "constant") not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {config['lr_schedule']!r}")
    sizes = config.get("batch_sizes") or []
    if sizes and (len(sizes) != config["n_steps"] or not all(isinstance(b, int) and b > 0 for b in sizes)):
        raise ValueError(f"batch_sizes must list one positive integer per step (n_steps = {config['n_steps']}), "
                         f"got {sizes!r}")
    subsample = config["pool_subsample"]
    if sizes and 0 < subsample < max(sizes):
        raise ValueError(f"pool_subsample ({subsample}) must be 0 (off) or at least the largest batch ({max(sizes)})")
    if not sizes and 0 < subsample < config["batch_size"]:
        raise ValueError(f"pool_subsample ({subsample}) must be 0 (off) or at least batch_size "
                         f"({config['batch_size']}): each step scores that many samples.")
    if n_pool is not None and final_budget(config) > n_pool:
        raise ValueError(
            f"start_size + the steps' batches = {final_budget(config)} labels, but the pool holds "
            f"only {n_pool} samples; lower start_size, batch_size or n_steps.")


# --------------------------------------------------------------------------- training
def class_weights(y: np.ndarray, n_classes: int, mode: str | None) -> dict | None:
    """Class weights from the *labeled* set only; absent classes 1.

    'balanced': n / (k * count_c) (k classes present); 'sqrt': the square root of that (a
    milder correction); 'none': no weights.
    """
    if not mode or mode == "none":
        return None
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    if mode == "sqrt":
        weights = np.sqrt(weights)
    return {c: float(w) for c, w in enumerate(weights)}


def fit_plan(config: dict, n: int) -> tuple[int, int]:
    """(repeats, epochs) of one fit on ``n`` samples.

    By default the labeled set is used as it is for ``epochs`` epochs. With ``train_steps`` >
    0 the number of optimizer updates is fixed instead, whatever the labeled set's size: the
    set is tiled ``repeats`` times so that an epoch holds at least ``MIN_EPOCH_SAMPLES``
    samples (Keras' per-epoch overhead would dominate tiny epochs), and ``epochs`` is chosen
    so that epochs x batches per epoch is as close to ``train_steps`` as whole epochs allow.
    """
    steps = int(config.get("train_steps", 0) or 0)
    if steps <= 0:
        return 1, int(config["epochs"])
    repeats = max(1, math.ceil(MIN_EPOCH_SAMPLES / max(n, 1)))
    per_epoch = math.ceil(n * repeats / int(config["fit_batch_size"]))
    return repeats, max(1, round(steps / per_epoch))


def learning_rate_callback(config: dict, total_steps: int):
    """A Keras callback setting the learning rate before every batch, or None (constant).

    'cosine': ``lr * (1 + cos(pi t / T)) / 2``; 'onecycle': linear warm-up from ``lr / 25`` to
    ``lr`` over the first 30% of the ``T`` updates, then cosine down to ``lr / 1e4``
    (Smith & Topin 2019).
    """
    import keras
    kind = config.get("lr_schedule", "constant") or "constant"
    if kind == "constant":
        return None
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    base, total = float(config["learning_rate"]), max(1, int(total_steps))

    def rate(t: int) -> float:
        if kind == "cosine":
            return base * 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
        warm = max(1, int(0.3 * total))
        if t < warm:
            return base / 25 + (base - base / 25) * t / warm
        frac = min(1.0, (t - warm) / max(1, total - warm))
        return base / 1e4 + (base - base / 1e4) * 0.5 * (1 + math.cos(math.pi * frac))

    class Schedule(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t = 0

        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate.assign(rate(self.t))
            self.t += 1

    return Schedule()


def train_fresh_model(build_model: Callable, config: dict, x: np.ndarray, y: np.ndarray,
                      n_classes: int, seed_seq: list[int]):
    """Build and fit a new model on the labeled samples only, reproducibly from ``seed_seq``."""
    import keras
    keras.utils.set_random_seed(int(np.random.SeedSequence(seed_seq).generate_state(1)[0]))
    keras.backend.clear_session(free_memory=False)
    model = build_model(config, x.shape[1:], n_classes)
    callbacks, validation = [], None
    if config.get("patience", 0) > 0 and config.get("val_fraction", 0) > 0:
        # The validation split comes out of the selected labels: labels are the budget.
        rng = np.random.default_rng([*seed_seq, 1])
        order = rng.permutation(len(x))
        n_val = min(max(1, int(round(config["val_fraction"] * len(x)))), len(x) - 1)
        val, fit = order[:n_val], order[n_val:]
        validation = (x[val], y[val])
        x, y = x[fit], y[fit]
        callbacks.append(keras.callbacks.EarlyStopping(
            patience=config["patience"], restore_best_weights=True))
    weights = class_weights(y, n_classes, config.get("class_weight"))
    repeats, epochs = fit_plan(config, len(x))
    if repeats > 1:
        x, y = np.tile(x, (repeats,) + (1,) * (x.ndim - 1)), np.tile(y, repeats)
    schedule = learning_rate_callback(config, epochs * math.ceil(len(x) / config["fit_batch_size"]))
    if schedule is not None:
        callbacks.append(schedule)
    model.fit(x, y, epochs=epochs, batch_size=config["fit_batch_size"],
              validation_data=validation, callbacks=callbacks, verbose=0, class_weight=weights)
    return model


def evaluate(model, data: Dataset) -> dict:
    y_pred = predict_proba(model, data.x_test).argmax(axis=1)
    labels = list(range(len(data.class_names)))
    per_class = f1_score(data.y_test, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "macro_f1": float(f1_score(data.y_test, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "accuracy": float(accuracy_score(data.y_test, y_pred)),
        "per_class_f1": dict(zip(data.class_names, map(float, per_class))),
        "confusion_matrix": confusion_matrix(data.y_test, y_pred, labels=labels).tolist(),
    }


# --------------------------------------------------------------------------- selection
def select_next(strategy, model, data: Dataset, labeled_idx: np.ndarray, config: dict,
                rng: np.random.Generator, batch_size: int | None = None) -> np.ndarray:
    """Dataset indices of the next batch (``batch_size``, default the config's): never
    already labeled, never repeated."""
    batch_size = int(config["batch_size"] if batch_size is None else batch_size)
    unlabeled_idx = np.setdiff1d(np.arange(len(data.x_train)), labeled_idx)
    subsample = int(config.get("pool_subsample") or 0)
    if 0 < subsample < len(unlabeled_idx):
        # Optional speed-up: score a random part of the pool (off by default).
        unlabeled_idx = np.sort(rng.choice(unlabeled_idx, subsample, replace=False))
    positions = strategy.select(model, data.x_train[unlabeled_idx], batch_size, rng,
                                data.x_train[labeled_idx])
    chosen = unlabeled_idx[np.asarray(positions, dtype=np.int64)]
    if len(np.unique(chosen)) != batch_size:
        raise RuntimeError(f"strategy {strategy.name} returned duplicate or too few samples")
    return chosen


def stop_set_indices(seed: int, n_pool: int, size: int | None = None) -> np.ndarray:
    """The run's stop set: ``size`` (default ``STOP_SET_SIZE``) pool indices from a generator
    used for nothing else."""
    size = STOP_SET_SIZE if size is None else size
    rng = np.random.default_rng([seed, STOP_SET_STREAM])
    return np.sort(rng.choice(n_pool, min(size, n_pool), replace=False))


# --------------------------------------------------------------------------- run files
def numeric_settings(strategy) -> dict:
    """Settings outside the config that change a run's numbers (recorded; resume compares)."""
    return {"predict_batch_size": PREDICT_BATCH_SIZE, "stop_set_size": STOP_SET_SIZE,
            "mc_passes": strategy.mc_passes if isinstance(strategy, MCDropoutStrategy) else None}


def new_run(dataset: str, strategy, seed: int, config: dict, data: Dataset) -> dict:
    return {"format": runs.FORMAT, "dataset": dataset, "strategy": strategy.name, "seed": seed,
            "config": config, "git_commit": runs.git_commit(), "versions": runs.library_versions(),
            "provenance": {"data": data.provenance(), "cpu_model": runs.cpu_model(),
                           "devices": gpu_names(), "threads": config["threads"],
                           "settings": numeric_settings(strategy),
                           "environment": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
                           "resumed": []},
            "complete": False, "steps": [], "sha256": ""}


def run_differences(run: dict, config: dict, data_provenance: dict, strategy,
                    lenient: bool = False) -> tuple[list[str], list[str]]:
    """What keeps ``run`` from belonging to a grid of ``config`` on the data described by
    ``data_provenance``: (problems, notes). The one comparison of resume and the pre-flight check.

    Compared: the config, the data's content hash and the numeric settings
    (:func:`numeric_settings`). With ``lenient`` (a run that is only read, never continued)
    another thread count, and the keys a converted run did not record, are notes instead of
    problems: the same protocol, numbers not bit-comparable.
    """
    keys = runs.differing_keys(run["config"], config)
    soft = {"threads", *run.get("converted", {}).get("unrecorded_keys", [])} if lenient else set()
    problems = runs.config_differences(run["config"], config, [k for k in keys if k not in soft])
    notes = runs.config_differences(run["config"], config, [k for k in keys if k in soft])
    data_diff = runs.data_difference(run, data_provenance)
    if data_diff:
        problems.append(data_diff)
    recorded, now = run["provenance"].get("settings"), numeric_settings(strategy)
    if recorded is not None and recorded != now:
        problems.append(f"settings {recorded} on disk vs {now} now")
    return problems, notes


def load_previous(path: Path, config: dict, data: Dataset, strategy) -> dict | None:
    """The run on disk if it can be continued under ``config`` on ``data``, else an error.

    Raises ModifiedRunError for a file that fails :func:`al.runs.read_run`, and
    ConfigMismatchError for one written with another config, other data or other settings.
    """
    if not path.exists():
        return None
    try:
        run = runs.read_run(path)
    except runs.RunFileError as err:
        raise ModifiedRunError(f"cannot resume: {err}") from None
    problems, _ = run_differences(run, config, data.provenance(), strategy)
    if problems:
        raise ConfigMismatchError(
            f"{path} was written with a different config ({'; '.join(problems)}). "
            "Rerun with --fresh to overwrite it, or pass --results-dir to keep both.")
    return run


def stop_set_record(stop_probs: np.ndarray) -> dict:
    """What label-free stopping criteria (:mod:`al.stopping`) read of the stop set: the
    predicted classes, and the mean and largest prediction entropy (nats)."""
    uncertainty = entropy(stop_probs)
    return {"stop_set_predictions": runs.encode_uint8(stop_probs.argmax(axis=1)),
            "stop_set_mean_entropy": round(float(uncertainty.mean()), 6),
            "stop_set_max_entropy": round(float(uncertainty.max()), 6)}


def step_record(step: int, labeled_idx: np.ndarray, selected: np.ndarray, data: Dataset,
                metrics: dict, seconds: dict, stop_probs: np.ndarray) -> dict:
    counts = np.bincount(data.y_train[labeled_idx], minlength=len(data.class_names))
    return {"step": step, "n_labeled": int(len(labeled_idx)), **metrics,
            "labeled_class_counts": dict(zip(data.class_names, map(int, counts))),
            **{f"{k}_seconds": round(v, 4) for k, v in seconds.items()},
            "finished_at": round(time.time(), 3),
            "selected": [int(i) for i in selected],
            **stop_set_record(stop_probs)}


# --------------------------------------------------------------------------- the loop
def training_set(data: Dataset, labeled_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a step's model is trained on: the base samples, if any, then the selected ones."""
    x, y = data.x_train[labeled_idx], data.y_train[labeled_idx]
    if data.has_base:
        x, y = np.concatenate([data.x_base, x]), np.concatenate([data.y_base, y])
    return x, y


def run_active_learning(*, dataset: str, data: Dataset, build_model: Callable, config: dict,
                        strategy: str, seed: int, results_dir: str | os.PathLike,
                        fresh: bool = False, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) one strategy under one seed; returns the run dict also on disk.

    Parameters
    ----------
    dataset : name used for the results folder.
    data : train pool and test set.
    build_model : ``build_model(config, input_shape, n_classes)`` -> compiled Keras model.
    config : every hyperparameter (recorded in the JSON); the loop reads ``LOOP_KEYS``.
    strategy : a name from ``strategies.STRATEGIES``.
    seed : run seed; the initial labeled set depends on it alone.
    results_dir : root results folder.
    fresh : ignore and overwrite an earlier run instead of resuming it.
    on_step : called with each new step record (progress reporting).
    """
    query = get_strategy(strategy)
    n_pool, n_classes = len(data.x_train), len(data.class_names)
    check_config(config, n_pool, data.has_base)
    path = runs.run_path(Path(results_dir), dataset, strategy, seed)
    runs.remove_stale_tmp(path)  # left by a writer killed mid-write (one writer per run)

    previous = None if fresh else load_previous(path, config, data, query)
    if previous and previous["complete"]:
        return previous
    if configured_threads() not in (None, config["threads"]):
        raise ValueError(f"this process runs TensorFlow with {configured_threads()} thread(s) but the run's "
                         f"config asks for {config['threads']}; run it in a process of its own (al.grid does).")
    configure_tensorflow(config["threads"])  # a no-op when set already; the count is then fixed
    run = previous or new_run(dataset, query, seed, config, data)
    if previous:
        here = {"step": len(run["steps"]), "git_commit": runs.git_commit(), "cpu_model": runs.cpu_model(),
                "devices": gpu_names()}
        resumed = run["provenance"].setdefault("resumed", [])
        before = resumed[-1] if resumed else run["provenance"]  # where the last steps ran
        resumed.append(here)
        moved = [f"{key} {before.get(key)!r} -> {here[key]!r}" for key in ("cpu_model", "devices")
                 if key in before and before[key] != here[key]]
        if moved:
            print(f"note: {path.name} resumes at step {here['step']} on other hardware ({'; '.join(moved)}): its "
                  "later steps may differ in the last bits from an uninterrupted run (recorded in "
                  "provenance.resumed)", file=sys.stderr)
    selected = [np.asarray(s["selected"], dtype=np.int64) for s in run["steps"]]
    if not selected:
        selected = [np.random.default_rng(seed).choice(n_pool, config["start_size"], replace=False)]
    stop_set = data.x_train[stop_set_indices(seed, n_pool)]

    model = None
    for step in range(len(run["steps"]), config["n_steps"] + 1):
        timer = {"train": 0.0, "score": 0.0, "eval": 0.0}
        if step > 0:
            labeled_idx = np.concatenate(selected[:step])
            if model is None and query.uses_model:  # resuming: rebuild the model that scores
                model = train_fresh_model(build_model, config, *training_set(data, labeled_idx),
                                          n_classes, [seed, step - 1])
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, step])
            model_for_query = model if query.uses_model else None
            selected.append(select_next(query, model_for_query, data, labeled_idx, config, rng,
                                        batch_size_at(config, step)))
            timer["score"] = time.perf_counter() - t0
        labeled_idx = np.concatenate(selected[: step + 1])
        t0 = time.perf_counter()
        model = train_fresh_model(build_model, config, *training_set(data, labeled_idx),
                                  n_classes, [seed, step])
        timer["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = evaluate(model, data)
        timer["eval"] = time.perf_counter() - t0
        stop_probs = predict_proba(model, stop_set)

        record = step_record(step, labeled_idx, selected[step], data, metrics, timer, stop_probs)
        run["steps"].append(record)
        run["complete"] = step == config["n_steps"]
        runs.save_run(path, run)
        if on_step:
            on_step(record)
    return run
