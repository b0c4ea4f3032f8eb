"""One finished `datl run` of the shrunken pipeline per pytest run (tests/_lib/pipelines.py),
also when pytest-xdist spreads the suite over processes: the first process to ask builds it,
under a lock, in a folder all of them share; the others wait for it and read it. It is
read-only: a test that reruns it works on its own copy (``pipelines.copy_run``)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import cli
from pipelines import write


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(pipeline.yaml, the result of its first `datl run`); its outputs are in the file's out/."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # one folder per pytest run
    folder = shared / "pipeline-run"
    with open(shared / "pipeline-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however this process ends
        result = folder / "result.json"
        if not result.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that died half-way
            folder.mkdir()
            res = cli("datl", "run", str(write(folder)))
            rec = {"args": res.args, "returncode": res.returncode, "stdout": res.stdout, "stderr": res.stderr}
            result.write_text(json.dumps(rec))
    rec = json.loads(result.read_text())
    return folder / "pipeline.yaml", subprocess.CompletedProcess(**rec)
