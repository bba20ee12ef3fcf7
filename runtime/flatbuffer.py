"""A cheap structural check of a ``.tflite`` file before any interpreter sees it (no dependencies).

tflite-runtime 2.14 does not verify the flatbuffer it is given: a truncated or corrupted file can
crash the process (segfault) instead of raising. This walks the parts of the TFLite schema
(tensorflow/lite/schema/schema.fbs) an interpreter dereferences -- the root Model, operator codes,
subgraphs, tensors, operators, buffers, signatures -- and checks every offset, vector and string
lies inside the file and every index points at something that exists. It reads no tensor data.
"""

from __future__ import annotations

import dataclasses
import os
import struct

from runtime.errors import ArtifactError

_IDENTIFIER = b"TFL3"
#: The custom op edgetpu_compiler puts in place of every subgraph it maps to the Edge TPU.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


class _Malformed(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class TFLiteSummary:
    """What the structural walk learned: op codes (builtin code, custom code or None), counts."""

    op_codes: tuple[tuple[int, str | None], ...]
    subgraphs: int
    tensors: int
    operators: int

    @property
    def custom_ops(self) -> tuple[str, ...]:
        """Custom op names the model uses."""
        return tuple(c for _, c in self.op_codes if c)

    @property
    def edgetpu_compiled(self) -> bool:
        """True when edgetpu_compiler has mapped part of the graph to the Edge TPU."""
        return EDGETPU_CUSTOM_OP in self.custom_ops


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def _unpack(self, fmt: str, pos: int) -> int:
        width = struct.calcsize(fmt)
        if pos < 0 or pos + width > self.size:
            raise _Malformed(f"read of {width} bytes at {pos} past the end ({self.size} bytes)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> _Table:
        vtable = pos - self._unpack("<i", pos)
        vt_len = self._unpack("<H", vtable)
        table_len = self._unpack("<H", vtable + 2)
        if vt_len < 4 or vt_len % 2 or vtable + vt_len > self.size or pos + table_len > self.size:
            raise _Malformed(f"table at {pos} has a vtable ({vt_len}, {table_len}) out of bounds")
        return _Table(self, pos, vtable, vt_len, table_len)


class _Table:
    def __init__(self, reader: _Reader, pos: int, vtable: int, vt_len: int, table_len: int):
        self.r, self.pos, self.vtable, self.vt_len, self.table_len = (
            reader,
            pos,
            vtable,
            vt_len,
            table_len,
        )

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vt_len:
            return None
        offset = self.r._unpack("<H", self.vtable + slot)
        if not offset:
            return None
        if offset + 1 > self.table_len:
            raise _Malformed(f"field {index} of the table at {self.pos} lies outside it")
        return self.pos + offset

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        pos = self._field(index)
        return default if pos is None else self.r._unpack(fmt, pos)

    def _target(self, index: int) -> int | None:
        pos = self._field(index)
        return None if pos is None else pos + self.r._unpack("<I", pos)

    def table(self, index: int) -> _Table | None:
        target = self._target(index)
        return None if target is None else self.r.table(target)

    def vector(self, index: int, width: int) -> tuple[int, int] | None:
        """(start of the elements, length) of a vector field, bounds-checked."""
        target = self._target(index)
        if target is None:
            return None
        length = self.r._unpack("<I", target)
        if target + 4 + length * width > self.r.size:
            raise _Malformed(f"vector at {target} of {length}x{width} bytes runs past the end")
        return target + 4, length

    def ints(self, index: int, fmt: str = "<i") -> list[int]:
        found = self.vector(index, struct.calcsize(fmt))
        if found is None:
            return []
        start, length = found
        width = struct.calcsize(fmt)
        return [self.r._unpack(fmt, start + i * width) for i in range(length)]

    def tables(self, index: int) -> list[_Table]:
        found = self.vector(index, 4)
        if found is None:
            return []
        start, length = found
        return [
            self.r.table(start + 4 * i + self.r._unpack("<I", start + 4 * i)) for i in range(length)
        ]

    def string(self, index: int) -> str | None:
        found = self.vector(index, 1)
        if found is None:
            return None
        start, length = found
        if start + length >= self.r.size:  # the terminating NUL must be inside the file too
            raise _Malformed(f"string at {start} runs past the end")
        return self.r.data[start : start + length].decode("utf-8", errors="replace")


def _check_indexes(values: list[int], limit: int, what: str, optional: bool = False) -> None:
    low = -1 if optional else 0
    bad = [v for v in values if not low <= v < limit]
    if bad:
        raise _Malformed(f"{what} refers to index {bad[0]} of {limit}")


def summarize_tflite(data: bytes) -> TFLiteSummary:
    """Walk ``data`` as a TFLite model -> TFLiteSummary; raises ValueError naming the first fault."""
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise ValueError(f"no TFL3 file identifier (first bytes {bytes(data[:8])!r})")
    try:
        reader = _Reader(data)
        model = reader.table(reader._unpack("<I", 0))
        op_codes = []
        for code in model.tables(1):
            builtin = max(code.scalar(0, "<b"), code.scalar(3, "<i"))
            op_codes.append((builtin, code.string(1)))
        buffers = model.tables(4)
        for number, buffer in enumerate(buffers):
            buffer.vector(0, 1)
            offset, size = buffer.scalar(1, "<Q"), buffer.scalar(2, "<Q")
            if offset > 1 and offset + size > reader.size:
                raise _Malformed(f"buffer {number} data at {offset}+{size} runs past the end")
        subgraphs = model.tables(2)
        if not subgraphs:
            raise _Malformed("the model has no subgraph")
        n_tensors = n_operators = 0
        for graph in subgraphs:
            tensors = graph.tables(0)
            for tensor in tensors:
                tensor.ints(0)
                tensor.ints(7)
                tensor.string(3)
                _check_indexes([tensor.scalar(2, "<I")], max(len(buffers), 1), "a tensor buffer")
                quantization = tensor.table(4)
                if quantization is not None:
                    for field, fmt in ((0, "<f"), (1, "<f"), (2, "<f"), (3, "<q")):
                        quantization.vector(field, struct.calcsize(fmt))
            _check_indexes(graph.ints(1), len(tensors), "a subgraph input")
            _check_indexes(graph.ints(2), len(tensors), "a subgraph output")
            operators = graph.tables(3)
            for op in operators:
                _check_indexes([op.scalar(0, "<I")], len(op_codes), "an operator's opcode")
                _check_indexes(op.ints(1), len(tensors), "an operator input", optional=True)
                _check_indexes(op.ints(2), len(tensors), "an operator output", optional=True)
                _check_indexes(op.ints(8), len(tensors), "an operator intermediate")
                op.table(4)
                op.vector(5, 1)
            graph.string(4)
            n_tensors += len(tensors)
            n_operators += len(operators)
        for signature in model.tables(7):
            signature.string(2)
            graph_index = signature.scalar(4, "<I")
            _check_indexes([graph_index], len(subgraphs), "a signature's subgraph")
            limit = len(subgraphs[graph_index].tables(0))
            for side in (0, 1):
                for tensor_map in signature.tables(side):
                    tensor_map.string(0)
                    _check_indexes([tensor_map.scalar(1, "<I")], limit, "a signature tensor")
        for metadata in model.tables(6):
            metadata.string(0)
            _check_indexes([metadata.scalar(1, "<I")], len(buffers), "a metadata buffer")
        model.ints(5)
        model.string(3)
    except (_Malformed, struct.error, RecursionError) as error:
        raise ValueError(str(error)) from None
    return TFLiteSummary(tuple(op_codes), len(subgraphs), n_tensors, n_operators)


def validate_tflite_file(path: os.PathLike) -> TFLiteSummary:
    """Structurally validate the ``.tflite`` at ``path``; ArtifactError naming it and the fault."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read it ({error.strerror or error})") from None
    return validate_tflite_bytes(data, path)


def validate_tflite_bytes(data: bytes, path: os.PathLike | str) -> TFLiteSummary:
    """Structurally validate a ``.tflite``'s content ``data`` (read from ``path``, named in errors)."""
    try:
        return summarize_tflite(data)
    except ValueError as error:
        raise ArtifactError(
            f"{path}: not a structurally valid TFLite flatbuffer ({error}); "
            "expected a complete .tflite file (re-export or re-copy it)"
        ) from None
