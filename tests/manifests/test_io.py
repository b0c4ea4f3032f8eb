"""Manifest IO: round trip with metadata, streamed column reads, atomic writes."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datl.core.files import atomic_output
from datl.manifests import Manifest, ManifestError, ManifestMeta, write_manifest


def _table(n=10):
    return pa.table(
        {
            "id": pa.array([f"id{i}" for i in range(n)]),
            "path": pa.array([f"img/{i}.png" for i in range(n)]),
            "label": pa.array([i % 3 for i in range(n)], pa.int64()),  # stored as int32
            "domain": pa.array(["web"] * n),
        }
    )


def test_round_trip_keeps_rows_metadata_and_extra_columns(tmp_path):
    meta = ManifestMeta(classes=["a", "b", "c"], stage="test", params={"k": 1}, inputs={"src": "abc"})
    write_manifest(tmp_path / "m.parquet", _table(), meta)
    m = Manifest(tmp_path / "m.parquet")
    assert m.num_rows == 10
    assert m.classes == ["a", "b", "c"]
    assert (m.meta.stage, m.meta.params, m.meta.inputs) == ("test", {"k": 1}, {"src": "abc"})
    assert m.meta.version and m.meta.created
    t = m.read()
    assert t.schema.field("label").type == pa.int32()
    assert t.column("domain").to_pylist() == ["web"] * 10
    assert t.column("label").to_pylist() == [i % 3 for i in range(10)]
    raw = json.loads(pq.read_schema(tmp_path / "m.parquet").metadata[b"datl"])
    assert set(raw) >= {"classes", "stage", "params", "inputs", "version", "created"}


def test_iter_batches_reads_only_asked_columns_in_batches(tmp_path):
    write_manifest(tmp_path / "m.parquet", _table(1000), ManifestMeta(classes=["a", "b", "c"]))
    m = Manifest(tmp_path / "m.parquet")
    batches = list(m.iter_batches(["label"], batch_size=128))
    assert len(batches) == 8
    assert all(b.schema.names == ["label"] for b in batches)
    counts, n_null = m.label_counts(batch_size=100)
    assert counts.tolist() == [334, 333, 333] and n_null == 0
    with pytest.raises(ManifestError, match="no column 'nope'"):
        list(m.iter_batches(["nope"]))


def test_paths_resolve_relative_to_the_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    write_manifest(tmp_path / "sub" / "m.parquet", _table(2), ManifestMeta(classes=["a", "b", "c"]))
    m = Manifest(tmp_path / "sub" / "m.parquet")
    assert m.resolve("img/0.png") == str(tmp_path / "sub" / "img/0.png")
    assert m.resolve("/abs/x.png") == "/abs/x.png"


def _interrupted(n_ok):
    t = _table(100)
    for i, b in enumerate(t.to_batches(max_chunksize=10)):
        if i == n_ok:
            raise KeyboardInterrupt
        yield b


def test_interrupted_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_manifest(tmp_path / "m.parquet", _interrupted(3), ManifestMeta(classes=["a", "b", "c"]))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path):
    write_manifest(tmp_path / "m.parquet", _table(5), ManifestMeta(classes=["a", "b", "c"], stage="old"))
    with pytest.raises(KeyboardInterrupt):
        write_manifest(tmp_path / "m.parquet", _interrupted(2), ManifestMeta(classes=["a", "b", "c"], stage="new"))
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]
    m = Manifest(tmp_path / "m.parquet")
    assert m.meta.stage == "old" and m.num_rows == 5


def test_atomic_output_renames_only_on_success(tmp_path):
    with atomic_output(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
        assert not (tmp_path / "x.json").exists()
    assert (tmp_path / "x.json").read_text() == "{}"
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "y.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize(
    "table, meta, message",
    [
        (pa.table({"path": ["a"]}), ManifestMeta(), "missing required column 'id'"),
        (pa.table({"id": ["a"], "path": [1]}), ManifestMeta(), "column 'path' has type int64, expected string"),
        (
            pa.table({"id": ["a"], "path": ["p"], "label": [0.5]}),
            ManifestMeta(classes=["x"]),
            "column 'label' has type double, expected int32",
        ),
        (pa.table({"id": ["a"], "path": ["p"], "label": [0]}), ManifestMeta(), "no class names"),
        (pa.table({"id": ["a"], "path": ["p"], "label": [0]}), ManifestMeta(classes=["x", "x"]), "not unique"),
    ],
)
def test_schema_violations_are_one_line_errors_and_write_nothing(tmp_path, table, meta, message):
    with pytest.raises(ManifestError, match=message) as err:
        write_manifest(tmp_path / "m.parquet", table, meta)
    assert "\n" not in str(err.value) and "m.parquet" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_foreign_parquet_without_datl_metadata_is_rejected_when_labeled(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "path": ["p"], "label": pa.array([0], pa.int32())}), tmp_path / "f.parquet")
    with pytest.raises(ManifestError, match="no class names"):
        Manifest(tmp_path / "f.parquet")
    pq.write_table(pa.table({"id": ["a"], "path": ["p"]}), tmp_path / "u.parquet")
    assert not Manifest(tmp_path / "u.parquet").has_labels  # unlabeled: no metadata needed


def test_label_out_of_range_is_caught(tmp_path):
    write_manifest(
        tmp_path / "m.parquet",
        pa.table({"id": ["a", "b"], "path": ["p", "q"], "label": [0, 5]}),
        ManifestMeta(classes=["x", "y"]),
    )
    with pytest.raises(ManifestError, match=r"label 5 of row id .b. \(row 1\) is out of range for its 2 classes"):
        Manifest(tmp_path / "m.parquet").label_counts()


def test_source_date_epoch_makes_writes_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for name in ("a.parquet", "b.parquet"):
        write_manifest(tmp_path / name, _table(), ManifestMeta(classes=["a", "b", "c"], stage="s"))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert Manifest(tmp_path / "a.parquet").meta.created.startswith("2023-11-14")
