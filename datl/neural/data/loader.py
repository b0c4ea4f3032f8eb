"""Loaders: one rank's batches of a manifest, for an epoch or endlessly."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.utils.data import DataLoader

from datl.core.errors import UserError
from datl.manifests import Manifest

from .dataset import ImageDataset, collate_skip_bad
from .sampler import SeededAugment, ShardedEpochSampler
from .transforms import build_transform, image_mode


def make_loader(
    manifest: Manifest,
    transform: Callable,
    mode: str,
    batch_size: int,
    workers: int,
    rank: int,
    world: int,
    seed: int,
    shuffle: bool,
    pin_memory: bool = False,
    persistent: bool = False,
    pool=None,
) -> DataLoader:
    """This rank's loader; the caller sets ``loader.sampler.epoch`` and ``.start`` (rows to skip, for resume).

    ``persistent`` keeps the workers between epochs: for loaders cycled through many short
    epochs (a few labeled target images), which would otherwise start new workers each time.
    ``pool``: the rows to draw from (None: all)."""
    ds = SeededAugment(ImageDataset(manifest, transform=transform, mode=mode), seed)
    sampler = ShardedEpochSampler(len(ds), rank, world, seed, shuffle, pool=pool)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=4 if workers else None,
    )


def train_loader(manifest: Manifest, model_cfg, cfg, d, seed: int, persistent: bool = False, pool=None) -> DataLoader:
    """The augmented training loader of a run: the model's size, channels and normalisation,
    the run's batch size, workers and flip, this rank's shard (of ``pool``'s rows, if given)."""
    transform = build_transform(
        tuple(model_cfg.image_size), model_cfg.in_chans, model_cfg.mean, model_cfg.std, train=True, hflip=cfg.hflip
    )
    return make_loader(
        manifest,
        transform,
        image_mode(model_cfg.in_chans),
        cfg.batch_size,
        cfg.workers,
        d.rank,
        d.world,
        seed,
        shuffle=True,
        pin_memory=d.cuda,
        persistent=persistent,
        pool=pool,
    )


class Cycle:
    """Endless shuffled batches of a loader, epoch after epoch: images, or (images, labels)
    with ``labels``. Unreadable images are skipped; a manifest of which a whole epoch is
    unreadable is a user error (it would loop forever). ``seek(n)`` continues after n
    batches, for --resume."""

    def __init__(self, loader: DataLoader, labels: bool):
        self.loader, self.labels = loader, labels
        self.batch_size, self.path = loader.batch_size, loader.dataset.inner.manifest.path
        self.per_epoch = max(math.ceil(loader.sampler.per_rank() / loader.batch_size), 1)
        self.seek(0)

    def seek(self, batches: int) -> None:
        self.epoch, self.start = divmod(batches, self.per_epoch)
        self.it = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self.it is None:
                self.loader.sampler.epoch, self.loader.sampler.start = self.epoch, self.start * self.batch_size
                self.it, self.good = iter(self.loader), False
            b = next(self.it, None)
            if b is None:
                if not self.good and not self.start:
                    raise UserError(self.path, "has no readable image", "fix or rebuild the manifest's images")
                self.epoch, self.start, self.it = self.epoch + 1, 0, None
                continue
            if b.images is not None:
                self.good = True
                return (b.images, b.labels) if self.labels else b.images
