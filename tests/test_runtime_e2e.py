"""End to end on the shipped detector: the runtime's pipelines vs the float Keras reference path.

Uses the session export ``exported_artifacts`` of tests/conftest.py (every artifact).
Both sides share ``runtime.processing``, so differences are the artifacts' numerics alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.detector import Detector
from runtime.manifest import read_manifest
from runtime.processing import box_iou

NUM_IMAGES = 4
SCORE = 0.5  # detections the comparison is about (the config keeps down to 0.05)
MARGIN = 0.2  # a confident detection on one side must appear above SCORE - MARGIN on the other
IOU_FLOOR = 0.5  # "same object", as in mAP@0.5
MEDIAN_IOU_FLOOR = 0.85  # and no systematic box drift


@pytest.fixture(scope="module")
def artifacts(exported_artifacts) -> Path:
    """The session export of the shipped detector (tests/conftest.py): every artifact."""
    return Path(exported_artifacts[0])


@pytest.fixture(scope="module")
def reference():
    """(images [N,H,W,3] uint8, float Keras detections per image) on held-out procedural scenes."""
    from models.data import eval_split
    from models.detector import FloatDetector, load_detector

    images = eval_split(NUM_IMAGES).images
    keras_detector = FloatDetector(load_detector())
    return images, [keras_detector(image) for image in images]


def _best_ious(confident, others, floor):
    """For each confident detection, the best IoU with a same-class detection in ``others`` with
    score >= ``floor`` (0 when there is none)."""
    best = []
    for det in confident:
        same = [d for d in others if d.class_id == det.class_id and d.score >= floor]
        ious = box_iou(np.array([det.box]), np.array([d.box for d in same]))[0] if same else [0.0]
        best.append(float(np.max(ious)))
    return best


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "int8"},
        {"precision": "int8_io"},  # Edge TPU-ready backbone (int8 I/O) + int8 head
        {"precision": "int8", "head_precision": "float32"},
        {"precision": "int8", "format": "onnx"},
    ],
    ids=["int8", "int8_io+int8", "int8+float32-head", "onnx-int8"],
)
def test_quantized_pipeline_finds_the_same_objects_as_float_keras(artifacts, reference, options):
    images, expected = reference
    detector = Detector(artifacts, **options)
    found, invented = [], []
    for image, keras_found in zip(images, expected):
        ours = detector.detect(image)
        theirs = keras_found.to_list(detector.config.class_names)
        found += _best_ious([d for d in theirs if d.score >= SCORE], ours, SCORE - MARGIN)
        invented += _best_ious([d for d in ours if d.score >= SCORE], theirs, SCORE - MARGIN)
    assert len(found) >= NUM_IMAGES  # the shipped detector does find objects in these scenes
    assert min(found) >= IOU_FLOOR, f"missed an object: best IoUs {found}"
    assert min(invented) >= IOU_FLOOR, f"invented an object: best IoUs {invented}"
    assert np.median(found) >= MEDIAN_IOU_FLOOR, found


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


def test_check_cli_passes_every_exported_artifact(artifacts, capsys):
    from runtime.cli import main

    assert main(["check", str(artifacts)]) == 0
    out = capsys.readouterr().out
    count = len(read_manifest(artifacts).artifacts)
    assert f"{count}/{count} artifacts within their precision's tolerance" in out


def test_check_cli_fails_when_the_outputs_are_off(artifacts, tmp_path, capsys):
    """The check above can fail: with the head's golden class scores reversed along the class
    axis (the manifest resealed, so only the numbers are wrong) every head artifact fails, in
    every precision, and every backbone artifact passes."""
    import shutil

    from runtime.cli import main
    from runtime.manifest import seal, write_manifest

    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    manifest = read_manifest(copy)
    golden = copy / manifest.golden["head"]
    with np.load(golden) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output_0"] = np.ascontiguousarray(arrays["output_0"][..., ::-1])
    np.savez(golden, **arrays)
    write_manifest(seal(manifest, copy), copy)

    assert main(["check", str(copy)]) == 1
    out = capsys.readouterr().out
    heads = sum(e.model == "head" for e in manifest.artifacts)
    count = len(manifest.artifacts)
    assert f"{count - heads}/{count} artifacts within their precision's tolerance" in out
