"""TypiClust: the most typical sample of each uncovered cluster (Hacohen, Dekel & Weinshall 2022).

Built for low budgets, where uncertainty sampling loses to random (README "Low budgets").
"""

from __future__ import annotations

import numpy as np

from al.keras_ops import embed_and_predict, n_samples
from al.strategies.base import CHUNK_ELEMENTS, QueryStrategy, check_batch

TYPICLUST_MAX_CLUSTERS = 500     # cap on typiclust's clusters (the reference code's MAX_NUM_CLUSTERS)
TYPICLUST_K_NN = 20              # neighbours of the typicality (the paper's K)
TYPICLUST_MIN_CLUSTER_SIZE = 5   # clusters this small are visited last (the reference drops them)
TYPICLUST_FULL_KMEANS_MAX = 50   # KMeans up to this many clusters, MiniBatchKMeans above (reference)
TYPICLUST_PCA_COMPONENTS = 50    # dimensions of typiclust_pca's label-free embedding
TYPICLUST_PCA_SEED = 0           # fixed: the PCA embedding depends on the samples only


def row_keys(x) -> np.ndarray:
    """A 128-bit content key per sample (BLAKE2b of its bytes; all parts of a multi-input list).

    Equal rows get equal keys; distinct rows collide with probability ~2**-128. Sorting by
    key gives an order of the samples that depends on their content only, not on where
    they sit in the arrays (see :func:`canonical_rows`). Returns an array of dtype ``S16``.
    """
    import hashlib
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    n = n_samples(x)
    views = [np.ascontiguousarray(p).reshape(n, -1).view(np.uint8).reshape(n, -1) for p in parts]
    keys = [hashlib.blake2b(b"".join(v[i].data for v in views), digest_size=16).digest() for i in range(n)]
    return np.array(keys, dtype="S16") if keys else np.zeros(0, dtype="S16")


def canonical_rows(x_labeled, x_unlabeled) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct samples of ``x_labeled`` + ``x_unlabeled`` in an order set by content alone.

    Returns ``(distinct, inverse, n_labeled)``: ``distinct`` holds one copy of every distinct
    sample, sorted by :func:`row_keys` (a list of arrays for a multi-input list);
    ``inverse[i]`` is the row of ``distinct`` equal to sample ``i`` of the union (labeled
    samples first, then the unlabeled ones). Whatever the split into labeled and unlabeled
    and whatever the order of the rows, the same set of samples gives the same ``distinct``,
    so an embedding fit on it, and a clustering seeded the same way, are the same too.
    """
    n_labeled = 0 if x_labeled is None else n_samples(x_labeled)
    keys = row_keys(x_unlabeled)
    if n_labeled:
        keys = np.concatenate([row_keys(x_labeled), keys])
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return _union_rows(x_labeled, x_unlabeled, n_labeled, first), inverse.reshape(-1), n_labeled


def _union_rows(x_labeled, x_unlabeled, n_labeled: int, positions: np.ndarray):
    """Rows ``positions`` of the union (labeled first), without building the whole union."""
    if isinstance(x_unlabeled, (list, tuple)):
        labeled_parts = x_labeled if n_labeled else [None] * len(x_unlabeled)
        return [_union_rows(a, b, n_labeled, positions) for a, b in zip(labeled_parts, x_unlabeled)]
    x_unlabeled = np.asarray(x_unlabeled)
    out = np.empty((len(positions), *x_unlabeled.shape[1:]), dtype=x_unlabeled.dtype)
    from_labeled = positions < n_labeled
    if n_labeled:
        out[from_labeled] = np.asarray(x_labeled)[positions[from_labeled]]
    out[~from_labeled] = x_unlabeled[positions[~from_labeled] - n_labeled]
    return out


def flat_rows(x, dtype=np.float32) -> np.ndarray:
    """Each sample as one row of ``dtype`` (a multi-input list: its parts side by side).

    A single input that already has ``dtype`` comes back as a reshaped view, not a copy.
    """
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    n = n_samples(x)
    rows = [np.asarray(p, dtype=dtype).reshape(n, -1) for p in parts]
    return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=1)


def pca_embedding(x, n_components: int = TYPICLUST_PCA_COMPONENTS,
                  seed: int = TYPICLUST_PCA_SEED) -> np.ndarray:
    """The first ``n_components`` principal-component scores of the flattened samples ``x``.

    ``sklearn.decomposition.PCA`` (``svd_solver="auto"``, ``random_state=seed``: a fixed
    seed, so the embedding is a function of ``x`` alone), fit and applied to ``x``; fewer
    components when ``x`` has fewer samples or features. No labels are involved. The fit
    runs in float32 (scikit-learn keeps the input's precision), so its transient memory is
    a centred float32 copy of ``x`` rather than float64 copies (README "TypiClust" gives
    the measured peak of a run).

    Returns an array of shape (n_samples(x), min(n_components, n_samples, n_features)), float64.
    """
    from sklearn.decomposition import PCA
    flat = flat_rows(x, np.float32)
    k = min(int(n_components), *flat.shape)
    if len(flat) < 2 or k < 1:  # nothing to fit: one point (or none) has no directions
        return np.zeros((len(flat), 1))
    return PCA(n_components=k, random_state=seed).fit_transform(flat).astype(np.float64)


def l2_normalized(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm; all-zero rows stay zero."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def kmeans_labels(features: np.ndarray, n_clusters: int, random_state: int) -> np.ndarray:
    """Cluster index of each row: k-means as in the TypiClust reference code.

    ``KMeans`` (k-means++, ``n_init=10``) for at most 50 clusters, ``MiniBatchKMeans``
    (``batch_size=5000``, ``n_init=3``) above; the reference called them with the defaults of
    scikit-learn 1.0.2, which are these ``n_init`` values. Seeded by ``random_state``.
    ``n_clusters`` is lowered to the number of rows; when fewer distinct rows than clusters
    exist, some clusters stay empty (scikit-learn's warning about it is silenced).
    """
    import warnings

    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning
    features = np.asarray(features, dtype=np.float64)
    n_clusters = min(int(n_clusters), len(features))
    if n_clusters < 1:
        raise ValueError(f"k-means needs at least one cluster and one row, got {n_clusters} cluster(s) "
                         f"for {len(features)} row(s)")
    if n_clusters == 1:
        return np.zeros(len(features), dtype=np.int64)
    if n_clusters <= TYPICLUST_FULL_KMEANS_MAX:
        km = KMeans(n_clusters=n_clusters, n_init=10, random_state=random_state)
    else:
        km = MiniBatchKMeans(n_clusters=n_clusters, batch_size=5000, n_init=3, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return km.fit_predict(features).astype(np.int64)


def mean_knn_distances(features: np.ndarray, k: int, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """Mean Euclidean distance from each row to its ``k`` nearest other rows.

    The row itself is left out by position (a duplicate of it counts, at distance 0), as
    the reference drops the first neighbour of each self-query. Brute force over rows in
    chunks, so at most ``chunk_elements`` distances exist at once (never the n x n matrix).

    Parameters
    ----------
    features : array of shape (n, d)
    k : 1 <= k < n
    """
    f = np.asarray(features, dtype=np.float64)
    n = len(f)
    if not 1 <= k < n:
        raise ValueError(f"k must lie in 1..{n - 1} for {n} rows, got {k}")
    norms = np.einsum("ij,ij->i", f, f)
    rows = max(1, chunk_elements // n)
    out = np.empty(n)
    for start in range(0, n, rows):
        part = f[start:start + rows]
        d2 = norms[start:start + rows, None] + norms[None, :] - 2.0 * (part @ f.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(len(part)), np.arange(start, start + len(part))] = np.inf
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start:start + rows] = np.sqrt(nearest).mean(axis=1)
    return out


def typicality(features: np.ndarray, k: int, chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """TypiClust's typicality (Hacohen et al. 2022, eq. 4): ``1 / (mean distance to the k nearest
    neighbours + 1e-5)`` for each row of ``features`` (the 1e-5 is the reference's)."""
    return 1.0 / (mean_knn_distances(features, k, chunk_elements) + 1e-5)


def typiclust_positions(clusters: np.ndarray, labeled: np.ndarray, features: np.ndarray, k: int,
                        k_nn: int = TYPICLUST_K_NN, min_cluster_size: int = TYPICLUST_MIN_CLUSTER_SIZE,
                        chunk_elements: int = CHUNK_ELEMENTS) -> np.ndarray:
    """TypiClust's choice (Hacohen et al. 2022, Alg. 1, as in the reference code): ``k`` positions.

    ``clusters[i]`` is the cluster of sample ``i``, ``labeled[i]`` whether it is labeled,
    ``features[i]`` its embedding. Clusters are ordered by how many labeled samples they
    hold (fewest first: the uncovered ones), then by size (largest first), then by index;
    clusters of at most ``min_cluster_size`` samples (labeled ones counted) come after all
    the others. The clusters are visited round-robin in that order: every cluster gives
    one sample before any gives a second. A visit takes the unlabeled, not yet chosen
    sample of the cluster with the highest :func:`typicality`, computed among those
    samples with ``min(k_nn, m // 2)`` neighbours (``m`` of them; the reference's rule for
    small clusters); a cluster with one such sample gives it, an exhausted one is skipped.
    The small clusters are visited only once every other cluster is exhausted (the reference
    drops them). Ties go to the lower position. Fills the batch whenever ``k`` does not
    exceed the number of unlabeled samples.

    Returns ``k`` distinct positions of unlabeled samples, in the order chosen.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    labeled = np.asarray(labeled, dtype=bool)
    check_batch(int((~labeled).sum()), k)
    n_clusters = int(clusters.max()) + 1
    sizes = np.bincount(clusters, minlength=n_clusters)
    covered = np.bincount(clusters[labeled], minlength=n_clusters)
    ids = np.flatnonzero(sizes > 0)
    order = ids[np.lexsort((ids, -sizes[ids], covered[ids]))]
    by_cluster = np.argsort(clusters, kind="stable")  # positions grouped by cluster, ascending within
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    remaining = {int(c): by_cluster[bounds[c]:bounds[c + 1]] for c in order}
    remaining = {c: idx[~labeled[idx]] for c, idx in remaining.items()}
    chosen: list[int] = []
    for tier in (order[sizes[order] > min_cluster_size], order[sizes[order] <= min_cluster_size]):
        while len(chosen) < k:
            progressed = False
            for c in tier:
                idx = remaining[int(c)]
                if len(chosen) == k or not len(idx):
                    continue
                if len(idx) == 1:
                    best = 0
                else:
                    best = int(np.argmin(mean_knn_distances(features[idx], min(k_nn, len(idx) // 2),
                                                            chunk_elements)))
                chosen.append(int(idx[best]))
                remaining[int(c)] = np.delete(idx, best)
                progressed = True
            if not progressed:
                break
    return np.asarray(chosen, dtype=np.int64)


class TypiClustSampling(QueryStrategy):
    """TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active learning on a budget").

    Clusters the embeddings of all samples, labeled and unlabeled, into
    ``min(n_labeled + batch_size, max_clusters)`` clusters (:func:`kmeans_labels`, seeded
    from ``rng``; the cap of 500 is the reference code's ``MAX_NUM_CLUSTERS``), then takes
    the most typical sample of the uncovered clusters, largest first, and goes round-robin
    over the covered ones when the uncovered run out (:func:`typiclust_positions`: k = 20
    nearest neighbours, clusters of at most 5 samples last). The embedding is L2-normalized
    first (``normalize``), as the reference normalizes its self-supervised features.

    This class embeds with PCA (:func:`pca_embedding`, 50 components, fixed seed) fit on the
    distinct samples of the union in the content order of :func:`canonical_rows`: the
    embedding uses no labels and no model, and does not depend on which samples are labeled
    nor on the order of the rows; k-means runs on the same rows in the same order. The
    paper's self-supervised (SimCLR/DINO) embeddings are not available here; PCA is the
    label-free stand-in, and :class:`TypiClustModelSampling` uses the model's penultimate
    layer. The reference uses squared Euclidean distances (faiss ``IndexFlatL2``) inside the
    typicality; this uses the Euclidean distance of the paper's definition.

    Selection is a function of the arguments alone (no cache, no state between calls).
    Memory: one float32 copy of the distinct samples (for PCA), their embeddings, and distance
    chunks of :data:`CHUNK_ELEMENTS`; never a pool x pool matrix.
    """

    name = "typiclust_pca"
    uses_model = False

    def __init__(self, max_clusters: int = TYPICLUST_MAX_CLUSTERS, k_nn: int = TYPICLUST_K_NN,
                 min_cluster_size: int = TYPICLUST_MIN_CLUSTER_SIZE,
                 pca_components: int = TYPICLUST_PCA_COMPONENTS, normalize: bool = True):
        if int(max_clusters) < 1 or int(k_nn) < 1 or int(pca_components) < 1 or int(min_cluster_size) < 0:
            raise ValueError("max_clusters, k_nn and pca_components must be at least 1 and "
                             f"min_cluster_size at least 0, got {max_clusters}, {k_nn}, {pca_components}, "
                             f"{min_cluster_size}")
        self.max_clusters, self.k_nn = int(max_clusters), int(k_nn)
        self.min_cluster_size, self.pca_components = int(min_cluster_size), int(pca_components)
        self.normalize = bool(normalize)

    def embed(self, model, distinct) -> np.ndarray:
        """Embedding of the distinct samples (in :func:`canonical_rows` order), shape (m, d)."""
        return pca_embedding(distinct, self.pca_components)

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        distinct, inverse, n_labeled = canonical_rows(x_labeled, x_unlabeled)
        features = self.embed(model, distinct)
        if self.normalize:
            features = l2_normalized(features)
        n_clusters = min(n_labeled + batch_size, self.max_clusters)
        clusters = kmeans_labels(features, n_clusters, random_state=int(rng.integers(2 ** 31 - 1)))
        labeled = np.arange(len(inverse)) < n_labeled
        chosen = typiclust_positions(clusters[inverse], labeled, features[inverse], batch_size,
                                     self.k_nn, self.min_cluster_size)
        return chosen - n_labeled


class TypiClustDefault(TypiClustSampling):
    """``typiclust``: TypiClust with the default embedding, PCA (:class:`TypiClustSampling`).

    The default was chosen by measurement on the development split, never the test set
    (README "TypiClust": the MNIST low-budget protocol scored with ``--evaluate-on dev``,
    ``results/strategy_search/low_budget/``). Runs meant to stay unambiguous if the default
    ever changes should name the embedding (``typiclust_pca``, ``typiclust_model``).
    """

    name = "typiclust"


class TypiClustModelSampling(TypiClustSampling):
    """TypiClust on the current model's penultimate embeddings (:func:`al.keras_ops.embed_and_predict`).

    Everything else as :class:`TypiClustSampling`. The model was trained on the labeled
    samples, so this embedding changes from step to step; it is computed for the distinct
    samples of the union in content order. Needs a model ending in a Dense layer.
    """

    name = "typiclust_model"
    uses_model = True

    def embed(self, model, distinct):
        features, _ = embed_and_predict(model, distinct, purpose=f"strategy {self.name!r}")
        return features.astype(np.float64)
