"""``datl run`` on several nodes: node 0 leads, the others follow (see launch.py).

Node 0 writes ``OUT/.datl-run.json`` (its run's token, start time, whether it is done) and,
before each torch stage, ``OUT/<stage>/launch.json`` (the token and the exact torchrun
command). A follower waits for a run that started within ``START_WINDOW`` seconds of
itself, then joins every torch stage of that run, in order, with its own node rank, until
the run is done. Node 0's decisions (skip, resume, force) are the followers' by
construction: they run node 0's command. The output folder must be shared by the nodes.
"""
from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import click

from manifests import UserError, atomic_output

RUN_FILE = ".datl-run.json"
LAUNCH = "launch.json"
START_WINDOW = 600.0  # seconds between the first and the last node's start
POLL = 0.25


def _write(path: Path, obj: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj))


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Nodes:
    def __init__(self, pipe, token: str, started: float):
        self.pipe, self.token, self.started = pipe, token, started

    @classmethod
    @contextlib.contextmanager
    def lead(cls, pipe) -> Iterator[Nodes]:
        """Node 0: announce the run; say it is over however it ends."""
        nodes = cls(pipe, uuid.uuid4().hex, time.time())
        _write(pipe.out / RUN_FILE, {"token": nodes.token, "started": nodes.started, "done": False})
        try:
            yield nodes
        finally:
            _write(pipe.out / RUN_FILE, {"token": nodes.token, "started": nodes.started, "done": True})

    def launch(self, folder: Path, argv: list[str]) -> None:
        """Node 0, about to start a torch stage: its command, for the followers to join."""
        _write(folder / LAUNCH, {"token": self.token, "argv": argv})

    @classmethod
    def follow(cls, pipe, quiet: bool) -> dict[str, str]:
        """A node of rank > 0: join node 0's torch stages until its run is over."""
        from .runner import _execute
        from .stages import KINDS

        rank = pipe.launcher.node_rank
        run = cls._await_run(pipe.out, time.time())
        torch_stages = [s for s in pipe.stages.values() if s.kind in KINDS and KINDS[s.kind].torch]
        joined: dict[str, str] = {}
        while True:
            state = _read(pipe.out / RUN_FILE) or {}
            if state.get("token") != run["token"]:
                raise UserError(pipe.out / RUN_FILE, "node 0 started another run", "start every node together")
            stage = next((s for s in torch_stages if s.name not in joined
                          and (_read(pipe.out / s.name / LAUNCH) or {}).get("token") == run["token"]), None)
            if stage is None:
                if state.get("done"):
                    break
                time.sleep(POLL)
                continue
            command = _read(pipe.out / stage.name / LAUNCH)["argv"]
            argv = [a.replace("--node-rank=0", f"--node-rank={rank}") for a in command]
            if not quiet:
                click.echo(f"node {rank}: joining {stage.name}")
            _execute(argv, pipe.out / "logs" / f"{stage.name}.node{rank}.log", stage)
            joined[stage.name] = "joined"
        if not quiet:
            click.echo(f"node {rank}: node 0's run is over; joined {len(joined)} torch stage(s)")
        return joined

    @staticmethod
    def _await_run(out: Path, since: float) -> dict:
        """Node 0's current run: one that started at most START_WINDOW before this node did."""
        while time.time() < since + START_WINDOW:
            run = _read(out / RUN_FILE)
            if run and run.get("started", 0) >= since - START_WINDOW and not run.get("done"):
                return run
            time.sleep(POLL)
        raise UserError(out / RUN_FILE, f"no run of node 0 started within {START_WINDOW:.0f} s of this node",
                        "start `datl run` on node 0 too, with the same pipeline and out folder")
