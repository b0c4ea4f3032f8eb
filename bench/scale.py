"""Does `curate dedup` stream? A synthetic source of 1,000,000 small PNGs in WebDataset tar
shards, with 1,000 planted near copies of a 10,000-image target. Prints, each measured in
its own process:

    rss ratio        = dedup peak RSS at 1M source rows / at 100k rows       (goal <= 1.3)
    throughput ratio = dedup images/s / read+decode images/s, same images     (goal >= 0.7)
    manifest build   = rows/s of `datl manifest build` over the tar shards
    recall           = planted copies found / 1,000                          (goal 1.0)

dedup runs with --no-feature (hashes + pixel descriptors, no model): the model's share is
timed separately with --with-model (embedding images/s of a test_resnet on 100k rows).

    python bench/scale.py --dir /tmp/datl-scale [--rows 1000000] [--with-model]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datl.curate.features.pixel import VIEWS  # noqa: E402

BIN = Path(sys.executable).parent
SIDE = 32
PER_SHARD = 10_000


def field(rng: np.random.Generator) -> np.ndarray:
    """A random 8x8 field, bicubic to 32x32: distinct images correlate little at 16x16."""
    small = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return np.asarray(small.resize((SIDE, SIDE), Image.BICUBIC), dtype=np.float32)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def near_copy(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A scraped copy: brightness and contrast changed, a 90% crop resized back, a little noise."""
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    c = int(rng.integers(0, 4))
    img = img.crop((c, c, c + 29, c + 29)).resize((SIDE, SIDE), Image.BILINEAR)
    b = np.asarray(img, np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-20, 20)
    return b + rng.normal(0, 3, b.shape)


def make_data(folder: Path, rows: int, seed: int = 0) -> dict:
    """Target: 10,000 distinct images (loose PNGs). Source: `rows` images in tar shards, copies of
    5,000 base images each changed by a cheap edit (a brightness offset and noise), with
    1,000 near copies of target images planted at random rows."""
    rng = np.random.default_rng(seed)
    (folder / "target").mkdir(parents=True, exist_ok=True)
    targets = [field(rng) for _ in range(10_000)]
    for i, t in enumerate(targets):
        (folder / "target" / f"t{i:05d}.png").write_bytes(png(t))
    bases = [field(rng) for _ in range(5_000)]
    planted = dict(zip(rng.choice(rows, 1_000, replace=False).tolist(), rng.choice(10_000, 1_000, replace=False)))
    (folder / "shards").mkdir(exist_ok=True)
    (folder / "shards" / "classes.txt").write_text("".join(f"c{k}\n" for k in range(10)))
    for s in range(0, rows, PER_SHARD):
        with tarfile.open(folder / "shards" / f"src-{s // PER_SHARD:05d}.tar", "w") as tf:
            for i in range(s, min(s + PER_SHARD, rows)):
                if i in planted:
                    a = near_copy(targets[planted[i]], rng)
                else:
                    a = bases[i % 5_000] + rng.uniform(-30, 30) + rng.normal(0, 2, (SIDE, SIDE))
                for name, data in ((f"{i:07d}.png", png(a)), (f"{i:07d}.cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    truth = {f"src-{i // PER_SHARD:05d}/{i:07d}": f"t{t:05d}.png" for i, t in planted.items()}
    (folder / "planted.json").write_text(json.dumps(truth))
    return truth


def measured(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of one command in a process of its own."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "dt = time.perf_counter() - t; sys.stderr.write(r.stderr); "
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stdout); "
        "sys.exit(r.returncode)"
    )
    res = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{res.stderr[-3000:]}")
    first, _, rest = res.stdout.partition("\n")
    seconds, rss_kb = first.split()
    return float(seconds), int(rss_kb) / 1024, rest


def _decode_part(path: str, lo: int, hi: int) -> int:
    from datl.manifests import Manifest
    from datl.manifests.address import AddressColumns
    from datl.manifests.reading import read_bytes

    m = Manifest(path)
    where = AddressColumns(m.read_range(lo, hi, ["path", *m.address_columns]), str(m.folder))
    for i in range(len(where)):
        with Image.open(io.BytesIO(read_bytes(where.address(i)))) as im:
            im.draft("L", (64, 64))
            im.convert("L")
    return hi - lo


def floor_rate(manifest: Path) -> float:
    """Read and decode every image of the manifest to grey, split over the same worker processes
    and parts as dedup's content pass: images/s."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from datl.core.pool import cores_per_rank
    from datl.manifests import Manifest

    n, workers = Manifest(manifest).num_rows, cores_per_rank()
    step = 4096
    parts = [(str(manifest), a, min(a + step, n)) for a in range(0, n, step)]
    t = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        done = sum(pool.map(_decode_part, *zip(*parts)))
    return done / (time.perf_counter() - t)


def head(manifest: Path, rows: int, out: Path) -> Path:
    """The first `rows` rows of a manifest (same shards), streamed."""
    import pyarrow.parquet as pq

    from datl.manifests import Manifest, write_manifest

    m = Manifest(manifest)
    pf = pq.ParquetFile(manifest)

    def batches():
        left = rows
        for b in pf.iter_batches(batch_size=65_536):
            if left <= 0:
                return
            yield b.slice(0, left)
            left -= b.num_rows

    return write_manifest(out, batches(), m.meta, schema=pf.schema_arrow)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/datl-scale")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000, help="The smaller run of the RSS comparison.")
    ap.add_argument("--with-model", action="store_true", help="Also time the feature check's embeddings.")
    args = ap.parse_args()
    d = Path(args.dir)
    if not (d / "planted.json").exists():
        t = time.perf_counter()
        make_data(d, args.rows)
        print(
            f"generated {args.rows:,} source images in tar shards + 10,000 target images in "
            f"{time.perf_counter() - t:.0f} s"
        )
    truth = json.loads((d / "planted.json").read_text())

    secs, rss, _ = measured(
        [str(BIN / "datl"), "manifest", "build", str(d / "shards"), "--out", str(d / "source.parquet")]
    )
    build_rate = args.rows / secs
    measured([str(BIN / "datl"), "manifest", "build", str(d / "target"), "--out", str(d / "target.parquet")])
    head(d / "source.parquet", args.small, d / "source_small.parquet")
    (d / "source_full.parquet").unlink(missing_ok=True)
    (d / "source_full.parquet").symlink_to("source.parquet")

    head(d / "source.parquet", 1_000, d / "source_tiny.parquet")

    def dedup(name: str) -> tuple[float, float, str]:
        return measured(
            [
                str(BIN / "curate"),
                "dedup",
                "--source",
                str(d / f"source_{name}.parquet"),
                "--target",
                str(d / "target.parquet"),
                "--no-feature",
                "--out",
                str(d / f"dups_{name}.parquet"),
                "--cache",
                str(d / "cache"),
                "-q",
            ]
        )

    target_secs = dedup("tiny")[0]  # computes and caches the target side and its index
    fixed = dedup("tiny")[0]  # start-up, loading the cached target side, merge: paid once per run
    runs = {"small": dedup("small"), "full": dedup("full")}
    floor = floor_rate(d / "source.parquet")

    import pyarrow.parquet as pq

    found = dict(zip(*pq.read_table(d / "dups_full.parquet", columns=["id", "target_id"]).to_pydict().values()))
    recall = sum(i in found for i in truth) / len(truth)
    right = sum(found.get(i) == t for i, t in truth.items()) / len(truth)
    false_pos = sum(i not in truth for i in found) / args.rows
    rate = args.rows / (runs["full"][0] - fixed)
    cpu = f"{len(os.sched_getaffinity(0))} cores"
    print(f"machine: {cpu}, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    print(
        f"manifest build        : {build_rate:12,.0f} rows/s ({args.rows:,} rows in {secs:.1f} s, peak {rss:,.0f} MiB)"
    )
    print(f"dedup {args.small:>9,} rows : {runs['small'][0]:8.1f} s, peak RSS {runs['small'][1]:8,.0f} MiB")
    print(f"dedup {args.rows:>9,} rows : {runs['full'][0]:8.1f} s, peak RSS {runs['full'][1]:8,.0f} MiB")
    print(f"rss ratio (full/small): {runs['full'][1] / runs['small'][1]:12.3f}   (goal <= 1.3)")
    print(f"read+decode floor     : {floor:12,.0f} images/s")
    print(f"target side, once     : {target_secs:8.1f} s (10,000 images x {VIEWS} views: descriptors, IVF index)")
    print(f"per-run fixed cost    : {fixed:8.1f} s (start-up, cached target side, merge; timed on 1,000 rows)")
    print(
        f"dedup (no model)      : {rate:12,.0f} images/s over the source (whole command: "
        f"{args.rows / runs['full'][0]:,.0f} images/s)"
    )
    print(f"throughput ratio      : {rate / floor:12.3f}   (goal >= 0.7)")
    print(
        f"planted copies        : recall {recall:.4f}, right original {right:.4f}, "
        f"false positives {false_pos:.4%} of the source"
    )
    if args.with_model:
        from datl.neural.checkpoint import ModelConfig, save_run
        from datl.neural.modeling import create_model

        run = d / "model"
        if not (run / "model.safetensors").exists():
            m = create_model("test_resnet", 10, 1)
            save_run(
                run,
                m,
                ModelConfig(
                    arch="test_resnet",
                    classes=[f"c{k}" for k in range(10)],
                    image_size=[SIDE, SIDE],
                    in_chans=1,
                    mean=[0.5],
                    std=[0.5],
                    num_features=m.num_features,
                ),
            )
        secs_m, rss_m, _ = measured(
            [
                str(BIN / "curate"),
                "dedup",
                "--source",
                str(d / "source_small.parquet"),
                "--target",
                str(d / "target.parquet"),
                "--model",
                str(run),
                "--out",
                str(d / "dups_model.parquet"),
                "--cache",
                str(d / "cache"),
                "-q",
            ]
        )
        print(
            f"dedup with test_resnet features, {args.small:,} rows: {args.small / secs_m:,.0f} images/s, "
            f"peak RSS {rss_m:,.0f} MiB"
        )


if __name__ == "__main__":
    main()
