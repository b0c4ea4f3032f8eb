"""Optimiser parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn


def decay_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult: Callable[[str], float] | None = None):
    """Parameter groups: weight decay on weights only; an optional per-parameter lr multiplier."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (p.ndim > 1, lr_mult(name) if lr_mult else 1.0)
        groups.setdefault(key, []).append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * mult, "lr_mult": mult}
        for (decay, mult), ps in groups.items()
    ]


def annealed(total: int, alpha: float = 10.0, beta: float = 0.75) -> Callable[[int], float]:
    """DANN's learning-rate annealing (Ganin & Lempitsky 2015), which JAN (Long et al. 2017,
    section 4) trains with too: mu_p = mu_0 / (1 + alpha p)^beta over the fraction p of total steps."""
    return lambda step: (1.0 + alpha * step / max(total, 1)) ** -beta


def warmup_cosine(total: int, warmup: float) -> Callable[[int], float]:
    """Linear warm-up over the first ``warmup`` fraction of ``total`` steps, then cosine decay to 0."""
    w = int(round(total * warmup))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = (step - w) / max(total - w, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return factor
