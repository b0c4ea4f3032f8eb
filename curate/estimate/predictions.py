"""Per-image logits of ``curate estimate --save-predictions``, read back by ``--predictions``
to re-estimate with any method or temperature without running the model again.

One row per image: ``id``, ``set`` (target or calibration), ``label`` (calibration only),
``logits`` (fixed-size list of float32); the classes in the ``datl`` metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datl.core.errors import UserError
from datl.manifests import ManifestMeta, write_table

PREDICTION_SETS = ("target", "calibration")


def write_predictions(path, classes: list[str], parts: dict, meta_params: dict) -> None:
    """Per-image logits, so a user can re-estimate (`--predictions`) without re-running the model."""
    tables = []
    for name, (ids, logits, labels) in parts.items():
        k = logits.shape[1]
        flat = pa.array(logits.astype(np.float32).reshape(-1))
        tables.append(
            pa.table(
                {
                    "id": pa.array(ids, pa.string()),
                    "set": pa.array([name] * len(ids), pa.string()),
                    "label": pa.array(labels, pa.int32()),
                    "logits": pa.FixedSizeListArray.from_arrays(flat, k),
                }
            )
        )
    write_table(
        path, pa.concat_tables(tables), ManifestMeta(classes=classes, stage="estimate-predictions", params=meta_params)
    )


def read_predictions(path) -> tuple[list[str], dict, dict]:
    """classes, {set: (logits, labels)} and the file's params (model, class_prior) from a
    --save-predictions file."""
    path = Path(path)
    if not path.exists():
        raise UserError(path, "does not exist", "write it with `curate estimate --save-predictions`")
    t = pq.read_table(path)
    meta = ManifestMeta.from_schema(t.schema, path)
    if meta is None or not meta.classes or "logits" not in t.column_names:
        raise UserError(path, "is not a predictions file", "write it with `curate estimate --save-predictions`")
    out = {}
    for name in PREDICTION_SETS:
        sub = t.filter(pc.equal(t.column("set"), name))
        logits = sub.column("logits").combine_chunks().flatten().to_numpy().reshape(sub.num_rows, len(meta.classes))
        out[name] = (logits, sub.column("label").fill_null(-1).to_numpy())
    return list(meta.classes), out, dict(meta.params)
