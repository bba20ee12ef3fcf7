"""What the parity report measures: its config, the pipelines and the project's targets, as data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from runtime.errors import RoiedgeError
from runtime.limits import bad_number

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"

#: A single file's mAP@0.5 and mAP@.5:.95 (fractions) may differ from its two-stage pipeline's by
#: at most this (issue 24: 0.1 pt): it chains the same stage files, only the post-processing
#: moves into the graph (float32 there, float64 in the runtime's box decoding).
SINGLE_VS_TWO_STAGE_MAX_DELTA = 0.001
#: The float32 single file's mAP may differ from float Keras's by at most this (0.05 pt).
SINGLE_FLOAT32_VS_KERAS_MAX_DELTA = 0.0005

#: Final detections at or above this score are matched against the float model's.
AGREEMENT_MIN_SCORE = 0.5
#: Log-spaced bins of the abs-error histograms (errors below the first bin are counted in it).
ERROR_BINS = np.logspace(-8, 1, 46)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A deployable combination of one backbone_rpn and one head artifact."""

    name: str
    format: str
    precision: str
    head_precision: str


#: Every pipeline the report measures (data, not flags). ``int8_io`` exists for the backbone only.
PIPELINES: tuple[Pipeline, ...] = (
    Pipeline("tflite/float32", "tflite", "float32", "float32"),
    Pipeline("tflite/float16", "tflite", "float16", "float16"),
    Pipeline("tflite/dynamic_int8", "tflite", "dynamic_int8", "dynamic_int8"),
    Pipeline("tflite/int8", "tflite", "int8", "int8"),
    Pipeline("tflite/int8_io+int8", "tflite", "int8_io", "int8"),
    Pipeline("onnx/float32", "onnx", "float32", "float32"),
    Pipeline("onnx/int8", "onnx", "int8", "int8"),
    Pipeline("tflite/mixed", "tflite", "mixed", "mixed"),
    Pipeline("onnx/mixed", "onnx", "mixed", "mixed"),
)


@dataclasses.dataclass(frozen=True)
class Targets:
    """The project's speed and size goals, reported met or missed with the margin; not tolerances."""

    head_int8_vs_keras: float = 0.5  # int8 TFLite head latency / float Keras head latency
    head_float32_vs_keras: float = 1.0
    int8_bytes_vs_float32: float = 0.3
    onnx_int8_vs_float32: float = 0.7  # per stage, onnxruntime, interleaved in one run


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """One report run; the CLI flags map 1:1 onto these fields."""

    artifacts: Path
    images: int = 500
    stage_images: int = 64
    runs: int = 50
    warmup: int = 5
    threads: int = 2
    speed_only: bool = False
    progress: bool = True
    data: Path | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for field, low, limit_name in (
            ("images", 1, "flag_images"),
            ("stage_images", 1, "flag_images"),
            ("runs", 1, "flag_runs"),
            ("warmup", 0, "flag_runs"),
            ("threads", 1, "flag_threads"),
        ):
            value = getattr(self, field)
            flag = "--" + field.replace("_", "-")
            bad = bad_number(flag, value, low, limit_name=limit_name)
            if bad or not isinstance(value, int):
                raise RoiedgeError(bad or f"{flag} is {value!r}; expected an integer")
