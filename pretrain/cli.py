"""`pretrain`: Pretrain a timm model on a manifest (not built yet)."""
from __future__ import annotations

import click

from manifests.cli import not_built, run_cli


@click.command(context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                 "allow_extra_args": True})
def cli() -> None:
    """Pretrain a timm model on a manifest (not built yet)."""
    not_built("pretrain", "pretrain and finetune")


def main() -> None:
    run_cli(cli, "pretrain")
