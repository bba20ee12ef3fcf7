"""ONNX artifacts: float32 via tf2onnx (one pinned opset) and int8 QDQ via onnxruntime.

The int8 artifact keeps RoIPooling float (:func:`roi_pooling_nodes`: its coordinate path, every
node computed from the ``proposals``/``box_indexes`` inputs, and its feature sampling up to the
first dense layer) and the score ops (:data:`FLOAT_SCORE_OP_TYPES`); the rest is QDQ int8.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from export.config import ExportCheckError
from export.formats import ONNX_OPSET
from export.shared import FLOAT_SCORE_OPS, BuildInput, Built, onnx_session
from export.stages import ModelIO, model_io, named_function

#: Activation range = this percentile of |x| over the calibration set (ONNX int8 backbone).
CALIBRATION_PERCENTILE = 99.99
#: Calibration method per stage: percentile for the backbone (sparse ReLU features with rare
#: outliers: 22.7 -> 24.7 dB); min/max for the head, whose histograms over 64 RoIs per image
#: took 150 s for 300 images (vs ~10 s) for no measurable gain.
CALIBRATION_METHODS = {"backbone_rpn": "percentile", "head": "minmax"}

#: ONNX op type of each TFLite score builtin.
SCORE_OP_TYPES = {"SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}
#: Score op types ONNX int8 keeps float where they make the model's outputs (:func:`score_nodes`):
#: TFLite's :data:`~export.shared.FLOAT_SCORE_OPS` (same reason: an int8 probability has
#: 1/255 steps, so confident scores tie at the top code and the order among them, which AP's
#: ranking and the RPN's top-k/NMS depend on, becomes arbitrary) plus LOGISTIC, the RPN's
#: Sigmoid. On the shipped detector's 500 held-out images the ONNX int8 pipeline's mAP@.5:.95 drop
#: against float Keras was 0.85 pt all int8, 0.61 pt with a float Softmax, 0.38 pt with a float
#: Softmax and Sigmoid; each costs a DequantizeLinear of the logits.
FLOAT_SCORE_OP_TYPES = tuple(
    SCORE_OP_TYPES[op] for op in dict.fromkeys((*FLOAT_SCORE_OPS, "LOGISTIC"))
)


def _float_proto(build: BuildInput):
    import tf2onnx

    function, specs = named_function(build.stage, build.keras_model, build.io)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=ONNX_OPSET)
    return proto


def compact_names(proto) -> None:
    """Rename nodes and internal tensors to short ids, in place (graph inputs/outputs keep theirs).

    tf2onnx names carry the whole Keras scope ("backbone_rpn_1/stem0_conv_1/..."); in a QDQ model
    every tensor appears in several Q/DQ nodes, and the names alone were ~30% of the file.
    """
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping)}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for index, node in enumerate(graph.node):
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.name = f"{node.op_type}_{index}"
    for info in graph.value_info:
        info.name = short(info.name)


def onnx_float32(build: BuildInput) -> Built:
    proto = _float_proto(build)
    compact_names(proto)
    return Built(proto.SerializeToString(), {"opset": ONNX_OPSET})


def coordinate_nodes(graph, stage: str, io: ModelIO | None = None) -> list[str]:
    """Names of the nodes computed from the coordinate inputs alone (kept float by int8)."""
    io = model_io(stage, io)
    features = {n for n in io.inputs if n not in io.coordinate_inputs}
    coordinates = set(io.coordinate_inputs)
    names = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if any(i in features for i in inputs):
            features.update(node.output)
        elif any(i in coordinates for i in inputs):
            coordinates.update(node.output)
            names.append(node.name)
    return names


#: Op types with weights: int8 starts at the first of them after RoIPooling.
WEIGHT_OP_TYPES = ("Conv", "Gemm", "MatMul")


def roi_pooling_nodes(graph, stage: str, io: ModelIO | None = None) -> list[str]:
    """Names of the RoIPooling nodes (kept float by int8): the coordinate path
    (:func:`coordinate_nodes`), every node fed by it through nodes without weights (the gathers
    at the sample positions, the bilinear lerp, the max pool, the reshapes up to the first dense
    or conv layer), and every feature-path node whose outputs feed only those (e.g. a reshape of
    the feature map).

    Why float: onnxruntime's x86 CPU kernels are slower in 8 bits here than in float (the
    lerp's broadcasting QLinearMul; MaxPool on uint8 runs a generic kernel, on float the NCHWc
    one), which made the shipped head's int8 1.2-1.3x its float32; with RoIPooling float and
    the dense layers int8 it is ~0.8x (1 thread, CPU time, AMD EPYC) and as accurate (golden
    SNR 32.9 vs 32.5 dB).
    """
    io = model_io(stage, io)
    pooled = set(io.coordinate_inputs)
    coordinate = set(coordinate_nodes(graph, stage, io))  # with weights or not
    names: set[str] = set()
    for node in graph.node:
        fed = node.op_type not in WEIGHT_OP_TYPES and any(i in pooled for i in node.input if i)
        if fed or node.name in coordinate:
            pooled.update(node.output)
            names.add(node.name)
    if not names:
        return []
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    outputs = {o.name for o in graph.output}
    for node in reversed(graph.node):  # consumers before producers
        users = [c for o in node.output for c in consumers.get(o, [])]
        if (
            node.op_type not in WEIGHT_OP_TYPES
            and users
            and all(u in names for u in users)
            and not outputs.intersection(node.output)
        ):
            names.add(node.name)
    return [n.name for n in graph.node if n.name in names]


def flatten_pooled_reshapes(graph, kept_float: set[str]) -> list[str]:
    """Replace each float Reshape [N, ...] -> [N, K] feeding a quantized node by Flatten(axis=1),
    in place; returns the new Flatten nodes' names.

    The same values, but onnxruntime's QDQ propagation moves a QuantizeLinear backwards over
    Reshape, Transpose and MaxPool (not over Flatten): the dense layer's input quantization would
    travel back into the float RoIPooling and run its MaxPool and transposes in uint8.
    """
    import onnx
    from onnx import numpy_helper

    constants = {t.name: t for t in graph.initializer}
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in (*graph.value_info, *graph.input)
    }
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    flattened = []
    for index, node in enumerate(graph.node):
        if (
            node.op_type != "Reshape"
            or node.name not in kept_float
            or node.input[1] not in constants
        ):
            continue
        if all(c in kept_float for c in consumers.get(node.output[0], [])):
            continue
        target = numpy_helper.to_array(constants[node.input[1]]).tolist()
        shape = shapes.get(node.input[0])
        if len(target) != 2 or not shape or None in shape or target[0] != shape[0]:
            continue
        if target[1] not in (-1, int(np.prod(shape[1:]))):
            continue
        flatten = onnx.helper.make_node(
            "Flatten", [node.input[0]], list(node.output), name=f"{node.name}_flatten", axis=1
        )
        graph.node.remove(node)
        graph.node.insert(index, flatten)
        flattened.append(flatten.name)
        if not any(node.input[1] in n.input for n in graph.node):  # the shape, now unused
            graph.initializer.remove(constants[node.input[1]])
    return flattened


#: Ops that only carry a score's values towards the model's outputs (Q/DQ: in a quantized graph).
SCORE_CARRIERS = (
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Identity",
    "Concat",
    "Slice",
    "Split",
    "QuantizeLinear",
    "DequantizeLinear",
)


def score_nodes(graph) -> list[str]:
    """Names of the score nodes, kept float by int8: an op of :data:`FLOAT_SCORE_OP_TYPES` whose
    output reaches a graph output through :data:`SCORE_CARRIERS` only. A Sigmoid inside a swish
    activation or a Softmax feeding a MatMul is an activation, quantized like any other."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    reaches: dict[str, bool] = {}

    def reaches_output(tensor: str) -> bool:
        if tensor not in reaches:
            reaches[tensor] = tensor in outputs or any(
                c.op_type in SCORE_CARRIERS and any(reaches_output(o) for o in c.output)
                for c in consumers.get(tensor, [])
            )
        return reaches[tensor]

    return [
        n.name
        for n in graph.node
        if n.op_type in FLOAT_SCORE_OP_TYPES and any(reaches_output(o) for o in n.output)
    ]


def score_path_nodes(graph, scores: list[str]) -> list[str]:
    """Names of the :data:`SCORE_CARRIERS` nodes between the score nodes ``scores`` and the
    outputs (a TimeDistributed softmax's Reshapes, a per-RoI loop's Concat): excluded from
    quantization with them, or the float probabilities are requantized to 1/255 steps on their
    way out (a keras-frcnn head's confident scores all tied at 254/255)."""
    carried = {o for n in graph.node if n.name in set(scores) for o in n.output}
    names = []
    for node in graph.node:  # topologically sorted (ONNX requires it)
        if node.op_type in SCORE_CARRIERS and any(i in carried for i in node.input):
            carried.update(node.output)
            names.append(node.name)
    return names


def quantized_scores(proto) -> list[str]:
    """Score tensors (:func:`score_nodes`' outputs and the carriers' on to the graph outputs)
    fed through QuantizeLinear (should be none)."""
    graph = proto.graph
    names = set(score_nodes(graph))
    names |= set(score_path_nodes(graph, sorted(names)))
    scores = {o for n in graph.node if n.name in names for o in n.output}
    return sorted(
        n.input[0]
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] in scores
    )


def quantization_leaks(proto, stage: str, io: ModelIO | None = None) -> list[str]:
    """Coordinate-path tensors fed through QuantizeLinear (should be none).

    A lerp weight quantized where it meets the feature path is fine; a QuantizeLinear whose
    output feeds another coordinate node (or a coordinate input being quantized) is a leak.
    """
    coordinate = set(coordinate_nodes(proto.graph, stage, io))
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


#: Calibration images onnxruntime's calibrater holds at once: it keeps every intermediate
#: tensor of the samples it is given (~83 MB per 480x640 backbone image) until it folds them
#: into its statistics, so it is fed in chunks of at most this many (``CalibStridedMinMax``).
CALIBRATION_CHUNK = 4


class _Reader:
    """onnxruntime CalibrationDataReader over dict samples, read lazily in ranges."""

    def __init__(self, samples: Sequence[dict[str, np.ndarray]], stage: str = "model"):
        from export.streaming import bar

        self._samples = samples
        self._iter = iter(())
        self._bar = bar(len(samples), f"{stage}: ONNX calibration")

    def __len__(self) -> int:
        return len(self._samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._samples[start_index:end_index])

    def get_next(self):
        sample = next(self._iter, None)
        if sample is not None:
            self._bar.update(1)
        return sample

    def close(self) -> None:
        self._bar.close()

    def rewind(self):  # pragma: no cover - onnxruntime's calibrators (MinMax, Percentile) read once
        pass


def preprocessed(build: BuildInput, directory: Path) -> Path:
    """The float graph after onnxruntime's quantization pre-processing, as ``directory/pre.onnx``.

    The names of its nodes are what ``nodes_to_exclude`` takes (deterministic: the same float
    graph gives the same names). RoIPooling's reshape into the dense layers is a Flatten
    (:func:`flatten_pooled_reshapes`).
    """
    from export.streaming import cached

    pre = directory / "pre.onnx"
    # int8 and every measurement of mixed pre-process the same float graph: once per export.
    pre.write_bytes(
        cached(
            "onnx-preprocessed",
            (build.keras_model,),
            (build.stage, build.io),
            lambda: _preprocess(build, directory),
        )
    )
    return pre


def _preprocess(build: BuildInput, directory: Path) -> bytes:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = directory / "float.onnx", directory / "pre.onnx"
    src.write_bytes(_float_proto(build).SerializeToString())
    quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
    model = onnx.load(os.fspath(pre))
    pooling = set(roi_pooling_nodes(model.graph, build.stage, build.io))
    if flatten_pooled_reshapes(model.graph, pooling):
        onnx.checker.check_model(model)
        onnx.save(model, os.fspath(pre))
    return pre.read_bytes()


def onnx_int8(build: BuildInput, keep_float: Sequence[str] = ()) -> Built:
    """QDQ int8 (int8 weights, uint8 activations); RoIPooling and the score ops stay float.

    ``keep_float``: more nodes (named as in the pre-processed graph) to leave unquantized
    (``export.mixed``). Score ops are found by op type (:data:`FLOAT_SCORE_OP_TYPES`), so any
    model exported through ``--keras-model`` keeps its Softmax/Sigmoid outputs float too.

    The float graph is first optimised by onnxruntime's quantization pre-processing, which folds
    the BatchNorm scale/shift that tf2onnx leaves after depthwise convolutions into the convs
    (otherwise each becomes a separately quantized Mul + Add: 18.8 -> 22.7 dB on the shipped
    backbone's features). Activations are calibrated on the 99.99th percentile of |x| rather than
    the min/max for the backbone (see :data:`CALIBRATION_METHODS`).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if CALIBRATION_METHODS.get(build.stage, "minmax") == "percentile":
        method = CalibrationMethod.Percentile
        extra = {"CalibPercentile": CALIBRATION_PERCENTILE}
    else:
        method, extra = CalibrationMethod.MinMax, {}

    from export.streaming import cache_get, cache_put, chunk_size

    class Reader(_Reader, CalibrationDataReader):
        pass

    # The activation ranges depend on the float graph and the samples only (not on the nodes
    # kept float): computed once per stage and export (onnxruntime's calibration cache), fed
    # to the calibrater CALIBRATION_CHUNK samples at a time.
    range_key = ("onnx-ranges", (build.keras_model, build.calibration), (build.stage, method))
    ranges_json = cache_get(*range_key)
    reader = Reader(build.calibration, build.stage)
    extra = {**extra, "CalibStridedMinMax": chunk_size(len(build.calibration), CALIBRATION_CHUNK)}
    with tempfile.TemporaryDirectory(prefix="roiedge-onnx-") as tmp:
        pre, dst = preprocessed(build, Path(tmp)), Path(tmp) / "int8.onnx"
        ranges = Path(tmp) / "ranges.json"
        if ranges_json is not None:
            ranges.write_text(ranges_json)
        graph = onnx.load(os.fspath(pre)).graph
        coordinate = coordinate_nodes(graph, build.stage, build.io)
        pooling = roi_pooling_nodes(graph, build.stage, build.io)
        scores = score_nodes(graph)
        score_path = score_path_nodes(graph, scores)
        quantize_static(
            os.fspath(pre),
            os.fspath(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            # uint8 activations (U8S8): onnxruntime's x86 CPU kernels fuse DQ -> Conv -> Q into
            # QLinearConv for U8S8, but ran the shipped backbone's S8S8 convs as float Conv
            # between DequantizeLinear/QuantizeLinear (its profile: float Conv 6.8 ms, as much as
            # the float model, plus 3 ms of Q/DQ): S8S8 was 1.4-1.6x the float backbone, U8S8 is
            # 0.48-0.53x at the same SNR (23.0 dB; interleaved runs, 2 threads, AMD EPYC).
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=build.per_channel,
            # 7-bit weights: onnxruntime's x86 int8 kernels without VNNI (AVX2 vpmaddubsw) saturate
            # int16 partial sums, which took a test backbone's first conv to ~15 dB SNR here;
            # reduce_range avoids the overflow on every CPU. See onnxruntime's quantization docs
            # ("reduce_range ... on non-VNNI machines").
            reduce_range=True,
            calibrate_method=method,
            extra_options=extra,
            nodes_to_exclude=[*pooling, *scores, *score_path, *keep_float],
            calibration_cache_path=os.fspath(ranges),
        )
        reader.close()
        if ranges_json is None:
            cache_put(*range_key, ranges.read_text())
        quantized = onnx.load(os.fspath(dst))
    compact_names(quantized)
    data = quantized.SerializeToString()
    leaks = quantization_leaks(quantized, build.stage, build.io)
    if leaks:
        raise ExportCheckError(
            f"{build.stage}/onnx/int8: coordinate tensor(s) {', '.join(leaks[:5])} were "
            "quantized; RoIPooling's box arithmetic must stay float32/int32"
        )
    quantized_score_tensors = quantized_scores(quantized)
    if quantized_score_tensors:
        raise ExportCheckError(
            f"{build.stage}/onnx/int8: score tensor(s) {', '.join(quantized_score_tensors[:5])} "
            f"were quantized; {'/'.join(FLOAT_SCORE_OP_TYPES)} outputs must stay float32"
        )
    return Built(
        data,
        {
            "opset": ONNX_OPSET,
            "kept_float_coordinate_nodes": len(coordinate),
            "kept_float_roi_pooling_nodes": len(pooling),
            "kept_float_op_types": list(FLOAT_SCORE_OP_TYPES),
            "kept_float_score_nodes": len(scores),
            "kept_float_score_path_nodes": len(score_path),
            "calibration_samples": len(build.calibration),
            "calibration_method": CALIBRATION_METHODS.get(build.stage, "minmax"),
            "per_channel_weights": build.per_channel,
            "calibration_options": extra,
        },
    )


BUILDERS: dict[str, Callable[[BuildInput], Built]] = {
    "float32": onnx_float32,
    "int8": onnx_int8,
}


def tensor_specs(model_bytes: bytes, stage: str, io: ModelIO | None = None):
    """(inputs, outputs) TensorSpecs in the Keras order, as named inside the ONNX graph."""
    from runtime.manifest import TensorSpec

    session = onnx_session(model_bytes)
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
    io = model_io(stage, io)
    names_in, names_out = io.inputs, io.outputs
    missing = [n for n in (*names_in, *names_out) if n not in ins and n not in outs]
    if missing:
        raise ExportCheckError(
            f"{stage}/onnx: graph lacks tensor(s) {', '.join(missing)}; "
            f"it has inputs {sorted(ins)} and outputs {sorted(outs)}"
        )
    return tuple(spec(ins[n]) for n in names_in), tuple(spec(outs[n]) for n in names_out)
