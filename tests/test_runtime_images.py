"""Real photos through the runtime: EXIF orientation, deep integer images, palette/CMYK/LA,
decompression bombs, tiny images, and JPEG draft decoding of a large photo (peak RSS)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import fake_image
from test_runtime import REPO, _one_line_exit_2, run_cli

from runtime.detector import Detector
from runtime.errors import RoiedgeError
from runtime.images import load_image, open_image


def _boxes(found):
    return [(d.class_id, round(d.score, 5), tuple(round(v, 3) for v in d.box)) for d in found]


def test_exif_orientation_6_gives_boxes_in_the_displayed_frame(fake_dir, tmp_path):
    shown = np.asarray(Image.fromarray(fake_image(2)).resize((48, 32), Image.BILINEAR))  # H32 W48
    # Orientation 6 = "rotate 90 degrees clockwise to display": store it turned counter-clockwise.
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path), shown)
    detector = Detector(fake_dir, precision="float32")
    expected = _boxes(detector.detect(shown))
    assert expected
    assert _boxes(detector.detect(path)) == expected


def test_16_and_32_bit_integer_images_are_scaled_not_clipped(fake_dir, tmp_path):
    gray8 = fake_image(3).mean(axis=-1).round().astype(np.uint8)
    png16 = tmp_path / "gray16.png"
    Image.fromarray(gray8.astype(np.uint16) * 257).save(png16)  # 0..255 -> 0..65535
    tiff32 = tmp_path / "gray32.tif"
    Image.fromarray((gray8.astype(np.uint64) * 16843009).astype(np.uint32)).save(tiff32)
    rgb = np.repeat(gray8[..., None], 3, axis=-1)
    for path in (png16, tiff32):
        np.testing.assert_array_equal(load_image(path), rgb, err_msg=str(path))
    detector = Detector(fake_dir, precision="float32")
    assert _boxes(detector.detect(png16)) == _boxes(detector.detect(rgb))


def test_palette_cmyk_and_la_images_are_converted(tmp_path):
    rgb = fake_image(4)
    palette = Image.fromarray(rgb).quantize(colors=16)
    table = np.asarray(palette.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(load_image(palette), table[np.asarray(palette)])
    cmyk = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    path = tmp_path / "cmyk.tif"
    Image.frombytes("CMYK", (8, 8), cmyk.tobytes()).save(path)
    c, m, y, k = (cmyk[..., i].astype(float) for i in range(4))
    expected = np.stack([(255 - v) * (255 - k) / 255 for v in (c, m, y)], axis=-1)
    assert np.abs(load_image(path).astype(float) - expected).max() <= 1.0
    la = np.stack([rgb[..., 0], np.full_like(rgb[..., 0], 7)], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    np.testing.assert_array_equal(load_image(path), np.repeat(rgb[..., :1], 3, axis=-1))


def _png_header_only(path, width, height):
    """A PNG whose IHDR claims ``width`` x ``height``, with one tiny IDAT and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_and_tiny_images_are_refused_in_one_line(fake_dir, tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30000, 30000)
    with pytest.raises(RoiedgeError, match="refused as a decompression bomb"):
        load_image(bomb)
    _one_line_exit_2(run_cli("detect", "--artifacts", fake_dir, bomb), "decompression bomb")
    between = tmp_path / "between.png"  # over the limit, under twice it: Pillow only warns
    _png_header_only(between, 10000, 10000)
    with pytest.raises(RoiedgeError, match="decompression bomb"):
        load_image(between)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 5)).save(tiny)
    with pytest.raises(RoiedgeError, match="is 1x5 pixels; expected at least 2x2"):
        load_image(tiny)
    detector = Detector(fake_dir, precision="int8")
    for shape in ((0, 0, 3), (1, 7, 3)):
        with pytest.raises(RoiedgeError, match="expected at least 2x2"):
            detector.detect(np.zeros(shape, np.uint8))


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child forked from this
# (TensorFlow-sized) pytest process would report the parent's peak.
_RSS_CHILD = """
import sys
from runtime.detector import Detector
detector = Detector(sys.argv[1], precision="int8")
found = detector.detect(sys.argv[2])
status = open("/proc/self/status").read()
peak_kb = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
print(len(found), peak_kb / 1024)
"""


def test_large_jpeg_is_draft_decoded_under_200_mb_peak_rss(fake_dir, tmp_path):
    from PIL import ImageDraw

    photo = Image.new("RGB", (8000, 6000), (40, 40, 40))
    ImageDraw.Draw(photo).rectangle((2000, 1500, 5000, 4000), fill=(230, 230, 230))
    path = tmp_path / "photo.jpg"
    photo.save(path, quality=90)
    del photo
    pixels, full = open_image(path, reduce_to=(32, 32))
    assert full == (6000, 8000) and pixels.shape == (750, 1000, 3)  # decoded at 1/8 scale
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(fake_dir), str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    _, peak_mb = proc.stdout.split()
    assert float(peak_mb) < 200, proc.stdout
