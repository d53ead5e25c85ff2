"""Stopping criteria: when are more labels unlikely to change the model?

Every criterion implements one call::

    reading = criterion.read(rounds)

``rounds`` is the history of an active-learning session, one :class:`Round` per trained
model, oldest first (the simulated protocol's step records give it through
:func:`rounds_of_run`; ``annotate.py`` keeps its own). A :class:`Reading` holds the
criterion's statistic for the latest round, whether it says stop, and one plain sentence.
No criterion reads a label outside the selected set: the stop set is a fixed sample of the
*pool* whose labels are never looked at, and the learning curve is cross-validated on the
labeled set itself.

Criteria (registry :data:`STOPPING_CRITERIA`, looked up by :func:`get_criterion`):

* ``stabilizing_predictions`` -- Bloodgood & Vijay-Shanker 2009, "A method for stopping
  active learning based on stabilizing predictions and the need for user-adjustable
  stopping" (CoNLL): Cohen's kappa between consecutive models' predicted classes on the
  stop set; stop once the mean kappa of the last ``window`` pairs (3 in the paper) reaches
  ``threshold`` (0.99 in the paper).
* ``overall_uncertainty`` and ``max_uncertainty`` -- Zhu, Wang & Hovy 2008, "Learning a
  stopping criterion for active learning for word sense disambiguation and text
  classification" (IJCNLP): stop once the mean (overall) or the largest (max) prediction
  entropy on the stop set falls below ``threshold``. Entropy is divided by ``log(classes)``
  so that thresholds lie in [0, 1] whatever the number of classes.
* ``learning_curve`` -- after Figueroa et al. 2012, "Predicting sample size required for
  classification performance" (BMC Med Inform Decis Mak): fit the inverse power law
  ``f(n) = a - b * n ** -c`` to the cross-validated macro-F1 of the labeled set by budget;
  stop once the predicted gain ``f(n + horizon) - f(n)`` is below ``min_gain``.

Which criterion and threshold to use is a measurement (README "When to stop labeling"),
not a property of this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score

from al import runs


@dataclass(frozen=True)
class Round:
    """What one trained model of a session left for the stopping criteria.

    ``stop_set_predictions``: predicted classes on the fixed stop set; ``stop_set_mean_entropy``
    and ``stop_set_max_entropy``: prediction entropy on it (nats); ``cv_macro_f1``:
    cross-validated macro-F1 on the labeled set. A field a session did not record is None.
    """
    n_labeled: int
    n_classes: int
    stop_set_predictions: np.ndarray | None = None
    stop_set_mean_entropy: float | None = None
    stop_set_max_entropy: float | None = None
    cv_macro_f1: float | None = None


@dataclass(frozen=True)
class Reading:
    """A criterion's word on the latest round: ``value`` is its statistic (None when it
    cannot be computed yet), ``stop`` its decision, ``verdict`` one plain sentence."""
    criterion: str
    value: float | None
    stop: bool
    verdict: str


class StoppingCriterion:
    """Base class: ``read(rounds)`` -> :class:`Reading` for the last of ``rounds``.

    ``needs`` names the :class:`Round` field the criterion reads; :meth:`measurable` says
    whether a history has it.
    """
    name = "criterion"
    needs = ""

    def read(self, rounds: Sequence[Round]) -> Reading:
        raise NotImplementedError

    def measurable(self, rounds: Sequence[Round]) -> bool:
        return bool(rounds) and all(getattr(r, self.needs) is not None for r in rounds)

    def settings(self) -> dict:
        """The parameters that change the decision (for tables and logs)."""
        return dict(vars(self))

    def label(self) -> str:
        return f"{self.name} ({', '.join(f'{k} {v}' for k, v in self.settings().items())})"

    def reading(self, value: float | None, stop: bool, verdict: str) -> Reading:
        return Reading(self.name, value, stop, verdict)

    def not_yet(self, why: str) -> Reading:
        return self.reading(None, False, why)


def check_threshold(name: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value}")
    return value


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two label vectors; 1.0 when they are identical (kappa is undefined
    when both are one constant class)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"stop-set predictions of different lengths: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    return float(cohen_kappa_score(a, b))


class StabilizingPredictions(StoppingCriterion):
    name = "stabilizing_predictions"
    needs = "stop_set_predictions"

    def __init__(self, threshold: float = 0.99, window: int = 3):
        self.threshold = check_threshold("threshold", threshold, -1.0, 1.0)
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window}")
        self.window = int(window)

    def read(self, rounds: Sequence[Round]) -> Reading:
        if not self.measurable(rounds):
            return self.not_yet("no stop-set predictions recorded")
        if len(rounds) < self.window + 1:
            return self.not_yet(f"needs {self.window + 1} rounds to compare, has {len(rounds)}")
        recent = rounds[-self.window - 1:]
        kappas = [agreement(a.stop_set_predictions, b.stop_set_predictions) for a, b in zip(recent, recent[1:])]
        mean = float(np.mean(kappas))
        if mean >= self.threshold:
            return self.reading(mean, True, f"predictions have been stable for {self.window} rounds (kappa {mean:.4f} "
                                            f">= {self.threshold}): more labels are unlikely to change the model")
        return self.reading(mean, False, f"predictions still change (kappa {mean:.4f} over the last {self.window} "
                                         f"rounds, below {self.threshold})")


class UncertaintyBelow(StoppingCriterion):
    """Stop once a stop-set entropy statistic, divided by log(classes), is below ``threshold``
    (default: the subclass's ``default_threshold``)."""
    statistic = ""
    default_threshold = 0.0

    def __init__(self, threshold: float | None = None):
        threshold = self.default_threshold if threshold is None else threshold
        self.threshold = check_threshold("threshold", threshold, 0.0, 1.0)

    def read(self, rounds: Sequence[Round]) -> Reading:
        if not self.measurable(rounds):
            return self.not_yet("no stop-set uncertainty recorded")
        last = rounds[-1]
        value = getattr(last, self.needs) / math.log(last.n_classes) if last.n_classes > 1 else 0.0
        what = f"{self.statistic} uncertainty on the stop set is {value:.4f} of the maximum"
        if value < self.threshold:
            return self.reading(value, True, f"{what}, below {self.threshold}: the model is sure of the pool")
        return self.reading(value, False, f"{what}, not below {self.threshold}")


class OverallUncertainty(UncertaintyBelow):
    name = "overall_uncertainty"
    needs = "stop_set_mean_entropy"
    statistic = "mean"
    default_threshold = 0.05


class MaxUncertainty(UncertaintyBelow):
    name = "max_uncertainty"
    needs = "stop_set_max_entropy"
    statistic = "largest"
    default_threshold = 0.5


def inverse_power_law(n, a, b, c):
    return a - b * np.power(n, -c)


def fit_learning_curve(n_labeled: Sequence[int], scores: Sequence[float]) -> tuple[float, float, float] | None:
    """Least-squares fit of ``a - b * n ** -c`` (a in [0, 1], b >= 0, c in [0.01, 3]); None if it fails."""
    from scipy.optimize import curve_fit

    n, y = np.asarray(n_labeled, dtype=float), np.asarray(scores, dtype=float)
    start = (min(1.0, y.max() + 0.01), max(1e-3, (y.max() - y.min()) * n.min() ** 0.5), 0.5)
    try:
        params, _ = curve_fit(inverse_power_law, n, y, p0=start, bounds=([0, 0, 0.01], [1, np.inf, 3]),
                              maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    return tuple(float(p) for p in params) if np.all(np.isfinite(params)) else None


class LearningCurve(StoppingCriterion):
    name = "learning_curve"
    needs = "cv_macro_f1"

    def __init__(self, min_gain: float = 0.01, horizon: int = 500, min_rounds: int = 4):
        self.min_gain = check_threshold("min_gain", min_gain, 0.0, 1.0)
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive number of labels, got {horizon}")
        if int(min_rounds) != min_rounds or min_rounds < 3:
            raise ValueError(f"min_rounds must be an integer >= 3 (three parameters are fit), got {min_rounds}")
        self.horizon, self.min_rounds = int(horizon), int(min_rounds)

    def read(self, rounds: Sequence[Round]) -> Reading:
        scored = [r for r in rounds if r.cv_macro_f1 is not None]
        if len(scored) < self.min_rounds:
            return self.not_yet(f"needs cross-validated F1 of {self.min_rounds} rounds to fit a learning curve, "
                                f"has {len(scored)}")
        params = fit_learning_curve([r.n_labeled for r in scored], [r.cv_macro_f1 for r in scored])
        if params is None:
            return self.not_yet("the learning curve could not be fit yet")
        n = rounds[-1].n_labeled
        gain = float(inverse_power_law(n + self.horizon, *params) - inverse_power_law(n, *params))
        what = f"the learning curve predicts {gain:+.3f} macro-F1 from the next {self.horizon} labels"
        if gain < self.min_gain:
            return self.reading(gain, True, f"{what}, less than {self.min_gain}: more labels are unlikely to pay")
        return self.reading(gain, False, f"{what}, at least {self.min_gain}")

    def measurable(self, rounds: Sequence[Round]) -> bool:
        return any(r.cv_macro_f1 is not None for r in rounds)


# --------------------------------------------------------------------------- what the learning curve reads
MAX_CV_FOLDS = 5


def cv_plan(y: np.ndarray, n_classes: int, max_folds: int = MAX_CV_FOLDS) -> tuple[np.ndarray, int, str]:
    """Which labels cross-validation uses, its number of folds k, and a note (k = 0: not possible).

    k = min(``max_folds``, labels of the rarest class); classes with a single label cannot be
    split and are left out; at least two classes must remain.
    """
    counts = np.bincount(y, minlength=n_classes)
    usable = np.isin(y, np.flatnonzero(counts >= 2))
    left_out = int(np.sum(counts == 1))
    note = f"; {left_out} class(es) with a single label left out" if left_out else ""
    present = np.flatnonzero(np.bincount(y[usable], minlength=n_classes))
    if len(present) < 2:
        return usable, 0, "needs two classes with at least 2 labels each"
    return usable, int(min(max_folds, counts[present].min())), note


def cross_validated_macro_f1(fit_predict, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int,
                             max_folds: int = MAX_CV_FOLDS) -> tuple[float | None, int, str]:
    """Stratified k-fold macro-F1 of the labeled set (pooled out-of-fold predictions), the
    statistic :class:`LearningCurve` reads: ``(score, k, note)``, score None when k = 0.

    ``fit_predict(x_fit, y_fit, x_held_out, fold)`` trains a fresh model on the fold's
    training part and returns its predicted classes for ``x_held_out``. Only the labeled
    samples are used; the macro average runs over the classes present.
    """
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold
    usable, k, note = cv_plan(y, n_classes, max_folds)
    if k == 0:
        return None, 0, note
    x, y = x[usable], y[usable]
    predicted = np.empty_like(y)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y)
    for fold, (fit, held_out) in enumerate(folds):
        predicted[held_out] = fit_predict(x[fit], y[fit], x[held_out], fold)
    present = np.unique(y).tolist()
    return float(f1_score(y, predicted, labels=present, average="macro", zero_division=0)), k, note


CV_FORMAT = "stopping-cv-1"  # code/stopping_cv.py: cross-validated F1 replayed for a finished protocol run


def cv_path(run_file) -> Path:
    """Where ``code/stopping_cv.py`` keeps the replayed cross-validated F1 of a run file."""
    run_file = Path(run_file)
    return run_file.parent / "cv" / run_file.name


def cv_record(run_file, run: dict) -> dict | None:
    """The replayed-CV record on disk for this very run (matched by the run's sha256, the
    record's own digest checked), or None when there is none, it is unreadable or it does
    not match."""
    try:
        record = json.loads(cv_path(run_file).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("format") != CV_FORMAT or record.get("run_sha256") != run.get("sha256")
            or record.get("sha256") != runs.content_digest(record)):
        return None
    return record


def cv_scores(record: dict | None) -> dict[int, float]:
    """{step: cross-validated macro-F1} of a replay record (steps without a score left out)."""
    return {int(s["step"]): float(s["cv_macro_f1"]) for s in (record or {}).get("steps", [])
            if s.get("cv_macro_f1") is not None}


def replayed_cv_f1(run_file, run: dict) -> dict[int, float]:
    """{step: cross-validated macro-F1} of :func:`cv_record`; empty when there is no such record."""
    return cv_scores(cv_record(run_file, run))


STOPPING_CRITERIA: dict[str, type[StoppingCriterion]] = {
    cls.name: cls for cls in (StabilizingPredictions, OverallUncertainty, MaxUncertainty, LearningCurve)}


def get_criterion(name: str, **settings) -> StoppingCriterion:
    """The criterion registered as ``name``, with ``settings`` overriding its defaults."""
    try:
        cls = STOPPING_CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown stopping criterion {name!r}; choose from: "
                         f"{', '.join(sorted(STOPPING_CRITERIA))}") from None
    try:
        return cls(**settings)
    except TypeError as err:
        raise ValueError(f"bad settings for stopping criterion {name!r}: {err}") from None


def first_stop(criterion: StoppingCriterion, rounds: Sequence[Round]) -> int | None:
    """Index of the first round at which ``criterion`` says stop, reading each round with
    only the history up to it (as a live session would); None if it never does."""
    for i in range(len(rounds)):
        if criterion.read(rounds[: i + 1]).stop:
            return i
    return None


def rounds_of_run(run: dict, cv_f1: dict[int, float] | None = None) -> list[Round]:
    """The stopping history a protocol run file recorded, one :class:`Round` per step;
    ``cv_f1`` ({step: F1}, :func:`replayed_cv_f1`) adds cross-validated F1 replayed later."""
    out = []
    cv_f1 = cv_f1 or {}
    for i, step in enumerate(run["steps"]):  # step i of a run file is its i-th record
        predictions = step.get("stop_set_predictions")
        out.append(Round(
            n_labeled=step["n_labeled"], n_classes=len(step["per_class_f1"]),
            stop_set_predictions=None if predictions is None else runs.decode_uint8(predictions),
            stop_set_mean_entropy=step.get("stop_set_mean_entropy"),
            stop_set_max_entropy=step.get("stop_set_max_entropy"),
            cv_macro_f1=cv_f1.get(i, step.get("cv_macro_f1"))))
    return out
