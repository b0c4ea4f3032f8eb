"""Domain-adaptation methods for ``finetune --adapt``, one method per file, each registered
by name in :mod:`.registry` (adding a method is adding one file).

Each method is an ``nn.Module`` whose forward takes the bottleneck features and logits
of the labeled (s) and unlabeled (t) batch and the fraction of total steps done, and
returns the scalar transfer loss; :class:`net.TwoDomainStep` adds it, times
``--trade-off``, to the labeled cross-entropy.

| method    | file          | paper |
| confusion | confusion.py  | Tzeng et al. 2015, domain confusion (``--soft-labels``: SoftLabelLoss) |
| dann      | dann.py       | Ganin & Lempitsky 2015, gradient reversal |
| mmd       | mmd.py        | Long et al. 2015 (DAN), multi-kernel MMD |
| jmmd      | jmmd.py       | Long et al. 2017 (JAN), joint MMD |
| jan-a     | jmmd.py       | Long et al. 2017 (JAN-A), adversarial JMMD |
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import Method

NONE = "none"
_DECLARED = re.compile(r'^@register\("([^"]+)"\)', re.M)


def declared() -> tuple[str, ...]:
    """The method names as this folder's files declare them (``@register("name")``), read as
    text in file order, so that ``finetune --help`` and its flag check import no torch (a test
    checks they are exactly the names :func:`registry.discover` registers)."""
    return tuple(n for f in sorted(Path(__file__).parent.glob("*.py")) for n in _DECLARED.findall(f.read_text()))


def names() -> tuple[str, ...]:
    """``none`` and every method, in the order of their files."""
    return (NONE, *declared())


def get(name: str) -> type[Method] | None:
    """The method class of ``name``; None for ``none``."""
    from .registry import discover

    return None if name == NONE else discover()[name]
