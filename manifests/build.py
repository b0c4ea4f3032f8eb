"""``datl manifest build DIR``: a folder of images, of tar shards, or of image Parquet files
-> a manifest. The folder's contents say which; each storage format builds its own
(folder.py, tar.py, imageparquet.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from datl.core.errors import UserError

from .folder import build_from_folder, build_multi_label
from .imageparquet import build_from_parquet
from .tar import build_from_tars

logger = logging.getLogger(__name__)


def shard_files(folder: Path, suffix: str) -> list[Path]:
    """The shards of one kind directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix == suffix and p.is_file() and not p.name.startswith("."))


def build_manifest(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    image_column: str = "image",
    labels: str | os.PathLike | None = None,
) -> tuple[int, list[str] | None]:
    """Write the manifest of ``folder`` to ``out``; returns (rows, classes or None).

    ``*.tar`` shards in the folder make a tar manifest, else ``*.parquet`` files an image
    Parquet one, else the folder's loose images (class sub-folders for labels, or with
    ``labels`` a CSV of label sets: a multi-label manifest)."""
    folder, out = Path(folder), Path(out)
    if not folder.exists():
        raise UserError(folder, "folder does not exist", "pass a folder of images (class sub-folders for labels)")
    if not folder.is_dir():
        raise UserError(folder, "is a file, not a folder", "pass the folder that holds the images")
    tars, parquets = shard_files(folder, ".tar"), shard_files(folder, ".parquet")
    if labels is not None:
        if tars or parquets:
            raise UserError(
                labels,
                f"--labels is for a folder of loose images, and {folder} holds {'tar' if tars else 'Parquet'} shards",
                "put the label sets in the shards (key.cls / key.json, or a 'labels' column) and drop --labels",
            )
        rows, classes, unlisted = build_multi_label(folder, out, Path(labels))
        if unlisted:
            logger.warning(f"note: {unlisted:,} of {rows:,} image(s) have no line in {labels}: no label (an empty set)")
        return rows, classes
    if tars:
        return build_from_tars(folder, tars, out)
    if parquets:
        return build_from_parquet(folder, parquets, out, image_column)
    return build_from_folder(folder, out)
