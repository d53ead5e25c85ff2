"""Query strategies: score functions, top-k selection, and one template every strategy must pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

import strategies
from strategies import STRATEGIES, entropy, get_strategy, predict_proba, top_k_positions


class FakeModel:
    """Stands in for a Keras model: sample i of the pool is the row ``[i]``, its prediction ``probs[i]``."""

    def __init__(self, probs: np.ndarray):
        self.probs = np.asarray(probs, dtype=np.float32)
        self.output_shape = (None, self.probs.shape[1])
        self.calls = 0

    def predict(self, x, batch_size=None, verbose=0):
        self.calls += 1
        return self.probs[np.asarray(x)[:, 0].astype(int)]


def pool(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)[:, None]


def dirichlet_probs(n: int, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


@pytest.fixture
def fake_model():
    return FakeModel(dirichlet_probs(50))


# --------------------------------------------------------------------------- entropy
def test_entropy_matches_scipy_rowwise():
    probs = dirichlet_probs(200, k=5, seed=1)
    np.testing.assert_allclose(entropy(probs), scipy_entropy(probs, axis=1), rtol=1e-12)


def test_entropy_of_float32_input_is_float64_and_matches_scipy():
    probs = dirichlet_probs(20, k=3, seed=2).astype(np.float32)
    result = entropy(probs)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, scipy_entropy(probs.astype(np.float64), axis=1), rtol=1e-6)


def test_entropy_of_one_hot_rows_is_exactly_zero_without_warnings():
    probs = np.eye(4)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        result = entropy(probs)
    assert np.array_equal(result, np.zeros(4))


def test_entropy_of_uniform_rows_is_log_k():
    for k in (2, 3, 10):
        np.testing.assert_allclose(entropy(np.full((3, k), 1.0 / k)), np.log(k), rtol=1e-12)


def test_entropy_of_rows_with_zeros_is_finite_and_ignores_the_zeros():
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        result = entropy(probs)
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(result, [np.log(2), scipy_entropy([0.25, 0.75])], rtol=1e-12)


def test_entropy_of_empty_pool_is_empty():
    assert entropy(np.zeros((0, 3))).shape == (0,)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_entropy_rejects_non_2d_input(shape):
    with pytest.raises(ValueError, match="2-D"):
        entropy(np.full(shape, 0.25))


# --------------------------------------------------------------------------- other scores
HAND_PROBS = np.array([
    [0.70, 0.20, 0.10],
    [0.40, 0.35, 0.25],
    [1 / 3, 1 / 3, 1 / 3],
    [0.05, 0.90, 0.05],
])


def test_least_confidence_is_one_minus_max_probability():
    scores = strategies.LeastConfidenceSampling().score(HAND_PROBS)
    np.testing.assert_allclose(scores, [0.30, 0.60, 2 / 3, 0.10])


def test_margin_score_is_minus_the_gap_between_the_top_two():
    scores = strategies.MarginSampling().score(HAND_PROBS)
    np.testing.assert_allclose(scores, [-0.50, -0.05, 0.0, -0.85], atol=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("entropy", [2, 1, 0, 3]),
    ("least_confidence", [2, 1, 0, 3]),
    ("margin", [2, 1, 0, 3]),
])
def test_uncertainty_strategies_rank_the_hand_example(name, expected):
    positions = get_strategy(name).select(FakeModel(HAND_PROBS), pool(4), 4, np.random.default_rng(0))
    assert list(positions) == expected


# --------------------------------------------------------------------------- top-k
def test_top_k_positions_returns_highest_first():
    assert list(top_k_positions(np.array([0.1, 0.9, 0.3, 0.7]), 3)) == [1, 3, 2]


def test_top_k_positions_breaks_ties_by_lower_position():
    assert list(top_k_positions(np.array([0.5, 0.9, 0.5, 0.5, 0.9]), 4)) == [1, 4, 0, 2]


def test_top_k_positions_of_all_equal_scores_is_the_first_k():
    assert list(top_k_positions(np.zeros(10), 3)) == [0, 1, 2]


def test_top_k_positions_with_k_zero_is_empty():
    assert len(top_k_positions(np.array([0.2, 0.1]), 0)) == 0


# --------------------------------------------------------------------------- shared template
ALL_STRATEGIES = sorted(STRATEGIES)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_strategy_returns_batch_size_unique_positions_in_range(name, fake_model, batch_size):
    positions = np.asarray(get_strategy(name).select(fake_model, pool(50), batch_size,
                                                     np.random.default_rng(0)))
    assert positions.shape == (batch_size,)
    assert np.issubdtype(positions.dtype, np.integer)
    assert len(np.unique(positions)) == batch_size
    assert positions.min() >= 0 and positions.max() < 50


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_is_deterministic_under_the_same_rng_seed(name, fake_model):
    first = get_strategy(name).select(fake_model, pool(50), 10, np.random.default_rng(123))
    again = get_strategy(name).select(fake_model, pool(50), 10, np.random.default_rng(123))
    assert np.array_equal(first, again)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_rejects_batch_larger_than_pool(name, fake_model):
    with pytest.raises(ValueError, match="cannot select 11 samples from an unlabeled pool of 10"):
        get_strategy(name).select(fake_model, pool(10), 11, np.random.default_rng(0))


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_rejects_empty_pool(name, fake_model):
    with pytest.raises(ValueError, match="pool of 0"):
        get_strategy(name).select(fake_model, pool(0), 1, np.random.default_rng(0))


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@pytest.mark.parametrize("batch_size", [0, -3])
def test_strategy_rejects_non_positive_batch_size(name, fake_model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        get_strategy(name).select(fake_model, pool(10), batch_size, np.random.default_rng(0))


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_name_round_trips_through_the_registry(name):
    strategy = get_strategy(name)
    assert strategy.name == name
    assert isinstance(strategy, strategies.QueryStrategy)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_declares_whether_it_uses_the_model(name, fake_model):
    strategy = get_strategy(name)
    strategy.select(fake_model, pool(50), 5, np.random.default_rng(0))
    assert (fake_model.calls > 0) == strategy.uses_model


# --------------------------------------------------------------------------- specific strategies
def test_entropy_selects_the_highest_entropy_rows(fake_model):
    positions = get_strategy("entropy").select(fake_model, pool(50), 8, np.random.default_rng(0))
    expected = np.argsort(-scipy_entropy(fake_model.probs.astype(np.float64), axis=1), kind="stable")[:8]
    assert list(positions) == list(expected)


def test_entropy_positions_index_into_the_pool_it_was_given(fake_model):
    # The pool handed to the strategy is a subset (rows 10..29): positions are relative to it.
    sub = pool(50)[10:30]
    positions = get_strategy("entropy").select(fake_model, sub, 3, np.random.default_rng(0))
    ent = scipy_entropy(fake_model.probs[10:30].astype(np.float64), axis=1)
    assert list(positions) == list(np.argsort(-ent, kind="stable")[:3])


def test_random_sampling_works_without_a_model():
    positions = get_strategy("random").select(None, pool(30), 30, np.random.default_rng(0))
    assert sorted(positions) == list(range(30))


def test_random_sampling_depends_on_the_rng_seed():
    a = get_strategy("random").select(None, pool(1000), 10, np.random.default_rng(0))
    b = get_strategy("random").select(None, pool(1000), 10, np.random.default_rng(1))
    assert not np.array_equal(a, b)


def test_get_strategy_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="nope") as err:
        get_strategy("nope")
    for name in STRATEGIES:
        assert name in str(err.value)


def test_registry_holds_random_and_entropy():
    assert {"random", "entropy"} <= set(STRATEGIES)


def test_predict_proba_of_empty_pool_has_the_model_output_width(fake_model):
    probs = predict_proba(fake_model, pool(0))
    assert probs.shape == (0, 4)
    assert fake_model.calls == 0


def test_predict_proba_returns_float64(fake_model):
    assert predict_proba(fake_model, pool(5)).dtype == np.float64
