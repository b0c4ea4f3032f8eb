"""What ``curate dedup`` keeps on disk, so a killed run resumes and a rerun with other
thresholds computes nothing again.

- The TARGET side (hashes, canvas and content pixel descriptors with their views, model
  embeddings):
  one file, keyed by the target manifest's content, the model and the descriptor
  parameters. Rank 0 computes it; every rank loads it (the target is the small side).
- The SOURCE side: one file per chunk of ``--chunk-size`` rows, holding each row's best
  match under every check (similarity and target row), never the embeddings (but those of
  the few rows of the feature threshold's calibration pool, ``calibration.POOL``). The
  folder is keyed by the source manifest's content, the target key, the model, the
  index kind and the chunk size; thresholds are applied when the chunks are merged.
  A chunk file is written atomically when its chunk is done: a rerun skips it.

It only stores: what is computed comes from ``features/describe.py`` (describing images) and
``checks.py`` (matching them).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datl.core.errors import UserError
from datl.core.files import OWNED, atomic_output, claim_folder, file_sha256
from datl.manifests import Manifest

from ..features import pixel as px
from ..features.describe import Embeddings, describe_target


@dataclass
class TargetSide:
    content: px.Content
    emb: Embeddings | None  # None when the feature check is off


@dataclass
class ChunkResult:
    """Every check's best match for the source rows [start, stop)."""

    start: int
    stop: int
    exact: np.ndarray  # bool: a byte-identical copy of a target image
    exact_t: np.ndarray  # int64: the target row it copies
    psim: np.ndarray  # float32: best pixel similarity (pixel.combine of the canvas and content checks)
    ppos: np.ndarray  # int64: its target row
    fsim: np.ndarray  # float32: best feature similarity (-1: not embedded, or no feature check)
    fpos: np.ndarray  # int64: its target row
    readable: np.ndarray  # bool: the image could be read and decoded
    plain: np.ndarray  # bool: readable, but too plain for either pixel family (pixel.Content.plain)
    warned: np.ndarray  # bool: decoded, but PIL warned about the file
    # the chunk's share of the calibration pool (rows r % pool_stride == 0, embedded): their
    # manifest rows, embeddings, hashes and pixel descriptors (empty without the feature check)
    pool_rows: np.ndarray  # int64
    pool_vecs: np.ndarray  # float16 (k, d)
    pool_hashes: np.ndarray  # S16 (k,)
    pool_pixel: np.ndarray  # float16 (k, pixel.DIM)
    pool_content: np.ndarray  # float16 (k, pixel.CDIM)

    ARRAYS = (
        "exact",
        "exact_t",
        "psim",
        "ppos",
        "fsim",
        "fpos",
        "readable",
        "plain",
        "warned",
        "pool_rows",
        "pool_vecs",
        "pool_hashes",
        "pool_pixel",
        "pool_content",
    )


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]


def _save_npz(path: Path, meta: dict, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def target_path(cache_dir: Path, target: Manifest, fingerprint: str, image_size) -> Path:
    """Keyed by the target manifest's bytes, every target image file's size and mtime (a
    repaired or replaced image is read again), the model and the descriptor parameters."""
    key = _key(file_sha256(target.path), target.files_fingerprint(), fingerprint, image_size, px.PARAMS)
    return cache_dir / f"{target.path.stem}.target.{key}.npz"


def target_side(path: Path, target: Manifest, lm, d, batch_size: int, workers: int, progress: bool) -> TargetSide:
    """Compute the target side on rank 0 (unless cached), then load it on every rank."""
    from datl.neural.engine import dist

    if d.main and _load_target(path) is None:  # none yet, or unreadable (a killed disk, a bad copy)
        arrays = describe_target(target, lm, d, batch_size, workers, progress)  # before anything is cached
        _save_npz(path, {"params": px.PARAMS, "features": lm is not None}, **arrays)
    dist.barrier(d)
    side = _load_target(path)
    if side is None:
        raise UserError(path, "cannot be read back", "check the disk, delete the file and rerun")
    return side


def _load_target(path: Path) -> TargetSide | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            content = px.Content(z["hashes"], z["pixel"], z["content"], z["readable"])
            emb = Embeddings(z["rows"], z["vecs"]) if "vecs" in z.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return TargetSide(content, emb)


CACHE_NAME = re.compile(r"\.(target|chunks)\.[0-9a-f]{20}")  # what this module names its files


def claim_cache(folder: Path) -> None:
    """The default cache folder (``embeddings`` beside ``--out``) as a datl folder: made with
    datl's marker, or one that holds only this module's files (a cache from before the
    marker); a folder of the user's by that name is refused, never written into."""
    if folder.is_dir() and not (folder / OWNED).exists():
        strangers = [p.name for p in folder.iterdir() if not CACHE_NAME.search(p.name)]
        if strangers:
            raise UserError(
                folder,
                f"is not datl's dedup cache (it holds {strangers[0]!r}, which datl did not write)",
                "pass --cache FOLDER for the cache, or move that folder away",
            )
        (folder / OWNED).touch()
        return
    claim_folder(folder, "dedup cache")


def chunk_folder(cache_dir: Path, source: Manifest, target_file: Path, index: str, chunk_size: int) -> Path:
    """Keyed by everything a chunk's result depends on (the target key holds the model's)."""
    from .index import SEARCH_FORMAT

    key = _key(file_sha256(source.path), target_file.name, index, SEARCH_FORMAT, chunk_size)
    return cache_dir / f"{source.path.stem}.chunks.{key}"


def chunk_file(folder: Path, c: int) -> Path:
    return folder / f"chunk-{c:06d}.npz"


def save_chunk(path: Path, r: ChunkResult, files: str) -> None:
    """``files``: the chunk's images' fingerprint (Manifest.files_fingerprint) when computed."""
    _save_npz(
        path, {"start": r.start, "stop": r.stop, "files": files}, **{k: getattr(r, k) for k in ChunkResult.ARRAYS}
    )


def load_chunk(path: Path, files: str | None = None) -> ChunkResult | None:
    """A finished chunk, or None if there is none, it cannot be read, or (``files`` given) its
    images changed since it was computed: it is then computed again."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if files is not None and meta.get("files") != files:
                return None
            return ChunkResult(int(meta["start"]), int(meta["stop"]), *(z[k] for k in ChunkResult.ARRAYS))
    except (OSError, ValueError, KeyError, EOFError):
        return None
