"""Issue 20's held-out battery, the cases no other test covers: variants of the numbered cases on
the CLIs and file kinds the first fixes did not reach (``runtime stream``, the runtime's numeric
flags, float range of ``runtime run`` inputs, video frame size, small model sizes in training,
duplicate class names). Each was a traceback, a hang or a silently wrong result before its fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_hostile_config import edit_config
from test_hostile_io import run_cli
from test_hostile_runtime import one_line_exit_2

from runtime import limits


def write_avi(path: Path, frames: int = 4, size: tuple[int, int] = (48, 64)) -> Path:
    """A small MJPG video of ``frames`` frames of ``size`` (H, W), brightening."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size[::-1])
    for index in range(frames):
        writer.write(np.full((*size, 3), 30 + 40 * index, np.uint8))
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_avi(tmp_path_factory.mktemp("battery") / "clip.avi")


# ------------------------------------------------- item 1: the dataset's ids in `stream --json`


def test_stream_json_writes_the_datasets_category_ids_like_detect(fake_copy, video, tmp_path):
    edit_config(fake_copy, category_ids=[5, 9])  # disc = 5, square = 9
    lines = tmp_path / "frames.jsonl"
    proc = run_cli(
        "stream", "--video", video, "--artifacts", fake_copy, "--precision", "float32",
        "--json", lines, "--sequential",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [d for line in lines.read_text().splitlines() for d in json.loads(line)["detections"]]
    assert rows, "the fake detector finds something on every frame"
    assert {(r["category_name"], r["category_id"]) for r in rows} <= {("disc", 5), ("square", 9)}


# ------------------------------------------------------ item 11: the runtime's numeric flags


@pytest.mark.parametrize(
    "verb_args, flag",
    [
        (("check", "{fake}", "--threads", "1000000000"), "--threads"),
        (
            (
                "run",
                "{fake}",
                "--model",
                "head",
                "--inputs",
                "x.npz",
                "--out",
                "o.npz",
                "--threads",
                "1000000000",
            ),
            "--threads",
        ),
        (("bench", "{fake}", "--runs", "0"), "--runs"),
        (("bench", "{fake}", "--runs", "1000000000000"), "--runs"),
        (("bench", "{fake}", "--warmup", "-1"), "--warmup"),
        (("bench", "{fake}", "--video", "{video}", "--rounds", "-1"), "--rounds"),
        (
            ("stream", "--artifacts", "{fake}", "--video", "{video}", "--head-copies", "0"),
            "--head-copies",
        ),
        (
            ("stream", "--artifacts", "{fake}", "--video", "{video}", "--head-copies", "100000"),
            "--head-copies",
        ),
        (
            ("stream", "--artifacts", "{fake}", "--video", "{video}", "--threads", "1000000000"),
            "--threads",
        ),
        (
            ("stream", "--artifacts", "{fake}", "--video", "{video}", "--max-frames", "0"),
            "--max-frames",
        ),
    ],
)
def test_runtime_numeric_flags_out_of_range_are_refused_before_any_work(
    fake_dir, video, verb_args, flag
):
    # Before: 10**9 threads failed healthy ONNX artifacts in `check` (bad_alloc), --runs 0 was an
    # IndexError, 10**12 runs and 100000 head copies hung, --rounds -1 printed a table of nothing
    # and --head-copies 0 was silently run as 1.
    args = [a.format(fake=fake_dir, video=video) for a in verb_args]
    proc = run_cli(*args, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert f"error: argument {flag}:" in last and "expected an integer" in last, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_flag_type_takes_exactly_the_integers_in_its_limit_row():
    parse = limits.flag_type(1, "flag_threads")
    assert [parse(v) for v in ("1", "7", str(limits.limit("flag_threads")))] == [1, 7, 1024]
    for text in ("0", "-3", "1025", "1.5", "nan", "x"):
        with pytest.raises(Exception, match="expected an integer"):
            parse(text)
    assert limits.flag_type(0)("0") == 0 and limits.flag_type(0)("10000000") == 10_000_000


# ----------------------------------------------------- item 14: stream outputs checked first


def test_stream_outputs_that_cannot_be_written_are_one_line_before_any_frame(
    fake_dir, video, tmp_path
):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    os.mkfifo(tmp_path / "fifo.jsonl")
    common = ("stream", "--artifacts", fake_dir, "--video", video, "--precision", "float32")
    for flag, target, match in [
        ("--json", blocker / "x.jsonl", "is a file"),  # was a NotADirectoryError traceback
        ("--json", "/dev/full", "character device"),  # was an ENOSPC traceback
        ("--json", tmp_path / "fifo.jsonl", "FIFO"),
        ("--json", tmp_path, "is a directory"),
        ("--out", blocker / "x.avi", "is a file"),
    ]:
        proc = run_cli(*common, flag, target, timeout=60)
        one_line_exit_2(proc, match)
        assert proc.stdout == "", proc.stdout  # no detector line: nothing ran


def test_a_json_write_failing_mid_stream_is_one_line_and_keeps_the_frames_before(
    fake_dir, video, tmp_path, monkeypatch, capsys
):
    import errno
    import io

    from runtime import cli, stream_cli

    class FullAfterTwo(io.StringIO):
        """A lines file on a disk that fills up after two lines."""

        written = 0

        def write(self, text):
            if FullAfterTwo.written == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            FullAfterTwo.written += 1
            return super().write(text)

    monkeypatch.setattr(stream_cli, "_open_lines", lambda path: FullAfterTwo())
    code = cli.main(
        ["stream", "--artifacts", str(fake_dir), "--video", str(video), "--precision", "float32",
         "--json", str(tmp_path / "f.jsonl"), "--sequential"]
    )  # fmt: skip
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == [
        f"error: --json {tmp_path / 'f.jsonl'}: cannot write it (No space left on device); the "
        "lines of the frames before were written"
    ]
    assert FullAfterTwo.written == 2


def test_stream_prints_hostile_output_names_escaped(fake_dir, video, tmp_path):
    hostile = tmp_path / "x\x1b]0;PWNED\x07\x1b[2J.jsonl"
    proc = run_cli(
        "stream", "--artifacts", fake_dir, "--video", video, "--precision", "float32",
        "--json", hostile, "--sequential",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout + proc.stderr
    assert "x\\x1b]0;PWNED\\x07\\x1b[2J.jsonl" in proc.stdout
    assert hostile.read_text().count("\n") == 4  # the file itself is written under its name


# ------------------------------------------------ items 12, 13: the video source is bounded


def test_a_fifo_as_video_is_named_as_a_fifo_and_never_opened(tmp_path):
    from runtime.video import VideoError, VideoFile

    os.mkfifo(tmp_path / "pipe.mp4")
    with pytest.raises(VideoError, match="is a FIFO"):
        VideoFile(tmp_path / "pipe.mp4")


def test_video_frames_over_the_pixel_limit_are_refused_from_the_header(
    tmp_path, video, monkeypatch
):
    from runtime.video import VideoError, VideoFile

    # 48 x 64 = 3072 pixels: over a limit of 3000, refused before a frame is decoded (the
    # 50-megapixel limit is the same check; a 9000x6000 video was decoded at 1.3 s a frame).
    row = limits.LIMITS["image_pixels"]
    monkeypatch.setitem(
        limits.LIMITS, "image_pixels", limits.Limit(row.name, 3000, row.unit, row.what)
    )
    with pytest.raises(VideoError, match=r"frames: 3,072 pixels is over the limit of 3,000"):
        VideoFile(video)
    monkeypatch.setitem(
        limits.LIMITS, "image_pixels", limits.Limit(row.name, 3072, row.unit, row.what)
    )
    assert len(list(VideoFile(video))) == 4


# ----------------------------------------------- item 4: float inputs beyond the tensor range


@pytest.mark.parametrize(
    "dtype, values, refused",
    [
        ("float32", [1e300, 0.0], True),  # was cast to inf with a RuntimeWarning, exit 0
        ("float32", [-1e39], True),
        ("float16", [70000.0], True),
        ("float16", [65504.0, np.nan, np.inf, -np.inf], False),  # NaN and inf stay as given
        ("float32", [3.4e38], False),
        ("int32", [2**31], True),
        ("int32", [-(2**31)], False),
    ],
)
def test_check_range_refuses_what_a_cast_would_make_infinite_or_wrap(dtype, values, refused):
    from runtime.input_checks import InputError, check_range

    array = np.array(values, np.float64 if dtype.startswith("float") else np.int64)
    if refused:
        with pytest.raises(InputError, match="a cast would"):
            check_range(array, np.dtype(dtype), "input 'x'")
    else:
        check_range(array, np.dtype(dtype), "input 'x'")
        cast = array.astype(dtype)
        np.testing.assert_array_equal(np.isfinite(cast), np.isfinite(array))


def test_run_refuses_float64_inputs_beyond_float32_in_one_line(fake_dir, tmp_path):
    inputs = tmp_path / "x.npz"
    np.savez(inputs, image=np.full((1, 32, 32, 3), 1e300))
    for fmt in ("tflite", "onnx"):
        proc = run_cli(
            "run", fake_dir, "--model", "backbone_rpn", "--format", fmt, "--inputs", inputs,
            "--out", tmp_path / "o.npz",
        )  # fmt: skip
        one_line_exit_2(proc, "a cast would make it infinite")
        assert not (tmp_path / "o.npz").exists()


# ------------------------------------ item 14: a video OpenCV could not write is not "written"


def test_a_video_whose_frames_were_not_stored_is_an_error_not_a_written_file(tmp_path, monkeypatch):
    from runtime import video

    class DroppingWriter:
        """cv2.VideoWriter on a full disk: opens, takes every frame, stores none, says nothing."""

        def __init__(self, *args):
            self.inner = cv2.VideoWriter(*args)

        def isOpened(self):  # OpenCV's name
            return self.inner.isOpened()

        def write(self, frame):
            pass

        def release(self):
            self.inner.release()

    class FullDiskCv2:
        VideoWriter = DroppingWriter

        def __getattr__(self, name):
            return getattr(cv2, name)

    monkeypatch.setattr(video, "opencv", FullDiskCv2)
    target = tmp_path / "annotated.avi"
    writer = video.VideoWriter(target, 10.0, (48, 64))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    # Before: `stream --out` on a full disk printed "wrote 5 frames" and left a 0-byte video.
    with pytest.raises(video.VideoError, match=r"0 of 3 frames stored"):
        writer.close()
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    monkeypatch.undo()
    writer = video.VideoWriter(target, 10.0, (48, 64))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.close()
    assert video._stored_frames(target) == 3
