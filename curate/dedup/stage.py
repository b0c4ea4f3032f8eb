"""``curate dedup``: find source images that are copies or near copies of target images.
Writes duplicates.parquet: id (source), target_id, similarity, match, exact.

Streaming and rank-sharded: the source is cut into chunks of ``--chunk-size`` rows; under
torchrun rank r takes chunks r, r + world, ...; each rank computes hashes, pixel
descriptors and embeddings for ITS chunks only, queries the (small, replicated) target
indexes and writes one result file per chunk. Rank 0 then merges the chunk files in order,
applying the thresholds. Peak memory per rank grows with the chunk and the target, never
with the source; a killed run continues from its last finished chunk; a rerun with other
thresholds reads the chunk files only. Chunks are the same whatever the world size, so the
result is too.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datl.core.errors import UserError
from datl.core.files import input_hashes, refuse_clobber, refuse_foreign_default
from datl.core.options import DEVICES, opt, validate
from datl.core.progress import bar
from datl.manifests import ManifestMeta, open_manifest, write_table
from datl.manifests.address import AddressColumns

from .checks import DEFAULT_PIXEL_THRESHOLD, Duplicates, Indexes, chunk_duplicates
from .threshold import COLLAPSED_MEDIAN, Threshold

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DedupConfig:
    source: str = opt(help="Source manifest.")
    target: str = opt(help="Target manifest (every image of the target domain).")
    model: str | None = opt(
        None, help="Feature extractor: a RUN_DIR, or timm:ARCH with --weights (needed by the feature check)."
    )
    weights: str | None = opt(None, help="Local state dict for --model timm:ARCH.")
    out: str = opt(short="-o", help="duplicates.parquet to write (id, target_id, similarity, match, exact).")
    feature_threshold: float | None = opt(
        None,
        aliases=("--threshold",),
        help="Model-feature cosine similarity at or above which a source image is a near copy "
        "[default: calibrated for the model: the cosine 0.1% of source images' nearest source "
        "neighbours exceed; the feature check off when the features are collapsed].",
        bounds="(0, 1]",
    )
    pixel_threshold: float = opt(
        DEFAULT_PIXEL_THRESHOLD,
        help="Pixel-descriptor cosine similarity at or above "
        "which a source image is a near copy; 1 keeps only pixel-perfect copies.",
        bounds="(0, 1]",
    )
    feature: bool = opt(
        True, negatable=True, help="Run the model-feature check; --no-feature: exact and pixel checks only, no model."
    )
    source_features: str | None = opt(
        None,
        help="Read the source's hashes, pixel descriptors and embeddings from this feature store "
        "(`curate features`) instead of its images: no source image is opened.",
    )
    part: str | None = opt(
        None,
        noun="K/N",
        help="Check only the K-th (0-based) of N contiguous ranges of source chunks and exit without "
        "writing --out (a SLURM array task); a run without --part then merges the cached chunks.",
    )
    chunk_size: int = opt(65_536, help="Source rows per chunk: the unit of work, memory and resume.", bounds="[1, inf)")
    index: str = opt(
        "auto",
        choices=("auto", "flat", "ivf"),
        help="FAISS index over the target: flat (exact) below 50k vectors with auto, ivf above.",
    )
    cache: str | None = opt(
        None,
        output=True,
        help="Folder for the target side and the per-chunk results [default: OUT's folder/embeddings].",
    )
    calibrate: bool = opt(
        False,
        help="Also plant edited copies of target images (crop, rotate, blur, contrast, "
        "jpeg, resize, colour; recolour for colour images; flatten and rerender for "
        "transparent ones) and print recall / false positives per threshold.",
    )
    plant: int = opt(500, help="How many copies --calibrate plants.", bounds="[1, inf)")
    image_size: int | None = opt(
        None, help="Feature extractor input size (timm: models; default 224).", bounds="[1, 4096]"
    )
    batch_size: int = opt(256, bounds="[1, inf)")
    workers: int = opt(2, bounds="[0, inf)")
    device: str = opt("auto", choices=DEVICES)
    quiet: bool = opt(False, short="-q")

    def check(self) -> None:
        from ..features.store import parse_part

        validate(self)
        parse_part(self.part)
        refuse_clobber({"--out": self.out}, {"--source": self.source, "--target": self.target})
        if self.feature and not self.model:
            raise UserError(
                "curate dedup",
                "the feature check needs --model RUN_DIR (or timm:ARCH --weights FILE)",
                "pass --model, or --no-feature for the exact and pixel checks only",
            )
        if self.calibrate:  # the histogram's default path, beside --out
            refuse_foreign_default(Path(self.out).with_suffix(".calibration.png"), "--out")

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else Path(self.out).resolve().parent / "embeddings"


def run(cfg: DedupConfig) -> Path:
    """Target side on rank 0, source chunks on every rank, the merge on rank 0."""
    from datl.neural.checkpoint import load_model
    from datl.neural.engine import dist

    from ..features.describe import model_fingerprint
    from .cache import chunk_folder, claim_cache, target_path, target_side

    cfg.check()
    if cfg.cache is None:  # the default folder, beside --out: datl's own, or refused
        claim_cache(cfg.cache_dir)
    sm, tm = open_manifest(cfg.source), open_manifest(cfg.target)
    lm = load_model(cfg.model, cfg.weights, image_size=cfg.image_size) if cfg.feature else None
    fp = model_fingerprint(cfg.model if cfg.feature else None, cfg.weights)
    progress = not cfg.quiet
    store = source_store(cfg, sm, fp, lm)  # before any work: a store that does not fit is refused
    with dist.session(cfg.device) as d:
        tfile = target_path(cfg.cache_dir, tm, fp, lm.config.image_size if lm else None)
        target = target_side(tfile, tm, lm, d, cfg.batch_size, cfg.workers, progress and d.main)
        if not target.content.readable.any():
            raise UserError(cfg.target, "has no readable image", "check it with `datl manifest validate`")
        if d.main:
            warn_unreadable_target(tm, target.content.readable)
        ix = Indexes(target, cfg.index, tfile.with_suffix(""), d)
        folder = chunk_folder(cfg.cache_dir, sm, tfile, cfg.index, cfg.chunk_size)
        run_chunks(cfg, sm, ix, lm, d, folder, progress, store)
        dist.barrier(d)
        if d.main and cfg.part is None:
            merge(cfg, sm, tm, ix, lm, d, folder, progress)
        elif d.main:
            logger.info(
                f"part {cfg.part} of {sm.path.name} checked into {folder}; "
                f"run without --part to merge and write {cfg.out}"
            )
    return Path(cfg.out)


def warn_unreadable_target(tm, readable: np.ndarray) -> None:
    """A target image that cannot be read is one whose source copies nothing can find: say how
    many there are, and the first."""
    bad = np.flatnonzero(~readable)
    if not len(bad):
        return
    row = int(bad[0])
    first = AddressColumns(tm.read_range(row, row + 1, ["path", *tm.address_columns]), str(tm.folder)).address(0)
    logger.warning(
        f"warning: {len(bad):,} of {len(readable):,} target image(s) could not be read, so no source copy of them "
        f"can be found (first: {first}); fix those files (`datl manifest validate` lists them) and rerun"
    )


def chunks(n_rows: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n_rows)) for lo in range(0, n_rows, size)]


def source_store(cfg: DedupConfig, sm, fingerprint: str, lm):
    """The feature store of ``--source-features``, checked against this source and model; None
    without it."""
    from datl.core.files import file_sha256

    from ..features.store import FeatureStore

    if cfg.source_features is None:
        return None
    store = FeatureStore.open(cfg.source_features)
    store.check(file_sha256(sm.path), fingerprint, cfg.feature, lm.config.image_size if lm else None)
    return store


def run_chunks(cfg: DedupConfig, sm, ix: Indexes, lm, d, folder: Path, progress: bool, store=None) -> None:
    """This rank's chunks (c % world == rank) of its ``--part``, each skipped if its result file
    exists; described from the images, or read from ``store``."""
    from ..features.describe import describe
    from ..features.store import parse_part, part_range
    from .cache import chunk_file, load_chunk, save_chunk
    from .checks import check_chunk

    every = chunks(sm.num_rows, cfg.chunk_size)
    mine = [(c, *every[c]) for c in part_range(parse_part(cfg.part), len(every)) if c % d.world == d.rank]
    # counted in images, not chunks: a source of one chunk would otherwise show nothing for minutes
    total = sum(hi - lo for _, lo, hi in mine)
    with bar(total=total, desc=f"dedup {sm.path.name}", unit="img", enabled=progress and d.main) as b:
        todo = []
        for c, lo, hi in mine:
            path, files = chunk_file(folder, c), sm.files_fingerprint(lo, hi)
            if load_chunk(path, files) is None:
                todo.append((path, files, lo, hi))
            else:
                b.update(hi - lo)
        if store is None:
            for path, files, lo, hi in todo:
                desc = describe(sm, lo, hi, lm, d, cfg.batch_size, cfg.workers, on_part=b.update)
                save_chunk(path, check_chunk(desc, ix, sm.num_rows), files)
            return
        # from the store: the next chunk is read (I/O and decoding in Arrow, without the GIL)
        # while FAISS searches this one; two chunks in memory at most
        from concurrent.futures import ThreadPoolExecutor

        def read(i: int):
            return store.read(todo[i][2], todo[i][3], embeddings=ix.feature is not None)

        for _, files, lo, hi in todo:  # before any work: never a result from stale descriptors
            store.check_files(sm, lo, hi, files)

        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(read, 0) if todo else None
            for i, (path, files, lo, hi) in enumerate(todo):
                desc = ahead.result()
                ahead = pool.submit(read, i + 1) if i + 1 < len(todo) else None
                save_chunk(path, check_chunk(desc, ix, sm.num_rows), files)
                b.update(hi - lo)


def merge(cfg: DedupConfig, sm, tm, ix: Indexes, lm, d, folder: Path, progress: bool) -> None:
    """Stream the chunk results in order, apply the thresholds, write the pairs."""
    from .cache import chunk_file, load_chunk
    from .calibration import Tally

    def results():
        for c, _ in enumerate(chunks(sm.num_rows, cfg.chunk_size)):
            r = load_chunk(chunk_file(folder, c))
            if r is None:
                raise RuntimeError(f"chunk {c} of {sm.path} has no result in {folder}: a rank stopped early")
            yield r

    thr = feature_threshold(cfg, results())  # a first pass: the pool and the feature histogram
    ft = thr.value if thr.value is not None else np.inf
    parts: list[Duplicates] = []
    tally = Tally(cfg.pixel_threshold, ft)
    unreadable = plain = warned = 0
    for r in results():
        parts.append(chunk_duplicates(r, cfg.pixel_threshold, ft))
        ordinary = ~r.exact
        tally.add(r.psim[ordinary], r.fsim[ordinary])
        unreadable += int((~r.readable).sum())
        plain += int(r.plain.sum())
        warned += int(r.warned.sum())
    if sm.num_rows and unreadable == sm.num_rows:
        shutil.rmtree(folder, ignore_errors=True)  # the cache's own chunk files: nothing worth keeping
        raise UserError(
            sm.path, f"has no readable image (all {unreadable:,} unreadable)", "check it with `datl manifest validate`"
        )
    if not parts:  # an empty source
        parts = [
            Duplicates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, dtype="<U7"))
        ]
    dup = Duplicates(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("rows", "target_rows", "similarity", "match"))
    )
    write_duplicates(cfg, sm, tm, dup, ix, unreadable, plain, warned, thr)
    if cfg.feature and thr.value is None:
        logger.warning(
            f"note: the feature check is {thr.rule}, so it flagged nothing; pass --feature-threshold to run it "
            "anyway, or use a stronger --model"
        )
    elif warning := collapsed_features(tally, cfg, thr):
        logger.warning(warning)
    if cfg.calibrate:
        from .calibration import plant_copies, report

        with tempfile.TemporaryDirectory(prefix="datl-plant-") as tmp:  # removed however the report ends
            planted = open_manifest(plant_copies(tm, Path(tmp), cfg.plant))
            here = type(d)(0, 1, d.local_rank, d.device)
            report(ix, tally, planted, lm, here, cfg.batch_size, cfg.workers, Path(cfg.out), progress)


PLAUSIBLE_SHARE = 0.05  # more of the source than this flagged as copies of the target is suspect


def feature_threshold(cfg: DedupConfig, results) -> Threshold:
    """The feature threshold (threshold.resolve) from one pass over the chunk results: the
    median best feature similarity and the calibration pool."""
    from .calibration import EDGES, bin_index
    from .threshold import nearest_neighbours, resolve

    if not cfg.feature:
        return Threshold(None, "off (--no-feature)")
    hist = np.zeros(len(EDGES) - 1, np.int64)
    pool: dict[str, list] = {k: [] for k in ("pool_vecs", "pool_hashes", "pool_pixel", "pool_content")}
    for r in results:
        f = r.fsim[~r.exact & (r.fsim > -1)]
        hist += np.bincount(bin_index(f), minlength=len(hist))
        for k in pool:
            pool[k].append(getattr(r, k))
    median = float(EDGES[np.searchsorted(np.cumsum(hist), hist.sum() / 2)]) if hist.sum() else None
    if cfg.feature_threshold is not None:
        return resolve(cfg.feature_threshold, median, np.zeros(0))
    vecs = [v for v in pool["pool_vecs"] if len(v)]
    if not vecs:
        return resolve(None, median, np.zeros(0))
    nn = nearest_neighbours(
        np.concatenate(vecs),
        np.concatenate(pool["pool_hashes"]),
        np.concatenate(pool["pool_pixel"]),
        np.concatenate(pool["pool_content"]),
        cfg.pixel_threshold,
    )
    return resolve(None, median, nn)


def implausible_share(counts: dict[str, int], n_source: int, cfg: DedupConfig, feature: float | None) -> list[str]:
    """Warnings when the checks flag more than PLAUSIBLE_SHARE of the source: one naming each
    check that alone flags more, else one naming the check that flags the most. A source is
    rarely a twentieth copies of one target, and a check whose threshold suits one kind of
    image (digits) or one model can call look-alikes copies on another."""
    total = sum(counts.values())
    if not n_source or total <= PLAUSIBLE_SHARE * n_source:
        return []
    fix = {
        "pixel": f"raise --pixel-threshold (now {cfg.pixel_threshold})",
        "feature": f"raise --feature-threshold (now {feature}), use a stronger --model, or --no-feature",
        "exact": "check that the source does not contain the target itself",
    }
    over = [c for c in counts if counts[c] > PLAUSIBLE_SHARE * n_source] or [max(counts, key=counts.get)]
    return [
        f"warning: {total / n_source:.1%} of the source is flagged as copies of the target, "
        f"{counts[c]:,} of them ({counts[c] / n_source:.1%} of the source) by the {c} check; that is implausible "
        f"for most sources: look at the borderline pairs (`datl report`, `--calibrate`) and {fix[c]}"
        for c in over
    ]


def collapsed_features(tally, cfg: DedupConfig, thr: Threshold) -> str | None:
    """A warning when the model's features barely tell images apart: the median source image's
    best feature similarity to the target is over COLLAPSED_MEDIAN (a trained source
    classifier sits well below it; a weak one above, where its feature check flags a large
    share of ordinary images: docs/results.md)."""
    hist = tally.feature
    if not cfg.feature or hist.sum() == 0:
        return None
    from .calibration import EDGES

    median = float(EDGES[np.searchsorted(np.cumsum(hist), hist.sum() / 2)])
    if median <= COLLAPSED_MEDIAN:
        return None
    return (
        f"warning: the model's features barely tell images apart: half the source lies within {median:.2f} "
        f"(cosine) of some target image; its feature check's hits are unreliable: use a stronger --model "
        f"(a trained classifier of the source gave about 0.68), a higher --feature-threshold "
        f"(now {thr.value}), or --no-feature"
    )


def write_duplicates(
    cfg: DedupConfig, sm, tm, dup: Duplicates, ix: Indexes, unreadable: int, plain: int, warned: int, thr: Threshold
) -> None:
    rows = dup.rows.astype(np.int64)
    sid = pa.concat_tables(sm.iter_take(rows, ["id"]), promote_options="none") if len(rows) else None
    tid = tm.read(["id"]).column("id")  # the target is the small side
    table = pa.table(
        {
            "id": sid.column("id") if sid is not None else pa.array([], pa.string()),
            "target_id": tid.take(pa.array(dup.target_rows.astype(np.int64))),
            "similarity": pa.array(dup.similarity.astype(np.float32), pa.float32()),
            "match": pa.array([str(m) for m in dup.match], pa.string()),
            "exact": pa.array(dup.match == "exact"),
        }
    )
    write_table(
        cfg.out,
        table,
        ManifestMeta(
            stage="dedup",
            params={
                "threshold": thr.value,
                "threshold_rule": thr.rule,
                "pixel_threshold": cfg.pixel_threshold,
                "model": cfg.model,
                "feature": cfg.feature,
                "source_features": cfg.source_features,
                "index": ix.description,
                "unreadable_source_images": unreadable,
                "plain_source_images": plain,
                "warned_source_images": warned,
            },
            inputs=input_hashes(source=cfg.source, target=cfg.target),
        ),
    )
    counts = {k: int(np.sum(dup.match == k)) for k in ("exact", "pixel", "feature")}
    desc = ix.description
    share = len(rows) / max(sm.num_rows, 1)
    logger.info(
        f"wrote {cfg.out}: {len(rows):,} of {sm.num_rows:,} source images ({share:.2%}) duplicate a target "
        f"image ({counts['exact']:,} byte-identical, {counts['pixel']:,} pixel >= {cfg.pixel_threshold}, "
        f"{counts['feature']:,} feature{f' >= {thr.value}' if thr.value is not None else ' (check off)'}); "
        f"index: pixel {desc['pixel']}; content {desc['content']}; feature {desc['feature']}"
    )
    if cfg.feature:
        value = f"{thr.value:.4f}" if thr.value is not None else "off"
        logger.info(f"feature threshold {value}: {thr.rule}")
    for warning in implausible_share(counts, sm.num_rows, cfg, thr.value):
        logger.warning(warning)
    if plain:
        logger.info(
            f"note: {plain:,} source image(s) are too plain for the pixel check (over 90% background, or "
            f"nearly blank); only the exact{' and feature checks' if cfg.feature else ' check'} saw them"
        )
    if warned:
        logger.warning(
            f"note: {warned:,} source image(s) decoded with a warning from PIL and were checked as decoded "
            "(`datl manifest validate` lists them)"
        )
    if unreadable:
        logger.warning(
            f"warning: {unreadable:,} source image(s) could not be read; they were checked by nothing "
            "(`datl manifest validate` lists them)"
        )
