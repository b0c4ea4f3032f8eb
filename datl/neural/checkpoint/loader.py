"""``load_model``: a RUN_DIR, or ``timm:ARCH`` with a local state dict, as a classifier or a
feature extractor. What ``curate estimate`` and ``curate dedup`` run."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from datl.core.errors import UserError
from datl.core.specs import parse_model_spec

from ..modeling import create_model, default_norm, unwrap
from .foreign import load_foreign_weights, read_state_dict
from .run_folder import ModelConfig, load_run


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (what the classifier head sees)."""
        m = unwrap(self.model)
        return m.forward_head(m.forward_features(x), pre_logits=True)

    def features_and_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features and the logits from one pass of the backbone, side by side."""
        m = unwrap(self.model)
        fm = m.forward_features(x)
        return torch.cat([m.forward_head(fm, pre_logits=True), m.forward_head(fm)], dim=1)


def load_model(
    spec: str,
    weights: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    in_chans: int | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """A RUN_DIR, or ``timm:ARCH`` with ``weights`` (a local state dict, head kept).

    For ``timm:`` the classes default to ``class_0..class_{K-1}`` for the head in the
    weights file; pass ``classes`` to name them.
    """
    parsed = parse_model_spec(spec)
    if not parsed.is_timm:
        model, cfg = load_run(spec)
        return LoadedModel(model.eval(), cfg)
    arch = parsed.arch
    if weights is None:
        raise UserError(
            "--model",
            f"{spec} needs --weights FILE (a local state dict)",
            "pass --weights, e.g. the .pth of an ImageNet model; nothing is downloaded",
        )
    state = read_state_dict(weights)
    num_classes = len(classes) if classes else _guess_num_classes(state)
    chans = in_chans or 3
    model = create_model(arch, num_classes, chans)
    load_foreign_weights(model, weights, keep_head=True, state=state)
    mean, std = default_norm(chans)
    size = image_size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    cfg = ModelConfig(
        arch=arch,
        classes=classes or [f"class_{i}" for i in range(num_classes)],
        image_size=[size, size],
        in_chans=chans,
        mean=mean,
        std=std,
        num_features=model.num_features,
        params={"weights": str(weights)},
    )
    return LoadedModel(model.eval(), cfg)


def _guess_num_classes(state: dict[str, torch.Tensor]) -> int:
    """Rows of the last 2-D weight: the classifier of a state dict."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not last:
        raise UserError("--weights", "has no classifier layer to run as a classifier", "pass a classifier's weights")
    return int(last[-1].shape[0])
