"""`pretrain`: train any timm architecture on a labeled manifest."""

from __future__ import annotations

import click

from datl.core.cli import CONTEXT, run_cli
from datl.core.options import options_from

from .config import PretrainConfig


@click.command(context_settings=CONTEXT)
@options_from(PretrainConfig)
def cli(**kw) -> None:
    """Pretrain a timm model on a labeled manifest into a run folder.

    Writes OUT/model.safetensors, config.json (arch, classes, image size, channels,
    mean/std, class prior, params), metrics.jsonl and state.pt (for --resume).
    Runs alone or under `torchrun --nproc_per_node N` (DDP; nccl on CUDA, gloo on CPU).
    """
    from .train import run

    out = run(PretrainConfig(**kw))
    click.echo(f"wrote {out}")


def main() -> None:
    run_cli(cli, "pretrain")
