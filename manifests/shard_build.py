"""Manifests of sharded sources (see build.py): WebDataset tar shards and image Parquet files.

Each shard is indexed on its own and its rows written out before the next is opened;
rows go first to a temporary Parquet file beside the output (class names may only be
known at the end), then are streamed into the manifest with its metadata.
"""
from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .build import IMAGE_EXTENSIONS
from .errors import UserError
from .io import write_manifest
from .schema import ManifestMeta

CLASSES_FILE = "classes.txt"


def shard_files(folder: Path, suffix: str) -> list[Path]:
    """The shards of one kind directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix == suffix and p.is_file() and not p.name.startswith("."))


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's grouping: ``dir/key.ext.more`` -> (``dir/key``, ``ext.more``)."""
    head, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{head}/{key}" if head else key), ext.lower()


def tar_samples(shard: Path) -> Iterator[tuple[str, int, int, int | None]]:
    """(key, data offset, size, class index or None) of every image member of a tar shard."""
    samples: dict[str, list] = {}
    try:
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_key(m.name)
                entry = samples.setdefault(key, [None, None, None])
                if "." + ext in IMAGE_EXTENSIONS and entry[0] is None:
                    entry[0], entry[1] = m.offset_data, m.size
                elif ext == "cls":
                    text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                    try:
                        entry[2] = int(text)
                    except ValueError:
                        raise UserError(shard, f"member {m.name} holds '{text[:20]}', not a class index",
                                        "write the class index as text in each key.cls") from None
    except (tarfile.TarError, OSError) as e:
        raise UserError(shard, f"is not a readable tar file ({e})", "re-create or remove the shard") from None
    for key, (offset, size, cls) in samples.items():
        if offset is not None:
            yield key, offset, size, cls


def build_from_tars(folder: Path, shards: list[Path], out: Path) -> tuple[int, list[str] | None]:
    names = _class_lines(folder / CLASSES_FILE)
    state = {"labeled": None, "max": -1}

    def batches() -> Iterator[pa.RecordBatch]:
        for shard in shards:
            rel = os.path.relpath(shard.resolve(), out.resolve().parent)
            ids, offsets, sizes, labels = [], [], [], []
            for key, offset, size, cls in tar_samples(shard):
                labeled = cls is not None
                if state["labeled"] is None:
                    state["labeled"] = labeled
                if labeled != state["labeled"]:
                    raise UserError(shard, f"sample '{key}' {'has' if labeled else 'has no'} .cls member, unlike "
                                           "the samples before it", "give every sample a key.cls, or none")
                if labeled and names is not None and not 0 <= cls < len(names):
                    raise UserError(shard, f"sample '{key}' has class {cls}, outside the {len(names)} lines of "
                                           f"{CLASSES_FILE}", f"fix the .cls member or {CLASSES_FILE}")
                ids.append(f"{shard.stem}/{key}")
                offsets.append(offset)
                sizes.append(size)
                labels.append(cls)
                state["max"] = max(state["max"], cls if labeled else -1)
            cols = {"id": pa.array(ids, pa.string()), "path": pa.array([rel] * len(ids), pa.string()),
                    "offset": pa.array(offsets, pa.int64()), "size": pa.array(sizes, pa.int64())}
            if state["labeled"]:
                cols["label"] = pa.array(labels, pa.int32())
            yield pa.RecordBatch.from_pydict(cols)

    def classes() -> list[str] | None:
        if not state["labeled"]:
            return None
        return names if names is not None else [str(i) for i in range(state["max"] + 1)]

    return _write_two_pass(out, batches(), classes, {"folder": str(folder.resolve()), "shards": "tar"}, folder)


def _class_lines(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [ln.strip() for ln in lines]


def hf_class_names(schema: pa.Schema, column: str = "label") -> list[str] | None:
    """The names of a HuggingFace ``ClassLabel`` feature from the file's ``huggingface`` metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return list(names) if isinstance(names, list) else None


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
                raise UserError(f, f"is not a readable Parquet file ({str(e).splitlines()[0]})",
                                "re-create or remove it") from None
            schema = pf.schema_arrow
            if image_column not in schema.names or not _image_type_ok(schema.field(image_column).type):
                raise UserError(f, f"has no image column '{image_column}' (a {{bytes, path}} struct or binary; "
                                   f"columns: {', '.join(schema.names)})", "pass --image-column NAME")
            labeled = "label" in schema.names and pa.types.is_integer(schema.field("label").type)
            if state["labeled"] is None:
                state["labeled"], state["names"] = labeled, hf_class_names(schema)
            if labeled != state["labeled"] or (labeled and hf_class_names(schema) != state["names"]):
                raise UserError(f, "is labeled differently from the files before it",
                                "build a manifest from files of one dataset")
            rel = os.path.relpath(f.resolve(), out.resolve().parent)
            start = 0
            for b in pf.iter_batches(batch_size=65_536, columns=["label"] if labeled else [image_column]):
                n = b.num_rows
                cols = {"id": pa.array([f"{f.stem}/{start + i}" for i in range(n)], pa.string()),
                        "path": pa.array([rel] * n, pa.string()),
                        "row": pa.array(range(start, start + n), pa.int64()),
                        "image_column": pa.array([image_column] * n, pa.string())}
                if labeled:
                    lab = b.column(0).cast(pa.int32())
                    state["max"] = max(state["max"], pc.max(lab).as_py() or -1)
                    cols["label"] = lab
                start += n
                yield pa.RecordBatch.from_pydict(cols)

    def classes() -> list[str] | None:
        if not state["labeled"]:
            return None
        if state["names"] is None:
            return [str(i) for i in range(state["max"] + 1)]
        if state["max"] >= len(state["names"]):
            raise UserError(folder, f"has class index {state['max']}, outside its {len(state['names'])} class names",
                            "fix the labels or the ClassLabel names")
        return state["names"]

    return _write_two_pass(out, batches(), classes,
                           {"folder": str(folder.resolve()), "shards": "parquet", "image_column": image_column}, folder)


def _write_two_pass(out: Path, batches: Iterator[pa.RecordBatch], classes, params: dict,
                    folder: Path) -> tuple[int, list[str] | None]:
    """Rows to a temporary file, then into the manifest once the classes are known."""
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
        write_manifest(out, src.iter_batches(batch_size=262_144), ManifestMeta(
            classes=names, stage="manifest-build", params=params), schema=src.schema_arrow)
    finally:
        tmp.unlink(missing_ok=True)
    return rows, names


def write_tar_shards(manifest, folder: Path, per_shard: int = 5000, prefix: str = "shard") -> list[Path]:
    """Write a manifest's images as WebDataset tar shards (``KEY.EXT`` + ``KEY.cls``, ``classes.txt``
    beside them): the layout ``datl manifest build`` reads. Keys are the ids without their image
    extension. Deterministic: same manifest, same bytes. Each shard is written atomically."""
    import io

    from .io import atomic_output
    from .shards import read_bytes

    folder.mkdir(parents=True, exist_ok=True)
    if manifest.has_labels:
        with atomic_output(folder / CLASSES_FILE) as tmp:
            tmp.write_text("".join(c + "\n" for c in manifest.require_labels()))
    written = []
    cols = ["id"] + (["label"] if manifest.has_labels else [])
    meta_batches = manifest.iter_batches(cols, batch_size=per_shard)
    for n, (_, where) in enumerate(manifest.iter_addresses(batch_size=per_shard)):
        meta = next(meta_batches)
        ids = meta.column(0).to_pylist()
        labels = meta.column(1).to_pylist() if manifest.has_labels else [None] * len(ids)
        path = folder / f"{prefix}-{n:06d}.tar"
        with atomic_output(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for i, (id_, label) in enumerate(zip(ids, labels)):
                a = where.address(i)
                stem, ext = os.path.splitext(id_)
                ext = ext if ext.lower() in IMAGE_EXTENSIONS else os.path.splitext(a.path)[1] or ".png"
                members = [(stem.replace(".", "_") + ext.lower(), read_bytes(a))]
                if label is not None:
                    members.append((stem.replace(".", "_") + ".cls", str(label).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tf.addfile(info, io.BytesIO(data))
        written.append(path)
    return written
