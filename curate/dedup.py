"""``curate dedup``: source images that are copies or near copies of target images.

Two checks, both always on:

- exact: the sha256 of every file's bytes; a source file byte-identical to a target
  file is a duplicate (similarity 1.0) whatever the threshold or the model.
- near: L2-normalised pooled features of the model; the TARGET is indexed with FAISS
  and source embeddings stream through it as queries (k = 1); a source image whose
  best cosine similarity reaches ``--threshold`` is a duplicate of that target image.

Embeddings (float16) and hashes are cached per manifest and model (the cache key holds
the manifest's and the model's content hashes, and the file records the model and its
feature size), so a rerun with another threshold does not embed again, and a changed
model gets embeddings of its own: never mixed with the old ones.

Index (``--index``): ``flat`` is exact inner product (IndexFlatIP). ``ivf``
(IndexIVFFlat, inner product) uses nlist = 4 * sqrt(n_target) lists (at least 1, at most
n_target / 39 so each list trains on 39 points) and probes nprobe = 2 of them: a near
copy sits next to its original, so it falls in the original's list or, near a cell
boundary, the neighbouring one. bench/dedup.py measured recall 1.0 of 10,000 planted
copies with nprobe 2, and 29x flat's speed (nprobe 4: 17x, 8: 13.5x, 19: 6x). ``auto`` takes flat
below 50,000 target images, where it is fast enough and exact, and ivf above.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests import Manifest, UserError, atomic_output, file_sha256

AUTO_FLAT_MAX = 50_000
DEFAULT_THRESHOLD = 0.90  # see README: calibrated on the demo with `curate dedup --calibrate`
HASH_BYTES = 16


@dataclass
class Embeddings:
    rows: np.ndarray  # manifest row of each embedded (readable) image
    vecs: np.ndarray  # float16 (n, d), L2-normalised
    hashes: np.ndarray  # S16 content hash for every manifest row (b"" when unreadable)
    rebuilt: bool = False


# -- content hashes ------------------------------------------------------------------------
def _hash_file(path: str) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return b""
    return h.digest()[:HASH_BYTES]


def content_hashes(manifest: Manifest, threads: int = 8) -> np.ndarray:
    out = []
    with ThreadPoolExecutor(threads) as pool:
        for batch in manifest.iter_batches(["path"], batch_size=8192):
            out.extend(pool.map(_hash_file, (manifest.resolve(p) for p in batch.column(0).to_pylist())))
    return np.array(out, dtype=f"S{HASH_BYTES}")


# -- embeddings, cached -----------------------------------------------------------------------
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
        return Embeddings(z["rows"], z["vecs"], z["hashes"])


def save_cache(path: Path, emb: Embeddings, dim: int, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"fingerprint": fingerprint, "dim": dim})
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, rows=emb.rows, vecs=emb.vecs, hashes=emb.hashes, meta=np.array(meta))


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def embed(lm, manifest: Manifest, d, cache_dir: Path | None, fingerprint: str, batch_size: int, workers: int,
          progress: bool) -> Embeddings | None:
    """Embeddings and hashes of a manifest, from the cache when it is current. None on ranks > 0."""
    from .infer import run_model

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
    emb = Embeddings(rows, normalise(feats).astype(np.float16), content_hashes(manifest), rebuilt=stale)
    if path is not None:
        save_cache(path, emb, dim, fingerprint)
    return emb


# -- the index -------------------------------------------------------------------------------
def ivf_params(n: int) -> tuple[int, int]:
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 39))
    return nlist, min(nlist, 2)


def build_index(target: np.ndarray, kind: str = "auto"):
    """FAISS inner-product index over L2-normalised target vectors; returns (index, description)."""
    import faiss

    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    x = np.ascontiguousarray(target, dtype=np.float32)
    n, dim = x.shape
    if kind == "auto":
        kind = "flat" if n < AUTO_FLAT_MAX else "ivf"
    if kind == "flat" or n < 39:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index, f"flat (exact), {n:,} target vectors"
    if kind != "ivf":
        raise UserError("--index", f"unknown index '{kind}'", "pass auto, flat or ivf")
    nlist, nprobe = ivf_params(n)
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)  # owns its quantizer
    rng = np.random.default_rng(0)
    train = x if n <= 256 * nlist else x[rng.choice(n, 256 * nlist, replace=False)]
    index.train(train)
    index.add(x)
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index, f"ivf, nlist {nlist}, nprobe {nprobe}, {n:,} target vectors"


def best_match(index, queries: np.ndarray, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine similarity, target position) for every query, streamed in chunks."""
    sims, pos = [], []
    for i in range(0, len(queries), chunk):
        s, p = index.search(np.ascontiguousarray(queries[i:i + chunk], dtype=np.float32), 1)
        sims.append(s[:, 0])
        pos.append(p[:, 0])
    if not sims:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(sims), np.concatenate(pos)


def find_duplicates(src: Embeddings, tgt: Embeddings, index, threshold: float):
    """(source rows, target rows, similarity, exact) of every duplicate, each source row once."""
    exact = np.isin(src.hashes, tgt.hashes) & (src.hashes != b"")  # b"": unreadable file
    ex_rows = np.flatnonzero(exact)
    first_target = {}
    for r, h in enumerate(tgt.hashes):  # the target is the small side
        first_target.setdefault(h, r)
    ex_t = np.array([first_target[h] for h in src.hashes[ex_rows]], dtype=np.int64)
    sims, pos = best_match(index, src.vecs)
    near = (sims >= threshold) & ~exact[src.rows]
    nr, nt, ns = src.rows[near], tgt.rows[pos[near]], np.minimum(sims[near], 1.0)
    rows = np.concatenate([ex_rows, nr]).astype(np.int64)
    order = np.argsort(rows, kind="stable")
    return (rows[order], np.concatenate([ex_t, nt]).astype(np.int64)[order],
            np.concatenate([np.ones(len(ex_rows), np.float32), ns.astype(np.float32)])[order],
            np.concatenate([np.ones(len(ex_rows), bool), np.zeros(len(nr), bool)])[order])


# -- calibration: planted augmented copies ----------------------------------------------------
AUGMENTATIONS = ("crop", "rotate", "blur", "contrast", "jpeg", "resize", "colour")


def augment(img, kind: str, rng: np.random.Generator):
    """One of the edits that make a near copy: what a scraped duplicate of a target image looks like."""
    from PIL import Image, ImageEnhance, ImageFilter

    w, h = img.size
    if kind == "crop":
        f = rng.uniform(0.85, 0.95)
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    if kind == "rotate":
        return img.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.0))))
    if kind == "contrast":
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
        return ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))
    if kind == "jpeg":
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
        return Image.open(io.BytesIO(buf.getvalue())).convert(img.mode)
    if kind == "resize":
        f = float(rng.choice([0.75, 1.5, 2.0]))
        return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)
    if kind == "colour":
        return img.convert("L").convert("RGB") if img.mode != "L" else img.convert("RGB")
    raise ValueError(kind)


def plant_copies(target: Manifest, folder: Path, n: int, seed: int = 0) -> Path:
    """Write augmented copies of ``n`` target images (one edit each, cycling through every
    kind) and a manifest of them whose ``target_id`` says which image each copies."""
    import pyarrow as pa
    from PIL import Image

    from manifests import ManifestMeta, write_manifest

    rng = np.random.default_rng(seed)
    t = target.read(["id", "path"])
    pick = np.sort(rng.choice(t.num_rows, size=min(n, t.num_rows), replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    ids, paths, of, kinds = [], [], [], []
    for j, i in enumerate(pick):
        kind = AUGMENTATIONS[j % len(AUGMENTATIONS)]
        with Image.open(target.resolve(t.column("path")[int(i)].as_py())) as im:
            img = augment(im.convert("L" if im.mode in ("L", "1", "P") else "RGB"), kind, rng)
        name = f"planted-{j:05d}.png"
        img.save(folder / name)
        ids.append(f"planted-{j:05d}")
        paths.append(name)
        of.append(t.column("id")[int(i)].as_py())
        kinds.append(kind)
    table = pa.table({"id": ids, "path": paths, "target_id": of, "edit": kinds})
    return write_manifest(folder / "planted.parquet", table, ManifestMeta(stage="dedup-calibration"))


def calibration_table(planted: np.ndarray, ordinary: np.ndarray,
                      thresholds=(0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)) -> list[tuple]:
    """(threshold, recall on planted copies, false-positive rate on ordinary source images)."""
    return [(t, float((planted >= t).mean()) if len(planted) else 0.0,
             float((ordinary >= t).mean()) if len(ordinary) else 0.0) for t in thresholds]


def plot_calibration(planted: np.ndarray, ordinary: np.ndarray, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    bins = np.linspace(min(planted.min(initial=1), ordinary.min(initial=1), 0.5), 1.0, 101)
    ax.hist(ordinary, bins=bins, alpha=0.6, density=True, label=f"ordinary source images (n={len(ordinary):,})")
    ax.hist(planted, bins=bins, alpha=0.6, density=True, label=f"planted edited copies of target (n={len(planted):,})")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("best cosine similarity to any target image")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.set_title("curate dedup --calibrate: where near copies and ordinary images fall")
    ax.legend()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
