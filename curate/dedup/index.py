"""FAISS over the TARGET (the small side): one inner-product index per descriptor, source
descriptors streamed through it as queries (k = 1).

Invariant: the similarity a threshold is compared with is always the exact cosine; only the
candidate search may be approximate.

Index (``--index``): ``flat`` is exact inner product (IndexFlatIP). ``ivf`` (IndexIVFFlat,
inner product) uses nlist = 4 * sqrt(n) lists (at least 1, at most n / 39 so each list
trains on 39 points) and probes nprobe = 2 of them: a near copy sits next to its original,
so it falls in the original's list or, near a cell boundary, the neighbouring one. ``auto``
takes flat below AUTO_FLAT_MAX indexed vectors, where it is fast enough and exact, and ivf
above.

``reduce`` (the pixel index passes ``PIXEL_REDUCE`` = 64): the IVF stage runs on a PCA
projection of the vectors to that many dimensions and returns ``REFINE_K`` = 64 candidates,
which are re-ranked by their exact inner product on the full vectors (faiss
``PCA64,IVF...,Flat,RFlat``). 64 candidates, not 8: every target image is indexed under
many views, so the 8 best candidates were often 8 views of one wrong image. The content index
(8 views per target image) re-ranks ``CONTENT_REFINE_K`` = 16: on the design pair, the digit
demo and bench/scale.py it found the same best matches as 64 at about half the search's cost
(bench/RESULTS.md). Where ``auto`` takes flat, the content index still searches in that
projection (every vector, no lists: ``PCA64,Flat,RFlat``) and re-ranks its best 16 exactly:
4x cheaper than the exact 512-d search, which was most of the cost of a dedup fed by a feature
store (bench/photos.py). On the digit demo it flagged the same 48 pairs with the same
similarities; 30 of 24,982 source rows got a lower best similarity, all below 0.89, where no
threshold looks. ``--index flat`` stays exact for every index. What nprobe,
the projection, the re-rank depth and ``TRAIN_PER_LIST`` cost and buy is measured in
bench/RESULTS.md (dedup.py, scale.py, colour_dedup.py).
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np

from datl.core.errors import UserError

AUTO_FLAT_MAX = 50_000
# k-means points per list: fewer train faster but lose recall (bench/RESULTS.md, dedup.py); training is paid
# once per target and model (the trained index is cached), recall on every run.
TRAIN_PER_LIST = 256
PIXEL_REDUCE = 64
REFINE_K = 64
CONTENT_REFINE_K = 16  # the content index: 8 views per target image, not 107
# In the cache's file names and chunk keys: an index built another way is never reused.
INDEX_FORMAT = f"v3-pca{PIXEL_REDUCE}-refine{REFINE_K}"
SEARCH_FORMAT = f"{INDEX_FORMAT}-content{CONTENT_REFINE_K}"  # in chunk keys: searched another way


def ivf_params(n: int) -> tuple[int, int]:
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 39))
    return nlist, min(nlist, 2)


def build_index(target: np.ndarray, kind: str = "auto", reduce: int | None = None, reduce_flat: bool = False):
    """FAISS inner-product index over L2-normalised target vectors; returns (index, description).
    ``reduce``: IVF candidates searched in a PCA projection to this many dimensions, then re-ranked
    exactly (see the module docstring); ignored for flat and for vectors of no more dimensions.
    ``reduce_flat``: also where ``auto`` takes flat, search every vector in that projection and
    re-rank the best exactly (``PCA64,Flat,RFlat``: the content index); ``--index flat`` stays exact."""
    import faiss

    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    x = np.ascontiguousarray(target, dtype=np.float32)
    n, dim = x.shape
    auto = kind == "auto"
    if auto:
        kind = "flat" if n < AUTO_FLAT_MAX else "ivf"
    if auto and kind == "flat" and reduce_flat and reduce is not None and reduce < dim and n > reduce:
        index = faiss.index_factory(dim, f"PCA{reduce},Flat,RFlat", faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        _set_search(index)
        return index, describe(index)
    if kind == "flat" or n < 39:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        return index, f"flat (exact), {n:,} target vectors"
    if kind != "ivf":
        raise UserError("--index", f"unknown index '{kind}'", "pass auto, flat or ivf")
    nlist, nprobe = ivf_params(n)
    pca = reduce is not None and reduce < dim
    spec = f"PCA{reduce},IVF{nlist},Flat,RFlat" if pca else f"IVF{nlist},Flat"
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)  # owns its quantizer
    rng = np.random.default_rng(0)
    train = x if n <= TRAIN_PER_LIST * nlist else x[rng.choice(n, TRAIN_PER_LIST * nlist, replace=False)]
    index.train(train)
    index.add(x)
    _set_search(index)
    return index, describe(index)


def _set_search(index, refine: int = REFINE_K) -> None:
    """nprobe and the re-rank depth: set after building and after reading (not all are stored)."""
    import faiss

    try:
        faiss.extract_index_ivf(index).nprobe = ivf_params(index.ntotal)[1]
    except RuntimeError:  # PCA + flat + re-rank: no lists to probe
        pass
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = refine


def describe(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexFlat):
        return f"flat (exact), {index.ntotal:,} target vectors"
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        pca = faiss.downcast_index(index.base_index).chain.at(0).d_out
        reranked = f"best {index.k_factor:g} re-ranked exactly"
        return f"flat, searched in {pca} PCA dimensions, {reranked}, {index.ntotal:,} target vectors"
    reduced = (
        f", searched in {ivf.d} PCA dimensions, best {index.k_factor:g} re-ranked exactly"
        if isinstance(index, faiss.IndexRefine)
        else ""
    )
    return f"ivf, nlist {ivf.nlist}, nprobe {ivf.nprobe}{reduced}, {index.ntotal:,} target vectors"


def cached_index(
    path: Path,
    vectors,
    kind: str,
    build: bool,
    reduce: int | None = None,
    refine: int = REFINE_K,
    reduce_flat: bool = False,
):
    """The index over ``vectors()`` from ``path``; built and written first when ``build`` (rank 0)
    and the file is missing or unreadable. The others call it after a barrier, with ``build``
    False. Each file is read at most once per call (reading the target's pixel index took
    seconds of every run's fixed cost)."""
    import faiss

    from datl.core.files import atomic_output

    index = _read(path) if path.exists() else None
    if build and index is None:  # none yet, or unreadable: (re)build
        index, _ = build_index(vectors(), kind, reduce, reduce_flat)
        with atomic_output(path) as tmp:
            try:
                faiss.write_index(index, str(tmp))
            except RuntimeError as e:  # faiss reports a full disk or an I/O error this way
                raise OSError(
                    errno.EIO, f"FAISS could not write the index ({str(e).split('(')[-1].rstrip(')')})", str(path)
                ) from None
    if index is None:
        raise UserError(path, "is not a readable FAISS index", "delete it and rerun")
    if not isinstance(index, faiss.IndexFlat):
        _set_search(index, refine)
    return index


def _read(path: Path):
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError:
        return None


def best_match(index, queries: np.ndarray, chunk: int = 8_192) -> tuple[np.ndarray, np.ndarray]:
    """(best cosine similarity, target position) for every query, streamed in chunks (of 8,192:
    each chunk's float32 copy of a 512-d content descriptor is 16 MB, not the 134 MB of a
    whole source chunk)."""
    sims, pos = [], []
    for i in range(0, len(queries), chunk):
        s, p = index.search(np.ascontiguousarray(queries[i : i + chunk], dtype=np.float32), 1)
        sims.append(np.where(p[:, 0] < 0, -1.0, s[:, 0]).astype(np.float32))  # -1: no candidate at all
        pos.append(p[:, 0])
    if not sims:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(sims), np.concatenate(pos)
