"""`datl run` of a shrunken multilabel.yaml: the multi-label demo source, a sigmoid source
classifier, the paper's mean over its sigmoids, per-label samples, the label-subset arm; and
the multi-label demo data itself."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from datl.manifests import Manifest

from helpers import cli

PIPELINE = """
out: out
device: cpu
seeds: 2
stages:
  data: {run: demo-data, params: {fraction: 0.03, multi_label: true}}
  source_model:
    run: pretrain
    inputs: {train: "@data/source_train.parquet"}
    params: {model: test_resnet, steps: 4, batch_size: 16, workers: 0}
  prior: {run: estimate, inputs: {model: "@source_model", target: "@data/target_unlabeled.parquet"},
          params: {workers: 0}}
  weights:
    run: weight
    inputs: {source: "@data/source.parquet", prior: "@prior/prior.parquet"}
  sample_adaptive:
    run: sample
    per_seed: true
    inputs: {source: "@data/source.parquet", weights: "@weights/weights.parquet"}
    params: {size: 64}
  sample_subset:
    run: sample
    per_seed: true
    inputs: {source: "@data/source.parquet"}
    params: {size: 64, uniform: true, classes: "mnist/*,glyph/[0-9]"}
  sample_uniform:
    run: sample
    per_seed: true
    inputs: {source: "@data/source.parquet"}
    params: {size: 64, uniform: true}
compare:
  pretrain: {model: test_resnet, steps: 3, batch_size: 16, workers: 0}
  finetune:
    inputs: {train: "@data/target_train.parquet", val: "@data/target_val.parquet", test: "@data/target_test.parquet"}
    params: {steps: 3, batch_size: 16, workers: 0}
  arms:
    adaptive: "@sample_adaptive.s{seed}/sample.parquet"
    label_subset: "@sample_subset.s{seed}/sample.parquet"
    uniform: "@sample_uniform.s{seed}/sample.parquet"
  baseline: uniform
"""


def test_the_multi_label_demo_data_is_canvases_with_label_sets(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        res = cli("datl", "demo-data", "--multi-label", "--fraction", "0.03", "--out", str(d), "-q")
        assert res.returncode == 0, res.stderr
    assert "multi-label source:" in res.stdout
    t, u = pq.read_table(a / "source.parquet"), pq.read_table(b / "source.parquet")
    assert t.select(["id", "labels", "parts"]).equals(u.select(["id", "labels", "parts"]))  # the seed decides
    m = Manifest(a / "source.parquet")
    assert m.multi_label and len(m.classes) == 82 and m.num_rows == 360
    sets, parts = t.column("labels").to_pylist(), t.column("parts").to_pylist()
    assert all(1 <= len(s) <= len(p) and 2 <= len(p) <= 3 for s, p in zip(sets, parts))
    assert 2.0 < np.mean([len(s) for s in sets]) < 3.0
    fam = t.column("family").to_pylist()
    for f, s in zip(fam, sets):  # a one-family canvas carries only its family's classes
        if f != "mixed":
            assert {m.classes[c].split("/")[0] for c in s} == {f}
    assert Manifest(a / "target_test.parquet").classes == [str(d) for d in range(10)]
    assert Manifest(a / "source_train.parquet").num_rows + Manifest(a / "source_calibration.parquet").num_rows == 360


def test_a_multi_label_pipeline_runs_end_to_end(tmp_path):
    pipe = tmp_path / "multilabel.yaml"
    pipe.write_text(PIPELINE)
    res = cli("datl", "run", str(pipe))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "out"
    assert json.loads((out / "source_model" / "config.json").read_text())["multi_label"]
    assert "holdout_map" in (out / "source_model" / "metrics.jsonl").read_text()
    prior = json.loads(pq.read_schema(out / "prior" / "prior.parquet").metadata[b"datl"])
    assert prior["params"]["multi_label"]
    assert "p_expected" in pq.read_table(out / "weights" / "weights.parquet").column_names
    classes = Manifest(out / "data" / "source.parquet").classes
    digit = {i for i, c in enumerate(classes) if c.startswith("mnist/") or c in {f"glyph/{d}" for d in range(10)}}
    for s in (0, 1):
        sub = pq.read_table(out / f"sample_subset.s{s}" / "sample.parquet").column("labels").to_pylist()
        assert all(set(x) & digit for x in sub)
        ada = pq.read_table(out / f"sample_adaptive.s{s}" / "sample.parquet")
        assert ada.column("draw_label").null_count == 0
    for arm in ("adaptive", "label_subset", "uniform"):
        assert arm in res.stdout
    last = res.stdout.strip().splitlines()[-1]  # what the run's intervals establish, said last
    assert last.startswith("at 95% over 2 paired seeds, above uniform:"), last
    report = (out / "report.html").read_text()
    assert "p_expected" in report and '"sample_stage": "sample_adaptive.s0"' in report and "p_sample" in report
