"""``curate dedup``: find source images that are copies or near copies of target images.
Writes duplicates.parquet: id (source), target_id, similarity, match, exact."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa

from datl_torch.engine.config import DEVICES
from manifests import ManifestMeta, UserError, input_hashes, open_manifest, write_table
from manifests.cli import opt

from .checks import DEFAULT_PIXEL_THRESHOLD, DEFAULT_THRESHOLD, Checks, Duplicates, run_checks


@dataclass(kw_only=True)
class DedupConfig:
    source: str = opt(help="Source manifest.")
    target: str = opt(help="Target manifest (every image of the target domain).")
    model: str = opt(help="Feature extractor: a RUN_DIR, or timm:ARCH with --weights.")
    weights: str | None = opt(None, help="Local state dict for --model timm:ARCH.")
    out: str = opt(short="-o", help="duplicates.parquet to write (id, target_id, similarity, match, exact).")
    threshold: float = opt(DEFAULT_THRESHOLD, help="Model-feature cosine similarity at or above which a source "
                                                   "image is a near copy.")
    pixel_threshold: float = opt(DEFAULT_PIXEL_THRESHOLD, help="Pixel-descriptor cosine similarity at or above "
                                 "which a source image is a near copy; 1 keeps only pixel-perfect copies.")
    index: str = opt("auto", choices=("auto", "flat", "ivf"),
                     help="FAISS index over the target: flat (exact) below 50k vectors with auto, ivf above.")
    cache: str | None = opt(None, help="Folder for cached embeddings [default: OUT's folder/embeddings].")
    calibrate: bool = opt(False, help="Also plant edited copies of target images and print recall / false "
                                      "positives per threshold.")
    plant: int = opt(500, help="How many copies --calibrate plants.")
    image_size: int | None = opt(None, help="Feature extractor input size (timm: models; default 224).")
    batch_size: int = opt(256)
    workers: int = opt(2)
    device: str = opt("auto", choices=DEVICES)
    quiet: bool = opt(False, short="-q")

    def check(self) -> None:
        for name, t in (("--threshold", self.threshold), ("--pixel-threshold", self.pixel_threshold)):
            if not 0.0 < t <= 1.0:
                raise UserError(name, f"{t} is outside (0, 1]", "pass a cosine similarity such as 0.96")

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.out).resolve().parent / "embeddings"


def run(cfg: DedupConfig) -> Path:
    """Embed target and source (rank-sharded), run the three checks on rank 0, write the pairs."""
    from datl_torch.checkpoint import load_model
    from datl_torch.engine import dist

    from .cache import content, embed, model_fingerprint

    cfg.check()
    sm, tm = open_manifest(cfg.source), open_manifest(cfg.target)
    lm = load_model(cfg.model, cfg.weights, image_size=cfg.image_size)
    fp = model_fingerprint(cfg.model, cfg.weights)
    progress = not cfg.quiet
    with dist.session(cfg.device) as d:
        temb = embed(lm, tm, d, cfg.cache_dir, fp, cfg.batch_size, cfg.workers, progress)
        semb = embed(lm, sm, d, cfg.cache_dir, fp, cfg.batch_size, cfg.workers, progress)
        planted = planted_emb = None
        if cfg.calibrate:
            from .calibration import plant_copies

            planted = open_manifest(plant_copies(tm, Path(tempfile.mkdtemp(prefix="datl-plant-")), cfg.plant))
            planted_emb = embed(lm, planted, d, None, fp, cfg.batch_size, cfg.workers, progress)
        if not d.main:
            return Path(cfg.out)
        if len(temb.rows) == 0:
            raise UserError(cfg.target, "has no readable image", "check it with `datl manifest validate`")
        if temb.rebuilt or semb.rebuilt:
            click.echo("note: cached embeddings from another model were rebuilt, not mixed", err=True)
        checks = run_checks(content(sm, cfg.cache_dir, False, progress), content(tm, cfg.cache_dir, True, progress),
                            semb, temb, sm.num_rows, cfg.index)
        dup = checks.duplicates(cfg.pixel_threshold, cfg.threshold)
        write_duplicates(cfg, sm, tm, dup, checks)
        if planted is not None:
            from .calibration import report

            report(checks, planted, planted_emb, cfg.pixel_threshold, cfg.threshold, Path(cfg.out), progress)
    return Path(cfg.out)


def write_duplicates(cfg: DedupConfig, sm, tm, dup: Duplicates, checks: Checks) -> None:
    sid = pa.concat_tables(sm.iter_take(dup.rows, ["id"]), promote_options="none") if len(dup.rows) else None
    tid = tm.read(["id"]).column("id")  # the target is the small side
    table = pa.table({"id": sid.column("id") if sid is not None else pa.array([], pa.string()),
                      "target_id": tid.take(pa.array(dup.target_rows)),
                      "similarity": pa.array(dup.similarity, pa.float32()),
                      "match": pa.array(dup.match.tolist(), pa.string()),
                      "exact": pa.array(dup.match == "exact")})
    write_table(cfg.out, table, ManifestMeta(stage="dedup", params={
        "threshold": cfg.threshold, "pixel_threshold": cfg.pixel_threshold, "model": cfg.model,
        "index": checks.index_description}, inputs=input_hashes(source=cfg.source, target=cfg.target)))
    counts = {k: int(np.sum(dup.match == k)) for k in ("exact", "pixel", "feature")}
    desc = checks.index_description
    click.echo(f"wrote {cfg.out}: {len(dup.rows):,} of {sm.num_rows:,} source images duplicate a target image "
               f"({counts['exact']:,} byte-identical, {counts['pixel']:,} pixel >= {cfg.pixel_threshold}, "
               f"{counts['feature']:,} feature >= {cfg.threshold}); index: pixel {desc['pixel']}; "
               f"feature {desc['feature']}")
