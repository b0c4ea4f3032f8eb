"""The model-free half of ``curate dedup``: content hashes and pixel descriptors.

One pass over the files reads each file's bytes once and yields

- its content hash (sha256, first 16 bytes): byte-identical copies, whatever the model;
- its pixel descriptor: the image in grey, resized to 16x16 (bilinear), minus its mean,
  L2-normalised (256 floats). Cosine similarity of two descriptors is the correlation
  of the two thumbnails, which survives blur, JPEG re-encoding, brightness and contrast
  changes, resizing, colour-to-grey and small rotations almost unchanged, and which does
  not reward two different images for being of the same class (pooled classifier
  features do: that is why they alone cannot separate edited copies from ordinary
  images of the same class).

Crops move the thumbnail, so the TARGET side (the small one) is indexed under
``VIEWS`` = 107 views of each image: the whole image, crops keeping 84%, 88%, 92% and 96%
of each side at 5 x 5 positions on a grid, the whole image turned by -5 and +5 degrees (its
corners filled with its border colour), each resized to 16x16, the whole image once
more flattened on black instead of white when it has transparency (a copy saved without
its alpha channel usually sits on black or on white), and, for a colour image, the whole
image with every hue turned by a quarter, a half and three quarters of the HSV circle (a
recoloured copy: its grey thumbnail is not a linear function of the original's, so the
correlation alone misses it). The rotations, the black view, the fourth crop size and the
hue views were each chosen on the validation plant of bench/colour_dedup.py, where those
edits were the ones missed; what each bought is in docs/results.md. A source image cropped to 85-95% of its target
original then sits close to one of its views. Source images get one descriptor each.
Unreadable images get hash ``b""`` (no file) or a zero descriptor (not decodable), which
matches nothing.

A thumbnail too plain to tell images apart also gets the zero descriptor (``is_plain``):
more than 90% of its pixels within 6 grey levels of its border colour (a small shape on a
large background), or a spread under 3 grey levels (a blank or near-blank image). Two such
images correlate through where their one blob sits, not through what they show; on the
clip art of issue 18, such pairs were a large share of the false copies. They are left to
the exact and feature checks, and ``curate dedup`` says how many there were.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from datl.core.pool import cores_per_rank, fork_map
from datl.core.progress import bar
from datl.manifests import Manifest
from datl.manifests.address import Address
from datl.manifests.reading import read_bytes

HASH_BYTES = 16
SIDE = 16
CROP_FRACTIONS = (0.84, 0.88, 0.92, 0.96)
CROP_OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROTATIONS = (-5.0, 5.0)  # degrees: the whole image turned, its corners filled with its border colour
HUE_TURNS = (64, 128, 192)  # of 256: the whole colour image with every hue turned (a recoloured copy)
VIEWS = 1 + len(CROP_FRACTIONS) * len(CROP_OFFSETS) ** 2 + len(ROTATIONS) + 1 + len(HUE_TURNS)  # + on black
PLAIN_SHARE, PLAIN_TOLERANCE, PLAIN_STD = 0.9, 6.0, 3.0  # see is_plain
PARAMS = (
    f"side{SIDE}-crops{CROP_FRACTIONS}-offsets{CROP_OFFSETS}-rot{ROTATIONS}-black1"
    f"-plain{PLAIN_SHARE},{PLAIN_TOLERANCE},{PLAIN_STD}-hue{HUE_TURNS}"
)  # part of the cache key


@dataclass
class Content:
    hashes: np.ndarray  # S16 per manifest row; b"" when the file cannot be read
    pixel: np.ndarray  # float16 (n, 256) or, for a target, (n, VIEWS, 256)
    readable: np.ndarray  # bool per row: the image could be read and decoded
    warned: np.ndarray | None = None  # bool per row: decoded, but PIL warned (not kept in the target cache)


def thumbnail(img) -> np.ndarray:
    """The 16x16 grey thumbnail, uint8 (256,): what a descriptor is made of."""
    from PIL import Image

    return np.frombuffer(img.resize((SIDE, SIDE), Image.BILINEAR).tobytes(), np.uint8)


def is_plain(thumbs: np.ndarray) -> np.ndarray:
    """Per thumbnail (..., 256): True when it is mostly background (over PLAIN_SHARE of its
    pixels within PLAIN_TOLERANCE grey levels of the median of its 60 border pixels) or nearly
    flat (standard deviation under PLAIN_STD grey levels)."""
    v = np.asarray(thumbs, np.float32)
    g = v.reshape(*v.shape[:-1], SIDE, SIDE)
    edge = np.concatenate([g[..., 0, :], g[..., -1, :], g[..., 1:-1, 0], g[..., 1:-1, -1]], axis=-1)
    bg = np.median(edge, axis=-1, keepdims=True)
    share = (np.abs(v - bg) <= PLAIN_TOLERANCE).mean(axis=-1)
    return (share > PLAIN_SHARE) | (v.std(axis=-1) < PLAIN_STD)


def descriptors(thumbs: np.ndarray) -> np.ndarray:
    """Descriptors of thumbnails (..., 256): mean-free, L2-normalised; zeros, which match
    nothing, for a plain image (``is_plain``); vectorised over a whole chunk (per image in
    Python it cost more than the decode)."""
    v = thumbs.astype(np.float32)
    plain = is_plain(v)[..., None]
    v -= v.mean(axis=-1, keepdims=True)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=(n > 1e-6) & ~plain)


def crop_views(img) -> list:
    """The whole image, its grid of crops and its small rotations (see the module docstring)."""
    from PIL import Image

    w, h = img.size
    views = [img]
    for f in CROP_FRACTIONS:
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        for ay in CROP_OFFSETS:
            for ax in CROP_OFFSETS:
                x0, y0 = round(ax * (w - cw)), round(ay * (h - ch))
                views.append(img.crop((x0, y0, x0 + cw, y0 + ch)))
    border = border_colour(img)
    views += [img.rotate(a, resample=Image.BILINEAR, fillcolor=border) for a in ROTATIONS]
    return views


def border_colour(img) -> int | tuple[int, ...]:
    """The median colour of an image's outermost pixels (its background, for most images)."""
    a = np.asarray(img)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, *a.shape[2:])
    med = np.median(edge, axis=0).astype(int)
    return int(med) if med.ndim == 0 else tuple(int(v) for v in med)


def _one(where: Address, views: bool) -> tuple[bytes, np.ndarray, bool, bool]:
    """(content hash, thumbnail(s) uint8, readable, PIL warned) of one image; a zero thumbnail,
    which normalises to a zero descriptor that matches nothing, when it cannot be read."""
    from datl.manifests.images import DECODE_ERRORS, decode_bytes, has_transparency

    shape = (VIEWS, SIDE * SIDE) if views else (SIDE * SIDE,)
    try:
        data = read_bytes(where)
    except OSError:
        return b"", np.zeros(shape, np.uint8), False, False
    digest = hashlib.sha256(data).digest()[:HASH_BYTES]
    notes: list[str] = []
    try:  # the project's one decoding path; a JPEG is decoded at reduced size, much faster
        grey = decode_bytes(data, "L", draft=(4 * SIDE, 4 * SIDE), warned=notes)
    except DECODE_ERRORS:
        return digest, np.zeros(shape, np.uint8), False, False
    if not views:
        return digest, thumbnail(grey), True, bool(notes)
    # a transparent target image is also indexed flattened on black: a copy saved without its
    # alpha channel (JPEG, a screenshot) usually sits on black or white; a colour one also
    # with its hues turned: a recoloured copy's grey differs from the original's
    black = decode_bytes(data, "L", (4 * SIDE, 4 * SIDE), (0, 0, 0)) if has_transparency(data) else grey
    return (
        digest,
        np.stack(
            [thumbnail(v) for v in crop_views(grey)] + [thumbnail(black)] + [thumbnail(v) for v in hue_views(data)]
        ),
        True,
        bool(notes),
    )


def hue_views(data: bytes) -> list:
    """The colour image with every hue turned by each of HUE_TURNS (HSV: saturation and value
    kept), in grey. A grey image (no saturation anywhere) gets blank images, whose zero
    descriptors match nothing: it has no hue to turn."""
    from PIL import Image

    from datl.manifests.images import decode_bytes

    rgb = decode_bytes(data, "RGB", (4 * SIDE, 4 * SIDE))
    h, s, v = rgb.convert("HSV").split()
    if not np.asarray(s).any():
        return [Image.new("L", (SIDE, SIDE))] * len(HUE_TURNS)
    return [
        Image.merge("HSV", (h.point(lambda x, t=t: (x + t) % 256), s, v)).convert("RGB").convert("L") for t in HUE_TURNS
    ]


def _part(path: str, views: bool, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """Hashes, descriptors, readability and PIL warnings of rows [lo, hi) of the manifest at ``path``; normalised
    here, in the worker, so the parent's serial share stays small."""
    from datl.manifests.address import AddressColumns

    m = Manifest(path)
    where = AddressColumns(m.read_range(lo, hi, ["path", *m.address_columns]), str(m.folder))
    out = [_one(where.address(i), views) for i in range(len(where))]
    dim = (0, VIEWS, SIDE * SIDE) if views else (0, SIDE * SIDE)
    thumbs = np.stack([o[1] for o in out]) if out else np.zeros(dim, np.uint8)
    return (
        np.array([o[0] for o in out], dtype=f"S{HASH_BYTES}"),
        descriptors(thumbs).astype(np.float16),
        np.array([o[2] for o in out], dtype=bool),
        np.array([o[3] for o in out], dtype=bool),
    )


def content_pass(
    manifest: Manifest,
    views: bool,
    workers: int | None = None,
    progress: bool = False,
    rows: tuple[int, int] | None = None,
) -> Content:
    """Hashes and pixel descriptors of every row (or of rows [start, stop)), in manifest order.

    Decoding small images is Python-bound (threads only contend for the GIL), so the rows are
    split over ``workers`` forked processes (default: this rank's share of the cores), each
    reading and decoding its own part."""
    lo, hi = rows if rows is not None else (0, manifest.num_rows)
    workers = workers or cores_per_rank()
    step = max(256, min(4096, -(-(hi - lo) // (4 * workers))))
    parts = [(str(manifest.path), views, a, min(a + step, hi)) for a in range(lo, hi, step)]
    results = []
    with bar(total=hi - lo, desc=f"hash+pixels {manifest.path.name}", unit="img", enabled=progress) as b:
        for part, r in fork_map(_part, parts, workers):
            results.append(r)
            b.update(part[3] - part[2])
    dim = (0, VIEWS, SIDE * SIDE) if views else (0, SIDE * SIDE)
    hashes = np.concatenate([r[0] for r in results]) if results else np.zeros(0, f"S{HASH_BYTES}")
    pixel = np.concatenate([r[1] for r in results]) if results else np.zeros(dim, np.float16)
    readable = np.concatenate([r[2] for r in results]) if results else np.zeros(0, bool)
    warned = np.concatenate([r[3] for r in results]) if results else np.zeros(0, bool)
    return Content(hashes, pixel, readable, warned)
