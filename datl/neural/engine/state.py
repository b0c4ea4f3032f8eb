"""Resumable run-folder state: ``state.pt`` (model, optimizer, scheduler, step, RNG, and a
loss hook's own state), written atomically by rank 0 and read with ``weights_only=True``."""

from __future__ import annotations

import json
import warnings
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


def save_state(
    out: Path, model: nn.Module, opt, sched, step: int, d: dist.Dist, hook=None, data: dict | None = None
) -> None:
    """Training state for --resume, written atomically by rank 0; ``data`` says what the run
    trains on (``data_key``), so a resume on another manifest is refused."""
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
        if data is not None:
            state["data"] = data
        if d.cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(d.device)
        with atomic_output(out / STATE) as tmp:
            torch.save(state, tmp)
    dist.barrier(d)


def data_key(manifest) -> dict:
    """What a run trains on, as --resume compares it: the manifest's rows and a hash of its
    Parquet footer (which changes with its content; reading it costs nothing)."""
    return {"rows": manifest.num_rows, "footer": manifest.footer_sha256()}


def load_state(out: Path, model: nn.Module, opt, sched, d: dist.Dist, hook=None, data: dict | None = None) -> int:
    """Restore a run's state for --resume; a state file that cannot be read, or that another
    model or manifest wrote, is a one-line UserError."""
    path = out / STATE
    try:
        with warnings.catch_warnings():  # torch's own words about a foreign file: the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated file, a pickle of anything but tensors
        raise UserError(
            path,
            f"cannot be read as a training state ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})",
            "start a new run (drop --resume, or pass another --out)",
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "step", "torch_rng"} <= set(state):
        raise UserError(path, "is not a training state written by datl", "start a new run (drop --resume)")
    if data is not None and state.get("data", data) != data:
        raise UserError(
            path,
            f"was saved by a run on another manifest ({state['data']['rows']:,} rows then, "
            f"{data['rows']:,} now, or other contents)",
            "resume with the manifest the run started with, or start a new run",
        )
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(
            path,
            f"holds the weights of another model ({str(e).splitlines()[0][:120]})",
            "resume with the --model (and options) the run started with, or start a new run",
        ) from None
    if hasattr(hook, "load_state_dict"):
        if "hook" not in state:
            raise UserError(
                out / STATE,
                "was saved by a run without these --adapt/--train-target options",
                "resume with the options the run started with, or start a new run",
            )
        hook.load_state_dict(state["hook"])
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(
            path,
            f"holds the optimizer of another run ({type(e).__name__}: {str(e)[:120]})",
            "resume with the options the run started with, or start a new run",
        ) from None
    torch.set_rng_state(state["torch_rng"])
    if d.cuda and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], d.device)
    step = int(state["step"])
    if d.main and (out / METRICS).exists():  # drop records past the saved step
        lines = [ln for ln in (out / METRICS).read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        (out / METRICS).write_text("".join(ln + "\n" for ln in lines))
    return step
