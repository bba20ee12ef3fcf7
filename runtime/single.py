"""The single-file detector (``detector.<precision>.tflite``): one interpreter, no numpy glue.

The file holds backbone, RPN post-processing, head and detection post-processing (see
``export/single_file.py``); it takes ``image`` [1,H,W,3] uint8 and returns ``location`` [1,D,4]
normalized (y1, x1, y2, x2), ``category`` [1,D], ``score`` [1,D] and ``number_of_detections``
[1], float32 -- the layout MediaPipe's ObjectDetector reads. This module runs it with the same
interface as :class:`runtime.detector.Detector`, and judges it against float Keras detections.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import processing
from runtime.backends import load_stage
from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError
from runtime.golden import GoldenVerdict, error_metrics, judge_metrics
from runtime.images import open_image, resize
from runtime.manifest import read_manifest
from runtime.tolerances import tolerance_for

#: The manifest model name of single-file detectors.
SINGLE_MODEL = "detector"
#: Output names in the file's (and the manifest's) order.
OUTPUTS = ("location", "category", "score", "number_of_detections")
#: Golden check: float Keras detections at least this confident must be found again...
MATCH_MIN_SCORE = 0.5
#: ...with the same class and at least this IoU.
MATCH_MIN_IOU = 0.5


def outputs_to_detections(outputs: list[np.ndarray], image_size: tuple[int, int]):
    """The four outputs -> :class:`runtime.processing.Detections` in model pixels."""
    location, category, score, count = (np.asarray(o) for o in outputs)
    n = int(np.asarray(count).reshape(-1)[0])
    if not 0 <= n <= location.reshape(-1, 4).shape[0]:
        raise RoiedgeError(
            f"single-file detector says {n} detections; expected 0..{location.shape[-2]}"
        )
    height, width = image_size
    scale = np.asarray([height, width, height, width], np.float32)
    return processing.Detections(
        (location.reshape(-1, 4)[:n] * scale).astype(np.float32),
        score.reshape(-1)[:n].astype(np.float32),
        np.rint(category.reshape(-1)[:n]).astype(np.int32),
    )


class SingleDetector:
    """``detector.<precision>.tflite`` of an artifacts directory; ``detect(image)`` -> list.

    Same interface as :class:`runtime.detector.Detector` (``detect``, ``detect_tensor``,
    ``timings``, ``config``, ``describe``). One interpreter, run under a lock.
    """

    def __init__(
        self,
        artifacts_dir: os.PathLike,
        precision: str = "int8",
        backend: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.directory = Path(artifacts_dir)
        self.manifest = read_manifest(self.directory)
        self.config = DetectorConfig.from_dict(
            self.manifest.detector, source=f"{self.directory / 'manifest.json'} detector"
        )
        entry = self.manifest.find(SINGLE_MODEL, "tflite", precision)
        self.stage = load_stage(self.directory, entry, backend, num_threads=num_threads)
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per step of this thread's last ``detect``/``detect_tensor`` call."""
        return getattr(self._local, "timings", {})

    def describe(self) -> str:
        """One line naming the artifact and backend."""
        backend = self.stage.backend
        delegate = f"+{backend.delegate}" if backend.delegate else ""
        return f"single={self.stage.entry.name} ({backend.name}{delegate})"

    def detect_pixels(self, pixels: np.ndarray) -> processing.Detections:
        """HxWx3 uint8 RGB at the model size -> Detections in model pixels."""
        timings = self._local.__dict__.setdefault("timings", {})
        tensor = processing.preprocess(pixels, self.config).astype(np.uint8)
        start = time.perf_counter()
        with self._lock:
            outputs = self.stage.run(tensor)
        timings["model"] = time.perf_counter() - start
        return outputs_to_detections(outputs, self.config.image_size)

    def detect_tensor(self, tensor: np.ndarray) -> processing.Detections:
        """The ``image`` tensor [1,H,W,3] float32 in [0,255] (whole values) -> Detections."""
        return self.detect_pixels(np.clip(np.rint(tensor[0]), 0, 255).astype(np.uint8))

    def detect(self, image: Any) -> list[processing.Detection]:
        """A path, PIL image or HxWx3 uint8 array -> detections, boxes in that image's pixels."""
        timings: dict[str, float] = {}
        self._local.timings = timings
        start = time.perf_counter()
        pixels, (height, width) = open_image(image, reduce_to=self.config.image_size)
        model_h, model_w = self.config.image_size
        pixels = resize(pixels, (model_h, model_w))
        timings["preprocess"] = time.perf_counter() - start
        found = self.detect_pixels(pixels)
        sy, sx = height / model_h, width / model_w
        boxes = found.boxes * np.asarray([sy, sx, sy, sx], dtype=np.float32)
        detections = processing.Detections(boxes, found.scores, found.class_ids).to_list(
            self.config.class_names
        )
        timings["total"] = time.perf_counter() - start
        return detections


def match_detections(
    found: processing.Detections,
    reference: processing.Detections,
    min_score: float = MATCH_MIN_SCORE,
    min_iou: float = MATCH_MIN_IOU,
) -> tuple[list[tuple[int, int]], int]:
    """(pairs (reference row, found row), total): the ``reference`` detections scoring >=
    ``min_score`` that have a ``found`` detection of the same class with IoU >= ``min_iou``
    (each found row used once, greedy by reference score), and how many there were."""
    wanted = np.nonzero(np.asarray(reference.scores) >= min_score)[0]
    boxes = np.asarray(found.boxes, np.float32).reshape(-1, 4)
    if not len(wanted) or not len(boxes):
        return [], len(wanted)
    ious = processing.box_iou(np.asarray(reference.boxes, np.float32)[wanted], boxes)
    same = np.asarray(reference.class_ids)[wanted][:, None] == np.asarray(found.class_ids)[None]
    ious = np.where(same, ious, -1.0)
    used = np.zeros(len(boxes), bool)
    pairs = []
    for row, ref_row in zip(ious, wanted):
        row = np.where(used, -1.0, row)
        best = int(np.argmax(row))
        if row[best] >= min_iou:
            used[best] = True
            pairs.append((int(ref_row), best))
    return pairs, len(wanted)


def judge_single(
    precision: str,
    found: list[processing.Detections],
    reference: list[processing.Detections],
    image_size: tuple[int, int],
) -> GoldenVerdict:
    """Single-file detections against float Keras detections (one list item per image).

    The decision measure is the share of reference detections (score >= MATCH_MIN_SCORE) found
    with the same class at IoU >= MATCH_MIN_IOU (held to the precision's top-1 agreement floor);
    the matched boxes, normalized, are judged like any output (``location``).
    """
    scale = np.asarray([*image_size, *image_size], np.float32)
    got, want, matched, total = [], [], 0, 0
    for f, r in zip(found, reference):
        pairs, count = match_detections(f, r)
        matched, total = matched + len(pairs), total + count
        got += [np.asarray(f.boxes)[j] / scale for _, j in pairs]
        want += [np.asarray(r.boxes)[i] / scale for i, _ in pairs]
    agreement = matched / total if total else 1.0
    metrics = {}
    if got:
        metrics["location"] = error_metrics(np.stack(got), np.stack(want))
    verdict = judge_metrics(precision, metrics, None)
    floor = tolerance_for(precision).min_top1_agreement
    failures = ()
    if floor is not None and agreement < floor:
        failures = (
            f"detections matched (class, IoU >= {MATCH_MIN_IOU}) {agreement:.3f} < {floor:.3f}",
        )
    return dataclasses.replace(verdict, top1_agreement=agreement, top1_failures=failures)
