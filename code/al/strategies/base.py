"""The interface every query strategy implements, and the helpers they share.

See :mod:`al.strategies` for the contract of :meth:`QueryStrategy.select`.
"""

from __future__ import annotations

import numpy as np

from al.keras_ops import n_samples, predict_proba

CHUNK_ELEMENTS = 2 ** 22   # float64 elements per distance chunk in coreset / typiclust (32 MB)


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


class ScoreStrategy(QueryStrategy):
    """Top-k selection by a score computed from predicted class probabilities."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        """Informativeness of each sample, higher is more informative."""
        raise NotImplementedError

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        return top_k_positions(self.score(predict_proba(model, x_unlabeled)), batch_size)
