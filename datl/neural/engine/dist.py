"""Distributed set-up: the same command runs alone or under ``torchrun --nproc_per_node N``.

torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; we then use DistributedDataParallel with
nccl on CUDA and gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from datl.core.errors import UserError
from datl.core.options import DEVICES


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_device(pref: str) -> str:
    if pref not in DEVICES:
        raise UserError(
            "--device", f"'{pref}' is not one of {', '.join(DEVICES)}", f"pass --device {'|'.join(DEVICES)}"
        )
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device", "cuda was asked for but no CUDA device is available", "use --device auto or cpu on this machine"
        )
    return "cuda" if pref == "auto" and torch.cuda.is_available() else ("cpu" if pref == "auto" else pref)


def setup(device_pref: str = "auto") -> Dist:
    kind = resolve_device(device_pref)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def all_finite(x: torch.Tensor, d: Dist) -> bool:
    """Whether ``x`` is finite on every rank (all ranks get the same answer, so they stop together).
    One device sync per call: the price of never stepping on a NaN loss."""
    ok = torch.isfinite(x.detach()).all().to(torch.float32).reshape(1)
    if d.world > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def mean_across(d: Dist, value: float) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t.item()) / d.world


def check_in_sync(d: Dist, params, what: str = "parameters") -> None:
    """Fail loudly if the ranks' copies of ``params`` differ (a DDP wiring bug, never a user's):
    compares each tensor's sum across ranks, one all-reduce of a small vector each way."""
    if d.world == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in params]).to(d.device)
    hi, lo = sums.clone(), sums.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    gap = float((hi - lo).abs().max())
    if gap > 1e-3 * max(float(hi.abs().max()), 1.0):
        raise RuntimeError(
            f"{what} differ across the {d.world} ranks (largest gap {gap:.3g}): "
            "the ranks trained apart; please report this"
        )


def cleanup(d: Dist, clean: bool = True) -> None:
    """Tear the process group down. After a clean run, first free what still holds it (a
    DistributedDataParallel reducer in a reference cycle keeps gloo's worker threads alive
    into interpreter shutdown, where tearing them down can abort the process) and wait for
    every rank, so no rank closes its connections while another still uses them."""
    if d.world > 1 and dist.is_initialized():
        if clean:
            gc.collect()
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device_pref: str = "auto") -> Iterator[Dist]:
    """``with session(cfg.device) as d:`` set up torchrun's process group (if any), and
    tear it down however the block ends."""
    d = setup(device_pref)
    try:
        yield d
    except BaseException:
        cleanup(d, clean=False)
        raise
    cleanup(d)
