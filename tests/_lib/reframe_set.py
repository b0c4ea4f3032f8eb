"""Colour dedup sets where copies are re-framed, as people re-frame clip-art (issue 25).

Two pairs of Debian icon themes, each a source theme and a target theme by other artists:

- ``design``: Oxygen's 256 px and 64 px icons as the source (KDE), Tango's 32 px and 22 px
  icons as the target.
  The descriptors' rules were chosen on this pair only.
- ``holdout``: Moka's 256 px icons as the source, Faenza's 96 px and 48 px icons as the target. Kept
  aside: measured once, at the end, never looked at while designing.

Source images that are not copies are the source theme's icons, framed as clip-art is: a third
as they are, a third on a larger transparent canvas (1.2-4x each side, the icon anywhere on
it), a third on a larger white canvas saved as JPEG. Those whose name also exists in the target
theme are look-alikes: the same thing drawn by another artist, never a copy. (GNOME's
icons were not used: many are Tango's own drawings.) Each theme's distinct drawings only: themes
link many names to one file.

Planted into the source: copies of the target's images of the first (larger) size, one
re-framing each (``EDITS``):

    pad       the icon scaled 4-12x, on a canvas 1.5-4x larger (transparent PNG or white JPEG)
    tight     cut to its content box (no margin), scaled 2-6x, on white or transparent
    upscale   the whole icon 6x larger (nearest or bicubic)
    shrink    the whole icon at half size
    recolour  every hue turned by 0.15-0.85 of the circle (HLS), then padded as ``pad``

Used by bench/colour_reframe.py. Nothing is downloaded at run time: the themes are Debian
packages.
"""

from __future__ import annotations

import colorsys
import glob
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

ICONS = Path("/usr/share/icons")
PAIRS = {
    "design": (
        ("oxygen/base/256x256/*/*.png", "oxygen/base/64x64/*/*.png"),
        ("Tango/32x32/*/*.png", "Tango/22x22/*/*.png"),
    ),
    "holdout": (("Moka/256x256/*/*.png",), ("Faenza/*/96/*.png", "Faenza/*/48/*.png")),
}
PACKAGES = {
    "design": ("oxygen-icon-theme", "tango-icon-theme"),
    "holdout": ("moka-icon-theme", "faenza-icon-theme"),
}
EDITS = ("pad", "tight", "upscale", "shrink", "recolour")


@dataclass
class ReframeSet:
    source: Path
    target: Path
    planted: dict[str, tuple[str, str]]  # planted id -> (target id it copies, edit)
    ordinary: list[str]  # source ids that copy nothing
    lookalike: dict[str, str]  # ordinary source id -> the target id of the same name


def _id(f: str) -> str:
    return str(Path(f).relative_to(ICONS)).replace("/", "_")


def _manifest(out: Path, ids: list[str], paths: list[str]) -> Path:
    from datl.manifests import ManifestMeta, write_manifest

    t = pa.table({"id": ids, "path": paths, "label": pa.array([0] * len(ids), pa.int32())})
    return write_manifest(out, t, ManifestMeta(classes=["icon"]))


def _canvas(img, rng: np.random.Generator, jpeg: bool, lo: float = 1.2, hi: float = 4.0):
    """``img`` (RGBA) somewhere on a canvas lo-hi times larger each side: transparent, or white
    (for a JPEG)."""
    from PIL import Image

    w, h = img.size
    cw, ch = round(w * rng.uniform(lo, hi)), round(h * rng.uniform(lo, hi))
    canvas = Image.new("RGBA", (cw, ch), (255, 255, 255, 255 if jpeg else 0))
    canvas.alpha_composite(img, (int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))))
    return canvas


def _save(img, path: Path, jpeg: bool) -> Path:
    from PIL import Image

    if jpeg:
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.getchannel("A"))
        path = path.with_suffix(".jpg")
        flat.save(path, format="JPEG", quality=90)
    else:
        img.save(path.with_suffix(".png"))
        path = path.with_suffix(".png")
    return path


def _scale(img, f: float, nearest: bool = False):
    from PIL import Image

    w, h = img.size
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.NEAREST if nearest else Image.BICUBIC)


def _recolour(img, turn: float):
    from PIL import Image

    a = np.asarray(img.convert("RGBA"), np.float32) / 255.0
    out = a.copy()
    flat = a[..., :3].reshape(-1, 3)
    res = np.array(
        [colorsys.hls_to_rgb((hh + turn) % 1.0, ll, ss) for hh, ll, ss in map(lambda p: colorsys.rgb_to_hls(*p), flat)]
    )
    out[..., :3] = res.reshape(a.shape[:2] + (3,))
    return Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), "RGBA")


def plant(img, edit: str, rng: np.random.Generator):
    """(edited copy as RGBA, save as JPEG) for one re-framing of ``EDITS``."""
    img = img.convert("RGBA")
    if edit == "pad":
        jpeg = bool(rng.integers(2))
        return _canvas(_scale(img, rng.uniform(4, 12)), rng, jpeg, 1.5, 4.0), jpeg
    if edit == "tight":
        box = img.getchannel("A").point(lambda v: 255 if v > 16 else 0).getbbox() or (0, 0, *img.size)
        return _scale(img.crop(box), rng.uniform(2, 6)), bool(rng.integers(2))
    if edit == "upscale":
        return _scale(img, 6.0, nearest=bool(rng.integers(2))), False
    if edit == "shrink":
        return _scale(img, 0.5), False
    if edit == "recolour":
        jpeg = bool(rng.integers(2))
        return _canvas(_scale(_recolour(img, rng.uniform(0.15, 0.85)), rng.uniform(4, 12)), rng, jpeg, 1.5, 4.0), jpeg
    raise ValueError(edit)


def _files(globs) -> list[str]:
    """The theme's files, without its dangling links (Moka's 256 px set has two)."""
    return sorted(f for g in globs for f in glob.glob(str(ICONS / g)) if Path(f).exists())


def _distinct(files: list[str]) -> list[str]:
    """One name per drawing: themes link many names to one file, and ship byte-identical copies."""
    seen, out = set(), []
    for f in files:
        key = hashlib.sha256(Path(f).read_bytes()).digest()
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def build_reframe_set(work: Path, pair: str, n_plant: int, seed: int) -> ReframeSet:
    from PIL import Image

    src_globs, tgt_globs = PAIRS[pair]
    src_all, tgt_all = _files(src_globs), _files(tgt_globs)
    src_files, tgt_files = _distinct(src_all), _distinct(tgt_all)
    if not src_files or not tgt_files:
        raise FileNotFoundError(f"no icons under {ICONS}: apt-get install {' '.join(PACKAGES[pair])}")
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tgt_ids = [_id(f) for f in tgt_files]
    kept = {os.path.realpath(f): i for f, i in zip(tgt_files, tgt_ids, strict=True)}
    by_name = {Path(f).name: kept[os.path.realpath(f)] for f in tgt_all if os.path.realpath(f) in kept}
    target = _manifest(work / f"{pair}-target.parquet", tgt_ids, tgt_files)

    framed = work / f"{pair}-source"
    framed.mkdir(exist_ok=True)
    ids, paths, lookalike = [], [], {}
    for j, f in enumerate(src_files):  # the ordinary source: framed as clip-art is
        sid = _id(f)
        way = j % 3
        if way == 0:
            p = f
        else:
            with Image.open(f) as im:
                p = str(_save(_canvas(im.convert("RGBA"), rng, way == 2), framed / f"{j:06d}", way == 2))
        ids.append(sid)
        paths.append(p)
        if Path(f).name in by_name:
            lookalike[sid] = by_name[Path(f).name]
    ordinary = list(ids)

    folder = work / f"{pair}-planted-s{seed}"
    folder.mkdir(exist_ok=True)
    large = [k for k, f in enumerate(tgt_files) if f in set(_files(tgt_globs[:1]))]
    pick = np.sort(rng.choice(large, size=min(n_plant, len(large)), replace=False))
    planted = {}
    for j, i in enumerate(pick):
        edit = EDITS[j % len(EDITS)]
        with Image.open(tgt_files[int(i)]) as im:
            img, jpeg = plant(im, edit, rng)
        p = _save(img, folder / f"planted-{j:05d}", jpeg)
        planted[p.stem] = (tgt_ids[int(i)], edit)
        ids.append(p.stem)
        paths.append(str(p))
    source = _manifest(work / f"{pair}-source-s{seed}.parquet", ids, paths)
    return ReframeSet(source, target, planted, ordinary, lookalike)


def score(s: ReframeSet, flagged: dict[str, str]) -> dict:
    """``flagged``: source id -> the target id it was matched to. Recall per edit (found, and
    found with the right target), the share of ordinary images flagged, the share of look-alikes
    flagged as copies of their own look-alike."""
    tot = Counter(e for _, e in s.planted.values())
    hit = Counter(e for i, (_, e) in s.planted.items() if i in flagged)
    right = Counter(e for i, (t, e) in s.planted.items() if flagged.get(i) == t)
    n = sum(tot.values())
    return {
        "recall": {e: (hit[e], right[e], tot[e]) for e in EDITS},
        "recall_all": sum(hit.values()) / max(n, 1),
        "n_planted": n,
        "flagged": sum(1 for i in s.ordinary if i in flagged) / max(len(s.ordinary), 1),
        "n_ordinary": len(s.ordinary),
        "lookalike": sum(1 for i, t in s.lookalike.items() if flagged.get(i) == t) / max(len(s.lookalike), 1),
        "n_lookalike": len(s.lookalike),
    }
