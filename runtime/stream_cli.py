"""``python -m runtime stream``: detect on a video file or a live camera; annotated video, JSON lines.

Exit 0 when the source ended, 2 for bad input (a video that cannot be opened, or one that ends
before its claimed frame count: the frames before it are written), 130 on Ctrl-C; in every case
the output video is finalised (playable) and the JSON lines file holds one line per finished frame.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from runtime import strict_json
from runtime.detector_flags import add_detector_arguments
from runtime.errors import RoiedgeError, one_line, say
from runtime.interrupts import EXIT_SIGINT, EXIT_SIGTERM, Terminated
from runtime.limits import flag_type
from runtime.manifest import MANIFEST_NAME
from runtime.safe_files import writable_output
from runtime.stream import STEPS


def frame_record(frame: Any, detections: list, config: Any) -> dict[str, Any]:
    """One JSON line: frame index, timestamp, COCO-style detections in the frame's pixels
    (``bbox`` [x, y, width, height], unrounded, so they compare exactly with ``detect``;
    ``category_id`` the training dataset's own id of the class, ``config.coco_ids``, as
    ``detect --json`` writes it)."""
    rows = []
    for d in detections:
        y1, x1, y2, x2 = (float(v) for v in d.box)
        rows.append(
            {
                "category_id": int(config.coco_ids[d.class_id]),
                "category_name": d.class_name,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(d.score),
            }
        )
    return {"frame": int(frame.index), "timestamp_s": float(frame.timestamp_s), "detections": rows}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``stream`` verb's flags."""
    add_detector_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", type=Path, help="a video file: every frame, in order")
    source.add_argument("--camera", type=int, help="OpenCV camera index: newest frame wins")
    source.add_argument("--picamera", action="store_true", help="Raspberry Pi camera (picamera2)")
    parser.add_argument(
        "--threads",
        type=flag_type(1, "flag_threads"),
        default=None,
        help="threads per interpreter (default: 1 pipelined, every core with --sequential)",
    )
    parser.add_argument("--out", type=Path, default=None, help="annotated video (.mp4 or .avi)")
    parser.add_argument("--json", type=Path, default=None, help="JSON lines, one per frame")
    parser.add_argument("--max-frames", type=flag_type(1), default=None, help="stop after N frames")
    parser.add_argument(
        "--sequential", action="store_true", help="detect frame after frame (no pipeline)"
    )
    parser.add_argument(
        "--head-copies",
        type=flag_type(1, "flag_copies"),
        default=None,
        help="head interpreters (default: one per core)",
    )


def open_source(args: argparse.Namespace) -> Any:
    """The frames the flags name: a VideoFile, or a LiveCamera of --camera / --picamera."""
    from runtime.video import VideoFile, open_camera, open_picamera

    if args.video is not None:
        return VideoFile(args.video)
    if args.camera is not None:
        return open_camera(args.camera, args.max_frames)
    return open_picamera(args.max_frames)


class StatusLine:
    """The live stderr line: fps, median ms per step over the last frames, dropped frames."""

    def __init__(self, stream: TextIO, window: int = 30, every_s: float = 1.0) -> None:
        self.stream = stream
        self.window = window
        self.every_s = every_s
        self.recent: list[tuple[float, dict[str, float]]] = []
        self.frames = 0
        self.started = time.perf_counter()
        self.shown = self.started
        self.tty = stream.isatty()

    def fps(self) -> float | None:
        """Frames per second over the recent window (None before two frames)."""
        if len(self.recent) < 2:
            return None
        span = self.recent[-1][0] - self.recent[0][0]
        return (len(self.recent) - 1) / span if span > 0 else None

    def add(self, timings: dict[str, float], dropped: int) -> None:
        """Record a finished frame; redraw at most every ``every_s`` seconds."""
        now = time.perf_counter()
        self.frames += 1
        self.recent = [*self.recent[-(self.window - 1) :], (now, timings)]
        if now - self.shown >= self.every_s:
            self.shown = now
            self.show(dropped)

    def text(self, dropped: int) -> str:
        """The line's text."""
        fps = self.fps()
        steps = " ".join(
            f"{name} {np.median([t.get(name, 0.0) for _, t in self.recent]) * 1e3:.1f}"
            for name in (*STEPS, "write")
            if self.recent and any(name in t for _, t in self.recent)
        )
        rate = f"{fps:.1f} fps" if fps is not None else "- fps"
        return f"stream: {self.frames} frames, {rate}, ms: {steps}, dropped {dropped}"

    def show(self, dropped: int, final: bool = False) -> None:
        """Write the line (in place on a terminal)."""
        line = self.text(dropped)
        if self.tty and not final:
            self.stream.write(f"\r\033[K{line}")
        else:
            self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write of the JSON lines file (disk full, file system gone) as one line."""
    try:
        yield
    except OSError as error:
        raise RoiedgeError(
            f"--json {path}: cannot write it ({error.strerror or type(error).__name__}); the "
            "lines of the frames before were written"
        ) from None


def _open_lines(path: Path) -> TextIO:
    try:
        return path.open("w", encoding="utf-8")
    except OSError as error:
        raise RoiedgeError(
            f"--json {path}: cannot write it ({error.strerror or type(error).__name__})"
        ) from None


def main(args: argparse.Namespace) -> int:
    """Run the ``stream`` verb; see the module docstring for the exit codes."""
    from runtime.detector import Detector, DetectorOptions
    from runtime.stream import StreamOptions, available_cores, sequential_detections
    from runtime.video import VideoWriter, annotate

    # Outputs are checked before any work (a stream never ends in "cannot write" at frame 1).
    for flag, path in (("--out", args.out), ("--json", args.json)):
        if path is not None:
            writable_output(path, flag, inputs=[args.video, args.artifacts / MANIFEST_NAME])
    threads = args.threads or (None if args.sequential else 1)
    options = DetectorOptions(
        precision=args.precision,
        head_precision=args.head_precision,
        format=args.format,
        backend=args.backend,
        num_threads=threads or available_cores(),
        score_threshold=args.score_threshold,
    )
    detector = Detector(args.artifacts, options)
    source = open_source(args)
    say(f"# {detector.describe()}; {'sequential' if args.sequential else 'pipelined'}")
    if args.sequential:
        results = sequential_detections(detector, source)
    else:
        results = detector.stream(source, **vars(StreamOptions(head_copies=args.head_copies)))
    writer: VideoWriter | None = None
    lines = _open_lines(args.json) if args.json is not None else None
    status = StatusLine(sys.stderr)
    code, failure = 0, None
    try:
        for result in results:
            start = time.perf_counter()
            if args.out is not None:
                if writer is None:
                    writer = VideoWriter(args.out, source.fps, result.frame.pixels.shape[:2])
                writer.write(annotate(result.frame.pixels, result.detections, status.fps()))
            if lines is not None:
                record = frame_record(result.frame, result.detections, detector.config)
                with _writing(args.json):
                    lines.write(strict_json.dumps(record) + "\n")
                    lines.flush()  # a line per finished frame, whatever stops the stream
            status.add({**result.timings, "write": time.perf_counter() - start}, source.dropped)
            if args.max_frames is not None and status.frames >= args.max_frames:
                break
    except KeyboardInterrupt:
        code = EXIT_SIGINT
    except Terminated:
        code = EXIT_SIGTERM
    except RoiedgeError as error:
        failure = f"error: {one_line(error)}"
        code = 2
    finally:
        results.close()
        if writer is not None:
            try:
                writer.close()
            except RoiedgeError as error:
                failure, code = failure or f"error: {one_line(error)}", 2
        if lines is not None:
            try:
                with _writing(args.json):
                    lines.close()
            except RoiedgeError as error:
                failure, code = failure or f"error: {one_line(error)}", 2
    status.show(source.dropped, final=True)
    written = [str(p) for p in (args.out, args.json) if p is not None and failure is None]
    if code in (EXIT_SIGINT, EXIT_SIGTERM):
        signal_name = "Ctrl-C" if code == EXIT_SIGINT else "SIGTERM"
        say(f"interrupted ({signal_name}) after {status.frames} frames", file=sys.stderr)
    if written:
        say(f"wrote {status.frames} frames to {', '.join(written)}")
    if failure is not None:  # last, so the stream's error is the one line it ends with
        say(failure, file=sys.stderr)
    return code
