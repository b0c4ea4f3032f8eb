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
``VIEWS`` = 76 views of each image: the whole image, and crops keeping 84%, 90% and 96% of
each side at 5 x 5 positions on a grid, each resized to 16x16. A source image cropped
to 85-95% of its target original then sits close to one of its views. Source images get
one descriptor each. Unreadable images get hash ``b""`` (no file) or a zero descriptor
(not decodable), which matches nothing.
"""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from manifests import Manifest
from manifests.shards import Address, read_bytes

HASH_BYTES = 16
SIDE = 16
CROP_FRACTIONS = (0.84, 0.90, 0.96)
CROP_OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)
VIEWS = 1 + len(CROP_FRACTIONS) * len(CROP_OFFSETS) ** 2
PARAMS = f"side{SIDE}-crops{CROP_FRACTIONS}-offsets{CROP_OFFSETS}"  # part of the cache key


@dataclass
class Content:
    hashes: np.ndarray  # S16 per manifest row; b"" when the file cannot be read
    pixel: np.ndarray  # float16 (n, 256) or, for a target, (n, VIEWS, 256)
    readable: np.ndarray  # bool per row: the image could be read and decoded


def descriptor(img) -> np.ndarray:
    """Mean-free, L2-normalised 16x16 grey thumbnail (zeros for a flat image)."""
    from PIL import Image

    v = np.asarray(img.resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32).ravel()
    v = v - v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-6 else np.zeros_like(v)


def crop_views(img) -> list:
    """The whole image and its grid of crops (see the module docstring)."""
    w, h = img.size
    views = [img]
    for f in CROP_FRACTIONS:
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        for ay in CROP_OFFSETS:
            for ax in CROP_OFFSETS:
                x0, y0 = round(ax * (w - cw)), round(ay * (h - ch))
                views.append(img.crop((x0, y0, x0 + cw, y0 + ch)))
    return views


def _one(where: Address, views: bool) -> tuple[bytes, np.ndarray, bool]:
    from PIL import Image

    from manifests.images import DECODE_ERRORS

    shape = (VIEWS, SIDE * SIDE) if views else (SIDE * SIDE,)
    try:
        data = read_bytes(where)
    except OSError:
        return b"", np.zeros(shape, np.float32), False
    digest = hashlib.sha256(data).digest()[:HASH_BYTES]
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("L", (4 * SIDE, 4 * SIDE))  # JPEG: decode at reduced size, much faster
            grey = im.convert("L")
    except DECODE_ERRORS:
        return digest, np.zeros(shape, np.float32), False
    if not views:
        return digest, descriptor(grey), True
    return digest, np.stack([descriptor(v) for v in crop_views(grey)]), True


def content_pass(manifest: Manifest, views: bool, threads: int = 8, progress: bool = False,
                 rows: tuple[int, int] | None = None) -> Content:
    """Hashes and pixel descriptors of every row (or of rows [start, stop)), in manifest order;
    threads overlap the I/O."""
    from tqdm import tqdm

    from manifests.shards import AddressColumns

    if rows is None:
        batches = manifest.iter_addresses(batch_size=4096)
    else:
        t = manifest.read_range(*rows, ["path", *manifest.address_columns])
        batches = iter([(rows[0], AddressColumns(t, str(manifest.folder)))])
    hashes, pixel, readable = [], [], []
    bar = tqdm(total=manifest.num_rows if rows is None else rows[1] - rows[0],
               desc=f"hash+pixels {manifest.path.name}", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(threads) as pool:
        for _, where in batches:
            addresses = [where.address(i) for i in range(len(where))]
            for digest, vec, ok in pool.map(_one, addresses, [views] * len(addresses)):
                hashes.append(digest)
                pixel.append(vec.astype(np.float16))
                readable.append(ok)
            bar.update(len(addresses))
    bar.close()
    dim = (0, VIEWS, SIDE * SIDE) if views else (0, SIDE * SIDE)
    return Content(np.array(hashes, dtype=f"S{HASH_BYTES}"),
                   np.stack(pixel) if pixel else np.zeros(dim, np.float16), np.array(readable, dtype=bool))
