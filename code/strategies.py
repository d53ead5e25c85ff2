"""Query strategies: which unlabeled samples to send to the annotator next.

Every strategy implements one interface, :class:`QueryStrategy`::

    positions = strategy.select(model, x_unlabeled, batch_size, rng)

``positions`` index into ``x_unlabeled`` (the loop maps them back to dataset indices).
Uncertainty strategies are a :class:`ScoreStrategy` (baal-style "heuristic"): they map
the model's predicted class probabilities to one score per sample, higher meaning more
informative, and take the ``batch_size`` highest. Adding a strategy means writing one
small class here and registering it in :data:`STRATEGIES`; the loop does not change.
"""

from __future__ import annotations

import numpy as np

PREDICT_BATCH_SIZE = 8192  # large batches: scoring the whole pool is the hot path


def predict_proba(model, x: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
    """Class probabilities of ``model`` on ``x`` in large batches, as float64."""
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]))
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(probs, dtype=np.float64)


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
        False when the strategy ignores the model (lets the loop skip pool scoring).
    """

    name = "base"
    uses_model = True

    def select(self, model, x_unlabeled: np.ndarray, batch_size: int,
               rng: np.random.Generator) -> np.ndarray:
        """Return ``batch_size`` distinct positions into ``x_unlabeled``, most wanted first.

        Raises ``ValueError`` when the pool holds fewer than ``batch_size`` samples.
        """
        raise NotImplementedError


class RandomSampling(QueryStrategy):
    """Uniform random sampling without replacement: the baseline every strategy must beat."""

    name = "random"
    uses_model = False

    def select(self, model, x_unlabeled, batch_size, rng):
        check_batch(len(x_unlabeled), batch_size)
        return rng.choice(len(x_unlabeled), size=batch_size, replace=False)


class ScoreStrategy(QueryStrategy):
    """Top-k selection by a score computed from predicted class probabilities."""

    def score(self, probs: np.ndarray) -> np.ndarray:
        """Informativeness of each sample, higher is more informative."""
        raise NotImplementedError

    def select(self, model, x_unlabeled, batch_size, rng):
        check_batch(len(x_unlabeled), batch_size)
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


STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls
    for cls in (RandomSampling, EntropySampling, LeastConfidenceSampling, MarginSampling)
}


def get_strategy(name: str) -> QueryStrategy:
    """Instantiate a strategy by name; unknown names list the known ones."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; choose from: {', '.join(sorted(STRATEGIES))}"
        ) from None
