"""The manifest contract (docs/DESIGN.md) as code: the Parquet schema and its ``datl``
metadata, streamed reading and atomic writing, one module per storage format (loose files,
tar shards, image Parquet) that both builds and reads it, image decoding, validation.

Invariant: the ground floor. This package imports pyarrow, numpy and PIL, and datl.core's
torch-free, click-free modules; never torch, click, sklearn or a higher layer of datl
(tests/test_layers.py checks it, in a fresh interpreter).

| module          | holds |
| --------------- | ----- |
| schema.py       | required columns, ``ManifestMeta`` (the ``datl`` metadata), ``ManifestError`` |
| io.py           | ``Manifest`` (columns and row ranges on demand), ``write_manifest``, ``write_table`` |
| address.py      | where a row's image bytes are (``Address``, ``AddressColumns``) |
| folder.py, tar.py, imageparquet.py | each storage format: build a manifest of it, read an image from it |
| reading.py      | ``read_bytes``: any row's bytes, through per-thread readers |
| build.py        | ``datl manifest build``: the folder's contents choose the format |
| export.py       | a manifest's images written as tar shards |
| images.py       | THE decoding path (``load_image``), ``probe_images``, ``Examples`` |
| validate.py, show.py | ``datl manifest validate`` and ``show`` |
"""

from .images import Examples, load_image, probe_images
from .io import Manifest, open_manifest, write_manifest, write_table
from .schema import LABEL, ManifestError, ManifestMeta, check_same_classes, check_schema

__all__ = [
    "LABEL",
    "Examples",
    "Manifest",
    "ManifestError",
    "ManifestMeta",
    "check_same_classes",
    "check_schema",
    "load_image",
    "open_manifest",
    "probe_images",
    "write_manifest",
    "write_table",
]
