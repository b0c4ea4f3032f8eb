"""Issue 18's decode budget on real files: a 20,000 x 30,000 PNG costs a header read and a
counted "too large" entry in every stage; PIL's warnings go to the bad-image log, not stderr."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datl.manifests.images import decode_bytes
from datl.neural.data import BadImageLog, ImageDataset, collate_skip_bad

from helpers import cli, tiny_manifest


def write_huge_png(path: Path, width: int, height: int) -> Path:
    """A real, valid grey PNG of width x height, written row by row (never held in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" + bytes(width)  # filter byte, then a black row
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        for _ in range(height):
            if data := z.compress(row):
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", z.flush()) + chunk(b"IEND", b""))
    return path


def corrupt_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF block has a tag pointing past its end: PIL decodes it and warns."""
    tiff = (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", 1)
        + struct.pack("<HHII", 0x010E, 2, 1000, 26)
        + struct.pack("<I", 0)
    )
    Image.new("RGB", (28, 28), (200, 40, 40)).save(path, "JPEG", exif=b"Exif\x00\x00" + tiff)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("huge")
    write_huge_png(d / "huge.png", 20_000, 30_000)
    corrupt_exif_jpeg(d / "warned.jpg")
    rng = np.random.default_rng(0)
    for i in range(6):
        a = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
        a[..., 3] = np.where(a[..., 3] > 60, 255, 0)
        Image.fromarray(a, "RGBA").save(d / f"ok{i}.png")
    names = ["huge.png", "warned.jpg"] + [f"ok{i}.png" for i in range(6)]
    tiny_manifest(d / "m.parquet", names, [0, 1, 2, 0, 1, 2, 0, 1], ["a", "b", "c"])
    tiny_manifest(d / "target.parquet", [f"ok{i}.png" for i in range(3)], None)
    return d


def test_the_file_is_a_real_600_megapixel_png(folder):
    with Image.open(folder / "huge.png") as im:
        assert im.size == (20_000, 30_000) and im.mode == "L"
    assert (folder / "huge.png").stat().st_size < 2_000_000  # so the suite can afford it


def test_decoding_it_costs_a_header_read_not_600_mb(folder):
    """In a fresh process: refused as too large, and the process never grew past 250 MB (a full
    decode needs 600 MB for the pixels alone)."""
    code = (
        "import re, sys\n"
        "from datl.manifests.images import load_image, ImageTooLarge\n"
        "try:\n    load_image(sys.argv[1], 'RGB')\nexcept ImageTooLarge as e:\n    print(e)\n"
        # VmHWM: this process's peak resident memory (ru_maxrss would carry pytest's over the fork)
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(folder / "huge.png")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    message, rss_mb = res.stdout.strip().splitlines()
    assert "20000x30000 pixels is over the 200,000,000-pixel cap" in message
    assert int(rss_mb) < 250, rss_mb
    assert res.stderr == ""  # no DecompressionBombWarning, no traceback


@pytest.mark.slow
def test_every_stage_counts_it_as_too_large_and_goes_on(folder, random_model, tmp_path):
    res = cli("datl", "manifest", "validate", str(folder / "m.parquet"), "-q")
    assert res.returncode == 2 and "ImageTooLarge: 20000x30000" in res.stdout + res.stderr
    res = cli(
        "curate",
        "estimate",
        "--model",
        str(random_model),
        "--target",
        str(folder / "m.parquet"),
        "--out",
        str(tmp_path / "prior.parquet"),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    assert "1 unreadable image(s) skipped (first: " in res.stderr and "20000x30000 pixels" in res.stderr
    res = cli(
        "curate",
        "dedup",
        "--source",
        str(folder / "m.parquet"),
        "--target",
        str(folder / "target.parquet"),
        "--no-feature",
        "--out",
        str(tmp_path / "dups.parquet"),
        "--cache",
        str(tmp_path / "cache"),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    assert "1 source image(s) could not be read" in res.stderr
    assert "1 source image(s) decoded with a warning from PIL" in res.stderr  # warned.jpg, logged not printed
    assert "Skipping tag" not in res.stderr
    res = cli(
        "pretrain",
        "--manifest",
        str(folder / "m.parquet"),
        "--model",
        "test_resnet",
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        "28",
        "--workers",
        "0",
        "-q",
    )
    assert res.returncode == 0, res.stderr
    assert "unreadable image(s) skipped" in res.stderr and "20000x30000" in res.stderr


def test_pil_warnings_are_logged_with_the_file_not_printed(folder, capfd):
    notes: list[str] = []
    img = decode_bytes((folder / "warned.jpg").read_bytes(), "RGB", warned=notes)
    assert img.size == (28, 28)
    assert len(notes) == 1 and "Skipping tag 270" in notes[0]
    ds = ImageDataset(folder / "m.parquet", mode="RGB")
    batch = collate_skip_bad([ds[i] for i in range(len(ds))])
    assert len(batch.bad) == 1 and "huge.png" in batch.bad[0]
    assert len(batch.warned) == 1 and "warned.jpg" in batch.warned[0] and "Skipping tag 270" in batch.warned[0]
    assert batch.images.shape[0] == 7  # the warned image is used
    log = BadImageLog()
    log.add(batch.bad, batch.warned)
    assert "1 image(s) decoded with a warning from PIL" in log.warnings_summary()
    assert capfd.readouterr().err == ""  # nothing reached stderr


def test_validate_lists_warned_images_and_passes_without_the_huge_one(folder, tmp_path):
    names = ["warned.jpg", "ok0.png"]
    m = tiny_manifest(tmp_path / "m.parquet", [str(folder / n) for n in names], [0, 1], ["a", "b"])
    res = cli("datl", "manifest", "validate", str(m), "-q")
    assert res.returncode == 0, res.stderr
    assert "decoded with a warning: " in res.stdout and "warned.jpg" in res.stdout
    assert "1 image(s) decode with a warning from PIL" in res.stderr


def test_validate_counts_every_bad_file_keeps_twenty_and_lists_all(folder, tmp_path):
    """A source with many bad files: the report holds counts and 20 examples per kind (memory
    does not grow with the bad files), the screen shows those 20, --list CSV has every one."""
    import csv

    from datl.manifests.validate import EXAMPLES, validate_manifest

    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((folder / "ok0.png").read_bytes()[:60])
    paths = [str(tmp_path / f"gone{i}.png") for i in range(30)] + [
        str(truncated),
        str(folder / "huge.png"),
        str(folder / "warned.jpg"),
        str(folder / "ok1.png"),
    ]
    ids = [f"id{i}" for i in range(len(paths))]
    m = tiny_manifest(tmp_path / "m.parquet", paths, [0] * len(paths), ["a"], ids=ids)
    report = validate_manifest(m, progress=False, workers=2, listing=tmp_path / "api.csv")
    assert (report.unreadable.count, report.warnings.count, report.files_checked) == (32, 1, 34)
    assert len(report.unreadable.examples) == EXAMPLES == 20
    assert report.warnings.examples[0].startswith(str(folder / "warned"))
    rows = list(csv.DictReader(open(tmp_path / "api.csv")))
    assert sorted(r["id"] for r in rows if r["kind"] == "unreadable") == sorted(ids[:32])
    assert [r["id"] for r in rows if r["kind"] == "warning"] == ["id32"]
    assert {r["problem"].rsplit(": ", 1)[-1] for r in rows[:30]} == {"missing"}
    assert any("ImageTooLarge" in r["problem"] for r in rows) and any("truncated.png" in r["problem"] for r in rows)

    res = cli("datl", "manifest", "validate", str(m), "-q", "--list", str(tmp_path / "bad.csv"))
    assert res.returncode == 2
    assert res.stdout.count("  unreadable: ") == 20
    assert "32 of 34 image file(s) are missing or unreadable" in res.stderr and "bad.csv" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 2  # the warned line and the error line, no traceback
    assert list(csv.DictReader(open(tmp_path / "bad.csv"))) == rows  # written although the check failed
    res = cli("datl", "manifest", "validate", str(m), "-q", "--list", str(m))
    assert res.returncode == 2 and "--list" in res.stderr and pq_rows(m) == len(paths)  # the manifest is untouched


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
