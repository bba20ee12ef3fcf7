"""The full-int8 settings that keep boxes: float score softmax, MSE activation ranges, and the
calibration set's hash in the manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def _quantized_mse(values, low, high):
    step = (high - low) / 255.0
    q = np.clip(np.round((values - low) / step), 0, 255) * step + low
    return float(np.mean((values - q) ** 2))


def test_mse_clip_narrows_an_outlier_range_and_lowers_the_error():
    from export.tflite_format import mse_clip

    rng = np.random.default_rng(0)
    values = np.concatenate([np.abs(rng.normal(0, 1, 20000)), [40.0]])  # ReLU-like, one outlier
    low, high = mse_clip(values, 0.0, float(values.max()))
    assert low == 0.0 and high < 0.5 * values.max()
    assert _quantized_mse(values, low, high) < _quantized_mse(values, 0.0, float(values.max()))
    # Without outliers the min/max is already the best range.
    uniform = rng.uniform(0, 1, 20000)
    assert mse_clip(uniform, 0.0, 1.0)[1] >= 0.97


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
