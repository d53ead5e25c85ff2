"""Query strategies: score functions, top-k selection, and one template every strategy must pass.

What the strategies need from Keras (MC passes, embeddings) is tested in test_keras_ops.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from al import strategies
from al.strategies import mc_dropout
from al.keras_ops import embed_and_predict, mc_predict_proba
from al.strategies import (STRATEGIES, bald_scores, entropy, get_strategy, gradient_embeddings,
                           k_center_greedy, mc_entropy_scores, squared_distances_to_nearest,
                           top_k_positions)
from conftest import N_FEATURES, feature_pool, tiny_sequential


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


LABELED = feature_pool(10, seed=99) + 2.0  # labeled samples, away from the pool's centre
NO_LABELED = feature_pool(0)
NO_FAKE_LABELED = pool(0)


class Untouchable:
    """A model that fails on any use: strategies declaring ``uses_model = False`` never touch it."""

    def __getattr__(self, attr):
        raise RuntimeError(f"the model was used (.{attr})")


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
    positions = get_strategy(name).select(FakeModel(HAND_PROBS), pool(4), 4, np.random.default_rng(0),
                                          NO_FAKE_LABELED)
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
# Every registered strategy runs on the same tiny real Keras model (the fake model above only
# serves hand-computed probability examples) and is always called with all five arguments,
# samples for both x_unlabeled and x_labeled: new strategies are covered by registering them.
ALL_STRATEGIES = sorted(STRATEGIES)


def select(name, model, x, batch_size, seed=0, x_labeled=LABELED):
    strategy = get_strategy(name)
    return np.asarray(strategy.select(model, x, batch_size, np.random.default_rng(seed), x_labeled))


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@pytest.mark.parametrize("batch_size", [1, 7, 50])
def test_strategy_returns_batch_size_distinct_positions_in_range(name, real_model, batch_size):
    positions = select(name, real_model, feature_pool(50), batch_size)
    assert positions.shape == (batch_size,)
    assert np.issubdtype(positions.dtype, np.integer)
    assert len(np.unique(positions)) == batch_size
    assert positions.min() >= 0 and positions.max() < 50


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_works_with_an_empty_labeled_set(name, real_model):
    positions = select(name, real_model, feature_pool(30), 5, x_labeled=NO_LABELED)
    assert len(np.unique(positions)) == 5 and positions.min() >= 0 and positions.max() < 30


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_is_deterministic_under_the_same_rng_seed(name, real_model):
    first = select(name, real_model, feature_pool(50), 10, seed=123)
    again = select(name, real_model, feature_pool(50), 10, seed=123)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_rejects_batch_larger_than_pool(name, real_model):
    with pytest.raises(ValueError, match="cannot select 11 samples from an unlabeled pool of 10"):
        select(name, real_model, feature_pool(10), 11)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_rejects_empty_pool(name, real_model):
    with pytest.raises(ValueError, match="pool of 0"):
        select(name, real_model, feature_pool(0), 1)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
@pytest.mark.parametrize("batch_size", [0, -3])
def test_strategy_rejects_non_positive_batch_size(name, real_model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        select(name, real_model, feature_pool(10), batch_size)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_name_round_trips_through_the_registry(name):
    strategy = get_strategy(name)
    assert strategy.name == name
    assert isinstance(strategy, strategies.QueryStrategy)


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_strategy_declares_whether_it_uses_the_model(name):
    if get_strategy(name).uses_model:
        with pytest.raises(RuntimeError, match="the model was used"):
            select(name, Untouchable(), feature_pool(20), 5)
    else:
        assert len(select(name, Untouchable(), feature_pool(20), 5)) == 5


USES_LABELED = {"coreset",  # the labeled samples are its initial centers
                "typiclust", "typiclust_pca", "typiclust_model"}  # they cover clusters; the others ignore them


@pytest.mark.parametrize("name", ALL_STRATEGIES)
def test_only_coreset_and_typiclust_depend_on_the_labeled_samples(name, real_model):
    without = select(name, real_model, feature_pool(50), 10, x_labeled=NO_LABELED)
    with_labeled = select(name, real_model, feature_pool(50), 10, x_labeled=LABELED)
    assert (not np.array_equal(without, with_labeled)) == (name in USES_LABELED)


# --------------------------------------------------------------------------- specific strategies
def test_sequential_takes_the_first_unlabeled_samples_in_pool_order():
    picked = select("sequential", Untouchable(), feature_pool(20), 5)
    assert list(picked) == [0, 1, 2, 3, 4]


def test_entropy_selects_the_highest_entropy_rows(fake_model):
    positions = get_strategy("entropy").select(fake_model, pool(50), 8, np.random.default_rng(0),
                                               NO_FAKE_LABELED)
    expected = np.argsort(-scipy_entropy(fake_model.probs.astype(np.float64), axis=1), kind="stable")[:8]
    assert list(positions) == list(expected)


def test_entropy_positions_index_into_the_pool_it_was_given(fake_model):
    # The pool handed to the strategy is a subset (rows 10..29): positions are relative to it.
    sub = pool(50)[10:30]
    positions = get_strategy("entropy").select(fake_model, sub, 3, np.random.default_rng(0), pool(10))
    ent = scipy_entropy(fake_model.probs[10:30].astype(np.float64), axis=1)
    assert list(positions) == list(np.argsort(-ent, kind="stable")[:3])


def test_random_sampling_works_without_a_model():
    positions = get_strategy("random").select(None, pool(30), 30, np.random.default_rng(0), pool(0))
    assert sorted(positions) == list(range(30))


def test_random_sampling_depends_on_the_rng_seed():
    a = get_strategy("random").select(None, pool(1000), 10, np.random.default_rng(0), pool(0))
    b = get_strategy("random").select(None, pool(1000), 10, np.random.default_rng(1), pool(0))
    assert not np.array_equal(a, b)


def test_get_strategy_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="nope") as err:
        get_strategy("nope")
    for name in STRATEGIES:
        assert name in str(err.value)


def test_registry_holds_every_documented_strategy():
    assert set(STRATEGIES) == {"random", "sequential", "entropy", "least_confidence", "margin", "bald", "entropy_mc",
                               "coreset", "badge",
                               "typiclust", "typiclust_pca", "typiclust_model"}


# --------------------------------------------------------------------------- bald / entropy_mc scores
def H(*p):
    """Entropy (nats) written out by hand."""
    return -sum(q * math.log(q) for q in p if q > 0)


# T = 2 passes, 3 samples, 2 classes
MC_HAND = np.array([
    [[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]],
    [[0.0, 1.0], [0.5, 0.5], [0.4, 0.6]],
])


def test_bald_scores_match_a_hand_computation():
    expected = [
        math.log(2) - 0.0,                                   # confident passes that disagree
        math.log(2) - math.log(2),                           # agree on "don't know": 0
        H(0.6, 0.4) - (H(0.8, 0.2) + H(0.4, 0.6)) / 2,
    ]
    np.testing.assert_allclose(bald_scores(MC_HAND), expected, rtol=1e-12, atol=1e-15)


def test_mc_entropy_scores_match_a_hand_computation():
    np.testing.assert_allclose(mc_entropy_scores(MC_HAND), [math.log(2), math.log(2), H(0.6, 0.4)],
                               rtol=1e-12)


def test_bald_ranks_disagreement_above_shared_uncertainty():
    assert list(strategies.BALDSampling().score_mc(MC_HAND).argsort()[::-1]) == [0, 2, 1]


def test_bald_of_identical_passes_is_zero():
    probs = dirichlet_probs(30, k=5, seed=3)
    np.testing.assert_allclose(bald_scores(np.stack([probs] * 4)), 0.0, atol=1e-12)


def test_bald_is_between_zero_and_the_mc_entropy():
    mc = np.stack([dirichlet_probs(100, k=4, seed=s) for s in range(6)])
    bald = bald_scores(mc)
    assert np.all(bald >= -1e-12) and np.all(bald <= mc_entropy_scores(mc) + 1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (0, 5, 3), (2, 5, 3, 1)])
def test_mc_scores_reject_arrays_that_are_not_passes_by_samples_by_classes(shape):
    with pytest.raises(ValueError, match="3-D"):
        bald_scores(np.full(shape, 1 / 3))


def test_mc_passes_is_a_class_default_and_a_constructor_argument():
    assert strategies.BALDSampling().mc_passes == strategies.MC_PASSES == 10
    assert strategies.MCEntropySampling(mc_passes=3).mc_passes == 3
    assert strategies.BALDSampling.mc_passes == 10  # the instance override does not leak


def test_mc_strategies_use_their_own_number_of_passes(real_model, monkeypatch):
    seen = []
    real = mc_dropout.mc_predict_proba

    def recording(model, x, mc_passes, rng, **kwargs):
        seen.append(mc_passes)
        return real(model, x, mc_passes, rng, **kwargs)

    monkeypatch.setattr(mc_dropout, "mc_predict_proba", recording)
    strategies.BALDSampling(mc_passes=3).select(real_model, feature_pool(20), 4,
                                                np.random.default_rng(0), LABELED)
    strategies.MCEntropySampling().select(real_model, feature_pool(20), 4, np.random.default_rng(0), LABELED)
    assert seen == [3, strategies.MC_PASSES]


@pytest.mark.parametrize("name", ["bald", "entropy_mc"])
@pytest.mark.parametrize("rate", [None, 0.0])
def test_mc_strategies_reject_a_model_without_dropout(name, rate):
    import keras
    hidden = [keras.layers.Dense(8, activation="relu")]
    if rate is not None:
        hidden.append(keras.layers.Dropout(rate))
    with pytest.raises(ValueError, match="needs a model with a Dropout layer"):
        select(name, tiny_sequential(*hidden), feature_pool(20), 5)


def test_bald_selects_the_top_bald_scores_of_its_passes(real_model):
    x = feature_pool(40)
    positions = select("bald", real_model, x, 6)
    mc = mc_predict_proba(real_model, x, strategies.MC_PASSES, np.random.default_rng(0))
    assert list(positions) == list(top_k_positions(bald_scores(mc), 6))


def test_entropy_mc_selects_the_top_mc_entropies(real_model):
    x = feature_pool(40)
    positions = select("entropy_mc", real_model, x, 6, seed=4)
    mc = mc_predict_proba(real_model, x, strategies.MC_PASSES, np.random.default_rng(4))
    assert list(positions) == list(top_k_positions(mc_entropy_scores(mc), 6))


# --------------------------------------------------------------------------- coreset
def test_k_center_greedy_picks_the_farthest_points_in_order_on_a_line():
    pool_1d = np.array([[1.0], [2.0], [10.0], [5.0], [7.0], [9.5]])
    # from {0}: 10 (pos 2); then 5 (pos 3); then 2 and 7 tie at distance 2 -> lower position 1;
    # then 7 (distance 2 vs 1 for the point 1 and 0.5 for 9.5)
    order = k_center_greedy(pool_1d, np.array([[0.0]]), 4, np.random.default_rng(0))
    assert list(order) == [2, 3, 1, 4]


def test_k_center_greedy_never_repeats_a_point_even_among_duplicates():
    order = k_center_greedy(np.ones((5, 2)), np.ones((1, 2)), 5, np.random.default_rng(0))
    assert sorted(order) == [0, 1, 2, 3, 4]


def test_k_center_greedy_without_labeled_points_starts_from_the_rng():
    pool_1d = np.arange(20.0)[:, None]
    a = k_center_greedy(pool_1d, None, 3, np.random.default_rng(5))
    b = k_center_greedy(pool_1d, None, 3, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert a[1] == (0 if a[0] >= 10 else 19)  # after the random first center, the farther end


def test_chunked_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    x, centers = rng.normal(size=(23, 4)), rng.normal(size=(9, 4))
    brute = ((x[:, None, :] - centers[None]) ** 2).sum(-1).min(axis=1)
    np.testing.assert_allclose(squared_distances_to_nearest(x, centers, chunk_elements=10), brute,
                               rtol=1e-10, atol=1e-12)
    assert np.all(np.isinf(squared_distances_to_nearest(x, centers[:0])))


def test_coreset_is_k_center_greedy_on_penultimate_embeddings(real_model):
    x = feature_pool(40)
    positions = select("coreset", real_model, x, 6)
    pool_emb, _ = embed_and_predict(real_model, x)
    labeled_emb, _ = embed_and_predict(real_model, LABELED)
    assert list(positions) == list(k_center_greedy(pool_emb, labeled_emb, 6, np.random.default_rng(0)))


# --------------------------------------------------------------------------- badge
def test_gradient_embeddings_match_a_hand_computation():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]])
    h = np.array([[1.0, 2.0], [-1.0, 0.5]])
    expected = [[-0.3, -0.6, 0.2, 0.4, 0.1, 0.2],     # y_hat = 0: (p - e0) = (-0.3, 0.2, 0.1)
                [-0.3, 0.15, 0.4, -0.2, -0.1, 0.05]]  # y_hat = 1: (p - e1) = (0.3, -0.4, 0.1)
    np.testing.assert_allclose(gradient_embeddings(probs, h), expected, rtol=1e-6, atol=1e-7)


def test_gradient_embeddings_are_the_cross_entropy_gradient_of_the_last_kernel(real_model):
    import tensorflow as tf
    x = feature_pool(5)
    h, probs = embed_and_predict(real_model, x)
    last = real_model.layers[-1]
    y_hat = probs.argmax(axis=1)
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            p = last(h[i:i + 1])
            loss = -tf.math.log(p[0, y_hat[i]])
        grad = tape.gradient(loss, last.kernel).numpy()  # (d, K)
        np.testing.assert_allclose(gradient_embeddings(probs[i:i + 1], h[i:i + 1])[0],
                                   grad.T.ravel(), rtol=1e-4, atol=1e-6)


def sklearn_kmeans_pp(embeddings, k, seed):
    from sklearn.cluster import kmeans_plusplus
    return kmeans_plusplus(np.asarray(embeddings, np.float64), k, random_state=seed, n_local_trials=1)[1]


@pytest.mark.parametrize("seed", range(5))
def test_factorized_kmeans_pp_makes_the_selections_of_sklearn_kmeans_plusplus(seed):
    rng = np.random.default_rng(seed)
    probs, h = rng.dirichlet(np.ones(4), size=300), rng.normal(size=(300, 6))
    residuals = strategies.gradient_residuals(probs)
    ours = strategies.kmeans_pp_outer(residuals, h, 25, random_state=seed)
    assert list(ours) == list(sklearn_kmeans_pp(gradient_embeddings(probs, h), 25, seed))
    assert len(set(ours)) == 25


def test_badge_is_kmeans_plus_plus_on_the_gradient_embeddings(real_model):
    x = feature_pool(40)
    positions = select("badge", real_model, x, 6, seed=3)
    h, probs = embed_and_predict(real_model, x)
    seed = int(np.random.default_rng(3).integers(2 ** 31 - 1))
    assert list(positions) == list(sklearn_kmeans_pp(gradient_embeddings(probs, h), 6, seed))


def test_badge_fills_the_batch_when_every_gradient_embedding_is_zero():
    import keras
    model = tiny_sequential(keras.layers.Dense(8, activation="relu"))
    model.layers[-1].kernel.assign(np.zeros((8, 4)))
    model.layers[-1].bias.assign([1000.0, 0.0, 0.0, 0.0])  # p is exactly one-hot: zero gradients
    positions = select("badge", model, feature_pool(20), 8)
    assert len(np.unique(positions)) == 8 and positions.max() < 20


def test_badge_rejects_a_last_layer_without_softmax():
    import keras
    model = keras.Sequential([keras.Input(shape=(N_FEATURES,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="softmax"):
        select("badge", model, feature_pool(10), 3)


def test_gradient_residuals_are_p_minus_the_one_hot_prediction():
    np.testing.assert_allclose(strategies.gradient_residuals([[0.2, 0.5, 0.3]]), [[0.2, -0.5, 0.3]])


def test_fill_unique_keeps_first_occurrences_in_order_and_tops_up():
    filled = strategies.fill_unique(np.array([3, 3, 1, 3]), 6, 4, np.random.default_rng(0))
    assert list(filled[:2]) == [3, 1] and len(set(filled)) == 4 and filled.max() < 6
