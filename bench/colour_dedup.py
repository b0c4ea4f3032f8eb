"""Dedup on real transparent colour images: Debian's icon themes (issue 18).

Source: the Oxygen theme's 48x48 PNG icons (KDE; RGBA, palette and LA modes). Target: the
MATE theme's 48x48 icons (another project's drawings of the same things: look-alikes, not
copies). The icon's context folder (actions, apps, devices, ...) is its class. Planted into
the source: edited copies of target images, one edit each, cycling through the
--calibrate edits (crop, rotate, blur, contrast, jpeg, resize, colour) and three more that
colour images meet: ``recolour`` (hue turned), ``flatten`` (the transparent original
flattened on black, no alpha left) and ``rerender`` (the same icon as MATE draws it at
another size, 32/24/22 px, when the theme has it).

Prints, for `curate dedup --no-feature` (exact + pixel checks; no model) at the default
threshold, each check and index:

    recall per edit and overall   (goal >= 0.95)
    false-positive rate           ordinary Oxygen icons flagged (goal <= 0.5%)

    apt-get install oxygen-icon-theme mate-icon-theme     # once
    python bench/colour_dedup.py [--index auto|flat|ivf] [--work /tmp/datl-colour]
"""
from __future__ import annotations

import argparse
import colorsys
import glob
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.dedup.calibration import AUGMENTATIONS, augment  # noqa: E402
from manifests import ManifestMeta, write_manifest  # noqa: E402
from manifests.images import load_image  # noqa: E402

EDITS = (*AUGMENTATIONS, "recolour", "flatten", "rerender")
ICONS = Path("/usr/share/icons")


def icon_manifest(files: list[str], out: Path, classes: list[str]) -> Path:
    t = pa.table({"id": [str(Path(f).relative_to(ICONS)).replace("/", "_") for f in files], "path": files,
                  "label": pa.array([classes.index(Path(f).parent.name) for f in files], pa.int32())})
    return write_manifest(out, t, ManifestMeta(classes=classes))


def recolour(img: Image.Image, rng) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    turn = float(rng.uniform(0.25, 0.75))
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in a.reshape(-1, 3)])
    hsv[:, 0] = (hsv[:, 0] + turn) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(*p) for p in hsv]).reshape(a.shape)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def flatten_on_black(path: str) -> Image.Image:
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    black.alpha_composite(rgba)
    return black.convert("RGB")


def rerendered(path: str) -> str | None:
    p = Path(path)
    for size in ("32x32", "24x24", "22x22"):
        other = Path(str(p).replace("/48x48/", f"/{size}/"))
        if other.exists():
            return str(other)
    return None


def plant(target: pa.Table, folder: Path, n: int, seed: int = 0) -> tuple[list[str], list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(target.num_rows, size=min(n, target.num_rows), replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    ids, paths, of, edits = [], [], [], []
    for j, i in enumerate(pick):
        edit = EDITS[j % len(EDITS)]
        src = target.column("path")[int(i)].as_py()
        if edit == "rerender":
            other = rerendered(src)
            if other is None:
                continue
            img = load_image(other, "RGB")
        elif edit == "flatten":
            img = flatten_on_black(src)
        elif edit == "recolour":
            img = recolour(load_image(src, "RGB"), rng)
        else:
            img = augment(load_image(src, "RGB"), edit, rng)
        name = folder / f"planted-{j:05d}.png"
        img.save(name)
        ids.append(f"planted-{j:05d}")
        paths.append(str(name))
        of.append(target.column("id")[int(i)].as_py())
        edits.append(edit)
    return ids, paths, of, edits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/datl-colour")
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "ivf"])
    ap.add_argument("--plant", type=int, default=500)
    args = ap.parse_args()
    src_files = sorted(glob.glob(str(ICONS / "oxygen/base/48x48/*/*.png")))
    tgt_files = sorted(glob.glob(str(ICONS / "mate/48x48/*/*.png")))
    if not src_files or not tgt_files:
        sys.exit("needs the icon themes: apt-get install oxygen-icon-theme mate-icon-theme")
    classes = sorted({Path(f).parent.name for f in src_files + tgt_files})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    target = icon_manifest(tgt_files, work / "target.parquet", classes)
    tt = pq.read_table(target)
    ids, paths, of, edits = plant(tt, work / "planted", args.plant)
    ordinary = pq.read_table(icon_manifest(src_files, work / "ordinary.parquet", classes))
    source = pa.table({"id": ordinary.column("id").to_pylist() + ids,
                       "path": ordinary.column("path").to_pylist() + paths,
                       "label": pa.array(ordinary.column("label").to_pylist() + [0] * len(ids), pa.int32())})
    source_path = write_manifest(work / "source.parquet", source, ManifestMeta(classes=classes))
    modes = Counter()
    for f in src_files + tgt_files:
        with Image.open(f) as im:
            modes[im.mode + ("+transparency" if "transparency" in im.info else "")] += 1
    out = work / f"dups-{args.index}.parquet"
    res = subprocess.run([str(Path(sys.executable).parent / "curate"), "dedup", "--source", str(source_path),
                          "--target", str(target), "--no-feature", "--index", args.index, "--out", str(out),
                          "--cache", str(work / "cache"), "-q"], capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    flagged = set(pq.read_table(out).column("id").to_pylist())
    tot, hit = Counter(edits), Counter(e for i, e in zip(ids, edits) if i in flagged)
    n_ord = ordinary.num_rows
    fp = sum(1 for i in ordinary.column("id").to_pylist() if i in flagged)
    print(f"icons: {len(src_files):,} Oxygen (source), {len(tgt_files):,} MATE (target); modes {dict(modes)}")
    print(f"index {args.index}: {res.stdout.strip().splitlines()[0][:160]}")
    for e in EDITS:
        if tot[e]:
            print(f"  recall {e:9s} {hit[e]:3d}/{tot[e]:3d} = {hit[e] / tot[e]:.3f}")
    print(f"recall {sum(hit.values()) / len(ids):.3f} of {len(ids)} planted copies (goal >= 0.95); "
          f"false positives {fp}/{n_ord} = {fp / n_ord:.2%} of ordinary icons (goal <= 0.5%)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
