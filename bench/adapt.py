"""finetune --adapt on a real domain shift: font-rendered digit glyphs (labeled) -> the
real handwritten scikit-learn digits (unlabeled for training, labeled for testing).

Every method and `none` (the baseline, run in the same invocation) over paired seeds (the
same seed gives every arm the same initialisation and batch order), all on ONE recipe:
``finetune``'s defaults for two-domain runs, DANN's learning-rate annealing and lambda ramp
(``none`` gets the same annealing with ``--lr-schedule anneal``). Every run is also
evaluated on the demo's labeled validation split (target_val): choices are read there; the
test set (target_test) is only reported. Prints one table: validation and test accuracy,
and each arm's paired difference to `none` on test with its 95% t interval.

    python bench/adapt.py                          # full demo data in demo/data (built if missing)
    python bench/adapt.py --steps 300 --seeds 5 --model resnet18 --device cuda

With --few-labels K, every run also gets K labeled target images of each of the first
--few-classes classes (``finetune --train-target``, drawn with a fixed seed from the
demo's target_train), Tzeng et al.'s supervised (all classes) and semi-supervised (some
classes) settings; a method ``M+soft`` adds ``--soft-labels`` (soft labels from the network
being trained), ``M+teacher`` adds ``--soft-labels --soft-labels-from`` a test_resnet
trained first on the glyph digits alone (Tzeng et al.'s way). Default methods then:
none, none+soft, confusion, confusion+soft, confusion+teacher. Other modifiers: ``+equal``
(``--mmd-kernels equal``), ``+noramp`` (``--no-trade-off-ramp``), ``+t0`` (``--trade-off 0``).
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
from datl.demo import build_demo  # noqa: E402
from datl.finetune.adapt import names as adapt_names  # noqa: E402
from datl.manifests import Manifest, ManifestMeta, write_manifest  # noqa: E402
from datl.stats import paired_difference  # noqa: E402

METHODS = adapt_names()  # none and every registered --adapt method


def glyph_digits(data: Path, out: Path) -> Path:
    """The source's glyph/0 .. glyph/9 rows, relabeled to the target's classes '0'..'9'."""
    src = Manifest(data / "source.parquet")
    ids = [src.classes.index(f"glyph/{k}") for k in range(10)]
    t = src.read(["id", "path", "label"])
    t = t.filter(pc.is_in(t.column("label"), pa.array(ids, pa.int32())))
    remap = np.full(len(src.classes), -1, np.int32)
    remap[ids] = np.arange(10, dtype=np.int32)
    table = pa.table(
        {
            "id": t.column("id"),
            "path": [src.resolve(p) for p in t.column("path").to_pylist()],
            "label": pa.array(remap[t.column("label").to_numpy()], pa.int32()),
        }
    )
    return write_manifest(out, table, ManifestMeta(classes=[str(k) for k in range(10)], stage="bench-adapt"))


def few_labels(data: Path, out: Path, per_class: int, classes: int) -> Path:
    """``per_class`` rows of each of the first ``classes`` classes of target_train (seed 0)."""
    src = Manifest(data / "target_train.parquet")
    t = src.read(["id", "path", "label"])
    labels = t.column("label").to_numpy()
    rng = np.random.default_rng(0)
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(classes)]))
    t = t.take(pa.array(rows))
    table = pa.table(
        {
            "id": t.column("id"),
            "path": [src.resolve(p) for p in t.column("path").to_pylist()],
            "label": t.column("label"),
        }
    )
    return write_manifest(out, table, ManifestMeta(classes=src.classes, stage="bench-adapt"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "demo" / "data"))
    ap.add_argument("--out", default="/tmp/datl-bench-adapt")
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--methods",
        help=f"comma-separated, of {', '.join(METHODS)}; M+soft, M+teacher with --few-labels; "
        "mmd+equal; M+noramp; M+t0",
    )
    ap.add_argument("--few-labels", type=int, default=0, help="labeled target images per class (--train-target)")
    ap.add_argument("--few-classes", type=int, default=10, help="classes that get them (the first N)")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep runs an earlier invocation finished with the same command (same seeds give the same runs)",
    )
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "source.parquet").exists():
        build_demo(data, seed=0, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    train = glyph_digits(data, out / "glyph_digits.parquet")
    few = few_labels(data, out / "few.parquet", args.few_labels, args.few_classes) if args.few_labels else None
    methods = (
        args.methods or ("none,none+soft,confusion,confusion+soft,confusion+teacher" if few else ",".join(METHODS))
    ).split(",")
    bin_ = Path(sys.executable).parent
    teacher = out / "teacher"
    if any("teacher" in m for m in methods) and not (teacher / "metrics.json").exists():
        subprocess.run(
            [
                str(bin_ / "finetune"),
                "--model",
                args.model,
                "--train",
                str(train),
                "--test",
                str(data / "target_val.parquet"),
                "--out",
                str(teacher),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--lr",
                str(args.lr),
                "--workers",
                "1",
                "--device",
                args.device,
                "-q",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    results: dict[str, dict[str, float]] = {}
    val: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    unlabeled_classes: dict[str, list[float]] = {}
    for method in methods:
        adapt, *mods = method.split(
            "+"
        )  # +soft: --soft-labels; +learned/+equal: --mmd-kernels; +ramp: --trade-off-ramp; +t0: --trade-off 0
        for seed in range(args.seeds):
            run = out / f"{method}.s{seed}"
            cmd = [
                str(bin_ / "finetune"),
                "--model",
                args.model,
                "--train",
                str(train),
                "--test",
                str(data / "target_test.parquet"),
                "--val",
                str(data / "target_val.parquet"),
                "--out",
                str(run),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--lr",
                str(args.lr),
                "--seed",
                str(seed),
                "--workers",
                "1",
                "--device",
                args.device,
                "-q",
                "--adapt",
                adapt,
            ]
            if adapt != "none":
                cmd += ["--unlabeled", str(data / "target_unlabeled.parquet")]
            if few:
                cmd += ["--train-target", str(few)] + (["--soft-labels"] if {"soft", "teacher"} & set(mods) else [])
                cmd += ["--soft-labels-from", str(teacher)] if "teacher" in mods else []
            if adapt == "none":
                cmd += ["--lr-schedule", "anneal"]  # the same recipe as the methods'
            if "learned" in mods or "equal" in mods:
                cmd += ["--mmd-kernels", "learned" if "learned" in mods else "equal"]
            if "noramp" in mods:
                cmd += ["--no-trade-off-ramp"]
            if "t0" in mods:  # trade-off 0: the AdaptNet and its two-domain batches, no transfer loss
                cmd += ["--trade-off", "0"]
            done = run / "bench-cmd.json"
            if args.reuse and done.exists() and json.loads(done.read_text()) == cmd[1:]:
                seconds.setdefault(method, float("nan"))  # finished by an earlier invocation: not timed
            else:
                if run.exists():
                    subprocess.run(["rm", "-rf", str(run)], check=True)
                t0 = time.time()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                seconds[method] = seconds.get(method, 0.0) + time.time() - t0
                done.write_text(json.dumps(cmd[1:]))
            metrics = json.loads((run / "metrics.json").read_text())
            acc = metrics["test_accuracy"]
            results.setdefault(method, {})[str(seed)] = acc
            val.setdefault(method, []).append(metrics["val_accuracy"])
            per_class = metrics["per_class_accuracy"]
            rest = [per_class[str(k)] for k in range(args.few_classes, 10)]
            if few and rest:  # classes without a labeled target image: what soft labels are for
                unlabeled_classes.setdefault(method, []).append(statistics.fmean(rest))
            print(f"{method:18s} seed {seed}: test {acc:.4f}, val {metrics['val_accuracy']:.4f}", flush=True)
    n_unl, n_test = (
        Manifest(data / "target_unlabeled.parquet").num_rows,
        Manifest(data / "target_test.parquet").num_rows,
    )
    print(
        f"\nglyph digits ({Manifest(train).num_rows:,} labeled) -> sklearn digits "
        f"({n_unl:,} unlabeled, no test image among them; val {Manifest(data / 'target_val.parquet').num_rows}; "
        f"tested on {n_test:,}), {args.model}, {args.steps} steps, batch {args.batch_size}+"
        f"{args.batch_size}, {args.seeds} paired seeds"
        + (f"; + {args.few_labels} labeled target image(s) of each of classes 0-{args.few_classes - 1}" if few else "")
    )
    extra = f" classes {args.few_classes}-9 (no target label) |" if unlabeled_classes else ""
    print(f"| method | val accuracy | test accuracy | std | vs none (test, paired, 95% CI) | s per run |{extra}")
    print("| --- | ---: | ---: | ---: | --- | ---: |" + (" ---: |" if extra else ""))
    for m, per_seed in results.items():
        v = list(per_seed.values())
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        gain = "-"
        if "none" in results and m != "none":
            r = paired_difference(per_seed, results["none"], "none")
            gain = (
                f"{100 * r['diff_mean']:+.1f} pt [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]"
                if r["ci95"]
                else f"{100 * r['diff_mean']:+.1f} pt"
            )
        cell = f" {statistics.fmean(unlabeled_classes[m]):.4f} |" if extra else ""
        print(
            f"| {m} | {statistics.fmean(val[m]):.4f} | {statistics.fmean(v):.4f} | {sd:.4f} | {gain} | "
            f"{seconds[m] / len(v):.1f} |{cell}"
        )


if __name__ == "__main__":
    main()
