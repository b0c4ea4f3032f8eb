"""``curate features``: one streaming pass over a source manifest into a feature store
(``store.py``), so that any number of targets are deduplicated against the source without
opening a source image again (``curate dedup --source-features``).

The invariant: the store's part c holds the source rows of chunk c described exactly as
``curate dedup`` describes them from images (``describe.py``), whoever wrote it. Chunks of
``--chunk-size`` rows are the unit of work, memory and resume: under torchrun rank r writes
chunks r, r + world, ... of its range; ``--part K/N`` narrows the range to the K-th of N
contiguous ranges of chunks and exits, so a SLURM job array, Ray tasks or a shell loop spread
the pass over machines with no coordinator. A finished part whose images did not change is
skipped; the store is complete when every part is, whichever process wrote it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datl.core.errors import UserError
from datl.core.files import claim_folder, file_sha256
from datl.core.options import DEVICES, opt, validate
from datl.core.progress import bar
from datl.manifests import open_manifest

from . import pixel as px
from .describe import describe, model_fingerprint
from .store import Binding, FeatureStore, parse_part, part_range

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FeaturesConfig:
    source: str = opt(help="Source manifest to describe.")
    out: str = opt(short="-o", output=True, help="Folder of the feature store (made if missing; resumed if it is one).")
    model: str | None = opt(
        None,
        help="Also store this model's embeddings (float16) and logits: a RUN_DIR, or timm:ARCH with --weights "
        "[default: none: hashes and pixel descriptors only, what `curate dedup --no-feature` needs].",
    )
    weights: str | None = opt(None, help="Local state dict for --model timm:ARCH.")
    image_size: int | None = opt(None, help="Model input size (timm: models; default 224).", bounds="[1, 4096]")
    part: str | None = opt(
        None,
        noun="K/N",
        help="Write only the K-th (0-based) of N contiguous ranges of chunks, then exit (a SLURM array task: "
        "--part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT) [default: every chunk].",
    )
    chunk_size: int = opt(
        65_536, help="Source rows per part file: the unit of work, memory and resume.", bounds="[1, inf)"
    )
    batch_size: int = opt(256, bounds="[1, inf)")
    workers: int = opt(2, bounds="[0, inf)")
    device: str = opt("auto", choices=DEVICES)
    quiet: bool = opt(False, short="-q")

    def check(self) -> None:
        validate(self)
        parse_part(self.part)
        if Path(self.out).resolve() == Path(self.source).resolve():
            raise UserError("--out", f"is the source manifest {self.source}", "pass a new folder for the store")


def run(cfg: FeaturesConfig) -> Path:
    """Describe this process's chunks of its part into the store; say how complete it is."""
    from datl.neural.checkpoint import load_model
    from datl.neural.engine import dist

    cfg.check()
    part = parse_part(cfg.part)
    sm = open_manifest(cfg.source)
    lm = load_model(cfg.model, cfg.weights, image_size=cfg.image_size) if cfg.model else None
    binding = Binding(
        source_sha256=file_sha256(sm.path),
        rows=sm.num_rows,
        chunk_size=cfg.chunk_size,
        descriptor=px.PARAMS,
        model=model_fingerprint(cfg.model, cfg.weights),
        image_size=list(lm.config.image_size) if lm else None,
        embedding_dim=lm.config.num_features if lm else None,
        classes=lm.config.num_classes if lm else None,
    )
    with dist.session(cfg.device) as d:
        if d.main:  # the folder and its store.json first, then every rank opens it
            claim_folder(cfg.out, "feature store")
            FeatureStore.create(cfg.out, binding)
        dist.barrier(d)
        store = FeatureStore.create(cfg.out, binding)  # refuses a store of something else, on every rank
        chunks = part_range(part, binding.chunks)
        mine = [c for c in chunks if c % d.world == d.rank]
        todo = []
        for c in mine:
            lo, hi = binding.chunk(c)
            files = sm.files_fingerprint(lo, hi)
            if store.part_files(c) != files:
                todo.append((c, files))
        # in images, twice with a model (its pixel pass, then its model pass, chunk by chunk)
        total = sum(binding.chunk(c)[1] - binding.chunk(c)[0] for c, _ in todo) * (2 if lm else 1)
        label = f"features {sm.path.name}" + (" (pixels + model)" if lm else "")
        with bar(total=total, desc=label, unit="img", enabled=not cfg.quiet and d.main) as b:
            for c, files in todo:
                lo, hi = binding.chunk(c)
                described = describe(
                    sm, lo, hi, lm, d, cfg.batch_size, cfg.workers, lm is not None, on_part=b.update, on_batch=b.update
                )
                store.write(c, described, sm.read_range(lo, hi, ["id"]).column("id").combine_chunks(), files)
        dist.barrier(d)
        if d.main:
            report(store, chunks, part)
    return Path(cfg.out)


def report(store: FeatureStore, chunks: range, part: tuple[int, int] | None) -> None:
    """One line: what this run covered, and whether the store is complete."""
    b = store.binding
    missing = store.missing()
    what = f"part {part[0]}/{part[1]} (chunks {chunks.start}-{chunks.stop - 1})" if part else "every chunk"
    if not missing:
        logger.info(
            f"wrote {store.folder}: {what}; the store is complete: {b.chunks:,} parts, {b.rows:,} images "
            f"(model: {'none' if b.model == 'none' else b.model[:24]})"
        )
    else:
        logger.info(
            f"wrote {store.folder}: {what}; {len(missing):,} of {b.chunks:,} parts still missing "
            f"(first: {store.part_path(missing[0]).name}): run the other --part values, then dedup can read it"
        )
