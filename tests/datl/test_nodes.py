"""Two nodes on this machine (two torchrun agents, --nnodes 2, rendezvous on 127.0.0.1, one
CPU process each) give the outputs of one node with two processes: curate dedup and
pretrain run directly, and a pipeline run by `datl run` on both nodes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import BIN
from safetensors.torch import load_file

from datl.launch import Launcher, first_host, from_environment
from manifests import UserError


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
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                              *command], capture_output=True, text=True, timeout=timeout, env=ENV)
        assert res.returncode == 0, res.stderr[-3000:]
        return
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={r}",
                               "--master-addr=127.0.0.1", f"--master-port={port}", "--nproc-per-node=1", *command],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]


def weights(run: Path) -> dict:
    return {k: v.numpy() for k, v in load_file(str(run / "model.safetensors")).items()}


def test_dedup_and_pretrain_on_two_nodes_equal_one_node(demo_small, tmp_path):
    out = {}
    for nodes in (1, 2):
        d = tmp_path / f"n{nodes}"
        torchrun(nodes, [str(BIN / "pretrain"), "-m", str(demo_small / "source.parquet"), "--model", "test_resnet",
                         "--out", str(d / "run"), "--steps", "4", "--batch-size", "16", "--workers", "0", "-q",
                         "--device", "cpu"])
        torchrun(nodes, [str(BIN / "curate"), "dedup", "--source", str(demo_small / "source.parquet"), "--target",
                         str(demo_small / "target_unlabeled.parquet"), "--model", str(d / "run"), "--out",
                         str(d / "dups.parquet"), "--chunk-size", "200", "--threshold", "0.9", "--pixel-threshold",
                         "0.9", "--workers", "0", "-q", "--device", "cpu"])
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
    params: {{model: test_resnet, steps: 4, batch_size: 16, workers: 0}}
"""


def test_datl_run_on_two_nodes_equals_one_node(demo_small, tmp_path):
    """Node 0 runs the pipeline; node 1 joins its torch stage; the model equals a 2-process
    run on one node. Node 1 writes nothing of its own but a log."""
    runs = {}
    for nodes in (1, 2):
        d = tmp_path / f"n{nodes}"
        d.mkdir()
        (d / "p.yaml").write_text(PIPELINE.format(out=d / "out", source=demo_small / "source.parquet"))
        if nodes == 1:
            res = subprocess.run([str(BIN / "datl"), "run", str(d / "p.yaml"), "--launcher", "torchrun",
                                  "--nproc-per-node", "2", "-q"], capture_output=True, text=True, timeout=600, env=ENV)
            assert res.returncode == 0, res.stderr[-3000:]
        else:
            port = free_port()
            procs = [subprocess.Popen([str(BIN / "datl"), "run", str(d / "p.yaml"), "--launcher", "torchrun",
                                       "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", str(r),
                                       "--rdzv-endpoint", f"127.0.0.1:{port}"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                     for r in (1, 0)]
            outs = [p.communicate(timeout=600) for p in procs]
            assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
            assert "joining model" in outs[0][0] and "joined 1 torch stage" in outs[0][0]
            assert (d / "out" / "logs" / "model.node1.log").exists()
        runs[nodes] = d / "out" / "model"
    a, b = weights(runs[1]), weights(runs[2])
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_launcher_flags_and_slurm_environment():
    assert Launcher(8).prefix() == ["--standalone", "--nproc-per-node=8"]
    assert Launcher(4, 2, 1, "10.0.0.5:29400").prefix() == [
        "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.5", "--master-port=29400", "--nproc-per-node=4"]
    env = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[03-05,07]"}
    assert from_environment(8, None, None, None, env) == Launcher(8, 4, 2, "gpu03:29500")
    assert from_environment(8, 2, 0, "h:1", env) == Launcher(8, 2, 0, "h:1")  # flags win
    assert from_environment(8, None, None, None, {}) == Launcher(8)
    assert first_host("node17,node18") == "node17" and first_host("a[1-3]") == "a1"
    with pytest.raises(UserError, match="--node-rank"):
        Launcher(1, 2, 2, "h:1")
    with pytest.raises(UserError, match="--rdzv-endpoint"):
        Launcher(1, 2, 0, None)
