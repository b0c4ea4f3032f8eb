"""Multi-label manifests (a ``labels`` list column): built from loose files with a CSV, from
WebDataset shards (.cls with several indexes, .json "labels") and from HuggingFace image
Parquet (Sequence(ClassLabel)); validated, shown, and refused where a stage takes one label."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datl.manifests import Manifest, ManifestMeta, write_manifest
from datl.manifests.export import write_tar_shards
from datl.manifests.reading import read_bytes

from helpers import assert_user_error, cli, write_pngs

NAMES = ["bird", "cat", "dog"]


def sets_of(path: Path) -> list[list[int]]:
    return Manifest(path).read(["labels"]).column(0).to_pylist()


def multi_manifest(path: Path, sets: list, classes=NAMES, extra: dict | None = None) -> Path:
    n = len(sets)
    cols = {"id": [f"i{k}" for k in range(n)], "path": ["x.png"] * n, "labels": pa.array(sets, pa.list_(pa.int32()))}
    write_manifest(path, pa.table({**cols, **(extra or {})}), ManifestMeta(classes=classes))
    return path


def test_loose_files_with_a_label_csv(tmp_path):
    write_pngs(tmp_path / "imgs" / "a", 3)
    write_pngs(tmp_path / "imgs" / "b", 2, seed=1)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,labels\na/img000.png,dog|cat\na/img001.png,bird\nb/img000.png,cat|bird|dog\nb/img001.png,cat\n"
    )
    out = tmp_path / "m.parquet"
    res = cli("datl", "manifest", "build", str(tmp_path / "imgs"), "--out", str(out), "--labels", str(csv))
    assert res.returncode == 0, res.stderr
    assert "3 classes, multi-label" in res.stdout and "1 of 5 image(s) have no line" in res.stderr
    m = Manifest(out)
    assert m.multi_label and m.classes == NAMES and m.has_labels
    assert m.read(["id"]).column(0).to_pylist() == [
        "a/img000.png", "a/img001.png", "a/img002.png", "b/img000.png", "b/img001.png"
    ]  # fmt: skip
    assert sets_of(out) == [[1, 2], [0], [], [0, 1, 2], [1]]
    counts, n_empty, sizes = m.label_set_counts()
    assert counts.tolist() == [2, 3, 2] and n_empty == 1 and sizes.tolist() == [1, 2, 1, 1]

    res = cli("datl", "manifest", "validate", str(out), "-q")
    assert res.returncode == 0 and "multi-label (7 label occurrences)" in res.stdout, res
    shown = cli("datl", "manifest", "show", str(out)).stdout
    assert "1.75 a labeled image" in shown and "labels per image" in shown and "3 labels" in shown
    assert [ln.split()[:2] for ln in shown.splitlines() if ln.strip().startswith("cat ")] == [["cat", "3"]]

    # a line naming a file that is not there: one line naming the CSV; nothing written
    csv.write_text("a/img000.png,dog\na/nope.png,cat\n")
    res = cli(
        "datl", "manifest", "build", str(tmp_path / "imgs"), "--out", str(tmp_path / "x.parquet"), "--labels", str(csv)
    )
    assert_user_error(res, "labels.csv", "a/nope.png", "not an image")
    csv.write_text("a/img000.png,dog,extra\n")
    res = cli(
        "datl", "manifest", "build", str(tmp_path / "imgs"), "--out", str(tmp_path / "x.parquet"), "--labels", str(csv)
    )
    assert_user_error(res, "labels.csv", "line 1 has 3 field(s)")
    assert not (tmp_path / "x.parquet").exists()


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_cls_with_several_indexes_and_json_label_lists(tmp_path):
    png = [p.read_bytes() for p in write_pngs(tmp_path / "png", 4)]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "classes.txt").write_text("\n".join(NAMES) + "\n")
    _tar(shards / "s-0.tar", {"k0.png": png[0], "k0.cls": b"0 2", "k1.png": png[1], "k1.cls": b"1"})
    _tar(
        shards / "s-1.tar",
        {
            "k2.png": png[2], "k2.json": json.dumps({"labels": ["dog", "cat"], "caption": "x"}).encode(),
            "k3.png": png[3], "k3.cls": b"",
        },
    )  # fmt: skip
    out = tmp_path / "m.parquet"
    res = cli("datl", "manifest", "build", str(shards), "--out", str(out))
    assert res.returncode == 0, res.stderr
    m = Manifest(out)
    assert m.classes == NAMES and sets_of(out) == [[0, 2], [1], [2, 1], []]
    assert [read_bytes(w.address(i)) for _, w in m.iter_addresses() for i in range(len(w))] == png

    # shards written from a multi-label manifest build back to the same label sets
    again = tmp_path / "again"
    write_tar_shards(m, again, per_shard=3)
    res = cli("datl", "manifest", "build", str(again), "--out", str(tmp_path / "again.parquet"))
    assert res.returncode == 0, res.stderr
    assert sets_of(tmp_path / "again.parquet") == [[0, 2], [1], [2, 1], []]

    # the stages read the sets and the images from the shards: a uniform sample, validated with its files
    res = cli(
        "curate", "sample", "--source", str(out), "--uniform", "--size", "6", "--out", str(tmp_path / "s.parquet")
    )
    assert res.returncode == 0, res.stderr
    s = Manifest(tmp_path / "s.parquet")
    assert s.address_columns == ["offset", "size"] and all(x for x in s.read(["labels"]).column(0).to_pylist())
    assert cli("datl", "manifest", "validate", str(tmp_path / "s.parquet"), "-q").returncode == 0

    # a name classes.txt does not have: one line naming the sample
    _tar(shards / "s-2.tar", {"k4.png": png[0], "k4.json": json.dumps({"labels": ["cow"]}).encode()})
    assert_user_error(
        cli("datl", "manifest", "build", str(shards), "--out", str(tmp_path / "x.parquet")), "s-2/k4", "'cow'"
    )
    assert not (tmp_path / "x.parquet").exists()


def test_single_index_cls_shards_stay_single_label(tmp_path):
    png = [p.read_bytes() for p in write_pngs(tmp_path / "png", 2)]
    (tmp_path / "sh").mkdir()
    _tar(tmp_path / "sh" / "s.tar", {"a.png": png[0], "a.cls": b"1\n", "b.png": png[1], "b.cls": b"0"})
    assert cli("datl", "manifest", "build", str(tmp_path / "sh"), "--out", str(tmp_path / "m.parquet")).returncode == 0
    m = Manifest(tmp_path / "m.parquet")
    assert not m.multi_label and m.read(["label"]).column(0).to_pylist() == [1, 0] and m.classes == ["0", "1"]


def test_image_parquet_with_a_sequence_of_classlabel(tmp_path):
    png = [p.read_bytes() for p in write_pngs(tmp_path / "png", 3)]
    hf = {
        "info": {
            "features": {
                "image": {"_type": "Image"},
                "labels": {"feature": {"names": NAMES, "_type": "ClassLabel"}, "_type": "Sequence"},
            }
        }
    }
    t = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(png)]),
            "labels": pa.array([[2, 0], [], [1]], pa.list_(pa.int64())),
        }
    ).replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})
    (tmp_path / "hf").mkdir()
    pq.write_table(t, tmp_path / "hf" / "train.parquet")
    out = tmp_path / "m.parquet"
    res = cli("datl", "manifest", "build", str(tmp_path / "hf"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert Manifest(out).classes == NAMES and sets_of(out) == [[2, 0], [], [1]]

    bad = t.set_column(1, "labels", pa.array([[2, 3], [], [1]], pa.list_(pa.int64())))
    pq.write_table(bad, tmp_path / "hf" / "train.parquet")
    assert_user_error(
        cli("datl", "manifest", "build", str(tmp_path / "hf"), "--out", str(tmp_path / "x.parquet")),
        "train.parquet",
        "row 0",
        "label 3, out of range",
    )


@pytest.mark.parametrize(
    "sets, extra, fragments",
    [
        ([[0], [1, 3]], None, ("row 1 (id 'i1')", "label 3, out of range for its 3 classes")),
        ([[0], [2, 2]], None, ("row 1", "lists label 2 twice")),
        ([[0, None], [1]], None, ("row 0", "null label")),
        ([[0], [1]], {"label": pa.array([0, 1], pa.int32())}, ("both a 'label' and a 'labels' column",)),
    ],
)
def test_bad_label_sets_are_one_line_naming_the_first_bad_row(tmp_path, sets, extra, fragments):
    n = len(sets)
    cols = {"id": [f"i{k}" for k in range(n)], "path": ["x.png"] * n, "labels": pa.array(sets, pa.list_(pa.int32()))}
    meta = ManifestMeta(classes=NAMES).to_json()
    t = pa.table({**cols, **(extra or {})}).replace_schema_metadata({b"datl": meta})
    pq.write_table(t, tmp_path / "m.parquet")
    assert_user_error(cli("datl", "manifest", "validate", "--no-files", str(tmp_path / "m.parquet")), *fragments)


def test_a_labels_column_that_is_not_a_list_is_refused(tmp_path):
    t = pa.table({"id": ["a"], "path": ["x.png"], "labels": ["cat|dog"]})
    pq.write_table(t.replace_schema_metadata({b"datl": ManifestMeta(classes=NAMES).to_json()}), tmp_path / "m.parquet")
    assert_user_error(
        cli("datl", "manifest", "show", str(tmp_path / "m.parquet")), "column 'labels' has type string", "list<int32>"
    )


def test_counts_stream_in_batches_the_same_as_at_once(tmp_path):
    rng = np.random.default_rng(0)
    sets = [sorted(rng.choice(3, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(1000)]
    m = Manifest(multi_manifest(tmp_path / "m.parquet", sets))
    whole, small = m.label_set_counts(), m.label_set_counts(batch_size=7)
    assert all(np.array_equal(a, b) for a, b in zip(whole, small))
    assert whole[0].tolist() == np.bincount([v for s in sets for v in s], minlength=3).tolist()
    assert whole[2].tolist() == np.bincount([len(s) for s in sets]).tolist()


def test_a_single_label_stage_refuses_a_multi_label_manifest(tmp_path):
    write_pngs(tmp_path / "imgs", 4)
    (tmp_path / "l.csv").write_text("img000.png,cat|dog\nimg001.png,bird\nimg002.png,cat\nimg003.png,dog\n")
    out = tmp_path / "m.parquet"
    assert (
        cli(
            "datl", "manifest", "build", str(tmp_path / "imgs"), "-o", str(out), "--labels", str(tmp_path / "l.csv")
        ).returncode
        == 0
    )
    res = cli(
        "finetune",
        "--checkpoint",
        "timm:test_resnet",
        "--train",
        str(out),
        "--test",
        str(out),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "ft"),
    )
    assert_user_error(res, "m.parquet", "multi-label", "one 'label' an image")
    assert not (tmp_path / "ft").exists()


def test_dedup_reads_a_multi_label_source(tmp_path):
    """Stages that read only images take a multi-label source as it is."""
    paths = write_pngs(tmp_path / "imgs", 6, size=24, mode="RGB")
    (tmp_path / "l.csv").write_text(
        "".join(f"{p.name},{NAMES[i % 3]}|{NAMES[(i + 1) % 3]}\n" for i, p in enumerate(paths))
    )
    src, tgt = tmp_path / "src.parquet", tmp_path / "tgt.parquet"
    assert (
        cli(
            "datl", "manifest", "build", str(tmp_path / "imgs"), "-o", str(src), "--labels", str(tmp_path / "l.csv")
        ).returncode
        == 0
    )
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "copy.png").write_bytes(paths[2].read_bytes())
    assert cli("datl", "manifest", "build", str(tmp_path / "t"), "-o", str(tgt)).returncode == 0
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(src),
        "--target",
        str(tgt),
        "--no-feature",
        "--out",
        str(tmp_path / "d.parquet"),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    dups = pq.read_table(tmp_path / "d.parquet")
    assert dups.column("id").to_pylist() == ["img002.png"] and dups.column("target_id").to_pylist() == ["copy.png"]
