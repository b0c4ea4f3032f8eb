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

import hashlib
import json
import logging
import os
import re
import time
from functools import cache, lru_cache
from pathlib import Path

from datl.core.errors import UserError
from datl.core.files import OWNED, claim_folder, file_sha256, lock_folder, read_json, remove_owned, write_json
from datl.core.specs import is_timm_spec

from .pipeline import COMPARE, Pipeline, Stage, ref_file, ref_stage
from .process import StageFailed, execute
from .stages import KINDS, command_line

logger = logging.getLogger(__name__)

STAMP = "stamp.json"
PENDING = "pending.json"
# The code the stages run: a change to any of it reruns them. The compare stage also runs
# the runner's own modules (compare.py, stats.py, ...): every module directly in datl/.
STAGE_CODE = (
    "datl.core",
    "datl.manifests",
    "datl.neural",
    "datl.curate",
    "datl.pretrain",
    "datl.finetune",
    "datl.demo",
    "datl.commands",
)


def _code_files(name: str) -> list[Path]:
    """The .py files of a module, or of a package and everything below it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec.submodule_search_locations:
        return sorted(f for root in spec.submodule_search_locations for f in Path(root).rglob("*.py"))
    return [Path(spec.origin)]


@cache
def code_version(with_runner: bool = False) -> str:
    """sha256 of the stage code's sources (and with ``with_runner``, of the modules directly
    in datl/): an edit to any of them reruns the stages that run it."""
    import importlib.util

    files = [f for name in STAGE_CODE for f in _code_files(name)]
    if with_runner:
        files += sorted(Path(importlib.util.find_spec("datl").origin).parent.glob("*.py"))
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(f.name.encode())
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


def read_stamp(folder: Path) -> dict | None:
    return read_json(folder / STAMP)


def outputs_of(stage: Stage) -> tuple[str, ...]:
    return KINDS[stage.kind].outputs_for(stage.params) if stage.kind in KINDS else ("results.json", "report.md")


def input_hash(pipe: Pipeline, ref: str) -> str:
    """Content hash of one input: a file's sha256, or an upstream stage's recorded outputs."""
    if is_timm_spec(ref):
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
            raise UserError(
                path,
                "is a folder without model.safetensors or config.json",
                "point the input at a file or a run folder",
            )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()
    return sha(path)


def stage_key(pipe: Pipeline, stage: Stage) -> tuple[str, dict]:
    inputs = {k: input_hash(pipe, ref) for k, ref in sorted(stage.inputs.items())}
    torch_stage = stage.kind in KINDS and KINDS[stage.kind].torch
    blob = {
        "kind": stage.kind,
        "params": stage.params,
        "inputs": inputs,
        "device": pipe.device if torch_stage else None,
        "code": code_version(stage.kind == COMPARE),
    }
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
                logger.info(f"{tag}: up to date")
            continue
        resume, removed = _prepare(folder, key, stage, forced)
        log = logs / f"{stage.name}.log"
        t0 = time.time()
        if not quiet:
            how = (
                " (resuming)" if resume else (f" (replacing the {removed} file(s) of its last run)" if removed else "")
            )
            logger.info(f"{tag}: running{how} ... log: {log}", extra={"end": ""})
        if stage.kind == COMPARE:
            from .compare import compare

            with open(log, "w") as f:
                table = compare(pipe, stage, folder)
                f.write(table + "\n")
        else:
            argv = command_line(
                stage.kind,
                folder,
                {k: v if is_timm_spec(v) else str(pipe.ref_path(v)) for k, v in stage.inputs.items()},
                stage.params,
                pipe.device,
                cache,
                pipe.launcher,
                resume,
            )
            watch = announce = None
            if nodes is not None and KINDS[stage.kind].torch:
                nodes.launch(folder, argv)
                watch, announce = nodes.gone, nodes.end
            try:
                execute(argv, log, stage.name, watch, announce, ends_line=not quiet)
            except StageFailed as e:
                if e.rc == 2 and not resume:  # a user mistake the stage refused: leave no half folder behind
                    remove_owned(folder)
                raise
        seconds = time.time() - t0
        write_json(
            folder / STAMP,
            {
                "key": key,
                "kind": stage.kind,
                "params": stage.params,
                "inputs": {k: {"ref": stage.inputs[k], "sha256": h} for k, h in inputs.items()},
                "outputs": {n: sha(folder / n) for n in outputs},
                "files": stage_files(folder),  # what a rerun may delete: nothing else in the folder
                "code": code_version(stage.kind == COMPARE),
                "seconds": round(seconds, 1),
            },
        )
        (folder / PENDING).unlink(missing_ok=True)
        done[stage.name] = "ran"
        if not quiet:
            logger.info(f" done in {seconds:.1f} s")
    if not quiet:
        ran = sum(v == "ran" for v in done.values())
        logger.info(
            f"{ran} stage(s) ran, {total - ran} up to date, in {time.time() - t_all:.0f} s; outputs in {pipe.out}"
        )
    return done


def owned(folder: Path) -> bool:
    """datl made it: its marker, or a stamp or pending key of a datl from before the marker."""
    return any((folder / f).exists() for f in (OWNED, STAMP, PENDING))


def check_owned(pipe: Pipeline) -> None:
    """Before anything runs: every stage folder that exists is datl's, or the run is refused."""
    for name in pipe.stages:
        folder = pipe.out / name
        if folder.exists() and not (folder.is_dir() and owned(folder)):
            raise UserError(
                folder,
                f"is in the way of stage '{name}' and was not made by datl (no {OWNED} marker)",
                "move it away, rename the stage, or choose another out:; datl never deletes what it did not make",
            )
        foreign = foreign_files(folder)
        if foreign:  # a stage that reruns empties its folder: refused now, before any stage runs
            raise UserError(
                folder / foreign[0],
                f"was not written by datl ({len(foreign)} such file(s) in stage {name}'s folder)",
                "move them out of the stage's folder; datl never deletes what it did not write",
            )


def _top_names(pipe: Pipeline) -> list[str]:
    """Names --from accepts: every stage, per-seed stages without their .sN, arms' pretrain.ARM."""

    return sorted({re.sub(r"\.s\d+$", "", n) for n in pipe.stages})


RUNNER_FILES = {OWNED, STAMP, PENDING}


def stage_files(folder: Path) -> list[str]:
    """Every file in a stage folder (relative, sorted) but the runner's own."""
    return sorted(
        q for p in folder.rglob("*") if p.is_file() and (q := p.relative_to(folder).as_posix()) not in RUNNER_FILES
    )


def foreign_files(folder: Path) -> list[str]:
    """Files in a stage folder that datl did not write: not in the files its stamp records.
    A folder with a pending key and no stamp is a stage that was stopped while it ran: its
    files are that stage's. A stamp from before files were recorded vouches for all of them."""
    if not folder.is_dir():
        return []
    stamp = read_stamp(folder)
    if stamp is None:
        return [] if (folder / PENDING).exists() else stage_files(folder)
    if "files" not in stamp:
        return []
    recorded = set(stamp["files"])
    return [f for f in stage_files(folder) if f not in recorded]


def _prepare(folder: Path, key: str, stage: Stage, forced: set[str]) -> tuple[bool, int]:
    """Empty the folder for a fresh run, or keep it to resume: (pass --resume, files removed).
    Only files datl wrote are removed: a folder that holds one it did not is refused."""
    pending = (read_json(folder / PENDING) or {}).get("key")
    resumable = (
        stage.kind in KINDS
        and KINDS[stage.kind].resumes
        and pending == key
        and stage.name not in forced
        and (folder / "state.pt").exists()
    )
    removed = 0
    if not resumable and folder.exists():
        if owned(folder):
            (folder / OWNED).touch()  # a stage folder of a datl from before the marker
        foreign = foreign_files(folder) if folder.is_dir() else []
        if foreign:
            raise UserError(
                folder / foreign[0],
                f"was not written by datl ({len(foreign)} such file(s) in stage {stage.name}'s folder), and the "
                "stage is about to rerun",
                "move them out of the stage's folder; datl never deletes what it did not write",
            )
        removed = len(stage_files(folder)) if folder.is_dir() else 0
        remove_owned(folder)  # only a folder datl made; anything else in the way is refused
    claim_folder(folder, f"stage {stage.name}")
    write_json(folder / PENDING, {"key": key})
    return resumable, removed
