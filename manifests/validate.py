"""``datl manifest validate``: schema, labels in range, unique ids, every file exists and opens."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import pyarrow.compute as pc

from datl.core.files import atomic_output
from datl.core.pool import fork_map
from datl.core.progress import bar

from .address import Address, AddressColumns
from .images import DECODE_ERRORS, Examples, clean, load_image
from .io import Manifest, open_manifest
from .schema import ManifestError

EXAMPLES = 20  # lines of each kind a report keeps; the counts cover all, --list has every one


@dataclass
class ValidationReport:
    """What was checked: counts and the first EXAMPLES lines of each kind of trouble, never
    a line per image, so memory does not grow with a source of 10^8 rows and many bad files."""

    rows: int
    classes: int | None
    files_checked: int = 0
    unlabeled: int = 0  # rows of a labeled manifest with a null label (multi-label: an empty set)
    multi_label: bool = False
    occurrences: int = 0  # label occurrences of a multi-label manifest
    unreadable: Examples = field(default_factory=lambda: Examples(EXAMPLES))  # "path: reason"
    warnings: Examples = field(default_factory=lambda: Examples(EXAMPLES))  # "path: what PIL warned"

    def add(self, bad: str | None, warned: str | None) -> None:
        self.unreadable.add([bad] if bad is not None else [])
        self.warnings.add([warned] if warned is not None else [])


def allows_repeated_ids(m: Manifest) -> bool:
    """Only a with-replacement sample may repeat an id (one row per draw)."""
    return bool(m.meta and m.meta.stage == "sample" and m.meta.params.get("replacement"))


def _check_file(where: Address) -> tuple[str | None, str | None]:
    """(why it cannot be read, what PIL warned about while decoding it), each None if nothing."""
    if not os.path.exists(where.path):
        return f"{where}: missing", None
    notes: list[str] = []
    try:
        load_image(where, "RGB", warned=notes)
    except DECODE_ERRORS as e:
        return f"{where}: {type(e).__name__}: {clean(str(e))}", None
    return None, f"{where}: {notes[0]}" if notes else None


def _check_part(path: str, lo: int, hi: int) -> list[tuple[str, str | None, str | None]]:
    """(id, why unreadable, PIL's warning) of each row in [lo, hi) with something to say."""
    m = Manifest(path)
    table = m.read_range(lo, hi, ["id", "path", *m.address_columns])
    where, ids = AddressColumns(table, str(m.folder)), table.column("id")
    out = []
    for i in range(len(where)):
        bad, warned = _check_file(where.address(i))
        if bad is not None or warned is not None:
            out.append((str(ids[i].as_py()), bad, warned))
    return out


def validate_manifest(
    path: str | os.PathLike,
    check_files: bool = True,
    progress: bool = True,
    workers: int | None = None,
    listing: str | os.PathLike | None = None,
) -> ValidationReport:
    """Raise ManifestError (one line) on a broken contract; return what was checked.

    Unreadable image files do not raise: they are counted in the report (with the first
    few as examples), and the CLI turns a count above zero into exit 2. ``listing``, if
    given, receives every unreadable or warned image as CSV rows ``id,kind,problem``
    (kind ``unreadable`` or ``warning``), written as the check goes and renamed into place
    when it is complete.
    """
    m = open_manifest(path)
    report = ValidationReport(rows=m.num_rows, classes=len(m.classes) if m.classes else None)
    if m.has_labels:
        counts, report.unlabeled = m.label_counts()  # raises on a label out of range, naming the row
        report.multi_label, report.occurrences = m.multi_label, int(counts.sum())
    ids = m.read(["id"]).column("id")
    if ids.null_count:
        raise ManifestError(m.path, f"{ids.null_count} row(s) have no id", "give every row an id")
    if not allows_repeated_ids(m):
        n_unique = len(pc.unique(ids))
        if n_unique != m.num_rows:
            counts = pc.value_counts(ids)
            dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
            raise ManifestError(
                m.path,
                f"{m.num_rows - n_unique} duplicate id(s) (first: {dup!r})",
                "make ids unique (only a with-replacement sample may repeat them)",
            )
    del ids
    if check_files:
        if listing is None:
            _check_files(m, report, progress, workers, None)
        else:
            with atomic_output(listing) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "kind", "problem"])
                _check_files(m, report, progress, workers, writer)
    return report


def _check_files(m: Manifest, report: ValidationReport, progress: bool, workers: int | None, writer) -> None:
    """Decode every image, in forked worker processes (decoding is CPU-bound, and PIL's warnings
    are captured per process), parts of 1,024 rows a window at a time: memory does not grow
    with the manifest."""
    step = 1024
    parts = [(str(m.path), lo, min(lo + step, m.num_rows)) for lo in range(0, m.num_rows, step)]
    with bar(total=m.num_rows, desc="checking images", unit="img", enabled=progress) as b:
        for (_, lo, hi), results in fork_map(_check_part, parts, workers):
            for id_, bad, warned in results:
                report.add(bad, warned)
                if writer is not None:
                    writer.writerows(
                        [id_, kind, line]
                        for kind, line in (("unreadable", bad), ("warning", warned))
                        if line is not None
                    )
            b.update(hi - lo)
            report.files_checked += hi - lo
