"""Resumable run-folder state: ``state.pt`` (model, optimizer, scheduler, step, RNG, and a
loss hook's own state), written atomically by rank 0 and read with ``weights_only=True``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from datl.core.errors import UserError
from datl.core.files import atomic_output, claim_folder, lock_folder

from ..checkpoint import METRICS, STATE
from ..modeling import unwrap
from . import dist


def prepare_out(out: Path, resume: bool) -> None:
    """Claim and lock the run folder (rank 0): never another's folder, never two runs in one."""
    if resume:
        if not (out / STATE).exists():
            raise UserError(out, f"has no {STATE} to resume from", "drop --resume to start a new run")
        lock_folder(out, "run folder")
        return
    if (out / STATE).exists():
        raise UserError(out, "already holds a run", "pass --resume to continue it, or another --out")
    claim_folder(out, "run folder")  # a folder datl did not make is refused, never emptied
    lock_folder(out, "run folder")
    (out / METRICS).unlink(missing_ok=True)


def save_state(out: Path, model: nn.Module, opt, sched, step: int, d: dist.Dist, hook=None) -> None:
    """Training state for --resume, written atomically by rank 0."""
    if d.main:
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
        }
        if hasattr(hook, "state_dict"):
            state["hook"] = hook.state_dict()
        if d.cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(d.device)
        with atomic_output(out / STATE) as tmp:
            torch.save(state, tmp)
    dist.barrier(d)


def load_state(out: Path, model: nn.Module, opt, sched, d: dist.Dist, hook=None) -> int:
    state = torch.load(out / STATE, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    if hasattr(hook, "load_state_dict"):
        if "hook" not in state:
            raise UserError(
                out / STATE,
                "was saved by a run without these --adapt/--train-target options",
                "resume with the options the run started with, or start a new run",
            )
        hook.load_state_dict(state["hook"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if d.cuda and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], d.device)
    step = int(state["step"])
    if d.main and (out / METRICS).exists():  # drop records past the saved step
        lines = [ln for ln in (out / METRICS).read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        (out / METRICS).write_text("".join(ln + "\n" for ln in lines))
    return step
