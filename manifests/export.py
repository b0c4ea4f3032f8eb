"""A manifest's images written out as WebDataset tar shards: the layout ``datl manifest
build`` reads (tar.py), e.g. the demo source as shards (``datl demo-data --shards``)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from datl.core.files import atomic_output

from .address import IMAGE_EXTENSIONS
from .io import Manifest
from .reading import read_bytes
from .tar import CLASSES_FILE


def write_tar_shards(manifest: Manifest, folder: Path, per_shard: int = 5000, prefix: str = "shard") -> list[Path]:
    """Write a manifest's images as tar shards (``KEY.EXT`` + ``KEY.cls``, ``classes.txt``
    beside them). Keys are the ids without their image extension. Deterministic: same
    manifest, same bytes. Each shard is written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    if manifest.has_labels:
        with atomic_output(folder / CLASSES_FILE) as tmp:
            tmp.write_text("".join(c + "\n" for c in manifest.require_labels()))
    written = []
    cols = ["id"] + (["label"] if manifest.has_labels else [])
    meta_batches = manifest.iter_batches(cols, batch_size=per_shard)
    for n, (_, where) in enumerate(manifest.iter_addresses(batch_size=per_shard)):
        meta = next(meta_batches)
        ids = meta.column(0).to_pylist()
        labels = meta.column(1).to_pylist() if manifest.has_labels else [None] * len(ids)
        path = folder / f"{prefix}-{n:06d}.tar"
        with atomic_output(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for i, (id_, label) in enumerate(zip(ids, labels)):
                a = where.address(i)
                stem, ext = os.path.splitext(id_)
                ext = ext if ext.lower() in IMAGE_EXTENSIONS else os.path.splitext(a.path)[1] or ".png"
                members = [(stem.replace(".", "_") + ext.lower(), read_bytes(a))]
                if label is not None:
                    members.append((stem.replace(".", "_") + ".cls", str(label).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tf.addfile(info, io.BytesIO(data))
        written.append(path)
    return written
