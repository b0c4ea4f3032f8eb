"""The one batched inference function: a model over a manifest, streamed, on any device,
rank-sharded under torchrun.

``curate estimate`` (logits), ``curate dedup`` (pooled features) and ``finetune``'s
evaluation (logits) all run it. Each rank runs rows ``rank::world``; rank 0 gathers
them back in manifest order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as tdist
from torch.utils.data import DataLoader, Subset

from datl.core.progress import bar
from datl.manifests import Manifest

from ..checkpoint import LoadedModel
from ..data import BadImageLog, ImageDataset, build_transform, collate_skip_bad, image_mode
from . import dist
from .device import autocast, place_model, to_device


@torch.no_grad()
def run_model(
    lm: LoadedModel,
    manifest: Manifest,
    d: dist.Dist,
    what: str = "logits",
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
    desc: str = "",
    rows: tuple[int, int] | None = None,
    on_batch=None,
    index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, BadImageLog]:
    """(row indices, float32 outputs, unreadable-image log) for every readable row; full on rank 0.

    what: 'logits' (the classifier's), 'features' (pooled pre-logits), or 'features+logits'
    (both from one forward pass, side by side: ``curate features``).
    rows: (start, stop): only that range, all of it in this process (no sharding, no gather):
    the unit of work of a caller that shards chunks across ranks itself.
    on_batch(n): called with the number of rows each batch covered (a caller's progress bar).
    index: only these rows (sorted row numbers; e.g. pretrain's held-out slice), sharded as usual.
    """
    cfg = lm.config
    tf = build_transform(tuple(cfg.image_size), cfg.in_chans, cfg.mean, cfg.std, train=False)
    # a JPEG decoded at the smallest DCT scale that covers the input size on both sides (any
    # orientation), never larger than it needs
    side = max(cfg.image_size)
    ds = ImageDataset(manifest, transform=tf, mode=image_mode(cfg.in_chans), rows=rows, draft=(side, side))
    if rows is not None:
        d = dist.Dist(0, 1, d.local_rank, d.device)
    chosen = range(len(ds)) if index is None else [int(i) for i in index]
    mine = Subset(ds, chosen[d.rank :: d.world])
    place_model(lm.model, d.device).eval()
    fn = {"logits": lm.logits, "features": lm.features, "features+logits": lm.features_and_logits}[what]
    idx, outs, bad = [], [], BadImageLog()
    loader = DataLoader(
        mine, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_bad, pin_memory=d.cuda
    )
    for batch in bar(loader, desc=desc or f"{what} {manifest.path.name}", unit="batch", enabled=progress and d.main):
        bad.add(batch.bad, batch.warned)
        if on_batch is not None:
            on_batch(len(batch.index) + len(batch.bad))
        if batch.images is None:
            continue
        with autocast(d.device):
            y = fn(to_device(batch.images, d.device))
        outs.append(y.float().cpu().numpy())
        idx.append(batch.index.numpy())
    dim = {"logits": cfg.num_classes, "features": cfg.num_features}.get(what, cfg.num_features + cfg.num_classes)
    rows = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
    vals = np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, dim), dtype=np.float32)
    if d.world > 1:
        rows, vals, bad = _gather(d, rows, vals, bad)
    order = np.argsort(rows, kind="stable")
    return rows[order], vals[order], bad


def _gather(d: dist.Dist, rows: np.ndarray, vals: np.ndarray, bad: BadImageLog):
    parts = [None] * d.world if d.main else None
    tdist.gather_object((rows, vals, bad), parts, dst=0)
    if not d.main:
        return rows, vals, bad
    merged = BadImageLog()
    for _, _, log in parts:
        merged.merge(log)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), merged)
