"""``check``'s detector row: the manifest's detector config validated and a detection run end to end.

The sha256 of the detector config detects corruption, not a deliberate edit (whoever edits the
config can recompute its hash), so ``check`` also parses the config with every field bounded
(:mod:`runtime.config`, LIMITS ``config_*``), loads the two stages as ``detect`` does (which
checks the config's shapes against the artifacts' tensors) and runs the pipeline on each golden
image. The row fails on any error, on detections that break the config's own contract (boxes
outside the image or not finite, scores outside [score_threshold, 1], unknown classes, more
than max_detections), or when no golden image yields a detection at all.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from runtime.backends import missing_interpreter
from runtime.check import ArtifactResult, load_golden
from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError, one_line
from runtime.limits import LimitError
from runtime.manifest import ArtifactEntry, Manifest

PIPELINE_MODEL = "pipeline"
#: The stage precisions the row runs, in order of preference (the first both stages have).
PREFERRED = ("float32", "float16", "int8", "dynamic_int8", "mixed")


def _choice(manifest: Manifest, formats: tuple[str, ...], backends: dict[str, str]):
    """(format, precision) of the first detector pipeline runnable here, or None."""
    have = {(e.model, e.format, e.precision) for e in manifest.artifacts}
    for fmt in formats:
        if missing_interpreter(fmt, backends.get(fmt)) is not None:
            continue
        for precision in PREFERRED:
            if {("backbone_rpn", fmt, precision), ("head", fmt, precision)} <= have:
                return fmt, precision
    return None


def _row(fmt: str, precision: str, backend: str, failures: tuple[str, ...], detail: str):
    entry = ArtifactEntry(
        name=f"{PIPELINE_MODEL}/{fmt}/{precision}",
        model=PIPELINE_MODEL,
        format=fmt,
        precision=precision,
        path="",
        sha256="0" * 64,
        bytes=0,
        inputs=(),
        outputs=(),
    )
    return ArtifactResult(entry, backend, (), None, failures, detail=detail)


def contract_breaks(found, config: DetectorConfig) -> list[str]:
    """How one image's Detections (model pixels) break ``config``'s contract (empty if none)."""
    boxes, scores, classes = (np.asarray(v) for v in (found.boxes, found.scores, found.class_ids))
    height, width = config.image_size
    breaks = []
    if len(scores) > config.max_detections:
        breaks.append(f"{len(scores)} detections > max_detections {config.max_detections}")
    if boxes.size and not np.isfinite(boxes).all():
        breaks.append("a box is not finite")
    elif boxes.size:
        y1, x1, y2, x2 = boxes.T
        slack = 1e-3 * max(height, width)
        if (y1 < -slack).any() or (x1 < -slack).any() or (y2 > height + slack).any():
            breaks.append("a box lies outside the image")
        elif (x2 > width + slack).any() or (y2 < y1).any() or (x2 < x1).any():
            breaks.append("a box lies outside the image or is inverted")
    if scores.size and not (
        np.isfinite(scores).all()
        and scores.min() >= config.score_threshold - 1e-6
        and scores.max() <= 1 + 1e-6
    ):
        breaks.append(f"a score is outside [{config.score_threshold}, 1]")
    if classes.size and (classes.min() < 0 or classes.max() >= config.num_classes):
        breaks.append(f"a class id is outside 0..{config.num_classes - 1}")
    return breaks


def check_pipeline(
    directory: os.PathLike,
    manifest: Manifest,
    formats: tuple[str, ...] = ("tflite", "onnx"),
    backends: dict[str, str] | None = None,
    num_threads: int | None = None,
) -> ArtifactResult | None:
    """The detector row of ``check`` (None for a manifest that is no two-stage detector).

    Runs the first pipeline of :data:`PREFERRED` both stages have in one of ``formats`` whose
    interpreter is installed; skipped (with the reason) when none is.
    """
    from runtime.detector import Detector, DetectorOptions

    models = {e.model for e in manifest.artifacts}
    if not {"backbone_rpn", "head"} <= models:
        return None
    source = f"{Path(directory) / 'manifest.json'} detector"
    backends = backends or {}
    choice = _choice(manifest, formats, backends)
    if choice is None:
        row = _row(formats[0], "-", "-", (), "")
        return dataclasses.replace(row, skipped="no interpreter for a detector pipeline here")
    fmt, precision = choice
    try:
        config = DetectorConfig.from_dict(manifest.detector, source=source)
    except (RoiedgeError, LimitError) as error:
        return _row(fmt, precision, "-", (f"detector config: {one_line(error)}",), "")
    options = DetectorOptions(
        precision=precision, format=fmt, backend=backends.get(fmt), num_threads=num_threads
    )
    try:
        detector = Detector(directory, options)
        golden = load_golden(directory, manifest, "backbone_rpn")["input_0"]
        images = golden if golden.ndim == 5 else golden[None]
        counts, breaks = [], []
        for n, image in enumerate(images):
            found = detector.detect_tensor(np.asarray(image, dtype=np.float32))
            counts.append(len(found.scores))
            breaks += [f"golden image {n}: {b}" for b in contract_breaks(found, config)]
    except (RoiedgeError, LimitError) as error:
        return _row(fmt, precision, "-", (f"cannot detect: {one_line(error)}",), "")
    backend = detector.backbone.backend.name
    detail = f"{sum(counts)} detections on {len(counts)} golden images"
    if not breaks and not sum(counts):
        breaks.append(
            f"no detections on any of {len(counts)} golden images (score_threshold "
            f"{config.score_threshold}); the config or the artifacts were changed"
        )
    return _row(fmt, precision, backend, tuple(breaks), detail)
