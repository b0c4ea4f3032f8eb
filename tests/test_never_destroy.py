"""No command deletes or overwrites a file or folder it did not create (issue 17, defects 1
and 2): outputs that are inputs are refused before any work, and datl only empties or
removes folders that carry its marker. Each case: exit 2, one line, the user's files
byte for byte as they were."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from helpers import assert_user_error, cli


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_an_output_that_is_an_input_is_refused(demo_small, random_model, tmp_path):
    import shutil

    for name in ("source", "target_unlabeled"):
        shutil.copy(demo_small / f"{name}.parquet", tmp_path / f"{name}.parquet")
    shutil.copytree(demo_small / "images", tmp_path / "images")
    src, tgt = tmp_path / "source.parquet", tmp_path / "target_unlabeled.parquet"
    before = snapshot(tmp_path)
    assert_user_error(
        cli("curate", "sample", "--source", str(src), "--uniform", "--size", "10", "--out", str(src)),
        "--out",
        "source.parquet",
        "also the --source input",
    )
    assert_user_error(
        cli("curate", "estimate", "--model", str(random_model), "--target", str(tgt), "--out", str(tgt)),
        "--out",
        "also the --target input",
    )
    assert_user_error(
        cli(
            "curate",
            "dedup",
            "--source",
            str(src),
            "--target",
            str(tgt),
            "--model",
            str(random_model),
            "--out",
            str(tmp_path / "." / "source.parquet"),
        ),
        "--out",
        "also the --source input",
    )
    prior = tmp_path / "p.parquet"
    assert (
        cli(
            "curate",
            "estimate",
            "--model",
            str(random_model),
            "--target",
            str(tgt),
            "--out",
            str(prior),
            "-q",
            "--workers",
            "0",
        ).returncode
        == 0
    )
    before = snapshot(tmp_path)
    assert_user_error(
        cli(
            "curate",
            "weight",
            "--source",
            str(src),
            "--prior",
            str(prior),
            "--out",
            str(tmp_path / "w.parquet"),
            "--plot",
            str(tmp_path / "w.parquet"),
        ),
        "--plot",
        "also the --out output",
    )
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_datl_never_empties_or_deletes_a_folder_it_did_not_make(demo_small, tmp_path):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.txt").write_text("three years of work")
    (tmp_path / "p.yaml").write_text(f"""
out: .
stages:
  mydata:
    run: sample
    inputs: {{source: {demo_small / "source.parquet"}}}
    params: {{size: 10, uniform: true}}
""")
    before = snapshot(tmp_path)
    assert_user_error(cli("datl", "run", str(tmp_path / "p.yaml")), "mydata", "not made by datl")
    assert snapshot(tmp_path) == before

    assert_user_error(
        cli("datl", "demo-data", "--out", str(mine), "--fraction", "0.02"), "mydata", "folder datl did not create"
    )
    assert_user_error(
        cli(
            "pretrain",
            "-m",
            str(demo_small / "source.parquet"),
            "--model",
            "test_resnet",
            "--out",
            str(mine),
            "--steps",
            "1",
            "-q",
        ),
        "mydata",
        "folder datl did not create",
    )
    assert snapshot(tmp_path) == before

    # what datl made, it may redo: a second datl run with --force replaces its own stage folder
    (tmp_path / "p.yaml").write_text((tmp_path / "p.yaml").read_text().replace("mydata", "pool"))
    assert cli("datl", "run", str(tmp_path / "p.yaml"), "-q").returncode == 0
    assert cli("datl", "run", str(tmp_path / "p.yaml"), "-q", "--force").returncode == 0
    assert (tmp_path / "pool" / "sample.parquet").exists() and (mine / "thesis.txt").exists()
