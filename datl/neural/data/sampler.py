"""Seeded, rank-sharded, resumable sampling.

Every sample's augmentation is seeded from (seed, epoch, index), so a run gives the
same batches whatever the worker count, and a resumed run continues exactly where the
interrupted one stopped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .dataset import ImageDataset


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
        torch.default_generator.manual_seed(s)  # torchvision's from torch (CPU); far cheaper than torch.manual_seed
        return self.inner[index]


class ShardedEpochSampler(Sampler):
    """Yields (index, epoch) for this rank: a per-epoch permutation (or the identity), split
    round-robin across ranks, padded so every rank has the same number, from ``start`` on.

    With-replacement manifests repeat rows: that is the intended distribution, not a bug.
    """

    def __init__(
        self,
        n: int,
        rank: int,
        world: int,
        seed: int,
        shuffle: bool,
        epoch: int = 0,
        start: int = 0,
        pool: np.ndarray | None = None,
    ):
        """``pool``: the dataset indexes to draw from (the others, e.g. a held-out slice, never
        come out); None: all ``n``."""
        self.pool = None if pool is None else np.asarray(pool, dtype=np.int64)
        n = n if self.pool is None else len(self.pool)
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
        mine = order[self.rank :: self.world]
        return mine if self.pool is None else self.pool[mine]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.indices()[self.start :]:
            yield int(i), self.epoch

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)
