"""The registry of artifact builders: format -> precision -> builder, and format -> tensor specs.

It imports the target modules (:mod:`export.tflite_format`, :mod:`export.onnx_format`,
:mod:`export.mixed`); none of them imports it, so adding a target is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from export import mixed, onnx_format, tflite_format
from export.shared import BuildInput, Built

BUILDERS: dict[str, dict[str, Callable[[BuildInput], Built]]] = {
    "tflite": {**tflite_format.BUILDERS, "mixed": mixed.tflite_mixed},
    "onnx": {**onnx_format.BUILDERS, "mixed": mixed.onnx_mixed},
}
SPECS = {"tflite": tflite_format.tensor_specs, "onnx": onnx_format.tensor_specs}
