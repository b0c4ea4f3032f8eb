"""A manifest's images written out as WebDataset tar shards: the layout ``datl manifest
build`` reads (tar.py), e.g. the demo source as shards (``datl demo-data --shards``)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from datl.core.files import atomic_output

from .address import IMAGE_EXTENSIONS
from .io import Manifest
from .reading import read_bytes
from .tar import CLASSES_FILE

MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"RIFF", ".webp"))


def sniff_extension(data: bytes) -> str:
    """An image's extension from its first bytes (an image inside a shard has no file name)."""
    return next((ext for magic, ext in MAGIC if data.startswith(magic)), ".png")


def write_tar_shards(manifest: Manifest, folder: Path, per_shard: int = 5000, prefix: str = "shard") -> list[Path]:
    """Write a manifest's images as tar shards (``KEY.EXT`` + ``KEY.cls``, or ``KEY.json`` with
    ``"labels"`` for a multi-label manifest; ``classes.txt`` beside them). Keys are the ids
    without their image extension. Deterministic: same manifest, same bytes. Each shard is
    written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    if manifest.has_labels:
        with atomic_output(folder / CLASSES_FILE) as tmp:
            tmp.write_text("".join(c + "\n" for c in manifest.require_labels(multi=True)))
    written = []
    cols = ["id"] + ([manifest.label_column] if manifest.has_labels else [])
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
                data = read_bytes(a)
                if ext.lower() not in IMAGE_EXTENSIONS:  # an id without one: the file's, else the bytes'
                    ext = os.path.splitext(a.path)[1]
                    ext = ext if ext.lower() in IMAGE_EXTENSIONS else sniff_extension(data)
                members = [(stem.replace(".", "_") + ext.lower(), data)]
                if manifest.multi_label:  # key.json {"labels": [...]}: multi-label even when a set has one label
                    members.append((stem.replace(".", "_") + ".json", json.dumps({"labels": label or []}).encode()))
                elif label is not None:
                    members.append((stem.replace(".", "_") + ".cls", str(label).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tf.addfile(info, io.BytesIO(data))
        written.append(path)
    return written
