"""Smoke tests of every private TensorFlow / LiteRT API, each behind its one guarded door.

A TensorFlow or LiteRT upgrade that renames or reshapes one of them fails here, naming the API.
"""

from __future__ import annotations

import numpy as np
import pytest

from export import tf_private
from runtime.errors import RoiedgeError
from runtime.interpreter_private import full_signature_list


@pytest.fixture(scope="module")
def tiny():
    """(converter factory, frozen function): y = relu(x @ w) with w a tf.Variable."""
    import tensorflow as tf

    w = tf.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3))
    spec = tf.TensorSpec((1, 4), tf.float32, name="x")
    concrete = tf.function(lambda x: {"y": tf.nn.relu(x @ w)}, input_signature=[spec])
    concrete = concrete.get_concrete_function()
    frozen = tf_private.convert_variables_to_constants_v2(concrete)

    def converter():
        c = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([np.full((1, 4), v, np.float32)] for v in (-1, 0, 1))
        return c

    return converter, frozen, concrete


def test_frozen_function_has_no_variables_and_computes_the_same(tiny):
    _, frozen, concrete = tiny
    assert not frozen.graph.variables
    x = np.array([[0.5, -1.0, 2.0, 1.0]], np.float32)
    import tensorflow as tf

    (y,) = frozen(tf.constant(x))
    np.testing.assert_allclose(y.numpy(), concrete(tf.constant(x))["y"].numpy(), rtol=1e-6)


def test_calibrate_only_then_mlir_quantize_gives_an_int8_model(tiny):
    converter, _, _ = tiny
    c = converter()
    tf_private.set_converter_flag(c, "_experimental_calibrate_only", True)
    calibrated = c.convert()
    quantized = tf_private.mlir_quantize(calibrated, disable_per_channel=True, fully_quantize=False)
    fb = tf_private.flatbuffer_utils()
    model = fb.read_model_from_bytearray(bytearray(quantized))
    types = {fb.type_to_name(t.type) for t in model.subgraphs[0].tensors}
    assert "INT8" in types and "FLOAT32" in types  # int8 inside, float I/O
    ops = {fb.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators}
    assert "QUANTIZE" in ops and "DEQUANTIZE" in ops


def _int8_weight_scales(model_bytes: bytes) -> tuple[set[str], list[int]]:
    """(tensor types, number of scales of each INT8 tensor) of a .tflite model."""
    fb = tf_private.flatbuffer_utils()
    tensors = fb.read_model_from_bytearray(bytearray(model_bytes)).subgraphs[0].tensors
    types = {fb.type_to_name(t.type) for t in tensors}
    scales = [
        len(t.quantization.scale)
        for t in tensors
        if fb.type_to_name(t.type) == "INT8" and t.quantization is not None
        if t.quantization.scale is not None
    ]
    return types, scales


def test_converter_flags_exist_take_effect_and_unknown_ones_are_refused(tiny):
    """Each flag changes what the converter writes (not just an attribute set and read back):
    calibrate-only leaves no INT8 tensor; either per-channel switch leaves the dense weights
    (3 output channels, 3 scales by default) one scale."""
    converter, _, _ = tiny
    types, scales = _int8_weight_scales(converter().convert())
    assert "INT8" in types and max(scales) == 3  # the default: per-channel dense weights
    for flag in tf_private.CONVERTER_FLAGS:
        c = converter()
        tf_private.set_converter_flag(c, flag, True)
        types, scales = _int8_weight_scales(c.convert())
        if flag == "_experimental_calibrate_only":
            assert "INT8" not in types, (flag, types)
        else:
            assert scales and max(scales) == 1, (flag, scales)

    class Renamed:  # a converter whose flag was renamed upstream
        pass

    with pytest.raises(tf_private.PrivateApiError, match="_experimental_calibrate_only"):
        tf_private.set_converter_flag(Renamed(), "_experimental_calibrate_only", True)


def test_quantization_debugger_reports_every_quantized_layer(tiny):
    """The debugger runs on a debug model and dumps one CSV row per quantized layer with the
    columns export.tflite_format.layer_errors reads (not just a callable looked up)."""
    import csv
    import io

    converter, _, _ = tiny
    c = converter()
    tf_private.set_converter_flag(c, "_experimental_calibrate_only", True)
    calibrated = c.convert()
    debug_model = tf_private.mlir_quantize(
        calibrated, disable_per_channel=True, fully_quantize=False, enable_numeric_verify=True
    )
    dataset = lambda: ([np.full((1, 4), v, np.float32)] for v in (-1.0, 0.5, 1.0))  # noqa: E731
    debugger = tf_private.quantization_debugger()(
        quant_debug_model_content=debug_model, debug_dataset=dataset
    )
    debugger.run()
    text = io.StringIO()
    debugger.layer_statistics_dump(text)
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert rows and {"op_name", "tensor_name", "scale", "mean_squared_error"} <= set(rows[0])
    assert all(float(r["scale"]) > 0 for r in rows)


def test_runtime_signature_guard_on_litert_and_on_a_changed_api(tiny):
    from ai_edge_litert.interpreter import Interpreter

    converter, _, _ = tiny
    interpreter = Interpreter(model_content=converter().convert())
    (signature,) = full_signature_list(interpreter).values()
    details = {d["index"] for d in interpreter.get_input_details()}
    assert set(signature["inputs"]) == {"x"} and set(signature["inputs"].values()) == details

    class NoApi:
        pass

    class Changed:
        def _get_full_signature_list(self):
            return [("serving_default", "x")]

    assert full_signature_list(NoApi()) == {}
    with pytest.raises(RoiedgeError, match="_get_full_signature_list"):
        full_signature_list(Changed())


def test_another_tensorflow_release_warns_naming_the_api(monkeypatch):
    monkeypatch.setattr(tf_private, "CHECKED_TENSORFLOW", "2.0")
    monkeypatch.setattr(tf_private, "_WARNED", set())
    with pytest.warns(UserWarning, match=r"mlir_quantize: private TensorFlow API checked with"):
        assert not tf_private.check_version("tensorflow.lite.python.convert.mlir_quantize")
    monkeypatch.undo()
    assert tf_private.check_version("tensorflow.lite.python.convert.mlir_quantize")
