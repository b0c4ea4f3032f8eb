"""Issue 17's matrix: each class of bad input through each command that reads it. Every case
is exit 2 and one line naming the file and the first bad row, no traceback, refused before
any work: nothing new or changed in the folder the outputs would go to."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datl.manifests import Manifest

from helpers import assert_user_error, cli

RUN = ["--workers", "0", "-q", "--steps", "2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def bad(demo_small, tmp_path_factory) -> Path:
    """Broken copies of the tiny demo's manifests, beside a link to its images (paths stay relative)."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "images").symlink_to(demo_small / "images")

    def variant(name: str, out: str, change) -> None:
        t = pq.read_table(demo_small / f"{name}.parquet")
        pq.write_table(change(t), folder / f"{out}.parquet")

    def set_label(t: pa.Table, row: int, value) -> pa.Table:
        labels = t.column("label").to_pylist()
        labels[row] = value
        return t.set_column(t.schema.get_field_index("label"), t.schema.field("label"), pa.array(labels, pa.int32()))

    def missing_images(t: pa.Table) -> pa.Table:
        paths = pa.array(["nowhere/" + p for p in t.column("path").to_pylist()], pa.string())
        return t.set_column(t.schema.get_field_index("path"), t.schema.field("path"), paths)

    for name in ("source", "target_train", "target_test"):
        variant(name, f"{name}_null_label", lambda t: set_label(t, 5, None))
        variant(name, f"{name}_label_99", lambda t: set_label(t, 7, 99))
        variant(name, f"{name}_empty", lambda t: t.slice(0, 0))
        variant(name, f"{name}_missing", missing_images)
    variant("target_unlabeled", "target_unlabeled_missing", missing_images)
    variant("target_unlabeled", "target_unlabeled_empty", lambda t: t.slice(0, 0))
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


LABEL_PROBLEMS = [
    ("null_label", ["no label", "row 5"]),
    ("label_99", ["label 99", "row 7", "out of range"]),
    ("empty", ["has no rows"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("problem,fragments", LABEL_PROBLEMS, ids=[p for p, _ in LABEL_PROBLEMS])
@pytest.mark.parametrize("command", ["pretrain", "finetune --train", "finetune --test", "finetune --val"])
def test_label_problems_are_refused_before_training(bad, demo_small, tmp_path, command, problem, fragments):
    train, test = demo_small / "target_train.parquet", demo_small / "target_test.parquet"
    if command == "pretrain":
        broken = bad / f"source_{problem}.parquet"
        argv = ["pretrain", "-m", str(broken), "--model", "test_resnet"]
    else:
        broken = bad / f"{'target_test' if command != 'finetune --train' else 'target_train'}_{problem}.parquet"
        role = command.split()[1]
        inputs = {"--train": train, "--test": test, role: broken}
        argv = ["finetune", "--model", "test_resnet", *[str(x) for kv in inputs.items() for x in kv]]
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path)
    assert_user_error(cli(*argv, "--out", str(out / "run"), *RUN), broken.name, *fragments)
    assert snapshot(tmp_path) == before and not (out / "run").exists()


@pytest.mark.parametrize(
    "argv,culprit",
    [
        (
            ["curate", "estimate", "--model", "{model}", "--target", "{bad}/target_unlabeled_missing.parquet"],
            "target_unlabeled_missing.parquet",
        ),
        (
            ["curate", "estimate", "--model", "{model}", "--target", "{bad}/target_unlabeled_empty.parquet"],
            "target_unlabeled_empty.parquet",
        ),
        (
            [
                "curate",
                "dedup",
                "--no-feature",
                "--source",
                "{demo}/source.parquet",
                "--target",
                "{bad}/target_unlabeled_missing.parquet",
            ],
            "target_unlabeled_missing.parquet",
        ),
        (
            [
                "curate",
                "dedup",
                "--no-feature",
                "--source",
                "{bad}/source_missing.parquet",
                "--target",
                "{demo}/target_all.parquet",
            ],
            "source_missing.parquet",
        ),
        (
            ["pretrain", "--model", "test_resnet", "--steps", "2", "-m", "{bad}/source_missing.parquet"],
            "source_missing.parquet",
        ),
        (["datl", "manifest", "validate", "{bad}/source_label_99.parquet"], "source_label_99.parquet"),
        (["datl", "manifest", "validate", "{bad}/target_test_missing.parquet"], "target_test_missing.parquet"),
    ],
    ids=[
        "estimate-unreadable",
        "estimate-empty",
        "dedup-unreadable-target",
        "dedup-unreadable-source",
        "pretrain-unreadable",
        "validate-label",
        "validate-unreadable",
    ],
)
@pytest.mark.slow
def test_no_readable_image_or_bad_rows_is_exit_2(bad, demo_small, random_model, tmp_path, argv, culprit):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(bad=bad, demo=demo_small, model=random_model) for a in argv]
    if argv[0] != "datl":
        argv += ["--out", str(out / ("run" if argv[0] == "pretrain" else "o.parquet")), "-q", "--workers", "0"]
    before = snapshot(tmp_path)
    res = cli(*argv)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and culprit in lines[0], res.stderr
    # dedup's chunk cache is its own (an unreadable source is known only once streamed); nothing else
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("out/embeddings/")}
    assert after == before


def test_validate_notes_unlabeled_rows_that_training_refuses(bad):
    res = cli("datl", "manifest", "validate", str(bad / "source_null_label.parquet"), "--no-files")
    assert res.returncode == 0, res.stderr
    assert "1 row(s) have no label" in res.stdout and "refused" in res.stdout
    assert Manifest(bad / "source_null_label.parquet").label_counts()[1] == 1
