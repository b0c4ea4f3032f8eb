"""The method registry of ``finetune --adapt``: name -> method class.

A method is one file in this folder holding an ``nn.Module`` subclass of :class:`Method`,
decorated ``@register("name")``. Its forward takes the bottleneck features and logits
of the labeled (s) and unlabeled (t) batch and the fraction of total steps done, and
returns the scalar transfer loss. It builds itself from the run's config
(:meth:`Method.build`). The training recipe (learning-rate annealing, trade-off ramp) is
the same for every method and lives in the run's config, not here, so that switching
``--adapt`` changes only the transfer loss. Adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

REGISTRY: dict[str, type[Method]] = {}


class Method(nn.Module):
    """Base of the transfer losses. ``name`` is set by :func:`register`."""

    name = ""

    @classmethod
    def build(cls, width: int, classes: int, cfg: Any) -> Method:
        """The method for a network whose bottleneck is ``width`` wide with ``classes`` outputs;
        ``cfg`` is the FinetuneConfig (for method options such as ``mmd_estimator``)."""
        return cls(width)


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in REGISTRY:
            raise RuntimeError(f"two --adapt methods are named {name!r}")
        REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def discover() -> dict[str, type[Method]]:
    """Import every module of this package (each once: Python caches them), so each registers
    its methods; some may have been imported, and registered, before this is called."""
    package = importlib.import_module(__package__)
    for m in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{m.name}")
    return REGISTRY
