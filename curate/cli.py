"""`curate`: estimate P_t(y), weight the source classes, dedup against the target, sample.

Each command's options are its stage config's fields (one definition of each default);
the body builds the config and runs the stage."""

from __future__ import annotations

import click

from datl.core.cli import CONTEXT, run_cli
from datl.core.options import options_from

from .dedup.stage import DedupConfig
from .estimate.stage import EstimateConfig
from .features.stage import FeaturesConfig
from .sample import SampleConfig
from .weight import WeightConfig


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """Curate a target-matched pretraining set (Ngiam et al. 2018).

    \b
    curate estimate  P_t(y) over the source classes, from a classifier run on the unlabeled target
    curate weight    w(y) = P_t(y) / P_s(y) per source class, with a plot
    curate features  the source described once (hashes, pixel descriptors, embeddings) for many targets
    curate dedup     source images that are near-duplicates of target images
    curate sample    the pretraining set, drawn by weight
    """


@cli.command()
@options_from(EstimateConfig)
def estimate(**kw) -> None:
    """Estimate P_t(y) over the SOURCE classes on the unlabeled target. Rank-sharded under torchrun."""
    from .estimate.stage import run

    run(EstimateConfig(**kw))


@cli.command()
@options_from(WeightConfig)
def weight(**kw) -> None:
    """Importance weight w(y) = P_t(y) / P_s(y) per source class, and a plot to inspect.

    Columns: label, class_name, n_source, p_source, p_target, weight (+ n_excluded
    with --exclude). Classes with target mass but no source image are dropped and
    P_t renormalised over the rest.

    With --per-image, also image_weights.parquet: one row per source image (id, label,
    log_odds, ratio, weight), w(x) = w(y) * r(x) with r a domain classifier's density ratio
    on the feature stores' embeddings, normalised within each class; `curate sample
    --image-weights` draws by it.
    """
    from .weight import run

    run(WeightConfig(**kw))


@cli.command()
@options_from(SampleConfig)
def sample(**kw) -> None:
    """Sample the pretraining set by weight into a manifest (source columns + weight + draw).

    Relative image paths are rewritten relative to OUT's folder, so the sample can live
    anywhere."""
    from .sample import run

    run(SampleConfig(**kw))


@cli.command()
@options_from(FeaturesConfig)
def features(**kw) -> None:
    """Describe the source once into a feature store: per image its content hash, pixel
    descriptors and, with --model, its embedding and logits.

    \b
    `curate dedup --source-features DIR` then reads the store instead of the source images,
    for as many targets as you like. Streaming, resumable (one Parquet part per chunk,
    written atomically), rank-sharded under torchrun; --part K/N splits it over a job array.
    """
    from .features.stage import run

    run(FeaturesConfig(**kw))


@cli.command()
@options_from(DedupConfig)
def dedup(**kw) -> None:
    """Find source images that are copies or near copies of target images.

    Three checks: byte-identical files (content hash, whatever the model); pixel
    descriptors (a 16x16 thumbnail correlation against 107 views of each target
    image: crops, two small rotations, one on black, three with hues turned; a
    thumbnail over 90% background or nearly blank matches nothing); and the model's
    pooled features. The target is indexed with FAISS, the source streamed through
    it. Everything is cached, so new thresholds are instant.
    """
    from .dedup.stage import run

    run(DedupConfig(**kw))


def main() -> None:
    run_cli(cli, "curate")
