"""``curate dedup``: source images that are copies or near copies of target images.

| module         | holds |
| -------------- | ----- |
| stage.py       | DedupConfig and run(): target side, source chunks per rank, merge |
| checks.py      | the three checks (exact, pixel, feature) on one chunk, and how their hits combine |
| pixel.py       | content hashes and the model-free pixel descriptor (107 views per target image: crops, |
|                | two small rotations, one flattened on black, three with hues turned) |
| index.py       | FAISS over the target (flat or IVF), source streamed as queries |
| cache.py       | the target side and per-chunk results on disk: resume, and new thresholds for free |
| calibration.py | --calibrate: planted edited copies, recall and false positives per threshold |
"""

from .calibration import AUGMENTATIONS, EDITS, plant_copies
from .checks import DEFAULT_PIXEL_THRESHOLD, DEFAULT_THRESHOLD, find_duplicates
from .index import best_match, build_index, ivf_params
from .stage import DedupConfig, run

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
