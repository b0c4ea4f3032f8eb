"""Evaluation on a labeled test manifest: predictions and top-1 accuracy, by the shared
batched inference (``datl.neural.engine.inference.run_model``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from datl.core.files import write_json
from datl.manifests import Manifest, ManifestMeta, write_table
from datl.neural.checkpoint import LoadedModel, ModelConfig
from datl.neural.data import BadImageLog
from datl.neural.engine import dist
from datl.neural.engine.inference import run_model

PREDICTIONS = "predictions.parquet"
METRICS_JSON = "metrics.json"


@dataclass
class Predictions:
    ids: list[str]
    labels: np.ndarray
    preds: np.ndarray
    bad: BadImageLog


def predict(
    model: nn.Module,
    cfg: ModelConfig,
    manifest: Manifest,
    device: torch.device | str,
    batch_size: int = 256,
    workers: int = 0,
) -> Predictions:
    """The top-1 prediction of every readable image, with its id and label, in manifest order
    (this process alone: evaluation runs on rank 0)."""
    here = dist.Dist(0, 1, 0, torch.device(device))
    rows, logits, bad = run_model(
        LoadedModel(model, cfg), manifest, here, "logits", batch_size, workers, progress=False
    )
    t = manifest.read(["id", "label"])
    take = pa.array(rows)
    return Predictions(
        t.column("id").take(take).to_pylist(),
        t.column("label").take(take).to_numpy(zero_copy_only=False).astype(np.int64),
        logits.argmax(1).astype(np.int64),
        bad,
    )


def accuracy(p: Predictions, classes: list[str]) -> dict:
    """test_accuracy (top-1, 0..1), per_class_accuracy (class name -> accuracy or None), n_test."""
    n = len(p.labels)
    per_class = {}
    for k, name in enumerate(classes):
        mask = p.labels == k
        per_class[name] = float((p.preds[mask] == k).mean()) if mask.any() else None
    return {
        "test_accuracy": top1(p),
        "per_class_accuracy": per_class,
        "n_test": n,
        "n_unreadable": p.bad.count,
        "n_decode_warnings": p.bad.warned,
    }


def top1(p: Predictions) -> float:
    """Top-1 accuracy, 0..1 (0 for no labeled image)."""
    return float((p.preds == p.labels).mean()) if len(p.labels) else 0.0


def write_predictions(path: Path, p: Predictions, classes: list[str]) -> None:
    table = pa.table(
        {
            "id": pa.array(p.ids, pa.string()),
            "label": pa.array(p.labels, pa.int32()),
            "pred": pa.array(p.preds, pa.int32()),
        }
    )
    write_table(path, table, ManifestMeta(classes=classes, stage="finetune-predictions"))


def evaluate(
    model: nn.Module, model_cfg: ModelConfig, test: Manifest, device, out: Path, cfg, val: Manifest | None = None
) -> dict:
    """Predict ``test`` (and ``val``) with the trained model; write predictions.parquet (test's) and
    metrics.json, which holds val_accuracy and n_val when there is a validation set."""
    batch = max(cfg.batch_size, 256)
    preds = predict(model, model_cfg, test, device, batch_size=batch)
    preds.bad.report(str(test.path))
    write_predictions(out / PREDICTIONS, preds, model_cfg.classes)
    metrics = {**accuracy(preds, model_cfg.classes), "params": cfg.params()}
    if val is not None:
        v = predict(model, model_cfg, val, device, batch_size=batch)
        metrics.update(val_accuracy=top1(v), n_val=len(v.labels))
    write_json(out / METRICS_JSON, metrics)
    return metrics
