"""Describing images: the one place where ``curate`` turns image files into numbers that
other code matches. The invariant: a row described here is described the same whoever asks
(``curate features`` writing its store, ``curate dedup`` reading the source from images, or
its target side), so matching from a store and matching from images agree.

Per image: the content hash and the pixel descriptors (``pixel.py``, model-free), and with a
model its pooled features, L2-normalised, in float16 (``embed``), and its logits (``describe``
with ``logits=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datl.core.errors import UserError
from datl.core.files import file_sha256
from datl.core.specs import parse_model_spec
from datl.manifests import Manifest

from . import pixel as px


@dataclass
class Embeddings:
    rows: np.ndarray  # manifest row of each embedded (readable) image
    vecs: np.ndarray  # float16 (n, d), L2-normalised


@dataclass
class Described:
    """Rows [start, stop) of a manifest, described."""

    start: int
    stop: int
    content: px.Content  # hashes and pixel descriptors of every row
    emb: Embeddings | None  # rows relative to ``start``; None without a model
    logits: np.ndarray | None = None  # float32 (len(emb.rows), classes), the rows of ``emb``


def model_fingerprint(spec: str | None, weights: str | None) -> str:
    """Changes whenever the model's weights or config change; 'none' without a model."""
    if spec is None:
        return "none"
    if parse_model_spec(spec).is_timm:
        return f"{spec}:{file_sha256(weights)}" if weights else spec
    run = Path(spec)
    return f"{file_sha256(run / 'model.safetensors')}:{file_sha256(run / 'config.json')}"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` scaled to unit length (a zero row stays near zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def embed(
    lm,
    manifest: Manifest,
    d,
    batch_size: int,
    workers: int,
    progress: bool,
    rows: tuple[int, int] | None = None,
    logits: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[Embeddings, np.ndarray | None]:
    """L2-normalised float16 model features of a manifest (or of rows [start, stop), in this
    process), and with ``logits`` the classifier's logits of the same rows from the same pass."""
    from datl.neural.engine.inference import run_model

    what = "features+logits" if logits else "features"
    idx, out, _ = run_model(lm, manifest, d, what, batch_size, workers, progress, rows=rows, on_batch=on_batch)
    dim = lm.config.num_features
    feats, lg = (out[:, :dim], out[:, dim:]) if logits else (out, None)
    if len(feats) and feats.shape[1] != dim:
        raise UserError(
            manifest.path,
            f"the model gives {feats.shape[1]}-d features but its config says {dim}",
            "rerun the stage that wrote the model",
        )
    return Embeddings(idx, l2_normalise(feats).astype(np.float16)), lg


def describe(
    manifest: Manifest,
    start: int,
    stop: int,
    lm=None,
    d=None,
    batch_size: int = 256,
    workers: int = 2,
    logits: bool = False,
    on_part: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Described:
    """Rows [start, stop) of a source manifest, in this process: hashes and pixel descriptors
    (one view each), and with a model (``lm``) the embeddings and optionally the logits.
    ``on_part(n)``, ``on_batch(n)``: n rows described by the pixel pass, by the model."""
    content = px.content_pass(manifest, views=False, rows=(start, stop), on_part=on_part)
    emb, lg = None, None
    if lm is not None:
        emb, lg = embed(lm, manifest, d, batch_size, workers, False, (start, stop), logits, on_batch)
        emb.rows = emb.rows - start
    return Described(start, stop, content, emb, lg)


def describe_target(target: Manifest, lm, d, batch_size: int, workers: int, progress: bool) -> dict[str, np.ndarray]:
    """The target side's arrays, in this process: hashes, canvas and content descriptors under
    every view (``pixel.VIEWS``, ``pixel.CVIEWS``), readability, and with a model the rows and
    embeddings of its readable images."""
    from datl.neural.engine import dist

    content = px.content_pass(target, views=True, progress=progress)
    if not content.readable.any():
        raise UserError(target.path, "has no readable image", "check it with `datl manifest validate`")
    arrays = {
        "hashes": content.hashes,
        "pixel": content.pixel,
        "content": content.content,
        "readable": content.readable,
    }
    if lm is not None:
        emb, _ = embed(lm, target, dist.Dist(0, 1, d.local_rank, d.device), batch_size, workers, progress)
        arrays.update(rows=emb.rows, vecs=emb.vecs)
    return arrays
