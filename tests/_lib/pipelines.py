"""The shrunken pipeline that tests/datl runs end to end: once per pytest run (the
``pipeline_run`` fixture of tests/datl/conftest.py), shared by the end-to-end test of
``datl run`` and the report test, which need the same kind of finished run."""

from __future__ import annotations

import shutil
from pathlib import Path

PIPELINE = """
out: out
device: cpu
seeds: 2
stages:
  data: {{run: demo-data, params: {{fraction: 0.03}}}}
  source_model:
    run: pretrain
    inputs: {{train: "@data/source.parquet"}}
    params: {{model: test_resnet, steps: {source_steps}, batch_size: 16, workers: 0, save_every: 2}}
  prior: {{run: estimate, inputs: {{model: "@source_model", target: "@data/target_unlabeled.parquet"}},
          params: {{workers: 0}}}}
  prior_em: {{run: estimate, inputs: {{model: "@source_model", target: "@data/target_unlabeled.parquet",
                                      calibration: "@data/source_calibration.parquet"}},
             params: {{method: em, workers: 0}}}}
  features:
    run: features
    inputs: {{source: "@data/source.parquet", model: "@source_model"}}
    params: {{workers: 0}}
  dedup:
    run: dedup
    inputs: {{source: "@data/source.parquet", target: "@data/target_all.parquet", model: "@source_model",
             source_features: "@features"}}
    params: {{workers: 0, threshold: 0.9, pixel_threshold: 0.9}}
  weights:
    run: weight
    inputs: {{source: "@data/source.parquet", prior: "@prior/prior.parquet", exclude: "@dedup/duplicates.parquet"}}
  sample_adaptive:
    run: sample
    per_seed: true
    inputs: {{source: "@data/source.parquet", weights: "@weights/weights.parquet",
             exclude: "@dedup/duplicates.parquet"}}
    params: {{size: {size}}}
compare:
  pretrain: {{model: test_resnet, steps: 3, batch_size: 16, workers: 0}}
  finetune:
    inputs: {{train: "@data/target_train.parquet", val: "@data/target_val.parquet", test: "@data/target_test.parquet"}}
    params: {{steps: 3, batch_size: 16, workers: 0}}
  arms:
    adaptive: "@sample_adaptive.s{{seed}}/sample.parquet"
    scratch: null
  baseline: scratch
  select: [scratch, adaptive]
  plot: "@weights/weights.png"
"""


def write(tmp: Path, name: str = "pipeline.yaml", **kw) -> Path:
    p = tmp / name
    p.write_text(PIPELINE.format(**({"size": 64, "source_steps": 4} | kw)))
    return p


def statuses(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("[") and "]" in line:
            name, _, rest = line.split("] ", 1)[1].partition(": ")
            out[name] = "skipped" if rest.startswith("up to date") else "ran"
    return out


def copy_run(pipe: Path, to: Path) -> Path:
    """A copy of a finished run (pipeline file and out/) to rerun in place; its stages are up to
    date there too: stage keys hold content hashes and refs, never absolute paths."""
    shutil.copytree(pipe.parent, to, dirs_exist_ok=True, ignore=shutil.ignore_patterns("result.json"))
    return to / pipe.name
