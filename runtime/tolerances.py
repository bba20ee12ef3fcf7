"""How far each precision may stray from the float Keras outputs: one table, read by check/export/report.

An output passes when every bound its precision sets holds (None = not checked):

* ``max_abs_error <= atol + rtol * max|reference|`` (both 0/None means no bound),
* ``snr_db >= min_snr_db`` (signal = the reference, noise = the error),
* for the head, ``top1_agreement >= min_top1_agreement`` (argmax of class_scores vs the reference),
* on the held-out split (the report), ``keras map50 - map50 <= max_map50_drop`` (mAP as a fraction:
  0.01 = one point), and likewise ``keras map50_95 - map50_95 <= max_map50_95_drop`` for the COCO
  mAP@.5:.95 (which, unlike mAP@0.5, sees boxes placed worse).

``target_snr_db`` is what a good export should reach; reports flag outputs below it, checks do not
fail on it. Numpy-free.
"""

from __future__ import annotations

import dataclasses

from runtime.errors import RoiedgeError


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The acceptance bounds of one precision against the float Keras outputs."""

    precision: str
    atol: float | None = None
    rtol: float | None = None
    min_snr_db: float | None = None
    target_snr_db: float | None = None
    min_top1_agreement: float | None = None
    max_map50_drop: float | None = None
    max_map50_95_drop: float | None = None

    def max_abs_bound(self, reference_peak: float) -> float | None:
        """The allowed max abs error for an output whose max |reference| is ``reference_peak``."""
        if self.atol is None and self.rtol is None:
            return None
        return (self.atol or 0.0) + (self.rtol or 0.0) * float(reference_peak)


TOLERANCES: tuple[Tolerance, ...] = (
    # Same maths, different kernels and summation order: float32 rounding only.
    Tolerance(
        "float32",
        atol=1e-4,
        rtol=1e-4,
        min_snr_db=60.0,
        min_top1_agreement=0.99,
        max_map50_drop=0.001,
        max_map50_95_drop=0.0005,
    ),
    # Weights (and most activations) rounded to 11-bit mantissas: ~1e-2 relative.
    Tolerance(
        "float16",
        atol=1e-3,
        rtol=1e-2,
        min_snr_db=35.0,
        target_snr_db=45.0,
        min_top1_agreement=0.97,
        max_map50_drop=0.003,
        max_map50_95_drop=0.001,
    ),
    # Quantized: judged by signal-to-noise and by the decision the head makes, not elementwise.
    # Quantized pipelines must keep their boxes: mAP@0.5 (finding the objects) may drop 0.3 pt
    # and mAP@.5:.95 (placing them) 0.5 pt. The shipped detector's int8 pipelines, 500 held-out
    # images: TFLite int8 -0.40, ONNX int8 -0.33, dynamic_int8 -0.12 pt @.5:.95, none lower
    # @0.5; other calibration draws of 300 images took TFLite int8 to -0.66/-0.70 pt on 2000
    # images (export/tflite_format.py's INT8_RECIPES), so the bound is met, not loose.
    Tolerance(
        "dynamic_int8",
        min_snr_db=20.0,
        target_snr_db=30.0,
        min_top1_agreement=0.9,
        max_map50_drop=0.003,
        max_map50_95_drop=0.005,
    ),
    Tolerance(
        "int8",
        min_snr_db=20.0,
        target_snr_db=30.0,
        min_top1_agreement=0.9,
        max_map50_drop=0.003,
        max_map50_95_drop=0.005,
    ),
    # int8 with layers kept float until the stage meets export.mixed's --target-drop (default 0.5).
    Tolerance(
        "mixed",
        min_snr_db=20.0,
        target_snr_db=30.0,
        min_top1_agreement=0.9,
        max_map50_drop=0.003,
        max_map50_95_drop=0.005,
    ),
    # Integer input and output (the Edge TPU backbone): the same int8 model, so the same bounds.
    Tolerance(
        "int8_io",
        min_snr_db=20.0,
        target_snr_db=30.0,
        min_top1_agreement=0.9,
        max_map50_drop=0.003,
        max_map50_95_drop=0.005,
    ),
)


def tolerance_for(precision: str) -> Tolerance:
    """The :class:`Tolerance` of ``precision``, or a RoiedgeError listing the known precisions."""
    for tolerance in TOLERANCES:
        if tolerance.precision == precision:
            return tolerance
    known = ", ".join(t.precision for t in TOLERANCES)
    raise RoiedgeError(f"no tolerance defined for precision {precision!r}; known: {known}")
