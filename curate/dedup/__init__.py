"""``curate dedup``: source images that are copies or near copies of target images.

| module         | holds |
| -------------- | ----- |
| stage.py       | DedupConfig and run(): target side, source chunks per rank, merge |
| checks.py      | the three checks (exact, pixel, feature) on one chunk, and how their hits combine |
| pixel.py       | content hashes and the model-free pixel descriptors: of the canvas (107 views per target |
|                | image: crops, rotations, on black, hues turned) and of the content trimmed from it (8) |
| threshold.py   | the feature threshold, calibrated for the model from source-to-source neighbours |
| index.py       | FAISS over the target (flat or IVF), source streamed as queries |
| cache.py       | the target side and per-chunk results on disk: resume, and new thresholds for free |
| calibration.py | --calibrate: planted edited copies, recall and false positives per threshold |
"""

from .calibration import AUGMENTATIONS, EDITS, plant_copies
from .checks import DEFAULT_PIXEL_THRESHOLD, find_duplicates
from .index import best_match, build_index, ivf_params
from .stage import DedupConfig, run
from .threshold import DEFAULT_THRESHOLD

__all__ = [
    "AUGMENTATIONS",
    "EDITS",
    "DEFAULT_PIXEL_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "DedupConfig",
    "best_match",
    "build_index",
    "find_duplicates",
    "ivf_params",
    "plant_copies",
    "run",
]
