"""JAN: Long et al. 2017, "Deep Transfer Learning with Joint Adaptation Networks"."""

from __future__ import annotations

import torch
from torch import nn

from .mmd import DEFAULT_MULTIPLIERS, gaussian_kernels, mmd2_linear, mmd2_unbiased
from .net import reverse_gradient
from .registry import Method, register

SOFTMAX_BANDWIDTH = 1.68  # JAN's code: the softmax layer's single Gaussian, exp(-d^2 / 1.68)


class JointMMD(nn.Module):
    """JMMD^2 of the joint distributions of several layers, a scalar:

        D_L(P, Q) = || C^{Z^{s,1:|L|}}(P) - C^{Z^{t,1:|L|}}(Q) ||^2,
        estimated with the product kernel  k(a, b) = prod_l k_l(a^l, b^l)

    where each k_l is a Gaussian kernel sum on layer l. JAN's published code sets them so:
    the feature layer gets DAN's five bandwidths, multiples (0.25 to 4) of the batch's mean
    pairwise squared distance; the softmax layer ONE Gaussian of FIXED bandwidth,
    k(a, b) = exp(-||a - b||^2 / 1.68). A bandwidth that followed the batch would, early in
    training when the softmax outputs are nearly uniform and their distances tiny, blow
    those tiny differences up to order-one kernel values. The unbiased or linear estimator
    as in DAN."""

    def __init__(
        self,
        multipliers=(DEFAULT_MULTIPLIERS, (1.0,)),
        bandwidths=(None, SOFTMAX_BANDWIDTH),
        estimator: str = "unbiased",
    ):
        super().__init__()
        self.multipliers, self.bandwidths, self.estimator = multipliers, bandwidths, estimator

    def forward(self, source: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
        k = None
        for s, t, m, b in zip(source, target, self.multipliers, self.bandwidths):
            base = None if b is None else torch.tensor(b, dtype=s.dtype, device=s.device)
            kl = gaussian_kernels(s, t, m, base)
            k = kl if k is None else k * kl
        est = mmd2_unbiased if self.estimator == "unbiased" else mmd2_linear
        return est(k, len(source[0]))


@register("jmmd")
class JAN(Method):
    """The ``jmmd`` method: JMMD over (bottleneck features, softmax outputs).

    ``adversarial`` (``jan-a``): each layer first goes through a learned linear map
    (identity at start) trained to MAXIMISE the JMMD while the network minimises it: the
    map sits between two gradient reversal layers, so its own parameters receive the
    reversed gradient and the network's the plain one."""

    adversarial = False

    def __init__(self, width: int, classes: int, estimator: str = "unbiased", adversarial: bool = False):
        super().__init__()
        self.jmmd = JointMMD(estimator=estimator)
        self.maps = nn.ModuleList([nn.Linear(width, width), nn.Linear(classes, classes)]) if adversarial else None
        if self.maps is not None:
            for m in self.maps:
                nn.init.eye_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def build(cls, width: int, classes: int, cfg) -> JAN:
        return cls(width, classes, cfg.mmd_estimator, adversarial=cls.adversarial)

    def forward(self, fs, ft, zs, zt, progress: float) -> torch.Tensor:
        layers = [torch.cat([fs, ft]), torch.cat([zs, zt]).softmax(1)]
        if self.maps is not None:
            layers = [reverse_gradient(m(reverse_gradient(x, 1.0)), 1.0) for m, x in zip(self.maps, layers)]
        n = len(fs)
        return self.jmmd([x[:n] for x in layers], [x[n:] for x in layers])


@register("jan-a")
class JANAdversarial(JAN):
    """The ``jan-a`` method: :class:`JAN` with ``adversarial`` maps."""

    adversarial = True
