"""The training data path: timm transforms, a rank-sharded resumable sampler, DataLoader workers.

Every sample's augmentation is seeded from (seed, epoch, index), so a run gives the
same batches whatever the worker count, and a resumed run continues exactly where the
interrupted one stopped.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from manifests import ImageDataset, Manifest, collate_skip_bad


def build_transform(image_size: tuple[int, int], in_chans: int, mean: list[float], std: list[float],
                    train: bool, hflip: float = 0.0, scale: tuple[float, float] = (0.5, 1.0)) -> Callable:
    """timm's transforms: random-resized-crop (+flip) for training; resize for evaluation.

    hflip defaults to 0: glyphs and digits are not mirror-symmetric (pass 0.5 for photos).
    """
    from timm.data import create_transform

    return create_transform(input_size=(in_chans, *image_size), is_training=train, hflip=hflip, scale=scale,
                            color_jitter=None, mean=tuple(mean), std=tuple(std), crop_pct=1.0,
                            interpolation="bilinear")


class SeededAugment(Dataset):
    """Wraps ImageDataset: takes (index, epoch) keys and seeds the transform's RNGs per sample."""

    def __init__(self, inner: ImageDataset, seed: int):
        self.inner = inner
        self.seed = seed

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        s = (self.seed * 1_000_003 + epoch * 7_919 + index) % (2**31)
        random.seed(s)  # timm's crops and flips draw from `random`
        torch.default_generator.manual_seed(s)  # torchvision's from torch (CPU); 80x cheaper than torch.manual_seed
        return self.inner[index]


class ShardedEpochSampler(Sampler):
    """Yields (index, epoch) for this rank: a per-epoch permutation (or the identity), split
    round-robin across ranks, padded so every rank has the same number, from ``start`` on.

    With-replacement manifests repeat rows: that is the intended distribution, not a bug.
    """

    def __init__(self, n: int, rank: int, world: int, seed: int, shuffle: bool, epoch: int = 0, start: int = 0):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return -(-self.n // self.world)

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.per_rank() * self.world
        if total > self.n:
            order = np.concatenate([order, order[: total - self.n]])
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.indices()[self.start:]:
            yield int(i), self.epoch

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)


def make_loader(manifest: Manifest, transform: Callable, mode: str, batch_size: int, workers: int,
                rank: int, world: int, seed: int, shuffle: bool, pin_memory: bool = False,
                persistent: bool = False) -> DataLoader:
    """This rank's loader; the caller sets ``loader.sampler.epoch`` and ``.start`` (rows to skip, for resume).

    ``persistent`` keeps the workers between epochs: for loaders cycled through many short
    epochs (a few labeled target images), which would otherwise start new workers each time."""
    ds = SeededAugment(ImageDataset(manifest, transform=transform, mode=mode), seed)
    sampler = ShardedEpochSampler(len(ds), rank, world, seed, shuffle)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skip_bad, pin_memory=pin_memory,
                      persistent_workers=persistent and workers > 0, prefetch_factor=4 if workers else None)


def image_mode(in_chans: int) -> str:
    return "L" if in_chans == 1 else "RGB"
