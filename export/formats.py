"""The table of artifacts ``make export`` can build: one row per (model, format, precision), as data.

Every other module looks rows up here by name; nothing is selected by position. A row names the
file it produces and the small function (in :mod:`export.tflite_format` or
:mod:`export.onnx_format`) that builds it.
"""

from __future__ import annotations

import dataclasses

from runtime.manifest import FORMAT_PRECISIONS, MODELS

#: One pinned ONNX opset for every ONNX artifact.
ONNX_OPSET = 17


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    """One artifact: which stage, which format/precision, the file name it is written to."""

    model: str
    format: str
    precision: str
    filename: str
    description: str

    @property
    def name(self) -> str:
        """Stable artifact id used in the manifest, e.g. ``head/tflite/int8``."""
        return f"{self.model}/{self.format}/{self.precision}"

    @property
    def quantized(self) -> bool:
        """True for integer-quantized artifacts (needs calibration data, compared by SNR)."""
        return self.precision in ("dynamic_int8", "int8", "int8_io")


def _row(model: str, fmt: str, precision: str, description: str) -> ArtifactSpec:
    ext = {"tflite": "tflite", "onnx": "onnx"}[fmt]
    return ArtifactSpec(model, fmt, precision, f"{model}.{precision}.{ext}", description)


#: What each (format, precision) is; the precisions themselves are runtime.manifest's.
_DESCRIPTIONS = {
    ("tflite", "float32"): "float32 weights and activations",
    ("tflite", "float16"): "float16 weights, float32 compute",
    ("tflite", "dynamic_int8"): "int8 weights, activations quantized on the fly (dynamic range)",
    ("tflite", "int8"): "full integer with a representative dataset; float32 inputs/outputs",
    ("tflite", "int8_io"): "Edge TPU-ready: TFLITE_BUILTINS_INT8 only, int8 inputs/outputs",
    ("onnx", "float32"): f"tf2onnx, opset {ONNX_OPSET}",
    ("onnx", "int8"): "QDQ static quantization (onnxruntime), same calibration data",
}
#: int8 inputs would quantize the head's box coordinates, so only the backbone gets int8_io.
_BACKBONE_ONLY = ("int8_io",)

#: Every artifact, in build order.
ARTIFACTS: tuple[ArtifactSpec, ...] = (
    *(
        _row(m, "tflite", p, _DESCRIPTIONS["tflite", p])
        for m in MODELS
        for p in FORMAT_PRECISIONS["tflite"]
        if p not in _BACKBONE_ONLY
    ),
    *(_row("backbone_rpn", "tflite", p, _DESCRIPTIONS["tflite", p]) for p in _BACKBONE_ONLY),
    *(
        _row(m, "onnx", p, _DESCRIPTIONS["onnx", p])
        for m in MODELS
        for p in FORMAT_PRECISIONS["onnx"]
    ),
)

PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(a.precision for a in ARTIFACTS))


def model_artifacts(model: str) -> tuple[ArtifactSpec, ...]:
    """The table's rows for any Keras model (``export --keras-model``): every TFLite precision
    but the detector backbone's Edge TPU ``int8_io``, and both ONNX precisions."""
    return tuple(
        dataclasses.replace(a, model=model, filename=a.filename.replace(a.model, model, 1))
        for a in ARTIFACTS
        if a.model == "head"
    )


def find_spec(model: str, format: str, precision: str) -> ArtifactSpec:
    """The row for one (model, format, precision); KeyError if the table has none."""
    for spec in ARTIFACTS:
        if (spec.model, spec.format, spec.precision) == (model, format, precision):
            return spec
    raise KeyError(f"{model}/{format}/{precision}")
