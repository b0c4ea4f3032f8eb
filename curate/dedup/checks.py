"""The three checks of ``curate dedup`` and how their hits combine.

Three checks, all always on; a source image caught by any of them is a duplicate of the
target image it matched (``match`` says which check):

- ``exact``: sha256 of every file's bytes; a source file byte-identical to a target file
  is a duplicate (similarity 1.0) whatever the thresholds or the model.
- ``pixel``: the model-free thumbnail descriptor of ``pixel.py`` (107 views
  per target image); cosine similarity >= ``--pixel-threshold``. Catches edited copies
  (crop, blur, JPEG, resize, colour, recolour, small rotation) without being fooled by two
  different images of one class.
- ``feature``: the model's pooled features, L2-normalised; cosine similarity >=
  ``--threshold``. Catches what survives in the model's eyes but not in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pixel as px
from .cache import ChunkResult, Embeddings, TargetSide
from .index import INDEX_FORMAT, PIXEL_REDUCE, best_match, cached_index, describe

DEFAULT_THRESHOLD = 0.96  # model features; see README: calibrated with `curate dedup --calibrate`
DEFAULT_PIXEL_THRESHOLD = 0.96  # pixel descriptor; same calibration


class Indexes:
    """The target's FAISS indexes, the same on every rank: its pixel views, and its model
    embeddings (None without the feature check). Rank 0 builds them once per target, model
    and index kind into the cache (IVF training is the costly part); every rank reads them."""

    def __init__(self, target: TargetSide, kind: str, stem: Path, d):
        from datl.neural.engine import dist

        def views() -> np.ndarray:
            return target.content.pixel.reshape(-1, target.content.pixel.shape[-1])

        self.target = target

        def file(name: str) -> Path:
            return stem.with_name(f"{stem.name}.{name}-{kind}-{INDEX_FORMAT}.faiss")

        reduce = {"pixel": PIXEL_REDUCE, "feature": None}
        for name, vectors in (("pixel", views), ("feature", (lambda: target.emb.vecs) if target.emb else None)):
            if vectors is not None and d.main:
                cached_index(file(name), vectors, kind, build=True, reduce=reduce[name])
        dist.barrier(d)
        self.pixel = cached_index(file("pixel"), views, kind, build=False)
        self.feature = cached_index(file("feature"), None, kind, build=False) if target.emb is not None else None
        self.description = {
            "pixel": describe(self.pixel),
            "feature": describe(self.feature) if self.feature is not None else "off",
        }


def check_chunk(source, start: int, stop: int, ix: Indexes, lm, d, batch_size: int, workers: int) -> ChunkResult:
    """Every check's best match for the source rows [start, stop), computed in this process."""
    from .cache import embed

    content = px.content_pass(source, views=False, rows=(start, stop))
    exact, exact_t = exact_matches(content, ix.target.content)
    psim, ppos = pixel_best(ix.pixel, content)
    n = stop - start
    fsim, fpos = np.full(n, -1.0, np.float32), np.zeros(n, np.int64)
    if ix.feature is not None:
        emb = embed(lm, source, d, batch_size, workers, False, rows=(start, stop))
        emb.rows = emb.rows - start
        fsim, fpos = feature_best(ix.feature, emb, ix.target.emb, n)
    plain = content.readable & ~content.pixel.any(axis=-1)  # decoded, yet the zero descriptor: is_plain
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
        plain,
        content.warned,
    )


@dataclass
class Duplicates:
    rows: np.ndarray  # source manifest rows, ascending, each once
    target_rows: np.ndarray  # the target row each one duplicates
    similarity: np.ndarray  # float32 cosine of the check that caught it (1.0 for exact)
    match: np.ndarray  # "exact" | "pixel" | "feature"


def pixel_best(index, src: px.Content) -> tuple[np.ndarray, np.ndarray]:
    """Best similarity to any crop view of any target image; position // VIEWS is the target row."""
    sims, pos = best_match(index, src.pixel)
    return sims, pos // px.VIEWS


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
