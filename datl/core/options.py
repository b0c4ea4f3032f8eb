"""Options, declared once.

Invariant: each option of a stage is ONE field of the stage's config dataclass
(:func:`opt`: default, help, choices, bounds, flag). The click options are made from the
fields (:func:`options_from`), and :func:`validate` checks a config's values against the
same declarations, so the command line, the library (``run(Config(...))``) and
``pipeline.yaml`` (whose check converts values through the click options) accept and
refuse exactly the same values, with the same words (:func:`number_problem`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda")  # every --device: auto takes CUDA when present


# -- declaring options -------------------------------------------------------------------
def opt(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",  # noqa: A002
    flag: str | None = None,
    short: str | None = None,
    aliases: Iterable[str] = (),
    choices: Iterable[str] | None = None,
    negatable: bool = False,
    noun: str = "value",
    required: bool | None = None,
    show_default: bool | str = True,
    default_factory: Callable[[], Any] | None = None,
    cli: bool = True,
    bounds: str | None = None,
    output: bool = False,
) -> Any:
    """A config field that is also a command-line option.

    ``flag`` overrides the flag name (default: ``--field-name``); ``short`` adds e.g. ``-o``;
    ``aliases`` more long names (a renamed flag's old name keeps working); ``choices`` makes
    a :class:`OneOf` (``noun`` names a choice in its error); a bool field is a flag
    (``negatable``: ``--x/--no-x``); a field without a default is a required option;
    ``cli=False`` keeps it library-only. ``bounds`` (numbers): the allowed interval, e.g.
    ``"(0, 1]"`` or ``"[1, inf)"``; every number option refuses nan and inf whatever its bounds.
    ``output``: the option names a file the command writes (``datl run`` keeps it inside the
    stage's folder).
    """
    meta = {
        "help": help,
        "flag": flag,
        "short": short,
        "aliases": tuple(aliases),
        "choices": tuple(choices) if choices else None,
        "noun": noun,
        "negatable": negatable,
        "required": required,
        "show_default": show_default,
        "cli": cli,
        "bounds": Bounds.parse(bounds) if bounds else None,
        "output": output,
    }
    kw: dict[str, Any] = {"metadata": {"cli": meta}}
    if default_factory is not None:
        kw["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(**kw)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """An interval such as ``(0, 1]`` or ``[1, inf)``."""

    text: str
    lo: float
    hi: float
    lo_open: bool
    hi_open: bool

    @classmethod
    def parse(cls, text: str) -> Bounds:
        lo, hi = (b.strip() for b in text[1:-1].split(","))
        return cls(text, float(lo), float(hi), text[0] == "(", text[-1] == ")")

    def __contains__(self, v: float) -> bool:
        below = v < self.lo or (self.lo_open and v == self.lo)
        above = v > self.hi or (self.hi_open and v == self.hi)
        return not (below or above)


def number_problem(value: Any, kind: type, bounds: Bounds | None) -> str | None:
    """What is wrong with ``value`` as an option of type ``kind`` (int or float) within
    ``bounds``, in words; None if nothing. THE check of every number option, wherever the
    value comes from."""
    noun = "an integer" if kind is int else "a number"
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        return f"'{value}' is not {noun}"
    try:
        v = kind(value)
    except (TypeError, ValueError, OverflowError):
        return f"'{value}' is not {noun}"
    if not math.isfinite(v):
        return f"'{value}' is not a finite number"
    if bounds is not None and v not in bounds:
        return f"{value} is outside {bounds.text} (pass a number in {bounds.text})"
    return None


def choice_problem(value: Any, choices: tuple[str, ...], noun: str) -> str | None:
    if value in choices:
        return None
    return f"unknown {noun} '{value}' (pass one of {', '.join(choices)})"


class OneOf(click.Choice):
    """click.Choice whose error names the unknown value and every choice:
    ``unknown method 'coral' (pass one of none, confusion, ...)``."""

    def __init__(self, choices: Iterable[str], noun: str = "value"):
        super().__init__(list(choices))
        self.noun = noun

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        problem = choice_problem(value, tuple(self.choices), self.noun)
        if problem:
            self.fail(problem, param, ctx)
        return value


class Number(click.ParamType):
    """An int or float option checked at the command line, before any work, by
    :func:`number_problem`."""

    def __init__(self, kind: type, bounds: str | Bounds | None = None):
        self.kind = kind
        self.bounds = Bounds.parse(bounds) if isinstance(bounds, str) else bounds
        self.name = "integer" if kind is int else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        problem = number_problem(value, self.kind, self.bounds)
        if problem:
            self.fail(problem, param, ctx)
        return self.kind(value)


def _base_type(hint: Any) -> Any:
    """``float | None`` -> float; ``str`` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def flag_of(f: dataclasses.Field) -> str:
    """A field's command-line flag: ``--field-name`` unless declared otherwise."""
    meta = f.metadata.get("cli") or {}
    return meta.get("flag") or "--" + f.name.replace("_", "-")


def _option(f: dataclasses.Field, hint: Any) -> click.Option | None:
    meta = f.metadata.get("cli")
    if meta is None or not meta["cli"]:
        return None
    flag = flag_of(f)
    decls = [flag, *meta["aliases"]] + ([meta["short"]] if meta["short"] else [])
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    default = (
        f.default
        if f.default is not dataclasses.MISSING
        else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    )
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
    option = click.Option([f.name, *decls], **kw)
    option.writes_file = meta["output"]  # read by datl run's parameter check (datl/pipeline.py)
    return option


def options_from(config: type, skip: Iterable[str] = ()) -> Callable:
    """Decorator: add one click option per field of the dataclass ``config``, the required
    ones first, each group in field order, except those in ``skip`` and those declared
    ``cli=False``."""
    hints = typing.get_type_hints(config)
    skipped = set(skip)
    made = [
        o
        for f in dataclasses.fields(config)
        if f.name not in skipped
        for o in [_option(f, hints[f.name])]
        if o is not None
    ]
    made = [o for o in made if o.required] + [o for o in made if not o.required]

    def decorate(command: Callable) -> Callable:
        params = getattr(command, "__click_params__", [])
        command.__click_params__ = params + list(reversed(made))  # click reverses decorator order
        return command

    return decorate


# -- checking a config --------------------------------------------------------------------
def validate(cfg: Any) -> None:
    """Check every declared option of the config ``cfg`` against its declaration (type,
    finiteness, bounds, choices), as the command line does: a library caller's
    ``Config(lr=-1)`` is refused like ``--lr -1``. Raises a one-line UserError naming the flag."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        meta = f.metadata.get("cli")
        if meta is None:
            continue
        value = getattr(cfg, f.name)
        hint = hints[f.name]
        optional = _base_type(hint) is not hint  # `X | None`
        if value is None:
            if optional or not meta["cli"]:
                continue
            raise UserError(flag_of(f), "is required", f"pass {flag_of(f)}")
        kind = _base_type(hint)
        problem = None
        if meta["choices"]:
            problem = choice_problem(value, meta["choices"], meta["noun"])
        elif kind in (int, float):
            problem = number_problem(value, kind, meta["bounds"])
        elif kind is bool and not isinstance(value, bool):
            problem = f"'{value}' is not true or false"
        if problem:
            raise UserError(flag_of(f), problem, f"see {flag_of(f)} in the command's --help")
