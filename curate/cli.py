"""`curate`: estimate P_t(y), weight, dedup and sample the source (stages not built yet)."""
from __future__ import annotations

import click

from manifests.cli import not_built, run_cli

CONTEXT = {"help_option_names": ["-h", "--help"], "ignore_unknown_options": True, "allow_extra_args": True}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Curate a target-matched pretraining set (Ngiam et al. 2018)."""


@cli.command(context_settings=CONTEXT)
def estimate() -> None:
    """Estimate P_t(y) over the source classes on the unlabeled target (not built yet)."""
    not_built("curate estimate", "curate estimate | weight | sample")


@cli.command(context_settings=CONTEXT)
def weight() -> None:
    """Importance weights P_t(y) / P_s(y) per source class (not built yet)."""
    not_built("curate weight", "curate estimate | weight | sample")


@cli.command(context_settings=CONTEXT)
def dedup() -> None:
    """Find source images that are near-duplicates of target images (not built yet)."""
    not_built("curate dedup", "curate dedup")


@cli.command(context_settings=CONTEXT)
def sample() -> None:
    """Sample the pretraining set by weight (not built yet)."""
    not_built("curate sample", "curate estimate | weight | sample")


def main() -> None:
    run_cli(cli, "curate")
