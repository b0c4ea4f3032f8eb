"""``datl run`` on several nodes: node 0 leads, the others follow (see launch.py).

Node 0 writes ``OUT/.datl-run.json`` (its run's token, start time, its torch stages,
whether the run is over and, if it failed, why) and, before each torch stage,
``OUT/<stage>/launch.json`` (the token and the exact torchrun command). A follower waits
for a run that started within ``START_WINDOW`` seconds of itself (or one already over that
started within ``DONE_WINDOW``: node 0 had nothing to run), then joins every torch stage of
that run, in order, with its own node rank, until the run is over. Node 0's
decisions (skip, resume, force) are the followers' by construction: they run node 0's
command. The output folder must be shared by the nodes.

No node waits for one that has gone. torchrun's static rendezvous waits 15 minutes for a
node that never comes, so each side watches the other while its stage runs:

- a follower that fails (or is stopped) writes ``OUT/.datl-node<R>.json`` with the run's
  token and its error; node 0 stops the stage it is running and fails with that error;
- a follower stops its stage as soon as node 0's run file says the run failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from datl.core.errors import UserError
from datl.core.files import claim_folder, read_json, write_json

from .process import execute, why

logger = logging.getLogger(__name__)

RUN_FILE = ".datl-run.json"
LAUNCH = "launch.json"
START_WINDOW = 600.0  # seconds between the first and the last node's start
DONE_WINDOW = 60.0  # a run already over counts as this node's if it started this close before it
POLL = 0.25


def node_file(out: Path, rank: int) -> Path:
    """Where the follower of rank ``rank`` says it has left the run."""
    return out / f".datl-node{rank}.json"


def leave(out: Path, rank: int, token: str | None, reason: str) -> None:
    """A follower leaves the run (token None: before it found one), saying why."""
    write_json(node_file(out, rank), {"token": token, "at": time.time(), "error": reason})


class Nodes:
    """Node 0's side of a run: what its run file says."""

    def __init__(self, pipe, torch_stages: list[str]):
        self.pipe = pipe
        self.state = {"token": uuid.uuid4().hex, "started": time.time(), "stages": torch_stages, "done": False}

    @property
    def token(self) -> str:
        return self.state["token"]

    @classmethod
    @contextlib.contextmanager
    def lead(cls, pipe, torch_stages: list[str]) -> Iterator[Nodes]:
        """Node 0: announce the run; say it is over however it ends, and why if it failed."""
        nodes = cls(pipe, torch_stages)
        write_json(pipe.out / RUN_FILE, nodes.state)
        error = None
        try:
            yield nodes
        except BaseException as e:
            error = why(e)
            raise
        finally:
            nodes.end(error)

    def end(self, error: str | None = None) -> None:
        """Node 0: the run is over, with ``error`` saying why it failed (None: it succeeded);
        written before a torch stage is stopped, so the followers learn why before their peers
        vanish."""
        write_json(self.pipe.out / RUN_FILE, {**self.state, "done": True, "error": error})

    def launch(self, folder: Path, argv: list[str]) -> None:
        """Node 0, about to start a torch stage: its command, for the followers to join."""
        write_json(folder / LAUNCH, {"token": self.token, "argv": argv})

    def gone(self) -> str | None:
        """Node 0, while a torch stage runs: why a follower of this run left it, if one did.

        A follower that failed before it found the run's token counts when it failed after
        this run started."""
        for rank in range(1, self.pipe.launcher.nnodes):
            note = read_json(node_file(self.pipe.out, rank))
            if note and (
                note.get("token") == self.token
                or (note.get("token") is None and note.get("at", 0) >= self.state["started"])
            ):
                return f"node {rank} left the run: {note.get('error')}"
        return None

    @classmethod
    def follow(cls, pipe, quiet: bool) -> dict[str, str]:
        """A node of rank > 0: join node 0's torch stages until its run is over. However
        this ends early, the node says so in its node file for node 0 to stop waiting."""
        rank = pipe.launcher.node_rank
        node_file(pipe.out, rank).unlink(missing_ok=True)
        token = None
        try:
            logs = claim_folder(pipe.out / "logs", "logs")
            run = cls._await_run(pipe.out, time.time())
            token = run["token"]
            return cls._join(pipe, run, logs, rank, quiet)
        except BaseException as e:
            leave(pipe.out, rank, token, why(e))
            raise

    @classmethod
    def _join(cls, pipe, run: dict, logs: Path, rank: int, quiet: bool) -> dict[str, str]:
        joined: dict[str, str] = {}
        while True:
            state = read_json(pipe.out / RUN_FILE) or {}
            if state.get("token") != run["token"]:
                raise UserError(pipe.out / RUN_FILE, "node 0 started another run", "start every node together")
            if state.get("done"):  # a stage node 0 launched could not end without this node
                break
            name = next(
                (
                    n
                    for n in run["stages"]
                    if n not in joined and (read_json(pipe.out / n / LAUNCH) or {}).get("token") == run["token"]
                ),
                None,
            )
            if name is None:
                time.sleep(POLL)
                continue
            command = read_json(pipe.out / name / LAUNCH)["argv"]
            argv = [a.replace("--node-rank=0", f"--node-rank={rank}") for a in command]
            if not quiet:
                logger.info(f"node {rank}: joining {name}")
            execute(
                argv,
                logs / f"{name}.node{rank}.log",
                name,
                cls._leader_failed(pipe.out, run["token"]),
                functools.partial(leave, pipe.out, rank, run["token"]),
            )
            joined[name] = "joined"
        if state.get("error"):
            raise UserError(
                pipe.out / RUN_FILE, f"node 0's run failed: {state['error']}", "see node 0's output and OUT/logs/"
            )
        if not quiet:
            logger.info(f"node {rank}: node 0's run is over; joined {len(joined)} torch stage(s)")
        return joined

    @staticmethod
    def _leader_failed(out: Path, token: str) -> Callable[[], str | None]:
        def watch() -> str | None:
            state = read_json(out / RUN_FILE) or {}
            if state.get("token") == token and state.get("error"):
                return f"node 0's run failed: {state['error']}"
            return None

        return watch

    @staticmethod
    def _await_run(out: Path, since: float) -> dict:
        """Node 0's current run: one that started at most START_WINDOW before this node did,
        or one already over that started at most DONE_WINDOW before (node 0 found every stage
        up to date and was done before this node looked: nothing to join)."""
        while time.time() < since + START_WINDOW:
            run = read_json(out / RUN_FILE)
            if run and "stages" in run:
                started = run.get("started", 0)
                if started >= since - (DONE_WINDOW if run.get("done") else START_WINDOW):
                    return run
            time.sleep(POLL)
        raise UserError(
            out / RUN_FILE,
            f"no run of node 0 started within {START_WINDOW:.0f} s of this node",
            "start `datl run` on node 0 too, with the same pipeline and out folder",
        )
