"""``ImageDataset``: a manifest's images as tensors, with unreadable images counted, not fatal.

A user's 100M-image run must not die on image 37M: a corrupt or missing file
yields a sample with ``image=None`` and its reason; :func:`collate_skip_bad` drops
it from the batch and hands the reason to the training loop, which counts and
reports it (:class:`BadImageLog`). Paths and labels are held as Arrow/NumPy
arrays, never as millions of Python objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from datl.manifests import labelsets
from datl.manifests.address import AddressColumns
from datl.manifests.images import DECODE_ERRORS, Examples, clean, load_image
from datl.manifests.io import Manifest, open_manifest
from datl.manifests.schema import LABEL, LABELS

logger = logging.getLogger(__name__)


class Sample(NamedTuple):
    image: Any  # a tensor (after the transform) or None when unreadable
    label: Any  # int, -1 when unlabeled; a multi-label manifest: a tuple of class indexes
    index: int
    error: str | None
    warning: str | None = None  # "path: what PIL warned about" for an image decoded with a warning


class Batch(NamedTuple):
    images: torch.Tensor | None  # None when every image of the batch was unreadable
    labels: torch.Tensor  # (B,); a multi-label manifest: (B, L) class indexes padded with -1
    index: torch.Tensor
    bad: tuple[str, ...]  # "path: reason" for each unreadable image dropped from this batch
    warned: tuple[str, ...] = ()  # "path: warning" for each image PIL warned about (kept in the batch)


def _default_transform(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class ImageDataset(torch.utils.data.Dataset):
    """Images of a manifest, decoded with PIL, converted to ``mode``, then ``transform``.

    mode: 'L' for 1-channel models, 'RGB' for 3-channel ones: a model trained on grey
    28x28 images reads RGB or other sizes by conversion (the transform resizes).
    ``rows=(start, stop)``: only that range of the manifest (item i is row start + i, and
    its Sample's ``index`` says so): memory grows with the range, not with the manifest.
    ``draft=(w, h)``: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
    covers that size (PIL's ``draft``), never smaller: for inference, whose transform only
    shrinks an image to the model's input size. Training crops need the full image.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        transform: Callable | None = None,
        mode: str = "RGB",
        rows: tuple[int, int] | None = None,
        draft: tuple[int, int] | None = None,
    ):
        self.draft = tuple(draft) if draft is not None else None
        self.manifest = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
        single, multi = self.manifest.label_column == LABEL, self.manifest.multi_label
        cols = ["path", *self.manifest.address_columns] + ([self.manifest.label_column] if single or multi else [])
        self.start = rows[0] if rows else 0  # rows=(start, stop): only that range, read by row group
        table = self.manifest.read_range(*rows, cols) if rows else self.manifest.read(cols)
        self._where = AddressColumns(table, str(self.manifest.folder))
        self.label_sets = None  # (offsets, values) of a multi-label manifest: row i's are values[o[i]:o[i+1]]
        if multi:
            offsets, values, _ = labelsets.flat(table.column(LABELS))
            self.label_sets = (offsets, values.astype(np.int32))
            self.labels = np.full(table.num_rows, -1, dtype=np.int64)
        elif single:
            self.labels = table.column(LABEL).combine_chunks().fill_null(-1).to_numpy().astype(np.int64)
        else:
            self.labels = np.full(table.num_rows, -1, dtype=np.int64)
        self.transform = transform or _default_transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self._where)

    def path(self, i: int) -> str:
        """Where row i's image is: its file, or its place in a shard."""
        return str(self._where.address(i))

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        if self.label_sets is None:
            label = int(self.labels[i])
        else:
            o, v = self.label_sets
            label = tuple(int(c) for c in v[o[i] : o[i + 1]])
        where = self._where.address(i)
        notes: list[str] = []
        try:
            img = load_image(where, self.mode, draft=self.draft, warned=notes)
        except DECODE_ERRORS as e:
            return Sample(None, label, self.start + i, f"{where}: {type(e).__name__}: {clean(str(e))}")
        return Sample(self.transform(img), label, self.start + i, None, f"{where}: {notes[0]}" if notes else None)


def collate_skip_bad(samples: Sequence[Sample]) -> Batch:
    """One batch of the readable samples; the unreadable ones' errors ride along. In a
    DataLoader worker the images are stacked straight into shared memory, as torch's default
    collate does: stacking privately and then moving the batch to shared memory for the main
    process copies it once more."""
    good = [s for s in samples if s.error is None]
    bad = tuple(s.error for s in samples if s.error is not None)
    images = None
    if good:
        first = good[0].image
        out = None
        if torch.utils.data.get_worker_info() is not None:
            storage = first._typed_storage()._new_shared(len(good) * first.numel(), device=first.device)
            out = first.new(storage).resize_(len(good), *first.shape)
        images = torch.stack([s.image for s in good], out=out)
    return Batch(
        images,
        label_tensor([s.label for s in good]),
        torch.tensor([s.index for s in good], dtype=torch.long),
        bad,
        tuple(s.warning for s in good if s.warning is not None),
    )


def label_tensor(labels: list) -> torch.Tensor:
    """(B,) class indexes; label sets (tuples): (B, L) padded with -1, L >= 1."""
    if not labels or not isinstance(labels[0], tuple):
        return torch.tensor(labels, dtype=torch.long)
    out = torch.full((len(labels), max(1, max(len(s) for s in labels))), -1, dtype=torch.long)
    for i, s in enumerate(labels):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class BadImageLog:
    """The images a run could not read (skipped), and those PIL warned about while decoding
    them (used, but worth a look): counts and the first few of each, never the whole list.
    Warnings never reach stderr one by one; :meth:`report` logs one line per kind."""

    def __init__(self, keep: int = 5):
        self.unreadable = Examples(keep)
        self.warnings = Examples(keep)

    @property
    def count(self) -> int:
        """Unreadable images."""
        return self.unreadable.count

    @property
    def warned(self) -> int:
        """Images decoded with a warning."""
        return self.warnings.count

    def add(self, bad: Sequence[str], warned: Sequence[str] = ()) -> None:
        self.unreadable.add(bad)
        self.warnings.add(warned)

    def merge(self, other: BadImageLog) -> None:
        self.unreadable.merge(other.unreadable)
        self.warnings.merge(other.warnings)

    def report(self, what: str) -> None:
        """One warning line per kind of trouble met reading ``what`` (nothing if none)."""
        for line in (self.summary(), self.warnings_summary()):
            if line:
                logger.warning(f"warning: {what}: {line}")

    def warnings_summary(self) -> str | None:
        if not self.warned:
            return None
        return (
            f"{self.warned} image(s) decoded with a warning from PIL and used (first: "
            f"{self.warnings.first}); `datl manifest validate` lists them"
        )

    def summary(self) -> str | None:
        if not self.count:
            return None
        return (
            f"{self.count} unreadable image(s) skipped (first: {self.unreadable.first}); "
            "run `datl manifest validate` on the manifest to list them"
        )
