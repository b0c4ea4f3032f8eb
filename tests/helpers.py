"""Test helpers: run the real CLIs, check the one-line error contract, make tiny real data."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from manifests import ManifestMeta, write_manifest

BIN = Path(sys.executable).parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (datl, curate, pretrain, finetune)."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd)


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, mentioning every fragment."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def write_pngs(folder: Path, n: int, size: int = 12, seed: int = 0, mode: str = "L") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(p)
        paths.append(p)
    return paths


def tiny_manifest(path: Path, paths: list[str], labels: list[int] | None, classes: list[str] | None = None,
                  ids: list[str] | None = None, **meta) -> Path:
    cols = {"id": pa.array(ids or [f"r{i}" for i in range(len(paths))], pa.string()),
            "path": pa.array(paths, pa.string())}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int32())
    return write_manifest(path, pa.table(cols), ManifestMeta(classes=classes, **meta))
