"""The size sweep: `sizes:` expands per-size stages and arms, each arm is paired with the
baseline AT ITS SIZE, and the report plots accuracy against size with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from datl.compare import compare
from datl.manifests import ManifestMeta, write_manifest
from datl.pipeline import load

from helpers import assert_user_error, cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_sweep_expands_per_size_and_seed():
    pipe = load(ROOT / "sweep.yaml")
    sizes, seeds = [1500, 3000, 6000, 12000, 24000], [0, 1, 2, 3, 4]
    assert pipe.arms == [f"{a}@{z}" for a in ("adaptive", "adaptive_elastic", "uniform") for z in sizes]
    s = pipe.stages["sample_elastic.z12000.s3"]
    assert s.params == {"size": 12000, "replacement": False, "seed": 3}
    assert pipe.stages["pretrain.adaptive@3000.s1"].inputs == {"train": "@sample_adaptive.z3000.s1/sample.parquet"}
    assert {n for n in pipe.stages if n.startswith("finetune.")} == {
        f"finetune.{a}.s{k}" for a in pipe.arms for k in seeds
    }
    assert pipe.stages["compare"].params["sizes"] == sizes


SWEEP = """
out: out
seeds: 3
sizes: [10, 20]
stages:
  data: {run: demo-data, params: {fraction: 0.03}}
  sample_uniform: {run: sample, per_seed: true, per_size: true, inputs: {source: "@data/source.parquet"},
                   params: {size: "{size}", uniform: true}}
compare:
  pretrain: {model: test_resnet}
  finetune: {inputs: {train: "@data/target_train.parquet", test: "@data/target_test.parquet"}}
  arms: {adaptive: "@sample_uniform.z{size}.s{seed}/sample.parquet",
         uniform: "@sample_uniform.z{size}.s{seed}/sample.parquet", scratch: null}
"""


def test_sweep_pairs_each_size_with_its_baseline_and_plots(tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    pipe = load(tmp_path / "sweep.yaml")
    # what the finished stages would leave: per-seed metrics and per-size pretraining sets
    rng = np.random.default_rng(0)
    acc = {}
    for arm in pipe.arms:
        for seed in pipe.seeds:
            acc[arm, seed] = float(rng.uniform(0.5, 0.9))
            f = pipe.out / f"finetune.{arm}.s{seed}" / "metrics.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps({"test_accuracy": acc[arm, seed]}))
    for z in (10, 20):
        for seed in pipe.seeds:
            ids = [f"x{i % 7}" for i in range(z)]
            write_manifest(
                pipe.out / f"sample_uniform.z{z}.s{seed}" / "sample.parquet",
                pa.table({"id": ids, "path": ids}),
                ManifestMeta(),
            )
    (pipe.out / "compare").mkdir()
    compare(pipe, pipe.stages["compare"], pipe.out / "compare")
    results = json.loads((pipe.out / "results.json").read_text())
    assert results["sizes"] == [10, 20]
    for z in (10, 20):
        vs = results["arms"][f"adaptive@{z}"]["vs_baseline"]
        diffs = [acc[f"adaptive@{z}", s] - acc[f"uniform@{z}", s] for s in pipe.seeds]
        assert vs["baseline"] == f"uniform@{z}" and abs(vs["diff_mean"] - np.mean(diffs)) < 1e-12
        assert results["arms"][f"adaptive@{z}"]["pretrain_size"] == z
        assert results["arms"][f"adaptive@{z}"]["distinct_images"] == 7
    assert "vs_baseline" not in results["arms"]["scratch"]  # no uniform at no size: nothing to pair with
    png = pipe.out / "compare" / "sweep.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert "![sweep](sweep.png)" in (pipe.out / "compare" / "report.md").read_text()


def test_bad_sizes_are_refused(tmp_path):
    for bad, fragment in (
        ("sizes: [10, 10]", "distinct positive"),
        ("sizes: [0]", "distinct positive"),
        ("sizes: 5", "distinct positive"),
    ):
        p = tmp_path / "s.yaml"
        p.write_text(SWEEP.replace("sizes: [10, 20]", bad))
        assert_user_error(cli("datl", "run", str(p), "--dry-run"), "s.yaml", "sizes", fragment)
    p.write_text(SWEEP.replace("sizes: [10, 20]\n", ""))
    assert_user_error(cli("datl", "run", str(p), "--dry-run"), "sample_uniform", "per_size", "no sizes")
