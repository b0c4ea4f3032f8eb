"""Domain confusion with soft labels: Tzeng et al. 2015, "Simultaneous Deep Transfer
Across Domains and Tasks"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .net import DomainDiscriminator
from .registry import Method, register


def confusion_loss(domain_logits: torch.Tensor) -> torch.Tensor:
    """L_conf = -1/N sum_i sum_d (1/D) log q_{i,d}: cross-entropy to the uniform domain
    distribution; minimal (log D) exactly when q_i = 1/D for every image."""
    return -(domain_logits.log_softmax(1).mean(1)).mean()


def class_softmax_sums(
    logits: torch.Tensor, labels: torch.Tensor, classes: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class k: the sum of softmax(z / T) over the images of class k, and their count."""
    p = (logits / temperature).softmax(1)
    sums = torch.zeros(classes, logits.shape[1], dtype=p.dtype, device=p.device).index_add_(0, labels, p)
    return sums, torch.bincount(labels, minlength=classes).to(p.dtype)


def soft_labels(logits: torch.Tensor, labels: torch.Tensor, classes: int, temperature: float) -> torch.Tensor:
    """l^(k) = mean over labeled-domain images of class k of softmax(z / T); rows of
    classes without an image are uniform."""
    sums, counts = class_softmax_sums(logits, labels, classes, temperature)
    counts = counts.unsqueeze(1)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, 1.0 / logits.shape[1]))


def soft_label_loss(
    logits: torch.Tensor, labels: torch.Tensor, table: torch.Tensor, temperature: float
) -> torch.Tensor:
    """L_soft = -1/N sum_i sum_k l^(y_i)_k log softmax(z_i / T)_k."""
    return -(table[labels] * (logits / temperature).log_softmax(1)).sum(1).mean()


class SoftLabelLoss(nn.Module):
    """The soft-label loss of Tzeng et al. 2015 (``--soft-labels``), a scalar:

        L_soft = -1/N sum_i sum_k l^(y_i)_k log softmax(z_i / T)_k

    over the labeled TARGET images (x_i, y_i) of ``--train-target``, where l^(k) is the
    soft label of class k: the mean softmax(z / T) of the labeled-domain model over its
    images of class k, at a high temperature T. It carries the labeled domain's class
    similarities ("a 3 looks a bit like an 8") to the target, also to classes that have
    no labeled target image (the paper's semi-supervised setting).

    The paper computes l once from a network trained on the labeled domain: :meth:`fix`
    (``finetune --soft-labels-from RUN_DIR``). Without one, the network is the one being
    trained, so ``update`` keeps each class's soft label as an exponential moving average of
    its per-batch means (weight ``1 - momentum`` on the newest; a class's first batch sets
    it), which forgets the early, untrained steps: a departure from the paper, kept as the
    default because it needs no second model.
    """

    def __init__(self, classes: int, temperature: float = 2.0, momentum: float = 0.99):
        super().__init__()
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("table", torch.full((classes, classes), 1.0 / classes))
        self.register_buffer("seen", torch.zeros(classes, dtype=torch.bool))
        self.register_buffer("fixed", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fix(self, table: torch.Tensor) -> None:
        """Use these soft labels (rows: classes) for the whole run; ``update`` then does nothing."""
        self.table.copy_(table.to(self.table))
        self.seen.fill_(True)
        self.fixed.fill_(True)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold one labeled-domain batch (logits, labels) into the soft labels; under
        torchrun, the batch of every rank (so the ranks keep one table)."""
        if bool(self.fixed):
            return
        sums, counts = class_softmax_sums(logits.float(), labels, self.table.shape[0], self.temperature)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        batch = sums / counts.clamp_min(1).unsqueeze(1)
        present = (counts > 0).unsqueeze(1)
        mixed = torch.where(self.seen.unsqueeze(1), self.momentum * self.table + (1 - self.momentum) * batch, batch)
        self.table.copy_(torch.where(present, mixed, self.table))
        self.seen |= present.squeeze(1)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return soft_label_loss(logits, labels, self.table, self.temperature)


@register("confusion")
class DomainConfusion(Method):
    """The ``confusion`` method, a scalar per step from the two alternating objectives:

        L_D    = cross-entropy of the domain classifier on (f_s -> 0, f_t -> 1), features detached:
                 only the domain classifier learns from it;
        L_conf = cross-entropy of its predictions to the uniform 1/D, through a frozen copy
                 of its weights: only the feature extractor learns from it.

    Both are summed into one backward pass; neither sees the other's parameters, which
    is the paper's alternation without gradient reversal. The paper's second loss, on
    soft labels, is :class:`SoftLabelLoss` (``finetune --soft-labels``)."""

    def __init__(self, width: int, hidden: int = 1024):
        super().__init__()
        self.discriminator = DomainDiscriminator(width, hidden)

    def forward(self, fs, ft, zs=None, zt=None, progress: float = 0.0) -> torch.Tensor:
        f = torch.cat([fs, ft])
        d = torch.cat([torch.zeros(len(fs), dtype=torch.long), torch.ones(len(ft), dtype=torch.long)]).to(f.device)
        l_domain = F.cross_entropy(self.discriminator(f.detach()), d)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        l_conf = confusion_loss(functional_call(self.discriminator, frozen, (f,)))
        return l_domain + l_conf
