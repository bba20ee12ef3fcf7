"""Edge TPU compatibility of an int8 TFLite artifact, checked without the Edge TPU compiler.

The Edge TPU compiler cannot be installed here, so this reports what it would reject: ops outside
Coral's published list of supported operations, activation tensors that are not int8, and dynamic
shapes. Ops outside the list are not errors of the export (the compiler maps them to the CPU);
they are listed so the Coral user knows where the graph would be split.
"""

from __future__ import annotations

from typing import Any

#: Coral's supported operations, as TFLite builtin op names. Transcribed from
#: "Supported operations" on https://coral.ai/docs/edgetpu/models-intro/ (table of ops the Edge TPU
#: compiler maps to the TPU; LSTM is unidirectional only). Data, not code: update it from that
#: page when Coral revises the list.
EDGETPU_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)
EDGETPU_SOURCE = 'https://coral.ai/docs/edgetpu/models-intro/ ("Supported operations")'


def edgetpu_report(model_bytes: bytes) -> dict[str, Any]:
    """Edge TPU compatibility table of one TFLite model (ops, non-int8 tensors, dynamic shapes)."""
    from export.audit import tflite_ops, tflite_tensor_report

    ops = tflite_ops(model_bytes)
    tensors = tflite_tensor_report(model_bytes)["tensors"]
    unsupported = {op: n for op, n in sorted(ops.items()) if op not in EDGETPU_SUPPORTED_OPS}
    non_int8 = [
        {"name": t["name"], "dtype": t["dtype"]}
        for t in tensors
        if t["activation"] and t["dtype"] != "int8"
    ]
    dynamic = [
        {"name": t["name"], "shape": t["shape"]}
        for t in tensors
        if t["activation"] and any(d < 0 for d in t["shape"])
    ]
    return {
        "source": EDGETPU_SOURCE,
        "compiler_run": False,
        "ops": [
            {"op": op, "count": n, "edgetpu_supported": op in EDGETPU_SUPPORTED_OPS}
            for op, n in sorted(ops.items())
        ],
        "unsupported_ops": unsupported,
        "non_int8_activation_tensors": non_int8,
        "dynamic_shape_tensors": dynamic,
        "likely_fully_mapped": not unsupported and not non_int8 and not dynamic,
    }
