"""The training recipe shared by ``pretrain`` and ``finetune``: each option declared once,
as a field (default, help, choices); the CLIs' options are made from these fields.

Recipe (defaults): SGD with Nesterov momentum 0.9, weight decay 1e-4 on weights (not
on biases and norms), linear warm-up over the first 5% of steps then cosine decay to 0,
optional label smoothing.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from datl.core.errors import UserError
from datl.core.options import DEVICES, opt, validate


def loader_workers() -> int:
    """The default DataLoader worker count of a training run: the cores, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2)))


@dataclass(kw_only=True)
class TrainConfig:
    """The options of a training run. The labeled manifest it trains on is each stage's own
    field: ``pretrain --manifest``, ``finetune --train``."""

    model: str = opt(help="timm architecture, e.g. resnet18, mobilenetv2_100.")
    out: str = opt(short="-o", help="Run folder to write.")
    lr: float = opt(0.1, help="Peak learning rate.", bounds="(0, inf)")
    image_size: int | None = opt(None, help="Train at this size (default: the manifest's images).", bounds="[1, 4096]")
    in_chans: int | None = opt(
        None, help="Model input channels (default: 1 for grey images, else 3).", bounds="[1, inf)"
    )
    epochs: float | None = opt(None, help="Training budget in passes over the manifest.", bounds="(0, inf)")
    steps: int | None = opt(None, help="Training budget in optimizer steps (instead of --epochs).", bounds="[1, inf)")
    batch_size: int = opt(128, help="Images per step per process.", bounds="[1, inf)")
    momentum: float = opt(0.9, help="SGD momentum (Nesterov).", bounds="[0, 1)")
    weight_decay: float = opt(1e-4, help="On weights, not biases/norms.", bounds="[0, inf)")
    warmup: float = opt(0.05, help="Fraction of steps of linear warm-up.", bounds="[0, 1]")
    label_smoothing: float = opt(0.0, bounds="[0, 1)")
    seed: int = opt(0, bounds="[0, inf)")
    workers: int = opt(default_factory=loader_workers, help="DataLoader workers.", bounds="[0, inf)")
    device: str = opt("auto", choices=DEVICES, help="auto takes CUDA when present (bf16 autocast, channels_last).")
    hflip: float = opt(0.0, help="Horizontal-flip probability (0 for digits/glyphs; 0.5 for photos).", bounds="[0, 1]")
    save_every: int = opt(500, help="Save resumable state every N steps.", bounds="[1, inf)")
    log_every: int = opt(20, help="Append to metrics.jsonl every N steps.", bounds="[1, inf)")
    resume: bool = opt(False, help="Continue the run in --out from its saved state.")
    stop_after_steps: int | None = opt(
        None, help="Stop (saving state) after N steps of this invocation, e.g. to fit a job slot.", bounds="[1, inf)"
    )
    quiet: bool = opt(False, short="-q", help="No progress bar.")

    def check(self) -> None:
        """Every option against its declaration, and the budget, before anything is opened or written."""
        validate(self)
        if (self.epochs is None) == (self.steps is None):
            raise UserError("--epochs/--steps", "give exactly one training budget", "pass --epochs N or --steps N")

    def params(self) -> dict:
        """What config.json records: everything that shapes the result (not logging, workers, resume)."""
        p = asdict(self)
        for k in ("quiet", "resume", "stop_after_steps", "workers", "log_every", "save_every"):
            p.pop(k)
        return p
