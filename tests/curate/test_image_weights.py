"""Per-image weights (`curate weight --per-image`, `curate sample --image-weights`) on a case
where class weights alone are provably wrong: three classes, each drawn in two styles (a bright
shape on dark, and the same shape inverted), the target in the first style only. Class weights
give each style half of every class's mass; the per-image weights must move most of it to the
target's style while every class keeps exactly its class mass, and the sample must follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datl.manifests import Manifest, ManifestMeta, write_table

from helpers import assert_user_error, cli, tiny_manifest

CLASSES = ["a", "b", "c"]
P_T = [0.2, 0.3, 0.5]


def shape(label: int, rng: np.random.Generator, inverted: bool) -> np.ndarray:
    """A 28x28 grey image: a bar whose place and direction name the class, with noise."""
    img = rng.normal(30, 12, (28, 28))
    at = 6 + 7 * label + int(rng.integers(-1, 2))
    if label == 1:
        img[:, at : at + 4] = rng.normal(220, 15, (28, 4))
    else:
        img[at : at + 4, :] = rng.normal(220, 15, (4, 28))
    img = np.clip(img, 0, 255)
    return 255 - img if inverted else img


def write_set(folder: Path, labels: list[int], inverted: list[bool], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (y, inv) in enumerate(zip(labels, inverted)):
        p = folder / f"{i:04d}.png"
        Image.fromarray(shape(y, rng, inv).astype(np.uint8), "L").save(p)
        paths.append(p.name)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory, random_model):
    root = tmp_path_factory.mktemp("styles")
    ys = [y for y in range(3) for _ in range(80)]
    inv = [i % 2 == 1 for i in range(len(ys))]
    src = tiny_manifest(root / "src" / "source.parquet", write_set(root / "src", ys, inv, 1), ys, CLASSES)
    rng = np.random.default_rng(2)
    yt = list(rng.choice(3, 150, p=P_T))
    tgt = tiny_manifest(root / "tgt" / "target.parquet", write_set(root / "tgt", yt, [False] * 150, 3), None)
    prior = root / "prior.parquet"
    write_table(
        prior,
        pa.table({"label": pa.array([0, 1, 2], pa.int32()), "class_name": CLASSES, "p_target": P_T}),
        ManifestMeta(classes=CLASSES, stage="estimate"),
    )
    (root / "model.txt").write_text(str(random_model))
    for name, manifest in (("sstore", src), ("tstore", tgt)):
        res = cli(
            "curate", "features", "--source", str(manifest), "--out", str(root / name),
            "--model", str(random_model), "--workers", "0", "--chunk-size", "100", "-q",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    return root, src, prior, np.array(inv)


def random_model_of(root: Path) -> Path:
    """The model the world's stores were built with (recorded by the fixture)."""
    return Path((root / "model.txt").read_text())


def weigh(root: Path, src: Path, prior: Path, out: str, *extra: str):
    return cli(
        "curate", "weight", "--source", str(src), "--prior", str(prior), "--out", str(root / out / "weights.parquet"),
        "--no-plot", "-q", *extra,
    )  # fmt: skip


def per_image(root: Path) -> tuple[str, ...]:
    return ("--per-image", "--features", str(root / "sstore"), "--target-features", str(root / "tstore"))


def test_per_image_weights_move_each_class_to_the_targets_style(world):
    root, src, prior, inverted = world
    res = weigh(root, src, prior, "w", *per_image(root))
    assert res.returncode == 0, res.stderr
    assert "effective sample size" in res.stdout
    t = pq.read_table(root / "w" / "image_weights.parquet")
    assert t.column_names == ["id", "label", "log_odds", "ratio", "weight"]
    assert t.column("id").to_pylist() == Manifest(src).read(["id"]).column("id").to_pylist()  # manifest order
    w, lab = t.column("weight").to_numpy(), t.column("label").to_numpy()
    cls = pq.read_table(root / "w" / "weights.parquet").column("weight").to_numpy()
    # the invariant: each class keeps its class mass w(y) * n_y exactly
    np.testing.assert_allclose(np.bincount(lab, weights=w), cls * 80, rtol=1e-5)
    # class weights alone put half of every class on the inverted style; these, most on the target's
    assert w[~inverted].sum() / w.sum() > 0.8
    lo = t.column("log_odds").to_numpy()
    assert lo[~inverted].mean() > lo[inverted].mean() + 1.0
    ratio = t.column("ratio").to_numpy()
    assert ratio.max() / ratio.min() <= 10.0**2 * 1.0001  # clipped to [1/10, 10] before the class mean
    meta = ManifestMeta.from_schema(pq.read_schema(root / "w" / "weights.parquet"), "w")
    found = meta.params["per_image"]
    assert found["rows"] == 240 and 0 < found["ess"] < found["ess_class"] <= 240 and found["auc"] > 0.7

    # the same inputs and seed give the same weights
    again = weigh(root, src, prior, "w2", *per_image(root))
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(pq.read_table(root / "w2" / "image_weights.parquet").column("weight").to_numpy(), w)

    # curate sample follows them, with and without replacement, and keeps the class quotas
    for mode, size in (("--replacement", "3000"), ("--no-replacement", "90")):
        out = root / f"s{mode}" / "sample.parquet"
        res = cli(
            "curate", "sample", "--source", str(src), "--weights", str(root / "w" / "weights.parquet"),
            "--image-weights", str(root / "w" / "image_weights.parquet"), "--size", size, mode, "-o", str(out),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        s = Manifest(out).read(["id", "label", "weight"])
        row = np.array([int(i[1:]) for i in s.column("id").to_pylist()])
        assert (~inverted[row]).mean() > 0.8, mode
        np.testing.assert_allclose(s.column("weight").to_numpy(), w[row])
        if mode == "--replacement":
            share = np.bincount(s.column("label").to_numpy(), minlength=3) / 3000
            assert np.abs(share - P_T).max() < 0.03  # Multinomial(3000, P_t): sd <= 0.009
        else:
            assert len(set(row)) == 90


def test_bad_per_image_inputs_are_refused_in_one_line(world, tmp_path):
    root, src, prior, _ = world
    assert_user_error(weigh(root, src, prior, "x1", "--per-image"), "--per-image", "--features")
    assert_user_error(
        weigh(root, src, prior, "x2", "--features", str(root / "sstore")), "--features", "without --per-image"
    )
    # the target store as the source's: a store of another source
    swapped = ("--per-image", "--features", str(root / "tstore"), "--target-features", str(root / "tstore"))
    assert_user_error(weigh(root, src, prior, "x3", *swapped), "tstore", "another source")
    # a store without embeddings
    res = cli("curate", "features", "--source", str(src), "--out", str(tmp_path / "plain"), "--workers", "0", "-q")
    assert res.returncode == 0, res.stderr
    plain = ("--per-image", "--features", str(tmp_path / "plain"), "--target-features", str(root / "tstore"))
    assert_user_error(weigh(root, src, prior, "x4", *plain), "plain", "no model embeddings")
    # a target too small to fit the domain classifier
    few = tiny_manifest(tmp_path / "few" / "few.parquet", write_set(tmp_path / "few", [0] * 8, [False] * 8, 5), None)
    res = cli(
        "curate", "features", "--source", str(few), "--out", str(tmp_path / "fstore"),
        "--model", str(random_model_of(root)), "--workers", "0", "-q",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    small = ("--per-image", "--features", str(root / "sstore"), "--target-features", str(tmp_path / "fstore"))
    assert_user_error(weigh(root, src, prior, "x5", *small), "fstore", "too few to fit")
    assert not (root / "x5").exists()
    # sample: per-image weights of another source
    other = tiny_manifest(
        tmp_path / "other.parquet", ["x.png"] * 240, [0] * 240, CLASSES, ids=[f"q{i}" for i in range(240)]
    )
    assert weigh(root, src, prior, "w3", *per_image(root)).returncode == 0
    res = cli(
        "curate", "sample", "--source", str(other), "--weights", str(root / "w3" / "weights.parquet"),
        "--image-weights", str(root / "w3" / "image_weights.parquet"), "--size", "10",
        "-o", str(tmp_path / "s.parquet"),
    )  # fmt: skip
    assert_user_error(res, "image_weights.parquet", "other ids")
    assert not (tmp_path / "s.parquet").exists()
