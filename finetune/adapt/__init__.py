"""Domain-adaptation losses for ``finetune --adapt``, one method per file.

A method is a :data:`pretrain.train.LossHook`: called every training step with the
network, the labeled batch, its labels and the training progress in [0, 1], it returns
an extra loss added to the cross-entropy. ``none`` adds nothing. The methods themselves
(confusion, dann, mmd, jmmd, jan-a) arrive with their own issue.
"""
from __future__ import annotations

from manifests import UserError

METHODS: dict[str, object] = {"none": None}


def make(name: str):
    if name not in METHODS:
        raise UserError("--adapt", f"unknown method '{name}'", f"pass one of {', '.join(METHODS)}")
    return METHODS[name]
