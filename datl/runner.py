"""``datl run``: execute a pipeline's stages like make, skipping what is up to date.

A stage is up to date when ``OUT/<stage>/stamp.json`` holds the same key and every
output it lists still has the content hash recorded there. The key is a sha256 of
the stage's kind, parameters, device, the content hash of every input (files, or the
recorded outputs of the stage an ``@stage`` ref names) and the code version (a hash
of the installed datl sources). Change any of them and the stage, and through its
outputs everything downstream of it, runs again.

A stage about to run writes ``pending.json`` with its key. A killed ``pretrain`` or
``finetune`` whose folder holds a pending key equal to the current one and a saved
state resumes (``--resume``); any other unfinished stage starts over in an emptied
folder. Outputs are written atomically by the commands themselves.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import click

from manifests import OWNED, UserError, atomic_output, claim_folder, file_sha256, lock_folder, remove_owned

from .nodes import why
from .pipeline import COMPARE, Pipeline, Stage, ref_file, ref_stage
from .stages import KINDS, command_line

STAMP = "stamp.json"
PENDING = "pending.json"
CODE_PACKAGES = ("manifests", "datl_torch", "curate", "pretrain", "finetune")


@lru_cache(maxsize=None)
def code_version(with_report: bool = False) -> str:
    """sha256 of the stage code's sources: an edit to any of them reruns the stages."""
    import importlib.util

    h = hashlib.sha256()
    for pkg in CODE_PACKAGES + (("datl",) if with_report else ()):
        root = Path(importlib.util.find_spec(pkg).origin).parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=4096)
def _sha_of(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def sha(path: Path) -> str:
    """file_sha256, computed once per file version: a big source manifest read by many
    stages is hashed once per run, not once per stage."""
    st = os.stat(path)
    return _sha_of(str(path), st.st_mtime_ns, st.st_size)


def _write_json(path: Path, obj: dict) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def outputs_of(stage: Stage) -> tuple[str, ...]:
    return KINDS[stage.kind].outputs if stage.kind in KINDS else ("results.json", "report.md")


def input_hash(pipe: Pipeline, ref: str) -> str:
    """Content hash of one input: a file's sha256, or an upstream stage's recorded outputs."""
    if ref.startswith("timm:"):
        return hashlib.sha256(ref.encode()).hexdigest()  # its weights file is a param
    dep = ref_stage(ref)
    path = pipe.ref_path(ref)
    if dep is not None:
        outs = (read_stamp(pipe.out / dep) or {}).get("outputs", {})
        file = ref_file(ref)
        if file is not None:
            return outs.get(file) or sha(path)
        return hashlib.sha256(json.dumps(outs, sort_keys=True).encode()).hexdigest()
    if path.is_dir():  # an external run folder: its weights and config
        parts = [sha(p) for p in (path / "model.safetensors", path / "config.json") if p.exists()]
        if not parts:
            raise UserError(path, "is a folder without model.safetensors or config.json",
                            "point the input at a file or a run folder")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()
    return sha(path)


def stage_key(pipe: Pipeline, stage: Stage) -> tuple[str, dict]:
    inputs = {k: input_hash(pipe, ref) for k, ref in sorted(stage.inputs.items())}
    torch_stage = stage.kind in KINDS and KINDS[stage.kind].torch
    blob = {"kind": stage.kind, "params": stage.params, "inputs": inputs,
            "device": pipe.device if torch_stage else None,
            "code": code_version(stage.kind == COMPARE)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24], inputs


def up_to_date(folder: Path, key: str, outputs: tuple[str, ...]) -> bool:
    stamp = read_stamp(folder)
    if not stamp or stamp.get("key") != key:
        return False
    recorded = stamp.get("outputs", {})
    for name in outputs:
        p = folder / name
        if not p.exists() or recorded.get(name) != sha(p):
            return False
    return True


def plan(pipe: Pipeline) -> list[tuple[str, str, bool]]:
    """(stage, kind, up to date) for every stage, as ``--dry-run`` lists them."""
    rows = []
    for name, stage in pipe.stages.items():
        ready = all(pipe.ref_path(r).exists() for r in stage.inputs.values())
        key = stage_key(pipe, stage)[0] if ready else ""
        rows.append((name, stage.kind, bool(key) and up_to_date(pipe.out / name, key, outputs_of(stage))))
    return rows


def run(pipe: Pipeline, force: bool = False, start: list[str] | None = None, quiet: bool = False) -> dict:
    """Run every stage that is not up to date; returns {stage: "ran" | "skipped"}."""
    forced = set(pipe.stages) if force else set()
    if start:
        names = set()
        for s in start:
            hit = {n for n in pipe.stages if n == s or n.startswith(s + ".")}
            if not hit:
                raise UserError("--from", f"no stage '{s}'", f"use one of {', '.join(_top_names(pipe))}")
            names |= hit
        forced |= pipe.downstream(names)
    several = pipe.launcher is not None and pipe.launcher.nnodes > 1
    if several and pipe.launcher.node_rank > 0:
        from .nodes import Nodes

        return Nodes.follow(pipe, quiet)  # node 0 checks and writes the stage folders
    check_owned(pipe)
    logs = claim_folder(pipe.out / "logs", "logs")
    if several:
        from .nodes import Nodes

        lock_folder(logs, "pipeline output")
        torch_stages = [s.name for s in pipe.stages.values() if s.kind in KINDS and KINDS[s.kind].torch]
        with Nodes.lead(pipe, torch_stages) as nodes:
            return _run_stages(pipe, forced, logs, quiet, nodes)
    lock_folder(logs, "pipeline output")  # one `datl run` per output folder at a time
    return _run_stages(pipe, forced, logs, quiet, None)


def _run_stages(pipe: Pipeline, forced: set[str], logs: Path, quiet: bool, nodes) -> dict:
    cache = pipe.out / "cache"
    done: dict[str, str] = {}
    t_all = time.time()
    total = len(pipe.stages)
    for i, stage in enumerate(pipe.stages.values(), 1):
        folder = pipe.out / stage.name
        key, inputs = stage_key(pipe, stage)
        outputs = outputs_of(stage)
        tag = f"[{i:>{len(str(total))}}/{total}] {stage.name}"
        if stage.name not in forced and up_to_date(folder, key, outputs):
            done[stage.name] = "skipped"
            if not quiet:
                click.echo(f"{tag}: up to date")
            continue
        resume = _prepare(folder, key, stage, forced)
        log = logs / f"{stage.name}.log"
        t0 = time.time()
        if not quiet:
            click.echo(f"{tag}: running{' (resuming)' if resume else ''} ... log: {log}", nl=False)
        if stage.kind == COMPARE:
            from .report import compare

            with open(log, "w") as f:
                table = compare(pipe, stage, folder)
                f.write(table + "\n")
        else:
            argv = command_line(stage.kind, folder, {k: v if v.startswith("timm:") else str(pipe.ref_path(v))
                                                     for k, v in stage.inputs.items()},
                                stage.params, pipe.device, cache, pipe.launcher, resume)
            watch = announce = None
            if nodes is not None and KINDS[stage.kind].torch:
                nodes.launch(folder, argv)
                watch, announce = nodes.gone, nodes.fail
            _execute(argv, log, stage.name, watch, announce)
        seconds = time.time() - t0
        _write_json(folder / STAMP, {"key": key, "kind": stage.kind, "params": stage.params,
                                      "inputs": {k: {"ref": stage.inputs[k], "sha256": h} for k, h in inputs.items()},
                                      "outputs": {n: sha(folder / n) for n in outputs},
                                      "code": code_version(stage.kind == COMPARE), "seconds": round(seconds, 1)})
        (folder / PENDING).unlink(missing_ok=True)
        done[stage.name] = "ran"
        if not quiet:
            click.echo(f" done in {seconds:.1f} s")
    if not quiet:
        ran = sum(v == "ran" for v in done.values())
        click.echo(f"{ran} stage(s) ran, {total - ran} up to date, in {time.time() - t_all:.0f} s; outputs in {pipe.out}")
    return done


def owned(folder: Path) -> bool:
    """datl made it: its marker, or a stamp or pending key of a datl from before the marker."""
    return any((folder / f).exists() for f in (OWNED, STAMP, PENDING))


def check_owned(pipe: Pipeline) -> None:
    """Before anything runs: every stage folder that exists is datl's, or the run is refused."""
    for name in pipe.stages:
        folder = pipe.out / name
        if folder.exists() and not (folder.is_dir() and owned(folder)):
            raise UserError(folder, f"is in the way of stage '{name}' and was not made by datl (no {OWNED} marker)",
                            "move it away, rename the stage, or choose another out:; datl never deletes what it "
                            "did not make")


def _top_names(pipe: Pipeline) -> list[str]:
    """Names --from accepts: every stage, per-seed stages without their .sN, arms' pretrain.ARM."""
    import re

    return sorted({re.sub(r"\.s\d+$", "", n) for n in pipe.stages})


def _prepare(folder: Path, key: str, stage: Stage, forced: set[str]) -> bool:
    """Empty the folder for a fresh run, or keep it to resume; True to pass --resume."""
    pending = None
    try:
        pending = json.loads((folder / PENDING).read_text()).get("key")
    except (OSError, ValueError):
        pass
    resumable = (stage.kind in KINDS and KINDS[stage.kind].resumes and pending == key and stage.name not in forced
                 and (folder / "state.pt").exists())
    if not resumable and folder.exists():
        if owned(folder):
            (folder / OWNED).touch()  # a stage folder of a datl from before the marker
        remove_owned(folder)  # only a folder datl made; anything else in the way is refused
    claim_folder(folder, f"stage {stage.name}")
    _write_json(folder / PENDING, {"key": key})
    return resumable


def _execute(argv: list[str], log: Path, name: str, watch: Callable[[], str | None] | None = None,
             announce: Callable[[str], None] | None = None) -> None:
    """Run one stage's command with its output in ``log``. ``watch``, asked every second
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
        click.echo(" stopped", err=True)
        raise StageFailed(name, 1, reason, log)
    if proc.returncode != 0:
        click.echo(" failed", err=True)
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


def _wait(proc: subprocess.Popen, watch: Callable[[], str | None] | None,
          announce: Callable[[str], None] | None) -> str | None:
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
        super().__init__(f"stage '{name}' failed (exit {rc}): {line}; fix: see {log}")
        self.rc = rc
