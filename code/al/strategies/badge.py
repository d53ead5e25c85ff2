"""BADGE: k-means++ seeding on last-layer gradient embeddings (Ash et al. 2020)."""

from __future__ import annotations

import numpy as np

from al.keras_ops import embed_and_predict, last_layer_is_softmax, n_samples
from al.strategies.base import QueryStrategy, check_batch


def gradient_embeddings(probs: np.ndarray, features: np.ndarray) -> np.ndarray:
    """BADGE gradient embeddings (Ash et al. 2020, §3): last-layer gradient at the predicted label.

    For a softmax output ``p = softmax(W h + b)`` and cross-entropy with the hypothetical
    label ``y_hat = argmax p``, the gradient with respect to ``W`` is the outer product
    ``(p - onehot(y_hat)) ⊗ h``. Row ``i`` of the result is that outer product flattened
    class-major: entries ``[c * d:(c + 1) * d]`` are ``(p_ic - [c == y_hat_i]) * h_i``.
    (Ash et al. use the opposite sign; distances, hence the selection, are unchanged.)
    The bias gradient is left out, as in the authors' code.

    Parameters
    ----------
    probs : array of shape (n_samples, n_classes)
    features : array of shape (n_samples, d), the penultimate embedding ``h``

    Returns
    -------
    array of shape (n_samples, n_classes * d), float32
    """
    features = np.asarray(features, dtype=np.float32)
    residual = gradient_residuals(probs).astype(np.float32)
    if features.ndim != 2 or len(residual) != len(features):
        raise ValueError(f"probs (n, K) and features (n, d) must be 2-D with the same n, got "
                         f"shapes {np.shape(probs)} and {features.shape}")
    return (residual[:, :, None] * features[:, None, :]).reshape(len(residual), -1)


def gradient_residuals(probs: np.ndarray) -> np.ndarray:
    """``p - onehot(argmax p)`` per row: the loss gradient w.r.t. the logits at the predicted label."""
    residual = np.array(probs, dtype=np.float64)
    if residual.ndim != 2:
        raise ValueError(f"probs must be 2-D (n_samples, n_classes), got shape {residual.shape}")
    residual[np.arange(len(residual)), residual.argmax(axis=1)] -= 1.0
    return residual


def kmeans_pp_outer(residuals: np.ndarray, features: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """k-means++ seeding (D² sampling) of the rows ``g_i = r_i ⊗ h_i`` without forming them.

    Runs the algorithm of ``sklearn.cluster.kmeans_plusplus(G, k, n_local_trials=1,
    random_state=random_state)``, with the same random draws, where ``G`` is the matrix of
    rows ``g_i`` (:func:`gradient_embeddings` when ``r = gradient_residuals(probs)``):
    vanilla k-means++ (Arthur & Vassilvitskii 2007), first center uniform, then each next
    center drawn with probability proportional to its squared distance to the nearest
    chosen one. It uses ``<r_i ⊗ h_i, r_j ⊗ h_j> = <r_i, r_j> <h_i, h_j>``, so a distance
    costs O(K + d) instead of O(K * d) and ``G`` (n x K * d) is never built: memory
    O(n (K + d)). Selections agree with sklearn's up to float round-off (checked in the tests).

    Parameters
    ----------
    residuals : array of shape (n, K), the ``r_i``
    features : array of shape (n, d), the ``h_i``
    k : number of centers, 1 <= k <= n
    random_state : int, seed of the ``numpy.random.RandomState`` that draws the centers

    Returns ``k`` positions; a position may repeat only when every remaining point
    coincides with a chosen one (zero total potential), as in sklearn.
    """
    r = np.asarray(residuals, dtype=np.float64)
    h = np.asarray(features, dtype=np.float64)
    n = len(r)
    check_batch(n, k)
    state = np.random.RandomState(random_state)
    sq_norms = np.einsum("ij,ij->i", r, r) * np.einsum("ij,ij->i", h, h)

    def sq_distances_to(c):
        return np.maximum(sq_norms - 2.0 * (r @ r[c]) * (h @ h[c]) + sq_norms[c], 0.0)

    chosen = [int(state.choice(n, p=np.full(n, 1.0 / n)))]
    closest = sq_distances_to(chosen[0])
    closest[chosen[0]] = 0.0
    for _ in range(1, k):
        draw = state.uniform(size=1) * closest.sum()
        c = int(min(np.searchsorted(np.cumsum(closest), draw)[0], n - 1))
        chosen.append(c)
        np.minimum(closest, sq_distances_to(c), out=closest)
        closest[c] = 0.0
    return np.asarray(chosen, dtype=np.int64)


def fill_unique(positions: np.ndarray, n_pool: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """First occurrences of ``positions`` in order, topped up to ``k`` with random unused ones."""
    positions = np.asarray(positions, dtype=np.int64)
    _, first = np.unique(positions, return_index=True)
    unique = positions[np.sort(first)]
    if len(unique) < k:
        rest = np.setdiff1d(np.arange(n_pool), unique)
        unique = np.concatenate([unique, rng.choice(rest, size=k - len(unique), replace=False)])
    return unique[:k]



class BadgeSampling(QueryStrategy):
    """BADGE, batch active learning by diverse gradient embeddings (Ash et al. 2020).

    Gradient embeddings of the last layer at the predicted label
    (:func:`gradient_embeddings`: ``(p - onehot(y_hat)) ⊗ h``, ``h`` the penultimate
    embedding), then k-means++ seeding with plain D² sampling as in the paper
    (:func:`kmeans_pp_outer`: the algorithm and random draws of
    ``sklearn.cluster.kmeans_plusplus(..., n_local_trials=1)``, ``random_state`` drawn from
    ``rng``; like sklearn, and unlike the authors' code, which takes the largest-norm point,
    the first center is uniform). The outer-product structure is used, so the
    n_pool x (n_classes * d) matrix is never built: memory is O(n_pool * (n_classes + d))
    and each center costs O(n_pool * (n_classes + d)). If seeding repeats a point (only when
    all remaining embeddings coincide with chosen ones, e.g. all-zero gradients of a fully
    confident model), the rest of the batch is drawn uniformly from ``rng``. Needs a model
    whose last layer is a Dense softmax.
    """

    name = "badge"

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        if not last_layer_is_softmax(model):
            raise ValueError(f"strategy {self.name!r} needs a last Dense layer with softmax "
                             "activation (its gradient formula assumes softmax + cross-entropy)")
        features, probs = embed_and_predict(model, x_unlabeled, purpose=f"strategy {self.name!r}")
        centers = kmeans_pp_outer(gradient_residuals(probs), features, batch_size,
                                  random_state=int(rng.integers(2 ** 31 - 1)))
        return fill_unique(centers, len(probs), batch_size, rng)
