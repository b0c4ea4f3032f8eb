"""``curate dedup``: source images that are copies or near copies of target images.

Three checks, all always on; a source image caught by any of them is a duplicate of the
target image it matched (``match`` says which check):

- ``exact``: sha256 of every file's bytes; a source file byte-identical to a target file
  is a duplicate (similarity 1.0) whatever the thresholds or the model.
- ``pixel``: the model-free thumbnail descriptor of ``curate/pixel.py`` (76 crop views
  per target image); cosine similarity >= ``--pixel-threshold``. Catches edited copies
  (crop, blur, JPEG, resize, colour, small rotation) without being fooled by two
  different images of one class.
- ``feature``: the model's pooled features, L2-normalised; cosine similarity >=
  ``--threshold``. Catches what survives in the model's eyes but not in pixels.

The TARGET is indexed with FAISS (one index per descriptor) and source descriptors
stream through it as queries (k = 1). Model embeddings (float16) are cached per manifest
and model (the key holds the manifest's and the model's content hashes; the file records
the model and its feature size), hashes and pixel descriptors per manifest, so a rerun
with other thresholds computes nothing again, and a changed model gets embeddings of its
own: never mixed with the old ones.

Index (``--index``): ``flat`` is exact inner product (IndexFlatIP). ``ivf``
(IndexIVFFlat, inner product) uses nlist = 4 * sqrt(n) lists (at least 1, at most
n / 39 so each list trains on 39 points) and probes nprobe = 2 of them: a near copy sits
next to its original, so it falls in the original's list or, near a cell boundary, the
neighbouring one. bench/dedup.py measured recall 1.0 of 10,000 planted copies with
nprobe 2, and 29x flat's speed (nprobe 4: 17x, 8: 13.5x, 19: 6x). ``auto`` takes flat
below 50,000 indexed vectors, where it is fast enough and exact, and ivf above.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests import Manifest, UserError, atomic_output, file_sha256

from . import pixel as px

AUTO_FLAT_MAX = 50_000
DEFAULT_THRESHOLD = 0.96  # model features; see README: calibrated with `curate dedup --calibrate`
DEFAULT_PIXEL_THRESHOLD = 0.96  # pixel descriptor; same calibration


@dataclass
class Embeddings:
    rows: np.ndarray  # manifest row of each embedded (readable) image
    vecs: np.ndarray  # float16 (n, d), L2-normalised
    rebuilt: bool = False


# -- caches ----------------------------------------------------------------------------------
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


@dataclass
class Duplicates:
    rows: np.ndarray  # source manifest rows, ascending, each once
    target_rows: np.ndarray  # the target row each one duplicates
    similarity: np.ndarray  # float32 cosine of the check that caught it (1.0 for exact)
    match: np.ndarray  # "exact" | "pixel" | "feature"


def pixel_index(tgt: px.Content, kind: str):
    """Index over every crop view of every target image; position // VIEWS is the target row."""
    views = tgt.pixel.reshape(-1, tgt.pixel.shape[-1])
    return build_index(views, kind)


def pixel_best(index, src: px.Content) -> tuple[np.ndarray, np.ndarray]:
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


def find_duplicates(exact: tuple, pixel: tuple, feature: tuple, pixel_threshold: float,
                    threshold: float) -> Duplicates:
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
    return Duplicates(rows.astype(np.int64), target.astype(np.int64),
                      np.minimum(sim, 1.0).astype(np.float32), match)


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


THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)


def rates(planted: np.ndarray, ordinary: np.ndarray) -> tuple[float, float]:
    """(recall on planted copies, false-positive rate on ordinary source images) of boolean hits."""
    return (float(planted.mean()) if len(planted) else 0.0, float(ordinary.mean()) if len(ordinary) else 0.0)


def calibration_table(planted: np.ndarray, ordinary: np.ndarray, thresholds=THRESHOLDS) -> list[tuple]:
    """(threshold, recall on planted copies, false-positive rate on ordinary source images)."""
    return [(t, *rates(planted >= t, ordinary >= t)) for t in thresholds]


def plot_calibration(channels: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> None:
    """One panel per check: histograms of planted and ordinary similarities, and its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(channels), figsize=(7 * len(channels), 4.8), constrained_layout=True,
                             squeeze=False)
    for ax, (name, (planted, ordinary, threshold)) in zip(axes[0], channels.items()):
        lo = min(planted.min(initial=1), ordinary.min(initial=1), 0.5)
        bins = np.linspace(max(lo, -1.0), 1.0, 101)
        ax.hist(ordinary, bins=bins, alpha=0.6, density=True, label=f"ordinary source images (n={len(ordinary):,})")
        ax.hist(planted, bins=bins, alpha=0.6, density=True,
                label=f"planted edited copies of target (n={len(planted):,})")
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.2f}")
        ax.set_xlabel(f"best {name} cosine similarity to any target image")
        ax.set_ylabel("density")
        ax.set_yscale("log")
        ax.set_title(f"{name} check")
        ax.legend(fontsize=8)
    fig.suptitle("curate dedup --calibrate: where near copies and ordinary images fall")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
