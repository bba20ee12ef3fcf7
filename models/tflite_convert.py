"""A ``tf.function`` to a TFLite flatbuffer with the converter's standard settings per precision.

Builtin ops only (``CropAndResize`` would need Flex, which tflite-runtime and ai-edge-litert
refuse), and nothing beyond each precision's documented recipe: what any user converting a model
with :class:`models.roi_pooling.RoIPooling` gets. The export has its own, richer converters
(``export.tflite_format``); this one serves the benchmarks and the layer's tests.
"""

from __future__ import annotations

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
) -> bytes:
    """The TFLite flatbuffer of ``function`` (a ``tf.function`` with an input signature).

    ``representative`` yields lists of input arrays in signature order; required for int8.
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
    return converter.convert()
