"""The device preamble, once: a model or batch on the device (channels_last on CUDA), and
bf16 autocast on CUDA (a no-op on the CPU)."""

from __future__ import annotations

import torch
from torch import nn


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """The model on ``device``; channels_last on CUDA."""
    model.to(device)
    if is_cuda(device):
        model.to(memory_format=torch.channels_last)
    return model


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch on ``device`` (non-blocking from pinned memory); images channels_last on CUDA."""
    x = x.to(device, non_blocking=True)
    if x.is_cuda and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device | str):
    """bf16 autocast on CUDA; disabled elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=is_cuda(device))
