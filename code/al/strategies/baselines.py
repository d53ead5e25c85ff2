"""Baselines that ignore the model: random sampling, and the pool order."""

from __future__ import annotations

import numpy as np

from al.keras_ops import n_samples
from al.strategies.base import QueryStrategy, check_batch


class RandomSampling(QueryStrategy):
    """Uniform random sampling without replacement: the baseline every strategy must beat."""

    name = "random"
    uses_model = False

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        return rng.choice(n_samples(x_unlabeled), size=batch_size, replace=False)


class SequentialSampling(QueryStrategy):
    """The first unlabeled samples in pool order: a baseline, not active learning.

    For a pool in time order, such as the beats of one recording, this is "label the first N
    beats", the classic patient-specific protocol (the first 5 minutes of each record train the
    local classifier: AAMI EC57; de Chazal & Reilly 2006). The loop passes the unlabeled
    samples in dataset order (with ``pool_subsample``: those of the subsample).
    """

    name = "sequential"
    uses_model = False

    def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
        check_batch(n_samples(x_unlabeled), batch_size)
        return np.arange(batch_size)
