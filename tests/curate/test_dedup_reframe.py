"""curate dedup on re-framed copies (issue 25): a drawing on a large empty canvas and a copy cut
tight to it, a small icon blown up 6x, a recoloured copy; and the feature threshold calibrated
for the model (curate/dedup/threshold.py)."""

from __future__ import annotations

import colorsys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datl.curate.dedup import threshold as th
from datl.curate.features import pixel as px
from datl.manifests import ManifestMeta, write_manifest

from helpers import cli


def drawing(seed: int, size: int = 96):
    """Clip-art: a few filled shapes in several colours on a transparent square."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 6, size // 2, 2)
        colour = tuple(int(c) for c in rng.integers(0, 230, 3)) + (255,)
        box = [int(x0), int(y0), int(min(size - 1, x0 + w)), int(min(size - 1, y0 + h))]
        (d.ellipse if rng.integers(2) else d.rectangle)(box, fill=colour, outline=(20, 20, 20, 255))
    return img


def on_canvas(img, size: tuple[int, int], at: tuple[int, int]):
    from PIL import Image

    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.alpha_composite(img, at)
    return canvas


def tight(img):
    return img.crop(img.getchannel("A").getbbox())


def as_jpeg(img, path):
    from PIL import Image

    flat = Image.new("RGB", img.size, (255, 255, 255))
    flat.paste(img, mask=img.getchannel("A"))
    flat.save(path, "JPEG", quality=90)


def recoloured(img, turn: float):
    from PIL import Image

    a = np.asarray(img, np.float32) / 255
    rgb = np.array(
        [
            colorsys.hls_to_rgb((h + turn) % 1, ll, s)
            for h, ll, s in (colorsys.rgb_to_hls(*p) for p in a[..., :3].reshape(-1, 3))
        ]
    )
    a[..., :3] = rgb.reshape(a.shape[:2] + (3,))
    return Image.fromarray((a * 255 + 0.5).clip(0, 255).astype(np.uint8), "RGBA")


def canvas_similarity(a_path, b_path) -> float:
    """The canvas descriptor's cosine alone (what curate dedup used before issue 25)."""
    from datl.manifests.images import decode_bytes

    def desc(p):
        return px.descriptors(px.thumbnail(decode_bytes(open(p, "rb").read(), "L"))[None])[0]

    return float(desc(a_path) @ desc(b_path))


@pytest.fixture(scope="module")
def reframed(tmp_path_factory):
    """Target: 12 drawings, the first 3 in the middle of a 794x1123 page (the rest 96 px squares,
    3 of them 32 px icons). Source: 40 other drawings framed in the same ways (look-alikes of
    nothing), and planted copies: a page drawing cut tight (JPEG), a square drawing padded onto a
    page, a 32 px icon blown up 6x, a recoloured and padded copy."""
    from PIL import Image

    root = tmp_path_factory.mktemp("reframe")
    tgt, planted = [], {}
    for i in range(12):
        img = drawing(i)
        if i < 3:
            img = on_canvas(img.resize((200, 200)), (794, 1123), (300, 460))
        elif i >= 9:
            img = img.resize((32, 32), Image.LANCZOS)
        img.save(root / f"t{i}.png")
        tgt.append(f"t{i}.png")
    src = []
    for j in range(40):  # ordinary
        img = drawing(100 + j)
        if j % 3 == 1:
            img = on_canvas(img, (300, 420), (int(20 + 5 * j), 150))
        if j % 3 == 2:
            as_jpeg(img, root / f"s{j}.jpg")
            src.append(f"s{j}.jpg")
        else:
            img.save(root / f"s{j}.png")
            src.append(f"s{j}.png")
    page = Image.open(root / "t0.png").convert("RGBA")
    as_jpeg(tight(page).resize((330, 330), Image.BICUBIC), root / "tight.jpg")
    planted["tight.jpg"] = "t0.png"
    on_canvas(drawing(4).resize((240, 240), Image.BICUBIC), (700, 980), (60, 500)).save(root / "pad.png")
    planted["pad.png"] = "t4.png"
    Image.open(root / "t9.png").resize((192, 192), Image.NEAREST).save(root / "upscale.png")
    planted["upscale.png"] = "t9.png"
    as_jpeg(on_canvas(recoloured(drawing(5), 0.4).resize((200, 200)), (600, 600), (350, 50)), root / "recolour.jpg")
    planted["recolour.jpg"] = "t5.png"
    src += list(planted)

    def manifest(name, files):
        t = pa.table({"id": files, "path": files})
        return write_manifest(root / name, t, ManifestMeta())

    return root, manifest("source.parquet", src), manifest("target.parquet", tgt), planted


def test_reframed_copies_are_found_and_nothing_else(reframed, tmp_path):
    root, source, target, planted = reframed
    for copy, original in planted.items():  # the canvas descriptor alone misses every one
        if copy != "upscale.png":  # a whole-canvas blow-up the canvas family already sees
            assert canvas_similarity(root / copy, root / original) < 0.96, copy
    out = tmp_path / "d.parquet"
    res = cli(
        "curate", "dedup", "--source", str(source), "--target", str(target), "--no-feature",
        "--out", str(out), "-q", "--workers", "0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    t = pq.read_table(out)
    assert dict(zip(t.column("id").to_pylist(), t.column("target_id").to_pylist(), strict=True)) == planted
    assert set(t.column("match").to_pylist()) == {"pixel"}


def test_content_box_rules():
    """Alpha flattened on white trims to the drawing; an opaque image trims to what differs from
    its frame; a photo (no frame) and a blank image are not trimmed."""
    from PIL import Image

    img = Image.new("L", (100, 80), 255)
    img.paste(0, (30, 20, 50, 70))
    assert px.content_box(img, 255) == ((30, 20, 50, 70), 255)
    assert px.content_box(img) == ((30, 20, 50, 70), 255)  # its own frame: white
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 100), dtype=np.uint8), "L")
    assert px.content_box(noise)[0] == (0, 0, 100, 80)
    assert px.content_box(Image.new("L", (10, 10), 7))[0] == (0, 0, 10, 10)
    # a drawing and the same drawing cut tight and blown up give one content descriptor
    big = Image.new("L", (400, 300), 255)
    d = drawing(3).resize((60, 60))
    big.paste(d.convert("L"), (200, 30), d.getchannel("A"))
    cut = big.crop(px.content_box(big)[0])
    small = cut.resize((cut.width * 5, cut.height * 5), Image.BICUBIC)
    a, b = (px.content_descriptors(px.trimmed(x)[None])[0] for x in (big, small))
    assert a @ b > 0.98


def test_fast_paths_give_what_the_rule_says():
    """The shortcuts taken for speed: the blur as two 16x16 products against the blur done pixel by
    pixel, the frame test's median against np.median, the thumbnail against PIL's resize, the
    descriptors and the plain test against their formulas, the frame test at its edges, a square
    image's two forms being one thumbnail, and an untrimmed image reusing its thumbnail."""
    from PIL import Image

    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (3, 256)).astype(np.float32)
    ref = v.reshape(3, px.SIDE, px.SIDE).copy()
    for _ in range(px.SMOOTH):
        for axis in (1, 2):
            p = np.concatenate([np.take(ref, [0], axis), ref, np.take(ref, [px.SIDE - 1], axis)], axis=axis)
            n = px.SIDE
            ref = (
                np.take(p, range(n), axis) + 2 * np.take(p, range(1, n + 1), axis) + np.take(p, range(2, n + 2), axis)
            ) / 4
    np.testing.assert_allclose(px.smooth(v), ref.reshape(3, 256), rtol=0, atol=1e-4)
    for _ in range(200):  # the frame test against np.median and the share it states
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        a = rng.integers(0, 256, (h, w)).astype(np.uint8)
        a[rng.random((h, w)) < rng.random()] = int(rng.integers(0, 256))  # a frame, sometimes
        edge = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]]).astype(int)
        med = int(np.median(edge))
        assert px.edge_median(a) == (med, bool((np.abs(edge - med) <= px.TRIM_TOLERANCE).mean() >= px.FRAME_SHARE))
    for h, w in ((1, 1), (3, 700), (32, 32), (375, 500), (40, 17)):  # the thumbnail against PIL's resize
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        pil = np.asarray(img.resize((px.SIDE, px.SIDE), Image.BILINEAR), np.float32).ravel()
        assert np.abs(px.thumbnail(img) - pil).max() <= 1.0
    for _ in range(50):  # the descriptors' shortcuts against the rule
        t = rng.integers(0, 256, (4, 2, 256)).astype(np.float32)
        t[0] = 90.0  # flat
        t[1, :, rng.random(256) < 0.95] = 30.0  # plain
        c = px.content_descriptors(t)
        assert not c[:2].any() and np.allclose(np.linalg.norm(c[2:], axis=-1), 1.0, atol=1e-5)
        s = px.smooth(t[2:]) - px.smooth(t[2:]).mean(axis=-1, keepdims=True)
        ref = (s / np.linalg.norm(s, axis=-1, keepdims=True)).reshape(2, -1) / np.sqrt(2)
        np.testing.assert_allclose(c[2:], ref, atol=1e-6)
        edge = np.concatenate([t[..., :16], t[..., -16:], t[..., 16:-16:16], t[..., 31:-16:16]], axis=-1)
        share = (np.abs(t - np.median(edge, axis=-1, keepdims=True)) <= px.PLAIN_TOLERANCE).mean(axis=-1)
        assert (px.is_plain(t) == ((share > px.PLAIN_SHARE) | (t.std(axis=-1) < px.PLAIN_STD))).all()
    a = np.full((20, 30), 200, np.uint8)
    a[0, :3] = 0  # 3 of 96 edge pixels differ: still a frame
    assert px.edge_median(a) == (200, True)
    a[0, :12] = 0  # 12 of 96 (over 10%): no frame
    assert px.edge_median(a)[1] is False
    sq = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L")
    f = px.forms(sq, 0)
    assert (f[0] == f[1]).all() and (f[0] == px.thumbnail(sq)).all()
    wide = Image.fromarray(rng.integers(0, 256, (20, 40), dtype=np.uint8), "L")
    assert not (px.forms(wide, 0)[0] == px.forms(wide, 0)[1]).all()
    assert (px.trimmed(wide, None, px.thumbnail(wide)) == px.trimmed(wide)).all()


def test_calibrated_threshold_sets_copies_aside_and_takes_the_tail():
    rng = np.random.default_rng(0)
    n = 2000
    vecs = rng.normal(size=(n, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs[1] = vecs[0]  # a feature twin that is a byte-identical file: set aside
    hashes = np.array([b"%d" % i for i in range(n)], "S16")
    hashes[1] = hashes[0]
    pixel = np.zeros((n, px.DIM), np.float32)
    content = np.zeros((n, px.CDIM), np.float32)
    nn = th.nearest_neighbours(vecs, hashes, pixel, content, 0.96)
    assert len(nn) == n and nn.max() < 0.99  # row 0's twin is not its neighbour
    v = np.ones(px.DIM, np.float32) / np.sqrt(px.DIM)
    pixel[2], pixel[3], vecs[3] = v, v, vecs[2]  # a pixel copy: set aside too
    assert th.nearest_neighbours(vecs, hashes, pixel, content, 0.96).max() < 0.99
    t = th.calibrated(nn)
    assert t.value == pytest.approx(np.quantile(nn, th.QUANTILE, method="higher"), abs=1e-4)
    assert (nn > t.value).mean() <= 1 - th.QUANTILE
    assert th.calibrated(nn[:10]).value == th.DEFAULT_THRESHOLD  # too small a pool
    assert th.resolve(0.9, 0.99, nn).value == 0.9  # given wins, even over collapsed features
    assert th.resolve(None, 0.99, nn).value is None  # collapsed: off
    assert th.resolve(None, 0.5, nn).value == t.value
