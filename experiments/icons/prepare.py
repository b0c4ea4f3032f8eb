"""The held-out pair for per-image weights (issue 29): Oxygen icons as the labeled source, MATE
icons as the target. Two projects' artists drew the same things, so a class's target images
(MATE's "devices") look unlike its source images (Oxygen's "devices"): the label-shift
assumption fails by construction. Nothing of this pair was looked at while per-image weights
were designed (tests/curate/test_image_weights.py and the digit demo were).

Classes: the icon's context folder (actions, apps, categories, devices, emblems, emotes,
mimetypes, places, status). Source: Oxygen's 32, 48 and 64 px drawings (the same icon at three
sizes is three rows; the pipeline trains at 48 px). Target: MATE's 48 px icons, split per class
and by a seeded shuffle into an unlabeled pool (40%), train (20%), val (15%) and test (25%).
Nothing is downloaded: the themes are Debian packages (apt-get install oxygen-icon-theme
mate-icon-theme).

    python experiments/icons/prepare.py            # writes experiments/icons/data/*.parquet
    datl run experiments/icons/pipeline.yaml
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from datl.manifests import ManifestMeta, write_manifest

ICONS = Path("/usr/share/icons")
CLASSES = ["actions", "apps", "categories", "devices", "emblems", "emotes", "mimetypes", "places", "status"]
SPLITS = (("target_unlabeled", 0.40), ("target_train", 0.20), ("target_val", 0.15), ("target_test", 0.25))


def rows(pattern: str) -> tuple[list[str], list[str], list[int]]:
    ids, paths, labels = [], [], []
    for f in sorted(glob.glob(str(ICONS / pattern))):
        cls = Path(f).parent.name
        if cls in CLASSES:
            ids.append(str(Path(f).relative_to(ICONS)).replace("/", "_"))
            paths.append(f)
            labels.append(CLASSES.index(cls))
    return ids, paths, labels


def write(out: Path, ids: list[str], paths: list[str], labels: list[int]) -> None:
    t = pa.table({"id": ids, "path": paths, "label": pa.array(labels, pa.int32())})
    write_manifest(out, t, ManifestMeta(classes=CLASSES, stage="experiments/icons"))
    print(f"{out}: {len(ids):,} images, per class {np.bincount(labels, minlength=len(CLASSES)).tolist()}")


def main(out: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    src = [rows(f"oxygen/base/{s}/*/*.png") for s in ("32x32", "48x48", "64x64")]
    if not src[1][0]:
        sys.exit("Oxygen icons are missing: apt-get install oxygen-icon-theme mate-icon-theme")
    write(out / "source.parquet", *(sum((s[i] for s in src), []) for i in range(3)))
    ids, paths, labels = rows("mate/48x48/*/*.png")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name, _ in SPLITS}
    for c in range(len(CLASSES)):
        mine = rng.permutation([i for i, y in enumerate(labels) if y == c])
        cuts = np.round(np.cumsum([f for _, f in SPLITS]) * len(mine)).astype(int)
        for (name, _), lo, hi in zip(SPLITS, np.r_[0, cuts[:-1]], cuts):
            parts[name].extend(sorted(mine[lo:hi].tolist()))
    for name, take in parts.items():
        take = sorted(take)
        write(out / f"{name}.parquet", [ids[i] for i in take], [paths[i] for i in take], [labels[i] for i in take])
    everything = sorted(i for take in parts.values() for i in take)
    write(
        out / "target_all.parquet",
        [ids[i] for i in everything],
        [paths[i] for i in everything],
        [labels[i] for i in everything],
    )


if __name__ == "__main__":
    main(Path(__file__).resolve().parent / "data")
