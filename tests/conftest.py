"""Shared fixtures: real demo data (a small fraction, built once)."""
from __future__ import annotations

from pathlib import Path

import pytest

from manifests.demo import build_demo


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory) -> Path:
    """5% of every class of the real demo data (about 1,300 source images)."""
    out = tmp_path_factory.mktemp("demo_small")
    build_demo(out, seed=0, fraction=0.05, progress=False)
    return out
