"""Video and camera streams (runtime.stream, runtime.video, ``python -m runtime stream``).

The reference is ``Detector.detect`` on frames this test decodes itself with OpenCV; the videos
are written here from ``models.moving_scenes`` (shapes of the shipped detector's training scenes
moving across the frame).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.moving_scenes import moving_frames, write_video
from runtime.detector import Detector
from runtime.stream import stream_detections
from runtime.video import Frame, LiveCamera, VideoError, VideoFile, opencv

REPO = Path(__file__).resolve().parent.parent
FRAMES = 12
SIZE = (120, 160)  # (H, W): not the model's 160x160, so boxes are scaled back to the frame


@pytest.fixture(scope="module")
def artifacts(exported_artifacts) -> Path:
    return Path(exported_artifacts[0])


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "moving.avi"
    assert write_video(path, moving_frames(FRAMES, SIZE, seed=3)) == FRAMES
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from ``path``, RGB (read here, independently of runtime.video)."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def expected_record(index: int, detections: list, class_names: tuple) -> dict:
    rows = []
    for d in detections:
        y1, x1, y2, x2 = (float(v) for v in d.box)
        rows.append(
            {
                "category_id": class_names.index(d.class_name) + 1,
                "category_name": d.class_name,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(d.score),
            }
        )
    return {"frame": index, "detections": rows}


def run_stream(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "stream", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        **kwargs,
    )


def test_stream_json_lines_equal_per_frame_detect_and_video_keeps_count_and_size(
    artifacts, video, tmp_path
):
    out, lines = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    proc = run_stream(
        "--video", str(video), "--artifacts", str(artifacts), "--precision", "int8",
        "--json", str(lines), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    frames = decoded_frames(video)
    assert len(frames) == FRAMES
    detector = Detector(artifacts, precision="int8")
    expected = [expected_record(i, detector.detect(f), detector.config.class_names) for i, f in enumerate(frames)]  # fmt: skip
    assert sum(len(e["detections"]) for e in expected) > 0  # the comparison is about something
    assert [{k: r[k] for k in ("frame", "detections")} for r in records] == expected
    timestamps = [r["timestamp_s"] for r in records]
    assert timestamps == sorted(timestamps) and timestamps[-1] > 0
    written = decoded_frames(out)
    assert len(written) == FRAMES
    assert {f.shape for f in written} == {(*SIZE, 3)}
    assert "fps" in proc.stderr and "dropped 0" in proc.stderr


def test_frame_order_and_detections_hold_with_four_pipeline_threads(artifacts, video):
    frames = decoded_frames(video) * 2
    detector = Detector(artifacts, precision="int8", num_threads=1)
    expected = [detector.detect(f) for f in frames]
    results = list(detector.stream(frames, workers=4, head_copies=4, queue_size=1))
    assert [r.frame.index for r in results] == list(range(len(frames)))
    assert [r.detections for r in results] == expected


def test_steps_with_four_workers_and_random_delays_keep_order():
    """Order is the pipeline's doing, not luck: workers finish out of order on purpose."""
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.004) for _ in range(200)]

    def slow(work):
        time.sleep(delays[work.frame.index])
        return work.frame.index

    def check(work):
        assert work.data == work.frame.index
        return work.data

    frames = [Frame(i, i / 30, np.zeros((2, 2, 3), np.uint8)) for i in range(len(delays))]
    steps = [("a", [slow] * 4), ("b", [check] * 4), ("c", [slow] * 4)]
    results = list(stream_detections(None, frames, steps=steps))
    assert [r.detections for r in results] == list(range(len(delays)))


def test_a_failing_step_reaches_the_consumer_after_the_frames_before_it():
    def fail_at_five(work):
        if work.frame.index == 5:
            raise ValueError("frame five")
        return work.frame.index

    frames = [Frame(i, 0.0, np.zeros((2, 2, 3), np.uint8)) for i in range(20)]
    seen = []
    with pytest.raises(ValueError, match="frame five"):
        for result in stream_detections(None, frames, steps=[("x", [fail_at_five] * 3)]):
            seen.append(result.detections)
    assert seen == [0, 1, 2, 3, 4]


class FakeCapture:
    """A camera at ~500 frames/s: frame i is filled with i % 256 (read from the pixels later)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.reads = 0
        self.released = False

    def read(self):
        if self.reads >= self.total:
            return False, None
        time.sleep(0.002)
        self.reads += 1
        return True, np.full((*SIZE, 3), (self.reads - 1) % 256, np.uint8)

    def release(self):
        self.released = True


def test_camera_newest_frame_wins_and_drops_are_counted(artifacts):
    capture = FakeCapture(total=400)
    camera = LiveCamera(capture, "fake camera", max_frames=15)
    detector = Detector(artifacts, precision="int8", num_threads=1)
    indexes = []
    for result in detector.stream(camera):
        indexes.append(result.frame.index)
        assert int(result.frame.pixels[0, 0, 0]) == result.frame.index % 256
        assert result.detections == detector.detect(result.frame.pixels)
        time.sleep(0.03)  # a slow consumer: the camera runs ahead
    assert len(indexes) == 15
    assert indexes == sorted(set(indexes))
    assert camera.dropped > 0
    # Every frame read is delivered, dropped, or the one left in the slot at the end.
    assert capture.reads - len(indexes) - camera.dropped in (0, 1)
    assert capture.released


def test_truncated_video_ends_with_one_line_exit_2_and_earlier_frames_written(
    artifacts, video, tmp_path
):
    truncated = tmp_path / "truncated.avi"
    data = video.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    decodable = len(decoded_frames(truncated))
    assert 0 < decodable < FRAMES
    out, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    proc = run_stream(
        "--video", str(truncated), "--artifacts", str(artifacts),
        "--json", str(lines), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1]
    assert "truncated" in errors[0] and str(truncated) in errors[0]
    assert [json.loads(line)["frame"] for line in lines.read_text().splitlines()] == list(
        range(decodable)
    )
    assert len(decoded_frames(out)) == decodable


def test_ctrl_c_leaves_a_playable_video_and_a_line_per_finished_frame(artifacts, tmp_path):
    long_video = tmp_path / "long.avi"
    write_video(long_video, moving_frames(400, SIZE, seed=4))
    out, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "stream", "--video", str(long_video),
         "--artifacts", str(artifacts), "--json", str(lines), "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell's background job starts with SIGINT ignored; Ctrl-C is what is tested here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        lines.exists() and lines.read_text().count("\n") >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    count = lines.read_text().count("\n")
    assert 3 <= count < 400
    assert all(json.loads(line) for line in lines.read_text().splitlines())
    assert len(decoded_frames(out)) == count
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_a_file_that_is_no_video_is_one_line(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(VideoError, match="cannot open it as a video"):
        VideoFile(junk)
    with pytest.raises(VideoError, match="no such file"):
        VideoFile(tmp_path / "missing.mp4")


def test_missing_opencv_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(VideoError, match=r"pip install opencv-python-headless==\d"):
        opencv()


def test_stream_runs_with_every_thread_stopped_after_close(artifacts, video):
    before = threading.active_count()
    detector = Detector(artifacts, precision="int8", num_threads=1)
    results = detector.stream(VideoFile(video))
    next(results)
    results.close()
    time.sleep(0.2)
    assert threading.active_count() <= before
    assert os.path.exists(video)


def test_stream_json_lines_carry_the_datasets_own_category_ids(artifacts):
    """A detector trained on a dataset with ids 5/9 writes 5/9 in each frame line, as detect does."""
    import dataclasses

    from runtime.cli import coco_results
    from runtime.stream_cli import frame_record

    detector = Detector(artifacts, precision="int8")
    own_ids = tuple(range(5, 5 + 4 * detector.config.num_classes, 4))
    config = dataclasses.replace(detector.config, category_ids=own_ids)
    found, pixels = [], None
    for pixels in moving_frames(8, SIZE, seed=3):
        found = detector.detect(pixels)
        if found:
            break
    assert found  # the comparison is about something
    record = frame_record(Frame(index=0, timestamp_s=0.0, pixels=pixels), found, config)
    written = [row["category_id"] for row in record["detections"]]
    assert written == [own_ids[config.class_names.index(d.class_name)] for d in found]
    assert written == [r["category_id"] for r in coco_results(Path("f"), 1, found, config.coco_ids)]
