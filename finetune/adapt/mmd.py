"""DAN: Long et al. 2015, "Learning Transferable Features with Deep Adaptation Networks"."""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_kernels(x: torch.Tensor, y: torch.Tensor, multipliers=DEFAULT_MULTIPLIERS,
                     base: torch.Tensor | None = None) -> torch.Tensor:
    """sum_u exp(-||a - b||^2 / (m_u * base)) for every pair of rows of cat(x, y).

    ``base`` is the batch's mean pairwise squared distance (detached): bandwidths are
    multiples of it, as DAN sets them."""
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if base is None:
        n = len(z)
        base = (d2.sum() / max(n * n - n, 1)).detach().clamp_min(1e-12)
    return sum(torch.exp(-d2 / (m * base)) for m in multipliers)


def mmd2_unbiased(k: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased quadratic-time MMD^2 from the joint kernel matrix of n source then m target rows:
    1/(n(n-1)) sum_{i!=j} k(s_i,s_j) + 1/(m(m-1)) sum_{i!=j} k(t_i,t_j) - 2/(nm) sum k(s_i,t_j)."""
    m = len(k) - n
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kss.sum() - kss.diagonal().sum()) / (n * (n - 1)) + (ktt.sum() - ktt.diagonal().sum()) / (m * (m - 1))
            - 2 * kst.sum() / (n * m))


def mmd2_linear(k: torch.Tensor, n: int) -> torch.Tensor:
    """Linear-time estimate (Gretton et al. 2012, used by DAN): over pairs i = 1..n/2 of
    quad-tuples (s_{2i-1}, s_{2i}, t_{2i-1}, t_{2i}),
    mean of k(s,s') + k(t,t') - k(s,t') - k(s',t)."""
    half = min(n, len(k) - n) // 2
    a, b = torch.arange(half) * 2, torch.arange(half) * 2 + 1
    s1, s2, t1, t2 = a, b, n + a, n + b
    return (k[s1, s2] + k[t1, t2] - k[s1, t2] - k[s2, t1]).mean()


class MultiKernelMMD(nn.Module):
    """MK-MMD^2 between two batches (DAN), a scalar:

        d_k^2(P, Q) = || E_P[phi(s)] - E_Q[phi(t)] ||^2_Hk,  k = sum_u k_u,
        k_u(a, b) = exp(-||a - b||^2 / gamma_u),  gamma_u = m_u * mean pairwise ||.||^2,

    with ``estimator`` "unbiased" (quadratic time) or "linear" (linear time, DAN's).
    Equal kernel weights beta_u (DAN learns them; equal weights are the common
    simplification, e.g. in Transfer-Learning-Library)."""

    def __init__(self, multipliers=DEFAULT_MULTIPLIERS, estimator: str = "unbiased"):
        super().__init__()
        if estimator not in ("unbiased", "linear"):
            raise ValueError(estimator)
        self.multipliers, self.estimator = tuple(multipliers), estimator

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = gaussian_kernels(source, target, self.multipliers)
        est = mmd2_unbiased if self.estimator == "unbiased" else mmd2_linear
        return est(k, len(source))


class DAN(nn.Module):
    """The ``mmd`` method: MK-MMD on the bottleneck features."""

    def __init__(self, estimator: str = "unbiased"):
        super().__init__()
        self.mmd = MultiKernelMMD(estimator=estimator)

    def forward(self, fs, ft, zs, zt, progress: float) -> torch.Tensor:
        return self.mmd(fs, ft)
