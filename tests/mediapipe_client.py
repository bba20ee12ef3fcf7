"""MediaPipe Tasks' ObjectDetector run on a single-file detector the way an app runs it.

Two things of MediaPipe's results a client must know (both are MediaPipe's design, the same on its
own reference SSD model, not a property of the file):

* ``DetectionsDeduplicateCalculator`` folds detections whose *integer* pixel boxes are identical
  into one ``Detection`` with several categories (two classes found at the same place), so a
  client that reads only ``categories[0]`` loses detections: read every category.
* With a label map in the metadata, ``DetectionLabelIdToTextCalculator`` replaces the class id by
  its label and ``Category.index`` is None: the class id is the label's line in labels.txt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Everything the file returns: it applies its own score threshold and max_detections already.
SCORE_THRESHOLD = 0.0
MAX_RESULTS = -1

#: One detection: (class id, score, (origin_x, origin_y, width, height) integer pixels).
Found = tuple[int, float, tuple[int, int, int, int]]


def open_detector(model: Path, **options):
    """A MediaPipe ObjectDetector (IMAGE mode) of ``model``; ``options`` override the defaults."""
    from mediapipe.tasks.python import BaseOptions, vision

    settings = {"score_threshold": SCORE_THRESHOLD, "max_results": MAX_RESULTS, **options}
    return vision.ObjectDetector.create_from_options(
        vision.ObjectDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model)), **settings
        )
    )


def mediapipe_detections(detector, pixels: np.ndarray, class_names: Sequence[str]) -> list[Found]:
    """HxWx3 uint8 RGB -> one :data:`Found` per category of every result, best score first."""
    import mediapipe as mp

    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels, np.uint8))
    found = []
    for detection in detector.detect(image).detections:
        box = detection.bounding_box
        xywh = (box.origin_x, box.origin_y, box.width, box.height)
        for category in detection.categories:
            found.append((list(class_names).index(category.category_name), category.score, xywh))
    return ordered(found)


def truncated_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(origin_x, origin_y, width, height) MediaPipe reports for ``box`` (y1, x1, y2, x2) pixels of
    a ``height`` x ``width`` image.

    MediaPipe (DetectionTransformationCalculator) truncates normalized xmin times the image side,
    and the normalized width times the side, each clamped to [0, side]; on pixel corners that is
    int(x1) and int(x2 - x1) in float32 (equal to MediaPipe's on all 3635 float32 detections of
    500 held-out images at the model size).
    """
    y1, x1, y2, x2 = np.asarray(box, np.float32)

    def clamp(value, side: int) -> int:
        return min(max(int(value), 0), int(side))

    return clamp(x1, width), clamp(y1, height), clamp(x2 - x1, width), clamp(y2 - y1, height)


def runtime_detections(detections, height: int, width: int) -> list[Found]:
    """:class:`runtime.processing.Detection` list -> :data:`Found`, boxes truncated like MediaPipe."""
    return ordered(
        [(d.class_id, float(d.score), truncated_box(d.box, height, width)) for d in detections]
    )


def ordered(found: list[Found]) -> list[Found]:
    """Best score first; ties by class and box (MediaPipe lists a folded category after its box)."""
    return sorted(found, key=lambda f: (-f[1], f[0], f[2]))


def coco_results(found: list[Found], image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """COCO results rows of one image's :data:`Found` (``category_ids[class id]``)."""
    return [
        {"image_id": image_id, "category_id": int(category_ids[c]), "bbox": list(map(float, b)),
         "score": float(s)}
        for c, s, b in found
    ]  # fmt: skip
