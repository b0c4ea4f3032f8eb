"""How every datl command is declared and run.

- :func:`run_cli`: exit 0 on success; 2 with ONE line on stderr for a user mistake
  (no traceback); 1 with a traceback only for a genuine bug.
- :func:`opt` and :func:`options_from`: each option is declared ONCE, as a field of the
  stage's config dataclass (default, help, choices, flag); the click options are made
  from the fields. So the command line, the library (``run(Config(...))``) and
  ``pipeline.yaml``'s parameter check (which reads the click command) cannot disagree.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from .errors import RunFailed, UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- declaring options -------------------------------------------------------------------
def opt(default: Any = dataclasses.MISSING, *, help: str = "", flag: str | None = None,  # noqa: A002
        short: str | None = None, choices: Iterable[str] | None = None, negatable: bool = False,
        noun: str = "value", required: bool | None = None, show_default: bool | str = True,
        default_factory: Callable[[], Any] | None = None, cli: bool = True, bounds: str | None = None) -> Any:
    """A config field that is also a command-line option.

    ``flag`` overrides the flag name (default: ``--field-name``); ``short`` adds e.g. ``-o``;
    ``choices`` makes a :class:`OneOf` (``noun`` names a choice in its error); a bool field is a flag (``negatable``: ``--x/--no-x``);
    a field without a default is a required option; ``cli=False`` keeps it library-only.
    ``bounds`` (numbers): the allowed interval, e.g. ``"(0, 1]"`` or ``"[1, inf)"``; every float
    option refuses nan and inf whatever its bounds.
    """
    meta = {"help": help, "flag": flag, "short": short, "choices": tuple(choices) if choices else None, "noun": noun,
            "negatable": negatable, "required": required, "show_default": show_default, "cli": cli,
            "bounds": bounds}
    kw: dict[str, Any] = {"metadata": {"cli": meta}}
    if default_factory is not None:
        kw["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(**kw)


class OneOf(click.Choice):
    """click.Choice whose error names the unknown value and every choice:
    ``unknown method 'coral' (pass one of none, confusion, ...)``."""

    def __init__(self, choices: Iterable[str], noun: str = "value"):
        super().__init__(list(choices))
        self.noun = noun

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.choices:
            return value
        self.fail(f"unknown {self.noun} '{value}' (pass one of {', '.join(self.choices)})", param, ctx)


class Number(click.ParamType):
    """An int or float option checked at the command line, before any work: finite, and inside
    ``bounds`` ("(0, 1]", "[1, inf)", ...); the error names the value and the interval."""

    def __init__(self, kind: type, bounds: str | None = None):
        self.kind, self.bounds = kind, bounds
        self.name = "integer" if kind is int else "number"
        if bounds:
            lo, hi = (b.strip() for b in bounds[1:-1].split(","))
            self.lo, self.hi = float(lo), float(hi)
            self.lo_open, self.hi_open = bounds[0] == "(", bounds[-1] == ")"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        try:
            v = self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        if not math.isfinite(v):
            self.fail(f"'{value}' is not a finite number", param, ctx)
        if self.bounds:
            below = v < self.lo or (self.lo_open and v == self.lo)
            above = v > self.hi or (self.hi_open and v == self.hi)
            if below or above:
                self.fail(f"{value} is outside {self.bounds} (pass a number in {self.bounds})", param, ctx)
        return v


def _base_type(hint: Any) -> Any:
    """``float | None`` -> float; ``str`` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _option(f: dataclasses.Field, hint: Any) -> click.Option | None:
    meta = f.metadata.get("cli")
    if meta is None or not meta["cli"]:
        return None
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    decls = [flag] + ([meta["short"]] if meta["short"] else [])
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    kind = _base_type(hint)
    kw: dict[str, Any] = {"help": meta["help"]}
    if kind is bool:
        if meta["negatable"]:
            decls = [f"{flag}/--no-{flag[2:]}"] + decls[1:]
            kw.update(default=default, show_default=True)
        else:
            kw.update(is_flag=True, default=bool(default))
    else:
        if meta["choices"]:
            kw["type"] = OneOf(meta["choices"], meta["noun"])
        elif kind in (int, float):
            kw["type"] = Number(kind, meta["bounds"])
        else:
            kw["type"] = kind
        required = meta["required"] if meta["required"] is not None else not has_default
        kw["required"] = required
        if not required:
            kw["default"] = default
            kw["show_default"] = meta["show_default"] if default is not None else False
    return click.Option([f.name, *decls], **kw)


def options_from(config: type, skip: Iterable[str] = ()) -> Callable:
    """Decorator: add one click option per field of the dataclass ``config`` (in field order),
    except those in ``skip`` and those declared ``cli=False``."""
    hints = typing.get_type_hints(config)
    skipped = set(skip)
    made = [o for f in dataclasses.fields(config) if f.name not in skipped
            for o in [_option(f, hints[f.name])] if o is not None]

    def decorate(command: Callable) -> Callable:
        params = getattr(command, "__click_params__", [])
        command.__click_params__ = params + list(reversed(made))  # click reverses decorator order
        return command

    return decorate


# -- running a command ---------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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


def run_cli(command: click.Command, prog_name: str, args: list[str] | None = None) -> None:
    import signal

    _MAIN_PID[0] = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stopped)
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
        click.echo(f"error: {where}: {_one_line(problem)} (errno {e.errno}); fix: check that the output's folder "
                   f"exists, is a folder, is writable and has free space", err=True)
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
