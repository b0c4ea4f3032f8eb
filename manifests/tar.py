"""WebDataset tar shards: a folder of them -> a manifest, and reading a member.

Build: members sharing a key (``key.jpg``, ``key.cls``, ...) are one sample; its image
member becomes a row addressed by ``offset``/``size`` inside the shard (from ``tarfile``'s
member data offsets). ``key.cls`` holds the class index as text; class names are the lines
of ``classes.txt`` beside the shards (absent: the indexes are the names). A multi-label
source: ``key.cls`` with several indexes (whitespace or comma separated) or ``key.json``
with a ``"labels"`` list (indexes, or names: through classes.txt, or without it the sorted
names seen) gives a ``labels`` list column. No labels at all: unlabeled. Id:
``shard-stem/key``. Shards are indexed one at a time (tar headers and ``.cls``/``.json``
members, never the images), so memory holds at most one shard's index.

Read: one positioned read per member, through a cache of open file handles.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from datl.core.errors import UserError

from . import labelsets
from .address import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES, Address, regular_file
from .io import write_manifest_two_pass

CLASSES_FILE = "classes.txt"
RAW = "_label_tokens"  # the labels as written, in the rows' temporary file only
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


def _label_tokens(tf: tarfile.TarFile, m: tarfile.TarInfo, ext: str, shard: Path) -> list[str] | None:
    """A sample's labels as written: a ``.cls`` member's tokens (indexes or names, separated by
    whitespace or commas), or the ``"labels"`` list of a ``.json`` member; None for a ``.json``
    without one (WebDataset's other metadata)."""
    text = tf.extractfile(m).read().decode("utf-8", "replace")
    if ext == "cls":
        return [t for t in re.split(r"[\s,]+", text.strip()) if t]
    try:
        data = json.loads(text)
    except ValueError:
        return None
    labels = data.get("labels") if isinstance(data, dict) else None
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in labels):
        raise UserError(
            shard,
            f'member {m.name} has "labels": {str(labels)[:40]}, not a list of class indexes or names',
            'write "labels" as a list, e.g. [3, 17] or ["cat", "dog"]',
        )
    return [str(x) for x in labels]


def tar_samples(shard: Path) -> Iterator[tuple[str, int, int, list[str] | None, bool]]:
    """(key, data offset, size, label tokens or None, from a .json labels list) of every image
    member of a tar shard."""
    samples: dict[str, list] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_key(m.name)
                entry = samples.setdefault(key, [None, None, None, False])
                if "." + ext in IMAGE_EXTENSIONS and entry[0] is None:
                    entry[0], entry[1] = m.offset_data, m.size
                elif ext in ("cls", "json"):
                    tokens = _label_tokens(tf, m, ext, shard)
                    if tokens is not None:
                        entry[2], entry[3] = tokens, ext == "json"
    except (tarfile.TarError, OSError) as e:
        raise UserError(shard, f"is not a readable tar file ({e})", "re-create or remove the shard") from None
    for key, (offset, size, tokens, from_json) in samples.items():
        if offset is not None:
            yield key, offset, size, tokens, from_json


def class_lines(path: Path) -> list[str] | None:
    """The class names of ``classes.txt``, one a line (trailing blank lines dropped)."""
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [ln.strip() for ln in lines]


class LabelTokens:
    """Label tokens collected while the shards are indexed, resolved to class indexes at the
    end, when every token is known: indexes, or names (through classes.txt, or, without one,
    the sorted set of names seen)."""

    def __init__(self, names: list[str] | None):
        self.given = names
        self.names: set[str] = set()
        self.max = -1
        self.multi = False  # any sample with a .json labels list, or a .cls of other than one token
        self.labeled: bool | None = None

    def add(self, tokens: list[str], from_json: bool) -> None:
        self.multi |= from_json or len(tokens) != 1
        for t in tokens:
            if t.isdigit():
                self.max = max(self.max, int(t))
            else:
                self.names.add(t)

    def classes(self, folder: Path) -> list[str]:
        if self.given is not None:
            return self.given
        if self.names and self.max >= 0:
            raise UserError(
                folder,
                f"labels mix class indexes (up to {self.max}) and names ('{min(self.names)}', ...) "
                f"without {CLASSES_FILE}",
                f"write the class names, one a line, to {CLASSES_FILE} beside the shards",
            )
        return sorted(self.names) if self.names else [str(i) for i in range(self.max + 1)]


def build_from_tars(folder: Path, shards: list[Path], out: Path) -> tuple[int, list[str] | None]:
    labels = LabelTokens(class_lines(folder / CLASSES_FILE))
    resolved: dict = {}

    def batches() -> Iterator[pa.RecordBatch]:
        for shard in shards:
            rel = os.path.relpath(shard.resolve(), out.resolve().parent)
            ids, offsets, sizes, tokens = [], [], [], []
            for key, offset, size, toks, from_json in tar_samples(shard):
                labeled = toks is not None
                if labels.labeled is None:
                    labels.labeled = labeled
                if labeled != labels.labeled:
                    raise UserError(
                        shard,
                        f"sample '{key}' {'has' if labeled else 'has no'} labels (.cls, or .json \"labels\"), "
                        "unlike the samples before it",
                        'give every sample a key.cls (or a key.json with "labels"), or none',
                    )
                if labeled:
                    labels.add(toks, from_json)
                ids.append(f"{shard.stem}/{key}")
                offsets.append(offset)
                sizes.append(size)
                tokens.append(toks)
            cols = {
                "id": pa.array(ids, pa.string()),
                "path": pa.array([rel] * len(ids), pa.string()),
                "offset": pa.array(offsets, pa.int64()),
                "size": pa.array(sizes, pa.int64()),
            }
            if labels.labeled:
                cols[RAW] = pa.array(tokens, pa.list_(pa.string()))
            yield pa.RecordBatch.from_pydict(cols)

    def classes() -> list[str] | None:
        if not labels.labeled:
            return None
        resolved["names"] = labels.classes(folder)
        return resolved["names"]

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        """The raw tokens -> ``label`` (one an image) or ``labels`` (multi-label)."""
        if RAW not in batch.schema.names:
            return batch
        names = resolved["names"]
        index = {n: i for i, n in enumerate(names)}
        sets = []
        for id_, toks in zip(batch.column("id").to_pylist(), batch.column(RAW).to_pylist()):
            try:
                sets.append([_resolve(t, index, len(names)) for t in toks])
            except ValueError as e:
                raise UserError(folder, f"sample '{id_}' {e}", f"fix its labels or {CLASSES_FILE}") from None
        keep = [c for c in batch.schema.names if c != RAW]
        cols = {c: batch.column(c) for c in keep}
        if labels.multi:
            arr = pa.array(sets, labelsets.list_type())
            offsets, values, null_item = labelsets.flat(arr)
            bad = labelsets.first_bad(offsets, values, null_item, len(names))
            if bad is not None:
                raise UserError(folder, f"sample '{batch.column('id')[bad[0]].as_py()}' {bad[1]}", "fix its labels")
            cols["labels"] = arr
        else:
            cols["label"] = pa.array([s[0] for s in sets], pa.int32())
        return pa.RecordBatch.from_pydict(cols)

    params = {"folder": str(folder.resolve()), "shards": "tar"}
    return write_manifest_two_pass(out, batches(), classes, params, folder, convert=convert)


def _resolve(token: str, index: dict[str, int], k: int) -> int:
    """A label token -> its class index: a name of ``index``, or an index below ``k``."""
    if token in index:
        return index[token]
    if token.isdigit() and int(token) < k:
        return int(token)
    if token.isdigit():
        raise ValueError(f"has class {token}, outside the {k} classes (0..{k - 1})")
    raise ValueError(f"has label '{token[:40]}', not one of the {k} class names")
