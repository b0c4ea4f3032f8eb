"""The torch data path: the manifest as a Dataset (unreadable images counted, never
fatal), timm transforms, the seeded rank-sharded sampler, loaders."""

from .dataset import BadImageLog, Batch, ImageDataset, Sample, collate_skip_bad
from .loader import Cycle, make_loader, train_loader
from .sampler import SeededAugment, ShardedEpochSampler
from .transforms import build_transform, image_mode, image_spec

__all__ = [
    "BadImageLog",
    "Batch",
    "Cycle",
    "ImageDataset",
    "Sample",
    "SeededAugment",
    "ShardedEpochSampler",
    "build_transform",
    "collate_skip_bad",
    "image_mode",
    "image_spec",
    "make_loader",
    "train_loader",
]
