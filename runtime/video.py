"""Video and camera frames in, annotated video out (OpenCV / picamera2, both optional, lazy).

Sources yield :class:`Frame` (``pixels`` HxWx3 uint8 RGB). A file is read frame by frame, every
frame kept (:class:`VideoFile`); a live camera (OpenCV ``VideoCapture`` or picamera2) is read by
its own thread into a one-frame slot, and the consumer always gets the newest frame: frames
overwritten before anyone took them are counted in ``dropped`` (:class:`LiveCamera`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from runtime import limits
from runtime.errors import RoiedgeError
from runtime.safe_files import regular_file

#: opencv-python-headless wheels by numpy major version: 5.x needs numpy >= 2, 4.11 takes numpy 1.
OPENCV_PINS = {1: "opencv-python-headless==4.11.0.86", 2: "opencv-python-headless==5.1.0.95"}
PICAMERA_PIN = "picamera2"
#: Frames per second written when a source does not say (a camera, a file without the field).
DEFAULT_FPS = 30.0


class VideoError(RoiedgeError):
    """A video or camera cannot be opened or read, or an output video cannot be written."""


class Frame(NamedTuple):
    """One frame: ``index`` (0-based, in capture order), ``timestamp_s`` (the file's
    presentation time, or seconds since a camera started), ``pixels`` HxWx3 uint8 RGB."""

    index: int
    timestamp_s: float
    pixels: np.ndarray


def opencv() -> Any:
    """The ``cv2`` module, or a one-line VideoError saying what to install."""
    # ffmpeg's own log (e.g. "moov atom not found") would be a second line beside our error.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError:
        pin = OPENCV_PINS[2 if int(np.__version__.split(".")[0]) >= 2 else 1]
        raise VideoError(f"video needs OpenCV, which is not installed: pip install {pin}") from None
    return cv2


def _bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels[:, :, ::-1])


class VideoFile:
    """Every frame of a video file, in order; iterate once. ``fps``, ``size`` (H, W), ``claimed``.

    A file that cannot be opened raises VideoError at once. One that ends before the frame count
    its container claims (truncated or corrupt) raises VideoError after the frames it had, so a
    consumer keeps those.
    """

    def __init__(self, path: os.PathLike) -> None:
        cv2 = opencv()
        try:  # a FIFO or device would block OpenCV's open, a missing file is named as such
            self.path = regular_file(path, "--video")
        except RoiedgeError as error:
            raise VideoError(str(error)) from None
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise VideoError(
                f"--video {self.path}: OpenCV cannot open it as a video (corrupt, truncated or "
                "an unsupported format); expected a file ffmpeg decodes (mp4, avi, mkv, ...)"
            )
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else DEFAULT_FPS
        #: Frames the container says it has (0 when it does not say).
        self.claimed = max(int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        self.size = (
            int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        )
        self.dropped = 0  # a file drops nothing: every frame is processed
        try:  # from the container's header, before a frame is decoded
            limits.check("image_pixels", self.size[0] * self.size[1], f"--video {self.path} frames")
        except limits.LimitError as error:
            self.close()
            raise VideoError(str(error)) from None

    def __iter__(self) -> Iterator[Frame]:
        cv2 = opencv()
        index = 0
        try:
            while True:
                ok, pixels = self._capture.read()
                if not ok or pixels is None:
                    break
                milliseconds = float(self._capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
                timestamp = (
                    milliseconds / 1e3 if index == 0 or milliseconds > 0 else index / self.fps
                )
                yield Frame(index, timestamp, _bgr_to_rgb(pixels))
                index += 1
        finally:
            self.close()
        if index == 0:
            raise VideoError(f"--video {self.path}: no frame could be decoded; expected a video")
        if index < self.claimed:
            raise VideoError(
                f"--video {self.path}: decoding stopped at frame {index} of the {self.claimed} "
                "the file claims (truncated or corrupt); the frames before it were processed"
            )

    def close(self) -> None:
        """Release the decoder (idempotent)."""
        self._capture.release()


class LiveCamera:
    """The newest frame of a live capture, read by a background thread; iterate once.

    ``capture`` is anything with ``read() -> (ok, HxWx3 uint8 BGR)`` and ``release()`` (an OpenCV
    ``VideoCapture``, :class:`Picamera`, a test's fake). Iterating waits for a frame newer than the
    last one given and yields it; frames overwritten before that are counted in ``dropped``. Ends
    when the capture stops delivering or after ``max_frames`` yielded frames.
    """

    def __init__(
        self,
        capture: Any,
        name: str = "camera",
        max_frames: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        fps: float = DEFAULT_FPS,
    ) -> None:
        self.name = name
        self.fps = fps
        self.max_frames = max_frames
        self.dropped = 0
        self.captured = 0
        self.size: tuple[int, int] | None = None
        self._capture = capture
        self._clock = clock
        self._start = clock()
        self._slot: tuple[int, float, np.ndarray] | None = None
        self._changed = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read_loop, name=f"{name}-capture", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        try:
            while not self._ended:
                ok, pixels = self._capture.read()
                if not ok or pixels is None:
                    break
                with self._changed:
                    if self._slot is not None:
                        self.dropped += 1  # nobody took the previous frame: the newer one wins
                    self._slot = (self.captured, self._clock() - self._start, pixels)
                    self.captured += 1
                    self._changed.notify_all()
        except Exception as error:  # a camera driver's failure ends the stream with its message
            self._error = error
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        given = 0
        try:
            while self.max_frames is None or given < self.max_frames:
                with self._changed:
                    while self._slot is None and not self._ended:
                        self._changed.wait(0.1)
                    if self._slot is None:
                        break
                    index, timestamp, pixels = self._slot
                    self._slot = None
                frame = Frame(index, timestamp, _bgr_to_rgb(pixels))
                self.size = self.size or tuple(frame.pixels.shape[:2])
                given += 1
                yield frame
        finally:
            self.close()
        if self._error is not None:
            raise VideoError(f"{self.name}: reading failed ({self._error}); the stream ended")
        if given == 0:
            raise VideoError(f"{self.name}: delivered no frame; expected a working camera")

    def close(self) -> None:
        """Stop the capture thread and release the camera (idempotent)."""
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        self._capture.release()


def open_camera(index: int, max_frames: int | None = None) -> LiveCamera:
    """OpenCV camera ``index`` (/dev/video<index> on Linux) as a :class:`LiveCamera`."""
    cv2 = opencv()
    capture = cv2.VideoCapture(int(index))
    if not capture.isOpened():
        raise VideoError(f"--camera {index}: OpenCV cannot open camera {index}; expected a camera")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    return LiveCamera(capture, f"camera {index}", max_frames, fps=fps if fps > 0 else DEFAULT_FPS)


class Picamera:
    """A Raspberry Pi camera through picamera2 with the ``read()``/``release()`` of a capture."""

    def __init__(self, size: tuple[int, int] = (480, 640)) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise VideoError(
                f"--picamera needs picamera2, which is not installed: pip install {PICAMERA_PIN} "
                "(or apt install python3-picamera2 on Raspberry Pi OS)"
            ) from None
        try:
            self._camera = Picamera2()
            height, width = size
            # picamera2's "RGB888" is B, G, R in memory: the BGR order OpenCV captures give.
            config = {"size": (width, height), "format": "RGB888"}
            self._camera.configure(self._camera.create_video_configuration(main=config))
            self._camera.start()
        except Exception as error:  # libcamera raises many types; one line names the camera
            raise VideoError(f"--picamera: the camera cannot be started ({error})") from None

    def read(self) -> tuple[bool, np.ndarray]:
        """(True, the next frame HxWx3 uint8 BGR)."""
        return True, self._camera.capture_array("main")

    def release(self) -> None:
        """Stop and close the camera."""
        self._camera.stop()
        self._camera.close()


def open_picamera(max_frames: int | None = None) -> LiveCamera:
    """The Raspberry Pi camera (picamera2) as a :class:`LiveCamera`."""
    return LiveCamera(Picamera(), "picamera", max_frames)


class VideoWriter:
    """An mp4 (or avi) written frame by frame to a temporary file, renamed into place on close.

    ``close`` finalises the container, so after Ctrl-C or a read error the video is playable and
    holds every frame written; ``discard`` removes the temporary file instead.
    """

    def __init__(self, path: os.PathLike, fps: float, size: tuple[int, int]) -> None:
        cv2 = opencv()
        self.path = Path(path)
        if self.path.is_dir():
            raise VideoError(f"--out {self.path}: is a directory; expected a video file name")
        fourcc = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        # OpenCV chooses the container from the suffix: keep it on the temporary name.
        self._temporary = self.path.with_name(
            f".{self.path.stem}.partial-{os.getpid()}{self.path.suffix}"
        )
        height, width = size
        self._writer = cv2.VideoWriter(
            str(self._temporary), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height)
        )
        if not self._writer.isOpened():
            raise VideoError(
                f"--out {self.path}: OpenCV cannot write a {fourcc} video there; expected a "
                "writable .mp4 or .avi path"
            )
        self.size = (height, width)
        self.frames = 0

    def write(self, pixels: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame of the writer's size."""
        if tuple(pixels.shape[:2]) != self.size:
            raise VideoError(
                f"--out {self.path}: frame {self.frames} is {pixels.shape[1]}x{pixels.shape[0]}; "
                f"expected {self.size[1]}x{self.size[0]} like the first"
            )
        self._writer.write(_bgr_to_rgb(pixels))
        self.frames += 1

    def close(self) -> None:
        """Finalise the video and move it to ``path`` (idempotent).

        OpenCV's writer reports no write error: the finished file is read back, and one that
        does not hold every frame written (a full disk leaves 0 bytes) is removed and raised as
        a VideoError instead of being put at ``path`` as if complete.
        """
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        stored = _stored_frames(self._temporary)
        if stored < self.frames:
            self._temporary.unlink(missing_ok=True)
            raise VideoError(
                f"--out {self.path}: the video could not be written ({stored} of {self.frames} "
                "frames stored; is the disk full?); nothing was put at --out"
            )
        os.replace(self._temporary, self.path)

    def discard(self) -> None:
        """Drop the video written so far."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._temporary.unlink(missing_ok=True)


def _stored_frames(path: Path) -> int:
    """Frames the finished video file ``path`` holds by its container (0 if it cannot open)."""
    cv2 = opencv()
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else 0
    finally:
        capture.release()


def annotate(pixels: np.ndarray, detections: list, fps: float | None) -> np.ndarray:
    """``pixels`` HxWx3 uint8 with boxes, "name score" labels and an "N.N fps" corner label."""
    from PIL import ImageDraw

    from runtime.images import draw_detections

    canvas = draw_detections(pixels, detections)
    if fps is not None:
        draw = ImageDraw.Draw(canvas)
        label = f"{fps:.1f} fps"
        left, top, right, bottom = draw.textbbox((4, 4), label)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(0, 0, 0))
        draw.text((4, 4), label, fill=(255, 255, 255))
    return np.asarray(canvas, dtype=np.uint8)
