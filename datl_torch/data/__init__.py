"""The torch data path: timm transforms, the seeded rank-sharded sampler, loaders."""
from .loader import Cycle, make_loader, train_loader
from .sampler import SeededAugment, ShardedEpochSampler
from .transforms import build_transform, image_mode, image_spec

__all__ = ["Cycle", "SeededAugment", "ShardedEpochSampler", "build_transform", "image_mode", "image_spec",
           "make_loader", "train_loader"]
