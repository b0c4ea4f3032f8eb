"""Run folders, written by ``pretrain`` and ``finetune``:

- ``model.safetensors``: the weights (never pickled);
- ``config.json``: timm arch, classes, image size, in_chans, mean/std, params, the
  training class prior (P_s(y) of the manifest it was trained on), and ``bottleneck``
  (the width of the bottleneck layer of a ``finetune --adapt`` run; null for a plain model);
- ``metrics.jsonl``, and ``state.pt`` for ``--resume`` (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from datl.core.errors import UserError
from datl.core.files import atomic_output, write_json
from datl.manifests.images import MAX_SIDE

from ..modeling import AdaptNet, create_model, default_norm, unwrap

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"
METRICS = "metrics.jsonl"


@dataclass
class ModelConfig:
    """What a run folder says about its model: enough to rebuild it and feed it images."""

    arch: str
    classes: list[str]
    image_size: list[int]  # [height, width]
    in_chans: int
    mean: list[float]
    std: list[float]
    num_features: int = 0
    class_prior: list[float] | None = None  # class frequencies of the training manifest (multi-label:
    # the share of images carrying each label; they need not sum to 1)
    params: dict[str, Any] = field(default_factory=dict)
    bottleneck: int | None = None  # an AdaptNet of this bottleneck width (finetune --adapt); None: plain timm
    multi_label: bool = False  # a sigmoid classifier trained on label sets (its outputs are per-label logits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def new_model(
    arch: str,
    classes: list[str],
    image_size: tuple[int, int],
    in_chans: int,
    params: dict[str, Any],
    class_prior: list[float] | None = None,
    multi_label: bool = False,
) -> tuple[nn.Module, ModelConfig]:
    """A randomly initialised timm model and the config that describes it (ImageNet mean/std)."""
    model = create_model(arch, len(classes), in_chans)
    mean, std = default_norm(in_chans)
    return model, ModelConfig(
        arch=arch,
        classes=classes,
        image_size=list(image_size),
        in_chans=in_chans,
        mean=mean,
        std=std,
        num_features=int(model.num_features),
        class_prior=class_prior,
        params=params,
        multi_label=multi_label,
    )


def save_run(run_dir: str | os.PathLike, model: nn.Module, config: ModelConfig) -> None:
    """Write model.safetensors and config.json atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    with atomic_output(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(run_dir / CONFIG, asdict(config))


def read_config(run_dir: str | os.PathLike) -> ModelConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            run_dir, "checkpoint folder does not exist", "pass a run folder written by `pretrain` or `finetune`"
        )
    for name in (CONFIG, WEIGHTS):
        if not (run_dir / name).exists():
            raise UserError(
                run_dir,
                f"checkpoint folder is missing {name}",
                "pass a finished run folder of `pretrain`/`finetune` (or --resume the run)",
            )
    try:
        data = json.loads((run_dir / CONFIG).read_text())
        cfg = ModelConfig(**{k: v for k, v in data.items() if k in ModelConfig.__dataclass_fields__})
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(run_dir / CONFIG, f"is not a valid run config ({e})", "rerun the stage that wrote it") from None
    size = cfg.image_size
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in size)):
        raise UserError(
            run_dir / CONFIG,
            f"says image_size {size}: not [height, width] within 1..{MAX_SIDE}",
            f"rerun the stage that wrote it (a model reads images of at most {MAX_SIDE} x {MAX_SIDE} pixels)",
        )
    return cfg


def load_run(run_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model of a run folder with its weights."""
    from safetensors.torch import load_file

    cfg = read_config(run_dir)
    model = create_model(cfg.arch, cfg.num_classes, cfg.in_chans)
    if cfg.bottleneck is not None:
        model = AdaptNet(model, cfg.num_classes, cfg.bottleneck)
    weights = Path(run_dir) / WEIGHTS
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as e:  # noqa: BLE001 - safetensors' own error for a truncated or foreign file
        raise UserError(
            weights,
            f"cannot be read as safetensors weights ({type(e).__name__}: {str(e)[:120]})",
            "rerun the stage that wrote the run folder",
        ) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape: weights and config.json of different runs
        raise UserError(
            weights,
            f"does not fit the model its config.json describes ({cfg.arch}, "
            f"{cfg.num_classes} classes): {str(e).splitlines()[-1].strip()[:160]}",
            "the weights and config.json come from different runs: rerun the stage that wrote them",
        ) from None
    if missing or unexpected:
        raise UserError(
            Path(run_dir) / WEIGHTS,
            f"does not match arch {cfg.arch} ({len(missing)} missing, {len(unexpected)} unexpected keys)",
            "the weights and config.json come from different runs: rerun it",
        )
    return model, cfg
