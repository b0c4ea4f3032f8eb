"""``pretrain``: train a timm classifier on a labeled manifest into a run folder.

The loop, the recipe and the run folder are the shared torch layer's (``datl.neural``); this
stage adds what is its own: where the weights start (``--init``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from datl.core.errors import UserError
from datl.core.specs import parse_model_spec
from datl.manifests import open_manifest
from datl.manifests.images import require_readable
from datl.neural.checkpoint import load_foreign_weights, load_run, new_model
from datl.neural.data import image_spec
from datl.neural.engine import dist
from datl.neural.engine.loop import fit
from datl.neural.engine.optim import decay_groups

from .config import PretrainConfig


def run(cfg: PretrainConfig) -> Path:
    """Train cfg.model on the labeled manifest; returns the run folder."""
    cfg.check()
    with dist.session(cfg.device) as d:
        manifest = open_manifest(cfg.manifest)
        classes, counts = manifest.require_training_labels("training")
        require_readable(manifest, "training")
        size, in_chans = image_spec(manifest, cfg.image_size, cfg.in_chans)
        torch.manual_seed(cfg.seed)
        model, model_cfg = new_model(
            cfg.model, classes, size, in_chans, cfg.params(), class_prior=(counts / max(counts.sum(), 1)).tolist()
        )
        init_from(model, cfg, classes)
        return fit(model, model_cfg, manifest, cfg, d, decay_groups(model, cfg.lr, cfg.weight_decay))


def init_from(model: nn.Module, cfg: PretrainConfig, classes: list[str]) -> None:
    """--init RUN_DIR (same classes) or --init timm:ARCH --weights FILE (backbone only)."""
    if not cfg.init:
        return
    spec = parse_model_spec(cfg.init, "--init")
    if spec.is_timm:
        arch = spec.arch
        if arch != cfg.model:
            raise UserError(
                "--init", f"{cfg.init} is another architecture than --model {cfg.model}", f"pass --model {arch}"
            )
        if not cfg.weights:
            raise UserError(
                "--init",
                f"{cfg.init} needs --weights FILE (a local state dict)",
                "pass --weights; nothing is downloaded",
            )
        load_foreign_weights(model, cfg.weights, keep_head=False)
        return
    src, src_cfg = load_run(cfg.init)
    if src_cfg.arch != cfg.model:
        raise UserError(
            cfg.init, f"holds a {src_cfg.arch}, not the --model {cfg.model}", f"pass --model {src_cfg.arch}"
        )
    if src_cfg.classes != classes:
        raise UserError(
            cfg.init,
            f"was trained on {len(src_cfg.classes)} other classes than the manifest's {len(classes)}",
            "use `finetune` to move a model to new classes",
        )
    model.load_state_dict(src.state_dict())
