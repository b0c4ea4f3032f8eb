"""The two errors every layer raises, and how a command shows them.

Invariant: a :class:`UserError` is a mistake the user can fix (bad flag, missing or
malformed file, mismatched classes); every command turns it into exit code 2 and ONE line
on stderr that names the file, the problem and the fix. A :class:`RunFailed` is a run
that cannot go on although its input was valid: exit code 1 and one line. Anything else
is a bug (exit 1 with a traceback).
"""

from __future__ import annotations


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class UserError(Exception):
    """A mistake in the user's input. ``str(err)`` is the one line shown to the user."""

    def __init__(self, where: object, problem: str, fix: str | None = None):
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        text = f"{self.where}: {problem}"
        if fix:
            text += f"; fix: {fix}"
        super().__init__(_one_line(text))


class RunFailed(Exception):
    """A run that cannot go on although its input was valid (e.g. the loss diverged): what
    happened and what to do, in one line; anything worth keeping is saved first."""

    def __init__(self, where: object, problem: str, fix: str):
        super().__init__(_one_line(f"{where}: {problem}; fix: {fix}"))
