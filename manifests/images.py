"""Decoding images without torch: shared by validation, probing, dedup and ImageDataset.

Every image is read through its Address (a loose file, a tar member or a row of an
image Parquet file: address.py) and decoded from memory. Unreadable images are counted,
never fatal: :class:`Examples` keeps their count and the first few reasons.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .address import Address
from .io import Manifest
from .reading import read_bytes
from .schema import ManifestError

GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, in every stage
MAX_SIDE = 4096  # the largest image side a model reads (every --image-size's bound, a run's config.json)
MAX_PIXELS = int(os.environ.get("DATL_MAX_PIXELS", 200_000_000))  # larger: counted unreadable, never decoded


class ImageTooLarge(ValueError):
    pass


DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)
Image.MAX_IMAGE_PIXELS = None  # our own cap (MAX_PIXELS) replaces PIL's warning and error


def load_image(
    where: str | Address, mode: str, draft: tuple[int, int] | None = None, warned: list[str] | None = None
) -> Image.Image:
    """THE decoding path of the project (training, inference, validation, dedup): read the
    bytes, decode fully (so truncation surfaces here) and convert to ``mode`` ('L' or 'RGB')
    faithfully, whatever the file's mode (see ``to_mode``). ``draft``: a size the caller will
    shrink to anyway; a JPEG is then decoded at a reduced scale (at least that size).
    ``warned``: a list that receives what PIL warned about while decoding (a corrupt EXIF
    block, ...), for the caller's bad-image log; nothing reaches stderr either way.
    Raises one of DECODE_ERRORS (ImageTooLarge beyond MAX_PIXELS) for an unreadable image."""
    a = where if isinstance(where, Address) else Address(str(where))
    return decode_bytes(read_bytes(a), mode, draft, warned=warned)


ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def has_transparency(data: bytes) -> bool:
    """Whether an encoded image has an alpha channel or a transparent colour (header only)."""
    with open_bytes(data) as im:
        return im.mode in ALPHA_MODES or "transparency" in im.info


def decode_bytes(
    data: bytes,
    mode: str,
    draft: tuple[int, int] | None = None,
    background: tuple[int, int, int] = BACKGROUND,
    warned: list[str] | None = None,
    info: dict | None = None,
) -> Image.Image:
    """``load_image`` of bytes already read; ``background``: what transparent pixels become.
    ``info``: a dict that receives ``size`` (the file's own, before any draft) and ``alpha``
    (the alpha channel as an 'L' image at the decoded size, or None for an image without
    transparency)."""
    # PIL's warnings are recorded, never printed: the cases it warns about for ordinary files
    # (palette transparency, decompression bombs) are handled explicitly below, and what is left
    # (a corrupt EXIF block, a truncated text chunk) goes to the caller's log through ``warned``
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _decode(data, mode, draft, background, info)
        finally:
            if warned is not None:
                warned.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def _decode(
    data: bytes, mode: str, draft: tuple[int, int] | None, background: tuple[int, int, int], info: dict | None
) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_PIXELS:
            raise ImageTooLarge(f"{im.width}x{im.height} pixels is over the {MAX_PIXELS:,}-pixel cap (DATL_MAX_PIXELS)")
        if info is not None:
            info["size"] = im.size
        if draft is not None and im.format == "JPEG":
            im.draft(mode if mode in ("L", "RGB") else None, draft)
        im.load()
        im = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im
        return to_mode(im, mode, background, info)


def to_mode(
    im: Image.Image, mode: str, background: tuple[int, int, int] = BACKGROUND, info: dict | None = None
) -> Image.Image:
    """``im`` as 'L' or 'RGB', explicitly per source mode:

    - transparency (RGBA, LA, PA, palette or grey with a transparent colour): composited on
      ``background`` (BACKGROUND, white, everywhere but dedup's extra target view), so a
      transparent pixel's hidden colour never becomes content;
    - 16-bit and 32-bit integer grey (I;16, I): scaled from 0..65535 to 0..255 (PIL's own
      convert clips at 255, which turns a 16-bit image into a silhouette);
    - float grey (F): 0..1 scaled to 0..255, else clipped to 0..255;
    - 1-bit, CMYK, YCbCr, LAB, HSV: PIL's conversion.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
        im = Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")  # as PIL recommends for palette transparency, instead of a warning
    if info is not None:
        info["alpha"] = None
    if im.mode in ALPHA_MODES:
        rgba = im.convert("RGBA")
        if info is not None:
            info["alpha"] = rgba.getchannel("A")
        flat = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        flat.alpha_composite(rgba)
        im = flat.convert("RGB")
    if im.mode != mode:
        im = im.convert(mode)
    return im


def open_bytes(data: bytes) -> Image.Image:
    """PIL's lazy open of encoded bytes, its warnings silenced (header only: nothing decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(io.BytesIO(data))


def open_image(where: str | Address) -> Image.Image:
    """PIL's lazy open of an image file path or Address (the bytes are read here)."""
    a = where if isinstance(where, Address) else Address(str(where))
    return open_bytes(read_bytes(a))


def probe_images(manifest: Manifest, n: int = 32) -> tuple[tuple[int, int], int]:
    """The most common (height, width) and channel count (1 or 3) among the first ``n`` readable images."""
    sizes: Counter = Counter()
    grey = 0
    seen = 0
    for _, where in manifest.iter_addresses(batch_size=max(n, 1)):
        for i in range(len(where)):
            try:
                with open_image(where.address(i)) as im:
                    sizes[(im.height, im.width)] += 1
                    grey += im.mode in GREY_MODES
                    seen += 1
            except DECODE_ERRORS:
                continue
            if seen >= n:
                break
        if seen >= n:
            break
    if not seen:
        raise ManifestError(
            manifest.path,
            "none of its first images could be read",
            "check the image paths with `datl manifest validate`",
        )
    size = sizes.most_common(1)[0][0]
    return size, (1 if grey == seen else 3)


class Examples:
    """A count of the images met with one kind of trouble, and the first ``keep`` lines saying
    what ("path: reason"): memory does not grow with a source of 10^8 rows and many bad files."""

    def __init__(self, keep: int = 5):
        self.count = 0
        self.examples: list[str] = []
        self.keep = keep

    def add(self, lines: Sequence[str]) -> None:
        self.count += len(lines)
        self.examples.extend(lines[: max(self.keep - len(self.examples), 0)])

    def merge(self, other: Examples) -> None:
        self.add(other.examples)
        self.count += other.count - len(other.examples)

    @property
    def first(self) -> str:
        return self.examples[0] if self.examples else ""


def require_readable(manifest: Manifest, role: str, batch_size: int = 1024) -> None:
    """A one-line ManifestError unless some image of ``manifest`` decodes: read in order, it
    stops at the first that does (one image, normally), so a training run never starts, and
    an evaluation never reports an accuracy, on a manifest with nothing readable in it."""
    tried, first = 0, None
    for _, where in manifest.iter_addresses(batch_size=batch_size):
        for i in range(len(where)):
            try:
                load_image(where.address(i), "L")
                return
            except DECODE_ERRORS as e:
                tried += 1
                first = first or f"{where.address(i)}: {type(e).__name__}: {clean(str(e))}"
    if tried:
        raise ManifestError(
            manifest.path,
            f"has no readable image (all {tried:,} unreadable; first: {first})",
            f"fix or rebuild its images before using it as the {role} manifest (`datl manifest validate` lists them)",
        )


def clean(message: str) -> str:
    """An error message without the memory addresses some carry (``<_io.BytesIO object at
    0x7f...>``), so the same file gives the same words on every run."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", message)
