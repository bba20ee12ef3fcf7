"""End to end on the shipped detector: the runtime's pipelines vs the float Keras reference path.

Uses a session fixture ``exported_artifacts`` (a directory made by ``make export``'s code) when
tests/conftest.py provides one; otherwise exports the TFLite float32/int8/int8_io subset here.
Both sides share ``runtime.processing``, so differences are the artifacts' numerics alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.detector import Detector
from runtime.processing import box_iou

NUM_IMAGES = 4
SCORE = 0.5  # detections the comparison is about (the config keeps down to 0.05)
MARGIN = 0.2  # a confident detection on one side must appear above SCORE - MARGIN on the other
IOU_FLOOR = 0.7


@pytest.fixture(scope="module")
def artifacts(request, tmp_path_factory) -> Path:
    """An artifacts directory of the shipped detector with at least TFLite float32/int8/int8_io."""
    try:
        shared = request.getfixturevalue("exported_artifacts")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        return Path(shared[0] if isinstance(shared, tuple) else shared)
    from export.config import ExportConfig
    from export.pipeline import run_export

    out = tmp_path_factory.mktemp("runtime_e2e") / "artifacts"
    config = ExportConfig(
        out=out,
        calibration_images=40,
        golden_samples=2,
        formats=("tflite",),
        precisions=("float32", "int8", "int8_io"),
        progress=False,
    )
    run_export(config)
    return out


@pytest.fixture(scope="module")
def reference():
    """(images [N,H,W,3] uint8, float Keras detections per image) on held-out procedural scenes."""
    from models.data import eval_split
    from models.detector import FloatDetector, load_detector

    images = eval_split(NUM_IMAGES).images
    keras_detector = FloatDetector(load_detector())
    return images, [keras_detector(image) for image in images]


def _matched(confident, others, floor):
    """Each confident detection has a same-class detection in ``others`` (score >= floor, IoU)."""
    misses = []
    for det in confident:
        same = [d for d in others if d.class_id == det.class_id and d.score >= floor]
        best = box_iou(np.array([det.box]), np.array([d.box for d in same]))[0].max() if same else 0
        if best < IOU_FLOOR:
            misses.append((det, float(best)))
    return misses


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "int8"},
        {"precision": "int8_io"},  # Edge TPU-ready backbone (int8 I/O) + int8 head
        {"precision": "int8", "head_precision": "float32"},
    ],
    ids=["int8", "int8_io+int8", "int8+float32-head"],
)
def test_quantized_pipeline_finds_the_same_objects_as_float_keras(artifacts, reference, options):
    images, expected = reference
    detector = Detector(artifacts, **options)
    total = 0
    for image, keras_found in zip(images, expected):
        ours = detector.detect(image)
        theirs = keras_found.to_list(detector.config.class_names)
        confident_ref = [d for d in theirs if d.score >= SCORE]
        confident_ours = [d for d in ours if d.score >= SCORE]
        total += len(confident_ref)
        assert not _matched(confident_ref, ours, SCORE - MARGIN), "int8 missed an object"
        assert not _matched(confident_ours, theirs, SCORE - MARGIN), "int8 invented an object"
    assert total >= NUM_IMAGES  # the shipped detector does find objects in these scenes


def test_float32_pipeline_reproduces_float_keras_detections(artifacts, reference):
    images, expected = reference
    detector = Detector(artifacts, precision="float32")
    for image, keras_found in zip(images, expected):
        ours = detector.detect(image)
        for ref in keras_found.to_list(detector.config.class_names):
            if ref.score < 0.1:
                continue
            same = [d for d in ours if d.class_id == ref.class_id]
            assert same, ref
            ious = box_iou(np.array([ref.box]), np.array([d.box for d in same]))[0]
            match = same[int(ious.argmax())]
            assert ious.max() > 0.995, (ref, match)
            assert abs(match.score - ref.score) < 1e-3, (ref, match)
