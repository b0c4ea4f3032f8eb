"""pretrain on a multi-label manifest: the sigmoid loss, the head's prior start, the held-out
mAP in metrics.jsonl, and --init from such a run into a single-label finetune."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datl.manifests import Manifest, ManifestMeta, write_manifest
from datl.neural.checkpoint import read_config
from datl.neural.engine.loop import multi_hot, multi_label_loss
from datl.neural.engine.metrics import average_precision, mean_average_precision
from datl.pretrain.config import PretrainConfig
from datl.pretrain.train import holdout

from helpers import assert_user_error, cli

FAST = ["--model", "test_resnet", "--batch-size", "32", "--workers", "0", "-q"]
QUADRANTS = ["top-left", "top-right", "bottom-left", "bottom-right"]


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory) -> Path:
    """600 grey 28x28 images; label k = quadrant k is bright (1-3 of them an image), with noise."""
    root = tmp_path_factory.mktemp("quad")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(600):
        on = sorted(rng.choice(4, size=int(rng.integers(1, 4)), replace=False).tolist())
        img = rng.integers(0, 60, (28, 28)).astype(np.uint8)
        for q in on:
            r, c = divmod(q, 2)
            img[r * 14 : r * 14 + 14, c * 14 : c * 14 + 14] += 150
        Image.fromarray(img, "L").save(root / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,{'|'.join(QUADRANTS[q] for q in on)}\n")
    (root / "labels.csv").write_text("".join(lines))
    out = root / "m.parquet"
    res = cli("datl", "manifest", "build", str(root), "--out", str(out), "--labels", str(root / "labels.csv"))
    assert res.returncode == 0, res.stderr
    return out


def test_average_precision_by_hand():
    # positives ranked 1st and 3rd: AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0], bool)) == pytest.approx(5 / 6)
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.8]])
    m, k = mean_average_precision(scores, np.array([[1, 0], [0, 0], [1, 0]], bool))  # label 1 has no positive
    assert k == 1 and m == pytest.approx((1 + 2 / 3) / 2)


def test_the_loss_is_the_binary_cross_entropy_summed_over_labels():
    sets = torch.tensor([[2, 0], [1, -1]])
    t = multi_hot(sets, 3)
    assert t.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    z = torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]])
    by_hand = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z)).sum() / 2
    assert multi_label_loss(z, sets).item() == pytest.approx(by_hand.item())


def test_a_held_out_slice_takes_every_row_of_a_repeated_id_with_it(tmp_path):
    ids = [f"img{i % 50}" for i in range(200)]  # a with-replacement sample: each id 4 times
    t = pa.table({"id": ids, "path": ["x.png"] * 200, "labels": pa.array([[0]] * 200, pa.list_(pa.int32()))})
    m = Manifest(write_manifest(tmp_path / "m.parquet", t, ManifestMeta(classes=["a"])))
    cfg = PretrainConfig(manifest=str(m.path), model="test_resnet", out=str(tmp_path / "r"), steps=1, holdout=10)
    held, train = holdout(m, cfg)
    held_ids, train_ids = {ids[i] for i in held}, {ids[i] for i in train}
    assert not held_ids & train_ids and len(held) + len(train) == 200 and len(held) >= 10
    assert np.array_equal(holdout(m, cfg)[0], held)  # the seed decides


@pytest.mark.slow
def test_pretrain_a_sigmoid_classifier_and_finetune_from_it(quadrants, tmp_path):
    run = tmp_path / "run"
    res = cli("pretrain", "-m", str(quadrants), "--out", str(run), "--steps", "80", "--lr", "0.05",
              "--holdout", "100", "--log-every", "1", *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    final = records[-1]
    # chance is about the labels' base rate (0.5); the quadrants are easy to see
    assert final["holdout_images"] == 100 and final["holdout_labels"] == 4 and final["holdout_map"] > 0.8, final
    cfg = read_config(run)
    assert cfg.multi_label and cfg.classes == sorted(QUADRANTS)
    counts, _, _ = Manifest(quadrants).label_set_counts()
    assert np.allclose(cfg.class_prior, counts / 600) and sum(cfg.class_prior) > 1.5  # shares of images

    # --init from the sigmoid run into a single-label finetune: the backbone moves, a new head
    m = Manifest(quadrants)
    t = m.read(["id", "path", "labels"])
    first = [s[0] for s in t.column("labels").to_pylist()]
    single = t.drop_columns(["labels"]).append_column("label", pa.array(first, pa.int32()))
    path = quadrants.parent / "single.parquet"
    write_manifest(path, single, ManifestMeta(classes=m.classes))
    res = cli("finetune", "--checkpoint", str(run), "--train", str(path), "--test", str(path), "--epochs", "1",
              "--out", str(tmp_path / "ft"), "--batch-size", "32", "--workers", "0", "-q")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not read_config(tmp_path / "ft").multi_label

    # curate estimate reads the sigmoid model: a target of images that all show the top-left quadrant
    target = quadrants.parent / "target.parquet"
    keep = [i for i, s in enumerate(t.column("labels").to_pylist()) if m.classes.index("top-left") in s]
    write_manifest(target, t.drop_columns(["labels"]).take(keep), ManifestMeta())
    tl = m.classes.index("top-left")
    for method in ("em", "mean"):
        prior = tmp_path / f"prior-{method}.parquet"
        res = cli("curate", "estimate", "--model", str(run), "--target", str(target), "--method", method,
                  "--out", str(prior), "--workers", "0", "-q")  # fmt: skip
        assert res.returncode == 0, res.stderr
        got = pq.read_table(prior)
        p = got.column("p_target").to_numpy()
        meta = json.loads(got.schema.metadata[b"datl"])
        assert meta["params"]["multi_label"] and abs(p.sum() - 1) < 1e-9
        assert p[tl] > cfg.class_prior[tl] / sum(cfg.class_prior)  # more top-left than in the source
        if method == "em":  # every target image carries top-left
            assert meta["params"]["label_image_shares"][tl] > 0.9
    # a softmax method for a sigmoid model, and a softmax model with a multi-label --source: one line
    res = cli("curate", "estimate", "--model", str(run), "--target", str(target), "--method", "bbse",
              "--calibration", str(quadrants), "--out", str(tmp_path / "x.parquet"), "-q")  # fmt: skip
    assert_user_error(res, "--method bbse", "is for a softmax classifier", "multi-label (sigmoid outputs)")
    res = cli("curate", "estimate", "--model", str(tmp_path / "ft"), "--target", str(target), "--method", "em",
              "--source", str(quadrants), "--out", str(tmp_path / "x.parquet"), "-q")  # fmt: skip
    assert_user_error(res, "m.parquet", "is a multi-label manifest, and the model is single-label (softmax)")
    assert not (tmp_path / "x.parquet").exists()


def test_a_training_manifest_with_an_empty_label_set_is_refused(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(tmp_path / f"{i}.png")
    (tmp_path / "l.csv").write_text("0.png,a\n1.png,b\n2.png,a|b\n")  # 3.png: no line, an empty set
    out = tmp_path / "m.parquet"
    assert (
        cli("datl", "manifest", "build", str(tmp_path), "-o", str(out), "--labels", str(tmp_path / "l.csv")).returncode
        == 0
    )
    res = cli("pretrain", "-m", str(out), "--out", str(tmp_path / "run"), "--steps", "1", *FAST)
    assert_user_error(res, "m.parquet", "1 of its 4 rows have an empty label set")
    assert not (tmp_path / "run").exists()
