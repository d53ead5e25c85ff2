"""TypiClust (Hacohen et al. 2022): typicality, the cluster order, the embeddings, purity.

The shared strategy template in test_strategies.py covers the registered names too
(``typiclust``, ``typiclust_pca``, ``typiclust_model``); these tests pin what is specific.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from al import runs, strategies
from al.strategies import typiclust as typiclust_module
from al.keras_ops import embed_and_predict
from al.loop import run_active_learning
from al.strategies import (canonical_rows, get_strategy, kmeans_labels, l2_normalized, mean_knn_distances,
                           pca_embedding, row_keys, typicality, typiclust_positions)
from conftest import feature_pool

TYPICLUST_NAMES = ["typiclust", "typiclust_pca", "typiclust_model"]


def brute_mean_knn(features, k):
    d = np.sqrt(((features[:, None, :] - features[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def blobs(n_blobs=4, per_blob=30, dim=6, seed=0):
    """Well-separated Gaussian blobs at +-8 e_i (distinct directions from the overall mean)."""
    rng = np.random.default_rng(seed)
    centers = np.concatenate([8 * np.eye(dim), -8 * np.eye(dim)])[:n_blobs]
    blob = np.repeat(np.arange(n_blobs), per_blob)
    x = centers[blob] + rng.normal(scale=0.5, size=(len(blob), dim))
    return x.astype(np.float32), blob


# --------------------------------------------------------------------------- typicality
@pytest.mark.parametrize("chunk_elements", [7, 40, strategies.CHUNK_ELEMENTS])
def test_mean_knn_distances_match_brute_force_in_any_chunking(chunk_elements):
    f = np.random.default_rng(0).normal(size=(23, 4))
    np.testing.assert_allclose(mean_knn_distances(f, 5, chunk_elements), brute_mean_knn(f, 5),
                               rtol=1e-9, atol=1e-12)


def test_a_duplicate_counts_at_distance_zero_but_the_point_itself_does_not():
    f = np.array([[0.0], [0.0], [3.0]])
    np.testing.assert_allclose(mean_knn_distances(f, 1), [0.0, 0.0, 3.0], atol=1e-12)


def test_mean_knn_distances_never_build_the_n_by_n_matrix():
    n = 3000
    f = np.random.default_rng(0).normal(size=(n, 8))
    tracemalloc.start()
    try:
        mean_knn_distances(f, 20, chunk_elements=2 ** 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 8 / 10, f"peak {peak / 2 ** 20:.1f} MiB: an n x n distance matrix was built"


def test_the_pca_embedding_fits_in_float32_without_a_float64_copy_of_the_samples():
    # 4000 x 784 float32 images are 12.5 MB; one float64 copy alone would be 25 MB.
    x = np.random.default_rng(0).random((4000, 28, 28, 1), dtype=np.float32)
    tracemalloc.start()
    try:
        embedding = pca_embedding(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert embedding.shape == (4000, 50) and embedding.dtype == np.float64
    assert peak < 2 * x.nbytes, f"peak {peak / 2 ** 20:.1f} MiB for {x.nbytes / 2 ** 20:.1f} MiB of samples"


def test_mean_knn_distances_reject_k_outside_1_to_n_minus_1():
    with pytest.raises(ValueError, match="k must lie in 1..2"):
        mean_knn_distances(np.zeros((3, 2)), 3)


def test_typicality_is_the_inverse_mean_neighbour_distance_plus_the_references_epsilon():
    f = np.random.default_rng(1).normal(size=(12, 3))
    np.testing.assert_allclose(typicality(f, 4), 1.0 / (brute_mean_knn(f, 4) + 1e-5), rtol=1e-9)


# --------------------------------------------------------------------------- cluster order
def test_the_densest_point_of_a_cluster_is_taken():
    # One cluster on a line: a tight group around 0.0 (position 3 sits in its middle) and outliers.
    values = np.array([5.0, -0.3, 0.3, 0.0, -0.1, 0.1, -0.2, 0.2, 9.0, -7.0, 0.45, -0.45])
    chosen = typiclust_positions(np.zeros(12, int), np.zeros(12, bool), values[:, None], 1,
                                 k_nn=4, min_cluster_size=0)
    assert list(chosen) == [3]


def test_uncovered_clusters_come_first_largest_first_and_each_before_any_repeats():
    # cluster sizes: 0 -> 10, 1 -> 30 (holds the one labeled sample), 2 -> 20, 3 -> 15
    clusters = np.repeat([0, 1, 2, 3], [10, 30, 20, 15])
    labeled = np.zeros(len(clusters), bool)
    labeled[10] = True  # a sample of cluster 1
    features = np.random.default_rng(0).normal(size=(len(clusters), 2))
    chosen = typiclust_positions(clusters, labeled, features, 9)
    assert list(clusters[chosen]) == [2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert not labeled[chosen].any() and len(set(chosen)) == 9


def test_clusters_at_most_min_cluster_size_are_visited_only_when_the_others_run_out():
    clusters = np.repeat([0, 1], [3, 8])  # cluster 0 is small (3 <= 5)
    features = np.arange(11.0)[:, None]
    chosen = typiclust_positions(clusters, np.zeros(11, bool), features, 10)
    assert list(clusters[chosen]) == [1] * 8 + [0, 0]


def test_the_batch_is_filled_when_clusters_run_out_and_labeled_samples_are_never_taken():
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labeled = np.array([True, False, True, False, True, False])
    chosen = typiclust_positions(clusters, labeled, np.arange(6.0)[:, None], 3)
    assert sorted(chosen) == [1, 3, 5]
    with pytest.raises(ValueError, match="cannot select 4 samples from an unlabeled pool of 3"):
        typiclust_positions(clusters, labeled, np.arange(6.0)[:, None], 4)


def test_the_typicality_of_a_cluster_uses_at_most_half_its_unlabeled_samples_as_neighbours(monkeypatch):
    seen = []
    real = strategies.mean_knn_distances

    def recording(features, k, chunk_elements=strategies.CHUNK_ELEMENTS):
        seen.append((len(features), k))
        return real(features, k, chunk_elements)

    monkeypatch.setattr(typiclust_module, "mean_knn_distances", recording)
    clusters = np.repeat([0, 1], [60, 9])
    typiclust_positions(clusters, np.zeros(69, bool), np.random.default_rng(0).normal(size=(69, 2)), 2)
    assert seen == [(60, 20), (9, 4)]


# --------------------------------------------------------------------------- the strategy
def test_typiclust_takes_the_most_typical_sample_of_every_blob():
    x, blob = blobs()
    chosen = get_strategy("typiclust_pca").select(None, x, 4, np.random.default_rng(0), x[:0])
    assert sorted(blob[chosen]) == [0, 1, 2, 3]
    features = l2_normalized(pca_embedding(x))
    for position in chosen:
        members = np.flatnonzero(blob == blob[position])
        densest = members[np.argmin(mean_knn_distances(features[members], 20))]
        assert position == densest


def test_typiclust_skips_the_blobs_already_covered_by_labeled_samples():
    x, blob = blobs(n_blobs=4)
    covered = np.flatnonzero(blob < 2)[[0, 31]]  # one labeled sample in blob 0, one in blob 1
    pool_idx = np.setdiff1d(np.arange(len(x)), covered)
    chosen = get_strategy("typiclust_pca").select(None, x[pool_idx], 2, np.random.default_rng(0), x[covered])
    assert sorted(blob[pool_idx[chosen]]) == [2, 3]


def test_the_number_of_clusters_is_labeled_plus_batch_capped_at_max_clusters(monkeypatch):
    seen = []
    real = strategies.kmeans_labels

    def recording(features, n_clusters, random_state):
        seen.append(n_clusters)
        return real(features, n_clusters, random_state)

    monkeypatch.setattr(typiclust_module, "kmeans_labels", recording)
    x = feature_pool(60)
    get_strategy("typiclust").select(None, x[10:], 7, np.random.default_rng(0), x[:10])
    strategies.TypiClustSampling(max_clusters=5).select(None, x[10:], 7, np.random.default_rng(0), x[:10])
    assert seen == [17, 5]
    assert strategies.TYPICLUST_MAX_CLUSTERS == 500 and strategies.TYPICLUST_K_NN == 20


def test_the_pca_embedding_does_not_depend_on_which_samples_are_labeled_nor_on_their_order():
    x = feature_pool(80, n_features=5)
    order = np.random.default_rng(3).permutation(80)
    first, inverse_a, _ = canonical_rows(x[:30], x[30:])
    again, inverse_b, _ = canonical_rows(x[order][:55], x[order][55:])
    assert np.array_equal(first, again)
    assert np.array_equal(pca_embedding(first), pca_embedding(again))
    assert np.array_equal(first[inverse_a], x) and np.array_equal(again[inverse_b], x[order])


def test_canonical_rows_keep_one_copy_of_duplicates_and_map_every_sample_to_it():
    x = feature_pool(10)
    union = np.concatenate([x[:4], x[2:]])  # rows 2 and 3 twice
    distinct, inverse, n_labeled = canonical_rows(union[:4], union[4:])
    assert n_labeled == 4 and len(distinct) == 10 and np.array_equal(distinct[inverse], union)


def test_row_keys_of_a_multi_input_list_cover_every_part():
    a, b = feature_pool(4), feature_pool(4, seed=1)
    keys = row_keys([a, b])
    assert len(set(keys)) == 4
    assert not np.array_equal(keys, row_keys([a, b[::-1]]))
    assert np.array_equal(row_keys([a, b])[::-1], row_keys([a[::-1], b[::-1]]))


@pytest.mark.parametrize("name", ["typiclust", "typiclust_pca"])
def test_the_selection_is_the_same_whatever_the_order_of_the_labeled_samples(name):
    x = feature_pool(120, n_features=4)
    labeled, pool = x[:40], x[40:]
    a = get_strategy(name).select(None, pool, 10, np.random.default_rng(7), labeled)
    b = get_strategy(name).select(None, pool, 10, np.random.default_rng(7), labeled[::-1].copy())
    assert np.array_equal(a, b)


def test_a_strategy_object_keeps_no_state_between_selections():
    x = feature_pool(100, n_features=4)
    strategy = get_strategy("typiclust")
    first = strategy.select(None, x[20:], 8, np.random.default_rng(1), x[:20])
    strategy.select(None, x[50:], 5, np.random.default_rng(2), x[:50])
    assert np.array_equal(first, strategy.select(None, x[20:], 8, np.random.default_rng(1), x[:20]))


def test_the_default_typiclust_is_the_pca_embedding():
    x = feature_pool(90, n_features=4)
    picks = [get_strategy(n).select(None, x[15:], 9, np.random.default_rng(0), x[:15])
             for n in ("typiclust", "typiclust_pca")]
    assert np.array_equal(*picks)
    assert get_strategy("typiclust").uses_model is False and get_strategy("typiclust_model").uses_model


def test_typiclust_model_clusters_the_penultimate_embeddings(real_model):
    x = feature_pool(70)
    chosen = get_strategy("typiclust_model").select(real_model, x[10:], 6, np.random.default_rng(5), x[:10])
    distinct, inverse, n_labeled = canonical_rows(x[:10], x[10:])
    features = l2_normalized(embed_and_predict(real_model, distinct)[0].astype(np.float64))
    seed = int(np.random.default_rng(5).integers(2 ** 31 - 1))
    clusters = kmeans_labels(features, 16, seed)
    labeled = np.arange(70) < 10
    expected = typiclust_positions(clusters[inverse], labeled, features[inverse], 6) - 10
    assert list(chosen) == list(expected)


def test_kmeans_labels_are_seeded_and_use_minibatch_above_50_clusters(monkeypatch):
    f = np.random.default_rng(0).normal(size=(400, 3))
    assert np.array_equal(kmeans_labels(f, 60, 3), kmeans_labels(f, 60, 3))
    import sklearn.cluster
    used = []
    for cls in ("KMeans", "MiniBatchKMeans"):
        real = getattr(sklearn.cluster, cls)
        monkeypatch.setattr(sklearn.cluster, cls,
                            lambda *a, _real=real, _cls=cls, **k: used.append(_cls) or _real(*a, **k))
    kmeans_labels(f, 50, 0)
    kmeans_labels(f, 51, 0)
    assert used == ["KMeans", "MiniBatchKMeans"]


def test_invalid_parameters_are_refused_with_their_values():
    with pytest.raises(ValueError, match="got 0, 20, 50, 5"):
        strategies.TypiClustSampling(max_clusters=0)


def test_a_resumed_run_makes_the_selections_of_the_uninterrupted_one(tmp_path, synthetic_dataset, build_model,
                                                                     loop_config):
    # typiclust_model: the resumed run must rebuild the model whose embeddings it clusters.
    config = {**loop_config, "n_steps": 2}

    def run(folder):
        return run_active_learning(dataset="toy", data=synthetic_dataset, build_model=build_model,
                                   config=dict(config), strategy="typiclust_model", seed=0,
                                   results_dir=folder)

    whole = run(tmp_path / "whole")
    path = runs.run_path(tmp_path / "cut", "toy", "typiclust_model", 0)
    cut = dict(whole, steps=whole["steps"][:2], complete=False)
    runs.save_run(path, cut)
    resumed = run(tmp_path / "cut")
    assert [s["selected"] for s in resumed["steps"]] == [s["selected"] for s in whole["steps"]]
