"""Issue 20, runtime side: FIFOs never block (item 12), limits checked from headers before reading
(13), outputs checked writable before the work and a full disk leaves nothing (14), and hostile
file names cannot drive the terminal (8)."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from runtime_fakes import fake_image
from test_hostile_runtime import one_line_exit_2
from test_runtime import REPO

from runtime import cli
from runtime.errors import RoiedgeError, printable
from runtime.images import load_image, open_image


def run_cli(*args, timeout=120):
    """``python -m runtime ARGS`` with a timeout (a blocked read fails the test, never hangs it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "runtime", *map(os.fsdecode, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=timeout,
    )


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


# ------------------------------------------------------------------------- item 12: FIFOs


def test_a_fifo_as_image_inputs_or_manifest_is_refused_at_once(fake_copy, tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    one_line_exit_2(run_cli("detect", "--artifacts", fake_copy, fifo), "FIFO")
    one_line_exit_2(
        run_cli("run", fake_copy, "--model", "head", "--inputs", fifo, "--out", tmp_path / "o.npz"),
        "FIFO",
    )
    (fake_copy / "manifest.json").unlink()
    os.mkfifo(fake_copy / "manifest.json")
    one_line_exit_2(run_cli("check", fake_copy), "FIFO")


def test_a_fifo_inside_an_image_folder_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "trap.png")
    Image.fromarray(fake_image(0)).save(tmp_path / "real.png")
    assert cli.image_files([tmp_path]) == [tmp_path / "real.png"]
    with pytest.raises(RoiedgeError, match="FIFO"):
        load_image(tmp_path / "trap.png")


# --------------------------------------------------------------- item 13: limits from headers


def test_an_89_megapixel_png_is_refused_from_its_header(tmp_path):
    bomb = png_header_only(tmp_path / "big.png", 9500, 9400)  # 89.3 M: Pillow alone decodes it
    with pytest.raises(RoiedgeError, match="LIMITS image_pixels") as caught:
        load_image(bomb)
    assert "89,300,000 pixels" in str(caught.value)


def test_a_large_jpeg_is_checked_at_the_size_it_decodes_to(tmp_path, monkeypatch):
    from runtime import limits

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(photo, quality=90)
    row = limits.LIMITS["image_pixels"]
    monkeypatch.setitem(
        limits.LIMITS, "image_pixels", limits.Limit(row.name, 100_000, row.unit, row.what)
    )
    pixels, full = open_image(photo, reduce_to=(160, 160))  # decoded at 1/2: 320x240
    assert full == (480, 640) and pixels.shape[0] * pixels.shape[1] <= 100_000
    with pytest.raises(RoiedgeError, match="image_pixels"):
        load_image(photo)  # the full 640x480 is over this limit


def test_a_forged_npy_header_in_run_inputs_is_one_line(fake_dir, tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 41,)}
    )
    import zipfile

    forged = tmp_path / "x.npz"
    with zipfile.ZipFile(forged, "w") as archive:
        archive.writestr("features.npy", header.getvalue() + bytes(16))
    proc = run_cli("run", fake_dir, "--model", "head", "--inputs", forged, "--out", tmp_path / "y")
    one_line_exit_2(proc, "over the limit")


def test_a_deeply_nested_manifest_is_one_line(fake_copy):
    (fake_copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_exit_2(run_cli("check", fake_copy), "nesting")


# ----------------------------------------------------- item 14: outputs checked before the work


def test_outputs_that_cannot_be_written_are_refused_before_any_work(fake_dir, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(fake_image(0)).save(photo)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    os.mkfifo(tmp_path / "fifo.json")
    cases = [
        (("detect", "--artifacts", fake_dir, photo, "--json", tmp_path), "is a directory"),
        (("detect", "--artifacts", fake_dir, photo, "--json", blocker / "x.json"), "is a file"),
        (("detect", "--artifacts", fake_dir, photo, "--out", blocker), "existing file"),
        (("detect", "--artifacts", fake_dir, photo, "--json", tmp_path / "fifo.json"), "FIFO"),
        (("check", fake_dir, "--json", blocker / "sub" / "c.json"), "is a file"),
        (("bench", fake_dir, "--json", tmp_path), "is a directory"),
    ]
    for args, match in cases:
        proc = run_cli(*args)
        one_line_exit_2(proc, match)
        assert proc.stdout == "", (args, proc.stdout)  # nothing ran: no detector line, no table


def test_run_out_is_checked_before_running(fake_dir, tmp_path):
    inputs = tmp_path / "x.npz"
    np.savez(inputs, image=np.zeros((1, 32, 32, 3), np.float32))
    proc = run_cli(
        "run", fake_dir, "--model", "backbone_rpn", "--inputs", inputs, "--out", tmp_path
    )
    one_line_exit_2(proc, "is a directory")


def test_a_full_disk_at_write_time_is_one_line_and_leaves_nothing(
    fake_dir, tmp_path, monkeypatch, capsys
):
    photo = tmp_path / "photo.png"
    Image.fromarray(fake_image(0)).save(photo)
    out = tmp_path / "results"
    out.mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code = cli.main(
        ["detect", "--artifacts", str(fake_dir), str(photo), "--json", str(out / "d.json")]
    )
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"error: {out / 'd.json'}: cannot write it (No space left on device); nothing was written"
    ]
    assert list(out.iterdir()) == []  # no temp file, no partial JSON


# -------------------------------------------------------------------- item 8: hostile names


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_printable_leaves_no_control_format_or_surrogate_character(text):
    shown = printable(text)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in shown)
    if all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in text):
        assert shown == text
    shown.encode("utf-8")  # always printable to a UTF-8 terminal


def test_hostile_file_names_are_escaped_in_every_cli_line(fake_dir, tmp_path):
    names = [
        "title\x1b]0;pwned\x07.png",
        "clear\x1b[2J\x1b[H.png",
        "bidi\u202egnp.exe.png",
        os.fsdecode(b"raw\xff\xfe.png"),
    ]
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        Image.fromarray(fake_image(1)).save(folder / name, format="PNG")
    (folder / "broken\x1b[31m.png").write_bytes(b"not a png")
    proc = run_cli(
        "detect", "--artifacts", fake_dir, folder, "--keep-going", "--out", tmp_path / "o"
    )
    assert proc.returncode == 1, proc.stderr  # the broken one
    for text in (proc.stdout, proc.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "\udcff" not in text
    assert "title\\x1b]0;pwned\\x07.png" in proc.stdout
    assert "raw\\xff\\xfe.png" in proc.stdout
    assert "broken\\x1b[31m.png" in proc.stderr
    one_line_exit_2(
        run_cli("detect", "--artifacts", fake_dir, tmp_path / "no\x1b[2J.png"), "no\\x1b[2J"
    )


def test_hostile_class_names_in_the_manifest_are_escaped(fake_copy, tmp_path):
    from runtime.manifest import detector_digest

    path = fake_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["detector"]["class_names"] = ["d\x1b[2Jisc", "sq\x07uare"]
    data["detector_sha256"] = detector_digest(data["detector"])
    path.write_text(json.dumps(data))
    photo = tmp_path / "photo.png"
    Image.fromarray(fake_image(0)).save(photo)
    proc = run_cli("detect", "--artifacts", fake_copy, photo)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "d\\x1b[2Jisc" in proc.stdout or "sq\\x07uare" in proc.stdout
