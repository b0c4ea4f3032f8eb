"""``datl manifest validate``: schema, labels in range, unique ids, every file exists and opens."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.compute as pc
from tqdm import tqdm

from .images import DECODE_ERRORS, load_image
from .errors import ManifestError
from .io import Manifest, open_manifest
from .shards import Address


@dataclass
class ValidationReport:
    rows: int
    classes: int | None
    files_checked: int = 0
    bad_files: list[str] = field(default_factory=list)  # "path: reason"
    unlabeled: int = 0  # rows of a labeled manifest with a null label


def allows_repeated_ids(m: Manifest) -> bool:
    """Only a with-replacement sample may repeat an id (one row per draw)."""
    return bool(m.meta and m.meta.stage == "sample" and m.meta.params.get("replacement"))


def _check_file(where: Address) -> str | None:
    if not os.path.exists(where.path):
        return f"{where}: missing"
    try:
        load_image(where, "RGB")
    except DECODE_ERRORS as e:
        return f"{where}: {type(e).__name__}: {e}"
    return None


def validate_manifest(path: str | os.PathLike, check_files: bool = True, progress: bool = True,
                      threads: int = 8) -> ValidationReport:
    """Raise ManifestError (one line) on a broken contract; return what was checked.

    Unreadable image files do not raise: they are listed in the report, and the
    CLI turns a non-empty list into exit 2.
    """
    m = open_manifest(path)
    report = ValidationReport(rows=m.num_rows, classes=len(m.classes) if m.classes else None)
    if m.has_labels:
        _, report.unlabeled = m.label_counts()  # raises on a label out of range
    ids = m.read(["id"]).column("id")
    if ids.null_count:
        raise ManifestError(m.path, f"{ids.null_count} row(s) have no id", "give every row an id")
    if not allows_repeated_ids(m):
        n_unique = len(pc.unique(ids))
        if n_unique != m.num_rows:
            counts = pc.value_counts(ids)
            dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
            raise ManifestError(m.path, f"{m.num_rows - n_unique} duplicate id(s) (first: {dup!r})",
                                "make ids unique (only a with-replacement sample may repeat them)")
    del ids
    if check_files:
        with ThreadPoolExecutor(threads) as pool, tqdm(total=m.num_rows, desc="checking images", unit="img",
                                                       disable=not progress, leave=False) as bar:
            for _, where in m.iter_addresses(batch_size=4096):
                for res in pool.map(_check_file, (where.address(i) for i in range(len(where)))):
                    if res is not None:
                        report.bad_files.append(res)
                bar.update(len(where))
                report.files_checked += len(where)
    return report
