"""Shared fixtures: real demo data (a small fraction, built once per test process: `make test`
runs two, pytest-xdist with --dist loadfile, so a file's module fixtures are built once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datl.demo import build_demo


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory) -> Path:
    """5% of every class of the real demo data (about 1,300 source images)."""
    out = tmp_path_factory.mktemp("demo_small")
    build_demo(out, seed=0, fraction=0.05, progress=False)
    return out


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """A deliberately useless model run folder: test_resnet, random init, never trained, 3 classes."""
    import torch

    from datl.neural.checkpoint import ModelConfig, save_run
    from datl.neural.modeling import create_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rand") / "run"
    m = create_model("test_resnet", 3, 1)
    save_run(
        out,
        m,
        ModelConfig(
            arch="test_resnet",
            classes=["a", "b", "c"],
            image_size=[28, 28],
            in_chans=1,
            mean=[0.5],
            std=[0.5],
            num_features=m.num_features,
        ),
    )
    return out
