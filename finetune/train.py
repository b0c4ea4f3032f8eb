"""``finetune``: a pretrained backbone (or random init), a new head for the target's
classes, training on the labeled target (or, with ``--adapt``, on a labeled domain
aligned to the unlabeled target), evaluation into ``metrics.json``.

Model selection never peeks at the test labels: the model evaluated is the last one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from datl.core.errors import UserError
from datl.manifests import open_manifest
from datl.manifests.images import require_readable
from datl.neural.checkpoint import ModelConfig, load_run, new_model
from datl.neural.data import Cycle, image_spec, train_loader
from datl.neural.engine import dist
from datl.neural.engine.loop import fit
from datl.neural.engine.optim import annealed, decay_groups
from datl.neural.modeling import AdaptNet

from . import adapt
from .config import FinetuneConfig
from .evaluate import evaluate

SAME_CLASSES = "pass a manifest labeled with the same classes, in the same order"


def run(cfg: FinetuneConfig) -> Path:
    cfg.check()
    with dist.session(cfg.device) as d:
        train, test = open_manifest(cfg.train), open_manifest(cfg.test)
        classes, _ = train.require_training_labels("training")
        test.require_classes(
            classes, cfg.train, "evaluate on a test set labeled with the same classes, in the same order"
        )
        test.require_training_labels("test")
        val = open_manifest(cfg.val) if cfg.val else None
        if val is not None:
            val.require_classes(
                classes, cfg.train, "validate on a set labeled with the same classes, in the same order"
            )
            val.require_training_labels("validation")
        for m, role in ((train, "--train"), (test, "--test"), (val, "--val")):
            if m is not None:  # never train on, or report an accuracy of, nothing
                require_readable(m, role)
        torch.manual_seed(cfg.seed)
        model, model_cfg = backbone(cfg, classes, train)
        hook = None
        extra = nn.ModuleList()
        if cfg.two_domain:
            model, hook, extra = adaptation(cfg, model, model_cfg, classes, train, d)
        schedule = annealed if cfg.schedule == "anneal" else None
        groups = param_groups(model, cfg) + (
            decay_groups(extra, cfg.lr, cfg.weight_decay) if len(list(extra.parameters())) else []
        )
        out = fit(model, model_cfg, train, cfg, d, groups, hook, schedule)
        if d.main:
            evaluate(model, model_cfg, test, d.device, out, cfg, val)
        dist.barrier(d)
        return out


def backbone(cfg: FinetuneConfig, classes: list[str], train) -> tuple[nn.Module, ModelConfig]:
    """The checkpoint's backbone with a fresh head, or cfg.model from random init (the 'scratch' baseline)."""
    if cfg.checkpoint:
        model, src = load_run(cfg.checkpoint)
        if cfg.model and cfg.model != src.arch:
            raise UserError(
                "--model",
                f"{cfg.model} differs from the checkpoint's {src.arch}",
                "drop --model when fine-tuning a checkpoint",
            )
        model.reset_classifier(len(classes))
        size = [cfg.image_size] * 2 if cfg.image_size else src.image_size  # target images are converted
        mcfg = ModelConfig(
            arch=src.arch,
            classes=classes,
            image_size=list(size),
            in_chans=src.in_chans,
            mean=src.mean,
            std=src.std,
            num_features=src.num_features,
            params=cfg.params(),
            bottleneck=src.bottleneck,
        )
        return model, mcfg
    if not cfg.model:
        raise UserError("finetune", "needs --checkpoint RUN_DIR or --model ARCH (random init)", "pass one of them")
    size, chans = image_spec(train, cfg.image_size, cfg.in_chans)
    return new_model(cfg.model, classes, size, chans, cfg.params())


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """The new head (an AdaptNet's bottleneck and classifier) at --lr, the backbone at
    --lr x --backbone-lr-mult, held at 0 for the first --head-warmup fraction of the steps;
    weight decay on weights only."""
    head = model.head_parameters() if isinstance(model, AdaptNet) else model.get_classifier().parameters()
    head_ids = {id(p) for p in head}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim > 1), []).append(p)
    out = []
    for (is_head, decay), ps in sorted(groups.items(), key=lambda kv: not kv[0][0]):  # the head's first
        mult = 1.0 if is_head else cfg.backbone_lr_mult
        g = {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * mult, "lr_mult": mult}
        if not is_head and cfg.head_warmup:
            g["hold"] = cfg.head_warmup
        out.append(g)
    return out


def adaptation(cfg: FinetuneConfig, model: nn.Module, model_cfg: ModelConfig, classes: list[str], train, d):
    """The AdaptNet, the step's loss hook, and the modules with their own parameters or state
    (method, soft labels). The recipe (``--lr-schedule``, ``--trade-off-ramp``) is the run's, the
    same whichever method."""
    from .adapt.confusion import SoftLabelLoss
    from .adapt.net import TwoDomainStep

    unlabeled = labeled_target = None
    if cfg.adapt != adapt.NONE:
        unlabeled = open_manifest(cfg.unlabeled)
        unlabeled.require_classes(classes, cfg.train, SAME_CLASSES + ", or an unlabeled one", allow_unlabeled=True)
        if not unlabeled.num_rows:
            raise UserError(cfg.unlabeled, "has no rows", "pass the target images to adapt to")
    if cfg.train_target:
        labeled_target = open_manifest(cfg.train_target)
        labeled_target.require_classes(classes, cfg.train, SAME_CLASSES)
        labeled_target.require_training_labels("--train-target")
    net = model if isinstance(model, AdaptNet) else AdaptNet(model, len(classes), cfg.bottleneck)
    if net is not model:  # a checkpoint of an --adapt run is an AdaptNet already, with its own bottleneck
        model_cfg.bottleneck, model_cfg.num_features = cfg.bottleneck, net.num_features
    kind = adapt.get(cfg.adapt)
    method = kind.build(net.num_features, len(classes), cfg) if kind else None
    soft = SoftLabelLoss(len(classes), cfg.soft_temperature) if cfg.soft_labels else None
    if soft is not None and cfg.soft_labels_from:
        soft.fix(teacher_soft_labels(cfg.soft_labels_from, train, classes, cfg, d))
    extra = nn.ModuleList([m for m in (method, soft) if m is not None]).to(d.device)
    step_method = method
    if d.world > 1 and method is not None and any(p.requires_grad for p in method.parameters()):
        # the discriminator / JAN-A maps: their gradients are averaged across ranks like the network's
        step_method = nn.parallel.DistributedDataParallel(method, device_ids=[d.local_rank] if d.cuda else None)

    def cycle(manifest, labels: bool) -> Cycle | None:
        if manifest is None:
            return None
        return Cycle(
            train_loader(manifest, model_cfg, cfg, d, cfg.seed + (2 if labels else 1), persistent=True), labels
        )

    hook = TwoDomainStep(
        step_method,
        cycle(unlabeled, False),
        cfg.trade_off,
        d.device,
        cfg.label_smoothing,
        ramp=cfg.trade_off_ramp,
        labeled_target=cycle(labeled_target, True),
        soft=soft,
        soft_weight=cfg.soft_weight,
    )
    return net, hook, extra


def teacher_soft_labels(run_dir: str, train, classes: list[str], cfg: FinetuneConfig, d) -> torch.Tensor:
    """Tzeng et al.'s soft labels: the per-class mean softmax(z / T) over the --train images of a
    model already trained on that domain (``run_dir``), computed once."""
    from datl.neural.checkpoint import load_model
    from datl.neural.engine.inference import run_model

    from .adapt.confusion import soft_labels

    lm = load_model(run_dir)
    if lm.config.classes != classes:
        raise UserError(
            run_dir,
            f"is a model of other classes than {cfg.train}",
            "pass a run trained on the --train manifest's classes",
        )
    here = dist.Dist(0, 1, d.local_rank, d.device)  # every rank computes the same table
    rows, logits, _ = run_model(lm, train, here, "logits", max(cfg.batch_size, 256), 0, False)
    labels = torch.as_tensor(train.read(["label"]).column("label").to_numpy()[rows], dtype=torch.long)
    return soft_labels(torch.as_tensor(logits, dtype=torch.float32), labels, len(classes), cfg.soft_temperature)
