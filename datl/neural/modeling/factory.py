"""The timm factory: any architecture, random init, a one-line error for an unknown name."""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from datl.core.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_model(arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with random weights (nothing is downloaded)."""
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise UserError("--model", f"unknown timm architecture '{arch}'", hint)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def default_norm(in_chans: int) -> tuple[list[float], list[float]]:
    """ImageNet mean/std; a grey model uses their channel averages."""
    if in_chans == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    m, s = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return [m] * in_chans, [s] * in_chans


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
