"""Dedup of re-framed colour copies: padded canvases, tight crops, 6x upscales, recolours (issue 25).

The sets are tests/_lib/reframe_set.py's: ``design`` (Oxygen source, Tango target), on which the
descriptor rules were chosen, and ``holdout`` (Moka source, Faenza target), measured once at
the end. Prints, for `curate dedup` at the default thresholds (``--no-feature`` unless
``--model`` is given):

    recall per edit (found; found with the right target) and over all edits   (goal >= 0.90)
    source flagged: ordinary source images flagged                            (goal <= 3%)
    look-alikes flagged: a source icon flagged as a copy of the other artist's
                         drawing of the same name                             (goal <= 2%)

    apt-get install oxygen-icon-theme tango-icon-theme moka-icon-theme faenza-icon-theme
    python bench/colour_reframe.py --pair design [--model RUN_DIR] [--work /tmp/datl-reframe]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "_lib"))

from reframe_set import PACKAGES, build_reframe_set, score  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="design", choices=sorted(PACKAGES))
    ap.add_argument("--work", default="/tmp/datl-reframe")
    ap.add_argument("--plant", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="RUN_DIR for the feature check (default: --no-feature)")
    ap.add_argument("extra", nargs="*", help="more curate dedup flags, after --")
    args = ap.parse_args()
    work = Path(args.work)
    try:
        s = build_reframe_set(work, args.pair, args.plant, args.seed)
    except FileNotFoundError:
        sys.exit(f"needs the icon themes: apt-get install {' '.join(PACKAGES[args.pair])}")
    out = work / f"{args.pair}-dups-s{args.seed}.parquet"
    model = ["--model", args.model] if args.model else ["--no-feature"]
    cmd = [str(Path(sys.executable).parent / "curate"), "dedup", "--source", str(s.source), "--target", str(s.target)]
    cmd += [*model, "--out", str(out), "--cache", str(work / "cache"), "-q", *args.extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr)
    t = pq.read_table(out, columns=["id", "target_id", "match"])
    flagged = dict(zip(t.column("id").to_pylist(), t.column("target_id").to_pylist(), strict=True))
    r = score(s, flagged)
    print(
        f"pair {args.pair}, seed {args.seed}: {r['n_ordinary']:,} ordinary source images, {r['n_planted']} planted; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(res.stdout.strip()[:400])
    if res.stderr.strip():
        print(res.stderr.strip()[:600])
    for e, (hit, right, tot) in r["recall"].items():
        print(f"  {e:9s} {hit:4d} / {tot:<4d} found, {right:4d} with the right target")
    print(
        f"recall over the edits {r['recall_all']:.3f}; source flagged {r['flagged']:.2%}; "
        f"look-alikes flagged {r['lookalike']:.2%} of {r['n_lookalike']}"
    )


if __name__ == "__main__":
    main()
