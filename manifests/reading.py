"""Reading any row's encoded image bytes, whatever holds it (address.py): the one reader
every stage uses.

Invariant: each thread of each process has its own readers (:func:`readers`): forked
DataLoader workers and the worker threads and processes of validate and dedup never share
a file handle or a row-group cache.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from .address import Address
from .folder import read_file
from .imageparquet import ParquetRowReader
from .tar import TarReader


@dataclass
class Readers:
    tar: TarReader = field(default_factory=TarReader)
    parquet: ParquetRowReader = field(default_factory=ParquetRowReader)

    def read(self, a: Address) -> bytes:
        if a.row >= 0:
            return self.parquet.read(a)
        if a.offset >= 0:
            return self.tar.read(a)
        return read_file(a.path)


_LOCAL = threading.local()


def readers() -> Readers:
    """This thread's readers, new in each process."""
    if getattr(_LOCAL, "pid", None) != os.getpid():
        _LOCAL.pid, _LOCAL.readers = os.getpid(), Readers()
    return _LOCAL.readers


def read_bytes(a: Address) -> bytes:
    return readers().read(a)
