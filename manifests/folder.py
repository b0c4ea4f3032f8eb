"""Loose image files: a folder of them -> a manifest, and reading one.

Build: class sub-folders (``DIR/cat/x.jpg``, ``DIR/dog/y/z.png``) give a labeled manifest
with sorted class names; a flat folder of images an unlabeled one. The id of an image is
its path relative to DIR (posix separators): stable across runs and machines. Paths are
stored relative to the manifest's own folder.

Multi-label (``--labels labels.csv``): every image below DIR, sub-folders being only folders;
each CSV row is an image path relative to DIR, then its class names separated by ``|``
(header ``path,labels`` optional). Classes: the sorted names the CSV uses. An image the
CSV does not list has an empty label set (no label; the build says how many); a CSV row
naming a file that is not there is refused.

Read: the whole file, regular files only, at most ``MAX_IMAGE_BYTES``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow as pa

from datl.core.errors import UserError

from .address import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES, is_image_name, regular_file
from .io import write_manifest
from .schema import ManifestMeta


def read_file(path: str) -> bytes:
    """A whole loose image file: regular files only, at most MAX_IMAGE_BYTES."""
    st = regular_file(path)
    if st.st_size > MAX_IMAGE_BYTES:
        raise OSError(f"file of {st.st_size:,} bytes is larger than the {MAX_IMAGE_BYTES:,}-byte limit")
    with open(path, "rb") as f:
        return f.read(MAX_IMAGE_BYTES + 1)


def walk_images(folder: Path) -> list[str]:
    """Image files below ``folder``, as sorted posix paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, folder)
        for f in sorted(files):
            if is_image_name(f):
                out.append(f if rel == "." else Path(rel, f).as_posix())
    return sorted(out)


def _no_images(folder: Path, problem: str) -> UserError:
    return UserError(folder, problem, f"add images with one of {', '.join(sorted(IMAGE_EXTENSIONS))}")


def read_label_csv(path: Path) -> dict[str, list[str]]:
    """``--labels CSV``: image path (relative to DIR, posix) -> its class names, as written."""
    if not path.is_file():
        raise UserError(path, "does not exist", "pass a CSV of: image path relative to DIR, class names separated by |")
    out: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "labels"]):
                continue
            if len(row) != 2:
                raise UserError(
                    path,
                    f"line {n} has {len(row)} field(s), expected 2 (path, labels)",
                    "write each line as: relative/path.jpg,cat|dog (quote a path that holds a comma)",
                )
            rel = Path(row[0].strip()).as_posix()
            if rel in out:
                raise UserError(path, f"line {n} lists {rel} a second time", "give each image one line")
            names = [t.strip() for t in row[1].split("|") if t.strip()]
            if len(set(names)) != len(names):
                raise UserError(path, f"line {n} names a class twice ({row[1][:60]})", "list each class once a line")
            out[rel] = names
    return out


def build_multi_label(folder: Path, out: Path, labels_csv: Path) -> tuple[int, list[str], int]:
    """Every image below ``folder``, with its label set from ``labels_csv``; returns (rows,
    classes, images the CSV does not list)."""
    table = read_label_csv(labels_csv)
    ids = walk_images(folder)
    if not ids:
        raise _no_images(folder, "holds no images")
    have = set(ids)
    missing = next((p for p in table if p not in have), None)
    if missing is not None:
        raise UserError(
            labels_csv,
            f"lists {missing}, which is not an image below {folder}",
            "fix the path (relative to the folder, / separated) or drop the line",
        )
    classes = sorted({c for names in table.values() for c in names})
    index = {c: i for i, c in enumerate(classes)}
    sets = [sorted(index[c] for c in table.get(i, [])) for i in ids]
    root, base = folder.resolve(), out.resolve().parent
    cols = {
        "id": pa.array(ids, pa.string()),
        "path": pa.array([os.path.relpath(root / i, base) for i in ids], pa.string()),
        "labels": pa.array(sets, pa.list_(pa.int32())),
    }
    meta = ManifestMeta(
        classes=classes, stage="manifest-build", params={"folder": str(root), "labels": str(labels_csv.resolve())}
    )
    write_manifest(out, pa.table(cols), meta)
    return len(ids), classes, len(ids) - len(table)


def build_from_folder(folder: Path, out: Path) -> tuple[int, list[str] | None]:
    """Write the manifest of a folder of loose images to ``out``; returns (rows, classes or None)."""
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    top_images = [e for e in entries if (folder / e).is_file() and is_image_name(e)]
    class_dirs = [e for e in entries if (folder / e).is_dir()]
    if top_images and class_dirs:
        raise UserError(
            folder,
            f"mixes {len(top_images)} image(s) at the top with {len(class_dirs)} sub-folder(s)",
            "put every image in a class sub-folder (labeled) or none of them (unlabeled)",
        )
    base = out.resolve().parent
    if class_dirs:
        classes = class_dirs
        ids, labels = [], []
        for k, c in enumerate(classes):
            files = walk_images(folder / c)
            ids.extend(Path(c, f).as_posix() for f in files)
            labels.extend([k] * len(files))
        if not ids:
            raise _no_images(folder, "has class sub-folders but no images in them")
    else:
        classes, ids, labels = None, top_images, None
    if not ids:
        raise _no_images(folder, "holds no images")
    root = folder.resolve()
    paths = [os.path.relpath(root / i, base) for i in ids]
    cols = {"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string())}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int32())
    meta = ManifestMeta(classes=classes, stage="manifest-build", params={"folder": str(root)})
    write_manifest(out, pa.table(cols), meta)
    return len(ids), classes
