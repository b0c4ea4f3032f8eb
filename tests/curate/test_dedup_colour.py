"""Real transparent colour PNGs (issue 18): dedup's goal on them, and every stage reading them.

The set is Debian's icon themes (tests/_lib/icon_set.py): Oxygen icons as the source, MATE's
drawings of the same things as the target, edited copies of MATE icons planted into the source.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from datl.manifests import ManifestMeta

from helpers import apt_install, cli
from icon_set import PACKAGES, REDRAW, build_icon_set, icon_files, score


@pytest.fixture(scope="module")
def icons(tmp_path_factory):
    reason = apt_install(PACKAGES, lambda: all(icon_files()))
    if reason:
        pytest.skip(reason)
    # every 2nd icon of each theme (about 700 source and 600 target icons), 200 planted copies;
    # seed 1: seed 0 is the one the views and thresholds were tuned on (bench/colour_dedup.py)
    return build_icon_set(tmp_path_factory.mktemp("icons"), n_plant=200, seed=1, every=2)


@pytest.mark.slow
def test_the_set_is_real_transparent_colour_png_of_several_modes(icons):
    assert icons.modes.get("RGBA", 0) > 100, icons.modes
    assert sum(n for m, n in icons.modes.items() if m != "RGBA") > 0, icons.modes  # palette, LA, ...


@pytest.mark.slow
def test_dedup_meets_the_colour_goal_without_a_model(icons, tmp_path):
    """Recall >= 0.95 of the planted edited copies with at most 0.5% of ordinary icons flagged,
    at the default thresholds; the theme's own redrawings are reported, not part of the goal."""

    def dedup(out, *extra: str):
        src, tgt, cache = str(icons.source), str(icons.target), str(tmp_path / "cache")
        flags = ["--no-feature", "--out", str(out), "--cache", cache, "-q", *extra]
        return cli("curate", "dedup", "--source", src, "--target", tgt, *flags)

    out = tmp_path / "dups.parquet"
    res = dedup(out)
    assert res.returncode == 0, res.stderr
    flagged = set(pq.read_table(out).column("id").to_pylist())
    s = score(icons, flagged)
    assert s["n_edits"] >= 150, s
    assert s["recall_edits"] >= 0.95, s
    assert s["fp_rate"] <= 0.005, s
    for edit, (hit, tot) in s["recall"].items():  # no edit is missed wholesale
        assert edit == REDRAW or hit >= 0.8 * tot, (edit, hit, tot)
    assert "0 byte-identical" in res.stdout and "pixel >=" in res.stdout  # per-check counts

    # from a feature store of the source instead of its images: the same file (issue 26)
    store = tmp_path / "store"
    assert cli("curate", "features", "--source", str(icons.source), "--out", str(store), "-q").returncode == 0
    for chunks in (tmp_path / "cache").glob("*.chunks.*"):
        shutil.rmtree(chunks)  # the target side stays cached; the source side is read again
    again = tmp_path / "again.parquet"
    res = dedup(again, "--source-features", str(store))
    assert res.returncode == 0, res.stderr
    assert pq.read_table(again).replace_schema_metadata(None).equals(pq.read_table(out).replace_schema_metadata(None))


def test_recoloured_copies_land_on_the_hue_views(icons):
    """A copy with its colour channels swapped round (R<-G, G<-B, B<-R: not the HSV hue turn the
    hue views are made with) of 59 real colour MATE icons: every one matches a view of its
    original at the default 0.96; without the three hue views, some are missed."""
    import io

    from PIL import Image

    from datl.curate.features import pixel
    from datl.manifests.address import Address
    from datl.manifests.images import decode_bytes

    found = found_without = n = 0
    for f in icon_files()[1][::2][::10]:
        data = open(f, "rb").read()
        rgb = decode_bytes(data, "RGB")
        if not np.asarray(rgb.convert("HSV"))[..., 1].any():
            continue
        views = pixel.descriptors(pixel._one(Address(f), True)[1]).astype(np.float32)
        r, g, b = rgb.split()
        buf = io.BytesIO()
        Image.merge("RGB", (g, b, r)).save(buf, "PNG")
        copy = pixel.descriptors(pixel.thumbnail(decode_bytes(buf.getvalue(), "L"))[None])[0].astype(np.float32)
        sims = views @ copy
        n += 1
        found += sims.max() >= 0.96
        found_without += sims[: pixel.VIEWS - len(pixel.HUE_TURNS)].max() >= 0.96
    assert n >= 50 and found == n and found_without < n - 5, (n, found, found_without)
    grey = Image.open(f).convert("LA")  # a grey image has no hue to turn: blank hue views, zero descriptors
    buf = io.BytesIO()
    grey.save(buf, "PNG")
    assert not pixel.descriptors(
        np.stack([pixel.thumbnail(v) for v in pixel.hue_views(decode_bytes(buf.getvalue(), "RGB"))])
    ).any()


@pytest.mark.slow
def test_every_stage_reads_transparent_colour_icons(icons, tmp_path):
    """pretrain, estimate, weight, dedup with the model's features, sample and finetune, on the
    icons as they are (RGBA, palette with a transparent index, LA): no image is unreadable."""
    run = tmp_path / "run"
    res = cli(
        "pretrain",
        "--manifest",
        str(icons.source),
        "--model",
        "test_resnet",
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--image-size",
        "32",
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["in_chans"] == 3  # colour icons give a colour model
    prior = tmp_path / "prior.parquet"
    res = cli(
        "curate",
        "estimate",
        "--model",
        str(run),
        "--target",
        str(icons.target),
        "--out",
        str(prior),
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    assert "unreadable" not in res.stdout + res.stderr
    p = pq.read_table(prior).column("p_target").to_numpy()
    assert np.isclose(p.sum(), 1.0) and (p > 0).all()
    dups = tmp_path / "dups.parquet"
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(icons.source),
        "--target",
        str(icons.target),
        "--model",
        str(run),
        "--out",
        str(dups),
        "--cache",
        str(tmp_path / "cache"),
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    assert "could not be read" not in res.stderr
    # a 2-step model's features put every icon near every other: the feature check is off by
    # default (it flagged a quarter of a clip-art source at 0.96), said in one line
    assert "the feature check is off: the model's features are collapsed" in res.stderr, res.stderr
    assert "feature" not in pq.read_table(dups).column("match").to_pylist()
    params = ManifestMeta.from_schema(pq.read_schema(dups), dups).params
    assert params["threshold"] is None and params["threshold_rule"].startswith("off: the model's features")
    forced = cli(
        "curate", "dedup", "--source", str(icons.source), "--target", str(icons.target), "--model", str(run),
        "--out", str(tmp_path / "forced.parquet"), "--cache", str(tmp_path / "cache"), "--workers", "0", "-q",
        "--feature-threshold", "0.96",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr  # an explicit threshold wins; the warning names the fixes
    assert "the model's features barely tell images apart" in forced.stderr and "--no-feature" in forced.stderr
    weights = tmp_path / "weights.parquet"
    assert (
        cli("curate", "weight", "--source", str(icons.source), "--prior", str(prior), "--out", str(weights)).returncode
        == 0
    )
    sample = tmp_path / "sample.parquet"
    res = cli(
        "curate",
        "sample",
        "--source",
        str(icons.source),
        "--weights",
        str(weights),
        "--size",
        "64",
        "--exclude",
        str(dups),
        "--out",
        str(sample),
    )
    assert res.returncode == 0, res.stderr
    ft = tmp_path / "ft"
    res = cli(
        "finetune",
        "--checkpoint",
        str(run),
        "--train",
        str(icons.target),
        "--test",
        str(icons.target),
        "--out",
        str(ft),
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["n_unreadable"] == 0 and metrics["n_test"] == pq.read_metadata(icons.target).num_rows


def test_a_model_sees_the_same_pixels_whatever_mode_the_icon_is_stored_in(icons, tmp_path):
    """Real palette-with-transparency and LA icons, re-saved as RGBA and as RGB flattened on
    white: ImageDataset gives the very same tensor for each file of one icon."""
    import pyarrow as pa
    from PIL import Image

    from datl.manifests import Manifest, ManifestMeta, write_manifest
    from datl.neural.data import ImageDataset

    paths = Manifest(icons.source).read(["path"]).column("path").to_pylist()
    picked: dict[str, list[str]] = {"P": [], "LA": []}
    for p in paths:
        with Image.open(p) as im:
            kind = "P" if im.mode == "P" and "transparency" in im.info else im.mode
        if kind in picked and len(picked[kind]) < 5:
            picked[kind].append(p)
    assert len(picked["P"]) == 5 and len(picked["LA"]) >= 1, {k: len(v) for k, v in picked.items()}
    rows = []
    for k, p in enumerate(picked["P"] + picked["LA"]):
        with Image.open(p) as im:
            rgba = im.convert("RGBA")
        rgba.save(tmp_path / f"{k}_rgba.png")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        white.convert("RGB").save(tmp_path / f"{k}_flat.png")
        rows += [
            (f"{k}_orig", p),
            (f"{k}_rgba", str(tmp_path / f"{k}_rgba.png")),
            (f"{k}_flat", str(tmp_path / f"{k}_flat.png")),
        ]
    m = write_manifest(
        tmp_path / "m.parquet", pa.table({"id": [r[0] for r in rows], "path": [r[1] for r in rows]}), ManifestMeta()
    )
    ds = ImageDataset(m, mode="RGB")
    first = np.asarray(ds[0].image)
    for k in range(0, len(rows), 3):
        orig, rgba, flat = (np.asarray(ds[k + j].image) for j in range(3))
        assert np.array_equal(orig, rgba) and np.array_equal(orig, flat), rows[k][1]
        assert orig.std() > 0.05 and (k == 0 or not np.array_equal(orig, first))  # real, distinct pictures
