"""WebDataset tar shards: a folder of them -> a manifest, and reading a member.

Build: members sharing a key (``key.jpg``, ``key.cls``, ...) are one sample; its image
member becomes a row addressed by ``offset``/``size`` inside the shard (from ``tarfile``'s
member data offsets). ``key.cls`` holds the class index as text; class names are the lines
of ``classes.txt`` beside the shards (absent: the indexes are the names). No ``.cls`` at
all: unlabeled. Id: ``shard-stem/key``. Shards are indexed one at a time (tar headers and
``.cls`` members, never the images), so memory holds at most one shard's index.

Read: one positioned read per member, through a cache of open file handles.
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from datl.core.errors import UserError

from .address import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES, Address, regular_file
from .io import write_manifest_two_pass

CLASSES_FILE = "classes.txt"
OPEN_FILES = 64


class TarReader:
    """Reads byte ranges of shards; keeps the last OPEN_FILES files open."""

    def __init__(self) -> None:
        self.files: OrderedDict[str, int] = OrderedDict()

    def read(self, a: Address) -> bytes:
        if not 0 <= a.size <= MAX_IMAGE_BYTES:
            raise OSError(f"image size {a.size} is outside 0..{MAX_IMAGE_BYTES}")
        data = os.pread(self._fd(a.path), a.size, a.offset)
        if len(data) != a.size:
            raise OSError(f"byte range {a.offset}+{a.size} is past the end of its shard (truncated?)")
        return data

    def _fd(self, path: str) -> int:
        fd = self.files.pop(path, None)
        if fd is None:
            regular_file(path)
            fd = os.open(path, os.O_RDONLY)
            while len(self.files) >= OPEN_FILES:
                os.close(self.files.popitem(last=False)[1])
        self.files[path] = fd
        return fd


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's grouping: ``dir/key.ext.more`` -> (``dir/key``, ``ext.more``)."""
    head, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext.lower()


def tar_samples(shard: Path) -> Iterator[tuple[str, int, int, int | None]]:
    """(key, data offset, size, class index or None) of every image member of a tar shard."""
    samples: dict[str, list] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_key(m.name)
                entry = samples.setdefault(key, [None, None, None])
                if "." + ext in IMAGE_EXTENSIONS and entry[0] is None:
                    entry[0], entry[1] = m.offset_data, m.size
                elif ext == "cls":
                    text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                    try:
                        entry[2] = int(text)
                    except ValueError:
                        raise UserError(
                            shard,
                            f"member {m.name} holds '{text[:20]}', not a class index",
                            "write the class index as text in each key.cls",
                        ) from None
    except (tarfile.TarError, OSError) as e:
        raise UserError(shard, f"is not a readable tar file ({e})", "re-create or remove the shard") from None
    for key, (offset, size, cls) in samples.items():
        if offset is not None:
            yield key, offset, size, cls


def class_lines(path: Path) -> list[str] | None:
    """The class names of ``classes.txt``, one a line (trailing blank lines dropped)."""
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [ln.strip() for ln in lines]


def build_from_tars(folder: Path, shards: list[Path], out: Path) -> tuple[int, list[str] | None]:
    names = class_lines(folder / CLASSES_FILE)
    state = {"labeled": None, "max": -1}

    def batches() -> Iterator[pa.RecordBatch]:
        for shard in shards:
            rel = os.path.relpath(shard.resolve(), out.resolve().parent)
            ids, offsets, sizes, labels = [], [], [], []
            for key, offset, size, cls in tar_samples(shard):
                labeled = cls is not None
                if state["labeled"] is None:
                    state["labeled"] = labeled
                if labeled != state["labeled"]:
                    raise UserError(
                        shard,
                        f"sample '{key}' {'has' if labeled else 'has no'} .cls member, unlike the samples before it",
                        "give every sample a key.cls, or none",
                    )
                if labeled and names is not None and not 0 <= cls < len(names):
                    raise UserError(
                        shard,
                        f"sample '{key}' has class {cls}, outside the {len(names)} lines of {CLASSES_FILE}",
                        f"fix the .cls member or {CLASSES_FILE}",
                    )
                ids.append(f"{shard.stem}/{key}")
                offsets.append(offset)
                sizes.append(size)
                labels.append(cls)
                state["max"] = max(state["max"], cls if labeled else -1)
            cols = {
                "id": pa.array(ids, pa.string()),
                "path": pa.array([rel] * len(ids), pa.string()),
                "offset": pa.array(offsets, pa.int64()),
                "size": pa.array(sizes, pa.int64()),
            }
            if state["labeled"]:
                cols["label"] = pa.array(labels, pa.int32())
            yield pa.RecordBatch.from_pydict(cols)

    def classes() -> list[str] | None:
        if not state["labeled"]:
            return None
        return names if names is not None else [str(i) for i in range(state["max"] + 1)]

    return write_manifest_two_pass(out, batches(), classes, {"folder": str(folder.resolve()), "shards": "tar"}, folder)
