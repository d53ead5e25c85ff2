"""Core-set selection: greedy k-center on penultimate embeddings (Sener & Savarese 2018)."""

from __future__ import annotations

import numpy as np

from al.keras_ops import embed_and_predict, n_samples
from al.strategies.base import CHUNK_ELEMENTS, QueryStrategy, check_batch


def squared_distances_to_nearest(x: np.ndarray, centers: np.ndarray,
                                 chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Squared Euclidean distance from each row of ``x`` to its nearest row of ``centers``.

    Computed in chunks of rows of ``x`` so that at most ``chunk_elements`` distances exist
    at once (never the full ``len(x) x len(centers)`` matrix). float64, clipped at 0.
    """
    x = np.asarray(x, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if len(centers) == 0:
        return np.full(len(x), np.inf)
    center_norms = np.einsum("ij,ij->i", centers, centers)
    rows = max(1, chunk_elements // len(centers))
    out = np.empty(len(x))
    for start in range(0, len(x), rows):
        part = x[start:start + rows]
        d2 = np.einsum("ij,ij->i", part, part)[:, None] + center_norms[None, :] - 2.0 * part @ centers.T
        out[start:start + rows] = np.maximum(d2.min(axis=1), 0.0)
    return out


def k_center_greedy(pool: np.ndarray, labeled: np.ndarray | None, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018, Algorithm 1): ``k`` positions into ``pool``.

    Each step adds the pool point farthest from its nearest center (labeled points and the
    points chosen so far); ties go to the lower position. Keeps one running vector of
    min-distances, O(n_pool) memory; the initial distances to the labeled set are computed
    in chunks. With no labeled points the first center is drawn uniformly from ``rng``.

    Parameters
    ----------
    pool : array of shape (n_pool, d)
    labeled : array of shape (n_labeled, d) or None
    k : number of centers to add, 1 <= k <= n_pool
    """
    pool = np.asarray(pool, dtype=np.float64)
    check_batch(len(pool), k)
    norms = np.einsum("ij,ij->i", pool, pool)
    chosen = []
    if labeled is not None and len(labeled):
        min_d2 = squared_distances_to_nearest(pool, labeled)
    else:
        min_d2 = np.full(len(pool), np.inf)
        chosen.append(int(rng.integers(len(pool))))
        min_d2[chosen[0]] = -np.inf
    while True:
        if chosen:
            c = chosen[-1]
            d2 = np.maximum(norms - 2.0 * (pool @ pool[c]) + norms[c], 0.0)
            min_d2 = np.minimum(min_d2, d2)
            min_d2[chosen] = -np.inf  # never pick a point twice, even among duplicates
        if len(chosen) == k:
            return np.asarray(chosen, dtype=np.int64)
        chosen.append(int(np.argmax(min_d2)))


class CoreSetSampling(QueryStrategy):
    """Core-set, greedy k-center on penultimate embeddings (Sener & Savarese 2018, Alg. 1).

    Embeddings are the input of the model's last Dense layer
    (:func:`al.keras_ops.embed_and_predict`, inference mode); the labeled samples'
    embeddings are the initial centers. Euclidean distance (squared; same argmax). Memory:
    the pool's embeddings (n_pool x d float64), one running min-distance vector, and
    distance chunks of :data:`CHUNK_ELEMENTS`. The robust (outlier-tolerant MIP) variant of
    the paper is not implemented. Needs a model ending in a Dense layer.
    """

    name = "coreset"

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        purpose = f"strategy {self.name!r}"
        pool_emb, _ = embed_and_predict(model, x_unlabeled, purpose=purpose)
        labeled_emb = None
        if n_samples(x_labeled):
            labeled_emb, _ = embed_and_predict(model, x_labeled, purpose=purpose)
        return k_center_greedy(pool_emb, labeled_emb, batch_size, rng)
