"""The reliability probe, all cells, counted by class (see tests/_lib/probe.py):

    .venv/bin/python tests/probe.py [--keep DIR]

Prints one line per cell that is not ok, then the counts; exits 1 if any cell is not ok."""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_lib"))

from probe import CELLS, CLASSES, make_world, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="datl-probe-") as t:
        root = args.keep or Path(t)
        root.mkdir(parents=True, exist_ok=True)
        world = make_world(root / "world")
        counts = collections.Counter()
        for i, (name, cell) in enumerate(CELLS.items()):
            cell_dir = root / f"cell{i:02d}"
            cell_dir.mkdir()
            kind, why = run_case(cell(world, cell_dir))
            counts[kind] += 1
            if kind != "ok":
                print(f"{kind:10s}  {name}: {why}")
        print(f"{len(CELLS)} cells: " + ", ".join(f"{counts[c]} {c}" for c in CLASSES))
    return 0 if counts["ok"] == len(CELLS) else 1


if __name__ == "__main__":
    sys.exit(main())
