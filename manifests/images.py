"""Decoding images without torch: shared by validation, probing and ImageDataset."""
from __future__ import annotations

from collections import Counter

from PIL import Image, UnidentifiedImageError

from .errors import ManifestError
from .io import Manifest

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}
DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def load_image(path: str, mode: str) -> Image.Image:
    """Decode fully (so truncation surfaces here) and convert to ``mode`` ('L' or 'RGB')."""
    with Image.open(path) as im:
        im.load()
        return im.convert(mode)


def probe_images(manifest: Manifest, n: int = 32) -> tuple[tuple[int, int], int]:
    """The most common (height, width) and channel count (1 or 3) among the first ``n`` readable images."""
    sizes: Counter = Counter()
    grey = 0
    seen = 0
    for batch in manifest.iter_batches(["path"], batch_size=max(n, 1)):
        for p in batch.column(0).to_pylist():
            try:
                with Image.open(manifest.resolve(p)) as im:
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
