"""Two nodes on this machine (two torchrun agents, --nnodes 2, rendezvous on 127.0.0.1, one
CPU process each) give the outputs of one node with two processes: curate dedup and
pretrain run directly, and a pipeline run by `datl run` on both nodes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from datl.core.errors import UserError
from datl.launch import Launcher, first_host, from_environment

from helpers import BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# torchrun gives each process one intra-op thread when a node runs several of them, and all
# the cores when it runs one: the same number everywhere keeps the float arithmetic alike.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def torchrun(nodes: int, command: list[str], timeout: int = 600) -> None:
    """The command on 1 node x 2 processes, or on 2 nodes x 1 process (both agents at once)."""
    if nodes == 1:
        res = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ENV,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={r}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "--nproc-per-node=1",
                *command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for r in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]


def weights(run: Path) -> dict:
    return {k: v.numpy() for k, v in load_file(str(run / "model.safetensors")).items()}


@pytest.mark.slow
def test_dedup_and_pretrain_on_two_nodes_equal_one_node(demo_small, tmp_path):
    out = {}
    for nodes in (1, 2):
        d = tmp_path / f"n{nodes}"
        torchrun(
            nodes,
            [
                str(BIN / "pretrain"),
                "-m",
                str(demo_small / "source.parquet"),
                "--model",
                "test_resnet",
                "--out",
                str(d / "run"),
                "--steps",
                "4",
                "--batch-size",
                "16",
                "--workers",
                "0",
                "-q",
                "--device",
                "cpu",
            ],
        )
        torchrun(
            nodes,
            [
                str(BIN / "curate"),
                "dedup",
                "--source",
                str(demo_small / "source.parquet"),
                "--target",
                str(demo_small / "target_unlabeled.parquet"),
                "--model",
                str(d / "run"),
                "--out",
                str(d / "dups.parquet"),
                "--chunk-size",
                "200",
                "--threshold",
                "0.9",
                "--pixel-threshold",
                "0.9",
                "--workers",
                "0",
                "-q",
                "--device",
                "cpu",
            ],
        )
        out[nodes] = d
    a, b = weights(out[1] / "run"), weights(out[2] / "run")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ta, tb = (pq.read_table(out[n] / "dups.parquet").to_pydict() for n in (1, 2))
    assert ta == tb and len(ta["id"]) > 0


PIPELINE = """
out: {out}
device: cpu
seeds: [0]
stages:
  pool:
    run: sample
    inputs: {{source: {source}}}
    params: {{size: 400, uniform: true}}
  model:
    run: pretrain
    inputs: {{train: "@pool/sample.parquet"}}
    params: {{model: test_resnet, steps: {steps}, batch_size: 16, workers: 0}}
"""


def datl_run_nodes(
    pipeline: Path, out_of: dict[int, Path | None] | None = None, timeout: float = 600, after_start=None
) -> list[tuple[int, str, str]]:
    """`datl run` on two nodes (node 1 started first); returns (rc, stdout, stderr) per node rank.
    If either is still running after ``timeout`` seconds both are killed and the test fails
    with both outputs, so a hang shows what each node said."""
    port = free_port()
    procs = {
        r: subprocess.Popen(
            [
                str(BIN / "datl"),
                "run",
                str(pipeline),
                "--launcher",
                "torchrun",
                "--nproc-per-node",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                str(r),
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for r in (1, 0)
    }
    if after_start is not None:
        after_start(procs)
    deadline = time.time() + timeout
    outs = {}
    try:
        for r in (0, 1):
            outs[r] = procs[r].communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p in procs.values():
            p.kill()
        said = {r: p.communicate() for r, p in procs.items()}
        pytest.fail(
            f"a node still ran after {timeout:.0f} s: "
            + " | ".join(f"node {r} stdout: {o[-1500:]!r} stderr: {e[-1500:]!r}" for r, (o, e) in said.items())
        )
    return [(procs[r].returncode, *outs[r]) for r in (0, 1)]


@pytest.mark.slow
def test_datl_run_on_two_nodes_equals_one_node(demo_small, tmp_path):
    """Node 0 runs the pipeline; node 1 joins its torch stage; the model equals a 2-process
    run on one node. Node 1 writes nothing of its own but a log."""
    runs = {}
    for nodes in (1, 2):
        d = tmp_path / f"n{nodes}"
        d.mkdir()
        (d / "p.yaml").write_text(PIPELINE.format(out=d / "out", source=demo_small / "source.parquet", steps=4))
        if nodes == 1:
            res = subprocess.run(
                [str(BIN / "datl"), "run", str(d / "p.yaml"), "--launcher", "torchrun", "--nproc-per-node", "2", "-q"],
                capture_output=True,
                text=True,
                timeout=600,
                env=ENV,
            )
            assert res.returncode == 0, res.stderr[-3000:]
        else:
            (rc0, out0, err0), (rc1, out1, err1) = datl_run_nodes(d / "p.yaml")
            assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
            assert "joining model" in out1 and "joined 1 torch stage" in out1
            assert (d / "out" / "logs" / "model.node1.log").exists()
            # again, everything up to date: node 0 is done before node 1 starts; node 1 sees
            # that run is over and ends at once (it used to wait 10 minutes for another)
            again = [
                str(BIN / "datl"),
                "run",
                str(d / "p.yaml"),
                "--launcher",
                "torchrun",
                "--nproc-per-node",
                "1",
                "--nnodes",
                "2",
                "--rdzv-endpoint",
                f"127.0.0.1:{free_port()}",
                "--node-rank",
            ]
            res = subprocess.run([*again, "0"], capture_output=True, text=True, timeout=120, env=ENV)
            assert res.returncode == 0 and "0 stage(s) ran, 2 up to date" in res.stdout, res.stderr
            res = subprocess.run([*again, "1"], capture_output=True, text=True, timeout=60, env=ENV)
            assert res.returncode == 0 and "joined 0 torch stage(s)" in res.stdout, res.stderr
        runs[nodes] = d / "out" / "model"
    a, b = weights(runs[1]), weights(runs[2])
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_node_that_leaves_stops_the_others(demo_small, tmp_path):
    """torchrun waits 15 minutes for a node that never comes. A follower that fails makes
    node 0 stop its stage at once with the follower's error; node 0 stopped (SIGTERM, as a
    scheduler does) makes the follower stop too. Neither waits out torchrun's timeout."""
    # node 1 fails as it joins: the file system refuses its log (here: a folder in the way)
    d = tmp_path / "follower"
    (d / "out" / "logs" / "model.node1.log").mkdir(parents=True)
    (d / "out" / "logs" / ".datl-owned").touch()
    (d / "p.yaml").write_text(PIPELINE.format(out=d / "out", source=demo_small / "source.parquet", steps=4))
    t0 = time.time()
    (rc0, _, err0), (rc1, _, err1) = datl_run_nodes(d / "p.yaml", timeout=180)
    assert time.time() - t0 < 120
    assert rc1 == 2 and "model.node1.log: Is a directory" in err1
    assert rc0 == 1 and "stage 'model' failed" in err0 and "node 1 left the run: [Errno 21] Is a directory" in err0
    assert "Traceback" not in err0 + err1
    assert not (d / "out" / "model" / "model.safetensors").exists()

    # node 0 is stopped once node 1 has joined its stage: node 1 stops its stage and says why
    d = tmp_path / "leader"
    d.mkdir()
    (d / "p.yaml").write_text(PIPELINE.format(out=d / "out", source=demo_small / "source.parquet", steps=100000))
    stopped = {}

    def stop_node0_once_joined(procs):
        log = d / "out" / "logs" / "model.node1.log"
        deadline = time.time() + 120
        while time.time() < deadline and not log.exists():
            time.sleep(0.2)
        time.sleep(3)  # both torchruns up, in rendezvous or training
        procs[0].send_signal(signal.SIGTERM)
        stopped["at"] = time.time()

    (rc0, _, err0), (rc1, _, err1) = datl_run_nodes(d / "p.yaml", timeout=240, after_start=stop_node0_once_joined)
    assert time.time() - stopped["at"] < 90
    assert rc0 == 128 + signal.SIGTERM and "stopped by signal 15" in err0
    assert rc1 == 1 and "node 0's run failed: stopped by signal 15" in err1


def test_launcher_flags_and_slurm_environment():
    assert Launcher(8).prefix() == ["--standalone", "--nproc-per-node=8"]
    assert Launcher(4, 2, 1, "10.0.0.5:29400").prefix() == [
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=10.0.0.5",
        "--master-port=29400",
        "--nproc-per-node=4",
    ]
    env = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[03-05,07]"}
    assert from_environment(8, None, None, None, env) == Launcher(8, 4, 2, "gpu03:29500")
    assert from_environment(8, 2, 0, "h:1", env) == Launcher(8, 2, 0, "h:1")  # flags win
    assert from_environment(8, None, None, None, {}) == Launcher(8)
    assert first_host("node17,node18") == "node17" and first_host("a[1-3]") == "a1"
    with pytest.raises(UserError, match="--node-rank"):
        Launcher(1, 2, 2, "h:1")
    with pytest.raises(UserError, match="--rdzv-endpoint"):
        Launcher(1, 2, 0, None)


def test_a_failed_stage_says_why_in_one_line():
    """The reason `datl run` prints for a failed stage, from the log formats torchrun writes."""
    from datl.process import last_words

    torchrun_log = "\n".join(
        [
            "$ python -m torch.distributed.run --nnodes=2 ... pretrain ...",
            "[rank1]: Traceback (most recent call last):",
            "[rank1]:     work.wait()",
            "[rank1]: RuntimeError: [pair.cc:561] Connection closed by peer [127.0.0.1]:18820.",
            "E1125 06:04:39.133000 2606 api.py:1002] failed (exitcode: 1) local_rank: 0 (pid: 2610)",
            "Traceback (most recent call last):",
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
            "=" * 60,
            "/x/bin/pretrain FAILED",
            "-" * 60,
            "  exitcode  : 1 (pid: 2610)",
            "=" * 60,
        ]
    )
    assert last_words(torchrun_log) == "RuntimeError: [pair.cc:561] Connection closed by peer [127.0.0.1]:18820."
    assert (
        last_words(
            torchrun_log.replace("[rank1]: Traceback", "[rank0]: error: s.parquet: no rows; fix: x\n[rank1]: Traceback")
        )
        == "s.parquet: no rows; fix: x"
    )
    assert last_words("loading\nerror: t.parquet: bad; fix: y\n") == "t.parquet: bad; fix: y"
    assert last_words("step 1\nstep 2\n" + "=" * 20) == "step 2"
