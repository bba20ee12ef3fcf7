"""Op audits, option validation and CLI error handling of `python -m export` (no full export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from export.audit import (
    check_onnx_loop_free,
    check_tflite_builtin_only,
    check_tflite_runtime_version,
    onnx_ops,
    tflite_ops,
)
from export.config import ExportCheckError, ExportConfig, ExportInputError
from export.edgetpu import edgetpu_report
from export.formats import ARTIFACTS, ONNX_OPSET
from runtime.config import DetectorConfig

REPO = Path(__file__).resolve().parent.parent


def _tflite(function, select_tf_ops: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], tf.Module()
    )
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    return converter.convert()


@pytest.fixture(scope="module")
def flex_model() -> bytes:
    import tensorflow as tf

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, 8, 8, 2), tf.float32),
            tf.TensorSpec((3, 4), tf.float32),
            tf.TensorSpec((3,), tf.int32),
        ]
    )
    def crop(image, boxes, indexes):
        return tf.image.crop_and_resize(image, boxes, indexes, (4, 4))

    return _tflite(crop, select_tf_ops=True)


@pytest.fixture(scope="module")
def builtin_model() -> bytes:
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 2), tf.float32)])
    def pool(image):
        return tf.nn.max_pool2d(image * 2.0 + 1.0, 2, 2, "VALID")

    return _tflite(pool, select_tf_ops=False)


def test_tflite_audit_rejects_flex_op_by_name(flex_model):
    with pytest.raises(ExportCheckError, match="FlexCropAndResize") as info:
        check_tflite_builtin_only(flex_model, "crop.tflite")
    assert "crop.tflite" in str(info.value)


def test_tflite_audit_accepts_and_counts_builtins(builtin_model):
    counts = check_tflite_builtin_only(builtin_model)
    assert counts["MAX_POOL_2D"] == 1
    assert tflite_ops(builtin_model) == counts


def test_tflite_audit_rejects_op_versions_newer_than_the_oldest_runtime():
    import tensorflow as tf

    weights = tf.constant(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((1, 64), tf.float32)])
    def dense(x):
        return tf.matmul(x, weights)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [dense.get_concrete_function()], tf.Module()
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # hybrid per-channel FC: v12, TF 2.17
    hybrid = converter.convert()
    with pytest.raises(
        ExportCheckError, match=r"needs TFLite runtime >= 2\.1[5-9].*FULLY_CONNECTED"
    ):
        check_tflite_runtime_version(hybrid, "dense.tflite")
    from export.tf_private import set_converter_flag

    set_converter_flag(
        converter, "_experimental_disable_per_channel_quantization_for_dense_layers", True
    )
    needed = check_tflite_runtime_version(converter.convert(), "dense.tflite")
    assert tuple(int(v) for v in needed.split(".")) <= (2, 14, 0)


def _onnx_with_loop():
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["x_in", "x_in"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [2]),
        ],
    )
    loop = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body, name="the_loop")
    graph = helper.make_graph(
        [loop],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[
            helper.make_tensor("trip", TensorProto.INT64, [], [3]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model, full_check=True)  # a valid model: rejected for the Loop only
    return model


def test_onnx_audit_rejects_loop_by_name():
    with pytest.raises(ExportCheckError, match="Loop") as info:
        check_onnx_loop_free(_onnx_with_loop(), "loop.onnx")
    assert "the_loop" in str(info.value)


def test_onnx_audit_accepts_loop_free_graph_and_rejects_invalid_one():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    assert check_onnx_loop_free(model) == onnx_ops(model) == {"Relu": 1}
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[0] = "missing"
    with pytest.raises(ExportCheckError, match="checker"):
        check_onnx_loop_free(broken, "broken.onnx")


def test_edgetpu_report_flags_ops_outside_coral_list(flex_model, builtin_model):
    report = edgetpu_report(builtin_model)
    assert report["unsupported_ops"] == {}
    # float model: every activation is float32, so none is Edge TPU-ready
    assert {t["dtype"] for t in report["non_int8_activation_tensors"]} == {"float32"}
    assert not report["likely_fully_mapped"]
    flex = edgetpu_report(flex_model)
    assert "CUSTOM:FlexCropAndResize" in flex["unsupported_ops"]


def test_table_rows_are_unique_and_named():
    keys = [(a.model, a.format, a.precision) for a in ARTIFACTS]
    assert len(set(keys)) == len(keys)
    assert len({a.filename for a in ARTIFACTS}) == len(ARTIFACTS)
    assert [a for a in ARTIFACTS if a.precision == "int8_io"] == [
        a for a in ARTIFACTS if a.name == "backbone_rpn/tflite/int8_io"
    ]


def test_selection_refuses_a_request_it_cannot_honour(tmp_path):
    config = ExportConfig(out=tmp_path, models=("head",), precisions=("int8_io",))
    with pytest.raises(ExportInputError, match="int8_io"):
        config.selected()
    with pytest.raises(ExportInputError, match="bogus"):
        ExportConfig(out=tmp_path, precisions=("int8", "bogus"))
    with pytest.raises(ExportInputError, match="calibration-images"):
        ExportConfig(out=tmp_path, calibration_images=0)
    both = ExportConfig(out=tmp_path, precisions=("int8_io", "float32"))
    assert {a.name for a in both.selected()} == {
        "backbone_rpn/tflite/int8_io",
        "backbone_rpn/tflite/float32",
        "head/tflite/float32",
        "backbone_rpn/onnx/float32",
        "head/onnx/float32",
    }


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0]


def test_cli_missing_model_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.keras"
    result = _cli("--model", str(missing), "--out", str(tmp_path / "out"))
    _assert_one_line_error(result, str(missing))
    assert not (tmp_path / "out").exists()


def test_cli_missing_calibration_dir_is_a_one_line_error(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    result = _cli(
        "--model", str(model), "--calibration", str(tmp_path / "none"), "--out", str(tmp_path / "o")
    )
    _assert_one_line_error(result, "--calibration", "none")


def test_cli_calibration_dir_without_images_is_a_one_line_error(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "notes.txt").write_text("not an image")
    result = _cli(
        "--model", str(model), "--calibration", str(tmp_path / "cal"), "--out", str(tmp_path / "o")
    )
    _assert_one_line_error(result, "contains no images (.jpg")


def test_cli_unreadable_model_is_a_one_line_error(tmp_path):
    model = tmp_path / "broken.keras"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("config.json", "{ this is not a keras model")
    sidecar = {"format": "roiedge-detector", "config": DetectorConfig().to_dict()}
    model.with_suffix(".json").write_text(json.dumps(sidecar))
    result = _cli("--model", str(model), "--out", str(tmp_path / "o"))
    _assert_one_line_error(result, "broken.keras")
    model.with_suffix(".json").write_text("{}")
    result = _cli("--model", str(model), "--out", str(tmp_path / "o"))
    _assert_one_line_error(result, "broken.json")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(np.random.default_rng(0).bytes(256))
    result = _cli("--model", str(garbage), "--out", str(tmp_path / "o"))
    _assert_one_line_error(result, "garbage.keras")
    assert not (tmp_path / "o").exists()


def test_cli_bad_option_values_exit_2(tmp_path):
    result = _cli("--out", str(tmp_path / "o"), "--precisions", "int4")
    _assert_one_line_error(result, "int4")
    result = _cli("--out", str(tmp_path / "o"), "--calibration-images", "many")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_cli_flags_map_one_to_one_onto_export_config():
    import dataclasses

    from export.__main__ import build_parser

    parser = build_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    fields = {f.name for f in dataclasses.fields(ExportConfig)} - {"schema_version"}
    assert dests == fields
    args = parser.parse_args(
        ["--out", "x", "--models", "head", "--precisions", "int8,float32", "--no-progress"]
    )
    config = ExportConfig(**vars(args))
    assert config.models == ("head",) and config.precisions == ("int8", "float32")
    assert config.progress is False and config.calibration is None


def test_roi_pooling_converted_to_tflite_keeps_samples_on_the_map_edge():
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from models.roi_pooling import RoIPooling, roi_pool_numpy

    n = 64
    features = keras.Input((20, 20, 8), batch_size=1, name="features")
    rois = keras.Input((4,), batch_size=n, name="rois")
    indexes = keras.Input((), batch_size=n, dtype="int32", name="indexes")
    model = keras.Model([features, rois, indexes], RoIPooling((7, 7))(features, rois, indexes))
    function = tf.function(
        lambda f, r, i: model([f, r, i]),
        input_signature=[
            tf.TensorSpec((1, 20, 20, 8), tf.float32, name="features"),
            tf.TensorSpec((n, 4), tf.float32, name="rois"),
            tf.TensorSpec((n,), tf.int32, name="indexes"),
        ],
    )
    data = _tflite(function, select_tf_ops=False)
    feature_map = np.zeros((1, 20, 20, 8), np.float32)
    feature_map[:, -1] = 1.0  # only the last row and column carry signal
    feature_map[:, :, -1] = 1.0
    start = np.linspace(0.05, 0.8, n, dtype=np.float32)
    ones = np.ones(n, np.float32)
    runner = Interpreter(model_content=data).get_signature_runner()
    for axis, boxes in (
        (1, np.stack([start, start[::-1], ones, 0.9 * ones], axis=1)),  # ending on the bottom edge
        (2, np.stack([start[::-1], start, 0.9 * ones, ones], axis=1)),  # ending on the right edge
    ):
        zeros = np.zeros(n, np.int32)
        (actual,) = runner(features=feature_map, rois=boxes, indexes=zeros).values()
        # Geometry, not the lowering: every box ends at exactly 1.0, so its last sample row (or
        # column) lies on the map's last pixel, the only one carrying signal (1.0): its last bin
        # row (column) must be 1. A conversion that drops or zeroes edge samples gives 0 there.
        edge = np.take(actual, -1, axis=axis)
        np.testing.assert_allclose(edge, 1.0, atol=1e-5)
        # Everything else against the brute-force float64 loop over TF's CropAndResize samples,
        # on the RoIs whose edge sample TF's float32 position does not round past the map (TF
        # zeroes those; roiedge keeps the edge pixel by design, as the first check requires).
        reference = roi_pool_numpy(feature_map, boxes, zeros, (7, 7), samples_per_bin=2)
        on_map = np.take(reference, -1, axis=axis).min(axis=(1, 2)) == 1.0
        assert on_map.sum() >= n - 4, on_map.sum()
        np.testing.assert_allclose(actual[on_map], reference[on_map], atol=1e-5)
