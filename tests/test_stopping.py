"""Stopping criteria (al/stopping.py): one template every criterion passes, then each one's contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from al import runs, stopping
from al.stopping import (STOPPING_CRITERIA, LearningCurve, MaxUncertainty, OverallUncertainty, Round,
                         StabilizingPredictions, first_stop, get_criterion, rounds_of_run)

N_CLASSES = 5
RNG = np.random.default_rng(0)
BASE = RNG.integers(0, N_CLASSES, 400)


def changed(predictions: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``predictions`` with ``n`` positions moved to another class."""
    out = predictions.copy()
    where = np.random.default_rng(seed).choice(len(out), n, replace=False)
    out[where] = (out[where] + 1) % N_CLASSES
    return out


def history(predictions, mean_entropy=None, max_entropy=None, cv=None, start=100, step=50) -> list[Round]:
    rounds = []
    for i, p in enumerate(predictions):
        rounds.append(Round(n_labeled=start + step * i, n_classes=N_CLASSES, stop_set_predictions=p,
                            stop_set_mean_entropy=None if mean_entropy is None else mean_entropy[i],
                            stop_set_max_entropy=None if max_entropy is None else max_entropy[i],
                            cv_macro_f1=None if cv is None else cv[i]))
    return rounds


def converging_history(n_rounds: int = 12) -> list[Round]:
    """Predictions that change less every round, uncertainty that falls, a saturating curve."""
    predictions = [changed(BASE, max(0, 120 - 20 * i), i) for i in range(n_rounds)]
    log_k = math.log(N_CLASSES)
    mean_entropy = [log_k * 0.5 * 0.7 ** i for i in range(n_rounds)]
    max_entropy = [log_k * min(1.0, 1.2 * 0.85 ** i) for i in range(n_rounds)]
    n = 100 + 50 * np.arange(n_rounds)
    cv = list(0.95 - 3.0 * n ** -0.8)
    return history(predictions, mean_entropy, max_entropy, cv)


# --------------------------------------------------------------------------- template
@pytest.mark.parametrize("name", sorted(STOPPING_CRITERIA))
def test_every_criterion_reads_a_history_the_same_way(name):
    criterion = get_criterion(name)
    rounds = converging_history()
    assert criterion.name == name and criterion.needs in vars(rounds[0])
    empty = criterion.read([])
    assert empty.stop is False and empty.value is None and empty.verdict  # says why it cannot decide
    reading = criterion.read(rounds)
    assert reading.criterion == name and isinstance(reading.verdict, str) and reading.verdict
    assert criterion.read(rounds) == reading  # a pure function of the history
    assert criterion.measurable(rounds)
    # a history of predictions only (older run files) is measurable by the kappa criterion alone
    assert criterion.measurable(history([BASE] * 4)) == (name == "stabilizing_predictions")
    # The converging history triggers every criterion at its default settings, and
    # first_stop agrees with reading the prefixes one by one.
    stop = first_stop(criterion, rounds)
    assert stop is not None
    assert criterion.read(rounds[: stop + 1]).stop and not any(criterion.read(rounds[: i + 1]).stop
                                                               for i in range(stop))


@pytest.mark.parametrize("name", sorted(STOPPING_CRITERIA))
def test_first_stop_sees_only_the_history_up_to_each_round(name):
    rounds = converging_history()
    criterion = get_criterion(name)
    stop = first_stop(criterion, rounds)
    # Whatever comes after the stop cannot move it: replace the later rounds by noise.
    noisy = rounds[: stop + 1] + history([RNG.integers(0, N_CLASSES, 400)] * 3, [1.5] * 3, [1.6] * 3,
                                         [0.1] * 3, start=rounds[stop].n_labeled + 50)
    assert first_stop(criterion, noisy) == stop


def test_unknown_criteria_and_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown stopping criterion 'kapa'; choose from: learning_curve"):
        get_criterion("kapa")
    with pytest.raises(ValueError, match="bad settings for stopping criterion 'overall_uncertainty'"):
        get_criterion("overall_uncertainty", windw=3)
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0.0, 1.0\], got 1.5"):
        OverallUncertainty(1.5)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        StabilizingPredictions(window=0)
    with pytest.raises(ValueError, match="min_rounds must be an integer >= 3"):
        LearningCurve(min_rounds=2)


# --------------------------------------------------------------------------- stabilizing predictions
def test_stabilizing_predictions_averages_the_kappas_of_the_last_window():
    p = [changed(BASE, 80, 1), changed(BASE, 40, 2), changed(BASE, 8, 3), changed(BASE, 4, 4), BASE]
    criterion = StabilizingPredictions(threshold=0.9, window=3)
    expected = np.mean([cohen_kappa_score(a, b) for a, b in zip(p[1:], p[2:])])
    reading = criterion.read(history(p))
    assert reading.value == pytest.approx(expected)
    assert reading.stop == (expected >= 0.9)
    # A window of 1 looks at the last pair only.
    assert StabilizingPredictions(window=1).read(history(p)).value == pytest.approx(cohen_kappa_score(p[-2], p[-1]))


def test_stabilizing_predictions_stops_only_after_window_stable_rounds():
    criterion = StabilizingPredictions(threshold=0.99, window=3)
    moving = [changed(BASE, 100, i) for i in range(3)]
    rounds = history(moving + [BASE, BASE, BASE, BASE])
    # rounds 3..6 are identical: the last three pairs are stable from round 6 on
    assert first_stop(criterion, rounds) == 6
    reading = criterion.read(rounds)
    assert reading.stop and reading.value == 1.0
    assert "stable for 3 rounds (kappa 1.0000" in reading.verdict
    too_short = criterion.read(rounds[:3])
    assert not too_short.stop and "needs 4 rounds to compare, has 3" in too_short.verdict


def test_identical_constant_predictions_agree_completely():
    constant = np.zeros(50, dtype=int)
    assert stopping.agreement(constant, constant) == 1.0  # kappa itself is undefined here
    with pytest.raises(ValueError, match="different lengths"):
        stopping.agreement(constant, constant[:10])


# --------------------------------------------------------------------------- uncertainty
def test_uncertainty_criteria_divide_entropy_by_log_classes():
    log_k = math.log(N_CLASSES)
    rounds = history([BASE, BASE], mean_entropy=[0.5, 0.04 * log_k], max_entropy=[1.0, 0.6 * log_k])
    overall = OverallUncertainty(threshold=0.05).read(rounds)
    assert overall.value == pytest.approx(0.04) and overall.stop
    assert not OverallUncertainty(threshold=0.03).read(rounds).stop
    largest = MaxUncertainty(threshold=0.5).read(rounds)
    assert largest.value == pytest.approx(0.6) and not largest.stop
    assert MaxUncertainty(threshold=0.7).read(rounds).stop


def test_uncertainty_criteria_cannot_decide_without_the_recorded_entropy():
    rounds = history([BASE, BASE])  # old run files recorded predictions only
    reading = OverallUncertainty().read(rounds)
    assert not reading.stop and reading.value is None and "no stop-set uncertainty recorded" in reading.verdict
    assert not MaxUncertainty().measurable(rounds)


# --------------------------------------------------------------------------- learning curve
def test_the_learning_curve_fit_recovers_an_inverse_power_law():
    n = np.array([100, 200, 400, 800, 1600, 3200])
    params = stopping.fit_learning_curve(n, 0.9 - 3.0 * n ** -0.5)
    assert params == pytest.approx((0.9, 3.0, 0.5), rel=1e-3)


def test_learning_curve_stops_when_the_predicted_gain_is_small():
    n = 100 + 100 * np.arange(8)
    rounds = history([BASE] * 8, cv=list(0.9 - 3.0 * n ** -0.5), start=100, step=100)
    criterion = LearningCurve(min_gain=0.01, horizon=500)
    reading = criterion.read(rounds)
    expected = 3.0 * (800 ** -0.5 - 1300 ** -0.5)  # f(800 + 500) - f(800)
    assert reading.value == pytest.approx(expected, rel=1e-3)
    assert reading.stop == (expected < 0.01)
    assert not criterion.read(rounds[:3]).stop  # needs min_rounds (4) scored rounds
    assert LearningCurve(min_gain=0.2).read(rounds).stop
    assert not LearningCurve(min_gain=0.001).read(rounds).stop


# --------------------------------------------------------------------------- run files
def test_rounds_of_run_reads_what_the_loop_recorded():
    steps = [{"n_labeled": 20 + 10 * k, "per_class_f1": {c: 0.5 for c in "abc"},
              "stop_set_predictions": runs.encode_uint8(BASE[:30] % 3),
              **({"stop_set_mean_entropy": 0.1 * k, "stop_set_max_entropy": 0.5} if k else {})}
             for k in range(3)]
    rounds = rounds_of_run({"steps": steps})
    assert [r.n_labeled for r in rounds] == [20, 30, 40]
    assert all(r.n_classes == 3 for r in rounds)
    assert np.array_equal(rounds[1].stop_set_predictions, BASE[:30] % 3)
    assert rounds[0].stop_set_mean_entropy is None and rounds[2].stop_set_mean_entropy == pytest.approx(0.2)
    assert all(r.cv_macro_f1 is None for r in rounds)
