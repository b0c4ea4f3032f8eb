"""What the source side costs on photo-sized colour JPEGs (issue 26), not on 32x32 grey PNGs.

A deterministic set of photo-like JPEGs (500x375, quality 90, about 60-150 KB: a colour field
with texture at several scales and grain, not flat fills) in WebDataset tar shards (key.jpg +
key.cls), with edited copies of a 1,000-image target planted in the source (one in a hundred:
a 90% crop resized back and re-encoded at quality 75, or a brightness change and a resize to
320x240). Prints, measured in one run on the same images and cores:

    floor              read + full decode (PIL convert("RGB")), forked like dedup: images/s
    dedup (no model)   `curate dedup --no-feature` from images: images/s over the source
                       (the per-run fixed cost taken out, as in scale.py) and the ratio to
                       the floor; recall of the planted copies
    rss ratio          dedup peak RSS at --n rows / at --n / 10 rows
    loader             pretrain's loader (decode + random-resized-crop 224 + flip +
                       normalise, batches out of a DataLoader with one worker) against the
                       same work in a bare loop in one process: CPU images/s per core
    features           `curate features` (no model) over the source: images/s (fixed cost
                       out) and the ratio to the floor; its RSS at --n / 10 rows and --n
    store              dedup of the same target with a fresh chunk cache, from the store
                       (`--source-features`) against from images: source-side seconds and
                       the speed-up; recall of the planted copies both ways; identical output
    with a model       with --model (and --device cuda on a GPU node): `curate features`
                       with embeddings and logits on the --n / 10 source, images/s against
                       the CPU floor (JPEGs decoded on the CPU: no GPU decoding yet)

    python bench/photos.py [--dir /tmp/datl-photos] [--n 100000]
                           [--model RUN_DIR|timm:ARCH [--weights FILE] [--device cuda]]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from scale import head, measured  # noqa: E402

BIN = Path(sys.executable).parent
W, H = 500, 375
PER_SHARD = 5_000
TARGET = 1_000
PLANT_EVERY = 100  # one planted copy per this many source rows


def photo(rng: np.random.Generator) -> Image.Image:
    """A photo-like colour image: smooth colour fields at three scales, blended, plus grain."""
    a = np.zeros((H, W, 3), np.float32)
    for (gh, gw), amp in (((3, 4), 1.0), ((12, 16), 0.5), ((48, 64), 0.25)):
        field = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8)
        a += amp * np.asarray(Image.fromarray(field).resize((W, H), Image.BICUBIC), np.float32)
    a = a / 1.75 + rng.standard_normal((H, W, 3), dtype=np.float32) * rng.uniform(8, 20)  # grain: the file size
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def edited(img: Image.Image, rng: np.random.Generator) -> bytes:
    """A scraped copy: a 90% crop resized back at quality 75, or brighter and 320x240."""
    if rng.random() < 0.5:
        cw, ch = int(W * 0.9), int(H * 0.9)
        x, y = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
        return jpeg(img.crop((x, y, x + cw, y + ch)).resize((W, H), Image.BILINEAR), 75)
    a = np.asarray(img, np.float32) * rng.uniform(0.8, 0.9) + rng.uniform(15, 30)
    return jpeg(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).resize((320, 240), Image.BILINEAR), 85)


def _make_shard(folder: str, s: int, n: int, seed: int) -> dict:
    """Shard s (rows s*PER_SHARD ...): its own generator, so shards can be made in parallel."""
    rng = np.random.default_rng([seed, s])
    planted = {}
    with tarfile.open(Path(folder) / "shards" / f"src-{s:05d}.tar", "w") as tf:
        for i in range(s * PER_SHARD, min((s + 1) * PER_SHARD, n)):
            if i % PLANT_EVERY == PLANT_EVERY // 2:
                t = (i // PLANT_EVERY) % TARGET  # a target image is re-made from its own seed
                data = edited(photo(np.random.default_rng([seed, 10**6, t])), rng)
                planted[f"src-{s:05d}/{i:07d}"] = f"t{t:05d}.jpg"
            else:
                data = jpeg(photo(rng))
            for name, b in ((f"{i:07d}.jpg", data), (f"{i:07d}.cls", str(i % 10).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))
    return planted


def _make_targets(folder: str, lo: int, hi: int, seed: int) -> int:
    for t in range(lo, hi):
        (Path(folder) / "target" / f"t{t:05d}.jpg").write_bytes(jpeg(photo(np.random.default_rng([seed, 10**6, t]))))
    return hi - lo


def make_data(folder: Path, n: int, seed: int = 0) -> dict:
    """The target (TARGET loose JPEGs) and the source shards, over the cores; planted.json."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    (folder / "target").mkdir(parents=True, exist_ok=True)
    (folder / "shards").mkdir(exist_ok=True)
    (folder / "shards" / "classes.txt").write_text("".join(f"c{k}\n" for k in range(10)))
    cores = len(os.sched_getaffinity(0))
    truth: dict = {}
    with ProcessPoolExecutor(cores, mp_context=mp.get_context("fork")) as pool:
        steps = [(str(folder), a, min(a + 100, TARGET), seed) for a in range(0, TARGET, 100)]
        sum(pool.map(_make_targets, *zip(*steps)))
        shards = [(str(folder), s, n, seed) for s in range(-(-n // PER_SHARD))]
        for planted in pool.map(_make_shard, *zip(*shards)):
            truth.update(planted)
    (folder / "planted.json").write_text(json.dumps(truth))
    return truth


def _decode_part(path: str, lo: int, hi: int) -> int:
    from datl.manifests import Manifest
    from datl.manifests.address import AddressColumns
    from datl.manifests.reading import read_bytes

    m = Manifest(path)
    for a in AddressColumns(m.read_range(lo, hi, ["path", *m.address_columns]), str(m.folder)).addresses():
        with Image.open(io.BytesIO(read_bytes(a))) as im:
            im.convert("RGB")
    return hi - lo


def floor_rate(manifest: Path) -> float:
    """Read and fully decode every image to RGB over this rank's cores, as dedup forks: images/s."""
    from datl.core.pool import fork_map
    from datl.manifests import Manifest

    n = Manifest(manifest).num_rows
    parts = [(str(manifest), a, min(a + 1024, n)) for a in range(0, n, 1024)]
    t = time.perf_counter()
    done = sum(r for _, r in fork_map(_decode_part, parts))
    return done / (time.perf_counter() - t)


def loader_rates(manifest: Path, rows: int, batch: int = 64) -> tuple[float, float]:
    """(pretrain's loader with one worker, the same decode + transform + stack in a bare loop):
    images/s, over the same first ``rows`` rows."""
    import torch

    from datl.manifests import Manifest
    from datl.manifests.address import AddressColumns
    from datl.manifests.images import load_image
    from datl.neural.data import build_transform, make_loader

    torch.set_num_threads(1)
    m = Manifest(head(manifest, rows, manifest.with_name("loader.parquet")))
    tf = build_transform((224, 224), 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], train=True, hflip=0.5)
    loader = make_loader(m, tf, "RGB", batch, workers=1, rank=0, world=1, seed=0, shuffle=True)
    it = iter(loader)
    next(it)  # the worker's start-up is not the loader's rate
    t, n = time.perf_counter(), 0
    for b in it:
        n += len(b.images)
    fed = n / (time.perf_counter() - t)
    where = AddressColumns(m.read(["path", *m.address_columns]), str(m.folder)).addresses()
    t, n = time.perf_counter(), 0
    for lo in range(batch, len(where), batch):  # the same rows minus the first batch
        imgs = torch.stack([tf(load_image(a, "RGB")) for a in where[lo : lo + batch]])
        n += len(imgs)
    return fed, n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/datl-photos")
    ap.add_argument("--n", type=int, default=100_000, help="Source images (made once per --dir).")
    ap.add_argument("--loader-rows", type=int, default=2_000)
    ap.add_argument(
        "--model",
        help="Also time `curate features --model MODEL` (embeddings + logits) on the --n / 10 source: "
        "a RUN_DIR, or timm:ARCH with --weights (on a GPU node: --device cuda).",
    )
    ap.add_argument("--weights", help="Local state dict for --model timm:ARCH.")
    ap.add_argument("--image-size", type=int, default=224, help="The model's input size for timm:ARCH.")
    ap.add_argument("--device", default="auto", help="Device of the model pass (auto, cpu, cuda).")
    args = ap.parse_args()
    d = Path(args.dir)
    if not (d / "planted.json").exists():
        t = time.perf_counter()
        make_data(d, args.n)
        print(
            f"generated {args.n:,} source photos in tar shards + {TARGET:,} target photos "
            f"in {time.perf_counter() - t:.0f} s"
        )
    truth = json.loads((d / "planted.json").read_text())
    src = d / "source.parquet"
    if not src.exists():
        measured([str(BIN / "datl"), "manifest", "build", str(d / "shards"), "--out", str(src)])
        measured([str(BIN / "datl"), "manifest", "build", str(d / "target"), "--out", str(d / "target.parquet")])
    head(src, args.n // 10, d / "source_small.parquet")
    head(src, 200, d / "source_tiny.parquet")
    sizes = [f.stat().st_size for f in sorted((d / "target").iterdir())[:200]]

    def dedup(name: str, store: bool = False) -> tuple[float, float, str]:
        """dedup of source_NAME against the (cached) target side, the source's chunk results
        dropped first; ``store``: from its feature store, with a cache of its own (a second
        target's cost)."""
        import shutil

        out = d / f"dups_{name}{'_store' if store else ''}.parquet"
        out.unlink(missing_ok=True)
        cache = d / ("cache_store" if store else "cache")
        for old in cache.glob(f"source_{name}.chunks.*"):  # the source side is measured, never reused
            shutil.rmtree(old)
        cmd = [str(BIN / "curate"), "dedup", "--source", str(d / f"source_{name}.parquet"), "--target"]
        cmd += [str(d / "target.parquet"), "--no-feature", "--out", str(out), "--cache", str(cache), "-q"]
        return measured(cmd + (["--source-features", str(d / f"store_{name}")] if store else []))

    def features(name: str, *model: str) -> tuple[float, float, str]:
        import shutil

        store = d / f"store_{name}{'_model' if model else ''}"
        shutil.rmtree(store, ignore_errors=True)
        cmd = [str(BIN / "curate"), "features", "--source", str(d / f"source_{name}.parquet")]
        return measured(cmd + ["--out", str(store), "-q", *model])

    (d / "source_full.parquet").unlink(missing_ok=True)
    (d / "source_full.parquet").symlink_to("source.parquet")
    target_secs = dedup("tiny")[0]
    fixed = dedup("tiny")[0]
    runs = {"small": dedup("small"), "full": dedup("full")}
    feat_fixed = features("tiny")[0]
    feats = {"small": features("small"), "full": features("full")}
    dedup("tiny", store=True)
    store_fixed = dedup("tiny", store=True)[0]
    from_store = dedup("full", store=True)
    with_model = None
    if args.model:  # the model pass: embeddings and logits of the --n / 10 source, against no model
        model = ["--model", args.model, "--device", args.device, "--image-size", str(args.image_size)]
        model += ["--weights", args.weights] if args.weights else []
        if not args.model.startswith("timm:"):
            model = model[:4]  # a run folder knows its input size
        with_model = features("tiny", *model)[0], features("small", *model)[0]
    floor = floor_rate(src)
    fed, bare = loader_rates(src, args.loader_rows)

    import pyarrow.parquet as pq

    found = dict(zip(*pq.read_table(d / "dups_full.parquet", columns=["id", "target_id"]).to_pydict().values()))
    recall = sum(i in found for i in truth) / len(truth)
    right = sum(found.get(i) == t for i, t in truth.items()) / len(truth)
    false_pos = sum(i not in truth for i in found) / args.n
    rate = args.n / (runs["full"][0] - fixed)
    print(
        f"machine: {len(os.sched_getaffinity(0))} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    )
    print(
        f"photos                : {W}x{H} JPEG q90, target files {np.mean(sizes) / 1024:.0f} KB on average "
        f"({min(sizes) / 1024:.0f}-{max(sizes) / 1024:.0f})"
    )
    print(f"read+full decode floor: {floor:12,.0f} images/s")
    print(f"target side, once     : {target_secs:8.1f} s ({TARGET:,} images); per-run fixed cost {fixed:.1f} s")
    print(f"dedup (no model)      : {rate:12,.0f} images/s over the source; ratio to the floor {rate / floor:.3f}")
    print(
        f"rss ratio             : {runs['full'][1] / runs['small'][1]:12.3f}   "
        f"({args.n:,} rows {runs['full'][1]:,.0f} MiB, "
        f"{args.n // 10:,} rows {runs['small'][1]:,.0f} MiB; goal <= 1.3)"
    )
    print(
        f"planted copies        : recall {recall:.4f} of {len(truth):,}, right original {right:.4f}, "
        f"false positives {false_pos:.4%} of the source"
    )
    print(
        f"pretrain loader       : {fed:12,.0f} images/s (1 worker) against a bare loop {bare:,.0f}: ratio "
        f"{fed / bare:.3f}   (goal >= 0.9)"
    )
    frate = args.n / (feats["full"][0] - feat_fixed)
    print(
        f"curate features       : {frate:12,.0f} images/s (no model; per-run fixed cost {feat_fixed:.1f} s); "
        f"ratio to the floor {frate / floor:.3f}   (goal >= 1.0); rss ratio "
        f"{feats['full'][1] / feats['small'][1]:.3f} ({feats['full'][1]:,.0f} / {feats['small'][1]:,.0f} MiB)"
    )
    img_s, store_s = runs["full"][0] - fixed, from_store[0] - store_fixed
    same = (
        pq.read_table(d / "dups_full.parquet")
        .replace_schema_metadata(None)
        .equals(pq.read_table(d / "dups_full_store.parquet").replace_schema_metadata(None))
    )
    found_s = set(pq.read_table(d / "dups_full_store.parquet", columns=["id"]).column("id").to_pylist())
    print(
        f"dedup from the store  : source side {store_s:.1f} s against {img_s:.1f} s from images: "
        f"{img_s / store_s:.1f}x   (goal >= 20x); recall {sum(i in found_s for i in truth) / len(truth):.4f}; "
        f"output {'identical' if same else 'DIFFERENT'} to the image path's"
    )
    if with_model is not None:
        mrate = (args.n // 10) / (with_model[1] - with_model[0])
        print(
            f"features with a model : {mrate:12,.0f} images/s ({args.model} on {args.device}; the pixel pass, "
            f"the model's decode + resize on this CPU, embeddings and logits); ratio to the CPU floor "
            f"{mrate / floor:.3f}"
        )


if __name__ == "__main__":
    main()
