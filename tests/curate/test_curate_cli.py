"""curate estimate | weight | sample through the real CLI, with a real tiny classifier on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datl.manifests import Manifest, ManifestMeta, write_manifest

from helpers import assert_user_error, cli, subset_manifest


@pytest.fixture(scope="module")
def classifier(demo_small, tmp_path_factory) -> tuple[Path, Path]:
    """test_resnet trained on MNIST digits + animal silhouettes (20 classes) from the demo source."""
    tmp = tmp_path_factory.mktemp("clf")
    src = subset_manifest(demo_small / "source.parquet", tmp / "src.parquet", ("mnist", "animal"))
    res = cli(
        "pretrain",
        "-m",
        str(src),
        "--model",
        "test_resnet",
        "--out",
        str(tmp / "run"),
        "--steps",
        "60",
        "--lr",
        "0.05",
        "--batch-size",
        "32",
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    return tmp / "run", src


def _prior(path):
    t = pq.read_table(path)
    return t.column("class_name").to_pylist(), t.column("p_target").to_numpy()


@pytest.mark.slow
def test_estimate_on_real_target_digits_puts_mass_on_digit_classes(classifier, demo_small, tmp_path):
    run, src = classifier
    target = demo_small / "target_unlabeled.parquet"
    res = cli(
        "curate",
        "estimate",
        "--model",
        str(run),
        "--target",
        str(target),
        "--out",
        str(tmp_path / "p.parquet"),
        "--save-predictions",
        str(tmp_path / "preds.parquet"),
        "--calibration",
        str(src),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    names, p = _prior(tmp_path / "p.parquet")
    assert p.sum() == pytest.approx(1.0)
    digit = np.array([n.startswith("mnist/") for n in names])
    # 10 of the 20 classes are digits: uniform would give them 0.5. The paper's estimator at
    # T=2 on a 60-step model is flat (measured 0.58); EM and BBSE concentrate (0.98, 0.86).
    assert 0.5 < p[digit].sum(), dict(zip(names, p.round(3)))
    # re-estimate from saved predictions, no model: mean at T=2 reproduces the file exactly
    res = cli(
        "curate", "estimate", "--predictions", str(tmp_path / "preds.parquet"), "--out", str(tmp_path / "p2.parquet")
    )
    assert res.returncode == 0, res.stderr
    assert np.allclose(_prior(tmp_path / "p2.parquet")[1], p, atol=1e-6)
    share = {}
    for method in ("mean", "em", "bbse", "em-bcts"):
        res = cli(
            "curate",
            "estimate",
            "--predictions",
            str(tmp_path / "preds.parquet"),
            "--method",
            method,
            "--source",
            str(src),
            "--temperature",
            "1",
            "--out",
            str(tmp_path / f"{method}.parquet"),
        )
        assert res.returncode == 0, (method, res.stderr)
        q = _prior(tmp_path / f"{method}.parquet")[1]
        assert q.sum() == pytest.approx(1.0)
        share[method] = q[digit].sum()
    assert share["mean"] > p[digit].sum()  # T=2 flattens toward uniform
    assert share["em"] > 0.85 and share["bbse"] > 0.7, share


@pytest.mark.slow
def test_weight_and_sample_end_to_end(classifier, demo_small, tmp_path):
    run, src = classifier
    prior = tmp_path / "p.parquet"
    assert (
        cli(
            "curate",
            "estimate",
            "--model",
            str(run),
            "--target",
            str(demo_small / "target_unlabeled.parquet"),
            "--out",
            str(prior),
            "-q",
        ).returncode
        == 0
    )
    res = cli("curate", "weight", "--source", str(src), "--prior", str(prior), "--out", str(tmp_path / "w.parquet"))
    assert res.returncode == 0, res.stderr
    w = pq.read_table(tmp_path / "w.parquet")
    assert w.column_names == ["label", "class_name", "n_source", "p_source", "p_target", "weight", "w_low", "w_high"]
    counts, _ = Manifest(src).label_counts()
    assert w.column("n_source").to_pylist() == counts.tolist()
    ws = w.column("weight").to_numpy()
    assert np.allclose(ws, w.column("p_target").to_numpy() / (counts / counts.sum()))
    png = Image.open(tmp_path / "w.png")
    assert png.size[0] >= 1200 and png.size[1] >= 800
    res = cli(
        "curate",
        "sample",
        "--source",
        str(src),
        "--weights",
        str(tmp_path / "w.parquet"),
        "--size",
        "400",
        "--out",
        str(tmp_path / "s.parquet"),
    )
    assert res.returncode == 0, res.stderr
    s = Manifest(tmp_path / "s.parquet")
    assert s.num_rows == 400 and s.meta.stage == "sample" and s.meta.params["replacement"] is True
    assert cli("datl", "manifest", "validate", str(tmp_path / "s.parquet"), "-q").returncode == 0  # repeats allowed
    drawn = np.bincount(s.read(["label"]).column("label").to_numpy(), minlength=len(counts))
    digit = np.array([c.startswith("mnist/") for c in s.classes])
    expected = w.column("p_target").to_numpy()[digit].sum()
    # 400 draws: the binomial sd of the digit share is at most 0.025; 0.1 is 4 sd
    assert abs(drawn[digit].sum() / 400 - expected) < 0.1


def test_weight_drops_classes_with_target_mass_but_no_source_images(tmp_path):
    t = pa.table({"id": ["a", "b", "c"], "path": ["a", "b", "c"], "label": pa.array([0, 0, 1], pa.int32())})
    src = write_manifest(tmp_path / "src.parquet", t, ManifestMeta(classes=["x", "y", "z"]))
    prior = tmp_path / "p.parquet"
    from datl.manifests import write_table

    write_table(
        prior,
        pa.table(
            {"label": pa.array([0, 1, 2], pa.int32()), "class_name": ["x", "y", "z"], "p_target": [0.2, 0.3, 0.5]}
        ),
        ManifestMeta(classes=["x", "y", "z"]),
    )
    res = cli(
        "curate",
        "weight",
        "--source",
        str(src),
        "--prior",
        str(prior),
        "--out",
        str(tmp_path / "w.parquet"),
        "--no-plot",
    )
    assert res.returncode == 0 and "1 class(es) have target mass but no source image" in res.stderr
    w = pq.read_table(tmp_path / "w.parquet")
    assert w.column("p_target").to_pylist() == pytest.approx([0.4, 0.6, 0.0])
    assert w.column("weight").to_pylist() == pytest.approx([0.4 / (2 / 3), 0.6 / (1 / 3), 0.0])


@pytest.mark.slow
def test_bad_input(classifier, demo_small, tmp_path):
    run, src = classifier
    out = tmp_path / "o.parquet"
    target = str(demo_small / "target_unlabeled.parquet")
    for method in ("bbse", "em-bcts"):
        assert_user_error(
            cli("curate", "estimate", "--model", str(run), "--target", target, "--out", str(out), "--method", method),
            "needs held-out labeled source",
            "--calibration",
        )
    empty = write_manifest(
        tmp_path / "empty.parquet",
        pa.table({"id": pa.array([], pa.string()), "path": pa.array([], pa.string())}),
        ManifestMeta(),
    )
    assert_user_error(
        cli("curate", "estimate", "--model", str(run), "--target", str(empty), "--out", str(out)),
        "empty.parquet",
        "is empty",
    )
    # a prior over other classes than the source's
    prior = tmp_path / "p.parquet"
    assert cli("curate", "estimate", "--model", str(run), "--target", target, "--out", str(prior), "-q").returncode == 0
    assert_user_error(
        cli(
            "curate", "weight", "--source", str(demo_small / "source.parquet"), "--prior", str(prior), "--out", str(out)
        ),
        "classes differ",
    )
    assert (
        cli(
            "curate",
            "weight",
            "--source",
            str(src),
            "--prior",
            str(prior),
            "--out",
            str(tmp_path / "w.parquet"),
            "--no-plot",
        ).returncode
        == 0
    )
    for size in ("0", "-5"):
        assert_user_error(
            cli(
                "curate",
                "sample",
                "--source",
                str(src),
                "--weights",
                str(tmp_path / "w.parquet"),
                "--size",
                size,
                "--out",
                str(out),
            ),
            "--size",
            "not positive",
        )
    assert_user_error(
        cli(
            "curate",
            "sample",
            "--source",
            str(src),
            "--weights",
            str(tmp_path / "w.parquet"),
            "--size",
            "100000",
            "--no-replacement",
            "--out",
            str(out),
        ),
        "eligible",
        "--size",
    )
    assert not out.exists()


@pytest.mark.slow
def test_estimate_checks_the_label_shift_assumption(classifier, demo_small, tmp_path):
    """With --calibration the estimate says how well the model's embeddings tell the target from
    the reweighted source: the demo's 8x8 target digits against MNIST and silhouettes are told
    apart (a warning naming the AUC); --no-shift-check leaves it out."""
    import json

    run, src = classifier
    base = ["curate", "estimate", "--model", str(run), "--target", str(demo_small / "target_unlabeled.parquet"),
            "--calibration", str(src), "--method", "bbse", "--bootstrap", "0", "--workers", "0", "-q"]  # fmt: skip
    res = cli(*base, "--out", str(tmp_path / "p.parquet"))
    assert res.returncode == 0, res.stderr
    params = json.loads(pq.read_schema(tmp_path / "p.parquet").metadata[b"datl"])["params"]
    chk = params["label_shift_check"]
    assert 0.5 < chk["auc"] <= 1 and chk["auc_low"] <= chk["auc"] <= chk["auc_high"]
    assert chk["n_target"] == Manifest(demo_small / "target_unlabeled.parquet").num_rows
    assert "label-shift check: a domain classifier" in res.stdout + res.stderr
    if chk["auc_low"] > 0.6:
        assert "warning: a domain classifier tells the target from the source" in res.stderr
    res = cli(*base, "--no-shift-check", "--out", str(tmp_path / "q.parquet"))
    assert res.returncode == 0, res.stderr
    assert "label_shift_check" not in json.loads(pq.read_schema(tmp_path / "q.parquet").metadata[b"datl"])["params"]
