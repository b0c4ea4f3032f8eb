"""The reliability probe: bad input, faults and safety cells over every command (issue 24), each
run as a user would run it (a real command line in a fresh folder) and classed by what happened.

A cell sets up its inputs in its own folder and returns the command and what it promises:
``refused`` (exit 2, one line on stderr naming ``culprit``, no traceback, nothing new among the
outputs), ``works`` (exit 0), ``warns`` (exit 0 and a warning line holding ``culprit``). Files
listed in ``keep`` are the user's: any change to them is data loss. Classes, worst first:

    traceback   a Python traceback reached the user
    data loss   a file of the user's was changed or deleted
    wrong exit  exit 0 where the command should have refused (or the reverse)
    unclear     the right exit code, but not the promised one line (or warning)
    ok

tests/test_probe.py runs every cell; ``python tests/probe.py`` prints the counts by class.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BIN = Path(os.environ.get("DATL_PROBE_BIN") or Path(sys.executable).parent)  # the commands probed
CLASSES = ("traceback", "data loss", "wrong exit", "unclear", "ok")


@dataclass
class Case:
    argv: list[str]
    expect: str  # refused | works | warns
    culprit: str = ""  # a fragment the error (or warning) line names
    keep: list[Path] = field(default_factory=list)  # the user's files: never changed
    absent: list[Path] = field(default_factory=list)  # outputs that must not exist afterwards
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None  # more: a problem, or None


@dataclass
class World:
    """What cells build on: a small real demo and a random model (made once)."""

    demo: Path
    model: Path


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        out[str(p)] = (
            "missing" if not p.exists() else "|".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
        )
    return out


def classify(case: Case, res: subprocess.CompletedProcess, before: dict[str, str]) -> tuple[str, str]:
    """(class, why) of one run."""
    if "Traceback" in res.stderr or "Traceback" in res.stdout:
        return "traceback", res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "traceback"
    after = digest(case.keep)
    lost = [k for k in before if before[k] != after[k]]
    if lost:
        return "data loss", f"changed: {lost[0]}"
    left = [p for p in case.absent if p.exists()]
    if case.expect == "refused":
        if res.returncode == 0:
            return "wrong exit", "exit 0"
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        if res.returncode != 2 or len(lines) != 1 or case.culprit not in lines[0]:
            return "unclear", f"exit {res.returncode}: {res.stderr.strip()[:300]}"
        if left:
            return "data loss", f"left behind: {left[0]}"  # a half-written output
    else:
        if res.returncode != 0:
            return "wrong exit", f"exit {res.returncode}: {res.stderr.strip()[-300:]}"
        if case.expect == "warns" and not any(
            ln.startswith("warning:") and case.culprit in ln for ln in res.stderr.splitlines()
        ):
            return "unclear", f"no warning naming {case.culprit!r}: {res.stderr.strip()[:300]}"
        if left:
            return "data loss", f"left behind: {left[0]}"
    if case.check is not None and (problem := case.check(res)):
        return "unclear", problem
    return "ok", ""


def run_case(case: Case) -> tuple[str, str]:
    before = digest(case.keep)
    argv = [str(BIN / case.argv[0]), *case.argv[1:]]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return classify(case, res, before)


# -- helpers the cells share ---------------------------------------------------------------
def manifest(path: Path, paths: list[str], labels: list[int] | None, classes: list[str] | None) -> Path:
    from datl.manifests import ManifestMeta, write_manifest

    cols = {"id": pa.array([f"r{i}" for i in range(len(paths))]), "path": pa.array(paths)}
    if labels is not None:
        cols["label"] = pa.array(labels, pa.int32())
    return write_manifest(path, pa.table(cols), ManifestMeta(classes=classes))


def pngs(folder: Path, n: int, size: int = 16, truncated: bool = False) -> list[str]:
    """``n`` real grey PNGs (or PNGs cut short after their header: they open, and fail to decode)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    names = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(p)
        if truncated:
            p.write_bytes(p.read_bytes()[:60])
        names.append(str(p))
    return names


def run_folder_copy(world: World, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(world.model, run)
    return run


TRAIN = ["--model", "test_resnet", "--steps", "2", "--workers", "0", "-q"]


# -- the cells -------------------------------------------------------------------------------
def batch_of_one(world: World, tmp: Path) -> Case:
    """9 rows at --batch-size 8: the epoch's last batch holds one image (BatchNorm)."""
    m = manifest(tmp / "m.parquet", pngs(tmp / "img", 9), [i % 3 for i in range(9)], ["a", "b", "c"])
    return Case(
        [
            "pretrain",
            "-m",
            str(m),
            "--out",
            str(tmp / "out"),
            "--batch-size",
            "8",
            *TRAIN[:2],
            "--epochs",
            "2",
            "--workers",
            "0",
            "-q",
        ],
        "works",
        check=lambda r: None if (tmp / "out" / "model.safetensors").exists() else "no model written",
    )


def batch_size_one(world: World, tmp: Path) -> Case:
    m = manifest(tmp / "m.parquet", pngs(tmp / "img", 4), [0, 1, 0, 1], ["a", "b"])
    return Case(
        ["pretrain", "-m", str(m), "--out", str(tmp / "out"), "--batch-size", "1", *TRAIN],
        "refused",
        "--batch-size",
        absent=[tmp / "out"],
    )


def default_plot_over_a_users_file(world: World, tmp: Path) -> Case:
    prior = tmp / "prior.parquet"
    _uniform_prior(world, prior)
    mine = tmp / "w.png"
    mine.write_text("my notes, not a plot")
    return Case(
        [
            "curate",
            "weight",
            "--source",
            str(world.demo / "source.parquet"),
            "--prior",
            str(prior),
            "--out",
            str(tmp / "w.parquet"),
        ],
        "refused",
        "w.png",
        keep=[mine],
        absent=[tmp / "w.parquet"],
    )


def _uniform_prior(world: World, path: Path) -> None:
    from datl.manifests import Manifest, ManifestMeta, write_table

    classes = Manifest(world.demo / "source.parquet").classes
    k = len(classes)
    t = pa.table({"label": pa.array(np.arange(k), pa.int32()), "class_name": classes, "p_target": np.full(k, 1 / k)})
    write_table(path, t, ManifestMeta(classes=classes, stage="estimate"))


def prior_missing_classes(world: World, tmp: Path) -> Case:
    from datl.manifests import ManifestMeta, write_table

    prior = tmp / "prior.parquet"
    _uniform_prior(world, prior)
    t = pq.read_table(prior).slice(0, 40)
    write_table(prior, t, ManifestMeta(classes=json.loads(pq.read_schema(prior).metadata[b"datl"])["classes"]))
    return Case(
        [
            "curate",
            "weight",
            "--source",
            str(world.demo / "source.parquet"),
            "--prior",
            str(prior),
            "--out",
            str(tmp / "w.parquet"),
        ],
        "refused",
        "40 of its 82 classes",
        absent=[tmp / "w.parquet"],
    )


def plot_that_fails(world: World, tmp: Path) -> Case:
    prior = tmp / "prior.parquet"
    _uniform_prior(world, prior)
    (tmp / "plotdir").mkdir()
    return Case(
        [
            "curate",
            "weight",
            "--source",
            str(world.demo / "source.parquet"),
            "--prior",
            str(prior),
            "--out",
            str(tmp / "w.parquet"),
            "--plot",
            str(tmp / "plotdir"),
        ],
        "refused",
        "plotdir",
        absent=[tmp / "w.parquet"],
    )


def all_zero_weights(world: World, tmp: Path) -> Case:
    from datl.manifests import ManifestMeta, write_table

    prior = tmp / "prior.parquet"
    _uniform_prior(world, prior)
    w = tmp / "w.parquet"
    subprocess.run(
        [
            str(BIN / "curate"),
            "weight",
            "--source",
            str(world.demo / "source.parquet"),
            "--prior",
            str(prior),
            "--out",
            str(w),
            "--no-plot",
        ],
        check=True,
        capture_output=True,
    )
    t = pq.read_table(w)
    t = t.set_column(t.schema.get_field_index("weight"), "weight", pa.array(np.zeros(t.num_rows)))
    write_table(w, t, ManifestMeta(classes=json.loads(pq.read_schema(w).metadata[b"datl"])["classes"]))
    return Case(
        [
            "curate",
            "sample",
            "--source",
            str(world.demo / "source.parquet"),
            "--weights",
            str(w),
            "--size",
            "10",
            "--no-replacement",
            "--out",
            str(tmp / "s.parquet"),
        ],
        "refused",
        "every weight is 0",
        absent=[tmp / "s.parquet"],
    )


def huge_size(exponent: int) -> Callable[[World, Path], Case]:
    def cell(world: World, tmp: Path) -> Case:
        return Case(
            [
                "curate",
                "sample",
                "--source",
                str(world.demo / "source.parquet"),
                "--uniform",
                "--size",
                str(10**exponent),
                "--out",
                str(tmp / "s.parquet"),
            ],
            "refused",
            "--size",
            absent=[tmp / "s.parquet"],
        )

    return cell


def pretrain_on_nothing_readable(world: World, tmp: Path) -> Case:
    m = manifest(tmp / "m.parquet", pngs(tmp / "img", 6, truncated=True), [0, 1] * 3, ["a", "b"])
    return Case(
        ["pretrain", "-m", str(m), "--out", str(tmp / "out"), *TRAIN],
        "refused",
        "no readable image",
        absent=[tmp / "out"],
    )


def finetune_test_on_nothing_readable(world: World, tmp: Path) -> Case:
    test = manifest(
        tmp / "t.parquet", pngs(tmp / "img", 6, truncated=True), [i % 10 for i in range(6)], [str(d) for d in range(10)]
    )
    return Case(
        [
            "finetune",
            "--model",
            "test_resnet",
            "--train",
            str(world.demo / "target_train.parquet"),
            "--test",
            str(test),
            "--out",
            str(tmp / "out"),
            "--steps",
            "2",
            "--workers",
            "0",
            "-q",
        ],
        "refused",
        "no readable image",
        absent=[tmp / "out"],
    )


def dedup_unreadable_target(world: World, tmp: Path) -> Case:
    good = [str(world.demo / p) for p in pq.read_table(world.demo / "target_all.parquet").column("path").to_pylist()]
    t = manifest(tmp / "t.parquet", good[:20] + pngs(tmp / "bad", 3, truncated=True), None, None)
    return Case(
        [
            "curate",
            "dedup",
            "--source",
            str(world.demo / "source.parquet"),
            "--target",
            str(t),
            "--no-feature",
            "--out",
            str(tmp / "d.parquet"),
            "-q",
            "--workers",
            "0",
        ],
        "warns",
        "3 of 23 target image(s) could not be read",
    )


def dedup_unreadable_source_leaves_no_cache(world: World, tmp: Path) -> Case:
    s = manifest(tmp / "s.parquet", pngs(tmp / "bad", 5, truncated=True), None, None)
    return Case(
        [
            "curate",
            "dedup",
            "--source",
            str(s),
            "--target",
            str(world.demo / "target_all.parquet"),
            "--no-feature",
            "--out",
            str(tmp / "d.parquet"),
            "-q",
            "--workers",
            "0",
        ],
        "refused",
        "no readable image",
        absent=[tmp / "d.parquet"],
        check=lambda r: "chunk files left" if list((tmp / "embeddings").glob("*.chunks.*")) else None,
    )


def dedup_default_cache_is_a_users_folder(world: World, tmp: Path) -> Case:
    (tmp / "embeddings").mkdir()
    mine = tmp / "embeddings" / "thesis.txt"
    mine.write_text("mine")
    return Case(
        [
            "curate",
            "dedup",
            "--source",
            str(world.demo / "source.parquet"),
            "--target",
            str(world.demo / "target_all.parquet"),
            "--no-feature",
            "--out",
            str(tmp / "d.parquet"),
            "-q",
        ],
        "refused",
        "embeddings",
        keep=[mine],
        absent=[tmp / "d.parquet"],
    )


def config_weights_mismatch(world: World, tmp: Path) -> Case:
    run = run_folder_copy(world, tmp)
    cfg = json.loads((run / "config.json").read_text())
    cfg["classes"] = cfg["classes"] + ["extra"]  # the head's shape no longer fits the weights
    (run / "config.json").write_text(json.dumps(cfg))
    return Case(
        [
            "curate",
            "estimate",
            "--model",
            str(run),
            "--target",
            str(world.demo / "target_unlabeled.parquet"),
            "--out",
            str(tmp / "p.parquet"),
            "-q",
            "--workers",
            "0",
        ],
        "refused",
        "model.safetensors",
        absent=[tmp / "p.parquet"],
    )


def truncated_weights(world: World, tmp: Path) -> Case:
    run = run_folder_copy(world, tmp)
    w = run / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return Case(
        [
            "curate",
            "estimate",
            "--model",
            str(run),
            "--target",
            str(world.demo / "target_unlabeled.parquet"),
            "--out",
            str(tmp / "p.parquet"),
            "-q",
            "--workers",
            "0",
        ],
        "refused",
        "model.safetensors",
        absent=[tmp / "p.parquet"],
    )


def huge_image_size_in_config(world: World, tmp: Path) -> Case:
    run = run_folder_copy(world, tmp)
    cfg = json.loads((run / "config.json").read_text())
    cfg["image_size"] = [100000, 100000]
    (run / "config.json").write_text(json.dumps(cfg))
    return Case(
        [
            "curate",
            "estimate",
            "--model",
            str(run),
            "--target",
            str(world.demo / "target_unlabeled.parquet"),
            "--out",
            str(tmp / "p.parquet"),
            "-q",
            "--workers",
            "0",
        ],
        "refused",
        "image_size",
        absent=[tmp / "p.parquet"],
    )


def _trained(world: World, tmp: Path, m: Path | None = None) -> Path:
    m = m or world.demo / "target_train.parquet"
    subprocess.run(
        [
            str(BIN / "pretrain"),
            "-m",
            str(m),
            "--out",
            str(tmp / "out"),
            *TRAIN,
            "--stop-after-steps",
            "1",
            "--save-every",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    return tmp / "out"


def resume_a_pickle(world: World, tmp: Path) -> Case:
    """A state.pt that is a pickle of something other than tensors (here: a reference to a builtin)."""
    import pickle

    out = _trained(world, tmp)
    (out / "state.pt").write_bytes(pickle.dumps(print))
    return Case(
        ["pretrain", "-m", str(world.demo / "target_train.parquet"), "--out", str(out), *TRAIN, "--resume"],
        "refused",
        "state.pt",
    )


def resume_another_model(world: World, tmp: Path) -> Case:
    out = _trained(world, tmp)
    argv = [
        "pretrain",
        "-m",
        str(world.demo / "target_train.parquet"),
        "--out",
        str(out),
        "--model",
        "resnet18",
        "--steps",
        "2",
        "--workers",
        "0",
        "-q",
        "--resume",
    ]
    return Case(argv, "refused", "state.pt")


def resume_another_manifest(world: World, tmp: Path) -> Case:
    out = _trained(world, tmp)
    return Case(
        ["pretrain", "-m", str(world.demo / "target_val.parquet"), "--out", str(out), *TRAIN, "--resume"],
        "refused",
        "another manifest",
    )


def demo_negative_seed(world: World, tmp: Path) -> Case:
    return Case(["datl", "demo-data", "--out", str(tmp / "d"), "--seed", "-1"], "refused", "--seed", absent=[tmp / "d"])


def demo_tiny_fraction(world: World, tmp: Path) -> Case:
    return Case(
        ["datl", "demo-data", "--out", str(tmp / "d"), "--fraction", "0.0001", "-q"],
        "refused",
        "--fraction",
        absent=[tmp / "d"],
    )


def demo_rebuild_keeps_a_users_file(world: World, tmp: Path) -> Case:
    d = tmp / "d"
    subprocess.run(
        [str(BIN / "datl"), "demo-data", "--out", str(d), "--fraction", "0.03", "-q"], check=True, capture_output=True
    )
    mine = d / "images" / "my_drawing.png"
    mine.write_bytes(b"mine")
    return Case(
        ["datl", "demo-data", "--out", str(d), "--fraction", "0.04", "-q"], "refused", "my_drawing.png", keep=[mine]
    )


PIPELINE = """out: out
device: cpu
stages:
  data: {run: demo-data, params: {fraction: 0.03}}
"""


def _pipeline(tmp: Path, extra: str = "") -> Path:
    p = tmp / "p.yaml"
    p.write_text(PIPELINE + extra)
    return p


def force_keeps_a_users_file(world: World, tmp: Path) -> Case:
    p = _pipeline(tmp)
    subprocess.run([str(BIN / "datl"), "run", str(p), "-q"], check=True, capture_output=True)
    mine = tmp / "out" / "data" / "notes.txt"
    mine.write_text("mine")
    return Case(["datl", "run", str(p), "--force", "-q"], "refused", "notes.txt", keep=[mine])


def param_writing_outside_out(world: World, tmp: Path) -> Case:
    mine = tmp / "mydata.txt"
    mine.write_text("mine")
    extra = f"""  model: {{run: pretrain, inputs: {{train: "@data/target_train.parquet"}},
          params: {{model: test_resnet, steps: 1, workers: 0}}}}
  prior: {{run: estimate, inputs: {{model: "@model", target: "@data/target_unlabeled.parquet"}},
          params: {{save_predictions: {mine}, workers: 0}}}}
"""
    return Case(
        ["datl", "run", str(_pipeline(tmp, extra)), "-q"],
        "refused",
        "save_predictions",
        keep=[mine],
        absent=[tmp / "out" / "data"],
    )


def stage_named_logs(world: World, tmp: Path) -> Case:
    p = tmp / "p.yaml"
    p.write_text(PIPELINE.replace("  data:", "  logs:"))
    return Case(["datl", "run", str(p), "-q"], "refused", "logs", absent=[tmp / "out"])


def malformed_param_leaves_no_folder(world: World, tmp: Path) -> Case:
    extra = """  sample: {run: sample, inputs: {source: "@data/source.parquet"}, params: {uniform: true, size: lots}}
"""
    return Case(["datl", "run", str(_pipeline(tmp, extra)), "-q"], "refused", "sample", absent=[tmp / "out" / "sample"])


def report_with_a_corrupt_stamp(world: World, tmp: Path) -> Case:
    p = _pipeline(tmp)
    subprocess.run([str(BIN / "datl"), "run", str(p), "-q"], check=True, capture_output=True)
    (tmp / "out" / "data" / "stamp.json").write_text("{not json")
    (tmp / "out" / "other").mkdir()
    (tmp / "out" / "other" / "stamp.json").write_text(json.dumps({"kind": "demo-data", "inputs": {}}))
    return Case(["datl", "report", str(tmp / "out")], "warns", "data/stamp.json")


def validate_list_is_the_same_every_run(world: World, tmp: Path) -> Case:
    bad = tmp / "notanimage.png"
    bad.write_text("hello")
    m = manifest(tmp / "m.parquet", [str(bad)], None, None)
    listing = tmp / "bad.csv"
    first = subprocess.run(
        [str(BIN / "datl"), "manifest", "validate", str(m), "--list", str(listing), "-q"],
        capture_output=True,
        text=True,
    )
    text = listing.read_text() if listing.exists() else ""
    listing.unlink(missing_ok=True)
    return Case(
        ["datl", "manifest", "validate", str(m), "--list", str(listing), "-q"],
        "refused",
        "m.parquet",
        check=lambda r: (
            None
            if first.returncode == 2 and listing.read_text() == text and " at 0x" not in text
            else f"the listing differs between runs: {text!r}"
        ),
    )


def unwritable_temporary(world: World, tmp: Path) -> Case:
    """An output name so long that datl's temporary file beside it cannot be created: the error
    names the user's path, not datl's temporary file."""
    prior = tmp / "prior.parquet"
    _uniform_prior(world, prior)
    out = tmp / ("w" * 240 + ".parquet")
    return Case(
        [
            "curate",
            "weight",
            "--source",
            str(world.demo / "source.parquet"),
            "--prior",
            str(prior),
            "--out",
            str(out),
            "--no-plot",
        ],
        "refused",
        str(out),
        absent=[out],
        check=lambda r: "names the temporary file" if ".tmp" in r.stderr else None,
    )


CELLS: dict[str, Callable[[World, Path], Case]] = {
    "batch of one (BatchNorm)": batch_of_one,
    "--batch-size 1 (BatchNorm)": batch_size_one,
    "weight: default plot over a user's file": default_plot_over_a_users_file,
    "weight: prior of 40 of 82 classes": prior_missing_classes,
    "weight: the plot fails": plot_that_fails,
    "sample: all-zero weights": all_zero_weights,
    "sample: --size 10^12": huge_size(12),
    "sample: --size 10^23": huge_size(23),
    "pretrain: nothing readable": pretrain_on_nothing_readable,
    "finetune: --test with nothing readable": finetune_test_on_nothing_readable,
    "dedup: unreadable target images": dedup_unreadable_target,
    "dedup: unreadable source, no cache left": dedup_unreadable_source_leaves_no_cache,
    "dedup: default cache is a user's folder": dedup_default_cache_is_a_users_folder,
    "run folder: config and weights differ": config_weights_mismatch,
    "run folder: truncated safetensors": truncated_weights,
    "run folder: image_size 100000": huge_image_size_in_config,
    "resume: a pickle in state.pt": resume_a_pickle,
    "resume: another --model": resume_another_model,
    "resume: another manifest": resume_another_manifest,
    "demo-data: --seed -1": demo_negative_seed,
    "demo-data: --fraction 0.0001": demo_tiny_fraction,
    "demo-data: rebuild with a user's file in images/": demo_rebuild_keeps_a_users_file,
    "run --force: a user's file in a stage folder": force_keeps_a_users_file,
    "run: a param writes outside OUT": param_writing_outside_out,
    "run: a stage named logs": stage_named_logs,
    "run: a malformed param": malformed_param_leaves_no_folder,
    "report: a corrupt stamp.json": report_with_a_corrupt_stamp,
    "validate --list: the same every run": validate_list_is_the_same_every_run,
    "an output whose temporary file cannot be made": unwritable_temporary,
}


def make_world(tmp: Path) -> World:
    """A 5% demo and a random-init model of its source classes."""
    import torch

    from datl.demo import build_demo
    from datl.manifests import Manifest
    from datl.neural.checkpoint import ModelConfig, save_run
    from datl.neural.modeling import create_model

    demo = tmp / "demo"
    build_demo(demo, seed=0, fraction=0.05, progress=False)
    classes = Manifest(demo / "source.parquet").classes
    torch.manual_seed(0)
    m = create_model("test_resnet", len(classes), 1)
    save_run(
        tmp / "model",
        m,
        ModelConfig(
            arch="test_resnet",
            classes=classes,
            image_size=[28, 28],
            in_chans=1,
            mean=[0.5],
            std=[0.5],
            num_features=m.num_features,
        ),
    )
    return World(demo, tmp / "model")
