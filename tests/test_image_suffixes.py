"""One list of image suffixes: a folder ``detect`` reads is a folder ``--calibration`` reads."""

from __future__ import annotations

import numpy as np
from PIL import Image

from export.calibration import image_files as calibration_images
from runtime.cli import image_files as detect_images
from runtime.images import load_image


def test_calibration_and_detect_pick_the_same_files_webp_included(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    for name, fmt in (("a.webp", "WEBP"), ("b.JPG", "JPEG"), ("c.png", "PNG"), ("d.bmp", "BMP")):
        Image.fromarray(pixels).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    picked = calibration_images(tmp_path)
    assert [p.name for p in picked] == ["a.webp", "b.JPG", "c.png", "d.bmp"]
    assert picked == detect_images([tmp_path])
    webp = load_image(tmp_path / "a.webp")  # and the loader decodes what was picked
    assert webp.shape == (12, 10, 3) and webp.dtype == np.uint8
