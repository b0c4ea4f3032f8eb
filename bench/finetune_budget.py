"""How much of a pretrained checkpoint a short fine-tune gets (issue 28): fine-tune recipes
against a linear probe on the same features, chosen on validation, reported on test.

The check the issue describes: a resnet18 pretrained 3 epochs (pretrain's defaults) on 6,000
images of 10 classes, then fine-tuned 10 epochs on 500 labeled images of the same classes,
scored on images neither saw. Two sets: ``animals`` (Animal-MNIST silhouettes: 6,000
pretrain, 500 train, 1,000 val, 2,500 test), on which the recipes are compared and chosen,
and ``digits`` (MNIST: 3,000 pretrain, 500 train, 500 val, 1,000 test), kept aside: run once
with the chosen recipe. Prints val and test accuracy per recipe, mean over --seeds fine-tune
seeds with a 95% t interval, and the linear probe (logistic regression on the frozen pooled
features of the same checkpoint, C chosen on val).

    python bench/finetune_budget.py --set animals [--seeds 3] [--recipes default,lr0.1,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

BIN = Path(sys.executable).parent
RECIPES = {  # every recipe names its batch size: the default moved from 128 to 32 on this bench's evidence
    "default": [],
    "batch128": ["--batch-size", "128"],
    "batch32": ["--batch-size", "32"],
    "lr0.1": ["--lr", "0.1", "--batch-size", "128"],
    "lr0.1-batch32": ["--lr", "0.1", "--batch-size", "32"],
    "lr0.1-bb0.1": ["--lr", "0.1", "--backbone-lr-mult", "0.1", "--batch-size", "128"],
    "lr0.1-bb0.1-batch32": ["--lr", "0.1", "--backbone-lr-mult", "0.1", "--batch-size", "32"],
    "head-warmup": ["--head-warmup", "0.3", "--batch-size", "128"],
    "head-warmup-lr0.1": ["--head-warmup", "0.3", "--lr", "0.1", "--batch-size", "128"],
    "batch16": ["--batch-size", "16"],
    "batch32-head-warmup": ["--batch-size", "32", "--head-warmup", "0.3"],
    "batch32-bb0.3": ["--batch-size", "32", "--backbone-lr-mult", "0.3"],
}
SPLITS = {"animals": (6000, 500, 1000, 2500), "digits": (3000, 500, 500, 1000)}


def build(name: str, work: Path) -> dict[str, Path]:
    """The set's four manifests (pretrain, train, val, test), disjoint, classes balanced by chance."""
    from datl.demo import animal_items, mnist_items
    from datl.manifests import ManifestMeta, write_manifest

    rng = np.random.default_rng(0)
    items = animal_items(rng, 1.0, 0) if name == "animals" else mnist_items(rng, 1.0, 0)
    order = rng.permutation(len(items))
    classes = [str(i) for i in range(10)]
    out, start = {}, 0
    (work / "img").mkdir(parents=True, exist_ok=True)
    for split, n in zip(("pretrain", "train", "val", "test"), SPLITS[name]):
        rows = order[start : start + n]
        start += n
        paths = []
        for i in rows:
            p = work / "img" / f"{items[i].id}.png"
            if not p.exists():
                Image.fromarray(items[i].image, "L").save(p)
            paths.append(str(p))
        t = pa.table({"id": [items[i].id for i in rows], "path": paths,
                      "label": pa.array([items[i].label for i in rows], pa.int32())})  # fmt: skip
        out[split] = work / f"{split}.parquet"
        write_manifest(out[split], t, ManifestMeta(classes=classes))
    return out


def run(*args: str) -> None:
    res = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{res.stderr[-2000:]}")


def probe(ckpt: Path, m: dict[str, Path]) -> tuple[float, float]:
    """Linear probe: logistic regression on the frozen pooled features; C chosen on val."""
    from sklearn.linear_model import LogisticRegression

    from datl.manifests import Manifest
    from datl.neural.checkpoint import load_model
    from datl.neural.engine import dist
    from datl.neural.engine.inference import run_model

    lm = load_model(str(ckpt))
    d = dist.Dist(0, 1, 0, torch.device("cpu"))
    feats = {}
    for s in ("train", "val", "test"):
        rows, x, _ = run_model(lm, Manifest(m[s]), d, "features", progress=False)
        y = Manifest(m[s]).read(["label"]).column(0).to_numpy()[rows]
        feats[s] = (x, y)
    best = max(
        (
            (c, LogisticRegression(C=c, max_iter=3000).fit(*feats["train"]).score(*feats["val"]))
            for c in (0.01, 0.1, 1, 10)
        ),
        key=lambda t: t[1],
    )
    clf = LogisticRegression(C=best[0], max_iter=3000).fit(*feats["train"])
    return best[1], clf.score(*feats["test"])


def ci(v: list[float]) -> str:
    from scipy import stats

    a = np.asarray(v)
    if len(a) < 2:
        return f"{a.mean():.4f}"
    h = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return f"{a.mean():.4f} [{a.mean() - h:.4f}, {a.mean() + h:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=sorted(SPLITS), default="animals")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--work", default="/tmp/datl-ftbudget")
    ap.add_argument("--report-test", action="store_true", help="also print test accuracy (once, at the end)")
    args = ap.parse_args()
    work = Path(args.work) / args.set
    m = build(args.set, work)
    ckpt = work / "pretrained"
    if not (ckpt / "model.safetensors").exists():
        t0 = time.perf_counter()
        run("pretrain", "-m", str(m["pretrain"]), "--model", "resnet18", "--epochs", "3", "--out", str(ckpt), "-q")
        print(f"pretrained resnet18 3 epochs on {SPLITS[args.set][0]:,} images in {time.perf_counter() - t0:.0f} s")
    pv, pt = probe(ckpt, m)
    print(f"linear probe: val {pv:.4f}" + (f", test {pt:.4f}" if args.report_test else ""))
    for name in args.recipes.split(","):
        vals, tests = [], []
        for s in range(args.seeds):
            out = work / f"ft-{name}-s{s}"
            if not (out / "metrics.json").exists():
                run("finetune", "--checkpoint", str(ckpt), "--train", str(m["train"]), "--val", str(m["val"]),
                    "--test", str(m["test"]), "--epochs", "10", "--seed", str(s), "--out", str(out), "-q",
                    *RECIPES[name])  # fmt: skip
            r = json.loads((out / "metrics.json").read_text())
            vals.append(r["val_accuracy"])
            tests.append(r["test_accuracy"])
        line = f"{name:<22} val {ci(vals)}"
        print(line + (f"   test {ci(tests)}" if args.report_test else ""), flush=True)


if __name__ == "__main__":
    main()
