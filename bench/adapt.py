"""finetune --adapt on a real domain shift: font-rendered digit glyphs (labeled) -> the
real handwritten scikit-learn digits (unlabeled for training, labeled for testing).

Every method and `none` (the baseline, timed in the same run), over seeds; prints one
table of target test accuracy, mean and spread, and each method's gain over `none`.

    python bench/adapt.py                          # full demo data in demo/data (built if missing)
    python bench/adapt.py --steps 300 --seeds 3 --model resnet18 --device cuda

With --few-labels K, every run also gets K labeled target images of each of the first
--few-classes classes (``finetune --train-target``, drawn with a fixed seed from the
demo's target_train), Tzeng et al.'s supervised (all classes) and semi-supervised (some
classes) settings; a method ``M+soft`` adds ``--soft-labels``. Default methods then:
none, none+soft, confusion, confusion+soft.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from finetune.adapt import names as adapt_names  # noqa: E402
from manifests import Manifest, ManifestMeta, write_manifest  # noqa: E402
from manifests.demo import build_demo  # noqa: E402

METHODS = adapt_names()  # none and every registered --adapt method


def glyph_digits(data: Path, out: Path) -> Path:
    """The source's glyph/0 .. glyph/9 rows, relabeled to the target's classes '0'..'9'."""
    src = Manifest(data / "source.parquet")
    ids = [src.classes.index(f"glyph/{k}") for k in range(10)]
    t = src.read(["id", "path", "label"])
    t = t.filter(pc.is_in(t.column("label"), pa.array(ids, pa.int32())))
    remap = np.full(len(src.classes), -1, np.int32)
    remap[ids] = np.arange(10, dtype=np.int32)
    table = pa.table({"id": t.column("id"), "path": [src.resolve(p) for p in t.column("path").to_pylist()],
                      "label": pa.array(remap[t.column("label").to_numpy()], pa.int32())})
    return write_manifest(out, table, ManifestMeta(classes=[str(k) for k in range(10)], stage="bench-adapt"))


def few_labels(data: Path, out: Path, per_class: int, classes: int) -> Path:
    """``per_class`` rows of each of the first ``classes`` classes of target_train (seed 0)."""
    src = Manifest(data / "target_train.parquet")
    t = src.read(["id", "path", "label"])
    labels = t.column("label").to_numpy()
    rng = np.random.default_rng(0)
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(classes)]))
    t = t.take(pa.array(rows))
    table = pa.table({"id": t.column("id"), "path": [src.resolve(p) for p in t.column("path").to_pylist()],
                      "label": t.column("label")})
    return write_manifest(out, table, ManifestMeta(classes=src.classes, stage="bench-adapt"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "demo" / "data"))
    ap.add_argument("--out", default="/tmp/datl-bench-adapt")
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", help=f"comma-separated, of {', '.join(METHODS)}; M+soft with --few-labels; mmd+equal; M+ramp; M+t0")
    ap.add_argument("--few-labels", type=int, default=0, help="labeled target images per class (--train-target)")
    ap.add_argument("--few-classes", type=int, default=10, help="classes that get them (the first N)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "source.parquet").exists():
        build_demo(data, seed=0, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    train = glyph_digits(data, out / "glyph_digits.parquet")
    few = few_labels(data, out / "few.parquet", args.few_labels, args.few_classes) if args.few_labels else None
    methods = (args.methods or ("none,none+soft,confusion,confusion+soft" if few else ",".join(METHODS))).split(",")
    bin_ = Path(sys.executable).parent
    results: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    unlabeled_classes: dict[str, list[float]] = {}
    for method in methods:
        adapt, *mods = method.split("+")  # +soft: --soft-labels; +learned/+equal: --mmd-kernels; +ramp: --trade-off-ramp; +t0: --trade-off 0
        for seed in range(args.seeds):
            run = out / f"{method}.s{seed}"
            cmd = [str(bin_ / "finetune"), "--model", args.model, "--train", str(train),
                   "--test", str(data / "target_test.parquet"), "--out", str(run), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(seed),
                   "--workers", "1", "--device", args.device, "-q", "--adapt", adapt]
            if adapt != "none":
                cmd += ["--unlabeled", str(data / "target_unlabeled.parquet")]
            if few:
                cmd += ["--train-target", str(few)] + (["--soft-labels"] if "soft" in mods else [])
            if "learned" in mods or "equal" in mods:
                cmd += ["--mmd-kernels", "learned" if "learned" in mods else "equal"]
            if "ramp" in mods:
                cmd += ["--trade-off-ramp"]
            if "t0" in mods:  # trade-off 0: the AdaptNet and its two-domain batches, no transfer loss
                cmd += ["--trade-off", "0"]
            if run.exists():
                subprocess.run(["rm", "-rf", str(run)], check=True)
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            seconds[method] = seconds.get(method, 0.0) + time.time() - t0
            metrics = json.loads((run / "metrics.json").read_text())
            acc = metrics["test_accuracy"]
            results.setdefault(method, []).append(acc)
            per_class = metrics["per_class_accuracy"]
            rest = [per_class[str(k)] for k in range(args.few_classes, 10)]
            if few and rest:  # classes without a labeled target image: what soft labels are for
                unlabeled_classes.setdefault(method, []).append(statistics.fmean(rest))
            print(f"{method:14s} seed {seed}: {acc:.4f}", flush=True)
    base = statistics.fmean(results["none"]) if "none" in results else None
    print(f"\nglyph digits ({Manifest(train).num_rows:,} labeled) -> sklearn digits "
          f"(1,797 unlabeled; tested on 1,697), {args.model}, {args.steps} steps, batch {args.batch_size}+"
          f"{args.batch_size}, {args.seeds} seeds"
          + (f"; + {args.few_labels} labeled target image(s) of each of classes 0-{args.few_classes - 1}" if few else ""))
    extra = f" classes {args.few_classes}-9 (no target label) |" if unlabeled_classes else ""
    print(f"| method | mean accuracy | std | min - max | vs none | s per run |{extra}")
    print("| --- | ---: | ---: | --- | ---: | ---: |" + (" ---: |" if extra else ""))
    for m, v in results.items():
        mean = statistics.fmean(v)
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        gain = f"{100 * (mean - base):+.1f} pt" if base is not None and m != "none" else "-"
        cell = f" {statistics.fmean(unlabeled_classes[m]):.4f} |" if extra else ""
        print(f"| {m} | {mean:.4f} | {sd:.4f} | {min(v):.4f} - {max(v):.4f} | {gain} | {seconds[m] / len(v):.1f} |{cell}")


if __name__ == "__main__":
    main()
