"""The active-learning loop, shared by every dataset script. It knows nothing about datasets.

Protocol (one run = one strategy under one seed):

1. draw ``start_size`` labeled samples at random from the seed alone, so every strategy
   under the same seed starts from the same set (paired comparison);
2. train a *fresh* model on all labeled samples and evaluate it on the full test set;
3. ``n_steps`` times: let the strategy pick ``batch_size`` new samples from the unlabeled
   pool, retrain a fresh model, evaluate.

Labels are the budget: training, early stopping and class weights only ever see the
selected samples; the test set is used for the reported evaluation and nothing else.

After every step the run's selections (``<results>/<dataset>/state/<strategy>_seed<k>.json``,
with the sha256 of the result about to be written) and then its JSON
(``<results>/<dataset>/<strategy>_seed<k>.json``) are written atomically (see ``runfiles``),
so an interrupted run loses at most the step in progress, and a result file edited or
truncated later is refused instead of resumed. Rerunning continues
from the last completed step and makes the same selections as an uninterrupted run: every
random draw is seeded from (seed, step), and the model that scores the pool is retrained
deterministically.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from data_common import REPO_ROOT, Dataset
from runfiles import (RESULT_KEYS, STEP_KEYS, RunFileError, read_result, remove_stale_tmp,  # noqa: F401
                      save_run, sha256_text, write_json_atomic)
from strategies import get_strategy, predict_proba

LOOP_KEYS = ("start_size", "batch_size", "n_steps", "epochs", "fit_batch_size",
             "val_fraction", "patience", "class_weight", "pool_subsample")


class ConfigMismatchError(RuntimeError):
    """A result file on disk was written with other hyperparameters than the current run."""


class ModifiedRunError(ConfigMismatchError):
    """A result file on disk is corrupt, or does not match the checksum in its state file."""


# --------------------------------------------------------------------------- provenance
@lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the code that produced a result; ``-dirty`` if ``code/`` has local edits."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "code")
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=1)
def library_versions() -> dict:
    import keras
    import sklearn
    import tensorflow as tf
    return {"python": platform.python_version(), "numpy": np.__version__,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "scikit-learn": sklearn.__version__}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- files
def run_paths(results_dir: Path, dataset: str, strategy: str, seed: int) -> tuple[Path, Path]:
    """The run's result JSON and its selection-state JSON."""
    name = f"{strategy}_seed{seed}.json"
    return results_dir / dataset / name, results_dir / dataset / "state" / name


def config_differences(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} on disk vs {new.get(k)!r} now"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def load_previous(result_path: Path, state_path: Path, config: dict):
    """Completed steps and selections of an earlier run with the same config, or None.

    Returns ``(result, selections, sha256 of the result file)``. A result file that is not
    valid JSON, breaks the schema or does not match the checksum in its state file was
    modified, truncated or half-copied: resuming from it would mix foreign steps into the
    run, so it raises ModifiedRunError instead.
    """
    if not result_path.exists():
        return None
    try:
        result, _status, state = read_result(result_path, state_path)
    except RunFileError as err:
        raise ModifiedRunError(f"cannot resume: {err}") from None
    diffs = config_differences(result.get("config", {}), config)
    if diffs:
        raise ConfigMismatchError(
            f"{result_path} was written with a different config ({'; '.join(diffs)}). "
            "Rerun with --fresh to overwrite it, or pass --results-dir to keep both."
        )
    # The state is written before the result, so it may hold one more step: trust the result.
    n_done = len(result["steps"])
    if len(state["selected"]) < n_done:
        raise ModifiedRunError(f"cannot resume: {state_path} holds {len(state['selected'])} "
                               f"selections for {n_done} steps in {result_path}; rerun with --fresh.")
    digest = sha256_text(result_path.read_text())
    return result, [np.asarray(s, dtype=np.int64) for s in state["selected"][:n_done]], digest


# --------------------------------------------------------------------------- training
def class_weights(y: np.ndarray, n_classes: int, mode: str | None) -> dict | None:
    """'balanced' weights n / (k * count_c) from the *labeled* set only; absent classes 1."""
    if not mode or mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weight must be 'balanced' or 'none', got {mode!r}")
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {c: float(w) for c, w in enumerate(weights)}


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
    model.fit(x, y, epochs=config["epochs"], batch_size=config["fit_batch_size"],
              validation_data=validation, callbacks=callbacks, verbose=0,
              class_weight=class_weights(y, n_classes, config.get("class_weight")))
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
    }


# --------------------------------------------------------------------------- the loop
def check_budget(config: dict, n_pool: int) -> None:
    for key in ("start_size", "batch_size", "epochs", "fit_batch_size"):
        if int(config[key]) <= 0:
            raise ValueError(f"{key} must be positive, got {config[key]}")
    if config["n_steps"] < 0:
        raise ValueError(f"n_steps must be >= 0, got {config['n_steps']}")
    if not 0 <= config["val_fraction"] < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {config['val_fraction']}")
    subsample = int(config.get("pool_subsample") or 0)
    if 0 < subsample < config["batch_size"]:
        raise ValueError(f"pool_subsample ({subsample}) must be 0 (off) or at least batch_size "
                         f"({config['batch_size']}): each step scores that many samples.")
    final = config["start_size"] + config["n_steps"] * config["batch_size"]
    if final > n_pool:
        raise ValueError(
            f"start_size + n_steps * batch_size = {final} labels, but the pool holds only "
            f"{n_pool} samples; lower start_size, batch_size or n_steps."
        )


def select_next(strategy, model, data: Dataset, labeled_idx: np.ndarray, config: dict,
                rng: np.random.Generator) -> np.ndarray:
    """Dataset indices of the next batch: never already labeled, never repeated."""
    unlabeled_idx = np.setdiff1d(np.arange(len(data.x_train)), labeled_idx)
    subsample = int(config.get("pool_subsample") or 0)
    if 0 < subsample < len(unlabeled_idx):
        # Optional speed-up: score a random part of the pool (off by default).
        unlabeled_idx = np.sort(rng.choice(unlabeled_idx, subsample, replace=False))
    # A strategy that ignores the model only needs the pool's size: skip copying the samples.
    pool = data.x_train[unlabeled_idx] if strategy.uses_model else unlabeled_idx
    # Only strategies that declare it (coreset) get the labeled samples; the others are unaffected.
    extra = {"x_labeled": data.x_train[labeled_idx]} if getattr(strategy, "uses_labeled", False) else {}
    positions = strategy.select(model, pool, config["batch_size"], rng, **extra)
    chosen = unlabeled_idx[np.asarray(positions, dtype=np.int64)]
    if len(np.unique(chosen)) != config["batch_size"]:
        raise RuntimeError(f"strategy {strategy.name} returned duplicate or too few samples")
    return chosen


def step_record(step: int, labeled_idx: np.ndarray, data: Dataset, metrics: dict,
                seconds: dict) -> dict:
    counts = np.bincount(data.y_train[labeled_idx], minlength=len(data.class_names))
    return {"step": step, "n_labeled": int(len(labeled_idx)), **metrics,
            "labeled_class_counts": dict(zip(data.class_names, map(int, counts))),
            **{f"{k}_seconds": round(v, 4) for k, v in seconds.items()},
            "finished_at": round(time.time(), 3)}


def run_active_learning(*, dataset: str, data: Dataset, build_model: Callable, config: dict,
                        strategy: str, seed: int, results_dir: str | os.PathLike,
                        fresh: bool = False, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) one strategy under one seed; returns the result dict also on disk.

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
    missing = [k for k in LOOP_KEYS if k not in config]
    if missing:
        raise ValueError(f"config lacks the loop hyperparameters {missing}")
    query = get_strategy(strategy)
    n_pool, n_classes = len(data.x_train), len(data.class_names)
    check_budget(config, n_pool)
    result_path, state_path = run_paths(Path(results_dir), dataset, strategy, seed)
    for path in (result_path, state_path):  # left by a writer killed mid-write (one writer per run)
        remove_stale_tmp(path)

    if fresh:  # an old result left next to a new state would not match its checksum
        result_path.unlink(missing_ok=True)
    previous = None if fresh else load_previous(result_path, state_path, config)
    if previous and previous[0]["complete"]:
        return previous[0]
    result = {"dataset": dataset, "strategy": strategy, "seed": seed, "config": config,
              "git_commit": git_commit(), "versions": library_versions(), "complete": False,
              "steps": []}
    selected = [np.random.default_rng(seed).choice(n_pool, config["start_size"], replace=False)]
    on_disk_sha256 = None  # checksum of the result file the next save replaces
    if previous:
        result["steps"], selected, on_disk_sha256 = previous[0]["steps"], previous[1], previous[2]
        if not previous[0]["git_commit"].startswith(git_commit()):
            result["git_commit"] = f"{previous[0]['git_commit']} (resumed at {git_commit()})"
        else:
            result["git_commit"] = previous[0]["git_commit"]

    model = None
    for step in range(len(result["steps"]) if previous else 0, config["n_steps"] + 1):
        timer = {"train": 0.0, "score": 0.0, "eval": 0.0}
        if step > 0:
            labeled_idx = np.concatenate(selected[:step])
            if model is None and query.uses_model:  # resuming: rebuild the model that scores
                model = train_fresh_model(build_model, config, data.x_train[labeled_idx],
                                          data.y_train[labeled_idx], n_classes, [seed, step - 1])
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, step])
            model_for_query = model if query.uses_model else None
            if len(selected) <= step:
                selected.append(select_next(query, model_for_query, data, labeled_idx, config, rng))
            timer["score"] = time.perf_counter() - t0
        labeled_idx = np.concatenate(selected[: step + 1])
        t0 = time.perf_counter()
        model = train_fresh_model(build_model, config, data.x_train[labeled_idx],
                                  data.y_train[labeled_idx], n_classes, [seed, step])
        timer["train"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = evaluate(model, data)
        timer["eval"] = time.perf_counter() - t0

        record = step_record(step, labeled_idx, data, metrics, timer)
        result["steps"].append(record)
        result["complete"] = step == config["n_steps"]
        # State (with the checksum of the result about to be written) first, then the result.
        on_disk_sha256 = save_run(result_path, state_path, result,
                                  {"config_hash": config_hash(config),
                                   "selected": [s.tolist() for s in selected[: step + 1]]},
                                  on_disk_sha256)
        if on_step:
            on_step(record)
    return result
