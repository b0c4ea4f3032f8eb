"""Shard-backed manifests: WebDataset tar shards and image Parquet files (HuggingFace layout),
built, validated and read like loose files; bad shards counted, not fatal."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datl.manifests import Manifest
from datl.manifests.address import Address
from datl.manifests.build import build_manifest
from datl.manifests.export import write_tar_shards
from datl.manifests.reading import read_bytes
from datl.neural.data import ImageDataset

from helpers import assert_user_error, cli, hf_parquet, loose_bytes


@pytest.fixture(scope="module")
def tar_source(demo_small, tmp_path_factory) -> Path:
    """The demo source as 3 tar shards of at most 500 samples, and its manifest."""
    folder = tmp_path_factory.mktemp("tars")
    write_tar_shards(Manifest(demo_small / "source.parquet"), folder / "shards", per_shard=500, prefix="src")
    build_manifest(folder / "shards", folder / "source_shards.parquet")
    return folder / "source_shards.parquet"


def test_tar_shards_build_to_the_same_images_labels_and_classes(demo_small, tar_source):
    loose, shards = Manifest(demo_small / "source.parquet"), Manifest(tar_source)
    assert shards.classes == loose.classes and shards.num_rows == loose.num_rows == 1246
    assert shards.address_columns == ["offset", "size"]
    assert shards.read(["label"]).column(0).to_pylist() == loose.read(["label"]).column(0).to_pylist()
    assert len({p for p in shards.read(["path"]).column(0).to_pylist()}) == 3  # 500 + 500 + 246
    got = [read_bytes(w.address(i)) for _, w in shards.iter_addresses(300) for i in range(len(w))]
    assert got == loose_bytes(loose)
    ids = shards.read(["id"]).column(0).to_pylist()
    assert ids[0].startswith("src-000000/") and len(set(ids)) == len(ids)


def test_the_dataset_gives_the_same_tensors_from_shards_as_from_files(demo_small, tar_source):
    a, b = ImageDataset(demo_small / "source.parquet", mode="RGB"), ImageDataset(tar_source, mode="RGB")
    for i in (0, 499, 500, 1245):
        assert b[i].error is None and np.array_equal(a[i].image.numpy(), b[i].image.numpy())
        assert a[i].label == b[i].label


def test_image_parquet_files_build_with_classlabel_names(demo_small, tmp_path):
    m = Manifest(demo_small / "target_test.parquet")
    data, labels = loose_bytes(m), m.read(["label"]).column(0).to_pylist()
    folder = tmp_path / "hf"
    folder.mkdir()
    hf_parquet(folder / "train-00000.parquet", data[:30], labels[:30], m.classes)
    hf_parquet(folder / "train-00001.parquet", data[30:], labels[30:], m.classes)
    res = cli("datl", "manifest", "build", str(folder), "--out", str(tmp_path / "hf.parquet"))
    assert res.returncode == 0, res.stderr
    built = Manifest(tmp_path / "hf.parquet")
    assert built.classes == m.classes and built.read(["label"]).column(0).to_pylist() == labels
    assert built.address_columns == ["row", "image_column"]
    got = [read_bytes(w.address(i)) for _, w in built.iter_addresses(16) for i in range(len(w))]
    assert got == data
    assert cli("datl", "manifest", "validate", str(tmp_path / "hf.parquet"), "-q").returncode == 0

    # a plain binary column named otherwise, chosen with --image-column
    (tmp_path / "bin").mkdir()
    t = pa.table({"jpg": pa.array(data[:5], pa.binary())})
    pq.write_table(t, tmp_path / "bin" / "part.parquet")
    res = cli(
        "datl",
        "manifest",
        "build",
        str(tmp_path / "bin"),
        "--out",
        str(tmp_path / "bin.parquet"),
        "--image-column",
        "jpg",
    )
    assert res.returncode == 0, res.stderr
    assert [read_bytes(Address(str(tmp_path / "bin" / "part.parquet"), row=i, column="jpg")) for i in range(5)] == data[
        :5
    ]
    assert not Manifest(tmp_path / "bin.parquet").has_labels
    # ... and without it: one line naming the file and the columns it has
    assert_user_error(
        cli("datl", "manifest", "build", str(tmp_path / "bin"), "--out", str(tmp_path / "x.parquet")),
        "part.parquet",
        "no image column 'image'",
        "jpg",
        "--image-column",
    )
    assert not (tmp_path / "x.parquet").exists()


def test_bad_shards_are_counted_not_fatal(demo_small, tar_source, tmp_path):
    """A truncated shard, a missing shard and a byte range past the end make unreadable
    images (validate lists them, exit 2; the dataset skips them); the rest still read."""
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tar_source.parent / "shards", folder)
    build_manifest(folder, tmp_path / "m.parquet")
    shards = sorted(folder.glob("*.tar"))
    with open(shards[0], "r+b") as f:  # truncate the first shard in its middle
        f.truncate(os.path.getsize(shards[0]) // 2)
    shards[2].unlink()  # the last shard is gone
    ds = ImageDataset(tmp_path / "m.parquet", mode="L")
    bad = [i for i in range(len(ds)) if ds[i].error is not None]
    assert 0 < sum(i < 500 for i in bad) < 500 and all(i in bad for i in range(1000, 1246))
    assert not any(500 <= i < 1000 for i in bad)
    assert "past the end of its shard" in ds[499].error and "src-000002.tar" in ds[1000].error
    res = cli("datl", "manifest", "validate", str(tmp_path / "m.parquet"), "-q")
    assert res.returncode == 2 and f"{len(bad)} of 1,246 image" in res.stderr

    # a corrupt tar and a mixed-label shard folder are build errors: one line, nothing written
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.tar").write_bytes(b"not a tar" * 100)
    assert_user_error(
        cli("datl", "manifest", "build", str(tmp_path / "junk"), "--out", str(tmp_path / "j.parquet")),
        "a.tar",
        "not a readable tar",
    )
    (tmp_path / "mixed").mkdir()
    with tarfile.open(tmp_path / "mixed" / "s.tar", "w") as tf:
        for name, data in (("a.png", png()), ("a.cls", b"0"), ("b.png", png())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert_user_error(
        cli("datl", "manifest", "build", str(tmp_path / "mixed"), "--out", str(tmp_path / "k.parquet")),
        "s.tar",
        "sample 'b' has no labels (.cls",
    )
    assert not (tmp_path / "j.parquet").exists() and not (tmp_path / "k.parquet").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def png(value: int = 7) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_unlabeled_tar_shards_without_classes_txt(tmp_path):
    (tmp_path / "s").mkdir()
    with tarfile.open(tmp_path / "s" / "x.tar", "w") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"dir/k{i}.png")
            data = png(i)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    rows, classes = build_manifest(tmp_path / "s", tmp_path / "u.parquet")
    m = Manifest(tmp_path / "u.parquet")
    assert rows == 3 and classes is None and not m.has_labels
    assert m.read(["id"]).column(0).to_pylist() == ["x/dir/k0", "x/dir/k1", "x/dir/k2"]
    ds = ImageDataset(m, mode="L")
    assert [int(ds[i].image.max() * 255 + 0.5) for i in range(3)] == [0, 1, 2]


def test_malformed_addressing_is_exit_2_and_a_missing_image_column_is_counted(demo_small, tmp_path):
    from datl.manifests import ManifestMeta, write_manifest

    bad = pa.table({"id": ["a"], "path": ["x.tar"], "offset": pa.array([0], pa.int64())})
    pq.write_table(bad.replace_schema_metadata({b"datl": ManifestMeta().to_json()}), tmp_path / "bad.parquet")
    assert_user_error(
        cli("datl", "manifest", "validate", str(tmp_path / "bad.parquet")),
        "bad.parquet",
        "'offset' column but no 'size'",
    )
    hf_parquet(
        tmp_path / "imgs.parquet",
        loose_bytes(Manifest(demo_small / "target_test.parquet"))[:3],
        [0, 1, 2],
        [str(d) for d in range(10)],
    )
    m = write_manifest(
        tmp_path / "m.parquet",
        pa.table(
            {
                "id": ["a", "b"],
                "path": ["imgs.parquet"] * 2,
                "row": pa.array([0, 1], pa.int64()),
                "image_column": ["image", "nope"],
            }
        ),
        ManifestMeta(),
    )
    ds = ImageDataset(m, mode="L")
    assert ds[0].error is None and "no image column 'nope'" in ds[1].error


@pytest.mark.slow
def test_demo_data_shards_cli(tmp_path):
    res = cli("datl", "demo-data", "--out", str(tmp_path / "d"), "--fraction", "0.02", "--shards", "-q")
    assert res.returncode == 0, res.stderr
    loose, shards = Manifest(tmp_path / "d" / "source.parquet"), Manifest(tmp_path / "d" / "source_shards.parquet")
    assert shards.num_rows == loose.num_rows and shards.classes == loose.classes
    assert (tmp_path / "d" / "shards" / "classes.txt").read_text().splitlines() == loose.classes
    assert cli("datl", "manifest", "validate", str(shards.path), "-q").returncode == 0


def test_a_parts_addresses_at_once_equal_them_row_by_row():
    """AddressColumns.addresses() (dedup's fast path) against address(i): loose files, tar
    members, Parquet rows, relative and absolute paths, nulls and a missing path."""
    from datl.manifests.address import AddressColumns

    table = pa.table(
        {
            "path": ["a.png", "/abs/s.tar", "/abs/x.parquet", None, "b/c.jpg"],
            "offset": pa.array([None, 512, None, None, None], pa.int64()),
            "size": pa.array([None, 100, None, None, None], pa.int64()),
            "row": pa.array([None, None, 7, None, None], pa.int64()),
            "image_column": ["", "", "image", "", "image"],
        }
    )
    where = AddressColumns(table, "/data")
    assert where.addresses() == [where.address(i) for i in range(len(where))]
    assert where.addresses()[2] == Address("/abs/x.parquet", -1, -1, 7, "image")
    assert where.addresses()[4] == Address("/data/b/c.jpg")
    plain = AddressColumns(pa.table({"path": ["a.png", "b.png"]}), "/d")  # no addressing columns
    assert plain.addresses() == [Address("/d/a.png"), Address("/d/b.png")]
