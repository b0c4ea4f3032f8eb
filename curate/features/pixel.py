"""The model-free half of ``curate dedup``: content hashes and pixel descriptors.

One pass over the files reads each file's bytes once and yields

- its content hash (sha256, first 16 bytes): byte-identical copies, whatever the model;
- two pixel descriptors, one of the CANVAS and one of the CONTENT; a source image is a pixel
  copy of a target image when either family matches (``combine``).

The canvas descriptor: the image in grey, resized to 16x16 (PIL's bilinear filter, computed
as two matrix products and kept in floats: ``thumbnail``), minus its mean, L2-normalised (256
floats). Cosine similarity of two descriptors is the correlation of the two
thumbnails, which survives blur, JPEG re-encoding, brightness and contrast changes, resizing,
colour-to-grey and small rotations almost unchanged, and which does not reward two different
images for being of the same class (pooled classifier features do: that is why they alone
cannot separate edited copies from ordinary images of the same class).

Crops move the thumbnail, so the TARGET side (the small one) is indexed under ``VIEWS`` = 107
canvas views of each image: the whole image, crops keeping 84%, 88%, 92% and 96% of each side
at 5 x 5 positions on a grid, the whole image turned by -5 and +5 degrees (its corners filled
with its border colour), each resized to 16x16, the whole image once more flattened on black
instead of white when it has transparency (a copy saved without its alpha channel usually sits
on black or on white), and, for a colour image, the whole image with every hue turned by a
quarter, a half and three quarters of the HSV circle (a recoloured copy: its grey thumbnail is
not a linear function of the original's, so the correlation alone misses it). The rotations,
the black view, the fourth crop size and the hue views were each chosen on the validation plant
of bench/colour_dedup.py, where those edits were the ones missed; what each bought is in
docs/results.md. A source image cropped to 85-95% of its target original then sits close to one
of its views. Source images get one descriptor each.

The content descriptor (issue 25) describes what is drawn, not the canvas it is drawn on, so a
drawing in the middle of a large empty canvas and a copy cut tight to it, or a 32 px icon and
a 6x blow-up of it, match. The rule, for the source and for every content view of a target:

1. Trim to the content box (``content_box``): the bounding box of the pixels more than
   TRIM_TOLERANCE grey levels from the frame colour. The frame colour is the background for an
   image with transparency (white, as it is flattened; black for its view flattened on black),
   so a transparent image and a copy saved without its alpha channel trim alike; for an opaque
   image it is the median of its outermost pixels when at least FRAME_SHARE of them lie within
   TRIM_TOLERANCE of it, and an image without such a frame (a photo) is not trimmed (that
   median is still its frame colour, which pads its aspect-kept form).
2. Describe the content in two forms, squashed to 16x16 and with its aspect ratio kept (centred
   on a square of the frame colour), each blurred SMOOTH times by the binomial kernel (a small
   image blown up and a large one shrunk come out alike), mean-free and L2-normalised; the two
   side by side, scaled by 1/sqrt(2) (512 floats): the cosine of two content descriptors is the
   mean of the two forms' correlations.
3. The plain rule (below) applies to the trimmed, squashed form.

A JPEG is decoded at reduced size (DCT scaling), but its content with at least DETAIL pixels
on its longer side: a small drawing on a large canvas is decoded again at a larger scale.

Trimmed content throws away where the drawing sits and how much margin it has, which the
canvas descriptor uses to tell images apart, so the content family needs a stricter threshold:
its cosine c counts as the pixel similarity 1 - CONTENT_STRICTNESS * (1 - c), so at the
default pixel threshold of 0.96 a content match needs c >= 0.98 (SMOOTH and the strictness were chosen
on the design pair of tests/_lib/reframe_set.py and the digit demo: docs/results.md). The target's content views
are the whole image trimmed by colour and trimmed by its alpha channel, its two rotations, its
view on black and its three hue views (``CVIEWS`` = 8); crops are left to the canvas family.
Not in the paper, which deduplicates with model features only.

Unreadable images get hash ``b""`` (no file) or zero descriptors (not decodable), which
match nothing.

A thumbnail too plain to tell images apart also gets the zero descriptor (``is_plain``):
more than 90% of its pixels within 6 grey levels of its border colour (a small shape on a
large background), or a spread under 3 grey levels (a blank or near-blank image). Two such
images correlate through where their one blob sits, not through what they show; on the
clip art of issue 18, such pairs were a large share of the false copies. A small shape on a
large canvas is plain as a canvas, but usually not once trimmed: the content family sees it.
Images plain in both families are left to the exact and feature checks, and ``curate dedup``
says how many there were.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from datl.core.pool import cores_per_rank, fork_map
from datl.core.progress import bar
from datl.manifests import Manifest
from datl.manifests.address import Address
from datl.manifests.reading import read_bytes

HASH_BYTES = 16
SIDE = 16
DIM = SIDE * SIDE  # the canvas descriptor
FORMS = 2  # the content described squashed to a square, and padded to one
CDIM = FORMS * SIDE * SIDE  # the content descriptor
CROP_FRACTIONS = (0.84, 0.88, 0.92, 0.96)
CROP_OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)
ROTATIONS = (-5.0, 5.0)  # degrees: the whole image turned, its corners filled with its border colour
HUE_TURNS = (64, 128, 192)  # of 256: the whole colour image with every hue turned (a recoloured copy)
VIEWS = 1 + len(CROP_FRACTIONS) * len(CROP_OFFSETS) ** 2 + len(ROTATIONS) + 1 + len(HUE_TURNS)  # + on black
CVIEWS = 2 + len(ROTATIONS) + 1 + len(HUE_TURNS)  # content views: whole (2 trims), rotations, black, hues
PLAIN_SHARE, PLAIN_TOLERANCE, PLAIN_STD = 0.9, 6.0, 3.0  # see is_plain
TRIM_TOLERANCE = 24  # grey levels from the frame colour beyond which a pixel is content
FRAME_SHARE = 0.9  # share of border pixels within TRIM_TOLERANCE of their median: the image has a frame
SMOOTH = 2  # binomial blurs of a content thumbnail (chosen on the design pair: docs/results.md)
CONTENT_STRICTNESS = 2.0  # a content cosine c counts as the pixel similarity 1 - 2 (1 - c)
DETAIL = 4 * SIDE  # a JPEG is decoded with at least this many pixels on its (content's) longer side
WHITE, BLACK = (255, 255, 255), (0, 0, 0)
PARAMS = (
    f"side{SIDE}-crops{CROP_FRACTIONS}-offsets{CROP_OFFSETS}-rot{ROTATIONS}-black1"
    f"-plain{PLAIN_SHARE},{PLAIN_TOLERANCE},{PLAIN_STD}-hue{HUE_TURNS}"
    f"-content{FORMS},{TRIM_TOLERANCE},{FRAME_SHARE},{SMOOTH},{DETAIL},edgepad-resample2"
)  # part of the cache key (the strictness is not: it applies when the checks are combined)


@dataclass
class Content:
    hashes: np.ndarray  # S16 per manifest row; b"" when the file cannot be read
    pixel: np.ndarray  # float16 canvas descriptors (n, DIM) or, for a target, (n, VIEWS, DIM)
    content: np.ndarray  # float16 content descriptors (n, CDIM) or, for a target, (n, CVIEWS, CDIM)
    readable: np.ndarray  # bool per row: the image could be read and decoded
    warned: np.ndarray | None = None  # bool per row: decoded, but PIL warned (not kept in the target cache)

    @property
    def plain(self) -> np.ndarray:
        """Readable, yet too plain for the pixel check in both families (``is_plain``)."""
        return self.readable & ~self.pixel.any(axis=-1) & ~self.content.any(axis=-1)


def combine(canvas: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The pixel similarity of a pair: the better of its canvas cosine and its content cosine
    put on the canvas scale, 1 - CONTENT_STRICTNESS * (1 - c) (see the module docstring)."""
    return np.maximum(canvas, 1.0 - CONTENT_STRICTNESS * (1.0 - content))


def grey_array(img) -> np.ndarray:
    """A grey image as a uint8 array (height, width): from a PIL image, or the array itself."""
    if isinstance(img, np.ndarray):
        return img
    if img.mode != "L":
        img = img.convert("L")
    return np.frombuffer(img.tobytes(), np.uint8).reshape(img.size[1], img.size[0])


@functools.lru_cache(maxsize=512)
def resampling(n: int) -> np.ndarray:
    """(SIDE, n) float32: PIL's bilinear resize of n pixels to SIDE as a linear map: output pixel
    i is the triangle filter centred on (i + 0.5) n / SIDE, widened by the scale when shrinking,
    normalised to sum 1 (Pillow's Resample.c)."""
    scale = n / SIDE
    support = max(scale, 1.0)
    m = np.zeros((SIDE, n))
    for i in range(SIDE):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n)
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support))
        m[i, lo:hi] = w / w.sum()
    return m.astype(np.float32)


def thumbnail(img) -> np.ndarray:
    """The 16x16 grey thumbnail, float32 (256,): what a descriptor is made of. PIL's bilinear
    resize as two matrix products (``resampling``), without its rounding to whole grey levels
    (so within one level of PIL's), of a PIL image or a uint8 array: a quarter of the cost of
    PIL's resize and ``tobytes`` on small images."""
    a = grey_array(img)
    h, w = a.shape
    return (resampling(h) @ a.astype(np.float32) @ resampling(w).T).ravel()


def is_plain(thumbs: np.ndarray) -> np.ndarray:
    """Per thumbnail (..., 256): True when it is mostly background (over PLAIN_SHARE of its
    pixels within PLAIN_TOLERANCE grey levels of the median of its 60 border pixels) or nearly
    flat (standard deviation under PLAIN_STD grey levels)."""
    v = np.asarray(thumbs, np.float32)
    g = v.reshape(*v.shape[:-1], SIDE, SIDE)
    edge = np.concatenate([g[..., 0, :], g[..., -1, :], g[..., 1:-1, 0], g[..., 1:-1, -1]], axis=-1)
    edge.sort(axis=-1)  # the median of each image's 60, as np.median has it, at a third of its cost
    bg = (edge[..., 29:30] + edge[..., 30:31]) / 2
    share = (np.abs(v - bg) <= PLAIN_TOLERANCE).mean(axis=-1)
    return (share > PLAIN_SHARE) | (v.std(axis=-1) < PLAIN_STD)


def _unit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v mean-free and L2-normalised along its last axis, zeros where it is flat; the norms)."""
    v = v - v.mean(axis=-1, keepdims=True)
    n = np.sqrt(np.einsum("...i,...i->...", v, v))
    return np.divide(v, n[..., None], out=np.zeros_like(v), where=n[..., None] > 1e-6), n


def descriptors(thumbs: np.ndarray) -> np.ndarray:
    """Canvas descriptors of thumbnails (..., 256): mean-free, L2-normalised; zeros, which match
    nothing, for a plain image (``is_plain``); vectorised over a whole chunk (per image in
    Python it cost more than the decode)."""
    v = np.asarray(thumbs, np.float32)
    out, _ = _unit(v)
    out[is_plain(v)] = 0.0
    return out


def content_descriptors(thumbs: np.ndarray) -> np.ndarray:
    """Content descriptors of thumbnail pairs (..., FORMS, 256) from ``forms`` -> (..., CDIM):
    each form smoothed, mean-free and L2-normalised, side by side, scaled by 1/sqrt(FORMS);
    zeros when the squashed form is plain or either form is flat."""
    v = np.asarray(thumbs, np.float32)
    out, norms = _unit(smooth(v))
    out = out.reshape(*v.shape[:-2], CDIM) / np.sqrt(FORMS)
    out[is_plain(v[..., 0, :]) | (norms <= 1e-6).any(axis=-1)] = 0.0
    return out


def _blur_kernel() -> np.ndarray:
    """(16, 16): SMOOTH binomial blurs [1, 2, 1] / 4 along one axis of a 16-pixel line, edges
    repeated, as one linear map."""
    k = np.zeros((SIDE, SIDE))
    for i in range(SIDE):
        for j, w in ((i - 1, 0.25), (i, 0.5), (i + 1, 0.25)):
            k[i, min(max(j, 0), SIDE - 1)] += w
    return np.linalg.matrix_power(k, SMOOTH).astype(np.float32)


BLUR = _blur_kernel()


def smooth(v: np.ndarray) -> np.ndarray:
    """Thumbnails (..., 256) blurred SMOOTH times by the binomial kernel [1, 2, 1] / 4 along each
    axis, edges repeated: the blur is separable, so one 16x16 product along the rows and one
    along the columns (a loop of shifted slices cost more than the decode, one 256x256 product
    eight times the arithmetic)."""
    g = np.asarray(v, np.float32).reshape(-1, SIDE, SIDE)
    g = BLUR @ g @ BLUR.T
    return g.reshape(np.shape(v))


def forms(content, frame: int, squashed: np.ndarray | None = None) -> np.ndarray:
    """The two thumbnails of a (grey) content image, float32 (FORMS, 256): squashed to 16x16, and
    with its aspect ratio kept, centred on a square of its ``frame`` colour. ``squashed``: the
    first, when the caller already has it (the canvas thumbnail of an untrimmed image). A square
    image's two forms are the same thumbnail, made once."""
    a = grey_array(content)
    first = thumbnail(a) if squashed is None else squashed
    h, w = a.shape
    if w == h:
        return np.stack([first, first])
    side = max(w, h)
    square = np.full((side, side), frame, np.uint8)
    y, x = (side - h) // 2, (side - w) // 2
    square[y : y + h, x : x + w] = a
    return np.stack([first, thumbnail(square)])


def edge_median(a: np.ndarray) -> tuple[int, bool]:
    """(the median grey level of an image's outermost pixels, whether it is a frame: at least
    FRAME_SHARE of those pixels lie within TRIM_TOLERANCE of it; not for an image that runs to
    its edges, a photo). The median as int(np.median(edge)), from one sort of the edge pixels
    (np.median's and a histogram's overheads were each a tenth of the source side's time on
    small images)."""
    edge = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    edge.sort()
    n = len(edge)
    med = (int(edge[(n - 1) // 2]) + int(edge[n // 2])) // 2
    lo = int(edge.searchsorted(np.uint8(max(med - TRIM_TOLERANCE, 0)), "left"))
    hi = int(edge.searchsorted(np.uint8(min(med + TRIM_TOLERANCE, 255)), "right"))
    return med, hi - lo >= FRAME_SHARE * n


def content_box(grey, frame: int | None = None) -> tuple[tuple[int, int, int, int], int]:
    """(box, frame colour) of a grey image's content (rule 1 of the module docstring).
    ``frame``: the background a transparent image was flattened on; None: the image's own
    (``edge_median``), and the whole image for one without a frame (its colour then the median
    of its outermost pixels, which pads its aspect-kept form). The whole image, too, when
    nothing is content (a blank image: the plain rule then sees it)."""
    a = grey_array(grey)
    whole = (0, 0, a.shape[1], a.shape[0])
    if frame is None:
        frame, framed = edge_median(a)
        if not framed:
            return whole, frame
    content = np.ones(256, bool)
    content[max(0, frame - TRIM_TOLERANCE) : frame + TRIM_TOLERANCE + 1] = False
    mask = content[a]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return whole, frame
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1), frame


def trimmed(grey, frame: int | None = None, whole: np.ndarray | None = None) -> np.ndarray:
    """The thumbnail pair (``forms``) of a grey image's content (``content_box``). ``whole``:
    the image's own thumbnail, reused when nothing is trimmed."""
    a = grey_array(grey)
    (x0, y0, x1, y1), colour = content_box(a, frame)
    if (x0, y0, x1, y1) == (0, 0, a.shape[1], a.shape[0]):
        return forms(a, colour, whole)
    return forms(a[y0:y1, x0:x1], colour)


def crop_views(img) -> list:
    """The whole image, its grid of crops and its small rotations (see the module docstring)."""
    w, h = img.size
    views = [img]
    for f in CROP_FRACTIONS:
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        for ay in CROP_OFFSETS:
            for ax in CROP_OFFSETS:
                x0, y0 = round(ax * (w - cw)), round(ay * (h - ch))
                views.append(img.crop((x0, y0, x0 + cw, y0 + ch)))
    return views + rotations(img)


def rotations(img) -> list:
    """The image turned by each of ROTATIONS, its corners filled with its border colour."""
    from PIL import Image

    border = border_colour(img)
    return [img.rotate(a, resample=Image.BILINEAR, fillcolor=border) for a in ROTATIONS]


def border_colour(img) -> int | tuple[int, ...]:
    """The median colour of an image's outermost pixels (its background, for most images)."""
    a = np.asarray(img)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).reshape(-1, *a.shape[2:])
    med = np.median(edge, axis=0).astype(int)
    return int(med) if med.ndim == 0 else tuple(int(v) for v in med)


@dataclass
class Decoded:
    """One image decoded for both families: ``canvas`` at the thumbnail's draft size, ``detail``
    with its content at least DETAIL pixels long (the same image when that already holds),
    ``frame`` the colour its transparency was flattened on and ``alpha`` its alpha channel at
    the detail size (both None for an opaque image)."""

    canvas: object
    detail: object
    frame: int | None
    alpha: object = None

    def alpha_trimmed(self) -> np.ndarray:
        """The thumbnail pair of the detail image cut to the box of its visible pixels (alpha
        above 0, as "trim transparent pixels" does); zeros for an opaque image."""
        if self.alpha is None:
            return np.zeros((FORMS, DIM), np.float32)
        box = self.alpha.getbbox() or (0, 0, *self.detail.size)
        return forms(self.detail.crop(box), self.frame)


def decode(data: bytes, mode: str = "L", background=WHITE, warned: list | None = None) -> Decoded:
    from datl.manifests.images import decode_bytes

    info: dict = {}
    img = decode_bytes(data, mode, draft=(DETAIL, DETAIL), background=background, warned=warned, info=info)
    frame = None if info["alpha"] is None else int(np.mean(background))
    if max(info["size"]) <= max(img.size):  # not drafted: every pixel is there
        return Decoded(img, img, frame, info["alpha"])
    box, _ = content_box(img if mode == "L" else img.convert("L"), frame)
    longest = max(box[2] - box[0], box[3] - box[1], 1)
    if longest >= DETAIL:
        return Decoded(img, img, frame, info["alpha"])
    want = min(max(info["size"]), round(max(img.size) * DETAIL / longest))
    more: dict = {}
    detail = decode_bytes(data, mode, draft=(want, want), background=background, info=more)
    return Decoded(img, detail, frame, more["alpha"])


def _one(where: Address, views: bool) -> tuple[bytes, np.ndarray, np.ndarray, bool, bool]:
    """(content hash, canvas thumbnail(s), content thumbnail pair(s), readable, PIL warned) of
    one image, float32; zero thumbnails, which normalise to zero descriptors that match nothing,
    when it cannot be read."""
    from datl.manifests.images import DECODE_ERRORS

    shape, cshape = ((VIEWS, DIM), (CVIEWS, FORMS, DIM)) if views else ((DIM,), (FORMS, DIM))
    try:
        data = read_bytes(where)
    except OSError:
        return b"", np.zeros(shape, np.float32), np.zeros(cshape, np.float32), False, False
    digest = hashlib.sha256(data).digest()[:HASH_BYTES]
    notes: list[str] = []
    try:  # the project's one decoding path; a JPEG is decoded at reduced size, much faster
        grey = decode(data, "L", warned=notes)
    except DECODE_ERRORS:
        return digest, np.zeros(shape, np.float32), np.zeros(cshape, np.float32), False, False
    if not views:
        a = grey_array(grey.canvas)
        canvas = thumbnail(a)
        if grey.detail is grey.canvas:
            return digest, canvas, trimmed(a, grey.frame, canvas), True, bool(notes)
        return digest, canvas, trimmed(grey.detail, grey.frame), True, bool(notes)
    # a transparent target image is also indexed flattened on black: a copy saved without its
    # alpha channel (JPEG, a screenshot) usually sits on black or white; a colour one also
    # with its hues turned: a recoloured copy's grey differs from the original's
    black = decode(data, "L", background=BLACK) if grey.frame is not None else grey
    rgb = decode(data, "RGB")
    canvas = crop_views(grey.canvas) + [black.canvas] + hue_views(rgb.canvas)
    frame = grey.frame
    content = [trimmed(grey.detail, frame), grey.alpha_trimmed()] + [trimmed(v, frame) for v in rotations(grey.detail)]
    content += [trimmed(black.detail, black.frame)] + [trimmed(v, frame) for v in hue_views(rgb.detail)]
    return digest, np.stack([thumbnail(v) for v in canvas]), np.stack(content), True, bool(notes)


def hue_views(rgb) -> list:
    """The colour image with every hue turned by each of HUE_TURNS (HSV: saturation and value
    kept), in grey. A grey image (no saturation anywhere) gets blank images, whose zero
    descriptors match nothing: it has no hue to turn."""
    from PIL import Image

    h, s, v = rgb.convert("HSV").split()
    if not np.asarray(s).any():
        return [Image.new("L", rgb.size)] * len(HUE_TURNS)
    return [
        Image.merge("HSV", (h.point(lambda x, t=t: (x + t) % 256), s, v)).convert("RGB").convert("L") for t in HUE_TURNS
    ]


def _part(path: str, views: bool, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """Hashes, descriptors, readability and PIL warnings of rows [lo, hi) of the manifest at
    ``path``; normalised here, in the worker, so the parent's serial share stays small."""
    from datl.manifests.address import AddressColumns

    m = Manifest(path)
    where = AddressColumns(m.read_range(lo, hi, ["path", *m.address_columns]), str(m.folder))
    out = [_one(a, views) for a in where.addresses()]
    shape, cshape = ((VIEWS, DIM), (CVIEWS, FORMS, DIM)) if views else ((DIM,), (FORMS, DIM))
    thumbs = np.stack([o[1] for o in out]) if out else np.zeros((0, *shape), np.float32)
    cthumbs = np.stack([o[2] for o in out]) if out else np.zeros((0, *cshape), np.float32)
    return (
        np.array([o[0] for o in out], dtype=f"S{HASH_BYTES}"),
        descriptors(thumbs).astype(np.float16),
        content_descriptors(cthumbs).astype(np.float16),
        np.array([o[3] for o in out], dtype=bool),
        np.array([o[4] for o in out], dtype=bool),
    )


def content_pass(
    manifest: Manifest,
    views: bool,
    workers: int | None = None,
    progress: bool = False,
    rows: tuple[int, int] | None = None,
    on_part: Callable[[int], None] | None = None,
) -> Content:
    """Hashes and pixel descriptors of every row (or of rows [start, stop)), in manifest order.

    Decoding small images is Python-bound (threads only contend for the GIL), so the rows are
    split over ``workers`` forked processes (default: this rank's share of the cores), each
    reading and decoding its own part of at most 4,096 rows. ``on_part(n)`` is called as each
    part of n rows is done (a caller's progress bar)."""
    lo, hi = rows if rows is not None else (0, manifest.num_rows)
    workers = workers or cores_per_rank()
    step = max(64, min(4096, -(-(hi - lo) // (4 * workers))))
    parts = [(str(manifest.path), views, a, min(a + step, hi)) for a in range(lo, hi, step)]
    results = []
    with bar(total=hi - lo, desc=f"hash+pixels {manifest.path.name}", unit="img", enabled=progress) as b:
        for part, r in fork_map(_part, parts, workers):
            results.append(r)
            b.update(part[3] - part[2])
            if on_part is not None:
                on_part(part[3] - part[2])
    shape, cshape = ((VIEWS, DIM), (CVIEWS, CDIM)) if views else ((DIM,), (CDIM,))
    hashes = np.concatenate([r[0] for r in results]) if results else np.zeros(0, f"S{HASH_BYTES}")
    pixel = np.concatenate([r[1] for r in results]) if results else np.zeros((0, *shape), np.float16)
    content = np.concatenate([r[2] for r in results]) if results else np.zeros((0, *cshape), np.float16)
    readable = np.concatenate([r[3] for r in results]) if results else np.zeros(0, bool)
    warned = np.concatenate([r[4] for r in results]) if results else np.zeros(0, bool)
    return Content(hashes, pixel, content, readable, warned)
