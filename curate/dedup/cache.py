"""The dedup caches, so a rerun with other thresholds computes nothing again.

Model embeddings (float16, L2-normalised) are cached per manifest and model (the key
holds the manifest's and the model's content hashes; the file records the model and its
feature size), hashes and pixel descriptors per manifest; a changed model gets
embeddings of its own, never mixed with the old ones.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests import Manifest, UserError, atomic_output, file_sha256

from . import pixel as px


@dataclass
class Embeddings:
    rows: np.ndarray  # manifest row of each embedded (readable) image
    vecs: np.ndarray  # float16 (n, d), L2-normalised
    rebuilt: bool = False


def model_fingerprint(spec: str, weights: str | None) -> str:
    """Changes whenever the model's weights or config change."""
    if spec.startswith("timm:"):
        return f"{spec}:{file_sha256(weights)}" if weights else spec
    run = Path(spec)
    return f"{file_sha256(run / 'model.safetensors')}:{file_sha256(run / 'config.json')}"


def cache_path(cache_dir: Path, manifest: Manifest, fingerprint: str, image_size: list[int]) -> Path:
    key = hashlib.sha256(f"{file_sha256(manifest.path)}|{fingerprint}|{image_size}".encode()).hexdigest()[:20]
    return cache_dir / f"{manifest.path.stem}.{key}.npz"


def load_cache(path: Path, dim: int, fingerprint: str) -> Embeddings | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("fingerprint") != fingerprint or int(meta.get("dim", -1)) != dim:
            return None  # written by another model: rebuild, never mix
        return Embeddings(z["rows"], z["vecs"])


def _save_npz(path: Path, meta: dict, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def embed(lm, manifest: Manifest, d, cache_dir: Path | None, fingerprint: str, batch_size: int, workers: int,
          progress: bool) -> Embeddings | None:
    """Model embeddings of a manifest, from the cache when it is current. None on ranks > 0."""
    from datl_torch.engine.inference import run_model

    dim = lm.config.num_features
    path = cache_path(cache_dir, manifest, fingerprint, lm.config.image_size) if cache_dir else None
    if path is not None:  # every rank decides alike, or the others would wait in gather for ever
        cached = load_cache(path, dim, fingerprint)
        if cached is not None:
            return cached if d.main else None
    stale = path is not None and path.exists()  # same key, other model inside: rebuild, never mix
    rows, feats, _ = run_model(lm, manifest, d, "features", batch_size, workers, progress)
    if not d.main:
        return None
    if feats.shape[1] != dim:
        raise UserError(manifest.path, f"the model gives {feats.shape[1]}-d features but its config says {dim}",
                        "rerun the stage that wrote the model")
    emb = Embeddings(rows, normalise(feats).astype(np.float16), rebuilt=stale)
    if path is not None:
        _save_npz(path, {"fingerprint": fingerprint, "dim": dim}, rows=emb.rows, vecs=emb.vecs)
    return emb


def content(manifest: Manifest, cache_dir: Path | None, views: bool, progress: bool) -> px.Content:
    """Hashes and pixel descriptors (target: with crop views), cached per manifest content."""
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{file_sha256(manifest.path)}|{px.PARAMS}|{views}".encode()).hexdigest()[:20]
        path = cache_dir / f"{manifest.path.stem}.content.{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                return px.Content(z["hashes"], z["pixel"])
    c = px.content_pass(manifest, views, threads=max(4, 2 * len(os.sched_getaffinity(0))), progress=progress)
    if path is not None:
        _save_npz(path, {"params": px.PARAMS, "views": views}, hashes=c.hashes, pixel=c.pixel)
    return c
