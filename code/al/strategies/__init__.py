"""Query strategies: which unlabeled samples to send to the annotator next.

Every strategy implements one call, always with all arguments::

    positions = strategy.select(model, x_unlabeled, batch_size, rng, x_labeled)

``x_unlabeled`` and ``x_labeled`` are samples (arrays with the samples first), ``positions``
index into ``x_unlabeled`` (the loop maps them back to dataset indices). A strategy that
does not need an argument ignores it. Uncertainty strategies are a :class:`ScoreStrategy`
(baal-style "heuristic"): they map the model's predicted class probabilities to one score
per sample, higher meaning more informative, and take the ``batch_size`` highest.

One module per family, each a few short classes and the pure-numpy algorithm they call:

- :mod:`~al.strategies.base`: the interface (:class:`QueryStrategy`, :class:`ScoreStrategy`)
  and shared helpers (:func:`entropy`, :func:`top_k_positions`, :func:`check_batch`);
- :mod:`~al.strategies.baselines`: ``random``, ``sequential``;
- :mod:`~al.strategies.uncertainty`: ``entropy``, ``least_confidence``, ``margin``;
- :mod:`~al.strategies.mc_dropout`: ``bald``, ``entropy_mc`` (``mc_passes`` stochastic passes);
- :mod:`~al.strategies.coreset`: ``coreset`` (penultimate-layer embeddings);
- :mod:`~al.strategies.badge`: ``badge`` (last-layer gradient embeddings);
- :mod:`~al.strategies.typiclust`: ``typiclust`` (= ``typiclust_pca``), ``typiclust_model``.

What they need from the model comes from :mod:`al.keras_ops`. Adding a strategy means writing
one small class and registering it in :data:`STRATEGIES`; the loop does not change, and
``tests/test_strategies.py`` runs its shared template over every registered name.
"""

from __future__ import annotations

from al.strategies.badge import (BadgeSampling, fill_unique, gradient_embeddings, gradient_residuals,
                                 kmeans_pp_outer)
from al.strategies.base import CHUNK_ELEMENTS, QueryStrategy, ScoreStrategy, check_batch, entropy, top_k_positions
from al.strategies.baselines import RandomSampling, SequentialSampling
from al.strategies.coreset import CoreSetSampling, k_center_greedy, squared_distances_to_nearest
from al.strategies.mc_dropout import (MC_PASSES, BALDSampling, MCDropoutStrategy, MCEntropySampling, bald_scores,
                                      mc_entropy_scores)
from al.strategies.typiclust import (TYPICLUST_K_NN, TYPICLUST_MAX_CLUSTERS, TypiClustDefault,
                                     TypiClustModelSampling, TypiClustSampling, canonical_rows, flat_rows,
                                     kmeans_labels, l2_normalized, mean_knn_distances, pca_embedding, row_keys,
                                     typicality, typiclust_positions)
from al.strategies.uncertainty import EntropySampling, LeastConfidenceSampling, MarginSampling

__all__ = [
    "CHUNK_ELEMENTS", "MC_PASSES", "STRATEGIES", "TYPICLUST_K_NN", "TYPICLUST_MAX_CLUSTERS",
    "BALDSampling", "BadgeSampling", "CoreSetSampling", "EntropySampling", "LeastConfidenceSampling",
    "MCDropoutStrategy", "MCEntropySampling", "MarginSampling", "QueryStrategy", "RandomSampling",
    "ScoreStrategy", "SequentialSampling", "TypiClustDefault", "TypiClustModelSampling", "TypiClustSampling",
    "bald_scores", "canonical_rows", "check_batch", "entropy", "fill_unique", "flat_rows", "get_strategy",
    "gradient_embeddings", "gradient_residuals", "k_center_greedy", "kmeans_labels", "kmeans_pp_outer",
    "l2_normalized", "mc_entropy_scores", "mean_knn_distances", "pca_embedding", "row_keys",
    "squared_distances_to_nearest", "top_k_positions", "typicality", "typiclust_positions",
]

STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls
    for cls in (RandomSampling, SequentialSampling, EntropySampling, LeastConfidenceSampling, MarginSampling,
                BALDSampling, MCEntropySampling, CoreSetSampling, BadgeSampling,
                TypiClustDefault, TypiClustSampling, TypiClustModelSampling)
}


def get_strategy(name: str) -> QueryStrategy:
    """Instantiate a strategy by name; unknown names list the known ones."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose from: {', '.join(sorted(STRATEGIES))}"
        ) from None
