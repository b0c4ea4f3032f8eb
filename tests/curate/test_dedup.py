"""curate dedup: exact copies whatever the model, cached embeddings, flat vs IVF, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datl.curate.dedup import AUGMENTATIONS, build_index, ivf_params, plant_copies
from datl.manifests import Manifest, ManifestMeta, write_manifest
from datl.neural.checkpoint import ModelConfig, save_run
from datl.neural.modeling import create_model

from helpers import assert_user_error, cli, mobilenet_weights


@pytest.fixture()
def planted_source(demo_small, tmp_path):
    """The demo source plus 5 byte-identical copies of target images under new names."""
    src, tgt = Manifest(demo_small / "source.parquet"), Manifest(demo_small / "target_unlabeled.parquet")
    t = tgt.read()
    s = src.read()
    copies = []
    for i in range(5):
        dst = tmp_path / f"copy{i}.png"
        shutil.copyfile(tgt.resolve(t.column("path")[i * 7].as_py()), dst)
        copies.append((f"copy{i}", str(dst), t.column("id")[i * 7].as_py()))
    abs_paths = [src.resolve(p) for p in s.column("path").to_pylist()]
    table = pa.table(
        {
            "id": s.column("id").to_pylist() + [c[0] for c in copies],
            "path": abs_paths + [c[1] for c in copies],
            "label": pa.array(s.column("label").to_pylist() + [0] * 5, pa.int32()),
        }
    )
    return write_manifest(tmp_path / "source.parquet", table, ManifestMeta(classes=src.classes)), copies


@pytest.mark.slow
def test_exact_copies_found_with_a_useless_model_and_cache_reused(random_model, planted_source, demo_small, tmp_path):
    src, copies = planted_source
    target = demo_small / "target_unlabeled.parquet"
    out = tmp_path / "dups.parquet"
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(src),
        "--target",
        str(target),
        "--model",
        str(random_model),
        "--out",
        str(out),
        "--threshold",
        "1.0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    t = pq.read_table(out)
    exact = t.filter(t.column("exact"))
    assert sorted(zip(exact.column("id").to_pylist(), exact.column("target_id").to_pylist())) == sorted(
        (c[0], c[2]) for c in copies
    )
    assert all(s == 1.0 for s in exact.column("similarity").to_pylist())
    caches = sorted((tmp_path / "embeddings").rglob("*.npz"))
    # the target side, and one result file per chunk of the source (1,251 rows: one chunk)
    assert [p.name.split(".")[1] for p in caches] == ["npz", "target"] and len(caches) == 2
    mtimes = [p.stat().st_mtime_ns for p in caches]
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(src),
        "--target",
        str(target),
        "--model",
        str(random_model),
        "--out",
        str(tmp_path / "d2.parquet"),
        "--threshold",
        "0.5",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    assert [p.stat().st_mtime_ns for p in caches] == mtimes  # not re-embedded
    assert pq.read_table(tmp_path / "d2.parquet").num_rows >= t.num_rows  # lower threshold, more found

    # an image file replaced since (same manifest bytes): read again, never answered from the cache
    tgt = Manifest(target)
    other = tgt.read(["id", "path"]).slice(1, 1)
    shutil.copyfile(tgt.resolve(other.column("path")[0].as_py()), copies[0][1])
    indexes = sorted((tmp_path / "embeddings").rglob("*.faiss"))
    assert indexes
    for cache in caches + indexes:  # and a corrupt cache file is recomputed, not a traceback
        cache.write_bytes(b"not an npz, not an index")
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(src),
        "--target",
        str(target),
        "--model",
        str(random_model),
        "--out",
        str(tmp_path / "d3.parquet"),
        "--threshold",
        "1.0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    t3 = pq.read_table(tmp_path / "d3.parquet")
    t3 = dict(zip(t3.column("id").to_pylist(), t3.column("target_id").to_pylist()))
    assert t3[copies[0][0]] == other.column("id")[0].as_py() != copies[0][2]


@pytest.mark.slow
def test_a_changed_model_gets_its_own_embeddings(random_model, demo_small, tmp_path):
    import torch

    src, target = demo_small / "target_train.parquet", demo_small / "target_unlabeled.parquet"
    run = tmp_path / "run"
    shutil.copytree(random_model, run)
    args = [
        "curate",
        "dedup",
        "--source",
        str(src),
        "--target",
        str(target),
        "--model",
        str(run),
        "-q",
        "--cache",
        str(tmp_path / "cache"),
    ]
    res = cli(*args, "--out", str(tmp_path / "a.parquet"), "--calibrate", "--plant", "14")
    assert res.returncode == 0, res.stderr
    table = [line.split() for line in res.stdout.splitlines() if line.strip().startswith("0.")]
    recalls = [float(r[1]) for r in table]
    assert len(table) == 10 and recalls == sorted(recalls, reverse=True)  # recall falls as the threshold rises
    assert (tmp_path / "a.calibration.png").stat().st_size > 10_000
    torch.manual_seed(1)
    m = create_model("test_efficientnet", 3, 1)  # other arch, other feature size, same folder
    save_run(
        run,
        m,
        ModelConfig(
            arch="test_efficientnet",
            classes=["a", "b", "c"],
            image_size=[28, 28],
            in_chans=1,
            mean=[0.5],
            std=[0.5],
            num_features=m.num_features,
        ),
    )
    assert cli(*args, "--out", str(tmp_path / "b.parquet")).returncode == 0
    dims = sorted(np.load(p)["vecs"].shape[1] for p in (tmp_path / "cache").glob("target_unlabeled.target.*.npz"))
    assert dims == sorted([96, m.num_features])
    assert len(list((tmp_path / "cache").glob("target_train.chunks.*"))) == 2  # source results per model too


def test_ivf_matches_flat_on_planted_near_copies():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32))
    target = centers[rng.integers(0, 50, 20_000)] + 0.5 * rng.normal(size=(20_000, 32))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    copies = target[:500] + 0.02 * rng.normal(size=(500, 32))
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    flat, _ = build_index(target, "flat")
    ivf, desc = build_index(target, "ivf")
    assert desc.startswith("ivf") and ivf_params(20_000) == (512, 2)
    _, pf = flat.search(copies.astype(np.float32), 1)
    _, pi = ivf.search(copies.astype(np.float32), 1)
    assert (pf[:, 0] == np.arange(500)).mean() == 1.0
    assert (pi[:, 0] == np.arange(500)).mean() >= 0.99


def test_reduced_ivf_reranks_exactly():
    """The pixel index's candidates come from a PCA-64 IVF, its similarities from the full vectors."""
    rng = np.random.default_rng(1)
    smooth = rng.normal(size=(20_000, 16)) @ rng.normal(size=(16, 256))  # low-rank, like thumbnails
    target = smooth + 0.3 * rng.normal(size=smooth.shape)
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    copies = target[:500] + 0.01 * rng.normal(size=(500, 256))
    copies = (copies / np.linalg.norm(copies, axis=1, keepdims=True)).astype(np.float32)
    index, desc = build_index(target, "ivf", reduce=64)
    assert "64 PCA dimensions" in desc and "re-ranked exactly" in desc
    sims, pos = index.search(copies, 1)
    assert (pos[:, 0] == np.arange(500)).mean() >= 0.99
    exact = np.einsum("ij,ij->i", copies.astype(np.float64), target[pos[:, 0]])
    np.testing.assert_allclose(sims[:, 0], exact, atol=1e-5)  # the full-dimension cosine, not the PCA one


@pytest.mark.slow
def test_bad_input(random_model, demo_small, tmp_path):
    src, target = demo_small / "source.parquet", demo_small / "target_unlabeled.parquet"
    base = ["curate", "dedup", "--source", str(src), "--model", str(random_model), "--out", str(tmp_path / "d.parquet")]
    for t in ("0", "1.5", "-0.2"):
        assert_user_error(cli(*base, "--target", str(target), "--threshold", t), "--threshold", "outside (0, 1]")
        assert_user_error(
            cli(*base, "--target", str(target), "--pixel-threshold", t), "--pixel-threshold", "outside (0, 1]"
        )
    unreadable = write_manifest(tmp_path / "bad.parquet", pa.table({"id": ["x"], "path": ["nope.png"]}), ManifestMeta())
    assert_user_error(cli(*base, "--target", str(unreadable), "-q"), "bad.parquet", "no readable image")
    assert_user_error(
        cli(
            "curate",
            "dedup",
            "--source",
            str(unreadable),
            "--target",
            str(target),
            "--no-feature",
            "--out",
            str(tmp_path / "d.parquet"),
            "-q",
        ),
        "bad.parquet",
        "no readable image",
    )
    assert not (tmp_path / "d.parquet").exists()


@pytest.fixture(scope="module")
def demo_fifth(tmp_path_factory):
    """20% of the real demo: about 5,000 source images, 360 unlabeled target images."""
    from datl.demo import build_demo

    out = tmp_path_factory.mktemp("demo_fifth")
    build_demo(out, seed=0, fraction=0.2, progress=False)
    return out


@pytest.mark.slow
def test_real_edited_copies_found_at_the_default_thresholds(demo_fifth, tmp_path):
    """140 edited copies of real target digits (20 per edit kind) hidden among real source
    images: at the default thresholds >= 99% are caught, <= 0.5% of the ordinary ones are."""
    src, tgt = Manifest(demo_fifth / "source.parquet"), Manifest(demo_fifth / "target_unlabeled.parquet")
    planted = Manifest(plant_copies(tgt, tmp_path / "planted", 20 * len(AUGMENTATIONS), seed=1))
    s, p = src.read(["id", "path", "label"]), planted.read(["id", "path", "target_id", "edit"])
    table = pa.table(
        {
            "id": s.column("id").to_pylist() + p.column("id").to_pylist(),
            "path": [src.resolve(x) for x in s.column("path").to_pylist()]
            + [planted.resolve(x) for x in p.column("path").to_pylist()],
            "label": pa.array(s.column("label").to_pylist() + [0] * p.num_rows, pa.int32()),
        }
    )
    mixed = write_manifest(tmp_path / "mixed.parquet", table, ManifestMeta(classes=src.classes))
    out = tmp_path / "dups.parquet"
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(mixed),
        "--target",
        str(tgt.path),
        "--model",
        "timm:mobilenetv2_100",
        "--weights",
        str(mobilenet_weights()),
        "--image-size",
        "64",
        "--out",
        str(out),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    found = dict(zip(*pq.read_table(out, columns=["id", "target_id"]).to_pydict().values()))
    copies = dict(zip(p.column("id").to_pylist(), p.column("target_id").to_pylist()))
    recall = sum(c in found for c in copies) / len(copies)
    right_original = sum(found.get(c) == t for c, t in copies.items()) / len(copies)
    false_pos = sum(i not in copies for i in found) / s.num_rows
    print(f"recall {recall:.4f} right original {right_original:.4f} false positives {false_pos:.4%}")
    assert recall >= 0.99, (recall, res.stdout)
    assert right_original >= 0.9, right_original  # near-identical target digits may take a copy's place
    assert false_pos <= 0.005, (false_pos, res.stdout)
    assert "barely tell images apart" not in res.stderr  # real ImageNet features are not collapsed


@pytest.mark.slow
def test_an_implausible_share_flagged_is_a_warning_naming_the_check(demo_small, tmp_path):
    base = [
        "curate",
        "dedup",
        "--source",
        str(demo_small / "source.parquet"),
        "--target",
        str(demo_small / "target_all.parquet"),
        "--no-feature",
        "-q",
        "--workers",
        "0",
    ]
    ok = cli(*base, "--out", str(tmp_path / "a.parquet"))
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    loose = cli(*base, "--out", str(tmp_path / "b.parquet"), "--pixel-threshold", "0.3")
    assert loose.returncode == 0, loose.stderr
    flagged = pq.read_table(tmp_path / "b.parquet").num_rows
    assert flagged > 0.05 * Manifest(demo_small / "source.parquet").num_rows
    assert "by the pixel check" in loose.stderr and "raise --pixel-threshold (now 0.3)" in loose.stderr
    assert "by the feature check" not in loose.stderr  # only the check that flags too much is named


@pytest.mark.slow
def test_a_transparent_target_copied_without_its_alpha_is_found(tmp_path):
    """Colour clip-art on transparent canvases: a copy flattened on black (a JPEG, a screenshot)
    is flagged, and so is one flattened on white; other drawings on the same canvas are not."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)

    def drawing(i: int) -> Image.Image:
        im = Image.new("RGBA", (48, 48), (int(rng.integers(0, 255)), 0, 0, 0))  # a hidden colour, transparent
        d = ImageDraw.Draw(im)
        for _ in range(4):
            pts = [tuple(int(v) for v in rng.integers(4, 44, 2)) for _ in range(3)]
            d.polygon(pts, fill=tuple(int(v) for v in rng.integers(0, 255, 3)) + (255,))
        return im

    folder = tmp_path / "img"
    folder.mkdir()
    targets = [drawing(i) for i in range(40)]
    for i, im in enumerate(targets):
        im.save(folder / f"t{i}.png")
    rows = []
    for i in range(40):  # ordinary source: other drawings, transparent too
        drawing(i).save(folder / f"s{i}.png")
        rows.append((f"s{i}", f"img/s{i}.png"))
    for name, bg in (("black", (0, 0, 0)), ("white", (255, 255, 255))):
        flat = Image.new("RGBA", (48, 48), bg + (255,))
        flat.alpha_composite(targets[7])
        flat.convert("RGB").save(folder / f"copy_{name}.jpg", quality=90)
        rows.append((f"copy_{name}", f"img/copy_{name}.jpg"))
    src = write_manifest(
        tmp_path / "s.parquet", pa.table({"id": [r[0] for r in rows], "path": [r[1] for r in rows]}), ManifestMeta()
    )
    tgt = write_manifest(
        tmp_path / "t.parquet",
        pa.table({"id": [f"t{i}" for i in range(40)], "path": [f"img/t{i}.png" for i in range(40)]}),
        ManifestMeta(),
    )
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(src),
        "--target",
        str(tgt),
        "--no-feature",
        "--out",
        str(tmp_path / "d.parquet"),
        "-q",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr
    t = pq.read_table(tmp_path / "d.parquet")
    assert dict(zip(t.column("id").to_pylist(), t.column("target_id").to_pylist())) == {
        "copy_black": "t7",
        "copy_white": "t7",
    }


@pytest.mark.slow
def test_plain_images_match_nothing_by_pixels_and_are_counted(tmp_path):
    """A small dot on a large white canvas correlates ~1.0 with any other dot at that place;
    such plain images get the zero descriptor and the count is printed. Busy ones still match."""
    from PIL import Image

    from datl.curate.features import pixel as px

    rng = np.random.default_rng(0)
    folder = tmp_path / "img"
    folder.mkdir()

    def dot(name: str, colour: tuple[int, int, int]) -> str:
        im = Image.new("RGB", (64, 64), (255, 255, 255))
        im.paste(colour, (28, 28, 34, 34))  # under 1% of the canvas
        im.save(folder / name)
        return f"img/{name}"

    def busy(name: str, seed: int) -> str:
        a = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(a, "RGB").resize((64, 64), Image.NEAREST).save(folder / name)
        return f"img/{name}"

    src = [dot(f"dot{i}.png", tuple(int(v) for v in rng.integers(0, 200, 3))) for i in range(3)]
    src += [busy("busy_copy.png", 5), busy("busy_other.png", 6)]
    tgt = [dot("target_dot.png", (10, 10, 10)), busy("target_busy.png", 5)]
    thumbs = np.stack([px.thumbnail(Image.open(folder / p.split("/")[1]).convert("L")) for p in src])
    assert px.is_plain(thumbs).tolist() == [True, True, True, False, False]
    assert not px.descriptors(thumbs[:3]).any()  # the zero descriptor
    assert px.is_plain(np.full((1, 256), 77, np.uint8)).all()  # flat
    raw = thumbs[:2].astype(np.float32) - thumbs[:2].mean(1, keepdims=True)  # what the rule prevents:
    assert raw[0] @ raw[1] / np.linalg.norm(raw[0]) / np.linalg.norm(raw[1]) > 0.96  # two dots "copies"
    s = write_manifest(
        tmp_path / "s.parquet", pa.table({"id": [p.split("/")[1] for p in src], "path": src}), ManifestMeta()
    )
    t = write_manifest(
        tmp_path / "t.parquet", pa.table({"id": ["target_dot", "target_busy"], "path": tgt}), ManifestMeta()
    )
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(s),
        "--target",
        str(t),
        "--no-feature",
        "--out",
        str(tmp_path / "d.parquet"),
        "-q",
        "--workers",
        "0",
    )
    assert res.returncode == 0, res.stderr
    assert pq.read_table(tmp_path / "d.parquet").column("id").to_pylist() == ["busy_copy.png"]
    assert "3 source image(s) are too plain for the pixel check" in res.stdout


def test_calibration_edits_fit_the_image(tmp_path):
    """Colour and transparent images also get recolour, flatten (on black) and rerender (kept
    transparent, another size); a grey opaque image gets the original seven edits only."""
    import io

    from PIL import Image

    from datl.curate.dedup.calibration import ALPHA_EDITS, AUGMENTATIONS, COLOUR_EDITS, edits_for, plant_one

    def encoded(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    rgba = Image.new("RGBA", (40, 40), (0, 255, 0, 0))  # transparent, hiding green
    rgba.paste((220, 20, 20, 255), (10, 10, 30, 30))
    data = encoded(rgba)
    assert edits_for(data) == AUGMENTATIONS + COLOUR_EDITS + ALPHA_EDITS
    assert edits_for(encoded(Image.new("L", (40, 40), 9))) == AUGMENTATIONS
    rng = np.random.default_rng(0)
    flat = np.asarray(plant_one(data, "flatten", rng))
    assert flat.shape == (40, 40, 3) and (flat[0, 0] == 0).all() and (flat[20, 20] == (220, 20, 20)).all()
    rr = plant_one(data, "rerender", rng)
    assert rr.mode == "RGBA" and rr.size != (40, 40) and np.asarray(rr)[0, 0, 3] == 0
    red = np.asarray(plant_one(data, "recolour", rng))[20, 20].astype(int)
    assert red[0] < 150 and max(red[1], red[2]) > 100  # the red square is no longer red
    assert (np.asarray(plant_one(data, "recolour", rng))[0, 0] == 255).all()  # the background stays white
