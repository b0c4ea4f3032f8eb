"""The source feature store: what ``curate features`` writes and ``curate dedup
--source-features`` reads instead of images. The invariant: a store describes exactly one
source manifest (its bytes' sha256), one model (its fingerprint, or none), one descriptor
version (``pixel.PARAMS``) and one chunk size, stated in its ``store.json``; a store that does
not match what the reader asks for is refused, never half-used.

Layout of the folder:

- ``store.json``: the binding above, the number of rows and chunks, the embedding and logits
  widths; written (atomically) before any part, the same by every rank and every ``--part``.
- ``part-NNNNNN.parquet``: the source rows [N * chunk_size, (N + 1) * chunk_size), in manifest
  order, one row each: ``row`` (int64), ``id``, ``hash`` (16 bytes of sha256; zeros when the
  file could not be read), ``readable``, ``warned`` (PIL warned while decoding), ``pixel``
  (the canvas descriptor, float16 x 256), ``content`` (the content descriptor, float16 x 512),
  and with a model ``embedded`` (the model could read it), ``embedding`` (L2-normalised,
  float16; zeros where not embedded) and ``logits`` (float16, every class; over
  ``LOGITS_FULL_MAX`` classes the ``TOP_K`` best as ``top_labels``/``top_logits`` instead).
  Every vector is one fixed-size binary value holding its little-endian bytes (read one back
  with ``np.frombuffer(value, np.float16)``; ``top_labels`` are int32). Each part is written
  atomically, uncompressed, in row groups of 8,192, with the images' fingerprint (size and
  mtime of every file behind it) in its datl metadata: a rerun skips a part whose images did
  not change.

The store is complete when every part is: parts are independent, so a rank, a job-array task
or a shell loop can write any of them in any order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datl.core.errors import UserError
from datl.core.files import atomic_output, read_json, write_json
from datl.manifests import ManifestMeta
from datl.manifests.schema import META_KEY

from . import pixel as px
from .describe import Described, Embeddings

FORMAT = 1
META = "store.json"
LOGITS_FULL_MAX = 1024  # up to this many classes every logit is kept; beyond, the TOP_K best
TOP_K = 16


@dataclass(frozen=True)
class Binding:
    """What a store describes; two stores with equal bindings hold the same numbers."""

    source_sha256: str
    rows: int
    chunk_size: int
    descriptor: str
    model: str  # describe.model_fingerprint: 'none' without a model
    image_size: list[int] | None = None
    embedding_dim: int | None = None
    classes: int | None = None
    format: int = FORMAT

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk_size)

    def chunk(self, c: int) -> tuple[int, int]:
        return c * self.chunk_size, min((c + 1) * self.chunk_size, self.rows)

    @property
    def logits(self) -> str | None:
        if self.classes is None:
            return None
        return "full" if self.classes <= LOGITS_FULL_MAX else f"top{TOP_K}"


def part_range(part: tuple[int, int] | None, n_chunks: int) -> range:
    """The chunks of ``--part K/N``: the K-th (0-based) of N contiguous, near-equal ranges."""
    if part is None:
        return range(n_chunks)
    k, n = part
    return range(k * n_chunks // n, (k + 1) * n_chunks // n)


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``--part K/N`` -> (K, N), 0 <= K < N (SLURM's array task id and count)."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = -1
    if not (n >= 1 and 0 <= k < n):
        raise UserError(
            "--part",
            f"'{text}' is not K/N with 0 <= K < N",
            "pass e.g. --part 0/4 (a SLURM job array: --part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
        )
    return k, n


class FeatureStore:
    def __init__(self, folder: str | Path, binding: Binding):
        self.folder, self.binding = Path(folder), binding

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, binding: Binding) -> FeatureStore:
        """The store in ``folder`` for ``binding``: its store.json written if there is none,
        refused (exit 2) if the folder holds a store of something else."""
        folder = Path(folder)
        old = read_json(folder / META)
        if old is None:
            write_json(folder / META, asdict(binding))
            return cls(folder, binding)
        if _binding(old, folder) != binding:
            raise UserError(
                folder,
                f"is a feature store of {_differs(_binding(old, folder), binding)}",
                "pass another --out, or delete that folder to build the store again",
            )
        return cls(folder, binding)

    @classmethod
    def open(cls, folder: str | Path) -> FeatureStore:
        folder = Path(folder)
        raw = read_json(folder / META)
        if raw is None:
            what = "has no readable store.json" if folder.is_dir() else "does not exist"
            raise UserError(folder, f"is not a feature store: it {what}", "build it with `curate features --out DIR`")
        return cls(folder, _binding(raw, folder))

    def check(self, source_sha256: str, model: str, need_embeddings: bool, image_size=None) -> None:
        """Refuse (exit 2) a store that is not of this source, descriptor version and model, or
        is not complete."""
        b, where = self.binding, self.folder
        fix = "build a store for it with `curate features` (or pass the matching --source/--model)"
        if b.source_sha256 != source_sha256:
            raise UserError(where, "is a feature store of another source manifest (its sha256 differs)", fix)
        if b.descriptor != px.PARAMS:
            raise UserError(
                where, "holds pixel descriptors of another datl version", "build it again with `curate features`"
            )
        if need_embeddings and b.model == "none":
            raise UserError(
                where,
                "holds no model embeddings (built without --model)",
                "build it with `curate features --model ...`, or pass --no-feature",
            )
        if need_embeddings and (b.model != model or (image_size is not None and b.image_size != list(image_size))):
            raise UserError(where, "holds embeddings of another model (its fingerprint differs)", fix)
        missing = self.missing()
        if missing:
            raise UserError(
                where,
                f"is not complete: {len(missing):,} of {b.chunks:,} parts are missing (first: "
                f"{self.part_path(missing[0]).name})",
                "run `curate features` again with the same flags (or the missing --part) to finish it",
            )

    # -- parts -------------------------------------------------------------------------
    def part_path(self, c: int) -> Path:
        return self.folder / f"part-{c:06d}.parquet"

    def part_files(self, c: int) -> str | None:
        """The images' fingerprint a finished part was written with; None if there is none
        (or it cannot be read)."""
        try:
            meta = ManifestMeta.from_schema(pq.read_schema(self.part_path(c)), self.part_path(c))
        except (OSError, pa.ArrowException, UserError):
            return None
        if meta is None or meta.params.get("binding") != asdict(self.binding):
            return None
        return meta.params.get("files")

    def check_files(self, manifest, start: int, stop: int, files: str | None = None) -> None:
        """Refuse (exit 2) to read rows [start, stop) from parts written from image files that
        have changed since (size or modification time): their descriptors would be stale.
        ``files``: the caller's fingerprint of exactly rows [start, stop), reused when that range
        is one part (dedup with the store's chunk size): each file is then stat'ed once."""
        size = self.binding.chunk_size
        for c in range(start // size, -(-stop // size)):
            lo, hi = self.binding.chunk(c)
            now = files if files is not None and (lo, hi) == (start, stop) else manifest.files_fingerprint(lo, hi)
            if self.part_files(c) != now:
                raise UserError(
                    self.part_path(c),
                    "was written from image files that have changed since (size or modification time)",
                    "rerun `curate features` with the same flags: it rewrites only the parts whose images changed",
                )

    def missing(self) -> list[int]:
        return [c for c in range(self.binding.chunks) if not self.part_path(c).exists()]

    def write(self, c: int, d: Described, ids: pa.Array, files: str) -> None:
        """Part ``c`` from its described rows, atomically."""
        lo, hi = self.binding.chunk(c)
        assert (d.start, d.stop) == (lo, hi)
        n, content = hi - lo, d.content
        cols = {
            "row": pa.array(np.arange(lo, hi, dtype=np.int64)),
            "id": ids,
            "hash": _vectors(content.hashes),
            "readable": pa.array(content.readable),
            "warned": pa.array(content.warned),
            "pixel": _vectors(content.pixel),
            "content": _vectors(content.content),
        }
        if self.binding.model != "none":
            dim = self.binding.embedding_dim
            embedded = np.zeros(n, bool)
            embedded[d.emb.rows] = True
            vecs = np.zeros((n, dim), np.float16)
            vecs[d.emb.rows] = d.emb.vecs
            cols.update(embedded=pa.array(embedded), embedding=_vectors(vecs))
            logits = np.zeros((n, self.binding.classes), np.float32)
            logits[d.emb.rows] = d.logits
            if self.binding.logits == "full":
                cols["logits"] = _vectors(logits.astype(np.float16))
            else:
                top = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K].astype(np.int32)
                cols["top_labels"] = _vectors(top)
                cols["top_logits"] = _vectors(np.take_along_axis(logits, top, 1).astype(np.float16))
        meta = ManifestMeta(stage="features", params={"binding": asdict(self.binding), "files": files, "part": c})
        table = pa.table(cols).replace_schema_metadata({META_KEY: meta.to_json()})
        with atomic_output(self.part_path(c)) as tmp:
            # neither dictionary pages nor compression: descriptors are dense floats, which zstd
            # shrinks by 10% while reading a part took 1.7x as long; a dictionary made it 15x slower
            pq.write_table(table, tmp, compression="none", use_dictionary=False, row_group_size=8_192)

    def read(self, start: int, stop: int, embeddings: bool) -> Described:
        """Rows [start, stop) as ``describe.describe`` gives them (no logits): the parts that
        hold them, only the columns needed."""
        size = self.binding.chunk_size
        cols = ["hash", "readable", "warned", "pixel", "content"] + (["embedded", "embedding"] if embeddings else [])
        tables = []
        for c in range(start // size, -(-stop // size)):
            lo, _ = self.binding.chunk(c)
            path = self.part_path(c)
            try:
                t = pq.ParquetFile(path).read(columns=cols)  # not read_table: it imports pandas
            except (OSError, pa.ArrowException) as e:
                raise UserError(
                    path, f"cannot be read ({e})", "run `curate features` again to rewrite the missing part"
                ) from None
            a, b = max(start - lo, 0), min(stop - lo, t.num_rows)
            tables.append(t.slice(a, b - a))
        t = pa.concat_tables(tables) if tables else None
        n = stop - start
        if t is None or t.num_rows != n:
            raise UserError(
                self.folder,
                f"holds {0 if t is None else t.num_rows} rows for rows [{start}, {stop})",
                "build the store again with `curate features`",
            )
        hashes = _numpy(t.column("hash"), f"S{px.HASH_BYTES}", 1).reshape(-1)
        content = px.Content(
            hashes,
            _numpy(t.column("pixel"), np.float16, px.DIM),
            _numpy(t.column("content"), np.float16, px.CDIM),
            t.column("readable").to_numpy(),
            t.column("warned").to_numpy(),
        )
        emb = None
        if embeddings:
            rows = np.flatnonzero(t.column("embedded").to_numpy())
            emb = Embeddings(rows, _numpy(t.column("embedding"), np.float16, self.binding.embedding_dim)[rows])
        return Described(start, stop, content, emb)

    def read_embeddings(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows relative to the chunk's start, float32 vectors) of the embedded images of part
        ``c``: those two columns only (per-image weights read every part twice)."""
        path = self.part_path(c)
        try:
            t = pq.ParquetFile(path).read(columns=["embedded", "embedding"])
        except (OSError, pa.ArrowException) as e:
            raise UserError(
                path, f"cannot be read ({e})", "run `curate features` again to rewrite the missing part"
            ) from None
        rows = np.flatnonzero(t.column("embedded").to_numpy())
        return rows, _numpy(t.column("embedding"), np.float16, self.binding.embedding_dim)[rows].astype(np.float32)


def _vectors(x: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Each row of ``x`` as one fixed-size binary value: its little-endian bytes. Not a
    fixed_size_list: Parquet would store a repetition level per element, and decoding those made
    reading a part of 65,536 rows 0.6 s instead of 0.02 s."""
    x = np.ascontiguousarray(x)
    width = x.dtype.itemsize * (int(np.prod(x.shape[1:])) if x.ndim > 1 else 1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(x), [None, pa.py_buffer(x.tobytes())])


def _numpy(col: pa.ChunkedArray, dtype, dim: int) -> np.ndarray:
    """A fixed-size binary column back as an (n, dim) array of ``dtype``."""
    c = col.combine_chunks()
    width = c.type.byte_width
    return np.frombuffer(c.buffers()[1], dtype, len(c) * width // np.dtype(dtype).itemsize, c.offset * width).reshape(
        -1, dim
    )


def _binding(raw: dict, where: Path) -> Binding:
    try:
        return Binding(**raw)
    except TypeError:
        raise UserError(
            where / META, "is not a store.json of this datl version", "build the store again with `curate features`"
        ) from None


def _differs(old: Binding, new: Binding) -> str:
    """What the store in a folder describes that the run does not, in words."""
    if old.source_sha256 != new.source_sha256 or old.rows != new.rows:
        return "another source manifest (its sha256 differs)"
    if old.model != new.model or old.image_size != new.image_size:
        return f"another model ({old.model[:40]})"
    if old.descriptor != new.descriptor or old.format != new.format:
        return "another descriptor version (another datl)"
    if old.chunk_size != new.chunk_size:
        return f"--chunk-size {old.chunk_size}, not {new.chunk_size}"
    return "other settings"
