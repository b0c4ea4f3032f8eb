"""Decoding images without torch: shared by validation, probing, dedup and ImageDataset.

Every image is read through its Address (a loose file, a tar member or a row of an
image Parquet file: manifests/shards.py) and decoded from memory.
"""
from __future__ import annotations

import io
from collections import Counter

from PIL import Image, UnidentifiedImageError

from .errors import ManifestError
from .io import Manifest
from .shards import Address, read_bytes

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}
DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def load_image(where: str | Address, mode: str) -> Image.Image:
    """Decode fully (so truncation surfaces here) and convert to ``mode`` ('L' or 'RGB')."""
    with open_image(where) as im:
        im.load()
        return im.convert(mode)


def open_image(where: str | Address) -> Image.Image:
    """PIL's lazy open of an image file path or Address (the bytes are read here)."""
    a = where if isinstance(where, Address) else Address(str(where))
    return Image.open(io.BytesIO(read_bytes(a)))


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
        raise ManifestError(manifest.path, "none of its first images could be read",
                            "check the image paths with `datl manifest validate`")
    size = sizes.most_common(1)[0][0]
    return size, (1 if grey == seen else 3)
