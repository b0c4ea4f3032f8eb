"""The bundled demo data: real images, right shape, deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from datl.demo import MANIFESTS, build_demo, glyph_fonts
from datl.manifests import Manifest

from helpers import cli


def _content(folder):
    """Every manifest's rows and params, and every image's bytes (not the creation time)."""
    out = {}
    for name in MANIFESTS:
        m = Manifest(folder / f"{name}.parquet")
        t = m.read()
        out[name] = (t.to_pydict(), m.classes, m.meta.params)
        out[name + ":images"] = [(folder / p).read_bytes() for p in t.column("path").to_pylist()]
    return out


@pytest.mark.slow
def test_same_seed_same_data_other_seed_other_glyphs(tmp_path, demo_small):
    build_demo(tmp_path / "again", seed=0, fraction=0.05, progress=False)
    a, b = _content(demo_small), _content(tmp_path / "again")
    assert a == b
    build_demo(tmp_path / "seed1", seed=1, fraction=0.05, progress=False)
    c = _content(tmp_path / "seed1")
    assert c["source"][0]["id"] != a["source"][0]["id"] or c["source:images"] != a["source:images"]


def test_demo_shape_and_splits(demo_small):
    src = Manifest(demo_small / "source.parquet")
    assert len(src.classes) == 82 and src.classes[0] == "mnist/0" and "animal/cat" in src.classes
    assert "glyph/A" in src.classes and "glyph/a" in src.classes
    counts, _ = src.label_counts()
    assert (counts > 0).all()
    m = {n: Manifest(demo_small / f"{n}.parquet") for n in MANIFESTS}
    ids = {n: set(x.read(["id"]).column("id").to_pylist()) for n, x in m.items()}
    # the source: a calibration split held out from the classifier's training split, together the pool
    assert ids["source_train"].isdisjoint(ids["source_calibration"])
    assert ids["source_train"] | ids["source_calibration"] == ids["source"]
    assert m["source_calibration"].classes == src.classes and (m["source_calibration"].label_counts()[0] > 0).all()
    # the target: train, val and test labeled and disjoint; the unlabeled pool is everything but test
    assert not m["target_unlabeled"].has_labels and not m["target_all"].has_labels
    assert (
        m["target_train"].classes == m["target_val"].classes == m["target_test"].classes == [str(d) for d in range(10)]
    )
    train, val, test = ids["target_train"], ids["target_val"], ids["target_test"]
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert ids["target_unlabeled"] == ids["target_all"] - test and train | val <= ids["target_unlabeled"]
    assert test and len(ids["target_unlabeled"]) > len(train | val)  # a pool beyond the labeled images
    for n in ("target_train", "target_val", "target_test"):
        assert (m[n].label_counts()[0] > 0).all(), n


@pytest.mark.slow
def test_full_demo_sizes(tmp_path):
    """The real thing, as `make demo` builds it (15 s)."""
    res = cli("datl", "demo-data", "--out", str(tmp_path / "d"), "-q")
    assert res.returncode == 0, res.stderr
    assert "built" in res.stdout
    src = Manifest(tmp_path / "d" / "source.parquet")
    counts, _ = src.label_counts()
    fam = np.array([c.split("/")[0] for c in src.classes])
    assert counts[fam == "mnist"].tolist() == [500] * 10
    assert counts[fam == "animal"].tolist() == [1000] * 10
    assert (fam == "glyph").sum() == 62 and 9_900 <= counts[fam == "glyph"].sum() <= 10_100
    assert len(glyph_fonts()) >= 10
    assert Manifest(tmp_path / "d" / "target_all.parquet").num_rows == 1797
    for name in ("target_train", "target_val"):
        assert Manifest(tmp_path / "d" / f"{name}.parquet").label_counts()[0].tolist() == [10] * 10
    assert Manifest(tmp_path / "d" / "target_test.parquet").num_rows == 801  # half of each class's rest, rounded up
    assert Manifest(tmp_path / "d" / "target_unlabeled.parquet").num_rows == 1797 - 801
    assert Manifest(tmp_path / "d" / "source_calibration.parquet").num_rows == 2006  # 8% of each class
    img = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "d" / src.read(["path"]).column("path")[0].as_py())
    )
    assert img.shape == (28, 28) and img.dtype == np.uint8
    # a second run is a no-op: nothing rewritten
    mtime = (tmp_path / "d" / "source.parquet").stat().st_mtime_ns
    res = cli("datl", "demo-data", "--out", str(tmp_path / "d"), "-q")
    assert "up to date" in res.stdout
    assert (tmp_path / "d" / "source.parquet").stat().st_mtime_ns == mtime
    assert isinstance(src.read(), pa.Table)
