"""Domain confusion with soft labels: Tzeng et al. 2015, "Simultaneous Deep Transfer
Across Domains and Tasks"."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .net import DomainDiscriminator


def confusion_loss(domain_logits: torch.Tensor) -> torch.Tensor:
    """L_conf = -1/N sum_i sum_d (1/D) log q_{i,d}: cross-entropy to the uniform domain
    distribution; minimal (log D) exactly when q_i = 1/D for every image."""
    return -(domain_logits.log_softmax(1).mean(1)).mean()


def soft_labels(logits: torch.Tensor, labels: torch.Tensor, classes: int, temperature: float) -> torch.Tensor:
    """l^(k) = mean over labeled-domain images of class k of softmax(z / T); rows of
    classes without an image are uniform."""
    p = (logits / temperature).softmax(1)
    sums = torch.zeros(classes, logits.shape[1], dtype=p.dtype, device=p.device).index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=classes).to(p.dtype).unsqueeze(1)
    uniform = torch.full_like(sums, 1.0 / logits.shape[1])
    return torch.where(counts > 0, sums / counts.clamp_min(1), uniform)


def soft_label_loss(logits: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_soft = -1/N sum_i sum_k l^(y_i)_k log softmax(z_i / T)_k."""
    return -(table[labels] * (logits / temperature).log_softmax(1)).sum(1).mean()


class DomainConfusion(nn.Module):
    """The ``confusion`` method, a scalar per step from the two alternating objectives:

        L_D    = cross-entropy of the domain classifier on (f_s -> 0, f_t -> 1), features detached:
                 only the domain classifier learns from it;
        L_conf = cross-entropy of its predictions to the uniform 1/D, through a frozen copy
                 of its weights: only the feature extractor learns from it.

    Both are summed into one backward pass; neither sees the other's parameters, which
    is the paper's alternation without gradient reversal. With soft labels, the running
    per-class mean softmax at T of the labeled domain (``table``) is kept for
    ``soft_label_loss`` on labeled target images (``finetune --train-target``)."""

    def __init__(self, width: int, classes: int, hidden: int = 1024, temperature: float = 2.0):
        super().__init__()
        self.discriminator = DomainDiscriminator(width, hidden)
        self.temperature = temperature
        self.register_buffer("table", torch.full((classes, classes), 1.0 / classes))
        self.register_buffer("seen", torch.zeros(classes))

    def forward(self, fs, ft, zs=None, zt=None, progress: float = 0.0) -> torch.Tensor:
        f = torch.cat([fs, ft])
        d = torch.cat([torch.zeros(len(fs), dtype=torch.long), torch.ones(len(ft), dtype=torch.long)]).to(f.device)
        l_domain = F.cross_entropy(self.discriminator(f.detach()), d)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        l_conf = confusion_loss(functional_call(self.discriminator, frozen, (f,)))
        return l_domain + l_conf

    @torch.no_grad()
    def update_soft_labels(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Running per-class mean of softmax(z / T) over every labeled-domain image seen."""
        k = self.table.shape[0]
        batch = soft_labels(logits, labels, k, self.temperature)
        n = torch.bincount(labels, minlength=k).to(self.seen.dtype)
        total = self.seen + n
        w = (n / total.clamp_min(1)).unsqueeze(1)
        self.table.copy_(torch.where(n.unsqueeze(1) > 0, (1 - w) * self.table + w * batch, self.table))
        self.seen.copy_(total)
