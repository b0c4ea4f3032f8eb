"""``datl manifest build DIR``: a folder of images, of tar shards, or of image Parquet files
-> a manifest.

- Loose images: class sub-folders (``DIR/cat/x.jpg``, ``DIR/dog/y/z.png``) -> a labeled
  manifest with sorted class names; a flat folder of images -> an unlabeled one. The id
  of an image is its path relative to DIR (posix separators): stable across runs and
  machines.
- ``*.tar`` shards (WebDataset): members sharing a key (``key.jpg``, ``key.cls``, ...) are
  one sample; its image member becomes a row addressed by ``offset``/``size`` inside the
  shard (from ``tarfile``'s member data offsets). ``key.cls`` holds the class index as
  text; class names are the lines of ``classes.txt`` beside the shards (absent: the
  indexes are the names). No ``.cls`` at all: unlabeled. Id: ``shard-stem/key``.
- ``*.parquet`` image files (HuggingFace ``datasets`` / img2dataset): one row per row,
  addressed by ``row`` and ``image_column`` (``--image-column``, default ``image``: a
  ``{"bytes", "path"}`` struct or a binary column); an integer ``label`` column gives
  labels, named by the ``ClassLabel`` feature in the file's ``huggingface`` metadata when
  present. Id: ``file-stem/row``.

Paths are stored relative to the manifest's own folder. Shards are read one at a time
(tar headers, ``.cls`` members, Parquet label columns: never the images), so memory
holds at most one shard's index.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from .errors import UserError
from .io import write_manifest
from .schema import ManifestMeta

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _walk_images(folder: Path) -> list[str]:
    """Image files below ``folder``, as sorted posix paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, folder)
        for f in sorted(files):
            if _is_image(f):
                out.append(f if rel == "." else Path(rel, f).as_posix())
    return sorted(out)


def build_manifest(folder: str | os.PathLike, out: str | os.PathLike,
                   image_column: str = "image") -> tuple[int, list[str] | None]:
    """Write the manifest of ``folder`` to ``out``; returns (rows, classes or None)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(folder, "folder does not exist", "pass a folder of images (class sub-folders for labels)")
    if not folder.is_dir():
        raise UserError(folder, "is a file, not a folder", "pass the folder that holds the images")
    from .shard_build import build_from_parquet, build_from_tars, shard_files

    tars, parquets = shard_files(folder, ".tar"), shard_files(folder, ".parquet")
    if tars:
        return build_from_tars(folder, tars, Path(out))
    if parquets:
        return build_from_parquet(folder, parquets, Path(out), image_column)
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    top_images = [e for e in entries if (folder / e).is_file() and _is_image(e)]
    class_dirs = [e for e in entries if (folder / e).is_dir()]
    if top_images and class_dirs:
        raise UserError(folder, f"mixes {len(top_images)} image(s) at the top with {len(class_dirs)} sub-folder(s)",
                        "put every image in a class sub-folder (labeled) or none of them (unlabeled)")
    out = Path(out)
    base = out.resolve().parent
    if class_dirs:
        classes = class_dirs
        ids, labels = [], []
        for k, c in enumerate(classes):
            files = _walk_images(folder / c)
            ids.extend(Path(c, f).as_posix() for f in files)
            labels.extend([k] * len(files))
        if not ids:
            raise UserError(folder, "has class sub-folders but no images in them",
                            f"add images with one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    else:
        classes = None
        ids = top_images
        labels = None
    if not ids:
        raise UserError(folder, "holds no images",
                        f"add images with one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    root = folder.resolve()
    paths = [os.path.relpath(root / i, base) for i in ids]
    cols = {"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string())}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int32())
    meta = ManifestMeta(classes=classes, stage="manifest-build", params={"folder": str(root)})
    write_manifest(out, pa.table(cols), meta)
    return len(ids), classes
