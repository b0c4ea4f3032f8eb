"""A real colour test set for dedup, built from Debian's icon themes (issue 18).

Source: the Oxygen theme's 48x48 PNG icons (KDE; RGBA, palette and LA modes, most pixels
transparent). Target: the MATE theme's 48x48 icons: another project's drawings of the same
things (look-alikes, never copies). The icon's context folder (actions, apps, devices, ...)
is its class. Planted into the source: edited copies of target images, one edit each,
cycling through every edit of ``curate dedup --calibrate`` that applies to a transparent
colour image (crop, rotate, blur, contrast, jpeg, resize, colour, recolour, flatten,
rerender: curate/dedup/calibration.py), and, reported apart, ``redraw``: the same icon as
MATE itself draws it at 32x32 px, a separate hand-hinted drawing, not an edit of the image.

Used by tests/curate/test_dedup_colour.py and bench/colour_dedup.py. Nothing is downloaded
at run time: the themes are Debian packages (apt-get, from the package registry).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

ICONS = Path("/usr/share/icons")
SOURCE_GLOB = "oxygen/base/48x48/*/*.png"
TARGET_GLOB = "mate/48x48/*/*.png"
PACKAGES = ("oxygen-icon-theme", "mate-icon-theme")
REDRAW = "redraw"  # the theme's own 32 px drawing: reported apart from the edits


def icon_files() -> tuple[list[str], list[str]]:
    return sorted(glob.glob(str(ICONS / SOURCE_GLOB))), sorted(glob.glob(str(ICONS / TARGET_GLOB)))


@dataclass
class IconSet:
    source: Path  # manifest: ordinary Oxygen icons + planted copies
    target: Path  # manifest: MATE icons
    planted: dict[str, tuple[str, str]]  # planted id -> (target id it copies, edit)
    ordinary: list[str]  # ids of the ordinary source icons (none copies a target icon)
    modes: dict[str, int]  # file mode (+transparency) -> count, over source and target files


def _id(f: str) -> str:
    return str(Path(f).relative_to(ICONS)).replace("/", "_")


def _manifest(out: Path, ids: list[str], paths: list[str], labels: list[int], classes: list[str]) -> Path:
    from datl.manifests import ManifestMeta, write_manifest

    t = pa.table({"id": ids, "path": paths, "label": pa.array(labels, pa.int32())})
    return write_manifest(out, t, ManifestMeta(classes=classes))


def build_icon_set(work: Path, n_plant: int, seed: int, every: int = 1, redraw: bool = True) -> IconSet:
    """Write the set under ``work``. ``every``: keep every k-th icon of each theme (a smaller
    set for the test suite); ``seed`` picks the planted target images and their edits."""
    from collections import Counter

    from PIL import Image

    from datl.curate.dedup.calibration import edits_for, plant_one

    src_files, tgt_files = icon_files()
    if not src_files or not tgt_files:
        raise FileNotFoundError(f"no icons under {ICONS}: apt-get install {' '.join(PACKAGES)}")
    src_files, tgt_files = src_files[::every], tgt_files[::every]
    classes = sorted({Path(f).parent.name for f in src_files + tgt_files})
    work.mkdir(parents=True, exist_ok=True)
    tgt_ids = [_id(f) for f in tgt_files]
    target = _manifest(
        work / "target.parquet", tgt_ids, tgt_files, [classes.index(Path(f).parent.name) for f in tgt_files], classes
    )

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(tgt_files), size=min(n_plant, len(tgt_files)), replace=False))
    folder = work / f"planted-s{seed}"
    folder.mkdir(exist_ok=True)
    planted: dict[str, tuple[str, str]] = {}
    paths = []
    for j, i in enumerate(pick):
        src = tgt_files[int(i)]
        data = Path(src).read_bytes()
        kinds = edits_for(data) + ((REDRAW,) if redraw else ())
        kind = kinds[j % len(kinds)]
        name = folder / f"planted-{j:05d}.png"
        if kind == REDRAW:
            other = Path(src.replace("/48x48/", "/32x32/"))
            if not other.exists():
                continue
            name.write_bytes(other.read_bytes())
        else:
            plant_one(data, kind, rng).save(name)
        planted[name.stem] = (tgt_ids[int(i)], kind)
        paths.append(str(name))
    ordinary = [_id(f) for f in src_files]
    source = _manifest(
        work / f"source-s{seed}.parquet",
        ordinary + list(planted),
        src_files + paths,
        [classes.index(Path(f).parent.name) for f in src_files] + [0] * len(planted),
        classes,
    )
    modes: Counter = Counter()
    for f in src_files + tgt_files:
        with Image.open(f) as im:
            modes[im.mode + ("+transparency" if "transparency" in im.info else "")] += 1
    return IconSet(source, target, planted, ordinary, dict(modes))


def score(icons: IconSet, flagged: set[str]) -> dict:
    """Recall per edit, overall (without ``redraw``), and the false-positive rate on ordinary icons."""
    from collections import Counter

    tot = Counter(e for _, e in icons.planted.values())
    hit = Counter(e for i, (_, e) in icons.planted.items() if i in flagged)
    edits = [e for e in tot if e != REDRAW]
    n_edit = sum(tot[e] for e in edits)
    fp = sum(1 for i in icons.ordinary if i in flagged)
    return {
        "recall": {e: (hit[e], tot[e]) for e in tot},
        "recall_edits": sum(hit[e] for e in edits) / max(n_edit, 1),
        "n_edits": n_edit,
        "false_positives": fp,
        "n_ordinary": len(icons.ordinary),
        "fp_rate": fp / max(len(icons.ordinary), 1),
    }
