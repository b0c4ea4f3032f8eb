"""FAISS for `curate dedup`: IVF (the auto setting) against flat, on synthetic clustered embeddings.

Target: --targets L2-normalised vectors (d = 512) from 1,000 Gaussian clusters. Source:
--queries vectors from the same clusters, 1% of them planted near copies of target
vectors (the original plus noise: cosine about 0.95). Each index is built exactly as
`curate dedup` builds it (curate.dedup.build_index). Flat is timed on a subset of the
queries (it is the slow one) and both report queries/s, so the ratio is speed per query.

Prints queries/s of each, IVF/flat speed-up (goal >= 20x) and the recall of planted
copies: their best match is their original at similarity >= 0.90 (goal >= 0.99).

    python bench/dedup.py                      # 1M queries against 100k targets
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datl.curate.dedup import best_match, build_index  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1_000_000)
    ap.add_argument("--flat-queries", type=int, default=20_000, help="queries timed on the flat index")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--threshold", type=float, default=0.90)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1000, args.dim)).astype(np.float32)

    def cloud(n: int) -> np.ndarray:
        out = np.empty((n, args.dim), np.float32)
        for i in range(0, n, 100_000):
            m = min(100_000, n - i)
            out[i : i + m] = unit(centers[rng.integers(0, 1000, m)] + 0.9 * rng.normal(size=(m, args.dim)))
        return out

    target = cloud(args.targets)
    queries = cloud(args.queries)
    n_planted = args.queries // 100
    planted_at = rng.choice(args.queries, n_planted, replace=False)
    originals = rng.integers(0, args.targets, n_planted)
    noise = rng.normal(size=(n_planted, args.dim)).astype(np.float32)
    # cos(t, t + n) ~ 1 / sqrt(1 + sigma^2 d): sigma = 0.33 / sqrt(d) gives about 0.95
    queries[planted_at] = unit(target[originals] + (0.33 / np.sqrt(args.dim)) * noise)
    cos = (queries[planted_at] * target[originals]).sum(1)

    def recall(sims: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> float:
        where = {int(r): i for i, r in enumerate(rows)}
        hit = [
            pos[where[int(q)]] == o and sims[where[int(q)]] >= args.threshold
            for q, o in zip(planted_at, originals)
            if int(q) in where
        ]
        return float(np.mean(hit)), len(hit)

    print(
        f"targets {args.targets:,}  queries {args.queries:,} ({n_planted:,} planted, cosine to original "
        f"{cos.mean():.3f} +- {cos.std():.3f})  d {args.dim}  threads {len(os.sched_getaffinity(0))}"
    )

    flat, fdesc = build_index(target, "flat")
    sub = np.union1d(planted_at, rng.choice(args.queries, args.flat_queries, replace=False))
    t0 = time.perf_counter()
    fs, fp = best_match(flat, queries[sub])
    flat_qps = len(sub) / (time.perf_counter() - t0)
    frec, fn = recall(fs, fp, sub)

    t0 = time.perf_counter()
    ivf, idesc = build_index(target, "ivf")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    is_, ip = best_match(ivf, queries)
    ivf_qps = len(queries) / (time.perf_counter() - t0)
    irec, inn = recall(is_, ip, np.arange(args.queries))

    print(f"flat  {fdesc:<45} {flat_qps:10,.0f} queries/s   planted recall {frec:.4f} (of {fn:,})")
    print(
        f"ivf   {idesc:<45} {ivf_qps:10,.0f} queries/s   planted recall {irec:.4f} (of {inn:,})   build {build_s:.1f} s"
    )
    print(f"speed-up ivf/flat {ivf_qps / flat_qps:.1f}x (goal >= 20)   ivf recall {irec:.4f} (goal >= 0.99)")


if __name__ == "__main__":
    main()
