"""``curate features``: the source described once (hashes, pixel descriptors, embeddings,
logits) into a feature store that any number of targets' ``curate dedup`` read instead of
the source images.

| module      | holds |
| ----------- | ----- |
| pixel.py    | content hashes and the model-free pixel descriptors (canvas and content; target views) |
| describe.py | describing images: hashes + pixel descriptors + model embeddings/logits of manifest rows |
| store.py    | the store on disk: store.json's binding, one Parquet part per chunk, reading rows back |
| stage.py    | FeaturesConfig and run(): chunks per rank and per ``--part``, resume |
"""

from .describe import Described, Embeddings, describe, model_fingerprint
from .stage import FeaturesConfig, run
from .store import Binding, FeatureStore

__all__ = [
    "Binding",
    "Described",
    "Embeddings",
    "FeatureStore",
    "FeaturesConfig",
    "describe",
    "model_fingerprint",
    "run",
]
