"""Pipelined detection over a stream of frames: each step its own thread, bounded queues between.

Steps (``STEPS``): preprocess -> backbone_rpn -> proposals -> head -> detections, fed by a
capture thread that pulls the frames. The interpreters and most numpy/Pillow work release the
GIL, so on a 2-core device the backbone of frame n+1 runs while the head of frame n does. Each
step runs the same functions :meth:`runtime.detector.Detector.detect` runs, so a frame's
detections are the same as ``detect`` on that frame. Results come out in frame order (a step
with several workers puts its results in order too). ``Ctrl-C`` in the consumer stops every
thread (the generator's ``close``); an exception in any step reaches the consumer after the
results of the frames before it.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from runtime import processing
from runtime.video import Frame

#: The pipeline's steps, in order ("capture" is the thread pulling frames from the source).
STEPS = ("capture", "preprocess", "backbone_rpn", "proposals", "head", "detections")
#: Seconds a blocked thread waits before looking at the stop flag again.
_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How :func:`stream_detections` runs.

    ``queue_size``: items between two steps. ``workers``: threads per numpy step (preprocess,
    proposals, detections). ``backbone_copies``/``head_copies``: interpreters of that artifact, each
    driven by its own thread (an interpreter runs one call at a time; the head dominates a frame,
    so by default there are as many heads as cores). None = chosen from the cores available.
    """

    queue_size: int = 2
    workers: int = 1
    backbone_copies: int | None = None
    head_copies: int | None = None
    schema_version: int = 1

    def copies(self, model: str, cores: int | None = None) -> int:
        """Interpreters of ``model`` ("backbone_rpn" or "head") the pipeline runs."""
        chosen = self.backbone_copies if model == "backbone_rpn" else self.head_copies
        if chosen is not None:
            return max(1, int(chosen))
        return (
            1 if model == "backbone_rpn" else min(available_cores() if cores is None else cores, 4)
        )


class StreamResult(NamedTuple):
    """One frame's detections: ``frame`` (its :class:`runtime.video.Frame`), ``detections`` (list
    of :class:`runtime.processing.Detection`, boxes in the frame's pixels), ``timings`` seconds per
    step of STEPS, ``latency_s`` from the frame's capture to its result."""

    frame: Frame
    detections: list
    timings: dict[str, float]
    latency_s: float


class _Work:
    """A frame travelling through the steps, with what the last step made of it."""

    __slots__ = ("captured_at", "data", "frame", "position", "timings")

    def __init__(self, frame: Frame, position: int, captured_at: float) -> None:
        self.frame = frame
        self.position = position
        self.captured_at = captured_at
        self.data: Any = None
        self.timings: dict[str, float] = {}


class _Failure:
    """An exception raised at stream position ``position``, passed on in place of that frame."""

    def __init__(self, error: BaseException, position: int) -> None:
        self.error = error
        self.position = position


_END = object()


def as_frame(item: Any, index: int) -> Frame:
    """A :class:`Frame` as is, or an HxWx3 uint8 RGB array as frame ``index`` (timestamp 0)."""
    return item if isinstance(item, Frame) else Frame(index, 0.0, np.asarray(item))


#: (name, one function per worker thread); a function maps a work item to its new data.
Step = tuple[str, list[Callable[["_Work"], Any]]]


def interpreter_copies(detector: Any, model: str, count: int) -> list[Any]:
    """``count`` loaded Stages of ``model``: the detector's own, then fresh loads of its artifact."""
    from runtime.backends import load_stage

    own = detector.backbone if model == "backbone_rpn" else detector.head
    edgetpu = detector.options.edgetpu if model == "backbone_rpn" else "off"
    extra = [
        load_stage(
            detector.directory,
            own.entry,
            own.backend.name,
            num_threads=detector.options.num_threads,
            edgetpu="require" if own.backend.delegate else edgetpu,
        )
        for _ in range(count - 1)
    ]
    return [own, *extra]


def detector_steps(detector: Any, options: StreamOptions | None = None) -> list[Step]:
    """The pieces of ``Detector.detect`` as pipeline steps, one function per worker thread."""
    options = options or StreamOptions()
    config = detector.config
    anchors = detector.anchor_table

    def preprocess(work: _Work) -> Any:
        return detector.prepare(work.frame.pixels)

    def backbone(stage: Any) -> Callable[[_Work], Any]:
        def run(work: _Work) -> Any:
            tensor, scale = work.data
            return stage.run(tensor), scale

        return run

    def proposals(work: _Work) -> Any:
        (features, rpn_scores, rpn_deltas), scale = work.data
        found = processing.proposals_from_rpn(rpn_scores, rpn_deltas, config, anchors=anchors)
        return features, found, scale

    def head(stage: Any) -> Callable[[_Work], Any]:
        def run(work: _Work) -> Any:
            features, found, scale = work.data
            return stage.run(features, found.proposals, found.box_indexes), found, scale

        return run

    def detections(work: _Work) -> Any:
        (class_scores, box_deltas), found, scale = work.data
        model = processing.detections_from_head(
            class_scores, box_deltas, found.proposals, found.num_valid, config
        )
        return detector.to_image_detections(model, scale)

    backbones = interpreter_copies(detector, "backbone_rpn", options.copies("backbone_rpn"))
    heads = interpreter_copies(detector, "head", options.copies("head"))
    numpy_workers = max(1, int(options.workers))
    return [
        ("preprocess", [preprocess] * numpy_workers),
        ("backbone_rpn", [backbone(stage) for stage in backbones]),
        ("proposals", [proposals] * numpy_workers),
        ("head", [head(stage) for stage in heads]),
        ("detections", [detections] * numpy_workers),
    ]


def _put(target: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            target.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(source: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return source.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return _END


def _capture(frames: Iterable[Any], out: queue.Queue, stop: threading.Event, ends: int) -> None:
    """Pull frames into ``out`` until the source ends (or fails), then ``ends`` end markers."""
    position = 0
    try:
        iterator = iter(frames)
        while not stop.is_set():
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                break
            work = _Work(as_frame(item, position), position, time.perf_counter())
            work.timings["capture"] = work.captured_at - start
            position += 1
            if not _put(out, work, stop):
                return
    except BaseException as error:  # the source's error goes downstream, after its frames
        _put(out, _Failure(error, position), stop)
    for _ in range(ends):
        _put(out, _END, stop)


class _StepGroup:
    """The workers of one step: they put results downstream in stream order, and the last one
    to finish sends the next step's end markers."""

    def __init__(self, workers: int, ends: int) -> None:
        self.next_position = 0
        self.turn = threading.Condition()
        self.running = workers
        self.ends = ends


def _step(
    name: str,
    function: Callable[[_Work], Any],
    inbox: queue.Queue,
    out: queue.Queue,
    stop: threading.Event,
    group: _StepGroup,
) -> None:
    try:
        while True:
            item = _get(inbox, stop)
            if item is _END:
                return
            if isinstance(item, _Work):
                start = time.perf_counter()
                try:
                    item.data = function(item)
                except BaseException as error:
                    item = _Failure(error, item.position)
                else:
                    item.timings[name] = time.perf_counter() - start
            with group.turn:
                while group.next_position != item.position and not stop.is_set():
                    group.turn.wait(_POLL_S)
                ok = _put(out, item, stop)
                group.next_position += 1
                group.turn.notify_all()
            if not ok or isinstance(item, _Failure):
                return
    finally:
        with group.turn:
            group.running -= 1
            last = group.running == 0
        if last:
            for _ in range(group.ends):
                _put(out, _END, stop)


def stream_detections(
    detector: Any,
    frames: Iterable[Any],
    options: StreamOptions | None = None,
    steps: list[Step] | None = None,
) -> Iterator[StreamResult]:
    """Detections of every frame ``frames`` yields, in order, each step in its own thread(s).

    ``frames``: :class:`runtime.video.Frame` items (a :class:`runtime.video.VideoFile` or
    :class:`runtime.video.LiveCamera`) or HxWx3 uint8 RGB arrays. ``steps`` replaces
    :func:`detector_steps` (tests). Closing the generator (or Ctrl-C while it waits) stops the
    threads; an exception raised by the source or a step is raised here after the results of
    every frame before it.
    """
    options = options or StreamOptions()
    steps = steps if steps is not None else detector_steps(detector, options)
    stop = threading.Event()
    queues: list[queue.Queue] = [
        queue.Queue(maxsize=options.queue_size) for _ in range(len(steps) + 1)
    ]
    workers = [len(functions) for _, functions in steps]
    threads = [
        threading.Thread(
            target=_capture,
            args=(frames, queues[0], stop, workers[0] if steps else 1),
            name="stream-capture",
            daemon=True,
        )
    ]
    for i, (name, functions) in enumerate(steps):
        group = _StepGroup(workers[i], workers[i + 1] if i + 1 < len(steps) else 1)
        threads += [
            threading.Thread(
                target=_step,
                args=(name, function, queues[i], queues[i + 1], stop, group),
                name=f"stream-{name}-{w}",
                daemon=True,
            )
            for w, function in enumerate(functions)
        ]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = _get(queues[-1], stop)
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            now = time.perf_counter()
            yield StreamResult(item.frame, item.data, item.timings, now - item.captured_at)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5.0)
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def sequential_detections(detector: Any, frames: Iterable[Any]) -> Iterator[StreamResult]:
    """The sequential loop: ``detector.detect`` on each frame in turn, in the calling thread."""
    iterator = iter(frames)
    index = 0
    try:
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            frame = as_frame(item, index)
            captured_at = time.perf_counter()
            detections = detector.detect(frame.pixels)
            timings = {"capture": captured_at - start, **detector.timings}
            index += 1
            yield StreamResult(frame, detections, timings, time.perf_counter() - captured_at)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def available_cores() -> int:
    """Cores this process may run on (taskset / cgroup affinity), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pipelined_threads(cores: int | None = None) -> int:
    """Threads per interpreter for the pipeline: the two interpreter steps share the cores."""
    return max(1, (cores or available_cores()) // 2)
