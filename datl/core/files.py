"""Files and folders, the one way datl writes them.

Invariants:

- every output is written to a temporary file in its destination folder and renamed into
  place (:func:`atomic_output`): an interrupted command never leaves a partial file;
- datl empties or removes only folders it made (they hold the :data:`OWNED` marker), and
  two processes never write one datl folder (:func:`lock_folder`);
- an output that is also an input, or another output, is refused before any work
  (:func:`refuse_clobber`): a user's file is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

OWNED = ".datl-owned"  # the marker in every folder datl creates and may empty or remove
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


# -- atomic outputs -------------------------------------------------------------------
def remove_stale_temporaries(dest: Path) -> int:
    """Delete the temporary files that a killed writer of ``dest`` left behind (SIGKILL
    leaves no chance to clean up): those of this host whose process is gone. A live
    writer's file, or another host's, is left alone. Returns how many were removed."""
    removed = 0
    for tmp in dest.parent.glob(f".{glob.escape(dest.name)}.{_HOST}-*.tmp"):
        try:
            pid = int(tmp.name[len(dest.name) + 2 :].split(".")[0].split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it into place on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    the destination is left as it was: an interrupted stage never leaves a partial file.
    """
    dest = Path(path)
    if dest.parent and not dest.parent.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    tmp = dest.parent / f".{dest.name}.{_HOST}-{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        if os.path.exists(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
    except OSError as e:  # the error names what the user asked for, never datl's temporary file
        named = e.filename is not None and os.path.basename(str(e.filename)) == tmp.name
        if named or tmp.name in str(e):
            words = (e.strerror or str(e)).replace(str(tmp), str(dest)).replace(tmp.name, dest.name)
            raise OSError(e.errno or errno.EIO, words, str(dest)) from None
        raise
    finally:
        with contextlib.suppress(OSError):  # gone already (renamed), or never made
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """``obj`` as JSON with a final newline, written atomically (``sort_keys=False`` keeps the
    order of a dict whose order means something, such as the arms of results.json)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in ``path``, or None when it is missing or not JSON (a file being replaced,
    a node's note not written yet): for files datl writes and reads back itself."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# -- default paths the user did not name ---------------------------------------------
PNG_SOFTWARE = "datl"  # the Software text of every PNG datl draws: how datl knows a plot is its own


def png_metadata() -> dict[str, str]:
    """What every PNG datl draws carries (matplotlib's ``savefig(metadata=...)``)."""
    return {"Software": PNG_SOFTWARE}


def refuse_foreign_default(path: str | os.PathLike, flag: str) -> None:
    """A default output path the user did not name (the plot beside ``--out``) that holds a file
    datl did not draw is refused before any work: writing there would replace the user's file.
    A file the user names is theirs to replace; this is for the ones they did not."""
    p = Path(path)
    if not p.exists():
        return
    if p.is_file():
        with open(p, "rb") as f:
            if b"Software\x00" + PNG_SOFTWARE.encode() in f.read(1 << 16):
                return  # a plot datl drew earlier: replaced like any datl output
    raise UserError(
        p,
        "exists and was not written by datl, and the default output would replace it",
        f"pass {flag} PATH to write it elsewhere, or move the file away",
    )


# -- content hashes -------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_hashes(**paths: str | os.PathLike | None) -> dict[str, str]:
    """{name: sha256} of the input files given (None and folders skipped): a stage output's
    ``inputs`` metadata."""
    return {k: file_sha256(v) for k, v in paths.items() if v is not None and Path(v).is_file()}


def require_file(path: str | os.PathLike, what: str, fix: str) -> Path:
    """A path that must exist, or a one-line UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(p, f"{what} does not exist", fix)
    return p


def refuse_clobber(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]) -> None:
    """An output that is an input, or the same file as another output, is refused before any work."""
    seen: dict[str, str] = {}
    ins = {os.path.realpath(v): k for k, v in inputs.items() if v is not None}
    for flag, path in outputs.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in ins:
            raise UserError(
                flag,
                f"{path} is also the {ins[real]} input: writing it would destroy that input",
                "write the output to another path",
            )
        if real in seen:
            raise UserError(flag, f"{path} is also the {seen[real]} output", "give each output its own path")
        seen[real] = flag


# -- folders datl owns ------------------------------------------------------------------
def check_claimable(path: str | os.PathLike, what: str) -> Path:
    """Refuse what ``claim_folder`` would refuse, touching nothing: for a command that checks its
    output folder before long work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(p, f"is a file, not a folder for the {what}", "pass another --out")
    if p.is_dir() and not (p / OWNED).exists() and any(p.iterdir()):
        raise UserError(
            p,
            f"is a folder datl did not create (no {OWNED} marker) and it is not empty",
            f"pass a new or empty folder for the {what}; datl never writes into or deletes other folders",
        )
    return p


def claim_folder(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` as a datl folder (with the OWNED marker), or accept it if datl made it or
    it is empty. A non-empty folder datl did not make is refused: nothing in it is touched."""
    p = check_claimable(path, what)
    p.mkdir(parents=True, exist_ok=True)
    (p / OWNED).touch()
    return p


_LOCKS: dict[str, int] = {}  # folder -> open descriptor of its marker, flock'ed until this process ends


def lock_folder(path: str | os.PathLike, what: str) -> None:
    """Hold an exclusive lock on a datl folder (on its OWNED marker) for the rest of this
    process, so two runs can never write one folder; the kernel releases it however the
    process ends (SIGKILL included). A folder another process holds is refused."""
    import fcntl

    p = Path(path)
    key = os.path.realpath(p)
    if key in _LOCKS:
        return
    fd = os.open(p / OWNED, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            p,
            f"is the {what} of another datl process that is still running",
            "wait for it to finish, or pass another output folder",
        ) from None
    _LOCKS[key] = fd


def remove_owned(path: str | os.PathLike) -> None:
    """Delete a folder datl made (it holds the OWNED marker); refuse any other."""
    import shutil

    p = Path(path)
    if not p.exists():
        return
    if not p.is_dir() or not (p / OWNED).exists():
        raise UserError(
            p,
            f"exists and was not made by datl (no {OWNED} marker)",
            "move it away or choose another output folder; datl never deletes what it did not make",
        )
    shutil.rmtree(p)
