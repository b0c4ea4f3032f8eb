"""AdaptNet: the network ``finetune --adapt`` trains, readable like any timm model."""

from __future__ import annotations

import torch
from torch import nn


class AdaptNet(nn.Module):
    """A timm backbone (head removed), a bottleneck and a linear classifier.

    The bottleneck (Linear, BatchNorm1d, ReLU; width 256 as in DAN, JAN and DANN's
    Office experiments) is where the transfer losses look at features; width 0 skips it.
    It answers timm's interface (``forward_features``, ``forward_head``,
    ``reset_classifier``, ``get_classifier``, ``num_features``), so a run folder holding
    one is read, estimated with and fine-tuned like any other.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck: int = 256):
        super().__init__()
        backbone.reset_classifier(0)
        self.backbone = backbone
        width = int(backbone.num_features)
        if bottleneck > 0:
            self.bottleneck = nn.Sequential(nn.Linear(width, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU())
            width = bottleneck
        else:
            self.bottleneck = nn.Identity()
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output: what the head and the transfer losses see."""
        return self.bottleneck(self.backbone(x))

    forward_features = features

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.head(f)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits; with ``with_features``, (bottleneck features, logits) from one pass (the
        training step calls it so under DistributedDataParallel, whose forward it must go through)."""
        f = self.features(x)
        return (f, self.head(f)) if with_features else self.head(f)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def head_parameters(self) -> list[nn.Parameter]:
        """What is new on top of the backbone: the bottleneck and the classifier."""
        return list(self.bottleneck.parameters()) + list(self.head.parameters())
