"""How ``datl run`` launches its torch stages: alone, or under torchrun on one node or several.

One node: ``torchrun --standalone --nproc-per-node K``. Several: every node runs the same
``datl run`` with its own ``--node-rank``; torch stages start as ``torchrun --nnodes N
--node-rank R --master-addr HOST --master-port PORT --nproc-per-node K`` (torchrun's static
rendezvous at HOST:PORT, node 0's address). Under SLURM the node count, node rank and
node 0's host come from the job's environment (SLURM_NNODES, SLURM_NODEID,
SLURM_JOB_NODELIST), so ``srun datl run pipeline.yaml --launcher torchrun`` needs no more.

Node 0 runs the pipeline as on one node. A node of rank > 0 runs no stage of its own: it
follows node 0, joining each torch stage node 0 launches (node 0 writes the exact command
into ``OUT/<stage>/launch.json`` with its run's token; the follower runs it with its own
node rank), until node 0 says the run is over (``OUT/.datl-run.json``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from datl.core.errors import UserError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Launcher:
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str | None = None  # HOST:PORT of node 0, with nnodes > 1

    def __post_init__(self) -> None:
        if self.nproc < 1 or self.nnodes < 1:
            raise UserError("--nproc-per-node/--nnodes", "must be 1 or more", "pass positive counts")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(
                "--node-rank", f"{self.node_rank} is outside 0..{self.nnodes - 1}", "number the nodes 0..nnodes-1"
            )
        if self.nnodes > 1 and not self.endpoint:
            raise UserError(
                "--rdzv-endpoint",
                f"{self.nnodes} nodes need node 0's HOST:PORT",
                "pass --rdzv-endpoint HOST:PORT (or run under SLURM)",
            )

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = (self.endpoint or "").rpartition(":")
        if not host:
            return self.endpoint or "127.0.0.1", DEFAULT_PORT
        if not port.isdigit():
            raise UserError("--rdzv-endpoint", f"'{self.endpoint}' has no port number", "pass HOST:PORT")
        return host, int(port)

    def prefix(self) -> list[str]:
        """torchrun's arguments before the script."""
        if self.nnodes == 1:
            return ["--standalone", f"--nproc-per-node={self.nproc}"]
        host, port = self.host_port
        return [
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={host}",
            f"--master-port={port}",
            f"--nproc-per-node={self.nproc}",
        ]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise UserError("SLURM_JOB_NODELIST", f"'{nodelist}' is not a node list", "pass --rdzv-endpoint HOST:PORT")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def from_environment(
    nproc: int, nnodes: int | None, node_rank: int | None, endpoint: str | None, env: dict[str, str] | None = None
) -> Launcher:
    """Flags win; missing ones come from SLURM's environment; else a single node."""
    env = dict(os.environ) if env is None else env
    if nnodes is None and "SLURM_NNODES" in env:
        nnodes = int(env["SLURM_NNODES"])
    if node_rank is None and "SLURM_NODEID" in env:
        node_rank = int(env["SLURM_NODEID"])
    if endpoint is None and (nnodes or 1) > 1 and "SLURM_JOB_NODELIST" in env:
        endpoint = (
            f"{env.get('MASTER_ADDR') or first_host(env['SLURM_JOB_NODELIST'])}:{env.get('MASTER_PORT', DEFAULT_PORT)}"
        )
    return Launcher(nproc, nnodes or 1, node_rank or 0, endpoint)
