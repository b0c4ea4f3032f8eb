"""Ranking metrics of a multi-label classifier: average precision per label and their mean.

Invariant: AP of one label is the mean, over the images that carry it, of the precision
among the images scored at least as high (ties broken by row order, so the result is
deterministic); labels no scored image carries are left out of the mean, and counted.
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one label: ``scores`` (n,), ``positive`` (n,) bool; NaN when no image is positive."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    ranks = np.flatnonzero(hits) + 1  # 1-based rank of each positive
    return float((np.arange(1, n_pos + 1) / ranks).mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """(mAP over the labels with a positive, how many such labels) of ``scores`` (n, k) against
    ``targets`` (n, k) bool; (NaN, 0) when no label has one."""
    aps = [average_precision(scores[:, j], targets[:, j]) for j in np.flatnonzero(targets.any(axis=0))]
    return (float(np.mean(aps)), len(aps)) if aps else (float("nan"), 0)
