"""The report's statistics: per-output error over samples, final-detection agreement, the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from export.report.config import ERROR_BINS


def output_statistics(errors: np.ndarray, actual: np.ndarray, reference: np.ndarray) -> dict:
    """Error statistics of one output pooled over samples: abs errors, SNR dB, cosine similarity.

    ``actual``/``reference`` are the flattened outputs (float64), ``errors`` = actual - reference.
    """
    from runtime.golden import error_metrics

    metrics = error_metrics(actual, reference)
    norms = float(np.linalg.norm(actual) * np.linalg.norm(reference))
    cosine = float(np.dot(actual, reference) / norms) if norms > 0 else float("nan")
    return {
        "max_abs": metrics.max_abs,
        "mean_abs": metrics.mean_abs,
        "p99_abs": float(np.percentile(np.abs(errors), 99)) if errors.size else 0.0,
        "snr_db": metrics.snr_db,
        "psnr_db": metrics.psnr_db,
        "cosine": cosine,
        "peak": metrics.peak,
    }


def detection_agreement(candidates: list, references: list, min_score: float) -> dict[str, float]:
    """How well final detections match the float model's, over images.

    Each item is a ``runtime.processing.Detections`` (boxes [n,4] y1x1y2x2 pixels, scores, class_ids).
    Every reference detection with score >= ``min_score`` is matched to the same-class candidate
    (any score) of highest IoU (1 for an identical box, even one without area). Returns ``mean_iou`` (0 for an unmatched reference) and
    ``matched`` (fraction with IoU >= 0.5).
    """
    from runtime.processing import box_iou

    ious = []
    for candidate, reference in zip(candidates, references):
        for box, score, cls in zip(reference.boxes, reference.scores, reference.class_ids):
            if score < min_score:
                continue
            same = candidate.boxes[candidate.class_ids == cls]
            if not len(same):
                ious.append(0.0)
                continue
            # an identical box agrees even when it has no area (keras-frcnn-style boxes rounded
            # to whole feature pixels can be 0 wide), where IoU is 0/0
            overlap = np.where(np.all(same == box, axis=1), 1.0, box_iou(box[None], same)[0])
            ious.append(float(overlap.max()))
    if not ious:
        return {"mean_iou": float("nan"), "matched": float("nan"), "references": 0}
    values = np.asarray(ious)
    return {
        "mean_iou": float(values.mean()),
        "matched": float(np.mean(values >= 0.5)),
        "references": len(ious),
    }


class OutputAccumulator:
    """Collects one output's errors over samples, for statistics and a histogram."""

    def __init__(self) -> None:
        self.actual: list[np.ndarray] = []
        self.reference: list[np.ndarray] = []

    def add(self, actual: np.ndarray, reference: np.ndarray) -> None:
        self.actual.append(np.asarray(actual, np.float64).ravel())
        self.reference.append(np.asarray(reference, np.float64).ravel())

    def result(self) -> tuple[dict, list[int]]:
        """(output_statistics, histogram counts over ERROR_BINS) of everything added."""
        actual = np.concatenate(self.actual)
        reference = np.concatenate(self.reference)
        errors = actual - reference
        counts, _ = np.histogram(np.clip(np.abs(errors), ERROR_BINS[0], ERROR_BINS[-1]), ERROR_BINS)
        return output_statistics(errors, actual, reference), counts.tolist()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, platform and library versions this report was measured with."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        "tensorflow-cpu",
        "keras",
        "ai-edge-litert",
        "onnxruntime",
        "onnx",
        "tf2onnx",
        "numpy",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
