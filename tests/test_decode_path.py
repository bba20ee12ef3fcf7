"""Training, evaluation, the report and export calibration decode a photo as ``detect`` does:
a large JPEG at a reduced scale (runtime.images.open_image), not fully decoded and resized."""

from __future__ import annotations

import numpy as np


def test_a_large_jpeg_is_scored_as_detect_sees_it(tmp_path):
    from PIL import Image

    from export.calibration import load_image as calibration_image
    from models.coco import load_resized
    from runtime.images import load_image, open_image, resize

    rng = np.random.default_rng(0)
    # fine texture: a reduced-scale (DCT) decode and a full decode + resize differ on it
    pixels = rng.integers(0, 256, (960, 1280, 3), np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    size = (120, 160)
    device = resize(open_image(path, reduce_to=size)[0], size)  # runtime.detector's path
    resized, original = load_resized(path, size)
    assert original == (960, 1280)
    np.testing.assert_array_equal(resized, device)
    np.testing.assert_array_equal(calibration_image(path, size), device)
    full = resize(load_image(path), size)
    assert np.abs(full.astype(int) - device.astype(int)).max() > 0  # the path matters here
