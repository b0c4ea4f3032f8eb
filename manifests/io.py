"""Reading and writing manifests: only the columns asked for, in record batches,
written atomically (temporary file in the same folder, then rename)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datl.core.errors import UserError
from datl.core.files import atomic_output

from . import labelsets
from .address import ADDRESS_COLUMNS, AddressColumns
from .schema import LABEL, LABELS, META_KEY, ManifestError, ManifestMeta, check_same_classes, check_schema

DEFAULT_BATCH = 65_536


class Manifest:
    """An opened manifest: schema, ``datl`` metadata and streamed access to its rows.

    Nothing but the Parquet footer is read on open; rows are read on demand,
    column by column, batch by batch.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise ManifestError(self.path, "does not exist", "check the path, or create it with `datl manifest build`")
        if self.path.is_dir():
            raise ManifestError(
                self.path,
                "is a folder, not a manifest file",
                "pass a .parquet file (make one with `datl manifest build FOLDER --out M.parquet`)",
            )
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            raise ManifestError(
                self.path,
                f"is not a readable Parquet file ({str(e).splitlines()[0]})",
                "regenerate it, or check it is a manifest and not another file",
            ) from None
        self.schema: pa.Schema = self._file.schema_arrow
        self.meta: ManifestMeta | None = ManifestMeta.from_schema(self.schema, self.path)
        check_schema(self.schema, self.meta, self.path)

    # -- facts -----------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return self.path.resolve().parent

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @property
    def has_labels(self) -> bool:
        """Labeled, in either form: one ``label`` an image, or a ``labels`` list."""
        return LABEL in self.schema.names or LABELS in self.schema.names

    @property
    def multi_label(self) -> bool:
        """A multi-label manifest: a ``labels`` list column (labelsets.py)."""
        return LABELS in self.schema.names

    @property
    def label_column(self) -> str | None:
        return LABELS if self.multi_label else LABEL if LABEL in self.schema.names else None

    @property
    def classes(self) -> list[str] | None:
        return None if self.meta is None else self.meta.classes

    def require_labels(self, multi: bool = False) -> list[str]:
        """Classes of a labeled manifest, or a one-line error naming the file; a multi-label
        one only where the caller takes it (``multi``)."""
        if not self.has_labels or not self.classes:
            raise ManifestError(
                self.path,
                "has no labels (no 'label' column with class names)",
                "pass a labeled manifest (class sub-folders with `datl manifest build`)",
            )
        if self.multi_label and not multi:
            raise ManifestError(
                self.path,
                "is multi-label (a 'labels' list column), and this command takes one 'label' an image",
                "pass a single-label manifest here; docs/manifests.md lists the commands that take multi-label ones",
            )
        return list(self.classes)

    def require_classes(
        self, classes: list[str], against: object, fix: str, allow_unlabeled: bool = False, multi: bool = False
    ) -> None:
        """This manifest is labeled with exactly ``classes`` (those of ``against``), or, with
        ``allow_unlabeled``, is unlabeled."""
        if allow_unlabeled and not self.has_labels:
            return
        check_same_classes(classes, self.require_labels(multi), against, self.path, fix)

    # -- rows ------------------------------------------------------------------
    def iter_batches(
        self, columns: Iterable[str] | None = None, batch_size: int = DEFAULT_BATCH
    ) -> Iterator[pa.RecordBatch]:
        cols = None if columns is None else list(columns)
        if cols is not None:
            missing = [c for c in cols if c not in self.schema.names]
            if missing:
                raise ManifestError(
                    self.path, f"has no column {', '.join(map(repr, missing))}", "pass a manifest that has it"
                )
        yield from self._file.iter_batches(batch_size=batch_size, columns=cols)

    def read(self, columns: Iterable[str] | None = None) -> pa.Table:
        cols = None if columns is None else list(columns)
        batches = list(self.iter_batches(cols))
        schema = (
            self.schema
            if cols is None
            else pa.schema([self.schema.field(c) for c in cols], metadata=self.schema.metadata)
        )
        return pa.Table.from_batches(batches, schema=schema)

    def iter_take(
        self, rows: np.ndarray, columns: Iterable[str] | None = None, batch_size: int = DEFAULT_BATCH
    ) -> Iterator[pa.Table]:
        """The rows numbered ``rows`` (sorted; repeats give repeated rows), in one streamed pass."""
        start = 0
        for b in self.iter_batches(columns, batch_size):
            lo, hi = np.searchsorted(rows, [start, start + b.num_rows])
            if hi > lo:
                yield pa.Table.from_batches([b]).take(pa.array(rows[lo:hi] - start))
            start += b.num_rows

    @property
    def address_columns(self) -> list[str]:
        """The shard-addressing columns this manifest has (address.py)."""
        return [c for c in ADDRESS_COLUMNS if c in self.schema.names]

    def read_range(self, start: int, stop: int, columns: Iterable[str] | None = None) -> pa.Table:
        """Rows [start, stop), reading only the row groups that hold them."""
        cols = None if columns is None else list(columns)
        md, first, groups = self._file.metadata, 0, []
        offsets = []
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if first < stop and first + n > start:
                groups.append(g)
                offsets.append(first)
            first += n
        if not groups:
            return self.read(cols).slice(0, 0)
        t = self._file.read_row_groups(groups, columns=cols)
        return t.slice(start - offsets[0], stop - start)

    def footer_sha256(self) -> str:
        """sha256 of the file's Parquet footer (schema, metadata, row groups' sizes, offsets and
        statistics): it changes with the content, and costs one small read."""
        with open(self.path, "rb") as f:
            f.seek(-8, os.SEEK_END)
            n = int.from_bytes(f.read(4), "little")
            f.seek(-8 - n, os.SEEK_END)
            return hashlib.sha256(f.read(n)).hexdigest()

    def files_fingerprint(self, start: int = 0, stop: int | None = None) -> str:
        """A key that changes when any image file (or shard) behind rows [start, stop) changes:
        the sha256 of each distinct file's path, size and modification time (or 'missing'), in
        order of first use. One stat per distinct file; no image is read."""
        stop = self.num_rows if stop is None else stop
        h = hashlib.sha256()
        paths = self.read_range(start, stop, ["path"]).column("path")
        for p in pc.unique(paths.drop_null()).to_pylist() if len(paths) else []:
            where = self.resolve(p)
            try:
                st = os.stat(where)
                h.update(f"{where}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{where}\0missing\n".encode())
        h.update(f"nulls {paths.null_count}".encode())
        return h.hexdigest()[:20]

    def iter_addresses(self, batch_size: int = 4096):
        """(first row, AddressColumns) per batch of rows: where each image's bytes are."""
        start = 0
        for b in self.iter_batches(["path", *self.address_columns], batch_size):
            yield start, AddressColumns(pa.Table.from_batches([b]), str(self.folder))
            start += b.num_rows

    def resolve(self, path: str) -> str:
        """An image path as stored (absolute, or relative to the manifest's folder) -> absolute."""
        return path if os.path.isabs(path) else os.path.join(self.folder, path)

    def label_counts(self, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, int]:
        """Per-class row counts in one streamed pass, and the number of null labels; for a
        multi-label manifest, per-class label occurrences and the number of rows with none.

        Raises ManifestError, naming the first row, for a label outside 0..K-1 (or a label set
        that is not a set of distinct indexes).
        """
        if self.multi_label:
            counts, n_empty, _ = self.label_set_counts(batch_size)
            return counts, n_empty
        classes = self.require_labels()
        k = len(classes)
        counts = np.zeros(k, dtype=np.int64)
        n_null = 0
        for batch in self.iter_batches([LABEL], batch_size):
            col = batch.column(0)
            n_null += col.null_count
            vals = col.drop_null().to_numpy(zero_copy_only=False)
            if vals.size == 0:
                continue
            if int(vals.min()) < 0 or int(vals.max()) >= k:
                row, bad = self._first_row(lambda v: (v < 0) | (v >= k))
                raise ManifestError(
                    self.path,
                    f"label {bad} of row {row} is out of range for its {k} classes (0..{k - 1})",
                    "fix the labels or the class list in the datl metadata",
                )
            counts += np.bincount(vals, minlength=k)
        return counts, n_null

    def label_set_counts(self, batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, int, np.ndarray]:
        """A multi-label manifest in one streamed pass: per-class occurrences, rows with no label,
        and the histogram of labels per image (``sizes[j]``: rows with j labels). Raises
        ManifestError naming the first row whose label set is bad."""
        k = len(self.require_labels(multi=True))
        counts, n_empty, sizes, start = np.zeros(k, dtype=np.int64), 0, np.zeros(1, dtype=np.int64), 0
        for batch in self.iter_batches(["id", LABELS], batch_size):
            offsets, values, null_item = labelsets.flat(batch.column(1))
            bad = labelsets.first_bad(offsets, values, null_item, k)
            if bad is not None:
                r, why = bad
                raise ManifestError(
                    self.path,
                    f"row {start + r} (id {batch.column(0)[r].as_py()!r}) {why}",
                    "give each image a list of distinct class indexes (0..K-1) in 'labels'",
                )
            c, e = labelsets.occurrences(offsets, values, k)
            counts += c
            n_empty += e
            h = np.bincount(np.diff(offsets))
            if len(h) > len(sizes):
                sizes = np.pad(sizes, (0, len(h) - len(sizes)))
            sizes[: len(h)] += h
            start += batch.num_rows
        return counts, n_empty, sizes

    def require_training_labels(self, role: str) -> tuple[list[str], np.ndarray]:
        """Classes and per-class counts of a manifest a model trains on or is scored on
        (``role``: '--train', '--test', ...), checked before any work: labeled, not empty,
        every row's label present and in range; else a one-line error naming the first
        bad row."""
        classes = self.require_labels()
        counts, n_null = self.label_counts()
        if n_null:
            row, _ = self._first_row(None)
            raise ManifestError(
                self.path,
                f"{n_null:,} of its {self.num_rows:,} rows have no label (first: {row}), "
                f"and a {role} manifest needs every row labeled",
                "label those rows, or drop them from the manifest",
            )
        if not counts.sum():
            raise ManifestError(self.path, "has no rows", f"pass a {role} manifest with labeled images")
        return classes, counts

    def _first_row(self, bad) -> tuple[str, int | None]:
        """'id X (row N)' and label of the first row whose label is null (``bad`` None) or
        for which ``bad(labels)`` holds; one more streamed pass, taken only on an error."""
        start = 0
        for batch in self.iter_batches(["id", LABEL]):
            col = batch.column(1)
            if bad is None:
                hit = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            else:
                vals = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
                hit = np.flatnonzero(bad(vals) & ~col.is_null().to_numpy(zero_copy_only=False))
            if hit.size:
                i = int(hit[0])
                return f"id {batch.column(0)[i].as_py()!r} (row {start + i})", col[i].as_py()
            start += batch.num_rows
        return "?", None


def open_manifest(path: str | os.PathLike) -> Manifest:
    return Manifest(path)


# -- writing -----------------------------------------------------------------
def _with_meta(schema: pa.Schema, meta: ManifestMeta) -> pa.Schema:
    md = dict(schema.metadata or {})
    md.pop(b"pandas", None)  # pandas' index bookkeeping is not part of the contract
    md[META_KEY] = meta.to_json()
    fields = [
        pa.field(f.name, pa.int32(), nullable=True)
        if f.name == LABEL
        else pa.field(f.name, labelsets.list_type(), nullable=True)
        if f.name == LABELS
        else f
        for f in schema
    ]
    return pa.schema(fields, metadata=md)


def write_manifest(
    path: str | os.PathLike,
    data: pa.Table | Iterable[pa.RecordBatch],
    meta: ManifestMeta,
    schema: pa.Schema | None = None,
) -> Path:
    """Write a manifest atomically; its schema is checked against the contract first."""
    return write_table(path, data, meta, schema, check=True)


def write_table(
    path: str | os.PathLike,
    data: pa.Table | Iterable[pa.RecordBatch],
    meta: ManifestMeta,
    schema: pa.Schema | None = None,
    check: bool = False,
) -> Path:
    """Write any stage table (a manifest, prior.parquet, ...) atomically with ``datl`` metadata.

    ``data`` is a Table or an iterable of RecordBatches (streamed: constant memory).
    The label column, if any, is stored as int32; a labels column as list<int32>.
    """
    path = Path(path)
    if isinstance(data, pa.Table):
        schema = schema or data.schema
        batches: Iterable[pa.RecordBatch] = data.to_batches(max_chunksize=DEFAULT_BATCH * 4)
    else:
        it = iter(data)
        first = next(it, None)
        if schema is None:
            if first is None:
                raise ValueError("write_manifest: no batches and no schema")
            schema = first.schema
        batches = it if first is None else _chain(first, it)
    if check:
        check_schema(schema, meta, path)
    out_schema = _with_meta(schema, meta)
    with atomic_output(path) as tmp:
        with pq.ParquetWriter(tmp, out_schema, compression="zstd") as writer:
            wrote = False
            for b in batches:
                if b.num_rows == 0:
                    continue
                writer.write_table(pa.Table.from_batches([b]).cast(out_schema))
                wrote = True
            if not wrote:
                writer.write_table(out_schema.empty_table())
    return path


def _chain(first, rest):
    yield first
    yield from rest


def write_manifest_two_pass(
    out: Path,
    batches: Iterator[pa.RecordBatch],
    classes: Callable[[], list[str] | None],
    params: dict,
    folder: Path,
    convert: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
) -> tuple[int, list[str] | None]:
    """A manifest whose class names are known only once every row is read (a folder of
    shards): rows go first to a temporary file beside ``out``, then are streamed into the
    manifest with its metadata. ``classes()`` is called after the last batch; ``convert``,
    if given, maps each batch on its way from the temporary file into the manifest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.rows.tmp"
    rows = 0
    try:
        writer = None
        for b in batches:
            if writer is None:
                writer = pq.ParquetWriter(tmp, b.schema)
            writer.write_batch(b)
            rows += b.num_rows
        if writer is not None:
            writer.close()
        if rows == 0:
            raise UserError(folder, "holds shards but no images in them", "check the shards' contents")
        names = classes()
        src = pq.ParquetFile(tmp)
        rows_out = src.iter_batches(batch_size=262_144)
        write_manifest(
            out,
            rows_out if convert is None else map(convert, rows_out),
            ManifestMeta(classes=names, stage="manifest-build", params=params),
            schema=src.schema_arrow if convert is None else None,
        )
    finally:
        tmp.unlink(missing_ok=True)
    return rows, names
