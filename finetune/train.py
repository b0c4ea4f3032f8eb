"""``finetune``: a pretrained backbone (or random init), a new head for the target's
classes, training on the labeled target, evaluation into ``metrics.json``.

Model selection never peeks at the test labels: the model evaluated is the last one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from manifests import UserError, atomic_output, open_manifest
from pretrain import dist
from pretrain.models import ModelConfig, create, default_norm, load_run
from pretrain.train import TrainConfig, check_budget, decay_groups, fit, image_spec, params_of

from . import adapt
from .evaluate import PREDICTIONS, accuracy, predict, write_predictions

METRICS_JSON = "metrics.json"


@dataclass
class FinetuneConfig(TrainConfig):
    test: str = ""
    checkpoint: str | None = None
    backbone_lr_mult: float = 1.0
    adapt: str = "none"


def run(cfg: FinetuneConfig) -> Path:
    check_budget(cfg)
    hook = adapt.make(cfg.adapt)
    d = dist.setup(cfg.device)
    try:
        train = open_manifest(cfg.manifest)
        test = open_manifest(cfg.test)
        classes = train.require_labels()
        if test.require_labels() != classes:
            raise UserError(cfg.test, f"has other classes than the training manifest {cfg.manifest}",
                            "evaluate on a test set labeled with the same classes, in the same order")
        torch.manual_seed(cfg.seed)
        model, model_cfg = backbone(cfg, classes, train)
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        mult = {n: 1.0 if id(p) in head_ids else cfg.backbone_lr_mult for n, p in model.named_parameters()}
        groups = decay_groups(model, cfg.lr, cfg.weight_decay, lr_mult=mult.__getitem__)
        out = fit(model, model_cfg, train, cfg, d, groups, hook)
        if d.main:
            evaluate(model, model_cfg, test, d.device, out, cfg)
        dist.barrier(d)
        return out
    finally:
        dist.cleanup(d)


def backbone(cfg: FinetuneConfig, classes: list[str], train) -> tuple[torch.nn.Module, ModelConfig]:
    """The checkpoint's backbone with a fresh head, or cfg.model from random init (the 'scratch' baseline)."""
    if cfg.checkpoint:
        model, src = load_run(cfg.checkpoint)
        if cfg.model and cfg.model != src.arch:
            raise UserError("--model", f"{cfg.model} differs from the checkpoint's {src.arch}",
                            "drop --model when fine-tuning a checkpoint")
        model.reset_classifier(len(classes))
        size, chans = src.image_size, src.in_chans  # target images are converted to what the model reads
        if cfg.image_size:
            size = [cfg.image_size, cfg.image_size]
        mcfg = ModelConfig(arch=src.arch, classes=classes, image_size=list(size), in_chans=chans, mean=src.mean,
                           std=src.std, num_features=src.num_features, params=params_of(cfg))
        return model, mcfg
    if not cfg.model:
        raise UserError("finetune", "needs --checkpoint RUN_DIR or --model ARCH (random init)",
                        "pass one of them")
    size, chans = image_spec(train, cfg.image_size, cfg.in_chans)
    model = create(cfg.model, len(classes), chans)
    mean, std = default_norm(chans)
    return model, ModelConfig(arch=cfg.model, classes=classes, image_size=list(size), in_chans=chans,
                              mean=mean, std=std, num_features=int(model.num_features), params=params_of(cfg))


def evaluate(model, model_cfg: ModelConfig, test, device, out: Path, cfg: FinetuneConfig) -> dict:
    preds = predict(model, model_cfg, test, device, batch_size=max(cfg.batch_size, 256))
    write_predictions(out / PREDICTIONS, preds, model_cfg.classes)
    metrics = {**accuracy(preds, model_cfg.classes), "params": params_of(cfg)}
    with atomic_output(out / METRICS_JSON) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
