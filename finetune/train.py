"""``finetune``: a pretrained backbone (or random init), a new head for the target's
classes, training on the labeled target (or, with ``--adapt``, on a labeled domain
aligned to the unlabeled target), evaluation into ``metrics.json``.

Model selection never peeks at the test labels: the model evaluated is the last one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from manifests import UserError, atomic_output, open_manifest
from pretrain import dist
from pretrain.models import AdaptNet, ModelConfig, create, default_norm, load_run
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
    unlabeled: str | None = None
    trade_off: float = 1.0
    trade_off_ramp: bool = False
    bottleneck: int = 256
    mmd_estimator: str = "unbiased"
    mmd_kernels: str = "learned"
    train_target: str | None = None
    soft_labels: bool = False
    soft_weight: float = 0.1
    soft_temperature: float = 2.0

    @property
    def two_domain(self) -> bool:
        """Trained as an AdaptNet by TwoDomainStep: --adapt, or labeled target images beside --train."""
        return self.adapt != "none" or self.train_target is not None


def run(cfg: FinetuneConfig) -> Path:
    check_budget(cfg)
    check_adapt_options(cfg)
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
        hook = schedule = None
        extra = torch.nn.ModuleList()
        if cfg.two_domain:
            model, hook, schedule, extra = adaptation(cfg, model, model_cfg, classes, d)
        head_ids = {id(p) for p in model.get_classifier().parameters()} if not isinstance(model, AdaptNet) else \
            {id(p) for p in model.parameters()} - {id(p) for p in model.backbone.parameters()}
        mult = {n: 1.0 if id(p) in head_ids else cfg.backbone_lr_mult for n, p in model.named_parameters()}
        groups = decay_groups(model, cfg.lr, cfg.weight_decay, lr_mult=mult.__getitem__)
        if len(list(extra.parameters())):
            groups += decay_groups(extra, cfg.lr, cfg.weight_decay)
        out = fit(model, model_cfg, train, cfg, d, groups, hook, schedule)
        if d.main:
            evaluate(model, model_cfg, test, d.device, out, cfg)
        dist.barrier(d)
        return out
    finally:
        dist.cleanup(d)


def check_adapt_options(cfg: FinetuneConfig) -> None:
    """The --adapt / --train-target options, before anything is opened or written."""
    adapt.check(cfg.adapt)
    if cfg.adapt != "none" and not cfg.unlabeled:
        raise UserError("--adapt", f"{cfg.adapt} needs --unlabeled TARGET_UNLABELED.parquet",
                        "pass the unlabeled target manifest, or --adapt none")
    if cfg.soft_labels and not cfg.train_target:
        raise UserError("--soft-labels", "needs --train-target LABELED_TARGET.parquet (the images it trains)",
                        "pass a few labeled target images with --train-target, or drop --soft-labels")
    if cfg.mmd_estimator not in ("unbiased", "linear"):
        raise UserError("--mmd-estimator", f"unknown estimator '{cfg.mmd_estimator}'", "pass unbiased or linear")
    if cfg.mmd_kernels not in ("equal", "learned"):
        raise UserError("--mmd-kernels", f"unknown kernel weighting '{cfg.mmd_kernels}'", "pass equal or learned")
    for name, value, low in (("--trade-off", cfg.trade_off, 0), ("--bottleneck", cfg.bottleneck, 0),
                             ("--soft-weight", cfg.soft_weight, 0), ("--soft-temperature", cfg.soft_temperature, None)):
        if value < 0 or (low is None and value == 0):
            raise UserError(name, f"{value} is out of range", "pass a number > 0" if low is None else "pass a number >= 0")


def adaptation(cfg: FinetuneConfig, model, model_cfg: ModelConfig, classes: list[str], d):
    """The AdaptNet, the step's loss hook, DANN's learning-rate annealing, and the modules
    with their own parameters or state (method, soft labels)."""
    from .adapt.confusion import SoftLabelLoss
    from .adapt.dann import dann_lr
    from .adapt.net import TwoDomainStep

    unlabeled = labeled_target = None
    if cfg.adapt != "none":
        unlabeled = same_classes(open_manifest(cfg.unlabeled), cfg.unlabeled, classes, cfg.manifest, optional=True)
    if cfg.train_target:
        labeled_target = same_classes(open_manifest(cfg.train_target), cfg.train_target, classes, cfg.manifest)
    net = model if isinstance(model, AdaptNet) else AdaptNet(model, len(classes), cfg.bottleneck)
    if net is not model:  # a checkpoint of an --adapt run is an AdaptNet already, with its own bottleneck
        model_cfg.bottleneck, model_cfg.num_features = cfg.bottleneck, net.num_features
    method = adapt.make(cfg.adapt, net.num_features, len(classes), cfg.mmd_estimator, cfg.mmd_kernels)
    soft = SoftLabelLoss(len(classes), cfg.soft_temperature) if cfg.soft_labels else None
    extra = torch.nn.ModuleList([m for m in (method, soft) if m is not None]).to(d.device)
    step_method = method
    if d.world > 1 and method is not None and any(p.requires_grad for p in method.parameters()):
        # the discriminator / JAN-A maps: their gradients are averaged across ranks like the network's
        step_method = torch.nn.parallel.DistributedDataParallel(method, device_ids=[d.local_rank] if d.cuda else None)
    hook = TwoDomainStep(step_method, Cycle(unlabeled, cfg, model_cfg, d, labels=False) if unlabeled else None,
                         cfg.trade_off, d.device, cfg.label_smoothing, ramp=cfg.trade_off_ramp,
                         labeled_target=Cycle(labeled_target, cfg, model_cfg, d, labels=True) if labeled_target else None,
                         soft=soft, soft_weight=cfg.soft_weight)
    schedule = (lambda total: (lambda step: dann_lr(step / total))) if cfg.adapt == "dann" else None
    return net, hook, schedule, extra


def same_classes(manifest, path: str, classes: list[str], train: str, optional: bool = False):
    """The manifest, if it is labeled with ``classes`` (or, when ``optional``, unlabeled)."""
    if manifest.has_labels or not optional:
        if manifest.require_labels() != classes:
            raise UserError(path, f"is labeled with other classes than {train}",
                            "pass a manifest of the same classes, in the same order" +
                            (", or an unlabeled one" if optional else ""))
    return manifest


class Cycle:
    """Endless shuffled batches of this rank's shard of a manifest, epoch after epoch,
    augmented as --train is: images, or (images, labels) with ``labels``. Unreadable
    images are skipped. ``seek(n)`` continues after n batches, for --resume."""

    def __init__(self, manifest, cfg: FinetuneConfig, model_cfg: ModelConfig, d, labels: bool):
        from pretrain.data import build_transform, image_mode, make_loader

        transform = build_transform(tuple(model_cfg.image_size), model_cfg.in_chans, model_cfg.mean, model_cfg.std,
                                    train=True, hflip=cfg.hflip)
        self.loader = make_loader(manifest, transform, image_mode(model_cfg.in_chans), cfg.batch_size, cfg.workers,
                                  d.rank, d.world, cfg.seed + (2 if labels else 1), shuffle=True, pin_memory=d.cuda,
                                  persistent=True)
        self.labels, self.batch_size, self.path = labels, cfg.batch_size, manifest.path
        self.per_epoch = max(math.ceil(self.loader.sampler.per_rank() / cfg.batch_size), 1)
        self.seek(0)

    def seek(self, batches: int) -> None:
        self.epoch, self.start = divmod(batches, self.per_epoch)
        self.it = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.it is None:
                self.loader.sampler.epoch, self.loader.sampler.start = self.epoch, self.start * self.batch_size
                self.it, self.good = iter(self.loader), False
            b = next(self.it, None)
            if b is None:
                if not self.good and not self.start:  # a whole epoch unreadable: it would loop forever
                    raise UserError(self.path, "has no readable image", "fix or rebuild the manifest's images")
                self.epoch, self.start, self.it = self.epoch + 1, 0, None
                continue
            if b.images is not None:
                self.good = True
                return (b.images, b.labels) if self.labels else b.images


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
                           std=src.std, num_features=src.num_features, params=params_of(cfg), bottleneck=src.bottleneck)
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
