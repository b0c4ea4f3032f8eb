"""The feature check's threshold, calibrated for the model in use (issue 25).

Invariant: without ``--feature-threshold``, the threshold is the cosine that only
``1 - QUANTILE`` (0.1%) of source images' nearest source neighbours exceed, once pairs that are
byte-identical or pixel copies of each other are set aside, so the feature check flags about as
few ordinary images whatever the model: a weak model's features crowd together and its
threshold rises with them, where a fixed 0.96 flagged a quarter of a clip-art source.

The neighbours are searched within a pool of about ``POOL`` source rows spread evenly over the
manifest (``checks.pool_stride``), embedded as their chunks are; each chunk file keeps its
share of the pool, so a resumed run or a threshold change computes nothing again. A pool
smaller than ``MIN_POOL`` says too little about the 0.1% tail: the threshold is then
``DEFAULT_THRESHOLD`` and the output says so. When the features are collapsed (the median
source image lies within ``COLLAPSED_MEDIAN`` of some target image), the feature check is off
unless ``--feature-threshold`` is given, and one line says so. An explicit threshold always
wins.

Not in the paper: Ngiam et al. deduplicate with features and one hand-set threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..features import pixel as px

POOL = 4096  # source rows, about, in the calibration pool
MIN_POOL = 1000  # fewer neighbours than this: the default threshold
QUANTILE = 0.999  # of the pool's nearest-neighbour cosines
DEFAULT_THRESHOLD = 0.96  # model features, when the pool is too small (and before issue 25, always)
COLLAPSED_MEDIAN = 0.85  # median best feature similarity above this: the model barely tells images apart


@dataclass
class Threshold:
    value: float | None  # None: the feature check is off
    rule: str  # how it was set, in words (recorded in the output's params)


def nearest_neighbours(
    vecs: np.ndarray,
    hashes: np.ndarray,
    pixel: np.ndarray,
    content: np.ndarray,
    pixel_threshold: float,
    block: int = 1024,
) -> np.ndarray:
    """Each pool row's best feature cosine to another pool row that is neither byte-identical
    to it nor a pixel copy of it (``pixel.combine`` >= ``pixel_threshold``); rows with no such
    neighbour are left out. Computed in blocks: memory grows with the pool, not the source."""
    v = np.asarray(vecs, np.float32)
    p, c = np.asarray(pixel, np.float32), np.asarray(content, np.float32)
    n = len(v)
    best = np.full(n, -np.inf, np.float32)
    for i in range(0, n, block):
        j = slice(i, min(i + block, n))
        s = v[j] @ v.T
        copies = (hashes[j, None] == hashes[None, :]) | (px.combine(p[j] @ p.T, c[j] @ c.T) >= pixel_threshold)
        s[copies] = -np.inf  # the row itself included: its hash is its own
        best[j] = s.max(axis=1) if n > 1 else -np.inf
    return best[np.isfinite(best)]


def calibrated(nn: np.ndarray) -> Threshold:
    """The threshold from the pool's nearest-neighbour cosines (see the module docstring)."""
    if len(nn) < MIN_POOL:
        return Threshold(
            DEFAULT_THRESHOLD,
            f"default {DEFAULT_THRESHOLD}: the calibration pool holds {len(nn):,} source images, under {MIN_POOL:,}",
        )
    q = float(np.quantile(nn, QUANTILE, method="higher"))
    return Threshold(
        round(min(q, 1.0), 4),
        f"calibrated: {1 - QUANTILE:.1%} of {len(nn):,} source images' nearest source neighbours "
        "(copies set aside) lie above it",
    )


def resolve(given: float | None, median: float | None, nn: np.ndarray) -> Threshold:
    """The feature threshold: ``given`` (--feature-threshold) wins; else off when the features
    are collapsed (``median`` of the source's best feature cosines over COLLAPSED_MEDIAN); else
    ``calibrated``."""
    if given is not None:
        return Threshold(given, "given (--feature-threshold)")
    if median is not None and median > COLLAPSED_MEDIAN:
        return Threshold(
            None, f"off: the model's features are collapsed (half the source within {median:.2f} of a target image)"
        )
    return calibrated(nn)
