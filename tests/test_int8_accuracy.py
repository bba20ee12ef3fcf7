"""The full-int8 settings that keep boxes: float score softmax, MSE activation ranges, and the
calibration set's hash in the manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest


def _quantized_mse(values, low, high):
    step = (high - low) / 255.0
    q = np.clip(np.round((values - low) / step), 0, 255) * step + low
    return float(np.mean((values - q) ** 2))


def test_mse_clip_is_the_least_error_range_of_its_candidates():
    from export.tflite_format import RANGE_FACTORS, mse_clip

    rng = np.random.default_rng(0)
    for values in (np.abs(rng.normal(0, 1, 200_000)), rng.normal(0, 1, 200_000)):
        low, high = float(min(values.min(), 0.0)), float(values.max())
        # Brute force over the same candidates, the error computed here independently.
        errors = [_quantized_mse(values, low * f, high * f) for f in RANGE_FACTORS]
        best = RANGE_FACTORS[int(np.argmin(errors))]
        assert mse_clip(values, low, high) == pytest.approx((low * best, high * best))
        # A Gaussian's rare tail is worth clipping at 8 bits: narrower than min/max, less error.
        assert best < 1.0 and min(errors) < errors[-1]


def test_int8_head_softmax_is_float_and_backbone_uses_mse_ranges(exported_artifacts):
    from ai_edge_litert.interpreter import Interpreter

    out, manifest = exported_artifacts
    entry = manifest.find("head", "tflite", "int8")
    interpreter = Interpreter(model_path=str(out / entry.path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    softmax = [op for op in interpreter._get_ops_details() if op["op_name"] == "SOFTMAX"]
    assert softmax and all(tensors[op["outputs"][0]]["dtype"] == np.float32 for op in softmax)
    backbone = manifest.find("backbone_rpn", "tflite", "int8")
    notes = json.loads((out / backbone.op_report).read_text())["build_notes"]
    assert notes["activation_ranges"] == "mse"


def test_manifest_records_the_calibration_set_hash(exported_artifacts):
    from conftest import SESSION_CALIBRATION_IMAGES

    from export.calibration import procedural_images
    from export.config import CALIBRATION_SPLIT
    from models.detector import load_detector
    from runtime.processing import preprocess

    out, manifest = exported_artifacts
    config = load_detector().config
    digest = hashlib.sha256()
    for image in procedural_images(SESSION_CALIBRATION_IMAGES, CALIBRATION_SPLIT):
        tensor = np.ascontiguousarray(preprocess(image, config))
        digest.update(f"image:{tensor.dtype.str}:{tensor.shape};".encode() + tensor.tobytes())
    assert manifest.source_models["calibration_sha256"] == digest.hexdigest()
    reread = json.loads((out / "manifest.json").read_text())
    assert reread["source_models"]["calibration_sha256"] == digest.hexdigest()
