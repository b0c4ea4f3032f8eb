"""ImageDataset: decodes real PNGs, converts modes, and counts unreadable images instead of crashing."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from datl.manifests import Manifest, probe_images
from datl.neural.data import BadImageLog, ImageDataset, collate_skip_bad

from helpers import tiny_manifest, write_pngs


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _dataset_with_bad_files(tmp_path):
    paths = write_pngs(tmp_path / "img", 6, size=12)
    _truncate(paths[2])
    rel = [f"img/{p.name}" for p in paths] + ["img/missing.png"]
    m = tiny_manifest(tmp_path / "m.parquet", rel, [0, 1, 0, 1, 0, 1, 0], ["a", "b"])
    return m, paths


def test_truncated_and_missing_images_are_skipped_and_reported(tmp_path):
    m, paths = _dataset_with_bad_files(tmp_path)
    ds = ImageDataset(m, mode="L")
    assert len(ds) == 7
    assert ds[2].image is None and "img002.png" in ds[2].error
    assert ds[6].image is None and "missing.png" in ds[6].error
    assert ds[0].image.shape == (1, 12, 12)
    for workers in (0, 2):
        log = BadImageLog()
        seen = []
        for batch in DataLoader(ds, batch_size=3, collate_fn=collate_skip_bad, num_workers=workers):
            log.add(batch.bad)
            if batch.images is not None:
                assert batch.images.shape[0] == len(batch.labels) == len(batch.index)
                seen += batch.index.tolist()
        assert sorted(seen) == [0, 1, 3, 4, 5]
        assert log.count == 2
        assert "2 unreadable image(s) skipped" in log.summary() and "img002.png" in log.summary()


def test_mode_conversion_and_labels(tmp_path):
    write_pngs(tmp_path / "img", 2, size=20, mode="RGB")
    m = tiny_manifest(tmp_path / "m.parquet", ["img/img000.png", "img/img001.png"], [1, 0], ["a", "b"])
    grey = ImageDataset(m, mode="L")[0]
    rgb = ImageDataset(m, mode="RGB")[0]
    assert grey.image.shape == (1, 20, 20) and rgb.image.shape == (3, 20, 20)
    assert grey.label == 1
    assert 0.0 <= float(grey.image.min()) and float(grey.image.max()) <= 1.0
    # ITU-R 601 luma: the grey image is the weighted sum of the channels
    r, g, b = rgb.image
    assert torch.allclose(grey.image[0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1.5 / 255)


def test_unlabeled_manifest_yields_minus_one(tmp_path):
    write_pngs(tmp_path / "img", 1)
    m = tiny_manifest(tmp_path / "m.parquet", ["img/img000.png"], None)
    assert ImageDataset(m, mode="L")[0].label == -1


def test_probe_images_reports_size_and_channels(tmp_path, demo_small):
    assert probe_images(Manifest(demo_small / "source.parquet")) == ((28, 28), 1)
    write_pngs(tmp_path / "img", 3, size=20, mode="RGB")
    m = tiny_manifest(tmp_path / "m.parquet", [f"img/img00{i}.png" for i in range(3)], None)
    assert probe_images(Manifest(m)) == ((20, 20), 3)


def test_inference_decodes_a_jpeg_at_the_smallest_scale_that_covers_the_model_input(tmp_path):
    """A 1000x800 JPEG read for a 224 model: decoded at 1/2 (500x400, both sides >= 224; 1/4
    would give 250x200), and the model's input differs little from a full decode's."""
    import numpy as np
    from PIL import Image

    from datl.neural.data import build_transform

    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize((1000, 800), Image.BICUBIC)
    (tmp_path / "img").mkdir()
    field.save(tmp_path / "img" / "big.jpg", quality=90)
    m = tiny_manifest(tmp_path / "m.parquet", ["img/big.jpg"], [0], ["a"])
    sizes = []
    ImageDataset(m, transform=lambda im: sizes.append(im.size) or im, mode="RGB", draft=(224, 224))[0]
    ImageDataset(m, transform=lambda im: sizes.append(im.size) or im, mode="RGB")[0]
    assert sizes == [(500, 400), (1000, 800)]
    tf = build_transform((224, 224), 3, [0.5] * 3, [0.5] * 3, train=False)
    small = ImageDataset(m, transform=tf, mode="RGB", draft=(224, 224))[0].image
    full = ImageDataset(m, transform=tf, mode="RGB")[0].image
    assert small.shape == full.shape == (3, 224, 224)
    assert float((small - full).abs().mean()) < 0.02  # of a range of 4 (normalised by std 0.5)
