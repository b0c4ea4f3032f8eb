"""One stage's command as a child process of ``datl run``: its output in a log file, stopped
with its runner (however that ends), and why it failed in one line.

Invariant: no stage outlives ``datl run``, and no stage is left waiting for a node that has
gone: ``watch`` names a reason to stop it, ``announce`` tells the other nodes why first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def why(e: BaseException) -> str:
    """A node's reason for leaving the run, in one line."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if hasattr(e, "signum"):  # datl.core.cli.Stopped
        return f"stopped by signal {e.signum}"
    return str(e) or type(e).__name__


def execute(
    argv: list[str],
    log: Path,
    name: str,
    watch: Callable[[], str | None] | None = None,
    announce: Callable[[str], None] | None = None,
    ends_line: bool = False,
) -> None:
    """Run one stage's command with its output in ``log``; with ``ends_line``, a stage that
    fails or is stopped says so at the end of the runner's open "running ..." line. ``watch``, asked every second
    while it runs, names a reason to stop it (another node has left the run); ``announce``
    tells the other nodes why this one stops, before its stage is stopped (which may take
    a while), so they do not mistake the lost connection for the reason."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        try:
            reason = _wait(proc, watch, announce)
        except BaseException as e:  # Ctrl-C, or SIGTERM from a scheduler: the stage goes too
            if announce is not None:
                announce(why(e))
            stop(proc)
            raise
    if reason is None and proc.returncode != 0 and watch is not None:
        reason = _settle(watch)  # lost its peers because another node went: say that, not the symptom
    if reason is not None:
        if ends_line:
            logger.info(" stopped")
        raise StageFailed(name, 1, reason, log)
    if proc.returncode != 0:
        if ends_line:
            logger.info(" failed")
        raise StageFailed(name, proc.returncode, last_words(log.read_text()), log)


_EXCEPTION = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception|Exit)\b:?.*)$")


def last_words(text: str) -> str:
    """The line that says why a stage failed: its last ``error:`` line (datl's own, maybe
    behind a ``[rankN]:`` prefix), else the last exception line, else the last line that is
    not torchrun's ``====`` frame."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.match(r"^(?:\[rank\d+\]:\s*)?error: (.*)$", ln)
        if m:
            return m.group(1)
    for ln in reversed(lines):
        m = _EXCEPTION.match(ln)
        if m and not m.group(1).startswith("torch.distributed.elastic.multiprocessing.errors.ChildFailedError"):
            return m.group(1)
    return next((ln for ln in reversed(lines) if set(ln) - set("=-")), "")


def _settle(watch: Callable[[], str | None], seconds: float = 10.0) -> str | None:
    """After a stage failed on a node of several: the other node's reason, if it gives one soon."""
    deadline = time.time() + seconds
    while True:
        reason = watch()
        if reason is not None or time.time() > deadline:
            return reason
        time.sleep(0.25)


def _wait(
    proc: subprocess.Popen, watch: Callable[[], str | None] | None, announce: Callable[[str], None] | None
) -> str | None:
    """Wait for the stage's process; if ``watch`` names a reason first, stop it and return that."""
    if watch is None:
        proc.wait()
        return None
    while True:
        try:
            proc.wait(1.0)
            return None
        except subprocess.TimeoutExpired:
            reason = watch()
            if reason is not None:
                if announce is not None:
                    announce(reason)
                stop(proc)
                return reason


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop a stage: SIGTERM (a stage writes nothing half-done; torchrun passes it on to its
    workers), then SIGKILL if it is still running after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """In the stage's process, before it runs: Linux sends it SIGTERM if `datl run` dies,
    even by SIGKILL, so no stage outlives its runner. Elsewhere a no-op."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StageFailed(Exception):
    def __init__(self, name: str, rc: int, line: str, log: Path):
        problem, _, fix = line.partition("; fix: ")  # the stage's own one line: problem; fix
        how = f"{fix} (log: {log})" if fix else f"see {log}"
        super().__init__(f"stage '{name}' failed (exit {rc}): {problem}; fix: {how}")
        self.rc = rc
