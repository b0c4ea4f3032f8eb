"""Non-finite numbers never flow through with exit 0: a diverging training run stops (exit 1,
one line, the last good state kept); a model with non-finite outputs, a prior or a weights
table with a NaN, inf or negative entry are refused where they are read."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from datl.manifests import Manifest

from helpers import assert_user_error, cli


def _one_line(res, code: int, *fragments: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.slow
def test_a_diverging_run_stops_with_exit_1_and_keeps_the_state_before_the_bad_step(tmp_path, demo_small):
    out = tmp_path / "run"
    res = cli(
        "pretrain",
        "-m",
        str(demo_small / "source.parquet"),
        "--model",
        "test_resnet",
        "-o",
        str(out),
        "--steps",
        "30",
        "--lr",
        "10000",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "-q",
        "--device",
        "cpu",
    )
    _one_line(res, 1, str(out), "the training loss became", "lower --lr")
    assert not (out / "model.safetensors").exists()  # no finished-looking model from a diverged run
    # saving every step: whatever state.pt holds has finite weights, and the line says which step
    out = tmp_path / "run2"
    res = cli(
        "pretrain",
        "-m",
        str(demo_small / "source.parquet"),
        "--model",
        "test_resnet",
        "-o",
        str(out),
        "--steps",
        "30",
        "--lr",
        "10000",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "-q",
        "--device",
        "cpu",
        "--save-every",
        "1",
    )
    _one_line(res, 1, "the training loss became", "state.pt")
    state = torch.load(out / "state.pt", weights_only=True)
    assert 0 < state["step"] < 30 and f"step {state['step']}" in res.stderr  # the line names the step kept
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_model_with_non_finite_outputs_gives_no_prior(tmp_path, demo_small, random_model):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan_model"
    shutil.copytree(random_model, bad)
    weights = load_file(bad / "model.safetensors")
    key = next(k for k in weights if k.endswith("weight") and weights[k].ndim == 2)  # the classifier
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, bad / "model.safetensors")
    prior = tmp_path / "prior.parquet"
    res = cli(
        "curate",
        "estimate",
        "--model",
        str(bad),
        "--target",
        str(demo_small / "target_unlabeled.parquet"),
        "--out",
        str(prior),
        "--workers",
        "0",
        "--device",
        "cpu",
        "-q",
    )
    _one_line(res, 1, "non-finite logits")
    assert not prior.exists()


@pytest.mark.slow
def test_priors_and_weights_with_nan_inf_or_negative_entries_are_refused(tmp_path, demo_small, random_model):
    src = demo_small / "source.parquet"
    classes = Manifest(src).classes
    good = pa.table(
        {
            "label": pa.array(range(len(classes)), pa.int32()),
            "class_name": classes,
            "p_target": [1.0 / len(classes)] * len(classes),
        }
    )
    meta = pq.read_schema(src).metadata  # the source's classes, so only the value is wrong
    for value, fragment in ((float("nan"), "is nan"), (float("inf"), "is inf"), (-0.1, "is -0.1")):
        p = list(good.column("p_target").to_pylist())
        p[3] = value
        prior = tmp_path / "prior.parquet"
        pq.write_table(good.set_column(2, "p_target", pa.array(p)).replace_schema_metadata(meta), prior)
        out = tmp_path / "w.parquet"
        res = cli("curate", "weight", "--source", str(src), "--prior", str(prior), "--out", str(out), "--no-plot")
        assert_user_error(res, "prior.parquet", f"p_target of class '{classes[3]}' {fragment}")
        assert not out.exists()
    # a weights table with a negative weight: sample refuses it
    prior = tmp_path / "prior.parquet"
    pq.write_table(good.replace_schema_metadata(meta), prior)
    weights = tmp_path / "w.parquet"
    assert (
        cli(
            "curate", "weight", "--source", str(src), "--prior", str(prior), "--out", str(weights), "--no-plot"
        ).returncode
        == 0
    )
    t = pq.read_table(weights)
    w = t.column("weight").to_pylist()
    w[5] = -1.0
    pq.write_table(t.set_column(t.schema.get_field_index("weight"), "weight", pa.array(w)), weights)
    res = cli(
        "curate",
        "sample",
        "--source",
        str(src),
        "--weights",
        str(weights),
        "--size",
        "10",
        "--out",
        str(tmp_path / "s.parquet"),
    )
    assert_user_error(res, "w.parquet", "weight of label 5 is -1")
    assert not (tmp_path / "s.parquet").exists()
