"""Chain several ``.tflite`` models into one by their signature names (flatbuffer surgery, no TF run).

Each piece's signature inputs are bound to an earlier piece's signature output of the same name (or
become inputs of the chained model); its outputs become available to later pieces. Where the bound
tensors' types differ, one builtin conversion op is put between them: DEQUANTIZE (int8 -> float32),
QUANTIZE (float32 -> int8, uint8 -> int8 requantization) or CAST (uint8 -> float32). The pieces'
own operators, weights and quantization parameters are copied unchanged, so a chained model
computes bit for bit what its pieces compute one after another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from export.config import ExportCheckError
from export.tf_private import flatbuffer_utils

#: TFLite BuiltinOperator codes of the conversion ops (tensorflow/lite/schema/schema.fbs).
_DEQUANTIZE, _CAST, _QUANTIZE = 6, 53, 114


@dataclasses.dataclass(frozen=True)
class GraphInput:
    """An input of the chained model: its signature name, shape, numpy dtype name and, for a
    quantized input, its (scale, zero_point)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: tuple[float, int] | None = None


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def _type_code(dtype: str) -> int:
    schema = _schema()
    return {
        "float32": schema.TensorType.FLOAT32,
        "int32": schema.TensorType.INT32,
        "uint8": schema.TensorType.UINT8,
        "int8": schema.TensorType.INT8,
    }[dtype]


class _Chain:
    """The chained model being built: one subgraph, shared buffers and operator codes."""

    def __init__(self) -> None:
        schema = _schema()
        self.schema = schema
        self.model = schema.ModelT()
        self.model.version = 3
        self.model.operatorCodes = []
        self.model.buffers = [schema.BufferT()]  # buffer 0: the empty sentinel
        self.model.metadata = []
        self.subgraph = schema.SubGraphT()
        self.subgraph.tensors, self.subgraph.operators = [], []
        self.subgraph.inputs, self.subgraph.outputs = [], []
        self.subgraph.name = "main"
        self.model.subgraphs = [self.subgraph]
        self.available: dict[str, int] = {}
        self.runtime_versions: list[str] = []

    def opcode(self, code: Any) -> int:
        key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
        for index, have in enumerate(self.model.operatorCodes):
            if (have.builtinCode, have.deprecatedBuiltinCode, have.customCode, have.version) == key:
                return index
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1

    def builtin(self, builtin_code: int, version: int) -> int:
        code = self.schema.OperatorCodeT()
        code.builtinCode = builtin_code
        code.deprecatedBuiltinCode = min(builtin_code, 127)
        code.version = version
        return self.opcode(code)

    def tensor(self, name: str, shape, type_code: int, quantization=None, data=None) -> int:
        tensor = self.schema.TensorT()
        tensor.name = name.encode()
        tensor.shape = np.asarray(shape, np.int32)
        tensor.type = type_code
        tensor.buffer = 0
        if data is not None:
            buffer = self.schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.model.buffers.append(buffer)
            tensor.buffer = len(self.model.buffers) - 1
        if quantization is not None:
            params = self.schema.QuantizationParametersT()
            params.scale = np.asarray([quantization[0]], np.float32)
            params.zeroPoint = np.asarray([quantization[1]], np.int64)
            tensor.quantization = params
        self.subgraph.tensors.append(tensor)
        return len(self.subgraph.tensors) - 1

    def operator(self, opcode: int, inputs: list[int], outputs: list[int]) -> None:
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode, inputs, outputs
        self.subgraph.operators.append(op)

    def add_input(self, spec: GraphInput) -> None:
        index = self.tensor(spec.name, spec.shape, _type_code(spec.dtype), spec.quantization)
        self.subgraph.inputs.append(index)
        self.available[spec.name] = index

    def bind(self, name: str, consumer: Any, piece: str) -> int:
        """The chained tensor a piece's input ``consumer`` (a TensorT) reads, converting types."""
        if name not in self.available:
            raise ExportCheckError(f"chaining {piece}: no earlier output named {name!r}")
        source = self.available[name]
        have = self.subgraph.tensors[source]
        if have.type == consumer.type:
            return source
        fb = flatbuffer_utils()
        pair = (fb.type_to_name(have.type), fb.type_to_name(consumer.type))
        conversions = {
            ("INT8", "FLOAT32"): (_DEQUANTIZE, 2),
            ("UINT8", "FLOAT32"): (_CAST, 1),
            ("FLOAT32", "INT8"): (_QUANTIZE, 1),
            ("UINT8", "INT8"): (_QUANTIZE, 1),
        }
        if pair not in conversions or (
            pair[0] == "UINT8" and pair[1] == "INT8" and not have.quantization
        ):
            raise ExportCheckError(f"chaining {piece}: cannot bind {name!r} {pair[0]} to {pair[1]}")
        builtin_code, version = conversions[pair]
        quantization = None
        if consumer.quantization is not None and consumer.quantization.scale is not None:
            quantization = (
                float(consumer.quantization.scale[0]),
                int(consumer.quantization.zeroPoint[0]),
            )
        converted = self.tensor(
            f"{name}_as_{pair[1].lower()}", list(consumer.shape), consumer.type, quantization
        )
        self.operator(self.builtin(builtin_code, version), [source], [converted])
        self.available[name] = converted
        return converted

    def add_piece(self, piece: str, data: bytes, renames: dict[str, str]) -> None:
        """Copy one model's subgraph, binding its signature inputs by name."""
        fb = flatbuffer_utils()
        model = fb.read_model_from_bytearray(bytearray(data))
        if len(model.subgraphs) != 1 or len(model.signatureDefs or ()) != 1:
            raise ExportCheckError(f"chaining {piece}: expected one subgraph and one signature")
        subgraph, signature = model.subgraphs[0], model.signatureDefs[0]
        tensor_map: dict[int, int] = {}
        for item in signature.inputs:
            name = renames.get(item.name.decode(), item.name.decode())
            tensor_map[item.tensorIndex] = self.bind(
                name, subgraph.tensors[item.tensorIndex], piece
            )
        buffer_map = {0: 0}
        for index, tensor in enumerate(subgraph.tensors):
            if index in tensor_map:
                continue
            if tensor.buffer not in buffer_map:
                self.model.buffers.append(model.buffers[tensor.buffer])
                buffer_map[tensor.buffer] = len(self.model.buffers) - 1
            tensor.buffer = buffer_map[tensor.buffer]
            tensor.name = f"{piece}/".encode() + tensor.name
            self.subgraph.tensors.append(tensor)
            tensor_map[index] = len(self.subgraph.tensors) - 1
        for op in subgraph.operators:
            op.opcodeIndex = self.opcode(model.operatorCodes[op.opcodeIndex])
            op.inputs = [tensor_map[i] if i >= 0 else -1 for i in op.inputs]
            op.outputs = [tensor_map[i] for i in op.outputs]
            if op.intermediates is not None:
                op.intermediates = [tensor_map[i] for i in op.intermediates]
            self.subgraph.operators.append(op)
        for item in signature.outputs:
            name = renames.get(item.name.decode(), item.name.decode())
            self.available[name] = tensor_map[item.tensorIndex]
        for entry in model.metadata or ():
            if entry.name == b"min_runtime_version":
                text = bytes(model.buffers[entry.buffer].data).split(b"\0")[0].decode()
                self.runtime_versions.append(text)

    def finish(self, outputs: Sequence[str]) -> bytes:
        schema = self.schema
        signature = schema.SignatureDefT()
        signature.signatureKey = b"serving_default"
        signature.subgraphIndex = 0
        signature.inputs, signature.outputs = [], []
        for index in self.subgraph.inputs:
            item = schema.TensorMapT()
            item.name, item.tensorIndex = self.subgraph.tensors[index].name, index
            signature.inputs.append(item)
        for name in outputs:
            index = self.available[name]
            self.subgraph.tensors[index].name = name.encode()
            self.subgraph.outputs.append(index)
            item = schema.TensorMapT()
            item.name, item.tensorIndex = name.encode(), index
            signature.outputs.append(item)
        self.model.signatureDefs = [signature]
        if self.runtime_versions:
            newest = max(self.runtime_versions, key=lambda v: tuple(int(p) for p in v.split(".")))
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(newest.encode().ljust(16, b"\0"), np.uint8)
            self.model.buffers.append(buffer)
            entry = schema.MetadataT()
            entry.name, entry.buffer = b"min_runtime_version", len(self.model.buffers) - 1
            self.model.metadata.append(entry)
        self.model.description = b"roiedge single-file detector (chained stages)"
        return bytes(flatbuffer_utils().convert_object_to_bytearray(self.model))


def chain(
    inputs: Sequence[GraphInput],
    pieces: Sequence[tuple[str, bytes, dict[str, str]]],
    outputs: Sequence[str],
) -> bytes:
    """One ``.tflite`` computing ``pieces`` (name, model bytes, signature renames) in order.

    ``inputs`` are the chained model's inputs; every piece input is bound by (renamed) signature
    name to a model input or an earlier piece's output; ``outputs`` (names) are the chained
    model's outputs, in order.
    """
    chained = _Chain()
    for spec in inputs:
        chained.add_input(spec)
    for name, data, renames in pieces:
        chained.add_piece(name, data, renames)
    return chained.finish(outputs)
