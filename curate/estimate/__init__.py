"""``curate estimate``: the estimators of P_t(y) (estimators.py), the per-image logits file
(predictions.py) and the stage (stage.py: EstimateConfig, run)."""

from .estimators import (
    METHODS,
    NEEDS_CALIBRATION,
    apply_bcts,
    estimate,
    estimate_bbse,
    estimate_em,
    estimate_mean,
    fit_bcts,
    smooth,
    softmax,
)
from .stage import EstimateConfig, run

__all__ = [
    "METHODS",
    "NEEDS_CALIBRATION",
    "EstimateConfig",
    "apply_bcts",
    "estimate",
    "estimate_bbse",
    "estimate_em",
    "estimate_mean",
    "fit_bcts",
    "run",
    "smooth",
    "softmax",
]
