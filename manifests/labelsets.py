"""Multi-label manifests: a ``labels`` column of class-index lists, checked and counted.

Invariant: a label set is a list of distinct indexes into ``classes``; an empty list, or a null
one, means the image has no label. Counting is by occurrence: an image with labels {3, 7}
adds one to class 3 and one to class 7, so per-class counts sum to the number of label
occurrences, not to the number of images (JFT has 1.26 labels an image).

Text label sets (a WebDataset ``key.cls``, a cell of ``--labels labels.csv``) are parsed here
too, in one place: indexes or class names, separated by whitespace, commas or ``|``.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

SEPARATORS = re.compile(r"[\s,|]+")


def flat(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, values, has_null_item) of a list column, null lists as empty ones: row i's labels
    are ``values[offsets[i]:offsets[i+1]]``. ``has_null_item[i]``: row i's list holds a null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if col.null_count:
        col = col.fill_null(pa.scalar([], col.type))
    lengths = np.asarray(col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = np.zeros(len(col) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = col.flatten()
    null_item = np.zeros(len(col), dtype=bool)
    if items.null_count:
        rows = np.repeat(np.arange(len(col)), lengths)
        null_item[rows[items.is_null().to_numpy(zero_copy_only=False)]] = True
        items = items.fill_null(0)
    return offsets, np.asarray(items.to_numpy(zero_copy_only=False), dtype=np.int64), null_item


def first_bad(offsets: np.ndarray, values: np.ndarray, null_item: np.ndarray, k: int) -> tuple[int, str] | None:
    """(row, what is wrong) of the first row whose label set is not a set of distinct indexes
    in 0..k-1; None when every row is fine."""
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    bad = np.zeros(len(offsets) - 1, dtype=bool)
    bad |= null_item
    out = (values < 0) | (values >= k)
    bad[rows[out]] = True
    if len(values):
        key = rows * (k + 1) + np.clip(values, 0, k)
        order = np.argsort(key, kind="stable")
        dup = np.flatnonzero(np.diff(key[order]) == 0)
        bad[rows[order[dup]]] = True
    hit = np.flatnonzero(bad)
    if not hit.size:
        return None
    r = int(hit[0])
    mine = values[offsets[r] : offsets[r + 1]]
    if null_item[r]:
        return r, "holds a null label"
    wrong = [int(v) for v in mine if not 0 <= v < k]
    if wrong:
        return r, f"has label {wrong[0]}, out of range for its {k} classes (0..{k - 1})"
    seen: set[int] = set()
    twice = next(int(v) for v in mine if v in seen or seen.add(int(v)))
    return r, f"lists label {twice} twice"


def occurrences(offsets: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Per-class label occurrences and the number of rows with no label."""
    return np.bincount(values, minlength=k).astype(np.int64), int((np.diff(offsets) == 0).sum())


def parse_label_set(text: str, names: list[str] | None, sep: re.Pattern = SEPARATORS) -> list[int]:
    """A label set written as text -> class indexes, in the order written. Tokens (split by
    ``sep``: whitespace, commas or ``|`` unless given) are indexes, or class names when
    ``names`` is given and the token is one of them. Raises ValueError naming the first token
    that is neither."""
    index = {n: i for i, n in enumerate(names)} if names is not None else {}
    out = []
    for tok in (t.strip() for t in sep.split(text.strip())):
        if not tok:
            continue
        if tok in index:
            out.append(index[tok])
        elif tok.lstrip("-").isdigit():
            out.append(int(tok))
        else:
            raise ValueError(f"'{tok[:40]}' is neither a class index nor a class name")
    return out


def list_type() -> pa.DataType:
    return pa.list_(pa.int32())
