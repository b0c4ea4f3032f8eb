"""Issue 17: stopped runs leave nothing behind and nothing running. A killed writer's temporary
file is removed by the next writer of that output; two runs cannot write one folder; a
`datl run` that is stopped (SIGTERM) or killed (SIGKILL) takes its stage with it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from datl.core.files import _HOST

from helpers import BIN, assert_user_error, cli

FAST = ["--model", "test_resnet", "--save-every", "5", "--log-every", "1", "--batch-size", "8", "--workers", "0", "-q"]
LONG = [*FAST, "--steps", "100000"]


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared"


def running_with(fragment: str) -> list[int]:
    """Pids of live processes whose command line mentions ``fragment``."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(ln for ln in (p / "status").read_text().splitlines() if ln.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if fragment in cmd and "zombie" not in state:
            pids.append(int(p.name))
    return pids


def gone(fragment: str, seconds: float = 60) -> bool:
    deadline = time.time() + seconds
    while running_with(fragment) and time.time() < deadline:
        time.sleep(0.2)
    return not running_with(fragment)


def test_a_killed_writers_temporary_is_removed_by_the_next_write(demo_small, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "s.parquet"
    stale = tmp_path / f".s.parquet.{_HOST}-{dead.pid}.0badc0de.tmp"  # what SIGKILL mid-write leaves
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".s.parquet.{_HOST}-{os.getpid()}.0badc0de.tmp"  # a writer that is still alive
    live.write_bytes(b"y")
    other = tmp_path / ".t.parquet.000000-1.0badc0de.tmp"  # another output's: not ours to judge
    other.write_bytes(b"z")
    res = cli(
        "curate",
        "sample",
        "--source",
        str(demo_small / "source.parquet"),
        "--uniform",
        "--size",
        "10",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert out.exists() and not stale.exists() and live.exists() and other.exists()


@pytest.mark.slow
def test_two_runs_cannot_write_one_run_folder(demo_small, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [str(BIN / "pretrain"), "-m", str(demo_small / "source.parquet"), "--out", str(out), *LONG],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(out / "state.pt", first)
        metrics = (out / "metrics.jsonl").read_bytes()
        second = cli("pretrain", "-m", str(demo_small / "source.parquet"), "--out", str(out), "--resume", *LONG)
        assert_user_error(second, "run", "another datl process that is still running")
        assert (out / "metrics.jsonl").read_bytes().startswith(metrics)  # the first run's log, untouched
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert b"stopped by signal 15" in err and b"Traceback" not in err
    assert not list(out.glob(".*.tmp"))
    # the lock goes with its process: now it resumes
    res = cli(
        "pretrain",
        "-m",
        str(demo_small / "source.parquet"),
        "--out",
        str(out),
        "--resume",
        *LONG,
        "--stop-after-steps",
        "1",
    )
    assert res.returncode == 0, res.stderr


def _pipeline(tmp_path: Path, demo_small: Path) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(f"""
out: out
device: cpu
stages:
  long_model:
    run: pretrain
    inputs: {{train: {demo_small / "source.parquet"}}}
    params: {{model: test_resnet, steps: 100000, save_every: 5, batch_size: 8, workers: 0}}
""")
    return p


@pytest.mark.slow
def test_stopping_or_killing_datl_run_stops_its_stage(demo_small, tmp_path):
    pipe = _pipeline(tmp_path, demo_small)
    stage = tmp_path / "out" / "long_model"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        runner = subprocess.Popen(
            [str(BIN / "datl"), "run", str(pipe)] + (["--force"] if sig == signal.SIGKILL else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(stage / "state.pt", runner)
        assert running_with(str(stage)), "the stage is not running"
        runner.send_signal(sig)  # the runner only, not its process group: as `kill PID` does
        runner.communicate(timeout=90)
        assert gone(str(stage)), f"after {sig!r} to `datl run`, its stage still runs"
        (stage / "state.pt").unlink()
