"""``curate dedup --calibrate``: planted edited copies of target images, recall and
false-positive rates per threshold and per check, and their histogram."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from datl.core.files import atomic_output, png_metadata
from datl.manifests import Manifest

from ..features.pixel import border_colour

logger = logging.getLogger(__name__)


AUGMENTATIONS = ("crop", "rotate", "blur", "contrast", "jpeg", "resize", "colour")  # edits of any image
COLOUR_EDITS = ("recolour",)  # edits of a colour image
ALPHA_EDITS = ("flatten", "rerender")  # edits of an image with transparency
EDITS = AUGMENTATIONS + COLOUR_EDITS + ALPHA_EDITS


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
        # the uncovered corners take the image's own border colour (black for a digit, white for
        # an icon composited on white), as a rotated copy of a transparent image would show
        return img.rotate(float(rng.uniform(-8, 8)), resample=Image.BILINEAR, fillcolor=border_colour(img))
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


def edits_for(data: bytes) -> tuple[str, ...]:
    """The edits that make sense for one encoded image: every image gets AUGMENTATIONS, a
    colour one also ``recolour``, a transparent one also ``flatten`` and ``rerender``."""
    from datl.manifests.images import GREY_MODES, has_transparency, open_bytes

    with open_bytes(data) as im:
        grey = im.mode in GREY_MODES
    return AUGMENTATIONS + (() if grey else COLOUR_EDITS) + (ALPHA_EDITS if has_transparency(data) else ())


def plant_one(data: bytes, kind: str, rng: np.random.Generator):
    """One edited copy of the encoded image ``data``: ``augment`` of the decoded image, or

    - ``recolour``: every hue turned by a quarter to three quarters of the circle;
    - ``flatten``: the transparent original flattened on black (a copy saved without alpha);
    - ``rerender``: the transparent original resampled to half, two thirds or four thirds of
      its size and kept transparent (the same drawing rendered at another size).
    """
    from PIL import Image

    from datl.manifests.images import GREY_MODES, decode_bytes, open_bytes

    if kind == "flatten":
        return decode_bytes(data, "RGB", background=(0, 0, 0))
    if kind == "rerender":
        with open_bytes(data) as im:
            rgba = im.convert("RGBA")  # palette transparency included; PIL resamples RGBA premultiplied
        f = float(rng.choice([0.5, 2 / 3, 4 / 3]))
        return rgba.resize((max(1, round(rgba.width * f)), max(1, round(rgba.height * f))), Image.LANCZOS)
    with open_bytes(data) as im:
        mode = "L" if im.mode in GREY_MODES else "RGB"
    img = decode_bytes(data, mode)
    if kind == "recolour":
        h, s, v = img.convert("RGB").convert("HSV").split()
        turn = int(rng.integers(64, 193))
        h = h.point(lambda x: (x + turn) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")
    return augment(img, kind, rng)


def plant_copies(target: Manifest, folder: Path, n: int, seed: int = 0) -> Path:
    """Write edited copies of ``n`` target images (one edit each, cycling through the edits
    that apply to the image: ``edits_for``) and a manifest of them whose ``target_id`` says
    which image each copies and ``edit`` how."""
    import pyarrow as pa

    from datl.manifests import ManifestMeta, write_manifest
    from datl.manifests.address import AddressColumns
    from datl.manifests.reading import read_bytes

    rng = np.random.default_rng(seed)
    t = target.read(["id", "path", *target.address_columns])
    pick = np.sort(rng.choice(t.num_rows, size=min(n, t.num_rows), replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    ids, paths, of, kinds = [], [], [], []
    where = AddressColumns(t, str(target.folder))
    for j, i in enumerate(pick):
        data = read_bytes(where.address(int(i)))
        kinds_here = edits_for(data)
        kind = kinds_here[j % len(kinds_here)]
        img = plant_one(data, kind, rng)
        name = f"planted-{j:05d}.png"
        img.save(folder / name)
        ids.append(f"planted-{j:05d}")
        paths.append(name)
        of.append(t.column("id")[int(i)].as_py())
        kinds.append(kind)
    table = pa.table({"id": ids, "path": paths, "target_id": of, "edit": kinds})
    return write_manifest(folder / "planted.parquet", table, ManifestMeta(stage="dedup-calibration"))


THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)
EDGES = np.linspace(-1.0, 1.0, 2001)  # 0.001-wide bins of cosine similarity


def bin_index(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((np.asarray(x, np.float64) + 1.0) * 1000.0), 0, 1999).astype(np.int64)


class Tally:
    """The ordinary (not byte-identical) source rows' best similarities, streamed chunk by
    chunk into 0.001-wide histograms: memory does not grow with the source."""

    def __init__(self, pixel_threshold: float, threshold: float):
        self.pixel_threshold, self.threshold = pixel_threshold, threshold
        self.pixel = np.zeros(2000, np.int64)
        self.feature = np.zeros(2000, np.int64)
        self.either = 0  # rows over either threshold
        self.n = 0

    def add(self, psim: np.ndarray, fsim: np.ndarray) -> None:
        self.pixel += np.bincount(bin_index(psim), minlength=2000)
        self.feature += np.bincount(bin_index(fsim), minlength=2000)
        self.either += int(((psim >= self.pixel_threshold) | (fsim >= self.threshold)).sum())
        self.n += len(psim)

    @staticmethod
    def rate_at_or_above(hist: np.ndarray, t: float) -> float:
        total = hist.sum()
        return float(hist[int(round((t + 1.0) * 1000.0)) :].sum() / total) if total else 0.0


def calibration_table(planted: np.ndarray, ordinary: np.ndarray, thresholds=THRESHOLDS) -> list[tuple]:
    """(threshold, recall on planted copies, false-positive rate on ordinary source images);
    ``ordinary`` is a Tally histogram."""
    return [
        (t, float((planted >= t).mean()) if len(planted) else 0.0, Tally.rate_at_or_above(ordinary, t))
        for t in thresholds
    ]


def plot_calibration(channels: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> None:
    """One panel per check: histograms of planted and ordinary similarities (the latter as
    Tally counts), and its threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(channels), figsize=(7 * len(channels), 4.8), constrained_layout=True, squeeze=False)
    for ax, (name, (planted, ordinary, threshold)) in zip(axes[0], channels.items()):
        lo = min(planted.min(initial=1), EDGES[np.flatnonzero(ordinary)[0]] if ordinary.any() else 1, 0.5)
        edges = EDGES[EDGES >= max(lo, -1.0) - 0.01][::10]
        counts = np.add.reduceat(ordinary, np.searchsorted(EDGES[:-1], edges[:-1]))[: len(edges) - 1]
        ax.stairs(
            counts / max(counts.sum() * np.diff(edges).mean(), 1e-12),
            edges,
            fill=True,
            alpha=0.6,
            label=f"ordinary source images (n={int(ordinary.sum()):,})",
        )
        ax.hist(
            planted, bins=edges, alpha=0.6, density=True, label=f"planted edited copies of target (n={len(planted):,})"
        )
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.2f}")
        ax.set_xlabel(f"best {name} cosine similarity to any target image")
        ax.set_ylabel("density")
        ax.set_yscale("log")
        ax.set_title(f"{name} check")
        ax.legend(fontsize=8)
    fig.suptitle("curate dedup --calibrate: where near copies and ordinary images fall")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=png_metadata())
    plt.close(fig)


def report(
    ix, tally: Tally, planted: Manifest, lm, d, batch_size: int, workers: int, out: Path, progress: bool
) -> None:
    """Print recall on the planted copies and false positives on ordinary source images, per
    check and threshold, and the combined figures; draw the histogram next to ``out``."""

    from ..features.describe import describe
    from .checks import check_chunk

    desc = describe(planted, 0, planted.num_rows, lm if ix.feature is not None else None, d, batch_size, workers)
    r = check_chunk(desc, ix, planted.num_rows)
    pp, pf = r.psim, r.fsim
    pt, ft = tally.pixel_threshold, tally.threshold
    edits = sorted(set(planted.read(["edit"]).column("edit").to_pylist()), key=EDITS.index)
    logger.info(
        f"calibration: {len(pp):,} planted edited copies ({', '.join(edits)}) vs {tally.n:,} ordinary source images"
    )
    logger.info("  threshold   pixel: recall  false-pos   feature: recall  false-pos")
    for (t, pr, pfp), (_, fr, ffp) in zip(calibration_table(pp, tally.pixel), calibration_table(pf, tally.feature)):
        logger.info(f"  {t:9.2f}  {pr:14.4f}  {pfp:9.4%}  {fr:16.4f}  {ffp:9.4%}")
    rec = float(((pp >= pt) | (pf >= ft)).mean()) if len(pp) else 0.0
    logger.info(
        f"  combined at --pixel-threshold {pt} and --feature-threshold {ft if np.isfinite(ft) else '(check off)'}: "
        f"recall {rec:.4f}, false-positive rate {tally.either / max(tally.n, 1):.4%}"
    )
    png = Path(out).with_suffix(".calibration.png")
    plot_calibration({"pixel": (pp, tally.pixel, pt), "feature": (pf, tally.feature, ft)}, png)
    logger.info(f"histogram: {png}")
