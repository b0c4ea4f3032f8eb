"""DANN: Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .net import DomainDiscriminator, grl_lambda, reverse_gradient
from .registry import Method, register


@register("dann")
class DomainAdversarialLoss(Method):
    """Domain classification loss through a gradient reversal layer, a scalar:

        L_d = -1/(n+m) [ sum_s log D(R_l(f_s))_0 + sum_t log D(R_l(f_t))_1 ]

    R_l is the identity forward and multiplies gradients by -lambda backward, so the
    discriminator D descends L_d while the features ascend it. lambda follows
    lambda_p = 2 / (1 + exp(-10 p)) - 1, p the fraction of TOTAL training steps done
    (passed in as ``progress``, never a call counter)."""

    def __init__(self, width: int, hidden: int = 1024):
        super().__init__()
        self.discriminator = DomainDiscriminator(width, hidden)
        self.last_lambda = 0.0

    def forward(self, fs: torch.Tensor, ft: torch.Tensor, zs=None, zt=None, progress: float = 0.0) -> torch.Tensor:
        self.last_lambda = grl_lambda(progress)
        f = reverse_gradient(torch.cat([fs, ft]), self.last_lambda)
        d = torch.cat([torch.zeros(len(fs), dtype=torch.long), torch.ones(len(ft), dtype=torch.long)]).to(f.device)
        return F.cross_entropy(self.discriminator(f), d)

    @staticmethod
    def lr_schedule(total: int):
        """DANN's annealing, mu_0 / (1 + 10 p)^0.75 over the fraction p of total steps."""
        return lambda step: dann_lr(step / total)


def dann_lr(progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """DANN's learning-rate annealing: mu_p = mu_0 / (1 + alpha p)^beta."""
    return (1.0 + alpha * progress) ** -beta
