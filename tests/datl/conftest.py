"""One finished `datl run` of the shrunken pipeline per pytest run (tests/_lib/pipelines.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import cli
from pipelines import write


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(pipeline.yaml, the result of its first `datl run`); its outputs are in the file's out/.
    The end-to-end test of test_run.py reruns it in place afterwards (cached, partial)."""
    pipe = write(tmp_path_factory.mktemp("pipeline"))
    return pipe, cli("datl", "run", str(pipe))
