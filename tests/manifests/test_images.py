"""The one decoding path (manifests/images.py) on the modes users' files really have: 16-bit
grey, RGBA and LA with hidden colours under transparent pixels, palette transparency, 1-bit,
CMYK, EXIF-rotated JPEGs, a 20,000-pixel-wide strip, and files over the pixel cap."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datl.manifests import images
from datl.manifests.images import BACKGROUND, DECODE_ERRORS, ImageTooLarge, decode_bytes


def png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_16_bit_grey_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    data = png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # what PIL makes of a 16-bit PNG
    out = np.asarray(decode_bytes(data, "L"), dtype=np.int64)
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) > 200  # a ramp, not a silhouette (PIL's convert gives 2 values)
    assert np.abs(out - np.rint(ramp / 257.0)).max() <= 1
    assert len(np.unique(np.asarray(Image.open(io.BytesIO(data)).convert("L")))) <= 3  # the defect, for the record


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_the_background_whatever_colour_they_hide(mode):
    rng = np.random.default_rng(0)
    shape = np.zeros((20, 20), np.uint8)
    shape[5:15, 5:15] = 255  # an opaque square on a transparent canvas
    decoded = []
    for hidden in (0, 255, 97):  # black, white, leftover paint under the transparent pixels
        chans = 4 if mode == "RGBA" else 2
        a = np.full((20, 20, chans), hidden, np.uint8)
        a[..., : chans - 1][shape > 0] = 40 if mode == "LA" else rng.integers(0, 80, 3, dtype=np.uint8)
        a[..., -1] = shape
        if mode == "RGBA":
            a[..., :3][shape > 0] = (40, 60, 20)
        decoded.append(np.asarray(decode_bytes(png(Image.fromarray(a, mode)), "RGB")))
    assert (decoded[0] == decoded[1]).all() and (decoded[1] == decoded[2]).all()
    assert (decoded[0][0, 0] == BACKGROUND).all() and (decoded[0][10, 10] != BACKGROUND).any()


def test_palette_transparency_is_composited_without_a_warning():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    p.paste(1, (2, 2, 6, 6))
    data = png(p, transparency=0)  # index 0 (black) is transparent
    res = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "import sys; from datl.manifests.images import decode_bytes; import numpy as np; "
            "a = np.asarray(decode_bytes(sys.stdin.buffer.read(), 'RGB')); "
            "print(a[0, 0].tolist(), a[3, 3].tolist())",
        ],
        input=data,
        capture_output=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().split("] [") == ["[255, 255, 255", "200, 30, 30]\n"]
    assert res.stderr == b""  # PIL's "Palette images with Transparency..." warning never reaches stderr


def test_one_bit_cmyk_and_exif_orientation():
    one = Image.new("1", (4, 4), 0)
    one.putpixel((1, 1), 1)
    assert np.asarray(decode_bytes(png(one), "L"))[1, 1] == 255
    buf = io.BytesIO()
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(buf, format="JPEG")
    r, g, b = decode_bytes(buf.getvalue(), "RGB").getpixel((3, 2))
    assert r > 200 and g < 60 and b < 60  # CMYK red stays red
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20), (10, 120, 10)).save(buf, format="JPEG", exif=exif)
    assert decode_bytes(buf.getvalue(), "RGB").size == (20, 40)


def test_a_20000_pixel_wide_strip_decodes_and_a_huge_image_is_refused_before_decoding(monkeypatch):
    wide = png(Image.new("RGB", (20_000, 12), (5, 6, 7)))
    assert decode_bytes(wide, "L").size == (20_000, 12)
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(ImageTooLarge, match="20000x12 pixels is over the 100,000-pixel cap"):
        decode_bytes(wide, "L")
    assert issubclass(ImageTooLarge, DECODE_ERRORS)  # counted unreadable like any other bad image


def test_jpeg_is_decoded_at_reduced_size_when_the_caller_shrinks_anyway():
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1536), (90, 90, 200)).save(buf, format="JPEG")
    small = decode_bytes(buf.getvalue(), "L", draft=(64, 64))
    assert 64 <= min(small.size) and max(small.size) <= 2048 // 8 * 2  # a DCT scale of 1/8 or 1/4
    assert decode_bytes(buf.getvalue(), "L").size == (2048, 1536)


def test_a_model_sees_the_same_pixels_whatever_the_files_mode(tmp_path):
    """One picture saved as RGBA, as a palette image with a transparent index, as LA and as the
    white-flattened RGB a user might have instead: ImageDataset gives the same tensor for all."""
    import pyarrow as pa

    from datl.manifests import ManifestMeta, write_manifest
    from datl.neural.data import ImageDataset

    rng = np.random.default_rng(1)
    colours = np.array([[255, 255, 255], [200, 30, 30], [20, 90, 200], [10, 10, 10]], np.uint8)
    idx = rng.integers(1, 4, (24, 24)).astype(np.uint8)
    idx[:6] = 0  # a transparent band
    alpha = np.where(idx == 0, 0, 255).astype(np.uint8)
    rgb = colours[idx]
    hidden = rgb.copy()
    hidden[idx == 0] = (0, 255, 0)  # the colour the transparent pixels happen to hide
    Image.fromarray(np.dstack([hidden, alpha]), "RGBA").save(tmp_path / "rgba.png")
    pal = Image.fromarray(idx, "P")
    pal.putpalette(colours.reshape(-1).tolist() + [0] * (768 - 12))
    pal.save(tmp_path / "palette.png", transparency=0)
    Image.fromarray(rgb, "RGB").save(tmp_path / "flat.png")
    grey = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    Image.fromarray(np.dstack([np.where(idx == 0, 7, grey), alpha]).astype(np.uint8), "LA").save(tmp_path / "la.png")
    names = ["rgba", "palette", "flat", "la"]
    m = write_manifest(
        tmp_path / "m.parquet", pa.table({"id": names, "path": [f"{n}.png" for n in names]}), ManifestMeta()
    )
    for mode in ("RGB", "L"):
        ds = ImageDataset(m, mode=mode)
        x = [np.asarray(ds[i].image) for i in range(len(names))]
        assert all(s.error is None for s in (ds[i] for i in range(len(names))))
        ref = x[names.index("flat")]
        for n, xi in zip(names, x):
            if n == "la" and mode == "RGB":
                continue  # grey with alpha has no colour to give back
            assert np.abs(xi.astype(float) - ref.astype(float)).max() <= 1, (mode, n)
