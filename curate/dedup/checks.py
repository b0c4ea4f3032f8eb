"""The three checks of ``curate dedup`` and how their hits combine.

Three checks, all always on; a source image caught by any of them is a duplicate of the
target image it matched (``match`` says which check):

- ``exact``: sha256 of every file's bytes; a source file byte-identical to a target file
  is a duplicate (similarity 1.0) whatever the thresholds or the model.
- ``pixel``: the model-free thumbnail descriptors of ``pixel.py``, of the canvas (107 views
  per target image) and of the content trimmed from it (8 views); the better of the two
  (``pixel.combine``: a content match is held to a stricter cosine) >= ``--pixel-threshold``.
  Catches edited copies (crop, blur, JPEG, resize, colour, recolour, small rotation, a drawing
  padded onto a larger canvas or cut tight to itself, blown up or shrunk) without being fooled
  by two different images of one class.
- ``feature``: the model's pooled features, L2-normalised; cosine similarity >=
  ``--feature-threshold``, calibrated for the model when not given (``threshold.py``).
  Catches what survives in the model's eyes but not in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..features import pixel as px
from ..features.describe import Described, Embeddings
from .cache import ChunkResult, TargetSide
from .index import CONTENT_REFINE_K, INDEX_FORMAT, PIXEL_REDUCE, REFINE_K, best_match, cached_index, describe

DEFAULT_PIXEL_THRESHOLD = 0.96  # pixel descriptor; same calibration


class Indexes:
    """The target's FAISS indexes, the same on every rank: its canvas and content pixel views,
    and its model embeddings (None without the feature check). Rank 0 builds them once per target, model
    and index kind into the cache (IVF training is the costly part); every rank reads them."""

    def __init__(self, target: TargetSide, kind: str, stem: Path, d):
        from datl.neural.engine import dist

        def views() -> np.ndarray:
            return target.content.pixel.reshape(-1, px.DIM)

        def content_views() -> np.ndarray:
            return target.content.content.reshape(-1, px.CDIM)

        self.target = target

        def file(name: str) -> Path:
            return stem.with_name(f"{stem.name}.{name}-{kind}-{INDEX_FORMAT}.faiss")

        reduce = {"pixel": PIXEL_REDUCE, "content": PIXEL_REDUCE, "feature": None}
        refine = {"pixel": REFINE_K, "content": CONTENT_REFINE_K, "feature": REFINE_K}
        built = {"pixel": views, "content": content_views, "feature": (lambda: target.emb.vecs) if target.emb else None}
        ix = {}
        if d.main:  # rank 0 builds what is missing, then every other rank reads it
            ix = {
                n: cached_index(file(n), v, kind, True, reduce[n], refine[n], reduce_flat=n == "content")
                for n, v in built.items()
                if v
            }
        dist.barrier(d)
        if not d.main:
            ix = {n: cached_index(file(n), None, kind, False, refine=refine[n]) for n, v in built.items() if v}
        self.pixel, self.content, self.feature = ix["pixel"], ix["content"], ix.get("feature")
        self.description = {
            "pixel": describe(self.pixel),
            "content": describe(self.content),
            "feature": describe(self.feature) if self.feature is not None else "off",
        }


def check_chunk(desc: Described, ix: Indexes, n_rows: int) -> ChunkResult:
    """Every check's best match for the described source rows [desc.start, desc.stop) of a
    manifest of ``n_rows`` rows (described from images or read from a feature store: the same)."""
    start, stop, content = desc.start, desc.stop, desc.content
    exact, exact_t = exact_matches(content, ix.target.content)
    psim, ppos = pixel_best(ix.pixel, ix.content, content)
    n = stop - start
    fsim, fpos = np.full(n, -1.0, np.float32), np.zeros(n, np.int64)
    pool = empty_pool(content)
    if ix.feature is not None:
        fsim, fpos = feature_best(ix.feature, desc.emb, ix.target.emb, n)
        pool = pool_of(desc.emb, content, start, pool_stride(n_rows))
    return ChunkResult(
        start,
        stop,
        exact,
        exact_t,
        psim.astype(np.float32),
        ppos.astype(np.int64),
        fsim,
        fpos,
        content.readable,
        content.plain,
        content.warned,
        *pool,
    )


def pool_stride(n_rows: int) -> int:
    """Every pool_stride-th source row is in the feature threshold's calibration pool: about
    ``calibration.POOL`` rows spread evenly over the manifest, whatever the chunks or ranks."""
    from .threshold import POOL

    return max(1, n_rows // POOL)


def empty_pool(content: px.Content) -> tuple[np.ndarray, ...]:
    return (
        np.zeros(0, np.int64),
        np.zeros((0, 0), np.float16),
        np.zeros(0, content.hashes.dtype),
        np.zeros((0, px.DIM), np.float16),
        np.zeros((0, px.CDIM), np.float16),
    )


def pool_of(emb: Embeddings, content: px.Content, start: int, stride: int) -> tuple[np.ndarray, ...]:
    """The embedded rows of this chunk that are in the calibration pool (see ``pool_stride``)."""
    keep = np.flatnonzero((emb.rows + start) % stride == 0)
    local = emb.rows[keep]
    return (
        (local + start).astype(np.int64),
        emb.vecs[keep],
        content.hashes[local],
        content.pixel[local],
        content.content[local],
    )


@dataclass
class Duplicates:
    rows: np.ndarray  # source manifest rows, ascending, each once
    target_rows: np.ndarray  # the target row each one duplicates
    similarity: np.ndarray  # float32 cosine of the check that caught it (1.0 for exact)
    match: np.ndarray  # "exact" | "pixel" | "feature"


def pixel_best(canvas, content, src: px.Content) -> tuple[np.ndarray, np.ndarray]:
    """(pixel similarity, target row) per source row: the better of the best canvas match over
    every canvas view of every target image and the best content match (``pixel.combine``)."""
    csims, cpos = best_match(canvas, src.pixel)
    tsims, tpos = best_match(content, src.content)
    zero = ~src.content.any(axis=-1)  # no content descriptor (plain, unreadable): no content match
    tsims = np.where(zero, -1.0, tsims)
    mixed = px.combine(csims, tsims)
    return mixed, np.where(csims >= mixed, cpos // px.VIEWS, tpos // px.CVIEWS)


def feature_best(index, src: Embeddings, tgt: Embeddings, n_source: int) -> tuple[np.ndarray, np.ndarray]:
    """Best feature similarity per source row (-1 where the image could not be embedded)."""
    sims = np.full(n_source, -1.0, np.float32)
    pos = np.zeros(n_source, np.int64)
    s, p = best_match(index, src.vecs)
    sims[src.rows], pos[src.rows] = s, tgt.rows[p] if len(p) else p
    return sims, pos


def exact_matches(src: px.Content, tgt: px.Content) -> tuple[np.ndarray, np.ndarray]:
    """(is a byte-identical copy, the target row it copies) per source row."""
    exact = np.isin(src.hashes, tgt.hashes) & (src.hashes != b"")  # b"": unreadable file
    order = np.argsort(tgt.hashes, kind="stable")  # first target row of each hash
    where = np.searchsorted(tgt.hashes[order], src.hashes)
    first = order[np.clip(where, 0, max(len(order) - 1, 0))] if len(order) else np.zeros(len(exact), np.int64)
    return exact, first.astype(np.int64)


def chunk_duplicates(r: ChunkResult, pixel_threshold: float, threshold: float) -> Duplicates:
    """The duplicates among one chunk's rows (manifest row numbers)."""
    dup = find_duplicates((r.exact, r.exact_t), (r.psim, r.ppos), (r.fsim, r.fpos), pixel_threshold, threshold)
    dup.rows += r.start
    return dup


def find_duplicates(exact: tuple, pixel: tuple, feature: tuple, pixel_threshold: float, threshold: float) -> Duplicates:
    """Combine the three checks, each a (hit or similarity, target row) pair per source row.

    A row caught by several checks is reported under the first of exact, pixel, feature.
    """
    is_exact, ex_t = exact
    psim, ppos = pixel
    fsim, fpos = feature
    is_pixel = ~is_exact & (psim >= pixel_threshold)
    is_feature = ~is_exact & ~is_pixel & (fsim >= threshold)
    rows = np.flatnonzero(is_exact | is_pixel | is_feature)
    e, pm = is_exact[rows], is_pixel[rows]
    target = np.where(e, ex_t[rows], np.where(pm, ppos[rows], fpos[rows]))
    sim = np.where(e, 1.0, np.where(pm, psim[rows], fsim[rows]))
    match = np.where(e, "exact", np.where(pm, "pixel", "feature"))
    return Duplicates(rows.astype(np.int64), target.astype(np.int64), np.minimum(sim, 1.0).astype(np.float32), match)
