"""The model spec every ``--model`` / ``--init`` / pipeline model input takes, parsed once.

A spec is either a RUN_DIR (a run folder of ``pretrain`` or ``finetune``) or
``timm:ARCH``: a timm architecture whose weights come from a local file (``--weights``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

TIMM = "timm:"


@dataclass(frozen=True)
class ModelSpec:
    text: str  # as given
    arch: str | None = None  # timm:ARCH -> ARCH
    run_dir: str | None = None  # a run folder

    @property
    def is_timm(self) -> bool:
        return self.arch is not None


def is_timm_spec(spec: str) -> bool:
    """Whether ``spec`` names a timm architecture (``timm:ARCH``) rather than a path."""
    return spec.startswith(TIMM)


def parse_model_spec(spec: str, flag: str = "--model") -> ModelSpec:
    """``timm:ARCH`` or a RUN_DIR; ``timm:`` with no architecture is a one-line UserError."""
    if is_timm_spec(spec):
        arch = spec[len(TIMM) :]
        if not arch:
            raise UserError(flag, f"'{spec}' names no architecture", "pass timm:ARCH, e.g. timm:mobilenetv2_100")
        return ModelSpec(spec, arch=arch)
    return ModelSpec(spec, run_dir=spec)
