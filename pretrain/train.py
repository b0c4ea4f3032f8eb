"""``pretrain``: train a timm classifier on a labeled manifest into a run folder.

The loop, the recipe and the run folder are the shared torch layer's (``datl.neural``); this
stage adds what is its own: where the weights start (``--init``), and for a multi-label
manifest (a ``labels`` column) the sigmoid classifier: its head's biases start at each label's
log-odds in the manifest, a slice is held out of training (``--holdout``) and its mAP is
logged to metrics.jsonl at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from datl.core.errors import UserError
from datl.core.specs import parse_model_spec
from datl.manifests import ManifestError, open_manifest
from datl.manifests.images import require_readable
from datl.neural.checkpoint import METRICS, load_foreign_weights, load_run, new_model
from datl.neural.data import image_spec
from datl.neural.engine import dist
from datl.neural.engine.loop import fit
from datl.neural.engine.optim import decay_groups

from .config import PretrainConfig

logger = logging.getLogger(__name__)


def run(cfg: PretrainConfig) -> Path:
    """Train cfg.model on the labeled manifest; returns the run folder."""
    cfg.check()
    with dist.session(cfg.device) as d:
        manifest = open_manifest(cfg.manifest)
        multi = manifest.multi_label
        classes, prior = training_labels(manifest)
        require_readable(manifest, "training")
        size, in_chans = image_spec(manifest, cfg.image_size, cfg.in_chans)
        torch.manual_seed(cfg.seed)
        model, model_cfg = new_model(
            cfg.model, classes, size, in_chans, cfg.params(), class_prior=prior.tolist(), multi_label=multi
        )
        if multi:
            bias_to_log_odds(model, prior)
        init_from(model, cfg, classes)
        held, pool = holdout(manifest, cfg) if multi else (None, None)
        out = fit(model, model_cfg, manifest, cfg, d, decay_groups(model, cfg.lr, cfg.weight_decay), pool=pool)
        if held is not None and len(held):
            if d.main:
                score_holdout(model, model_cfg, manifest, held, out, d)
            dist.barrier(d)
        return out


def training_labels(manifest) -> tuple[list[str], np.ndarray]:
    """Classes and the class prior a model records: class shares of a single-label manifest;
    of a multi-label one, the share of images carrying each label. Every row must be labeled
    (a multi-label row with an empty set is refused, as a single-label row with no label is)."""
    if not manifest.multi_label:
        classes, counts = manifest.require_training_labels("training")
        return classes, counts / max(counts.sum(), 1)
    classes = manifest.require_labels(multi=True)
    counts, n_empty, _ = manifest.label_set_counts()
    if n_empty:
        raise ManifestError(
            manifest.path,
            f"{n_empty:,} of its {manifest.num_rows:,} rows have an empty label set, and a training manifest "
            "needs every row labeled",
            "drop those rows, or give them labels",
        )
    if not manifest.num_rows:
        raise ManifestError(manifest.path, "has no rows", "pass a training manifest with labeled images")
    return classes, counts / manifest.num_rows


def bias_to_log_odds(model: nn.Module, prior: np.ndarray) -> None:
    """A sigmoid head starts at each label's log-odds in the training manifest, log(p / (1 - p)),
    so the first steps do not spend themselves pushing 18,000 outputs towards 'no' (the prior
    initialisation of Lin et al. 2017, focal loss)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    bias = getattr(head, "bias", None)
    if bias is None:
        return
    p = np.clip(prior, 1e-4, 1 - 1e-4)
    with torch.no_grad():
        bias.copy_(torch.as_tensor(np.log(p / (1 - p)), dtype=bias.dtype))


def holdout(manifest, cfg: PretrainConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(held-out rows, rows to train on) of a multi-label manifest: ``--holdout`` rows drawn
    by the seed (default 2% of the rows, at most 2,000), and every row that repeats a held-out
    row's id (a with-replacement sample) held out with it."""
    n = manifest.num_rows
    h = min(2000, n // 50) if cfg.holdout is None else cfg.holdout
    if h <= 0:
        return np.zeros(0, dtype=np.int64), None
    if h >= n - 1:
        raise UserError(
            "--holdout", f"{h:,} leaves fewer than 2 of the {n:,} rows to train on", "pass a smaller --holdout"
        )
    picked = np.sort(np.random.default_rng([cfg.seed, 0x401D]).choice(n, size=h, replace=False))
    held_ids = pc.unique(pa.concat_arrays([t.column(0).combine_chunks() for t in manifest.iter_take(picked, ["id"])]))
    out = np.concatenate(  # one streamed pass over the ids: memory by the batch, plus one bool a row
        [
            pc.is_in(b.column(0), value_set=held_ids).to_numpy(zero_copy_only=False)
            for b in manifest.iter_batches(["id"])
        ]
    )
    return np.flatnonzero(out), np.flatnonzero(~out)


def score_holdout(model: nn.Module, model_cfg, manifest, held: np.ndarray, out: Path, d) -> None:
    """The held-out slice's mAP (over the labels it has a positive of), appended to metrics.jsonl."""
    from datl.manifests import labelsets
    from datl.neural.checkpoint import LoadedModel
    from datl.neural.engine.inference import run_model
    from datl.neural.engine.metrics import mean_average_precision

    here = dist.Dist(0, 1, d.local_rank, d.device)
    rows, logits, _ = run_model(LoadedModel(model, model_cfg), manifest, here, "logits", progress=False, index=held)
    parts = [t.column(0).combine_chunks() for t in manifest.iter_take(rows, [manifest.label_column])]
    sets = pa.concat_arrays(parts) if parts else pa.array([], labelsets.list_type())
    offsets, values, _ = labelsets.flat(sets)
    targets = np.zeros(logits.shape, dtype=bool)
    targets[np.repeat(np.arange(len(rows)), np.diff(offsets)), values] = True
    m, k = mean_average_precision(logits, targets)
    record = {
        "step": model_cfg.params.get("steps_done"),
        "holdout_map": m,
        "holdout_images": len(rows),
        "holdout_labels": k,
    }
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
    logger.info(f"held-out mAP {m:.4f} on {len(rows):,} images ({k:,} labels with a positive among them)")


def init_from(model: nn.Module, cfg: PretrainConfig, classes: list[str]) -> None:
    """--init RUN_DIR (same classes) or --init timm:ARCH --weights FILE (backbone only)."""
    if not cfg.init:
        return
    spec = parse_model_spec(cfg.init, "--init")
    if spec.is_timm:
        arch = spec.arch
        if arch != cfg.model:
            raise UserError(
                "--init", f"{cfg.init} is another architecture than --model {cfg.model}", f"pass --model {arch}"
            )
        if not cfg.weights:
            raise UserError(
                "--init",
                f"{cfg.init} needs --weights FILE (a local state dict)",
                "pass --weights; nothing is downloaded",
            )
        load_foreign_weights(model, cfg.weights, keep_head=False)
        return
    src, src_cfg = load_run(cfg.init)
    if src_cfg.arch != cfg.model:
        raise UserError(
            cfg.init, f"holds a {src_cfg.arch}, not the --model {cfg.model}", f"pass --model {src_cfg.arch}"
        )
    if src_cfg.classes != classes:
        raise UserError(
            cfg.init,
            f"was trained on {len(src_cfg.classes)} other classes than the manifest's {len(classes)}",
            "use `finetune` to move a model to new classes",
        )
    model.load_state_dict(src.state_dict())
