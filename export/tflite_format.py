"""TFLite artifacts: one small function per precision, all builtin ops only.

Each builder takes a :class:`BuildInput` and returns the .tflite bytes plus notes for the op report.
Full-integer quantization keeps the coordinate path of RoIPooling (everything computed from the
``proposals``/``box_indexes`` inputs alone: sample positions, floor/ceil, GATHER indexes, lerp
weights) in float32/int32 and quantizes the feature path only; see :func:`_coordinate_path`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from export.config import ExportCheckError
from export.stages import ModelIO, frozen_function, model_io
from export.tf_private import (
    flatbuffer_utils,
    mlir_quantize,
    quantization_debugger,
    set_converter_flag,
)

#: Per-channel weight scales for full-integer TFLite and ONNX, per stage. The backbone uses
#: per-tensor: on the shipped model TFLite is as accurate (features 22.0 vs 21.2 dB SNR), ONNX
#: loses ~1.3 dB (23.4 vs 24.7 dB), and the per-channel scale tables of ~1.6k channels cost
#: 10-14% of a 94k-parameter model (0.33x -> 0.29x of float32); per-tensor is also what older
#: Edge TPU compilers require. The head's dense layers keep per-channel scales.
PER_CHANNEL_WEIGHTS = {"backbone_rpn": False, "head": True}


#: Calibration samples run through the per-layer debug model of each int8 artifact.
LAYER_DEBUG_SAMPLES = 16


@dataclasses.dataclass(frozen=True)
class BuildInput:
    """What every builder gets: the stage, its Keras model and calibration samples (dicts)."""

    stage: str
    keras_model: Any
    calibration: Sequence[dict[str, np.ndarray]]
    #: I/O of a model that is not a detector stage (None: the stage's STAGE_IO contract).
    io: ModelIO | None = None

    @property
    def model_io(self) -> ModelIO:
        return model_io(self.stage, self.io)

    @property
    def per_channel(self) -> bool:
        """Per-channel weight scales (:data:`PER_CHANNEL_WEIGHTS`; other models: yes)."""
        return PER_CHANNEL_WEIGHTS.get(self.stage, True)


@dataclasses.dataclass(frozen=True)
class Built:
    """A built artifact: file bytes and notes for its report."""

    data: bytes
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _converter(build: BuildInput):
    import tensorflow as tf

    function = frozen_function(build.stage, build.keras_model, build.io)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def _representative(build: BuildInput) -> Callable:
    def samples():
        yield from build.calibration

    return samples


def tflite_float32(build: BuildInput) -> Built:
    return Built(_converter(build).convert())


def tflite_float16(build: BuildInput) -> Built:
    import tensorflow as tf

    converter = _converter(build)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return Built(converter.convert())


def tflite_dynamic_int8(build: BuildInput) -> Built:
    import tensorflow as tf

    converter = _converter(build)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # Per-channel hybrid FULLY_CONNECTED is op version 12, which tflite-runtime 2.14 lacks
    # ("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"); per-tensor dense
    # weights keep it at a version every stock runtime has.
    set_converter_flag(
        converter, "_experimental_disable_per_channel_quantization_for_dense_layers", True
    )
    return Built(converter.convert(), {"per_channel_dense_weights": False})


def _float_model_graph(model_bytes: bytes):
    return flatbuffer_utils().read_model_from_bytearray(bytearray(model_bytes))


def _coordinate_path(model, io: ModelIO) -> tuple[list[int], list[int]]:
    """(operator indexes, tensor indexes) computed from the coordinate inputs alone.

    An op is on the coordinate path if none of its inputs depends on a non-coordinate input
    (the feature map): its outputs are box positions, indexes or lerp weights, never features.
    """
    subgraph = model.subgraphs[0]
    signature = model.signatureDefs[0]
    by_name = {s.name.decode(): s.tensorIndex for s in signature.inputs}
    feature_inputs = {by_name[n] for n in io.inputs if n not in io.coordinate_inputs}
    coordinate_inputs = {by_name[n] for n in io.coordinate_inputs}
    depends_on_features = set(feature_inputs)
    reachable = set(coordinate_inputs)
    ops, tensors = [], set()
    for index, op in enumerate(subgraph.operators):
        inputs = [i for i in op.inputs if i >= 0]
        if any(i in depends_on_features for i in inputs):
            depends_on_features.update(op.outputs)
        elif any(i in reachable for i in inputs):
            reachable.update(op.outputs)
            ops.append(index)
            tensors.update(op.outputs)
    return ops, sorted(tensors | coordinate_inputs)


def quantization_leaks(model_bytes: bytes, stage: str, io: ModelIO | None = None) -> list[str]:
    """Coordinate-path tensors that are int8/uint8/int16 (should be none).

    Inspects every op computed from the coordinate inputs alone: its inputs and (unless it is the
    QUANTIZE that hands a lerp weight over to the int8 feature path) its outputs.
    """
    io = model_io(stage, io)
    if not io.coordinate_inputs:
        return []
    fb = flatbuffer_utils()
    model = _float_model_graph(model_bytes)
    op_indexes, _ = _coordinate_path(model, io)
    subgraph = model.subgraphs[0]
    leaks = []
    for index in op_indexes:
        op = subgraph.operators[index]
        checked = [i for i in op.inputs if i >= 0]
        if fb.opcode_to_name(model, op.opcodeIndex) != "QUANTIZE":
            checked += list(op.outputs)
        for t in checked:
            tensor = subgraph.tensors[t]
            if fb.type_to_name(tensor.type) in ("INT8", "UINT8", "INT16"):
                leaks.append(tensor.name.decode())
    return sorted(set(leaks))


def tflite_int8(build: BuildInput) -> Built:
    """Full-integer quantization, float I/O, coordinate path kept in float32/int32.

    Calibrates the float model once, then quantizes it with the coordinate path's nodes
    denylisted (the mechanism behind ``tf.lite.experimental.QuantizationDebugger``'s
    ``denylisted_nodes``), and verifies no coordinate tensor was quantized.
    """
    import tensorflow as tf

    converter = _converter(build)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(build)
    set_converter_flag(converter, "_experimental_calibrate_only", True)
    calibrated = converter.convert()
    fb = flatbuffer_utils()

    model = _float_model_graph(calibrated)
    op_indexes, tensor_indexes = _coordinate_path(model, build.model_io)
    subgraph = model.subgraphs[0]
    nodes = sorted({subgraph.tensors[t].name.decode() for t in tensor_indexes})
    # A multi-output op (UNPACK of the box columns) is matched by op type, not output name;
    # only types used nowhere on the feature path are denylisted that way.
    coordinate_types = {
        fb.opcode_to_name(model, subgraph.operators[i].opcodeIndex)
        for i in op_indexes
        if len(subgraph.operators[i].outputs) > 1
    }
    feature_types = {
        fb.opcode_to_name(model, op.opcodeIndex)
        for i, op in enumerate(subgraph.operators)
        if i not in set(op_indexes)
    }
    op_types = sorted(coordinate_types - feature_types)
    data = mlir_quantize(
        calibrated,
        disable_per_channel=not build.per_channel,
        fully_quantize=False,
        denylisted_nodes=nodes or None,
        denylisted_ops=op_types or None,
    )
    debug_model = mlir_quantize(
        calibrated,
        disable_per_channel=not build.per_channel,
        fully_quantize=False,
        enable_numeric_verify=True,
        denylisted_nodes=nodes or None,
        denylisted_ops=op_types or None,
    )
    layers = layer_errors(debug_model, build.calibration[:LAYER_DEBUG_SAMPLES])
    leaks = quantization_leaks(data, build.stage, build.io)
    if leaks:
        raise ExportCheckError(
            f"{build.stage}/tflite/int8: coordinate tensor(s) {', '.join(leaks[:5])} were "
            "quantized; RoIPooling's box arithmetic must stay float32/int32"
        )
    return Built(
        data,
        {
            "kept_float_coordinate_tensors": len(nodes),
            "kept_float_op_types": op_types,
            "calibration_samples": len(build.calibration),
            "per_channel_weights": build.per_channel,
            "layer_errors": layers,
        },
    )


def layer_errors(debug_model: bytes, samples: Sequence[dict[str, np.ndarray]]) -> list[dict]:
    """Per-layer quantization error of a NumericVerify debug model, worst first.

    ``tf.lite.experimental.QuantizationDebugger`` runs each quantized op next to its float twin
    on the same (quantized) input; ``rmse_over_scale`` is the layer's RMS error in units of its
    output quantization step (~0.29 = rounding alone; much larger = that layer hurts).
    """
    import csv
    import io

    runner = _interpreter(debug_model).get_signature_runner()
    by_index = {d["index"]: key for key, d in runner.get_input_details().items()}
    order = [by_index[i] for i in sorted(by_index)]

    def dataset():
        for sample in samples:
            yield [sample[key] for key in order]

    debugger = quantization_debugger()(quant_debug_model_content=debug_model, debug_dataset=dataset)
    debugger.run()
    text = io.StringIO()
    debugger.layer_statistics_dump(text)
    rows = []
    for row in csv.DictReader(io.StringIO(text.getvalue())):
        scale = float(row["scale"])
        rmse = float(row["mean_squared_error"]) ** 0.5
        rows.append(
            {
                "op": row["op_name"],
                "tensor": row["tensor_name"],
                "rmse_over_scale": rmse / scale if scale else float("nan"),
                "max_abs_error": float(row["max_abs_error"]),
                "scale": scale,
            }
        )
    rows.sort(
        key=lambda r: -r["rmse_over_scale"] if r["rmse_over_scale"] == r["rmse_over_scale"] else 0
    )
    return rows


def tflite_int8_io(build: BuildInput) -> Built:
    """Edge TPU-ready: TFLITE_BUILTINS_INT8 only, int8 inputs and outputs."""
    import tensorflow as tf

    if build.model_io.coordinate_inputs:
        raise ExportCheckError(
            f"{build.stage}/tflite/int8_io: int8 I/O would quantize the coordinate inputs "
            f"{build.model_io.coordinate_inputs}; only stages without them get an int8_io artifact"
        )
    converter = _converter(build)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(build)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    set_converter_flag(converter, "_experimental_disable_per_channel", not build.per_channel)
    return Built(
        converter.convert(),
        {
            "calibration_samples": len(build.calibration),
            "per_channel_weights": build.per_channel,
        },
    )


BUILDERS: dict[str, Callable[[BuildInput], Built]] = {
    "float32": tflite_float32,
    "float16": tflite_float16,
    "dynamic_int8": tflite_dynamic_int8,
    "int8": tflite_int8,
    "int8_io": tflite_int8_io,
}


def tensor_specs(model_bytes: bytes, stage: str, io: ModelIO | None = None):
    """(inputs, outputs) TensorSpecs in the Keras order, named as the tensors inside the model.

    TFLite sorts signature keys and renames tensors (``serving_default_image:0``,
    ``StatefulPartitionedCall:0``); the signature runner's details map them back by key.
    """
    from runtime.manifest import TensorSpec

    interpreter = _interpreter(model_bytes)
    runner = interpreter.get_signature_runner()
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    io = model_io(stage, io)
    names_in, names_out = io.inputs, io.outputs

    def spec(details):
        shape = details.get("shape_signature", details["shape"])
        return TensorSpec(
            name=details["name"],
            shape=tuple(None if int(d) < 0 else int(d) for d in shape),
            dtype=np.dtype(details["dtype"]).name,
        )

    return (
        tuple(spec(in_details[n]) for n in names_in),
        tuple(spec(out_details[n]) for n in names_out),
    )


def _interpreter(model_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_bytes, num_threads=1)
