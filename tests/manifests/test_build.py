"""`datl manifest build|show|validate` through the real CLI, on real PNG folders."""

from __future__ import annotations

import pyarrow as pa
import pytest

from datl.manifests import Manifest, ManifestMeta, write_manifest

from helpers import assert_user_error, cli, tiny_manifest, write_pngs


def test_build_labeled_folder_sorted_classes_stable_ids(tmp_path):
    for c, n in (("zebra", 2), ("cat", 3), ("dog", 1)):
        write_pngs(tmp_path / "data" / c, n)
    write_pngs(tmp_path / "data" / "dog" / "puppies", 1, seed=3)  # nested: still class 'dog'
    (tmp_path / "data" / "cat" / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "m.parquet"
    res = cli("datl", "manifest", "build", str(tmp_path / "data"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    m = Manifest(out)
    assert m.classes == ["cat", "dog", "zebra"]
    t = m.read()
    assert t.column("id").to_pylist() == [
        "cat/img000.png",
        "cat/img001.png",
        "cat/img002.png",
        "dog/img000.png",
        "dog/puppies/img000.png",
        "zebra/img000.png",
        "zebra/img001.png",
    ]
    assert t.column("label").to_pylist() == [0, 0, 0, 1, 1, 2, 2]
    assert all((out.parent / p).exists() for p in t.column("path").to_pylist())  # relative to manifest
    res2 = cli("datl", "manifest", "build", str(tmp_path / "data"), "--out", str(tmp_path / "again.parquet"))
    assert res2.returncode == 0
    assert Manifest(tmp_path / "again.parquet").read(["id"]).equals(m.read(["id"]))


def test_build_flat_folder_is_unlabeled(tmp_path):
    write_pngs(tmp_path / "flat", 4)
    res = cli("datl", "manifest", "build", str(tmp_path / "flat"), "--out", str(tmp_path / "u.parquet"))
    assert res.returncode == 0 and "unlabeled" in res.stdout
    m = Manifest(tmp_path / "u.parquet")
    assert not m.has_labels and m.num_rows == 4


def test_build_bad_input_exit_2_one_line_no_output(tmp_path):
    out = tmp_path / "m.parquet"
    assert_user_error(
        cli("datl", "manifest", "build", str(tmp_path / "nope"), "--out", str(out)), "nope", "does not exist"
    )
    (tmp_path / "empty").mkdir()
    assert_user_error(
        cli("datl", "manifest", "build", str(tmp_path / "empty"), "--out", str(out)), "empty", "holds no images"
    )
    write_pngs(tmp_path / "mixed", 1)
    write_pngs(tmp_path / "mixed" / "cls", 1)
    assert_user_error(cli("datl", "manifest", "build", str(tmp_path / "mixed"), "--out", str(out)), "mixes")
    assert_user_error(cli("datl", "manifest", "build", str(tmp_path / "mixed")), "--out")
    assert not out.exists()


def test_show_prints_counts_and_histogram(tmp_path):
    write_pngs(tmp_path / "img", 3)
    m = tiny_manifest(tmp_path / "m.parquet", [f"img/img00{i}.png" for i in range(3)], [0, 0, 1], ["big", "small"])
    res = cli("datl", "manifest", "show", str(m))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "  rows     3" in lines
    big = next(line for line in lines if "big" in line)
    small = next(line for line in lines if "small" in line)
    assert "2" in big and "66.7%" in big and big.count("█") == 40
    assert "33.3%" in small and small.count("█") == 20


@pytest.mark.slow
def test_validate_ok_and_each_failure(tmp_path):
    paths = write_pngs(tmp_path / "img", 3)
    rel = [f"img/{p.name}" for p in paths]
    good = tiny_manifest(tmp_path / "good.parquet", rel, [0, 1, 0], ["a", "b"])
    res = cli("datl", "manifest", "validate", str(good), "-q")
    assert res.returncode == 0 and "3 images checked" in res.stdout

    dup = tiny_manifest(tmp_path / "dup.parquet", rel, [0, 1, 0], ["a", "b"], ids=["x", "y", "x"])
    assert_user_error(cli("datl", "manifest", "validate", str(dup), "-q"), "dup.parquet", "1 duplicate id", "'x'")

    # a with-replacement sample may repeat ids
    rep = tiny_manifest(
        tmp_path / "rep.parquet",
        rel,
        [0, 1, 0],
        ["a", "b"],
        ids=["x", "y", "x"],
        stage="sample",
        params={"replacement": True},
    )
    assert cli("datl", "manifest", "validate", str(rep), "-q").returncode == 0

    oob = tmp_path / "oob.parquet"
    write_manifest(
        oob, pa.table({"id": ["a", "b"], "path": rel[:2], "label": [0, 7]}), ManifestMeta(classes=["a", "b"])
    )
    assert_user_error(
        cli("datl", "manifest", "validate", str(oob), "-q"),
        "oob.parquet",
        "label 7 of row id 'b' (row 1) is out of range",
    )

    paths[1].write_bytes(paths[1].read_bytes()[:40])
    res = cli("datl", "manifest", "validate", str(good), "-q")
    assert res.returncode == 2 and "1 of 3 image file(s)" in res.stderr and "img001.png" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    (tmp_path / "junk.parquet").write_text("not parquet")
    assert_user_error(
        cli("datl", "manifest", "show", str(tmp_path / "junk.parquet")), "junk.parquet", "not a readable Parquet file"
    )
    assert_user_error(cli("datl", "manifest", "validate", str(tmp_path / "absent.parquet")), "does not exist")
