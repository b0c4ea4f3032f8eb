"""Models: the timm factory, run-folder checkpoints, and the shared loader.

A run folder (written by ``pretrain`` and ``finetune``) holds

- ``model.safetensors``: the weights (never pickled);
- ``config.json``: timm arch, classes, image size, in_chans, mean/std, params, the
  training class prior (P_s(y) of the manifest it was trained on), and ``bottleneck``
  (the width of the bottleneck layer of a ``finetune --adapt`` run; null for a plain model);
- ``metrics.jsonl``, and ``state.pt`` for ``--resume`` (loaded with ``weights_only=True``).

:func:`load_model` is what curate uses to run a RUN_DIR or a ``timm:ARCH`` model (with
``--weights FILE``, a local state dict) as a classifier or as a feature extractor.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from manifests import UserError, atomic_output

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.pt"
METRICS = "metrics.jsonl"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    class_prior: list[float] | None = None  # class frequencies of the training manifest
    params: dict[str, Any] = field(default_factory=dict)
    bottleneck: int | None = None  # an AdaptNet of this bottleneck width (finetune --adapt); None: plain timm

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_norm(in_chans: int) -> tuple[list[float], list[float]]:
    """ImageNet mean/std; a grey model uses their channel averages."""
    if in_chans == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    m, s = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    return [m] * in_chans, [s] * in_chans


def create(arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with random weights, or a one-line error for an unknown arch."""
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise UserError("--model", f"unknown timm architecture '{arch}'", hint)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


class AdaptNet(nn.Module):
    """A timm backbone (head removed), a bottleneck and a linear classifier: the network
    ``finetune --adapt`` trains.

    The bottleneck (Linear, BatchNorm1d, ReLU; width 256 as in DAN, JAN and DANN's
    Office experiments) is where the transfer losses look at features; width 0 skips it.
    It answers timm's interface (``forward_features``, ``forward_head``,
    ``reset_classifier``, ``get_classifier``, ``num_features``), so a run folder holding
    one is read, estimated with and fine-tuned like any other.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck: int = 256):
        super().__init__()
        backbone.reset_classifier(0)
        self.backbone = backbone
        width = int(backbone.num_features)
        if bottleneck > 0:
            self.bottleneck = nn.Sequential(nn.Linear(width, bottleneck), nn.BatchNorm1d(bottleneck), nn.ReLU())
            width = bottleneck
        else:
            self.bottleneck = nn.Identity()
        self.head = nn.Linear(width, num_classes)
        self.num_features = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output: what the head and the transfer losses see."""
        return self.bottleneck(self.backbone(x))

    forward_features = features

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.head(f)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits; with ``with_features``, (bottleneck features, logits) from one pass (the
        training step calls it so under DistributedDataParallel, whose forward it must go through)."""
        f = self.features(x)
        return (f, self.head(f)) if with_features else self.head(f)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


# -- run folders ------------------------------------------------------------------
def save_run(run_dir: str | os.PathLike, model: nn.Module, config: ModelConfig) -> None:
    """Write model.safetensors and config.json atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    with atomic_output(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    with atomic_output(run_dir / CONFIG) as tmp:
        tmp.write_text(json.dumps(asdict(config), indent=2, sort_keys=True))


def read_config(run_dir: str | os.PathLike) -> ModelConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(run_dir, "checkpoint folder does not exist",
                        "pass a run folder written by `pretrain` or `finetune`")
    for name in (CONFIG, WEIGHTS):
        if not (run_dir / name).exists():
            raise UserError(run_dir, f"checkpoint folder is missing {name}",
                            "pass a finished run folder of `pretrain`/`finetune` (or --resume the run)")
    try:
        data = json.loads((run_dir / CONFIG).read_text())
        return ModelConfig(**{k: v for k, v in data.items() if k in ModelConfig.__dataclass_fields__})
    except (ValueError, TypeError) as e:
        raise UserError(run_dir / CONFIG, f"is not a valid run config ({e})", "rerun the stage that wrote it") from None


def load_run(run_dir: str | os.PathLike, map_location: str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model of a run folder with its weights."""
    from safetensors.torch import load_file

    cfg = read_config(run_dir)
    model = create(cfg.arch, cfg.num_classes, cfg.in_chans)
    if cfg.bottleneck is not None:
        model = AdaptNet(model, cfg.num_classes, cfg.bottleneck)
    state = load_file(str(Path(run_dir) / WEIGHTS), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(Path(run_dir) / WEIGHTS, f"does not match arch {cfg.arch} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys)",
                        "the weights and config.json come from different runs: rerun it")
    return model, cfg


# -- foreign state dicts (timm:ARCH --weights FILE) ----------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local state dict: .safetensors, or a torch file loaded with weights_only=True."""
    path = Path(path)
    if not path.exists():
        raise UserError(path, "weights file does not exist", "pass a local state dict (.pth or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise UserError(path, f"cannot be read as a state dict ({type(e).__name__}: {str(e)[:120]})",
                        "pass a .pth/.safetensors state dict") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(path, "does not hold a state dict of tensors", "pass a model's state_dict()")
    return state


def _rename_by_position(model: nn.Module, own: dict[str, torch.Tensor], foreign: dict[str, torch.Tensor],
                        where: object) -> dict[str, torch.Tensor]:
    """Give foreign tensors the model's names by layer order, when the shapes agree in sequence.

    torchvision and timm name the same architectures differently (``features.0.0`` vs
    ``conv_stem``) but register their layers in the same order; an exact run of equal
    shapes over hundreds of tensors identifies the match. Two differences are allowed:
    the first conv's input channels (adapted later) and the classifier's class count.
    """
    mk = [k for k in own if not k.endswith("num_batches_tracked")]
    fk = [k for k in foreign if not k.endswith("num_batches_tracked")]
    stem = _stem_key(own)

    def fits(a: str, b: str) -> bool:
        x, y = own[a].shape, foreign[b].shape
        if x == y:
            return True
        if a == stem and len(x) == len(y) == 4:
            return x[0] == y[0] and x[2:] == y[2:]
        return _is_head(model, a) and len(x) == len(y) and x[1:] == y[1:]

    if len(mk) != len(fk) or not all(fits(a, b) for a, b in zip(mk, fk)):
        raise UserError(where, f"does not fit architecture {type(model).__name__} by name or by layer order",
                        "pass weights of the same architecture as --model")
    return {a: foreign[b] for a, b in zip(mk, fk)}


def load_foreign_weights(model: nn.Module, path: str | os.PathLike, keep_head: bool,
                         state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a local state dict into a timm model, by name or else by layer order.

    The classifier is loaded only with ``keep_head`` and matching shapes; a first conv
    trained on RGB is adapted to the model's channel count (summed for grey).
    """
    from timm.models import adapt_input_conv

    foreign = dict(state) if state is not None else read_state_dict(path)  # ``state``: already read from path
    own = model.state_dict()
    if sum(k in own for k in foreign) < len(own) // 2:
        foreign = _rename_by_position(model, own, foreign, path)
    stem = _stem_key(own)
    if stem in foreign and foreign[stem].shape[1] != own[stem].shape[1]:
        foreign[stem] = adapt_input_conv(own[stem].shape[1], foreign[stem])
    load = {k: v for k, v in foreign.items()
            if k in own and v.shape == own[k].shape and (keep_head or not _is_head(model, k))}
    model.load_state_dict(load, strict=False)
    missed = [k for k in own if k not in load and not _is_head(model, k) and not k.endswith("num_batches_tracked")]
    if missed:
        raise UserError(path, f"left {len(missed)} backbone tensors of {type(model).__name__} unloaded "
                              f"(first: {missed[0]})", "pass weights of the same architecture as --model")


def _is_head(model: nn.Module, key: str) -> bool:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or "classifier"
    names = (names,) if isinstance(names, str) else tuple(names)
    return any(key == h or key.startswith(h + ".") for h in names)


def _stem_key(state: dict[str, torch.Tensor]) -> str:
    """The first convolution's weight."""
    return next(k for k, v in state.items() if v.ndim == 4)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


# -- the shared loader (curate uses it) -----------------------------------------------
@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (what the classifier head sees)."""
        m = unwrap(self.model)
        return m.forward_head(m.forward_features(x), pre_logits=True)


def load_model(spec: str, weights: str | os.PathLike | None = None, classes: list[str] | None = None,
               in_chans: int | None = None, image_size: int | None = None) -> LoadedModel:
    """A RUN_DIR, or ``timm:ARCH`` with ``weights`` (a local state dict, head kept).

    For ``timm:`` the classes default to ``class_0..class_{K-1}`` for the head in the
    weights file; pass ``classes`` to name them.
    """
    if spec.startswith("timm:"):
        arch = spec.removeprefix("timm:")
        if weights is None:
            raise UserError("--model", f"{spec} needs --weights FILE (a local state dict)",
                            "pass --weights, e.g. the .pth of an ImageNet model; nothing is downloaded")
        state = read_state_dict(weights)
        num_classes = len(classes) if classes else _guess_num_classes(state)
        chans = in_chans or 3
        model = create(arch, num_classes, chans)
        load_foreign_weights(model, weights, keep_head=True, state=state)
        mean, std = default_norm(chans)
        size = image_size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        cfg = ModelConfig(arch=arch, classes=classes or [f"class_{i}" for i in range(num_classes)],
                          image_size=[size, size], in_chans=chans, mean=mean, std=std,
                          num_features=model.num_features, params={"weights": str(weights)})
        return LoadedModel(model.eval(), cfg)
    model, cfg = load_run(spec)
    return LoadedModel(model.eval(), cfg)


def _guess_num_classes(state: dict[str, torch.Tensor]) -> int:
    """Rows of the last 2-D weight: the classifier of a state dict."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not last:
        raise UserError("--weights", "has no classifier layer to run as a classifier", "pass a classifier's weights")
    return int(last[-1].shape[0])
