"""DANN: Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .net import DomainDiscriminator, reverse_gradient
from .registry import Method, register


@register("dann")
class DomainAdversarialLoss(Method):
    """Domain classification loss through a gradient reversal layer, a scalar:

        L_d = -1/(n+m) [ sum_s log D(R_l(f_s))_0 + sum_t log D(R_l(f_t))_1 ]

    R_l is the identity forward and multiplies gradients by -lambda backward, so the
    discriminator D descends L_d while the features ascend it. The paper's lambda_p =
    2 / (1 + exp(-10 p)) - 1 is the shared trade-off ramp of every method
    (``finetune --trade-off-ramp``, on by default): :class:`TwoDomainStep` scales the
    features' gradient by trade-off x lambda_p before they get here, and this layer
    reverses at coefficient 1, so lambda_p is applied once and D itself always trains at
    full strength. The paper's learning-rate annealing is the shared ``--lr-schedule
    anneal`` (the default of every two-domain run)."""

    def __init__(self, width: int, hidden: int = 1024):
        super().__init__()
        self.discriminator = DomainDiscriminator(width, hidden)

    def forward(self, fs: torch.Tensor, ft: torch.Tensor, zs=None, zt=None, progress: float = 0.0) -> torch.Tensor:
        f = reverse_gradient(torch.cat([fs, ft]), 1.0)
        d = torch.cat([torch.zeros(len(fs), dtype=torch.long), torch.ones(len(ft), dtype=torch.long)]).to(f.device)
        return F.cross_entropy(self.discriminator(f), d)
