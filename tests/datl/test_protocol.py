"""The default pipeline's protocol, checked from what its stages are given (not from a flag):
P_t(y), and the per-image weights' domain classifier, are estimated without a test image;
dedup sees every target image; every choice is made on a validation split disjoint from test;
the source classifier never trains on the calibration split."""

from __future__ import annotations

from pathlib import Path

from datl.manifests import Manifest
from datl.pipeline import load, ref_file, ref_stage

ROOT = Path(__file__).resolve().parents[2]


def _paths(demo: Path, ref: str) -> set[str]:
    """The image paths of the manifest a ``@data/NAME.parquet`` ref names, in the demo folder."""
    assert ref_stage(ref) == "data", ref
    return set(Manifest(demo / ref_file(ref)).read(["path"]).column("path").to_pylist())


def test_the_default_pipeline_never_estimates_or_chooses_on_test_images(demo_small):
    pipe = load(ROOT / "pipeline.yaml")
    test = _paths(demo_small, "@data/target_test.parquet")
    everything = _paths(demo_small, "@data/target_all.parquet")
    kinds = {}
    for stage in pipe.stages.values():
        kinds.setdefault(stage.kind, []).append(stage)
    assert len(kinds["estimate"]) == 2  # the paper's mean and auto (the estimator chosen on the calibration split)
    for st in kinds["estimate"]:
        target = _paths(demo_small, st.inputs["target"])
        assert target and target.isdisjoint(test), st.name
        if "calibration" in st.inputs:  # calibrated on source images the classifier never trained on
            (trainer,) = [s for s in kinds["pretrain"] if s.name == ref_stage(st.inputs["model"])]
            assert _paths(demo_small, st.inputs["calibration"]).isdisjoint(_paths(demo_small, trainer.inputs["train"]))
    per_image = [st for st in kinds["weight"] if "target_features" in st.inputs]
    assert per_image  # the per-image weights' domain classifier, too, sees no test image
    for st in per_image:
        store = pipe.stages[ref_stage(st.inputs["target_features"])]
        target = _paths(demo_small, store.inputs["source"])
        assert target and target.isdisjoint(test), st.name
    for st in kinds["dedup"]:
        assert test <= _paths(demo_small, st.inputs["target"]) == everything, st.name
    for st in kinds["finetune"]:
        assert _paths(demo_small, st.inputs["test"]) == test
        assert _paths(demo_small, st.inputs["val"]).isdisjoint(test)
        assert _paths(demo_small, st.inputs["train"]).isdisjoint(test)
    compare = pipe.stages["compare"].params
    assert compare["select"] and compare["baseline"] in compare["arms"]
