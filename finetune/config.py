"""``finetune``'s options: the shared training recipe, the target's test set, the starting
checkpoint, and the domain-adaptation options of ``--adapt``."""

from __future__ import annotations

from dataclasses import dataclass

from datl.core.errors import UserError
from datl.core.options import opt
from datl.neural.engine.config import TrainConfig

from . import adapt


@dataclass(kw_only=True)
class FinetuneConfig(TrainConfig):
    train: str = opt(
        help="Labeled manifest to train on: the target's, or with --adapt the labeled domain (e.g. rendered)."
    )
    model: str | None = opt(None, help="timm architecture trained from random init instead of --checkpoint.")
    lr: float = opt(0.01, help="Peak learning rate of the new head.", bounds="(0, inf)")
    batch_size: int = opt(
        32,
        help="Images per step per process. 32, not pretrain's 128: a target of a few hundred labeled images "
        "gets 4x the steps (chosen on validation: docs/finetune.md).",
        bounds="[1, inf)",
    )
    image_size: int | None = opt(None, help="Override the checkpoint's image size.", bounds="[1, 4096]")
    in_chans: int | None = opt(None, help="Input channels with --model (default: from the images).", bounds="[1, inf)")
    test: str = opt(help="Labeled target manifest to evaluate on (same classes).")
    val: str | None = opt(
        None,
        help="Labeled target validation manifest (same classes), evaluated beside --test: "
        "choose settings on its val_accuracy, report test_accuracy.",
    )
    checkpoint: str | None = opt(None, short="-c", help="Run folder of `pretrain` whose backbone to fine-tune.")
    backbone_lr_mult: float = opt(
        1.0, help="Backbone learning rate = lr x this (e.g. 0.1 for a gentler fine-tune).", bounds="[0, inf)"
    )
    head_warmup: float = opt(
        0.0,
        help="Fraction of the steps in which only the new head trains (the backbone's learning rate held at 0), "
        "before the whole network does: linear-probe-then-fine-tune (Kumar et al. 2022).",
        bounds="[0, 1)",
    )
    adapt: str = opt(adapt.NONE, choices=adapt.names(), noun="method", help="Domain adaptation toward --unlabeled.")
    unlabeled: str | None = opt(None, help="Unlabeled target manifest (needed by --adapt): a batch of it every step.")
    trade_off: float = opt(1.0, help="Weight of the transfer loss.", bounds="[0, inf)")
    trade_off_ramp: bool = opt(
        True,
        negatable=True,
        help="Ramp the transfer loss's weight on the network up, trade-off x "
        "(2/(1+exp(-10p))-1), p = fraction of steps done: DANN's lambda_p, the same for "
        "every --adapt method (JAN trains with it too).",
    )
    lr_schedule: str = opt(
        "auto",
        choices=("auto", "anneal", "cosine"),
        noun="schedule",
        help="anneal: DANN's mu_0/(1+10p)^0.75 (JAN's too); cosine: warm-up + cosine as in "
        "pretrain; auto: anneal with --adapt or --train-target, else cosine.",
    )
    bottleneck: int = opt(
        256,
        help="Width of the bottleneck layer the transfer loss sees (0: none); --adapt/--train-target only.",
        bounds="[0, inf)",
    )
    mmd_estimator: str = opt(
        "unbiased",
        choices=("unbiased", "linear"),
        noun="estimator",
        help="mmd/jmmd: unbiased (quadratic time) or linear (linear time).",
    )
    mmd_kernels: str = opt(
        "learned",
        choices=("learned", "equal"),
        noun="kernel weighting",
        help="mmd: learned (DAN's kernel weights, maximising the test power, re-solved each step) or equal.",
    )
    train_target: str | None = opt(
        None,
        help="A few LABELED target images (same classes), a batch of them every "
        "step beside --train: the supervised/semi-supervised setting.",
    )
    soft_labels: bool = opt(
        False,
        help="Tzeng et al.'s soft-label loss on --train-target: match each image's "
        "softmax at T to the --train domain's mean softmax of its class.",
    )
    soft_weight: float = opt(0.1, help="Weight of the soft-label loss.", bounds="[0, inf)")
    soft_temperature: float = opt(2.0, help="Temperature T of the soft labels.", bounds="(0, inf)")
    soft_labels_from: str | None = opt(
        None,
        help="Run folder of a model already trained on the --train domain: "
        "the soft labels are its per-class mean softmax at T over --train, "
        "computed once (Tzeng et al.'s way). Default: a moving average of "
        "the network being trained.",
    )

    @property
    def schedule(self) -> str:
        """The learning-rate schedule --lr-schedule resolves to: anneal or cosine."""
        if self.lr_schedule != "auto":
            return self.lr_schedule
        return "anneal" if self.two_domain else "cosine"

    @property
    def two_domain(self) -> bool:
        """Trained as an AdaptNet by TwoDomainStep: --adapt, or labeled target images beside --train."""
        return self.adapt != adapt.NONE or self.train_target is not None

    def check(self) -> None:
        """The budget and the --adapt / --train-target options, before anything is opened or written."""
        super().check()
        if self.adapt != adapt.NONE and not self.unlabeled:
            raise UserError(
                "--adapt",
                f"{self.adapt} needs --unlabeled TARGET_UNLABELED.parquet",
                "pass the unlabeled target manifest, or --adapt none",
            )
        if self.soft_labels_from and not self.soft_labels:
            raise UserError(
                "--soft-labels-from", "only makes sense with --soft-labels", "add --soft-labels, or drop it"
            )
        if self.soft_labels and not self.train_target:
            raise UserError(
                "--soft-labels",
                "needs --train-target LABELED_TARGET.parquet (the images it trains)",
                "pass a few labeled target images with --train-target, or drop --soft-labels",
            )
