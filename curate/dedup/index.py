"""FAISS over the TARGET (the small side): one inner-product index per descriptor, source
descriptors streamed through it as queries (k = 1).

Index (``--index``): ``flat`` is exact inner product (IndexFlatIP). ``ivf``
(IndexIVFFlat, inner product) uses nlist = 4 * sqrt(n) lists (at least 1, at most
n / 39 so each list trains on 39 points) and probes nprobe = 2 of them: a near copy sits
next to its original, so it falls in the original's list or, near a cell boundary, the
neighbouring one. bench/dedup.py measured recall 1.0 of 10,000 planted copies with
nprobe 2, and 29x flat's speed (nprobe 4: 17x, 8: 13.5x, 19: 6x). ``auto`` takes flat
below 50,000 indexed vectors, where it is fast enough and exact, and ivf above.
"""
from __future__ import annotations

import math
import os

import numpy as np

from manifests import UserError

AUTO_FLAT_MAX = 50_000


def ivf_params(n: int) -> tuple[int, int]:
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 39))
    return nlist, min(nlist, 2)


def build_index(target: np.ndarray, kind: str = "auto"):
    """FAISS inner-product index over L2-normalised target vectors; returns (index, description)."""
    import faiss

    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    x = np.ascontiguousarray(target, dtype=np.float32)
    n, dim = x.shape
    if kind == "auto":
        kind = "flat" if n < AUTO_FLAT_MAX else "ivf"
    if kind == "flat" or n < 39:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index, f"flat (exact), {n:,} target vectors"
    if kind != "ivf":
        raise UserError("--index", f"unknown index '{kind}'", "pass auto, flat or ivf")
    nlist, nprobe = ivf_params(n)
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)  # owns its quantizer
    rng = np.random.default_rng(0)
    train = x if n <= 256 * nlist else x[rng.choice(n, 256 * nlist, replace=False)]
    index.train(train)
    index.add(x)
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index, f"ivf, nlist {nlist}, nprobe {nprobe}, {n:,} target vectors"


def best_match(index, queries: np.ndarray, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine similarity, target position) for every query, streamed in chunks."""
    sims, pos = [], []
    for i in range(0, len(queries), chunk):
        s, p = index.search(np.ascontiguousarray(queries[i:i + chunk], dtype=np.float32), 1)
        sims.append(s[:, 0])
        pos.append(p[:, 0])
    if not sims:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(sims), np.concatenate(pos)
