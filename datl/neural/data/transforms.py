"""timm transforms, the PIL mode a model reads, and the image size a manifest's images have."""

from __future__ import annotations

from collections.abc import Callable

from datl.core.errors import UserError
from datl.manifests import Manifest, probe_images
from datl.manifests.images import MAX_SIDE


def build_transform(
    image_size: tuple[int, int],
    in_chans: int,
    mean: list[float],
    std: list[float],
    train: bool,
    hflip: float = 0.0,
    scale: tuple[float, float] = (0.5, 1.0),
) -> Callable:
    """timm's transforms: random-resized-crop (+flip) for training; resize for evaluation.

    hflip defaults to 0: glyphs and digits are not mirror-symmetric (pass 0.5 for photos).
    """
    from timm.data import create_transform

    return create_transform(
        input_size=(in_chans, *image_size),
        is_training=train,
        hflip=hflip,
        scale=scale,
        color_jitter=None,
        mean=tuple(mean),
        std=tuple(std),
        crop_pct=1.0,
        interpolation="bilinear",
    )


def image_mode(in_chans: int) -> str:
    """The PIL mode images are converted to for a model of ``in_chans`` channels."""
    return "L" if in_chans == 1 else "RGB"


def image_spec(manifest: Manifest, size: int | None, in_chans: int | None) -> tuple[tuple[int, int], int]:
    """Image size and channels: what the manifest's images are, unless overridden; images larger
    than a model reads (MAX_SIDE) need an explicit --image-size."""
    probed_size, probed_chans = probe_images(manifest)
    if not size and max(probed_size) > MAX_SIDE:
        raise UserError(
            manifest.path,
            f"holds images of {probed_size[1]} x {probed_size[0]} pixels, more than a model reads ({MAX_SIDE} a side)",
            "pass --image-size, e.g. 224",
        )
    return ((size, size) if size else probed_size), (in_chans or probed_chans)
