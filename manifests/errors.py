"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad flag, missing or malformed
file, mismatched classes). Every CLI turns it into exit code 2 and ONE line on
stderr that names the file, the problem and the fix. Anything else is a bug.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input. ``str(err)`` is the one line shown to the user."""

    def __init__(self, where: object, problem: str, fix: str | None = None):
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        text = f"{self.where}: {problem}"
        if fix:
            text += f"; fix: {fix}"
        super().__init__(" ".join(text.split()))  # always one line


class RunFailed(Exception):
    """A run that cannot go on although its input was valid (e.g. the loss diverged). Exit code 1
    and one line: what happened and what to do; anything worth keeping is saved first."""

    def __init__(self, where: object, problem: str, fix: str):
        super().__init__(" ".join(f"{where}: {problem}; fix: {fix}".split()))


class ManifestError(UserError):
    """A manifest that does not meet the contract in DESIGN.md."""
