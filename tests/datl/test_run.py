"""datl run: a shrunken pipeline end to end, skipped when up to date, partial reruns,
resuming a killed run, and bad pipeline files refused before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from datl.manifests import Manifest

from helpers import BIN, assert_user_error, cli
from pipelines import PIPELINE, copy_run, statuses, write


@pytest.mark.slow
def test_pipeline_end_to_end_then_cached_then_partial_rerun(pipeline_run, tmp_path):
    shared, first = pipeline_run
    assert first.returncode == 0, first.stdout + first.stderr
    pipe = copy_run(shared, tmp_path)  # reruns in place, so on a copy: the report test reads the original
    st = statuses(first.stdout)
    assert len(st) == 16 and set(st.values()) == {"ran"}, st
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"adaptive", "scratch"}
    ad = results["arms"]["adaptive"]
    assert ad["pretrain_size"] == 64 and results["arms"]["scratch"]["pretrain_size"] == 0
    assert len(ad["per_seed"]) == 2 and min(ad["per_seed"].values()) <= ad["test_accuracy"] <= max(
        ad["per_seed"].values()
    )
    # a with-replacement sample of 64 draws from ~750 images: fewer distinct images than draws
    sample_ids = Manifest(out / "sample_adaptive.s0" / "sample.parquet").read(["id"]).column(0).to_pylist()
    assert ad["distinct_images"] == len(set(sample_ids)) < 64
    vs = ad["vs_baseline"]
    diffs = [ad["per_seed"][s] - results["arms"]["scratch"]["per_seed"][s] for s in ("0", "1")]
    assert vs["baseline"] == "scratch" and vs["n_pairs"] == 2 and abs(vs["diff_mean"] - sum(diffs) / 2) < 1e-12
    assert vs["ci95"][0] <= vs["diff_mean"] <= vs["ci95"][1] and "vs_baseline" not in results["arms"]["scratch"]
    # the choice between arms is made on validation accuracy, which every fine-tuning reports
    val = {a: sum(r["val_per_seed"].values()) / 2 for a, r in results["arms"].items()}
    sel = results["selection"]
    assert sel["val_accuracy"] == val and sel["chosen"] == max(
        ["scratch", "adaptive"], key=lambda a: (val[a], a == "scratch")
    )
    assert sel["test_accuracy"] == results["arms"][sel["chosen"]]["test_accuracy"]
    assert "chosen on validation accuracy" in first.stdout
    assert "adaptive" in first.stdout.split("results:")[0].splitlines()[-4]  # the table is printed
    assert "![weights](weights/weights.png)" in (out / "report.md").read_text()
    assert (out / "logs" / "pretrain.adaptive.s1.log").read_text().startswith("$ ")
    assert "--source-features=" in (out / "logs" / "dedup.log").read_text().splitlines()[0]  # fed by the store
    assert json.loads((out / "features" / "store.json").read_text())["model"] != "none"
    assert Manifest(out / "sample_adaptive.s1" / "sample.parquet").meta.params["seed"] == 1

    again = cli("datl", "run", str(pipe))
    assert again.returncode == 0, again.stderr
    assert set(statuses(again.stdout).values()) == {"skipped"}

    write(tmp_path, size=48)  # one parameter of one stage: it and what reads it rerun, nothing else
    third = cli("datl", "run", str(pipe))
    assert third.returncode == 0, third.stderr
    ran = {n for n, s in statuses(third.stdout).items() if s == "ran"}
    assert ran == {
        "sample_adaptive.s0",
        "sample_adaptive.s1",
        "pretrain.adaptive.s0",
        "pretrain.adaptive.s1",
        "finetune.adaptive.s0",
        "finetune.adaptive.s1",
        "compare",
    }, ran
    assert json.loads((out / "results.json").read_text())["arms"]["adaptive"]["pretrain_size"] == 48

    fourth = cli("datl", "run", str(pipe), "--from", "prior", "-q")
    assert fourth.returncode == 0, fourth.stderr
    assert (out / "prior" / "stamp.json").stat().st_mtime > (out / "dedup" / "stamp.json").stat().st_mtime


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    pipe = write(tmp_path, source_steps=200)
    # only the stages up to the one killed: what follows it is the end-to-end test's business
    pipe.write_text(pipe.read_text().split("  prior:")[0])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(BIN / "datl"), "run", str(pipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    state = out / "source_model" / "state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert state.exists(), "the source model never saved its state"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its stage, as a scheduler would
    proc.wait()
    assert (out / "data" / "stamp.json").exists() and not (out / "source_model" / "stamp.json").exists()
    rerun = cli("datl", "run", str(pipe))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert statuses(rerun.stdout)["data"] == "skipped" and "source_model: running (resuming)" in rerun.stdout
    log = (out / "source_model" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log]
    assert steps == sorted(set(steps)) and steps[-1] == 200  # continued, no step logged twice


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (("run: estimate", "run: estimat"), ("stage 'prior'", "unknown stage kind 'estimat'")),
        (
            ('target: "@data/target_unlabeled.parquet"}}', 'target: "nope/t.parquet"}}'),
            ("stage 'prior' input 'target'", "'nope/t.parquet' does not exist"),
        ),
        (
            ('prior: "@prior/prior.parquet"', 'prior: "@priors/prior.parquet"'),
            ("stage 'weights' input 'prior'", "no stage 'priors' produces"),
        ),
        (
            ('inputs: {{train: "@data/source.parquet"}}', 'inputs: {{train: "@weights/weights.parquet"}}'),
            ("is in a cycle", "source_model"),
        ),
        (("batch_size: 16, workers: 0, save_every: 2", "batch_sise: 16"), ("stage 'source_model' param 'batch_sise'",)),
        (
            ("batch_size: 16, workers: 0, save_every: 2", "batch_size: 16, workers: 0, save_every: 0"),
            ("stage 'source_model' param 'save_every'", "outside [1, inf)"),
        ),
        (("params: {{size: {size}}}", "params: {{size: {size}}}\n    oops: 1"), ("stage 'sample_adaptive'", "'oops'")),
        (("select: [scratch, adaptive]", "select: [scratch, nope]"), ("compare select", "two or more of the arms")),
        (('val: "@data/target_val.parquet", ', ""), ("compare select", "no val input")),
    ],
)
@pytest.mark.slow
def test_bad_pipelines_are_refused_before_anything_runs(tmp_path, edit, fragments):
    text = PIPELINE.replace(*edit).format(size=64, source_steps=4)
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    assert_user_error(cli("datl", "run", str(p)), "bad.yaml", *fragments)
    assert not (tmp_path / "out").exists()


def test_missing_pipeline_file(tmp_path):
    assert_user_error(cli("datl", "run", str(tmp_path / "none.yaml")), "none.yaml", "does not exist")


def test_empty_pipeline_and_a_folder_are_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing here yet\n")
    assert_user_error(cli("datl", "run", str(tmp_path / "empty.yaml")), "empty.yaml", "stages", "nothing to run")
    assert_user_error(cli("datl", "run", str(tmp_path)), str(tmp_path), "is not a file")


def test_a_param_value_that_looks_like_a_flag_stays_a_value(tmp_path):
    """`model: "--out=/elsewhere"` must reach pretrain as the model's name, never as its --out."""
    from datl.pretrain.cli import cli as pretrain_cli
    from datl.stages import command_line

    argv = command_line(
        "pretrain",
        tmp_path / "stage",
        {"train": "m.parquet"},
        {"model": "--out=/elsewhere", "steps": 3},
        "cpu",
        tmp_path / "cache",
        None,
    )
    ctx = pretrain_cli.make_context("pretrain", argv[1:])
    assert ctx.params["model"] == "--out=/elsewhere" and ctx.params["out"] == str(tmp_path / "stage")
