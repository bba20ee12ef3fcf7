"""Op audits: every TFLite artifact uses builtin ops only; every ONNX artifact is loop-free and valid.

Each audit is a small function that raises :class:`export.config.ExportCheckError` naming the
offending op, so ``make export`` fails loudly instead of shipping an artifact that stock
tflite-runtime / ai-edge-litert / onnxruntime builds cannot run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from export.config import ExportCheckError

#: ONNX control-flow ops we refuse (edge runtimes and accelerators handle them badly or not at all).
ONNX_FORBIDDEN_OPS = ("Loop", "Scan", "If")

#: The oldest TFLite runtime every artifact must run on (tflite-runtime wheels for Raspberry Pi OS).
OLDEST_TFLITE_RUNTIME = "2.14.0"

#: TFLite builtin code of custom ops (Flex ops are custom ops named "Flex<TFOp>").
_TFLITE_CUSTOM = 32


def tflite_model(model_bytes: bytes):
    """The flatbuffer object model (``ModelT``) of a .tflite file's bytes."""
    from export.tf_private import flatbuffer_utils as _flatbuffer_utils

    flatbuffer_utils = _flatbuffer_utils()

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))


def tflite_op_name(model, opcode_index: int) -> str:
    """``CONV_2D`` for a builtin, the custom code (``FlexCropAndResize``...) for a custom op."""
    from export.tf_private import flatbuffer_utils as _flatbuffer_utils

    flatbuffer_utils = _flatbuffer_utils()

    code = model.operatorCodes[opcode_index]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == _TFLITE_CUSTOM:
        custom = code.customCode.decode() if code.customCode else "?"
        return f"CUSTOM:{custom}"
    return flatbuffer_utils.opcode_to_name(model, opcode_index) or f"BUILTIN_{builtin}"


def tflite_ops(model_bytes: bytes) -> Counter:
    """Op name -> count over every subgraph of a .tflite flatbuffer."""
    model = tflite_model(model_bytes)
    counts: Counter = Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            counts[tflite_op_name(model, op.opcodeIndex)] += 1
    return counts


def tflite_op_versions(model_bytes: bytes) -> dict[str, list[int]]:
    """Op name -> the op versions used (older runtimes reject versions newer than they know)."""
    model = tflite_model(model_bytes)
    versions: dict[str, set[int]] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = tflite_op_name(model, op.opcodeIndex)
            versions.setdefault(name, set()).add(int(model.operatorCodes[op.opcodeIndex].version))
    return {name: sorted(v) for name, v in sorted(versions.items())}


def tflite_min_runtime_version(model_bytes: bytes) -> str | None:
    """The converter's ``min_runtime_version`` metadata: the oldest TFLite that knows every op
    version used (None if the model does not carry it)."""
    model = tflite_model(model_bytes)
    for entry in model.metadata or []:
        if entry.name and entry.name.decode() == "min_runtime_version":
            data = model.buffers[entry.buffer].data
            raw = bytes(data) if data is not None else b""
            return raw.split(b"\0", 1)[0].decode("ascii", errors="replace") or None
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def check_tflite_runtime_version(
    model_bytes: bytes, what: str = "tflite model", oldest: str = OLDEST_TFLITE_RUNTIME
) -> str | None:
    """Raise ExportCheckError if the model needs a newer TFLite than ``oldest``; returns it."""
    needed = tflite_min_runtime_version(model_bytes)
    if needed is not None and _version_tuple(needed) > _version_tuple(oldest):
        versions = tflite_op_versions(model_bytes)
        newest = ", ".join(f"{op} v{max(v)}" for op, v in versions.items() if max(v) > 1)
        raise ExportCheckError(
            f"{what}: needs TFLite runtime >= {needed} (op versions: {newest}); "
            f"artifacts must run on tflite-runtime {oldest}"
        )
    return needed


def check_tflite_builtin_only(model_bytes: bytes, what: str = "tflite model") -> Counter:
    """Raise ExportCheckError if any op is custom or Flex (SELECT_TF_OPS); returns the op counts."""
    counts = tflite_ops(model_bytes)
    bad = sorted(name for name in counts if name.startswith("CUSTOM:"))
    if bad:
        names = ", ".join(n.split(":", 1)[1] for n in bad)
        flex = any(n.startswith("CUSTOM:Flex") for n in bad)
        raise ExportCheckError(
            f"{what}: uses non-builtin op(s) {names}"
            + (" (Flex/SELECT_TF_OPS)" if flex else " (custom)")
            + "; stock tflite-runtime and ai-edge-litert run builtin ops only"
        )
    return counts


def _onnx_nodes(graph) -> list[tuple[str, Any]]:
    """(path, node) for every node of ``graph`` and of its subgraphs (If/Loop bodies...)."""
    import onnx

    found = []
    for node in graph.node:
        found.append((graph.name, node))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.extend(_onnx_nodes(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    found.extend(_onnx_nodes(sub))
    return found


def onnx_ops(model) -> Counter:
    """Op type -> count over the graph and its subgraphs (domain-qualified if not ai.onnx)."""
    counts: Counter = Counter()
    for _, node in _onnx_nodes(model.graph):
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        counts[f"{domain}:{node.op_type}" if domain else node.op_type] += 1
    return counts


def check_onnx_loop_free(model, what: str = "onnx model") -> Counter:
    """Raise ExportCheckError on Loop/Scan/If or a model the full ONNX checker rejects."""
    import onnx

    for _, node in _onnx_nodes(model.graph):
        if node.op_type in ONNX_FORBIDDEN_OPS and node.domain in ("", "ai.onnx"):
            raise ExportCheckError(
                f"{what}: contains control-flow op {node.op_type} (node {node.name!r}); "
                f"artifacts must be free of {', '.join(ONNX_FORBIDDEN_OPS)}"
            )
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportCheckError(f"{what}: onnx.checker rejects it ({first})") from None
    return onnx_ops(model)


def tflite_tensor_report(model_bytes: bytes) -> dict[str, Any]:
    """Per-tensor facts an Edge TPU compatibility check needs (types, dynamic dims, constness)."""
    from export.tf_private import flatbuffer_utils as _flatbuffer_utils

    flatbuffer_utils = _flatbuffer_utils()

    model = tflite_model(model_bytes)
    tensors = []
    for subgraph in model.subgraphs:
        produced = {o for op in subgraph.operators for o in op.outputs}
        inputs = set(subgraph.inputs)
        for index, tensor in enumerate(subgraph.tensors):
            buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
            constant = bool(buffer is not None and buffer.data is not None and len(buffer.data))
            signature = (
                list(tensor.shapeSignature)
                if tensor.shapeSignature is not None
                else list(tensor.shape if tensor.shape is not None else [])
            )
            tensors.append(
                {
                    "name": tensor.name.decode() if tensor.name else f"t{index}",
                    "dtype": flatbuffer_utils.type_to_name(tensor.type).lower(),
                    "shape": signature,
                    "constant": constant or (index not in produced and index not in inputs),
                    "activation": index in produced or index in inputs,
                }
            )
    return {"tensors": tensors}
