"""Where a manifest row's encoded image lives, and reading it.

A row's ``path`` is a loose image file, or a shard holding the image:

| columns (besides path)   | the image is |
| ------------------------ | ------------ |
| none, or all null        | the whole file ``path`` |
| ``offset``, ``size``     | bytes [offset, offset + size) of ``path``: a member of a tar shard (WebDataset) |
| ``row``, ``image_column``| row ``row`` of the image Parquet file ``path``, column ``image_column``: a
|                          | HuggingFace ``{"bytes", "path"}`` struct or a binary column |

Reads are one positioned read per tar member through a per-thread cache of open file
handles, and, for Parquet, the row group holding the row (the last few are kept, so
reading a shard in order decodes each row group once). Only regular files are read,
and never more than ``MAX_IMAGE_BYTES`` of one image. Every failure is an ``OSError``
(or ``ValueError``) naming the problem, which the callers count as an unreadable image.
"""
from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ADDRESS_COLUMNS = ("offset", "size", "row", "image_column")
ADDRESS_TYPES = {"offset": pa.int64(), "size": pa.int64(), "row": pa.int64(), "image_column": pa.string()}
MAX_IMAGE_BYTES = 256 << 20  # one encoded image; a larger one is counted unreadable, never read into memory
OPEN_FILES = 64
ROW_GROUPS = 4


@dataclass(frozen=True)
class Address:
    path: str  # absolute
    offset: int = -1
    size: int = -1
    row: int = -1
    column: str | None = None

    def __str__(self) -> str:
        if not self.path:
            return "(no path)"
        if self.offset >= 0:
            return f"{self.path}[{self.offset}:+{self.size}]"
        if self.row >= 0:
            return f"{self.path}#row{self.row}"
        return self.path


class AddressColumns:
    """A manifest's path and addressing columns held as Arrow/NumPy arrays (never millions of
    Python objects): ``address(i)`` builds the Address of row i."""

    def __init__(self, table: pa.Table, folder: str):
        self.paths = table.column("path").combine_chunks()
        n = table.num_rows
        self.folder = folder

        def ints(name: str) -> np.ndarray:
            if name not in table.column_names:
                return np.full(n, -1, np.int64)
            return table.column(name).combine_chunks().fill_null(-1).to_numpy().astype(np.int64)

        self.offset, self.size, self.row = ints("offset"), ints("size"), ints("row")
        self.column = table.column("image_column").combine_chunks() if "image_column" in table.column_names else None

    def __len__(self) -> int:
        return len(self.paths)

    def address(self, i: int) -> Address:
        p = self.paths[i].as_py()
        if p is None:  # no path: reading it fails like a missing file, and is counted so
            return Address("")
        p = p if os.path.isabs(p) else os.path.join(self.folder, p)
        col = self.column[i].as_py() if self.column is not None and self.row[i] >= 0 else None
        return Address(p, int(self.offset[i]), int(self.size[i]), int(self.row[i]), col)


class ShardReader:
    """Reads the encoded bytes of an Address; caches open files and Parquet row groups."""

    def __init__(self) -> None:
        self.files: OrderedDict[str, int] = OrderedDict()
        self.groups: OrderedDict[tuple[str, int, str], pa.Array] = OrderedDict()
        self.parquet: OrderedDict[str, object] = OrderedDict()

    def read(self, a: Address) -> bytes:
        if a.row >= 0:
            return self._parquet_row(a)
        if a.offset >= 0:
            if not 0 <= a.size <= MAX_IMAGE_BYTES:
                raise OSError(f"image size {a.size} is outside 0..{MAX_IMAGE_BYTES}")
            fd = self._fd(a.path)
            data = os.pread(fd, a.size, a.offset)
            if len(data) != a.size:
                raise OSError(f"byte range {a.offset}+{a.size} is past the end of its shard (truncated?)")
            return data
        return read_file(a.path)

    def _fd(self, path: str) -> int:
        fd = self.files.pop(path, None)
        if fd is None:
            _regular(path)
            fd = os.open(path, os.O_RDONLY)
            while len(self.files) >= OPEN_FILES:
                os.close(self.files.popitem(last=False)[1])
        self.files[path] = fd
        return fd

    def _parquet_row(self, a: Address) -> bytes:
        import pyarrow.parquet as pq

        pf = self.parquet.pop(a.path, None)
        if pf is None:
            _regular(a.path)
            try:
                pf = pq.ParquetFile(a.path)
            except pa.ArrowException as e:
                raise OSError(f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
            while len(self.parquet) >= OPEN_FILES:
                self.parquet.popitem(last=False)
        self.parquet[a.path] = pf
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        if not 0 <= a.row < starts[-1]:
            raise OSError(f"row {a.row} is past the end of its file ({starts[-1]} rows)")
        g = int(np.searchsorted(starts, a.row, side="right") - 1)
        key = (a.path, g, a.column or "")
        col = self.groups.pop(key, None)
        if col is None:
            if a.column not in pf.schema_arrow.names:
                raise OSError(f"has no image column '{a.column}'")
            col = pf.read_row_group(g, columns=[a.column]).column(0).combine_chunks()
            while len(self.groups) >= ROW_GROUPS:
                self.groups.popitem(last=False)
        self.groups[key] = col
        value = col[a.row - int(starts[g])]
        if pa.types.is_struct(col.type):
            value = value["bytes"]
        data = value.as_py()
        if not isinstance(data, bytes):
            raise OSError(f"row {a.row} holds no image bytes")
        return data


def read_file(path: str) -> bytes:
    """A whole loose image file: regular files only, at most MAX_IMAGE_BYTES."""
    st = _regular(path)
    if st.st_size > MAX_IMAGE_BYTES:
        raise OSError(f"file of {st.st_size:,} bytes is larger than the {MAX_IMAGE_BYTES:,}-byte limit")
    with open(path, "rb") as f:
        return f.read(MAX_IMAGE_BYTES + 1)


def _regular(path: str) -> os.stat_result:
    st = os.stat(path)  # FileNotFoundError for a missing file or shard
    if not stat.S_ISREG(st.st_mode):
        raise OSError("is not a regular file")
    return st


_LOCAL = threading.local()


def reader() -> ShardReader:
    """This thread's reader, new in each process (forked DataLoader workers and the threads of
    validate and dedup each get their own file handles and row-group cache)."""
    if getattr(_LOCAL, "pid", None) != os.getpid():
        _LOCAL.pid, _LOCAL.reader = os.getpid(), ShardReader()
    return _LOCAL.reader


def read_bytes(a: Address) -> bytes:
    return reader().read(a)
