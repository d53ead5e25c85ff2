"""Strategies on Monte-Carlo dropout predictions: BALD and MC entropy (Gal et al. 2017).

The scores are pure functions of the ``(T, n, K)`` stochastic predictions; the passes themselves
come from the model side (:func:`al.keras_ops.mc_predict_proba`), as in baal, where MC dropout
belongs to the model wrapper and not to the heuristic.
"""

from __future__ import annotations

import numpy as np

from al.keras_ops import mc_predict_proba, n_samples
from al.strategies.base import QueryStrategy, check_batch, entropy, top_k_positions

MC_PASSES = 10             # default number of stochastic forward passes of bald / entropy_mc


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
