"""`finetune`: move a pretrained backbone to the target's classes and evaluate it."""

from __future__ import annotations

import json

import click

from datl.core.cli import CONTEXT, run_cli
from datl.core.options import options_from

from .config import FinetuneConfig


@click.command(context_settings=CONTEXT)
@options_from(FinetuneConfig)
def cli(**kw) -> None:
    """Fine-tune a checkpoint (or a random init) on TRAIN, evaluate on TEST.

    A new head replaces the checkpoint's; target images are converted to the
    checkpoint's channels and size. Writes the run folder (as `pretrain` does) plus
    OUT/metrics.json (test_accuracy, per_class_accuracy, n_test, params; with
    --val also val_accuracy and n_val) and OUT/predictions.parquet (id, label,
    pred). The model evaluated is the last one: nothing is selected on test labels.
    """
    from .evaluate import METRICS_JSON
    from .train import run

    out = run(FinetuneConfig(**kw))
    metrics = json.loads((out / METRICS_JSON).read_text())
    val = f", val_accuracy {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else ""
    click.echo(f"wrote {out}: test_accuracy {metrics['test_accuracy']:.4f}{val}")


def main() -> None:
    run_cli(cli, "finetune")
