"""Query strategies: which unlabeled samples to send to the annotator next.

Every strategy implements one call, always with all arguments::

    positions = strategy.select(model, x_unlabeled, batch_size, rng, x_labeled)

``x_unlabeled`` and ``x_labeled`` are samples (arrays with the samples first), ``positions``
index into ``x_unlabeled`` (the loop maps them back to dataset indices). A strategy that
does not need an argument ignores it. Uncertainty strategies are a :class:`ScoreStrategy`
(baal-style "heuristic"): they map the model's predicted class probabilities to one score
per sample, higher meaning more informative, and take the ``batch_size`` highest.
MC-dropout strategies (``bald``, ``entropy_mc``) score ``mc_passes`` stochastic forward
passes; ``coreset`` and ``badge`` work on penultimate-layer embeddings. What they need
from the model comes from :mod:`al.keras_ops`; this module holds the pure-numpy scores and
selection algorithms. Adding a strategy means writing one small class and registering it
in :data:`STRATEGIES`; the loop does not change.
"""

from __future__ import annotations

import numpy as np

from al.keras_ops import embed_and_predict, last_layer_is_softmax, mc_predict_proba, n_samples, predict_proba

MC_PASSES = 10             # default number of stochastic forward passes of bald / entropy_mc
CHUNK_ELEMENTS = 2 ** 22   # float64 elements per distance chunk in coreset (32 MB)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``probs``, vectorized and safe for p = 0.

    Uses the convention 0 * log 0 = 0, so one-hot rows score exactly 0 and no NaN or
    warning appears. Rows are not renormalized.

    Parameters
    ----------
    probs : array of shape (n_samples, n_classes)

    Returns
    -------
    array of shape (n_samples,)
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (n_samples, n_classes), got shape {probs.shape}")
    logs = np.log(probs, out=np.zeros_like(probs), where=probs > 0)
    return -np.einsum("ij,ij->i", probs, logs)


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first; ties go to the lower position.

    A stable sort makes the result independent of platform-specific partition order,
    which keeps selections reproducible.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[:k]


def check_batch(n_pool: int, batch_size: int) -> None:
    """Reject a batch that cannot be filled from the pool."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size > n_pool:
        raise ValueError(
            f"cannot select {batch_size} samples from an unlabeled pool of {n_pool}; "
            "lower batch_size or n_steps, or use a larger pool."
        )


class QueryStrategy:
    """Interface of all query strategies.

    Attributes
    ----------
    name : str
        Name used on the command line and in result files.
    uses_model : bool
        False when the strategy ignores the model (a resumed run then need not retrain the
        model that would have scored the pool).
    """

    name = "base"
    uses_model = True

    def select(self, model, x_unlabeled: np.ndarray, batch_size: int,
               rng: np.random.Generator, x_labeled: np.ndarray) -> np.ndarray:
        """Return ``batch_size`` distinct positions into ``x_unlabeled``, most wanted first.

        Raises ``ValueError`` when the pool holds fewer than ``batch_size`` samples.
        """
        raise NotImplementedError


class RandomSampling(QueryStrategy):
    """Uniform random sampling without replacement: the baseline every strategy must beat."""

    name = "random"
    uses_model = False

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        return rng.choice(n_samples(x_unlabeled), size=batch_size, replace=False)


class ScoreStrategy(QueryStrategy):
    """Top-k selection by a score computed from predicted class probabilities."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        """Informativeness of each sample, higher is more informative."""
        raise NotImplementedError

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        return top_k_positions(self.score(predict_proba(model, x_unlabeled)), batch_size)


class EntropySampling(ScoreStrategy):
    """Maximum prediction entropy (Shannon 1948; as a query strategy: Settles 2009, §3.1)."""

    name = "entropy"

    def score(self, probs):
        return entropy(probs)


class LeastConfidenceSampling(ScoreStrategy):
    """Least confidence, 1 - max_c p(c|x) (Lewis & Gale 1994; Settles 2009, §3.1)."""

    name = "least_confidence"

    def score(self, probs):
        return 1.0 - np.max(probs, axis=1)


class MarginSampling(ScoreStrategy):
    """Smallest margin between the two most probable classes (Scheffer et al. 2001)."""

    name = "margin"

    def score(self, probs):
        top_two = np.sort(probs, axis=1)[:, -2:]
        return -(top_two[:, 1] - top_two[:, 0])


# --------------------------------------------------------------------------- pure score functions
def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """BALD: mutual information between the prediction and the model parameters.

    ``I(y; w | x) ~ H[mean_t p_t(y|x)] - mean_t H[p_t(y|x)]`` over ``T`` Monte-Carlo
    dropout samples ``p_t`` (Houlsby et al. 2011, eq. 2; Gal et al. 2017, "Deep Bayesian
    active learning with image data", §3). Identical passes (a deterministic model) give
    0 up to float round-off.

    Parameters
    ----------
    mc_probs : array of shape (T, n_samples, n_classes)

    Returns
    -------
    array of shape (n_samples,), float64, >= 0 up to round-off
    """
    mc_probs = _check_mc_probs(mc_probs)
    n_passes, n_rows, n_classes = mc_probs.shape
    expected_entropy = entropy(mc_probs.reshape(-1, n_classes)).reshape(n_passes, n_rows).mean(axis=0)
    return entropy(mc_probs.mean(axis=0)) - expected_entropy


def mc_entropy_scores(mc_probs: np.ndarray) -> np.ndarray:
    """Entropy of the MC-averaged prediction, ``H[mean_t p_t(y|x)]`` (Gal et al. 2017, §3).

    Parameters
    ----------
    mc_probs : array of shape (T, n_samples, n_classes)

    Returns
    -------
    array of shape (n_samples,), float64
    """
    return entropy(_check_mc_probs(mc_probs).mean(axis=0))


def _check_mc_probs(mc_probs) -> np.ndarray:
    mc_probs = np.asarray(mc_probs, dtype=np.float64)
    if mc_probs.ndim != 3 or mc_probs.shape[0] == 0:
        raise ValueError("mc_probs must be 3-D (T passes, n_samples, n_classes) with T >= 1, "
                         f"got shape {mc_probs.shape}")
    return mc_probs


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


def fill_unique(positions: np.ndarray, n_pool: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """First occurrences of ``positions`` in order, topped up to ``k`` with random unused ones."""
    positions = np.asarray(positions, dtype=np.int64)
    _, first = np.unique(positions, return_index=True)
    unique = positions[np.sort(first)]
    if len(unique) < k:
        rest = np.setdiff1d(np.arange(n_pool), unique)
        unique = np.concatenate([unique, rng.choice(rest, size=k - len(unique), replace=False)])
    return unique[:k]


# --------------------------------------------------------------------------- strategies
class MCDropoutStrategy(QueryStrategy):
    """Top-k selection by a score of ``mc_passes`` MC-dropout predictions (Gal & Ghahramani 2016).

    Parameters
    ----------
    mc_passes : int, optional
        Number ``T`` of stochastic forward passes with dropout active; defaults to the
        class attribute ``mc_passes`` (:data:`MC_PASSES` = 10). Scoring costs about ``T``
        forward passes of the layers from the first Dropout on (the layers before it run once).
    """

    mc_passes = MC_PASSES

    def __init__(self, mc_passes: int | None = None):
        if mc_passes is not None:
            self.mc_passes = int(mc_passes)

    def score_mc(self, mc_probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        mc_probs = mc_predict_proba(model, x_unlabeled, self.mc_passes, rng, purpose=f"strategy {self.name!r}")
        return top_k_positions(self.score_mc(mc_probs), batch_size)


class BALDSampling(MCDropoutStrategy):
    """BALD, Bayesian active learning by disagreement (Houlsby et al. 2011; Gal et al. 2017).

    Scores :func:`bald_scores` (mutual information) on ``mc_passes`` (T, default 10)
    MC-dropout passes (:func:`al.keras_ops.mc_predict_proba`: the Dropout layers only sample,
    with masks seeded from ``rng``, so deterministic under a fixed seed). Needs a model with
    at least one Dropout layer of positive rate: without dropout every pass is identical,
    every score is 0 and the selection would just be the first positions of the pool, so
    :meth:`select` raises ``ValueError`` instead. BatchNormalization stays in inference mode.
    """

    name = "bald"

    def score_mc(self, mc_probs):
        return bald_scores(mc_probs)


class MCEntropySampling(MCDropoutStrategy):
    """Max entropy of the MC-dropout averaged prediction (Gal et al. 2017, "Max Entropy").

    Same passes, seeding and model requirements as :class:`BALDSampling` (``mc_passes``,
    default 10; ``ValueError`` for a model without Dropout, where it would equal ``entropy``).
    """

    name = "entropy_mc"

    def score_mc(self, mc_probs):
        return mc_entropy_scores(mc_probs)


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


STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls
    for cls in (RandomSampling, EntropySampling, LeastConfidenceSampling, MarginSampling,
                BALDSampling, MCEntropySampling, CoreSetSampling, BadgeSampling)
}


def get_strategy(name: str) -> QueryStrategy:
    """Instantiate a strategy by name; unknown names list the known ones."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose from: {', '.join(sorted(STRATEGIES))}"
        ) from None
