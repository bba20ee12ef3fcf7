"""A ``tf.function`` to a TFLite flatbuffer with the converter's standard settings per precision.

Builtin ops only (``CropAndResize`` would need Flex, which tflite-runtime and ai-edge-litert
refuse), and nothing beyond each precision's documented recipe: what any user converting a model
with :class:`models.roi_pooling.RoIPooling` gets. The export has its own, richer converters
(``export.tflite_format``); this one serves the benchmarks and the layer's tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from runtime.errors import RoiedgeError

#: float32: no optimization; float16: float16 constants; int8: full-integer (Optimize.DEFAULT +
#: a representative dataset), float input and output.
PRECISIONS = ("float32", "float16", "int8")


def convert_function(
    function,
    precision: str,
    representative: Callable[[], Iterable[Sequence[np.ndarray]]] | None = None,
    share_ranges: bool = True,
) -> bytes:
    """The TFLite flatbuffer of ``function`` (a ``tf.function`` with an input signature).

    ``representative`` yields lists of input arrays in signature order; required for int8.
    int8 models get :func:`share_tile_ranges` unless ``share_ranges`` is False (to measure it).
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise RoiedgeError(f"TFLite precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and representative is None:
        raise RoiedgeError("TFLite int8 conversion needs a representative dataset, got None")
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        return share_tile_ranges(converter.convert()) if share_ranges else converter.convert()
    return converter.convert()


_INT8 = 9  # schema TensorType.INT8
#: TFLite builtin op codes whose int8 kernels require input 0 and the outputs at one scale.
_SAME_SCALE_OPS = frozenset(
    {
        1,  # AVERAGE_POOL_2D
        2,  # CONCATENATION
        17,  # MAX_POOL_2D
        22,  # RESHAPE
        36,  # GATHER
        39,  # TRANSPOSE
        43,  # SQUEEZE
        45,  # STRIDED_SLICE
        49,  # SPLIT
        65,  # SLICE
        102,  # SPLIT_V
    }
)


def share_tile_ranges(model: bytes) -> bytes:
    """An int8 TFLite model whose tiled-RoIPooling tensors of one role share one range.

    Full-int8 conversion calibrates every tensor on its own, so the MUL of tile 3 gets the range
    its few RoIs happened to reach in calibration and clips a larger product later (errors ~0.04
    on unit features where one untiled tensor gives ~0.015). Here every int8 tensor named
    ``...roi_tile_<k>/<role>`` gets the union of the ranges of ``<role>`` over all tiles ``k``:
    the range one untiled tensor would have been calibrated to. Every int8 kernel reads its
    input and output scales from the tensors when it is prepared, so widening the scale of a
    tensor between two ops is exact for both; tensors of one role that already agree (GATHER
    and MAX_POOL_2D outputs, tied by the converter to the table and the output) are untouched,
    and so are constants (their stored values would change meaning). Returns ``model`` itself if it has no such tensors.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    from models.roi_lowerings import TILE_SCOPE  # imports TensorFlow: only when used

    # ``<prefix>roi_tile_<k>/<role>``: tensor ``<role>`` of tile ``k`` of a tiled RoIPooling.
    tile_tensor = re.compile(re.escape(TILE_SCOPE) + r"(\d+)/")
    parsed = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in parsed.operatorCodes]
    changed = False
    for graph in parsed.subgraphs:
        # Ops whose int8 kernels need their data input and output at one scale (XNNPACK refuses
        # the model otherwise, e.g. a STRIDED_SLICE of fixed_point_tiled's per-tile weights):
        # their tensors keep the converter's ranges, which it already tied.
        tied = {
            index
            for op in graph.operators
            if codes[op.opcodeIndex] in _SAME_SCALE_OPS
            for index in (op.inputs[0], *op.outputs)
        }
        roles: dict[str, list] = {}
        for index, tensor in enumerate(graph.tensors):
            if index in tied:
                continue
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            quantization = tensor.quantization
            if tensor.type != _INT8 or quantization is None or quantization.scale is None:
                continue
            if len(quantization.scale) != 1 or not tile_tensor.search(name):
                continue
            buffer = parsed.buffers[tensor.buffer] if tensor.buffer else None
            if buffer is not None and buffer.data is not None and len(buffer.data):
                continue  # a constant: its stored int8 values mean what its scale says
            role = tile_tensor.sub(f"{TILE_SCOPE}*/", name)
            roles.setdefault(role, []).append(quantization)
        for quantizations in roles.values():
            params = {(float(q.scale[0]), int(q.zeroPoint[0])) for q in quantizations}
            if len(quantizations) < 2 or len(params) == 1:
                continue
            # Each tensor's real range [(-128 - z) * s, (127 - z) * s], then their union.
            low = min((-128 - zero) * scale for scale, zero in params)
            high = max((127 - zero) * scale for scale, zero in params)
            low, high = min(low, 0.0), max(high, 0.0)
            scale = (high - low) / 255.0
            zero = int(np.clip(round(-128 - low / scale), -128, 127))
            for q in quantizations:
                q.scale = [np.float32(scale)]
                q.zeroPoint = [zero]
            changed = True
    if not changed:
        return model
    return bytes(flatbuffer_utils.convert_object_to_bytearray(parsed))
