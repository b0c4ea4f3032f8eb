"""``pretrain``'s options: the shared training recipe plus where the weights start."""

from __future__ import annotations

from dataclasses import dataclass

from datl.core.options import opt
from datl.neural.engine.config import TrainConfig


@dataclass(kw_only=True)
class PretrainConfig(TrainConfig):
    manifest: str = opt(short="-m", help="Labeled manifest to train on.")
    init: str | None = opt(None, help="Start from a RUN_DIR (same classes), or timm:ARCH with --weights.")
    weights: str | None = opt(None, help="Local state dict for --init timm:ARCH (.pth or .safetensors).")
    holdout: int | None = opt(
        None,
        bounds="[0, inf)",
        help="A multi-label manifest: images held out of training to score mAP on at the end "
        "(default: 2 percent of the rows, at most 2,000; 0: none).",
    )
