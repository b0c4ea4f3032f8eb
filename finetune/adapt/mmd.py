"""DAN: Long et al. 2015, "Learning Transferable Features with Deep Adaptation Networks"."""

from __future__ import annotations

import torch
from torch import nn

from .registry import Method, register

DEFAULT_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_kernel_stack(
    x: torch.Tensor, y: torch.Tensor, multipliers=DEFAULT_MULTIPLIERS, base: torch.Tensor | None = None
) -> torch.Tensor:
    """[u, i, j] = exp(-||a_i - a_j||^2 / (m_u * base)) over the rows a of cat(x, y), one
    matrix per multiplier m_u.

    ``base`` is the batch's mean pairwise squared distance (detached): bandwidths are
    multiples of it, as DAN sets them."""
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if base is None:
        n = len(z)
        base = (d2.sum() / max(n * n - n, 1)).detach().clamp_min(1e-12)
    return torch.stack([torch.exp(-d2 / (m * base)) for m in multipliers])


def gaussian_kernels(
    x: torch.Tensor, y: torch.Tensor, multipliers=DEFAULT_MULTIPLIERS, base: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_u exp(-||a - b||^2 / (m_u * base)) for every pair of rows of cat(x, y)."""
    return gaussian_kernel_stack(x, y, multipliers, base).sum(0)


def mmd2_unbiased(k: torch.Tensor, n: int) -> torch.Tensor:
    """Unbiased quadratic-time MMD^2 from the joint kernel matrix of n source then m target rows:
    1/(n(n-1)) sum_{i!=j} k(s_i,s_j) + 1/(m(m-1)) sum_{i!=j} k(t_i,t_j) - 2/(nm) sum k(s_i,t_j)."""
    m = len(k) - n
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    return (
        (kss.sum() - kss.diagonal().sum()) / (n * (n - 1))
        + (ktt.sum() - ktt.diagonal().sum()) / (m * (m - 1))
        - 2 * kst.sum() / (n * m)
    )


def linear_h(k: torch.Tensor, n: int) -> torch.Tensor:
    """The linear-time estimator's terms, one per quad-tuple and kernel: [i, u] =
    k_u(s,s') + k_u(t,t') - k_u(s,t') - k_u(s',t) from a kernel stack [u, N, N]."""
    half = min(n, k.shape[1] - n) // 2
    a, b = torch.arange(half) * 2, torch.arange(half) * 2 + 1
    return (k[:, a, b] + k[:, n + a, n + b] - k[:, a, n + b] - k[:, b, n + a]).T


def mmd2_linear(k: torch.Tensor, n: int) -> torch.Tensor:
    """Linear-time estimate (Gretton et al. 2012, used by DAN): over pairs i = 1..n/2 of
    quad-tuples (s_{2i-1}, s_{2i}, t_{2i-1}, t_{2i}),
    mean of k(s,s') + k(t,t') - k(s,t') - k(s',t)."""
    return linear_h(k.unsqueeze(0), n).mean()


def optimal_kernel_weights(d: torch.Tensor, q: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """DAN's optimal multi-kernel selection (Long et al. 2015): the beta that maximises
    the test power d_k^2 / sigma_k^2 solves the quadratic program

        min_beta  beta^T (Q + eps I) beta   s.t.  d^T beta = 1,  beta >= 0,

    d the per-kernel MMD^2, Q the covariance of the per-kernel linear-time terms. Solved
    exactly: for every support S with d_S having a positive entry, beta_S =
    A_SS^-1 d_S / (d_S^T A_SS^-1 d_S) is the equality-constrained optimum; the best
    nonnegative one wins. Returned normalised to sum 1; equal weights when no kernel sees
    a positive MMD^2 (the program is then infeasible)."""
    m = len(d)
    d, a = d.double().cpu(), (q.double().cpu() + eps * torch.eye(m, dtype=torch.float64))
    best, best_obj = None, float("inf")
    for mask in range(1, 2**m):
        idx = torch.tensor([u for u in range(m) if mask >> u & 1])
        ds = d[idx]
        if not (ds > 0).any():
            continue
        sol = torch.linalg.solve(a[idx][:, idx], ds)
        denom = float(ds @ sol)
        if denom <= 0:
            continue
        beta_s = sol / denom
        if (beta_s < -1e-12).any():
            continue
        obj = 1.0 / denom  # beta^T A beta at the equality-constrained optimum
        if obj < best_obj:
            best, best_obj = torch.zeros(m, dtype=torch.float64).index_copy_(0, idx, beta_s.clamp_min(0)), obj
    if best is None:
        return torch.full((m,), 1.0 / m)
    return (best / best.sum()).float()


class MultiKernelMMD(nn.Module):
    """MK-MMD^2 between two batches (DAN), a scalar:

        d_k^2(P, Q) = || E_P[phi(s)] - E_Q[phi(t)] ||^2_Hk,  k = sum_u beta_u k_u,
        k_u(a, b) = exp(-||a - b||^2 / gamma_u),  gamma_u = m_u * mean pairwise ||.||^2,

    with ``estimator`` "unbiased" (quadratic time) or "linear" (linear time, DAN's).
    ``kernels`` "equal": beta_u = 1 each (the common simplification, e.g. in
    Transfer-Learning-Library); "learned": DAN's beta, re-solved every training step
    (:func:`optimal_kernel_weights`) from moving averages (``momentum``) of the per-kernel
    linear-time terms and their second moments, and scaled by the number of kernels so
    that equal weights give the same loss as "equal"."""

    def __init__(
        self,
        multipliers=DEFAULT_MULTIPLIERS,
        estimator: str = "unbiased",
        kernels: str = "equal",
        momentum: float = 0.99,
    ):
        super().__init__()
        if estimator not in ("unbiased", "linear") or kernels not in ("equal", "learned"):
            raise ValueError((estimator, kernels))
        self.multipliers, self.estimator, self.kernels = tuple(multipliers), estimator, kernels
        self.momentum = momentum
        m = len(self.multipliers)
        self.register_buffer("beta", torch.full((m,), 1.0 / m))
        self.register_buffer("h_mean", torch.zeros(m))
        self.register_buffer("h_second", torch.zeros(m, m))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_beta(self, k: torch.Tensor, n: int) -> None:
        h = linear_h(k, n).double()
        if len(h) == 0:
            return
        first, second = h.mean(0), h.T @ h / len(h)
        w = 1.0 - self.momentum if int(self.updates) else 1.0
        self.h_mean.mul_(1 - w).add_(w * first.to(self.h_mean))
        self.h_second.mul_(1 - w).add_(w * second.to(self.h_second))
        self.updates += 1
        cov = self.h_second.double() - torch.outer(self.h_mean.double(), self.h_mean.double())
        self.beta.copy_(optimal_kernel_weights(self.h_mean, cov).to(self.beta))

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        stack = gaussian_kernel_stack(source, target, self.multipliers)
        if self.kernels == "learned":
            if self.training:
                self.update_beta(stack.detach(), len(source))
            k = (stack * (len(self.multipliers) * self.beta).view(-1, 1, 1)).sum(0)
        else:
            k = stack.sum(0)
        est = mmd2_unbiased if self.estimator == "unbiased" else mmd2_linear
        return est(k, len(source))


@register("mmd")
class DAN(Method):
    """The ``mmd`` method: MK-MMD on the bottleneck features."""

    def __init__(self, estimator: str = "unbiased", kernels: str = "equal"):
        super().__init__()
        self.mmd = MultiKernelMMD(estimator=estimator, kernels=kernels)

    @classmethod
    def build(cls, width: int, classes: int, cfg) -> DAN:
        return cls(cfg.mmd_estimator, cfg.mmd_kernels)

    def forward(self, fs, ft, zs, zt, progress: float) -> torch.Tensor:
        return self.mmd(fs, ft)
