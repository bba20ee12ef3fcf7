"""The one golden judge: outputs against the float Keras reference, bounded by the tolerance table.

Every comparison of an artifact with the float Keras model goes through here: the export checking
the files it just wrote, ``python -m runtime check`` on the device and the parity report. Error
metrics are computed by :func:`error_metrics`; :func:`judge_metrics` turns them (and the head's
top-1 class agreement, and the mAP drop where one is measured) into the list of broken bounds of
:mod:`runtime.tolerances`. Numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.errors import ArtifactError, RoiedgeError
from runtime.tolerances import tolerance_for

#: The head output whose argmax is the class decision (top-1 agreement is judged on it).
CLASS_SCORES = "class_scores"


@dataclasses.dataclass(frozen=True)
class ErrorMetrics:
    """How one output differs from its reference (all samples pooled).

    ``snr_db`` = 10 log10(sum ref^2 / sum err^2); ``psnr_db`` = 20 log10(peak-to-peak of ref / RMSE);
    both +inf when the error is exactly zero. ``peak`` is max |reference|.
    """

    max_abs: float
    mean_abs: float
    snr_db: float
    psnr_db: float
    peak: float


def error_metrics(actual: np.ndarray, reference: np.ndarray) -> ErrorMetrics:
    """Compare ``actual`` with ``reference`` (same shape, any float dtype) -> ErrorMetrics."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise RoiedgeError(f"output shape {actual.shape} differs from the golden {reference.shape}")
    error = actual - reference
    if reference.size == 0:
        return ErrorMetrics(0.0, 0.0, math.inf, math.inf, 0.0)
    abs_error = np.abs(error)
    noise = float(np.sum(error**2))
    signal = float(np.sum(reference**2))
    mse = noise / error.size
    span = float(reference.max() - reference.min())
    if noise == 0.0:
        snr = psnr = math.inf
    else:
        snr = 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
        psnr = 20.0 * math.log10(span / math.sqrt(mse)) if span > 0 else -math.inf
    return ErrorMetrics(
        max_abs=float(abs_error.max()),
        mean_abs=float(abs_error.mean()),
        snr_db=snr,
        psnr_db=psnr,
        peak=float(np.abs(reference).max()),
    )


#: How far a probability row's sum may be from 1 (float32 softmax, then int8 output rounding).
PROBABILITY_SUM_SLACK = 1e-3


def class_score_output(names: Sequence[str], references: Sequence[np.ndarray]) -> int | None:
    """Index of the output whose top-1 agreement is judged: the one named :data:`CLASS_SCORES`,
    else the first whose reference values are class probabilities (softmax-like: >= 0, at least
    2 classes on the last axis, every row summing to 1 within :data:`PROBABILITY_SUM_SLACK`;
    a user head's ``dense_class`` of keras-frcnn), else None (no class decision to check)."""
    if CLASS_SCORES in names:
        return list(names).index(CLASS_SCORES)
    for index, reference in enumerate(references):
        values = np.asarray(reference, np.float64)
        if values.ndim < 1 or values.shape[-1] < 2 or values.size == 0:
            continue
        if not np.all(np.isfinite(values)) or values.min() < 0:
            continue
        if np.all(np.abs(values.sum(axis=-1) - 1.0) <= PROBABILITY_SUM_SLACK):
            return index
    return None


def top1_agreement(
    class_scores: np.ndarray, reference: np.ndarray, tie_margin: float = 0.0
) -> float:
    """Fraction of rows whose argmax over the last axis matches the reference's ([..., K+1]).

    Rows whose reference top-2 gap is at most ``tie_margin`` are not counted: an error within
    the precision's elementwise bound may flip such a near-tie, and that bound judges them.
    """
    scores = np.asarray(class_scores).reshape(-1, np.shape(class_scores)[-1])
    ref = np.asarray(reference, np.float64).reshape(-1, np.shape(reference)[-1])
    if ref.shape[-1] > 1:
        top2 = np.sort(ref, axis=-1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] > tie_margin
        scores, ref = scores[decided], ref[decided]
    a, b = scores.argmax(-1), ref.argmax(-1)
    return float(np.mean(a == b)) if a.size else 1.0


def top1_tie_margin(precision: str, reference: np.ndarray) -> float:
    """Reference top-2 gaps up to this are near-ties for ``precision``: twice its max-abs bound
    at the class scores' peak (each of the two scores may move by the bound), 0 without one."""
    peak = float(np.max(np.abs(reference))) if np.size(reference) else 0.0
    bound = tolerance_for(precision).max_abs_bound(peak)
    return 2.0 * bound if bound is not None else 0.0


def judge(precision: str, name: str, metrics: ErrorMetrics) -> tuple[str, ...]:
    """The bounds of ``precision``'s tolerance that output ``name`` with ``metrics`` breaks."""
    tolerance = tolerance_for(precision)
    failures = []
    bound = tolerance.max_abs_bound(metrics.peak)
    if bound is not None and not metrics.max_abs <= bound:
        failures.append(f"{name}: max abs error {metrics.max_abs:.3g} > {bound:.3g}")
    if tolerance.min_snr_db is not None and not metrics.snr_db >= tolerance.min_snr_db:
        failures.append(f"{name}: SNR {metrics.snr_db:.1f} dB < {tolerance.min_snr_db:.1f} dB")
    return tuple(failures)


def top1_failures(precision: str, top1: float | None) -> tuple[str, ...]:
    """The top-1 class agreement floor of ``precision``, broken or not (None = not measured)."""
    floor = tolerance_for(precision).min_top1_agreement
    if top1 is None or floor is None or top1 >= floor:
        return ()
    return (f"top-1 class agreement {top1:.3f} < {floor:.3f}",)


def map50_drop_failures(precision: str, keras_map50: float, map50: float) -> tuple[str, ...]:
    """The mAP@0.5 drop bound of ``precision`` (mAP as fractions; a NaN drop breaks it)."""
    bound = tolerance_for(precision).max_map50_drop
    drop = keras_map50 - map50
    # 1e-12: equal mAPs computed through different float sums must not fail a zero-drop bound.
    if bound is not None and not drop <= bound + 1e-12:
        return (f"mAP@0.5 drop {100 * drop:.2f} pts > {100 * bound:.2f} pts",)
    return ()


def map50_95_drop_failures(precision: str, keras_map: float, map50_95: float) -> tuple[str, ...]:
    """The mAP@.5:.95 drop bound of ``precision`` (mAP as fractions; a NaN drop breaks it)."""
    bound = tolerance_for(precision).max_map50_95_drop
    drop = keras_map - map50_95
    if bound is not None and not drop <= bound + 1e-12:
        return (f"mAP@.5:.95 drop {100 * drop:.2f} pts > {100 * bound:.2f} pts",)
    return ()


@dataclasses.dataclass(frozen=True)
class OutputResult:
    """One output of one artifact: its metrics and the bounds it broke (empty = pass).

    ``name`` is the readable output name (the TFLite signature key, else the tensor name).
    """

    name: str
    metrics: ErrorMetrics
    failures: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GoldenVerdict:
    """Every output's result, the head's top-1 agreement (None = not measured) and its failure."""

    outputs: tuple[OutputResult, ...]
    top1_agreement: float | None
    top1_failures: tuple[str, ...]

    @property
    def failures(self) -> tuple[str, ...]:
        """Every broken bound: the outputs' (each prefixed by its name), then the top-1 floor."""
        return tuple(f for o in self.outputs for f in o.failures) + self.top1_failures

    @property
    def ok(self) -> bool:
        """True when no bound is broken."""
        return not self.failures


def judge_metrics(
    precision: str, metrics: Mapping[str, ErrorMetrics], top1: float | None = None
) -> GoldenVerdict:
    """Judge already-measured per-output ``metrics`` (and the top-1 agreement) by the table."""
    outputs = tuple(OutputResult(n, m, judge(precision, n, m)) for n, m in metrics.items())
    return GoldenVerdict(outputs, top1, top1_failures(precision, top1))


def compare_outputs(
    precision: str,
    actual: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    names: Sequence[str],
    class_scores: int | None = None,
) -> GoldenVerdict:
    """Judge outputs against golden outputs (same order, samples stacked or not) by the table.

    ``class_scores`` is the index of the head's class-score output (its top-1 agreement is
    judged too), or None for a stage without one.
    """
    metrics = {n: error_metrics(a, r) for n, a, r in zip(names, actual, reference)}
    top1 = None
    if class_scores is not None:
        margin = top1_tie_margin(precision, reference[class_scores])
        top1 = top1_agreement(actual[class_scores], reference[class_scores], margin)
    return judge_metrics(precision, metrics, top1)


def golden_samples(golden: Mapping[str, np.ndarray], entry: Any, path: str) -> list[list[Any]]:
    """Golden inputs (``input_i``, one sample or several stacked) -> per-sample input lists.

    ``entry`` is a manifest ArtifactEntry (its ``inputs`` give the order and rank).
    """
    arrays = []
    for i, spec in enumerate(entry.inputs):
        key = f"input_{i}"
        if key not in golden:
            raise ArtifactError(
                f"{path}: golden data lacks {key} ({spec.name}); has {sorted(golden)}"
            )
        arrays.append(golden[key])
    stacked = arrays[0].ndim == len(entry.inputs[0].shape) + 1
    if not stacked:
        return [arrays]
    return [[a[n] for a in arrays] for n in range(arrays[0].shape[0])]
