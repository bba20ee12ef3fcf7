"""Every private or experimental TensorFlow API the export uses, behind one door.

The int8 export needs what TensorFlow's public converter does not offer: calibrating without
quantizing, then quantizing with a denylist (``mlir_quantize``, the mechanism behind
``QuantizationDebugger``'s ``denylisted_nodes``), per-tensor weight scales, freezing Keras 3
variables to constants, reading the flatbuffer. Each accessor checks that the API still has the
shape this code was written against and otherwise raises a :class:`PrivateApiError` naming the API,
the installed TensorFlow and the version it was checked with — so an upgrade fails here, once,
with a readable message (tests/test_private_apis.py smoke-tests each one).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from export.config import ExportCheckError

#: The TensorFlow release these private APIs were checked against (pinned in pyproject.toml).
CHECKED_TENSORFLOW = "2.21"

#: Converter attributes set by the export; each exists (default False) on a TFLiteConverterV2.
CONVERTER_FLAGS = (
    "_experimental_calibrate_only",
    "_experimental_disable_per_channel",
    "_experimental_disable_per_channel_quantization_for_dense_layers",
)
#: Keyword arguments of ``mlir_quantize`` the int8 export passes.
MLIR_QUANTIZE_ARGS = (
    "disable_per_channel",
    "fully_quantize",
    "enable_numeric_verify",
    "denylisted_nodes",
    "denylisted_ops",
    "input_data_type",
    "output_data_type",
)


class PrivateApiError(ExportCheckError):
    """A private TensorFlow API is missing or changed shape (a TensorFlow upgrade)."""


def check_version(api: str) -> bool:
    """Whether the installed TensorFlow is the release the private APIs were checked with.

    Another release warns (once per API) naming the API: it may still work, and the shape checks
    below fail loudly if it does not.
    """
    import tensorflow as tf

    installed = ".".join(tf.__version__.split(".")[:2])
    if installed == CHECKED_TENSORFLOW:
        return True
    if api not in _WARNED:
        _WARNED.add(api)
        warnings.warn(
            f"{api}: private TensorFlow API checked with TensorFlow {CHECKED_TENSORFLOW}, "
            f"running on {tf.__version__}",
            stacklevel=3,
        )
    return False


_WARNED: set[str] = set()


def _fail(api: str, what: str) -> PrivateApiError:
    import tensorflow as tf

    return PrivateApiError(
        f"{api}: {what} in TensorFlow {tf.__version__}; roiedge uses this private API as of "
        f"TensorFlow {CHECKED_TENSORFLOW} (update export/tf_private.py)"
    )


def set_converter_flag(converter: Any, flag: str, value: bool) -> None:
    """Set a private ``TFLiteConverter`` flag, refusing one the converter does not have.

    Setting an unknown attribute on a Python object silently succeeds, so a renamed flag would
    otherwise be ignored and the artifact built differently.
    """
    if flag not in CONVERTER_FLAGS:
        raise ValueError(f"{flag!r} is not one of the guarded converter flags {CONVERTER_FLAGS}")
    check_version(f"TFLiteConverter.{flag}")
    if not hasattr(converter, flag):
        raise _fail(f"TFLiteConverter.{flag}", "no such attribute")
    setattr(converter, flag, value)


def _private(module: str, name: str | None = None) -> Any:
    """``module`` (or its attribute ``name``), or a PrivateApiError naming what is gone."""
    import importlib

    api = f"{module}.{name}" if name else module
    check_version(api)
    try:
        imported = importlib.import_module(module)
    except ImportError:
        raise _fail(api, "module not importable") from None
    if name is None:
        return imported
    found = getattr(imported, name, None)
    if found is None:
        raise _fail(api, "no such function")
    return found


def mlir_quantize(calibrated: bytes, **kwargs: Any) -> bytes:
    """``tensorflow.lite.python.convert.mlir_quantize`` on a calibrated model (kwargs as TF's)."""
    function = _private("tensorflow.lite.python.convert", "mlir_quantize")
    parameters = inspect.signature(function).parameters
    missing = [name for name in MLIR_QUANTIZE_ARGS if name not in parameters]
    if missing:
        raise _fail("tensorflow.lite.python.convert.mlir_quantize", f"no parameter(s) {missing}")
    unknown = [name for name in kwargs if name not in MLIR_QUANTIZE_ARGS]
    if unknown:
        raise ValueError(f"mlir_quantize: unguarded keyword(s) {unknown}")
    return function(calibrated, **kwargs)


def convert_variables_to_constants_v2(concrete: Any) -> Any:
    """TensorFlow's graph freezing of a ConcreteFunction (variables become constants)."""
    module = "tensorflow.python.framework.convert_to_constants"
    return _private(module, "convert_variables_to_constants_v2")(concrete)


def flatbuffer_utils() -> Any:
    """``tensorflow.lite.tools.flatbuffer_utils`` (read a .tflite into its object API)."""
    module = _private("tensorflow.lite.tools.flatbuffer_utils")
    for name in (
        "read_model_from_bytearray",
        "convert_object_to_bytearray",
        "opcode_to_name",
        "type_to_name",
    ):
        _private("tensorflow.lite.tools.flatbuffer_utils", name)
    return module


def quantization_debugger() -> Any:
    """``tf.lite.experimental.QuantizationDebugger`` (per-layer int8 error of a debug model)."""
    import tensorflow as tf

    api = "tf.lite.experimental.QuantizationDebugger"
    check_version(api)
    debugger = getattr(getattr(tf.lite, "experimental", None), "QuantizationDebugger", None)
    if debugger is None:
        raise _fail(api, "no such class")
    for name in ("run", "layer_statistics_dump"):
        if not hasattr(debugger, name):
            raise _fail(f"{api}.{name}", "no such method")
    return debugger
