"""Issue 24's defects as cells of the reliability probe (tests/_lib/probe.py): each must come
out ``ok``; every one of them failed (a traceback, data loss, a wrong exit 0, or no word of
warning) before it was fixed."""

from __future__ import annotations

import pytest

from probe import CELLS, make_world, run_case


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("probe-world"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CELLS))
def test_cell(world, tmp_path, name):
    kind, why = run_case(CELLS[name](world, tmp_path))
    assert kind == "ok", f"{name}: {kind}: {why}"
