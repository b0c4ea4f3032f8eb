"""How every datl command runs: exit codes, signals, and where the output goes.

Invariants (the CLI contract, docs/DESIGN.md):

- exit 0 on success; 2 with ONE line on stderr for a user mistake (no traceback); 1 with a
  traceback only for a genuine bug (or one line for a :class:`RunFailed`);
- SIGTERM and SIGHUP stop the command like Ctrl-C: every ``finally`` runs, so no partial
  output is left and a stage's child process is stopped;
- library code logs (``logging.getLogger(__name__)``, under the ``datl`` logger) and
  commands print: :func:`run_cli` sends the ``datl`` logger's INFO records to stdout and
  WARNING and above to stderr, the message alone, so a command's output is what its code
  logs, word for word. A library caller configures logging as it likes.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from .errors import RunFailed, UserError, _one_line

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LOGGER = "datl"


class Stopped(BaseException):
    """SIGTERM or SIGHUP (a scheduler, a closed terminal), raised where the main process is, so
    that every ``finally`` runs: temporary files go, a stage's child is stopped. Not an
    Exception, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_MAIN_PID = [0]


def _stopped(signum, frame) -> None:
    if os.getpid() != _MAIN_PID[0]:  # a forked worker (DataLoader, dedup's pool): just go
        os._exit(128 + signum)
    raise Stopped(signum)


class Console(logging.Handler):
    """The command's terminal: INFO to stdout, WARNING and above to stderr, the message as it
    is. A record logged with ``extra={"end": ""}`` leaves its line open (``datl run``'s
    "running ... done in 3 s")."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(record.getMessage() + getattr(record, "end", "\n"))
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


def console_logging() -> None:
    """Route the ``datl`` logger to the terminal (once per process)."""
    log = logging.getLogger(LOGGER)
    if not any(isinstance(h, Console) for h in log.handlers):
        log.addHandler(Console())
    log.setLevel(logging.INFO)
    log.propagate = False


def run_cli(command: click.Command, prog_name: str, args: list[str] | None = None) -> None:
    import signal

    _MAIN_PID[0] = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stopped)
    console_logging()
    try:
        rc = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else prog_name
        click.echo(f"error: {where}: {_one_line(e.format_message())}; fix: see '{where} --help'", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {prog_name}: {_one_line(e.format_message())}", err=True)
        sys.exit(2)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RunFailed as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except OSError as e:  # the file system refused (not a folder, permission, disk full): the user's to fix
        where = e.filename or prog_name
        problem = e.strerror or str(e)
        click.echo(
            f"error: {where}: {_one_line(problem)} (errno {e.errno}); fix: check that the output's folder "
            f"exists, is a folder, is writable and has free space",
            err=True,
        )
        sys.exit(2)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except Stopped as e:
        click.echo(f"stopped by signal {e.signum}: no partial output was written", err=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        click.echo("interrupted: no partial output was written", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
