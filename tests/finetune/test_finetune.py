"""finetune: metrics.json from real predictions; grey checkpoints read RGB of other sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from datl.manifests import Manifest, ManifestMeta, write_manifest
from datl.neural.checkpoint import load_model
from datl.neural.data import ImageDataset, build_transform

from helpers import assert_user_error, cli, subset_manifest

FAST = ["--batch-size", "32", "--workers", "0", "-q"]


@pytest.fixture(scope="module")
def grey_run(demo_small, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ft")
    sub = subset_manifest(demo_small / "source.parquet", tmp / "m.parquet", ("mnist", "glyph"))
    res = cli("pretrain", "-m", str(sub), "--model", "test_resnet", "--out", str(tmp / "run"), "--steps", "20", *FAST)
    assert res.returncode == 0, res.stderr
    return tmp / "run"


@pytest.mark.slow
def test_metrics_equal_an_independent_recount(grey_run, demo_small, tmp_path):
    out = tmp_path / "ft"
    res = cli(
        "finetune",
        "-c",
        str(grey_run),
        "--train",
        str(demo_small / "target_train.parquet"),
        "--test",
        str(demo_small / "target_test.parquet"),
        "--out",
        str(out),
        "--epochs",
        "3",
        *FAST,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    test = Manifest(demo_small / "target_test.parquet")
    assert metrics["n_test"] == test.num_rows
    preds = pq.read_table(out / "predictions.parquet")
    assert sorted(preds.column("id").to_pylist()) == sorted(test.read(["id"]).column("id").to_pylist())
    acc = float(np.mean(np.array(preds.column("pred")) == np.array(preds.column("label"))))
    assert metrics["test_accuracy"] == pytest.approx(acc)
    # recount the predictions themselves with the saved model, outside finetune's code path
    lm = load_model(str(out))
    t = test.read()
    by_id = dict(zip(preds.column("id").to_pylist(), preds.column("pred").to_pylist()))
    tf = build_transform((28, 28), 1, lm.config.mean, lm.config.std, train=False)
    ids = t.column("id").to_pylist()[:64]
    x = torch.stack([tf(Image.open(test.resolve(p)).convert("L")) for p in t.column("path").to_pylist()[:64]])
    with torch.no_grad():
        mine = lm.logits(x).argmax(1).tolist()
    assert mine == [by_id[i] for i in ids]
    per_class = metrics["per_class_accuracy"]
    assert set(per_class) == {str(d) for d in range(10)}


@pytest.mark.slow
def test_grey_28_checkpoint_reads_rgb_20(grey_run, demo_small, tmp_path):
    """Target images as RGB 20x20 PNGs: converted to the checkpoint's grey 28x28."""
    src = Manifest(demo_small / "target_train.parquet")
    t = src.read()
    (tmp_path / "rgb").mkdir()
    paths = []
    for i, p in enumerate(t.column("path").to_pylist()):
        im = Image.open(src.resolve(p)).convert("RGB").resize((20, 20))
        im.save(tmp_path / "rgb" / f"{i}.png")
        paths.append(f"rgb/{i}.png")
    rgb = write_manifest(
        tmp_path / "rgb.parquet", t.set_column(1, "path", pa.array(paths)), ManifestMeta(classes=src.classes)
    )
    res = cli(
        "finetune",
        "-c",
        str(grey_run),
        "--train",
        str(rgb),
        "--test",
        str(rgb),
        "--out",
        str(tmp_path / "ft"),
        "--steps",
        "3",
        *FAST,
    )
    assert res.returncode == 0, res.stderr
    lm = load_model(str(tmp_path / "ft"))
    assert lm.config.in_chans == 1 and lm.config.image_size == [28, 28]
    tf = build_transform((28, 28), 1, lm.config.mean, lm.config.std, train=False)
    assert ImageDataset(rgb, transform=tf, mode="L")[0].image.shape == (1, 28, 28)
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["n_test"] == len(paths)


@pytest.mark.slow
def test_random_init_baseline_and_bad_input(demo_small, tmp_path):
    res = cli(
        "finetune",
        "--model",
        "test_resnet",
        "--train",
        str(demo_small / "target_train.parquet"),
        "--test",
        str(demo_small / "target_test.parquet"),
        "--out",
        str(tmp_path / "scratch"),
        "--steps",
        "2",
        *FAST,
    )
    assert res.returncode == 0, res.stderr
    assert_user_error(
        cli(
            "finetune",
            "--model",
            "test_resnet",
            "--train",
            str(demo_small / "target_train.parquet"),
            "--test",
            str(demo_small / "source.parquet"),
            "--out",
            str(tmp_path / "x"),
            "--steps",
            "1",
        ),
        "source.parquet",
        "other classes",
    )
    assert_user_error(
        cli(
            "finetune",
            "--model",
            "test_resnet",
            "--train",
            str(demo_small / "target_train.parquet"),
            "--test",
            str(demo_small / "target_test.parquet"),
            "--out",
            str(tmp_path / "x"),
            "--steps",
            "1",
            "--adapt",
            "magic",
        ),
        "unknown method 'magic'",
    )


def test_head_warmup_holds_the_backbone_then_releases_it(grey_run, demo_small, tmp_path):
    """--head-warmup H: for the first H of the steps only the new head moves (the backbone's
    weights stay the checkpoint's; BatchNorm statistics may follow the data); after, all do."""
    from safetensors.torch import load_file

    start = load_file(str(grey_run / "model.safetensors"))
    common = ["finetune", "-c", str(grey_run), "--train", str(demo_small / "target_train.parquet"),
              "--test", str(demo_small / "target_test.parquet"), "--steps", "4", *FAST]  # fmt: skip
    moved = {}
    for hold in ("0.9", "0.5"):
        out = tmp_path / f"ft{hold}"
        res = cli(*common, "--head-warmup", hold, "--out", str(out))
        assert res.returncode == 0, res.stderr
        end = load_file(str(out / "model.safetensors"))
        weights = [k for k in start if k in end and start[k].is_floating_point() and "running" not in k
                   and not k.startswith(("fc.", "head.", "classifier."))]  # fmt: skip
        moved[hold] = sum(not torch.equal(start[k], end[k]) for k in weights)
        assert weights
    assert moved["0.9"] == 0 and moved["0.5"] > 0
