"""pretrain: a tiny real timm model on real demo images; resume; torchrun; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datl.manifests import Manifest
from datl.neural.checkpoint import read_config

from helpers import BIN, assert_user_error, cli, subset_manifest, tiny_manifest, write_pngs

FAST = ["--model", "test_resnet", "--batch-size", "32", "--workers", "0", "-q"]


@pytest.fixture(scope="module")
def digits_animals(demo_small, tmp_path_factory) -> Path:
    """20 classes (MNIST digits and animal silhouettes), about 750 real images."""
    return subset_manifest(
        demo_small / "source.parquet", tmp_path_factory.mktemp("sub") / "m.parquet", ("mnist", "animal")
    )


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loss_falls_and_run_folder_is_complete(digits_animals, tmp_path):
    res = cli(
        "pretrain",
        "-m",
        str(digits_animals),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "60",
        "--log-every",
        "1",
        "--lr",
        "0.05",
        *FAST,
    )
    assert res.returncode == 0, res.stderr
    losses = [r["loss"] for r in _metrics(tmp_path / "run")]
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)  # ln(20) = 3.0 at chance
    cfg = read_config(tmp_path / "run")
    assert cfg.arch == "test_resnet" and cfg.in_chans == 1 and cfg.image_size == [28, 28]
    assert cfg.classes == Manifest(digits_animals).classes
    assert abs(sum(cfg.class_prior) - 1) < 1e-9
    assert {"model.safetensors", "config.json", "metrics.jsonl", "state.pt"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)  # never unpickles objects
    assert state["step"] == 60


@pytest.mark.slow
def test_resume_continues_from_saved_step_and_matches_uninterrupted(digits_animals, tmp_path):
    common = [
        "-m",
        str(digits_animals),
        "--steps",
        "12",
        "--log-every",
        "1",
        "--save-every",
        "4",
        "--model",
        "test_resnet",
        "--batch-size",
        "16",
        "--workers",
        "2",
        "-q",
    ]
    assert cli("pretrain", *common, "--out", str(tmp_path / "a")).returncode == 0
    res = cli("pretrain", *common, "--out", str(tmp_path / "b"), "--stop-after-steps", "5")
    assert res.returncode == 0, res.stderr
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 5
    assert not (tmp_path / "b" / "config.json").read_text() == ""
    res = cli("pretrain", *common, "--out", str(tmp_path / "b"), "--resume")
    assert res.returncode == 0, res.stderr
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 12
    assert [r["step"] for r in _metrics(tmp_path / "b")] == list(range(1, 13))
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # losses of the resumed half equal the uninterrupted run's
    la = [r["loss"] for r in _metrics(tmp_path / "a")]
    lb = [r["loss"] for r in _metrics(tmp_path / "b")]
    assert la == pytest.approx(lb, rel=1e-4)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(digits_animals, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(BIN / "pretrain"),
            "-m",
            str(digits_animals),
            "--out",
            str(out),
            "--steps",
            "6",
            "--log-every",
            "2",
            "--device",
            "cpu",
            *FAST,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        ".datl-owned",
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "state.pt",
    ]
    assert [r["step"] for r in _metrics(out)] == [2, 4, 6]  # one writer, not two
    assert read_config(out).arch == "test_resnet"


@pytest.mark.slow
def test_init_from_real_imagenet_mobilenet_weights(demo_small, tmp_path):
    from helpers import mobilenet_weights

    sub = subset_manifest(demo_small / "source.parquet", tmp_path / "m.parquet", ("mnist",))
    res = cli(
        "pretrain",
        "-m",
        str(sub),
        "--model",
        "mobilenetv2_100",
        "--init",
        "timm:mobilenetv2_100",
        "--weights",
        str(mobilenet_weights()),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    w = load_file(tmp_path / "run" / "model.safetensors")
    assert w["conv_stem.weight"].shape[1] == 1  # RGB stem summed into the grey one


@pytest.mark.slow
def test_bad_input(digits_animals, demo_small, tmp_path):
    out = str(tmp_path / "x")
    assert_user_error(
        cli("pretrain", "-m", str(digits_animals), "--model", "resnet_nope", "--out", out, "--steps", "1"),
        "unknown timm architecture 'resnet_nope'",
        "did you mean",
    )
    assert_user_error(
        cli(
            "pretrain",
            "-m",
            str(demo_small / "target_unlabeled.parquet"),
            "--model",
            "test_resnet",
            "--out",
            out,
            "--steps",
            "1",
        ),
        "target_unlabeled.parquet",
        "has no labels",
    )
    assert_user_error(
        cli(
            "pretrain",
            "-m",
            str(digits_animals),
            "--model",
            "test_resnet",
            "--out",
            out,
            "--steps",
            "1",
            "--epochs",
            "1",
        ),
        "exactly one training budget",
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    assert_user_error(
        cli(
            "finetune",
            "-c",
            str(tmp_path / "broken"),
            "--train",
            str(digits_animals),
            "--test",
            str(digits_animals),
            "--out",
            out,
            "--steps",
            "1",
        ),
        "missing model.safetensors",
    )
    # --init RUN_DIR whose classes differ from the manifest's
    write_pngs(tmp_path / "img", 2)
    other = tiny_manifest(tmp_path / "other.parquet", ["img/img000.png", "img/img001.png"], [0, 1], ["p", "q"])
    assert cli("pretrain", "-m", str(other), "--out", str(tmp_path / "o"), "--steps", "1", *FAST).returncode == 0
    assert_user_error(
        cli("pretrain", "-m", str(digits_animals), "--init", str(tmp_path / "o"), "--out", out, "--steps", "1", *FAST),
        "other classes",
    )
    assert not Path(out).exists() or not any(Path(out).iterdir())
