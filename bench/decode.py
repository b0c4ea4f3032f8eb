"""What does the one decoding path (manifests/images.py: warnings caught, EXIF checked, every
mode converted explicitly) cost against PIL's bare open + load + convert, on the same bytes?

    ratio = bare images/s / decode_bytes images/s      (1.0: free; the loader's share of a step)

    python bench/decode.py [--manifest demo/data/source.parquet] [--n 4000] [--mode L]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datl.manifests import open_manifest  # noqa: E402
from datl.manifests.images import decode_bytes  # noqa: E402
from datl.manifests.reading import read_bytes  # noqa: E402


def bare(data: bytes, mode: str) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert(mode)


def rate(fn, blobs: list[bytes], mode: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for b in blobs:
            fn(b, mode)
        best = min(best, time.perf_counter() - t)
    return len(blobs) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default="demo/data/source.parquet")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--mode", default="L")
    args = ap.parse_args()
    m = open_manifest(args.manifest)
    blobs = []
    for _, where in m.iter_addresses(batch_size=args.n):
        blobs = [read_bytes(where.address(i)) for i in range(min(args.n, len(where)))]
        break
    base, ours = rate(bare, blobs, args.mode), rate(decode_bytes, blobs, args.mode)
    print(f"{len(blobs):,} images of {args.manifest}, mode {args.mode}, one core, best of 3")
    print(f"PIL open+load+convert : {base:10,.0f} images/s")
    print(f"decode_bytes          : {ours:10,.0f} images/s")
    print(f"ratio (bare / ours)   : {base / ours:10.2f}")


if __name__ == "__main__":
    main()
