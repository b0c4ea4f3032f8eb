"""The installed package, as a user gets it from `pip install .` (a real wheel, not the
editable install the tests otherwise run): one top-level import name, `datl`; the folders
the brief fixes (curate/, manifests/, ...) inside it; every console script working."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from sources import ROOT, modules


def test_the_package_list_is_the_tree():
    """pyproject.toml lists every package folder (one that holds an __init__.py) and nothing else."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {m for m, p in modules().items() if p.name == "__init__.py"} | {"datl.page"}
    assert listed == tree


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel of this checkout, installed alone (no dependencies: they are this venv's) into a folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    skip = (".venv", ".git", "demo", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".whl", ".gl")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*skip))
    pip = [sys.executable, "-m", "pip", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp / "dist")],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("datl-*.whl")
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert top == {"datl", wheel.name.split("-py3")[0] + ".dist-info"}
    site = tmp / "site"
    res = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return site


def _run(site: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run from the file system's root (no checkout folder importable), the wheel's copy first."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(list(argv), capture_output=True, text=True, cwd="/", env=env)


@pytest.mark.slow
def test_pip_install_gives_one_datl_namespace_and_working_commands(installed):
    res = _run(
        installed,
        sys.executable,
        "-P",
        "-c",
        "import datl.curate, datl.manifests, datl.neural, datl.finetune.adapt; print(datl.curate.__file__)",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(str(installed / "datl" / "curate"))
    for old in ("manifests", "curate", "pretrain", "finetune", "datl_torch"):
        res = _run(installed, sys.executable, "-P", "-c", f"import {old}")
        assert res.returncode == 1 and "ModuleNotFoundError" in res.stderr, (old, res.stderr)
    for script in ("curate", "pretrain", "finetune", "datl"):
        res = _run(installed, str(installed / "bin" / script), "--help")
        assert res.returncode == 0 and "Usage:" in res.stdout, (script, res.stderr)
    res = _run(installed, str(installed / "bin" / "datl"), "report", "/nonexistent")
    assert res.returncode == 2 and res.stderr.count("\n") == 1  # the CLI contract, from the wheel
    assert (installed / "datl" / "page" / "report.js").exists()  # the report's assets are in the wheel
