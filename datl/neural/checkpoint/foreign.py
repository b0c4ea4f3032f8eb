"""Foreign state dicts (``timm:ARCH --weights FILE``): a local .pth or .safetensors file,
loaded into a timm model by name, or by layer order when the names differ (torchvision's
layout), with an RGB first conv adapted to the model's channels."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from datl.core.errors import UserError


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
        raise UserError(
            path,
            f"cannot be read as a state dict ({type(e).__name__}: {str(e)[:120]})",
            "pass a .pth/.safetensors state dict",
        ) from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(path, "does not hold a state dict of tensors", "pass a model's state_dict()")
    return state


def _rename_by_position(
    model: nn.Module, own: dict[str, torch.Tensor], foreign: dict[str, torch.Tensor], where: object
) -> dict[str, torch.Tensor]:
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
        raise UserError(
            where,
            f"does not fit architecture {type(model).__name__} by name or by layer order",
            "pass weights of the same architecture as --model",
        )
    return {a: foreign[b] for a, b in zip(mk, fk)}


def load_foreign_weights(
    model: nn.Module, path: str | os.PathLike, keep_head: bool, state: dict[str, torch.Tensor] | None = None
) -> None:
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
    load = {
        k: v
        for k, v in foreign.items()
        if k in own and v.shape == own[k].shape and (keep_head or not _is_head(model, k))
    }
    model.load_state_dict(load, strict=False)
    missed = [k for k in own if k not in load and not _is_head(model, k) and not k.endswith("num_batches_tracked")]
    if missed:
        raise UserError(
            path,
            f"left {len(missed)} backbone tensors of {type(model).__name__} unloaded (first: {missed[0]})",
            "pass weights of the same architecture as --model",
        )


def _is_head(model: nn.Module, key: str) -> bool:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or "classifier"
    names = (names,) if isinstance(names, str) else tuple(names)
    return any(key == h or key.startswith(h + ".") for h in names)


def _stem_key(state: dict[str, torch.Tensor]) -> str:
    """The first convolution's weight."""
    return next(k for k, v in state.items() if v.ndim == 4)
