"""Image Parquet files (HuggingFace ``datasets``, img2dataset): a folder of them -> a
manifest, and reading a row's image.

Build: one row per row, addressed by ``row`` and ``image_column`` (``--image-column``,
default ``image``: a ``{"bytes", "path"}`` struct or a binary column); an integer ``label``
column gives labels, named by the ``ClassLabel`` feature in the file's ``huggingface``
metadata when present; a list-of-integers ``labels`` column (``Sequence(ClassLabel)``) a
multi-label manifest, named the same way. Id: ``file-stem/row``. Only the label column is read to build.

Read: the row group holding the row; the last ROW_GROUPS are kept, so reading a file in
order decodes each row group once.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datl.core.errors import UserError

from . import labelsets
from .address import Address, regular_file
from .io import write_manifest_two_pass

OPEN_FILES = 64
ROW_GROUPS = 4


class ParquetRowReader:
    """Reads the image bytes of rows of image Parquet files; caches open files and row groups."""

    def __init__(self) -> None:
        self.groups: OrderedDict[tuple[str, int, str], pa.Array] = OrderedDict()
        self.files: OrderedDict[str, pq.ParquetFile] = OrderedDict()

    def read(self, a: Address) -> bytes:
        pf = self._file(a.path)
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

    def _file(self, path: str) -> pq.ParquetFile:
        pf = self.files.pop(path, None)
        if pf is None:
            regular_file(path)
            try:
                pf = pq.ParquetFile(path)
            except pa.ArrowException as e:
                raise OSError(f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
            while len(self.files) >= OPEN_FILES:
                self.files.popitem(last=False)
        self.files[path] = pf
        return pf


def hf_class_names(schema: pa.Schema, column: str = "label") -> list[str] | None:
    """The names of a HuggingFace ``ClassLabel`` feature from the file's ``huggingface`` metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(feature, dict) and "names" not in feature and isinstance(feature.get("feature"), dict):
        feature = feature["feature"]  # Sequence(ClassLabel) / List(ClassLabel): the names are the item's
    names = feature.get("names") if isinstance(feature, dict) else None
    return list(names) if isinstance(names, list) else None


def label_column(schema: pa.Schema) -> str | None:
    """'label' (an integer), 'labels' (a list of integers: multi-label), or None: unlabeled."""
    if "label" in schema.names and pa.types.is_integer(schema.field("label").type):
        return "label"
    if "labels" in schema.names:
        t = schema.field("labels").type
        if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type):
            return "labels"
    return None


def _image_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def build_from_parquet(folder: Path, files: list[Path], out: Path, image_column: str) -> tuple[int, list[str] | None]:
    state: dict = {"labeled": None, "max": -1, "names": None}

    def batches() -> Iterator[pa.RecordBatch]:
        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                raise UserError(
                    f, f"is not a readable Parquet file ({str(e).splitlines()[0]})", "re-create or remove it"
                ) from None
            schema = pf.schema_arrow
            if image_column not in schema.names or not _image_type_ok(schema.field(image_column).type):
                raise UserError(
                    f,
                    f"has no image column '{image_column}' (a {{bytes, path}} struct or binary; "
                    f"columns: {', '.join(schema.names)})",
                    "pass --image-column NAME",
                )
            labeled = label_column(schema)
            if state["labeled"] is None:
                state["labeled"], state["names"] = labeled, hf_class_names(schema, labeled or "label")
            if labeled != state["labeled"] or (labeled and hf_class_names(schema, labeled) != state["names"]):
                raise UserError(
                    f, "is labeled differently from the files before it", "build a manifest from files of one dataset"
                )
            rel = os.path.relpath(f.resolve(), out.resolve().parent)
            start = 0
            for b in pf.iter_batches(batch_size=65_536, columns=[labeled] if labeled else [image_column]):
                n = b.num_rows
                cols = {
                    "id": pa.array([f"{f.stem}/{start + i}" for i in range(n)], pa.string()),
                    "path": pa.array([rel] * n, pa.string()),
                    "row": pa.array(range(start, start + n), pa.int64()),
                    "image_column": pa.array([image_column] * n, pa.string()),
                }
                if labeled == "label":
                    lab = b.column(0).cast(pa.int32())
                    state["max"] = max(state["max"], pc.max(lab).as_py() or -1)
                    cols["label"] = lab
                elif labeled == "labels":
                    lab = b.column(0).cast(labelsets.list_type())
                    offsets, values, null_item = labelsets.flat(lab)
                    k = len(state["names"]) if state["names"] is not None else 2**31 - 1
                    bad = labelsets.first_bad(offsets, values, null_item, k)
                    if bad is not None:
                        raise UserError(
                            f, f"row {start + bad[0]}'s 'labels' {bad[1]}", "fix the labels or the ClassLabel names"
                        )
                    state["max"] = max(state["max"], int(values.max()) if len(values) else -1)
                    cols["labels"] = lab
                start += n
                yield pa.RecordBatch.from_pydict(cols)

    def classes() -> list[str] | None:
        if not state["labeled"]:
            return None
        if state["names"] is None:
            return [str(i) for i in range(state["max"] + 1)]
        if state["max"] >= len(state["names"]):
            raise UserError(
                folder,
                f"has class index {state['max']}, outside its {len(state['names'])} class names",
                "fix the labels or the ClassLabel names",
            )
        return state["names"]

    params = {"folder": str(folder.resolve()), "shards": "parquet", "image_column": image_column}
    return write_manifest_two_pass(out, batches(), classes, params, folder)
