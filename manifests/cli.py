"""How every datl command runs: exit 0 on success; 2 with ONE line on stderr for a
user mistake (no traceback); 1 with a traceback only for a genuine bug."""
from __future__ import annotations

import sys

import click

from .errors import UserError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_cli(command: click.Command, prog_name: str, args: list[str] | None = None) -> None:
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
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: no partial output was written", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)

