"""The network every adaptation method trains, and the step that feeds it two domains."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class AdaptNet(nn.Module):
    """A timm backbone (head removed), a bottleneck and a linear classifier.

    The bottleneck (Linear, BatchNorm1d, ReLU; width 256 as in DAN, JAN and DANN's
    Office experiments) is where the transfer losses look at features; width 0 skips it.
    ``forward`` returns logits, so evaluation treats it as any classifier.
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
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TwoDomainStep:
    """The loss of one training step: cross-entropy on the labeled batch plus
    ``trade_off`` x the method's transfer loss between the labeled and an unlabeled batch.

    Called by the shared training loop as its loss hook; it draws the unlabeled batch
    itself, so labeled and unlabeled images arrive together every step. Both batches go
    through the network in one pass (BatchNorm sees both domains, as in the papers).
    """

    def __init__(self, method: nn.Module, unlabeled: Iterator[torch.Tensor], trade_off: float, device,
                 label_smoothing: float = 0.0):
        self.method, self.unlabeled, self.trade_off = method, unlabeled, trade_off
        self.device, self.label_smoothing = device, label_smoothing

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
        xt = next(self.unlabeled).to(self.device, non_blocking=True)
        model = net.module if hasattr(net, "module") else net
        f = model.features(torch.cat([x, xt]))
        logits = model.head(f)
        n = len(x)
        ce = F.cross_entropy(logits[:n].float(), y, label_smoothing=self.label_smoothing)
        transfer = self.method(f[:n].float(), f[n:].float(), logits[:n].float(), logits[n:].float(), progress)
        return ce + self.trade_off * transfer


def grl_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky 2015: lambda_p = 2 / (1 + exp(-gamma p)) - 1, p = fraction of total steps done."""
    import math

    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by -coeff backward (the gradient reversal layer)."""
    return _Reverse.apply(x, coeff)


class DomainDiscriminator(nn.Sequential):
    """features -> 1024 -> 1024 -> n_domains logits (ReLU, dropout 0.5), DANN's."""

    def __init__(self, width: int, hidden: int = 1024, n_domains: int = 2):
        super().__init__(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, n_domains))
