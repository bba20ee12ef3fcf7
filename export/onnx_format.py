"""ONNX artifacts: float32 via tf2onnx (one pinned opset) and int8 QDQ via onnxruntime.

The int8 artifact excludes the coordinate path of RoIPooling (every node computed from the
``proposals``/``box_indexes`` inputs alone) from quantization, like the TFLite int8 artifact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.config import ExportCheckError
from export.formats import ONNX_OPSET
from export.stages import COORDINATE_INPUTS, STAGE_IO, named_function
from export.tflite_format import BuildInput, Built


def _float_proto(build: BuildInput):
    import tf2onnx

    function, specs = named_function(build.stage, build.keras_model)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=ONNX_OPSET)
    return proto


def onnx_float32(build: BuildInput) -> Built:
    proto = _float_proto(build)
    return Built(proto.SerializeToString(), {"opset": ONNX_OPSET})


def coordinate_nodes(graph, stage: str) -> list[str]:
    """Names of the nodes computed from the coordinate inputs alone (kept float by int8)."""
    features = {n for n in STAGE_IO[stage][0] if n not in COORDINATE_INPUTS[stage]}
    coordinates = set(COORDINATE_INPUTS[stage])
    names = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if any(i in features for i in inputs):
            features.update(node.output)
        elif any(i in coordinates for i in inputs):
            coordinates.update(node.output)
            names.append(node.name)
    return names


def quantization_leaks(proto, stage: str) -> list[str]:
    """Coordinate-path tensors fed through QuantizeLinear (should be none).

    A lerp weight quantized where it meets the feature path is fine; a QuantizeLinear whose
    output feeds another coordinate node (or a coordinate input being quantized) is a leak.
    """
    coordinate = set(coordinate_nodes(proto.graph, stage))
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    leaks = []
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.name not in coordinate:
            continue
        downstream = [c for c in consumers.get(node.output[0], [])]
        # QDQ pairs: QuantizeLinear -> DequantizeLinear -> consumer(s)
        for dq in downstream:
            for consumer in (
                consumers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else [dq]
            ):
                if consumer.name in coordinate:
                    leaks.append(node.input[0])
    return sorted(set(leaks))


class _Reader:
    """onnxruntime CalibrationDataReader over dict samples."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]]):
        self._iter = iter(samples)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):  # pragma: no cover - not used by MinMax calibration
        pass


def onnx_int8(build: BuildInput) -> Built:
    """QDQ int8 (per-channel weights, int8 activations); the coordinate path stays float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    proto = _float_proto(build)
    excluded = coordinate_nodes(proto.graph, build.stage)

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="roiedge-onnx-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(proto.SerializeToString())
        quantize_static(
            os.fspath(src),
            os.fspath(dst),
            Reader(build.calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=excluded,
        )
        data = dst.read_bytes()
    import onnx

    leaks = quantization_leaks(onnx.load_from_string(data), build.stage)
    if leaks:
        raise ExportCheckError(
            f"{build.stage}/onnx/int8: coordinate tensor(s) {', '.join(leaks[:5])} were "
            "quantized; RoIPooling's box arithmetic must stay float32/int32"
        )
    return Built(
        data,
        {
            "opset": ONNX_OPSET,
            "kept_float_coordinate_nodes": len(excluded),
            "calibration_samples": len(build.calibration),
        },
    )


BUILDERS: dict[str, Callable[[BuildInput], Built]] = {
    "float32": onnx_float32,
    "int8": onnx_int8,
}


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def tensor_specs(model_bytes: bytes, stage: str):
    """(inputs, outputs) TensorSpecs in the Keras order, as named inside the ONNX graph."""
    from runtime.manifest import TensorSpec

    session = _session(model_bytes)
    dtypes = {
        "tensor(float)": "float32",
        "tensor(int32)": "int32",
        "tensor(int64)": "int64",
        "tensor(int8)": "int8",
        "tensor(float16)": "float16",
    }

    def spec(arg):
        return TensorSpec(
            name=arg.name,
            shape=tuple(d if isinstance(d, int) else None for d in arg.shape),
            dtype=dtypes.get(arg.type, arg.type),
        )

    ins = {a.name: a for a in session.get_inputs()}
    outs = {a.name: a for a in session.get_outputs()}
    names_in, names_out = STAGE_IO[stage]
    missing = [n for n in (*names_in, *names_out) if n not in ins and n not in outs]
    if missing:
        raise ExportCheckError(
            f"{stage}/onnx: graph lacks tensor(s) {', '.join(missing)}; "
            f"it has inputs {sorted(ins)} and outputs {sorted(outs)}"
        )
    return tuple(spec(ins[n]) for n in names_in), tuple(spec(outs[n]) for n in names_out)


def run(model_bytes: bytes, stage: str, samples: Sequence[Sequence[np.ndarray]]):
    """Run samples (each a list of inputs in Keras order) with onnxruntime (CPU)."""
    names_in, names_out = STAGE_IO[stage]
    session = _session(model_bytes)
    results = []
    for inputs in samples:
        out = session.run(list(names_out), dict(zip(names_in, inputs)))
        results.append([np.asarray(v, np.float32) for v in out])
    return results
