"""The step that feeds the network two domains, and the layers the methods share (gradient
reversal, the domain discriminator)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from datl.neural.engine.device import to_device
from datl.neural.modeling import unwrap


class TwoDomainStep:
    """The loss of one training step, called by the shared loop as its loss hook:

        L = CE(labeled batch [+ labeled target batch])
            + transfer(labeled batch, unlabeled batch), its gradient into the network x w(p)
            + soft_weight * L_soft(labeled target batch)

    w(p) = trade_off, times with ``ramp`` DANN's lambda_p = 2 / (1 + exp(-10 p)) - 1 over the
    fraction p of total steps, which starts the transfer loss at 0 while the features are
    still noise. w weighs only what the NETWORK receives: the features and logits enter the
    method through :func:`scale_gradient` (identity forward, gradient x w backward), so a
    method's own adversary (DANN's and confusion's domain classifiers, JAN-A's maps) always
    trains at full strength on its own loss, and DANN's reversal layer, at coefficient 1,
    gets lambda_p once, from w. The logged ``transfer`` is the unweighted loss.
    The hook draws the unlabeled batch (and the labeled target batch of
    ``--train-target``) itself, so every domain arrives every step; all batches go
    through the network in one pass (BatchNorm sees both domains, as in the papers).
    The transfer loss sees the labeled and the unlabeled batch only. Under torchrun
    each rank computes it on its own batches; ``method`` may be DDP-wrapped.
    """

    def __init__(
        self,
        method: nn.Module | None,
        unlabeled: Iterator[torch.Tensor] | None,
        trade_off: float,
        device,
        label_smoothing: float = 0.0,
        ramp: bool = False,
        labeled_target: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
        soft: nn.Module | None = None,
        soft_weight: float = 0.1,
    ):
        self.method, self.unlabeled, self.trade_off, self.ramp = method, unlabeled, trade_off, ramp
        self.device, self.label_smoothing = device, label_smoothing
        self.labeled_target, self.soft, self.soft_weight = labeled_target, soft, soft_weight
        self.last: dict = {}  # the last step's loss terms, logged to metrics.jsonl

    def modules(self) -> dict[str, nn.Module]:
        return {k: unwrap(m) for k, m in (("method", self.method), ("soft", self.soft)) if m is not None}

    def state_dict(self) -> dict:
        """The method's and the soft labels' parameters and buffers (discriminator, JAN-A maps,
        DAN's kernel statistics, the soft-label table), for --resume."""
        return {k: m.state_dict() for k, m in self.modules().items()}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[k])

    def seek(self, step: int) -> None:
        """Continue the unlabeled and labeled-target batches at ``step`` (one of each per step)."""
        for it in (self.unlabeled, self.labeled_target):
            if hasattr(it, "seek"):
                it.seek(step)

    def weight(self, progress: float) -> float:
        return self.trade_off * (grl_lambda(progress) if self.ramp else 1.0)

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> torch.Tensor:
        parts, n = [x], len(x)
        if self.method is not None:
            parts.append(to_device(next(self.unlabeled), self.device))
        m = len(parts[-1]) if self.method is not None else 0
        if self.labeled_target is not None:
            xl, yl = next(self.labeled_target)
            parts.append(to_device(xl, self.device))
            y = torch.cat([y, to_device(yl, self.device)])
        x_all = to_device(torch.cat(parts), self.device)  # channels_last again after the cat, on CUDA
        f, z = net(x_all, with_features=True)  # through the DDP wrapper, if any
        z = z.float()
        labeled = torch.cat([z[:n], z[n + m :]])  # labeled domain, then labeled target
        loss = F.cross_entropy(labeled, y, label_smoothing=self.label_smoothing)
        self.last = {"ce": loss.detach()}
        if self.method is not None:
            w = self.weight(progress)
            fs, ft, zs, zt = (scale_gradient(t, w) for t in (f[:n].float(), f[n : n + m].float(), z[:n], z[n : n + m]))
            transfer = self.method(fs, ft, zs, zt, progress)
            loss = loss + transfer
            self.last.update(transfer=transfer.detach(), transfer_weight=w)
        if self.soft is not None:
            self.soft.update(z[:n].detach(), y[:n])
            soft = self.soft(z[n + m :], y[n:])
            loss = loss + self.soft_weight * soft
            self.last["soft"] = soft.detach()
        return loss


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


def scale_gradient(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by coeff backward."""
    return _Reverse.apply(x, -coeff)


class DomainDiscriminator(nn.Sequential):
    """features -> 1024 -> 1024 -> n_domains logits (ReLU, dropout 0.5), DANN's."""

    def __init__(self, width: int, hidden: int = 1024, n_domains: int = 2):
        super().__init__(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, n_domains),
        )
