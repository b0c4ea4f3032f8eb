"""curate dedup streams the source in chunks: the result does not depend on the chunk size
or the number of ranks, a kill -9 resumes from the last finished chunk, and the
model-free checks run without a model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import BIN, assert_user_error, cli


def table(path: Path) -> list[tuple]:
    t = pq.read_table(path)
    return sorted(zip(*(t.column(c).to_pylist() for c in ("id", "target_id", "similarity", "match"))))


def dedup_args(demo_small: Path, model: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "curate",
        "dedup",
        "--source",
        str(demo_small / "source.parquet"),
        "--target",
        str(demo_small / "target_unlabeled.parquet"),
        "--model",
        str(model),
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--threshold",
        "0.9",
        "--pixel-threshold",
        "0.9",
        "--workers",
        "0",
        "-q",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(demo_small, random_model, tmp_path_factory) -> list[tuple]:
    """One chunk holding the whole source, one process."""
    tmp = tmp_path_factory.mktemp("ref")
    res = cli(*dedup_args(demo_small, random_model, tmp / "d.parquet", tmp / "cache"))
    assert res.returncode == 0, res.stderr
    rows = table(tmp / "d.parquet")
    assert len(rows) >= 5, rows  # loose thresholds: something to compare
    return rows


@pytest.mark.slow
def test_chunks_and_ranks_do_not_change_the_result(demo_small, random_model, reference, tmp_path):
    """13 chunks instead of one: the same pairs; similarities agree to float32 rounding (FAISS
    and the model batch differently). 13 chunks on 2 ranks: the same chunks, identical result."""
    res = cli(*dedup_args(demo_small, random_model, tmp_path / "a.parquet", tmp_path / "c1", "--chunk-size", "97"))
    assert res.returncode == 0, res.stderr
    chunked = table(tmp_path / "a.parquet")
    assert [r[:2] + r[3:] for r in chunked] == [r[:2] + r[3:] for r in reference]
    assert max(abs(a[2] - b[2]) for a, b in zip(chunked, reference)) < 1e-5
    assert len(list((tmp_path / "c1").glob("source.chunks.*/chunk-*.npz"))) == 13  # ceil(1246 / 97)

    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(BIN / "curate"),
        *dedup_args(
            demo_small, random_model, tmp_path / "b.parquet", tmp_path / "c2", "--chunk-size", "97", "--device", "cpu"
        )[1:],
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert table(tmp_path / "b.parquet") == chunked


@pytest.mark.slow
def test_kill_9_then_rerun_continues_from_the_last_chunk(demo_small, random_model, reference, tmp_path):
    cache = tmp_path / "cache"
    argv = [
        str(BIN / "curate"),
        *dedup_args(demo_small, random_model, tmp_path / "d.parquet", cache, "--chunk-size", "25")[1:],
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    done = []
    while time.time() < deadline and proc.poll() is None:
        done = list(cache.glob("source.chunks.*/chunk-*.npz"))
        if len(done) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "dedup finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in cache.glob("source.chunks.*/chunk-*.npz")}
    assert 8 <= len(finished) < 50 and not (tmp_path / "d.parquet").exists()
    res = cli(*dedup_args(demo_small, random_model, tmp_path / "d.parquet", cache, "--chunk-size", "25"))
    assert res.returncode == 0, res.stderr
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("source.chunks.*/chunk-*.npz")}
    assert len(after) == 50 and all(after[k] == v for k, v in finished.items())  # kept, not recomputed
    uninterrupted = tmp_path / "u.parquet"
    assert (
        cli(*dedup_args(demo_small, random_model, uninterrupted, tmp_path / "c2", "--chunk-size", "25")).returncode == 0
    )
    assert table(tmp_path / "d.parquet") == table(uninterrupted)

    # other thresholds: only the merge runs, no chunk is recomputed
    res = cli(
        *dedup_args(
            demo_small,
            random_model,
            tmp_path / "e.parquet",
            cache,
            "--chunk-size",
            "25",
            "--threshold",
            "0.95",
            "--pixel-threshold",
            "0.95",
        )
    )  # the last value counts
    assert res.returncode == 0, res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("source.chunks.*/chunk-*.npz")} == after
    assert len(table(tmp_path / "e.parquet")) <= len(table(uninterrupted))


@pytest.mark.slow
def test_model_free_checks_need_no_model(demo_small, tmp_path):
    base = [
        "curate",
        "dedup",
        "--source",
        str(demo_small / "source.parquet"),
        "--target",
        str(demo_small / "target_unlabeled.parquet"),
        "--out",
        str(tmp_path / "d.parquet"),
        "-q",
    ]
    res = cli(*base, "--no-feature")
    assert res.returncode == 0, res.stderr
    assert set(pq.read_table(tmp_path / "d.parquet").column("match").to_pylist()) <= {"exact", "pixel"}
    assert_user_error(cli(*base), "feature check needs --model", "--no-feature")
    assert_user_error(cli(*base, "--no-feature", "--chunk-size", "0"), "--chunk-size", "outside [1, inf)")
