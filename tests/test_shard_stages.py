"""Every stage reads shard-backed manifests, and the same images as loose files and as
shards (tar members, image Parquet rows) give the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from datl.manifests import Manifest
from datl.manifests.build import build_manifest
from datl.manifests.export import write_tar_shards

from helpers import cli, hf_parquet, loose_bytes

FAST = ["--batch-size", "32", "--workers", "0", "-q", "--device", "cpu"]


@pytest.fixture(scope="module")
def sharded(demo_small, tmp_path_factory) -> dict[str, Path]:
    """The small demo's four manifests, rebuilt from shards: source, target_unlabeled and
    target_test from tar shards, target_train from image Parquet files."""
    root = tmp_path_factory.mktemp("sharded")
    out = {}
    for name in ("source", "target_unlabeled", "target_test"):
        write_tar_shards(Manifest(demo_small / f"{name}.parquet"), root / name, per_shard=400, prefix=name)
        build_manifest(root / name, root / f"{name}.parquet")
        out[name] = root / f"{name}.parquet"
    m = Manifest(demo_small / "target_train.parquet")
    (root / "train").mkdir()
    data = loose_bytes(m)
    labels = m.read(["label"]).column(0).to_pylist()
    hf_parquet(root / "train" / "a.parquet", data[:20], labels[:20], m.classes)
    hf_parquet(root / "train" / "b.parquet", data[20:], labels[20:], m.classes)
    build_manifest(root / "train", root / "target_train.parquet")
    out["target_train"] = root / "target_train.parquet"
    return out


@pytest.fixture(scope="module")
def runs(demo_small, sharded, tmp_path_factory) -> dict[str, Path]:
    """pretrain 3 steps on the loose source and on its tar shards."""
    tmp = tmp_path_factory.mktemp("runs")
    out = {}
    for kind, manifest in (("loose", demo_small / "source.parquet"), ("shards", sharded["source"])):
        res = cli(
            "pretrain", "-m", str(manifest), "--model", "test_resnet", "--out", str(tmp / kind), "--steps", "3", *FAST
        )
        assert res.returncode == 0, res.stderr
        out[kind] = tmp / kind
    return out


@pytest.mark.slow
def test_pretrain_on_shards_gives_the_weights_of_pretrain_on_files(runs):
    a, b = load_file(str(runs["loose"] / "model.safetensors")), load_file(str(runs["shards"] / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.mark.slow
def test_estimate_and_finetune_read_shards_alike(demo_small, sharded, runs, tmp_path):
    priors = []
    for kind, target in (("loose", demo_small / "target_unlabeled.parquet"), ("shards", sharded["target_unlabeled"])):
        res = cli(
            "curate",
            "estimate",
            "--model",
            str(runs["loose"]),
            "--target",
            str(target),
            "--out",
            str(tmp_path / f"{kind}.parquet"),
            "--workers",
            "0",
            "-q",
            "--device",
            "cpu",
        )
        assert res.returncode == 0, res.stderr
        priors.append(pq.read_table(tmp_path / f"{kind}.parquet").column("p_target").to_numpy())
    assert np.array_equal(*priors)

    accs = []
    for kind, train, test in (
        ("loose", demo_small / "target_train.parquet", demo_small / "target_test.parquet"),
        ("shards", sharded["target_train"], sharded["target_test"]),
    ):
        res = cli(
            "finetune",
            "-c",
            str(runs["loose"]),
            "--train",
            str(train),
            "--test",
            str(test),
            "--out",
            str(tmp_path / f"ft-{kind}"),
            "--steps",
            "3",
            *FAST,
        )
        assert res.returncode == 0, res.stderr
        accs.append(json.loads((tmp_path / f"ft-{kind}" / "metrics.json").read_text()))
    assert accs[0]["test_accuracy"] == accs[1]["test_accuracy"] and accs[0]["n_test"] == accs[1]["n_test"] == 30
    assert accs[0]["per_class_accuracy"] == accs[1]["per_class_accuracy"]


@pytest.mark.slow
def test_dedup_and_sample_over_shards(demo_small, sharded, runs, tmp_path):
    """Dedup flags the same source rows; the sample draws the same rows and keeps the shard
    addressing, so it points into the original shards from wherever it is written."""
    found = []
    for kind, source in (("loose", demo_small / "source.parquet"), ("shards", sharded["source"])):
        out = tmp_path / kind / "d.parquet"
        res = cli(
            "curate",
            "dedup",
            "--source",
            str(source),
            "--target",
            str(demo_small / "target_unlabeled.parquet"),
            "--model",
            str(runs["loose"]),
            "--out",
            str(out),
            "--threshold",
            "0.9",
            "--pixel-threshold",
            "0.9",
            "--workers",
            "0",
            "-q",
            "--device",
            "cpu",
        )
        assert res.returncode == 0, res.stderr
        ids = Manifest(source).read(["id"]).column(0).to_pylist()
        row = {i: r for r, i in enumerate(ids)}
        t = pq.read_table(out)
        found.append(
            sorted(
                (row[i], tid, m)
                for i, tid, m in zip(
                    t.column("id").to_pylist(), t.column("target_id").to_pylist(), t.column("match").to_pylist()
                )
            )
        )
    assert found[0] == found[1] and len(found[0]) >= 1

    draws = []
    for kind, source in (("loose", demo_small / "source.parquet"), ("shards", sharded["source"])):
        out = tmp_path / "elsewhere" / kind / "sample.parquet"
        res = cli(
            "curate",
            "sample",
            "--source",
            str(source),
            "--uniform",
            "--size",
            "300",
            "--out",
            str(out),
            "--exclude",
            str(tmp_path / kind / "d.parquet"),
            "--seed",
            "3",
        )
        assert res.returncode == 0, res.stderr
        assert cli("datl", "manifest", "validate", str(out), "-q").returncode == 0  # every image still reads
        s = Manifest(out)
        draws.append(s.read(["label", "draw"]).to_pydict())
        if kind == "shards":
            assert s.address_columns == ["offset", "size"]
    assert draws[0] == draws[1]
