"""Uncertainty sampling from one prediction: entropy, least confidence, margin (Settles 2009, §3.1).

Each is a :class:`~al.strategies.base.ScoreStrategy`: a score of the predicted class probabilities,
higher meaning more informative (baal's "heuristics").
"""

from __future__ import annotations

import numpy as np

from al.strategies.base import ScoreStrategy, entropy


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
