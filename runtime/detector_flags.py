"""The command-line flags that pick and tune the two-stage detector (``detect`` and ``stream``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that pick and tune the two-stage detector, shared by ``detect`` and ``stream``:
    --artifacts, --precision, --head-precision, --format, --backend, --score-threshold."""
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="directory written by python -m export (manifest.json and the model files) "
        "(default artifacts)",
    )
    parser.add_argument(
        "--precision",
        default="int8",
        help="precision of the backbone artifact: float32, float16, dynamic_int8, int8, int8_io "
        "or mixed, as exported (default int8; on x86-64 prefer ai-edge-litert for int8)",
    )
    parser.add_argument(
        "--head-precision",
        default=None,
        help="precision of the head artifact (default: --precision)",
    )
    parser.add_argument(
        "--format",
        default="tflite",
        choices=("tflite", "onnx"),
        help="which exported files to run: .tflite (TFLite interpreter) or .onnx (onnxruntime)",
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="TFLite interpreter: ai_edge_litert, tflite_runtime or tensorflow (default: the "
        "first of them installed)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="lowest class score reported (default: the detector config's score_threshold)",
    )
