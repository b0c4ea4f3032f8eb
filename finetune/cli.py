"""`finetune`: move a pretrained backbone to the target's classes and evaluate it."""
from __future__ import annotations

import json

import click

from manifests.cli import run_cli
from pretrain.cli import CONTEXT, training_options


@click.command(context_settings=CONTEXT)
@click.option("--checkpoint", "-c", help="Run folder of `pretrain` whose backbone to fine-tune.")
@click.option("--model", help="timm architecture trained from random init instead of --checkpoint.")
@click.option("--train", "manifest", required=True,
              help="Labeled manifest to train on: the target's, or with --adapt the labeled domain (e.g. rendered).")
@click.option("--test", required=True, help="Labeled target manifest to evaluate on (same classes).")
@click.option("--out", "-o", required=True, help="Run folder to write.")
@click.option("--lr", default=0.01, show_default=True, help="Peak learning rate of the new head.")
@click.option("--backbone-lr-mult", default=1.0, show_default=True,
              help="Backbone learning rate = lr x this (e.g. 0.1 for a gentler fine-tune).")
@click.option("--adapt", default="none", show_default=True,
              help="Domain adaptation toward --unlabeled: none, confusion, dann, mmd, jmmd, jan-a.")
@click.option("--unlabeled", help="Unlabeled target manifest (needed by --adapt): a batch of it every step.")
@click.option("--trade-off", default=1.0, show_default=True, help="Weight of the transfer loss.")
@click.option("--trade-off-ramp", is_flag=True,
              help="Warm the transfer loss up: trade-off x (2/(1+exp(-10p))-1), p = fraction of steps done.")
@click.option("--bottleneck", default=256, show_default=True,
              help="Width of the bottleneck layer the transfer loss sees (0: none); --adapt/--train-target only.")
@click.option("--mmd-estimator", default="unbiased", show_default=True,
              help="mmd/jmmd: unbiased (quadratic time) or linear (linear time).")
@click.option("--mmd-kernels", default="learned", show_default=True,
              help="mmd: learned (DAN's kernel weights, maximising the test power, re-solved each step) or equal.")
@click.option("--train-target", help="A few LABELED target images (same classes), a batch of them every step "
                                     "beside --train: the supervised/semi-supervised setting.")
@click.option("--soft-labels", is_flag=True,
              help="Tzeng et al.'s soft-label loss on --train-target: match each image's softmax at T to the "
                   "--train domain's mean softmax of its class.")
@click.option("--soft-weight", default=0.1, show_default=True, help="Weight of the soft-label loss.")
@click.option("--soft-temperature", default=2.0, show_default=True, help="Temperature T of the soft labels.")
@click.option("--image-size", type=int, help="Override the checkpoint's image size.")
@click.option("--in-chans", type=int, help="Input channels with --model (default: from the images).")
@training_options
def cli(**kw) -> None:
    """Fine-tune a checkpoint (or a random init) on TRAIN, evaluate on TEST.

    A new head replaces the checkpoint's; target images are converted to the
    checkpoint's channels and size. Writes the run folder (as `pretrain` does) plus
    OUT/metrics.json (test_accuracy, per_class_accuracy, n_test, params) and
    OUT/predictions.parquet (id, label, pred). The model evaluated is the last one:
    nothing is selected on test labels.
    """
    from .train import METRICS_JSON, FinetuneConfig, run

    out = run(FinetuneConfig(**kw))
    acc = json.loads((out / METRICS_JSON).read_text())["test_accuracy"]
    click.echo(f"wrote {out}: test_accuracy {acc:.4f}")


def main() -> None:
    run_cli(cli, "finetune")
