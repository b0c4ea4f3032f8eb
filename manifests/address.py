"""Where a manifest row's encoded image lives.

A row's ``path`` is a loose image file, or a shard holding the image:

| columns (besides path)   | the image is | read and built by |
| ------------------------ | ------------ | ----------------- |
| none, or all null        | the whole file ``path`` | folder.py |
| ``offset``, ``size``     | bytes [offset, offset + size) of ``path``: a member of a tar shard (WebDataset) | tar.py |
| ``row``, ``image_column``| row ``row`` of the image Parquet file ``path``, column ``image_column`` | imageparquet.py |

An image Parquet column holds a HuggingFace ``{"bytes", "path"}`` struct or binary.

Invariant: addresses are held as Arrow/NumPy columns (:class:`AddressColumns`), never as
millions of Python objects; only regular files are read, and never more than
``MAX_IMAGE_BYTES`` of one image (reading.py). Every failure to read is an ``OSError``
(or ``ValueError``) naming the problem, which the callers count as an unreadable image.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ADDRESS_COLUMNS = ("offset", "size", "row", "image_column")
ADDRESS_TYPES = {"offset": pa.int64(), "size": pa.int64(), "row": pa.int64(), "image_column": pa.string()}
MAX_IMAGE_BYTES = 256 << 20  # one encoded image; a larger one is counted unreadable, never read into memory
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def is_image_name(name: str) -> bool:
    """A file name with an image extension (any case), not hidden."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


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
            col = table.column(name).combine_chunks()
            if col.null_count == 0:  # Arrow's compute kernels cost 0.25 s on first use in each worker
                return col.to_numpy().astype(np.int64)
            return col.fill_null(-1).to_numpy().astype(np.int64)

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

    def addresses(self) -> list[Address]:
        """``address(i)`` of every row, at a fraction of the cost per row: for a part of a few
        thousand rows (it makes Python objects per row, which a whole manifest must not)."""
        paths = self.paths.to_pylist()
        cols = self.column.to_pylist() if self.column is not None else [None] * len(paths)
        folder, out = self.folder, []
        for p, off, size, row, col in zip(paths, self.offset.tolist(), self.size.tolist(), self.row.tolist(), cols):
            if p is None:
                out.append(Address(""))
                continue
            p = p if os.path.isabs(p) else os.path.join(folder, p)
            out.append(Address(p, off, size, row, col if row >= 0 else None))
        return out


def regular_file(path: str) -> os.stat_result:
    """``os.stat`` of a regular file; FileNotFoundError for a missing one, OSError for a
    folder, a device or a pipe (never read from)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError("is not a regular file")
    return st
