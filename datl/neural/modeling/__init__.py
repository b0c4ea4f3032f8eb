"""Models: the timm factory and the two-domain AdaptNet."""

from .adaptnet import AdaptNet
from .factory import create_model, default_norm, unwrap

__all__ = ["AdaptNet", "create_model", "default_norm", "unwrap"]
