"""File-system refusals (an output whose parent is a file, ...) are the user's to fix: exit 2 and
one line naming the path, never a traceback, and nothing half-written left behind."""

from __future__ import annotations

import pytest

from helpers import assert_user_error, cli


@pytest.mark.parametrize(
    "argv",
    [
        ["curate", "sample", "--source", "{d}/source.parquet", "--uniform", "--size", "10", "--out", "{f}/s.parquet"],
        ["pretrain", "-m", "{d}/source.parquet", "--model", "test_resnet", "-o", "{f}/run", "--steps", "1"],
        ["datl", "demo-data", "--out", "{f}/demo", "--fraction", "0.05", "-q"],
        ["datl", "manifest", "build", "{d}/images", "--out", "{f}/m.parquet"],
    ],
)
@pytest.mark.slow
def test_an_output_under_a_file_is_exit_2_naming_the_path(tmp_path, demo_small, argv):
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    res = cli(*[a.format(d=demo_small, f=blocker) for a in argv])
    assert_user_error(res, "afile", "Not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and blocker.read_text() == "a file, not a folder"
