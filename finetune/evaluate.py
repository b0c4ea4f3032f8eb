"""Evaluation on a labeled test manifest: predictions and top-1 accuracy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader

from manifests import BadImageLog, ImageDataset, Manifest, ManifestMeta, collate_skip_bad, write_table
from pretrain.data import build_transform, image_mode
from pretrain.models import ModelConfig

PREDICTIONS = "predictions.parquet"


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray
    preds: np.ndarray
    bad: BadImageLog


@torch.no_grad()
def predict(model: nn.Module, cfg: ModelConfig, manifest: Manifest, device: torch.device,
            batch_size: int = 256, workers: int = 0) -> Predictions:
    transform = build_transform(tuple(cfg.image_size), cfg.in_chans, cfg.mean, cfg.std, train=False)
    ds = ImageDataset(manifest, transform=transform, mode=image_mode(cfg.in_chans))
    ids_all = manifest.read(["id"]).column("id")
    ids, labels, preds, bad = [], [], [], BadImageLog()
    model.eval()
    for batch in DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_bad):
        bad.add(batch.bad)
        if batch.images is None:
            continue
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch.images.to(device))
        preds.append(logits.float().argmax(1).cpu().numpy())
        labels.append(batch.labels.numpy())
        ids.extend(ids_all.take(pa.array(batch.index.numpy())).to_pylist())
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    return Predictions(ids, cat(labels), cat(preds), bad)


def accuracy(p: Predictions, classes: list[str]) -> dict:
    """test_accuracy (top-1, 0..1), per_class_accuracy (class name -> accuracy or None), n_test."""
    n = len(p.labels)
    per_class = {}
    for k, name in enumerate(classes):
        mask = p.labels == k
        per_class[name] = float((p.preds[mask] == k).mean()) if mask.any() else None
    return {"test_accuracy": float((p.preds == p.labels).mean()) if n else 0.0,
            "per_class_accuracy": per_class, "n_test": n, "n_unreadable": p.bad.count}


def write_predictions(path: Path, p: Predictions, classes: list[str]) -> None:
    table = pa.table({"id": pa.array(p.ids, pa.string()), "label": pa.array(p.labels, pa.int32()),
                      "pred": pa.array(p.preds, pa.int32())})
    write_table(path, table, ManifestMeta(classes=classes, stage="finetune-predictions"))
