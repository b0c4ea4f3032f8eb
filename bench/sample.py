"""How close is `curate sample` to the I/O floor, and how does it beat the obvious pandas code?

Builds (once, cached in --dir) a synthetic source manifest of --rows rows over 18,291
classes (JFT's count) with a Zipf-skewed prior, and a weights table. Then times, each in
its own process (wall time and peak RSS from wait4):

    ours      `curate sample` (both modes, N = rows / 4)
    floor     pyarrow reading the columns sample needs (label, then every column) and
              writing an output of N rows: no sampling at all
    pandas    pd.read_parquet + DataFrame.sample(n=N, weights=w, replace=...) + to_parquet

and prints ours/floor and pandas/ours, with peak RSS against the in-memory size of the
columns read. Goals: ours within 2x of the floor; peak RSS under 3x the columns' size.

    python bench/sample.py --rows 10000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datl.manifests import ManifestMeta, write_manifest, write_table  # noqa: E402

CLASSES = 18_291


def build(d: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    src, wts = d / f"source_{rows}.parquet", d / f"weights_{rows}.parquet"
    if src.exists() and wts.exists():
        return src, wts
    rng = np.random.default_rng(seed)
    p_s = 1.0 / np.arange(1, CLASSES + 1) ** 1.1
    p_s /= p_s.sum()
    classes = [f"jft/{i:05d}" for i in range(CLASSES)]

    def batches(chunk=1_000_000):
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            idx = np.arange(start, start + n)
            ids = pa.array(np.char.add("img", idx.astype(str)))
            paths = pa.array(np.char.add(np.char.add("shard", (idx // 10_000).astype(str)), "/x.jpg"))
            yield pa.record_batch(
                [ids, paths, pa.array(rng.choice(CLASSES, n, p=p_s).astype(np.int32))], names=["id", "path", "label"]
            )

    write_manifest(src, batches(), ManifestMeta(classes=classes, stage="bench"))
    counts = np.bincount(pq.read_table(src, columns=["label"]).column("label").to_numpy(), minlength=CLASSES)
    p_source = counts / counts.sum()
    p_target = rng.dirichlet(np.full(CLASSES, 0.05)) * (counts > 0)
    p_target /= p_target.sum()
    weight = np.divide(p_target, p_source, out=np.zeros(CLASSES), where=p_source > 0)
    write_table(
        wts,
        pa.table(
            {
                "label": pa.array(np.arange(CLASSES, dtype=np.int32)),
                "class_name": classes,
                "n_source": counts,
                "p_source": p_source,
                "p_target": p_target,
                "weight": weight,
            }
        ),
        ManifestMeta(classes=classes, stage="weight"),
    )
    return src, wts


FLOOR = r"""
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
f = pq.ParquetFile(src)
labels = np.concatenate([b.column(0).to_numpy() for b in f.iter_batches(columns=["label"], batch_size=262144)])
step = max(len(labels) // n, 1)
with pq.ParquetWriter(out, f.schema_arrow, compression="zstd") as w:
    done = 0
    for b in f.iter_batches(batch_size=262144):
        t = pa.Table.from_batches([b]).take(pa.array(np.arange(0, b.num_rows, step)))[: n - done]
        w.write_table(t); done += t.num_rows
"""

PANDAS = r"""
import sys, numpy as np, pandas as pd, pyarrow.parquet as pq
src, wts, out, n, rep = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
df = pd.read_parquet(src)
w = pq.read_table(wts).column("weight").to_numpy()
try:
    df.sample(n=n, weights=w[df["label"].to_numpy()], replace=rep, random_state=0).to_parquet(out)
except ValueError as e:  # pandas refuses weighted sampling without replacement when weights are skewed
    print(str(e).split(".")[0], file=sys.stderr); sys.exit(3)
"""


def timed(cmd: list[str], timeout: float, may_refuse: bool = False) -> tuple[float | str | None, float]:
    """(seconds, None on timeout, or the refusal message; peak RSS in GiB) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            return None, ru.ru_maxrss / 2**20
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    if may_refuse and code == 3:
        return p.stderr.read().decode().strip(), ru.ru_maxrss / 2**20
    if code != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - t0, ru.ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dir", default="/tmp/datl-bench-sample")
    ap.add_argument("--pandas-timeout", type=float, default=600)
    ap.add_argument("--no-pandas", action="store_true")
    args = ap.parse_args()
    d = Path(args.dir)
    (d / "out").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src, wts = build(d, args.rows)
    n = args.rows // 4
    cols_gib = sum(b.nbytes for b in pq.ParquetFile(src).iter_batches(batch_size=1_000_000)) / 2**30
    print(
        f"rows {args.rows:,}  classes {CLASSES:,}  N {n:,}  columns in memory {cols_gib:.2f} GiB"
        f"  (data ready in {time.perf_counter() - t0:.0f} s)  cpus {os.cpu_count()}"
    )
    py = sys.executable
    curate = str(Path(py).parent / "curate")
    floor_s, floor_rss = timed([py, "-c", FLOOR, str(src), str(d / "floor.parquet"), str(n)], 3600)
    print(f"floor (pyarrow read + write N rows)      {floor_s:8.1f} s   peak {floor_rss:5.2f} GiB")
    for rep, name in ((True, "--replacement"), (False, "--no-replacement")):
        s, rss = timed(
            [
                curate,
                "sample",
                "--source",
                str(src),
                "--weights",
                str(wts),
                "--size",
                str(n),
                "--out",
                str(d / "out" / "ours.parquet"),
                name,
            ],
            3600,
        )  # another folder: paths rebased
        line = (
            f"curate sample {name:<17}         {s:8.1f} s   peak {rss:5.2f} GiB   "
            f"ours/floor {s / floor_s:5.2f}  (goal <= 2)   peak/columns {rss / cols_gib:4.2f}  (goal < 3)"
        )
        if not args.no_pandas:
            ps, prss = timed(
                [py, "-c", PANDAS, str(src), str(wts), str(d / "pandas.parquet"), str(n), "1" if rep else "0"],
                args.pandas_timeout,
                may_refuse=True,
            )
            if isinstance(ps, float):
                line += f"   pandas {ps:.1f} s, {prss:.2f} GiB: pandas/ours {ps / s:.1f}x"
            elif ps is None:
                line += f"   pandas > {args.pandas_timeout:.0f} s (stopped), {prss:.2f} GiB"
            else:
                line += f"   pandas refuses: '{ps}'"
        print(line, flush=True)


if __name__ == "__main__":
    main()
