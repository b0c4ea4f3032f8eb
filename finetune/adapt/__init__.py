"""Domain-adaptation methods for ``finetune --adapt``, one method per file.

Each method is an ``nn.Module`` whose forward takes the bottleneck features and logits
of the labeled (s) and unlabeled (t) batch and the fraction of total steps done, and
returns the scalar transfer loss; :class:`net.TwoDomainStep` adds it, times
``--trade-off``, to the labeled cross-entropy.

| method    | file          | paper |
| confusion | confusion.py  | Tzeng et al. 2015, domain confusion (``--soft-labels``: SoftLabelLoss) |
| dann      | dann.py       | Ganin & Lempitsky 2015, gradient reversal |
| mmd       | mmd.py        | Long et al. 2015 (DAN), multi-kernel MMD |
| jmmd      | jmmd.py       | Long et al. 2017 (JAN), joint MMD |
| jan-a     | jmmd.py       | Long et al. 2017 (JAN-A), adversarial JMMD |
"""
from __future__ import annotations

from torch import nn

from manifests import UserError

METHODS = ("none", "confusion", "dann", "mmd", "jmmd", "jan-a")


def check(name: str) -> None:
    if name not in METHODS:
        raise UserError("--adapt", f"unknown method '{name}'", f"pass one of {', '.join(METHODS)}")


def make(name: str, width: int, classes: int, estimator: str = "unbiased", kernels: str = "learned") -> nn.Module | None:
    """The transfer-loss module of a method (None for ``none``)."""
    check(name)
    if name == "none":
        return None
    if name == "confusion":
        from .confusion import DomainConfusion
        return DomainConfusion(width)
    if name == "dann":
        from .dann import DomainAdversarialLoss
        return DomainAdversarialLoss(width)
    if name == "mmd":
        from .mmd import DAN
        return DAN(estimator, kernels)
    from .jmmd import JAN
    return JAN(width, classes, estimator, adversarial=name == "jan-a")
