"""Progress bars: one policy for every long loop (tqdm on stderr, gone when done unless
``leave``, off with ``enabled=False``: ``--quiet``, and every rank but 0)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
    **kw: Any,
):
    """A tqdm bar over ``iterable`` (or one updated by hand, of ``total``)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, dynamic_ncols=True, **kw)
