"""Paired bootstrap intervals of mAP differences over images: noise or loss?

Two detectors scored on the same val images differ by a mAP delta that is partly the images'
luck. Resampling the images with replacement (the same draw for both detectors) and recomputing
both mAPs with the project's own COCO mAP (:mod:`models.metrics`, equal to pycocotools) gives the
delta's sampling distribution; its 2.5/97.5 percentiles are the 95% interval. A drop bound then
fails only when the whole interval is past it, and a val set whose interval is wider than the
bound on either side cannot tell a bound-sized loss from none ("too small to judge").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.metrics import COCO_IOU_THRESHOLDS, ap_from_matches, image_matches, map50_95_of

#: Resamples of the paired bootstrap (~2 s per report row at 200 images on 2 loaded cores;
#: the 2.5/97.5 percentiles of 200 resamples move by a fraction of the interval's width between
#: seeds), and its seed (fixed: the same report twice gives the same intervals).
RESAMPLES = 200
SEED = 0
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class DropInterval:
    """A mAP drop (reference - candidate, fractions) with its paired bootstrap interval."""

    drop: float
    low: float
    high: float
    images: int
    resamples: int

    def verdict(self, bound: float | None) -> str:
        """ "pass", "fail" (the whole interval past ``bound``) or "too small" (the interval's
        half-width exceeds the bound: the val set cannot resolve it); "pass" without a bound."""
        if bound is None:
            return "pass"
        if self.low > bound + 1e-12:
            return "fail"
        if (self.high - self.low) / 2.0 > bound:
            return "too small"
        return "pass"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _maps(matches, images=None) -> tuple[float, float]:
    """(mAP@0.5, mAP@.5:.95) of matched images (threshold 0 is IoU 0.5)."""
    ap, _ = ap_from_matches(matches, len(COCO_IOU_THRESHOLDS), images)
    return map50_95_of(ap[:1]), map50_95_of(ap)


def paired_drop_intervals(
    reference: Sequence[Any],
    candidate: Sequence[Any],
    truths: Sequence[Any],
    num_classes: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, DropInterval]:
    """{"map50": ..., "map50_95": ...} drops of ``candidate`` against ``reference`` detections
    (one item per image each, as :func:`models.metrics.mean_average_precision` takes them) on
    ``truths``, with paired bootstrap intervals over images."""
    if not (len(reference) == len(candidate) == len(truths)):
        raise ValueError(
            f"{len(reference)} reference, {len(candidate)} candidate detections for "
            f"{len(truths)} images"
        )
    thresholds = COCO_IOU_THRESHOLDS
    ref = image_matches(reference, truths, num_classes, thresholds)
    cand = image_matches(candidate, truths, num_classes, thresholds)
    return paired_drop_intervals_from_matches(ref, cand, len(truths), resamples, seed, confidence)


def paired_drop_intervals_from_matches(
    ref, cand, images: int, resamples: int = RESAMPLES, seed: int = SEED, confidence=CONFIDENCE
) -> dict[str, DropInterval]:
    """:func:`paired_drop_intervals` from :func:`models.metrics.image_matches` of both."""
    point = np.subtract(_maps(ref), _maps(cand))
    rng = np.random.default_rng(seed)
    drops = np.empty((resamples, 2))
    for r in range(resamples):
        draw = rng.integers(0, images, images)
        drops[r] = np.subtract(_maps(ref, draw), _maps(cand, draw))
    tail = 100.0 * (1.0 - confidence) / 2.0
    low = np.nanpercentile(drops, tail, axis=0)
    high = np.nanpercentile(drops, 100.0 - tail, axis=0)
    return {
        name: DropInterval(float(point[j]), float(low[j]), float(high[j]), images, resamples)
        for j, name in enumerate(("map50", "map50_95"))
    }


def images_needed(interval: DropInterval, bound: float) -> int | None:
    """Val images for the interval's half-width to shrink to ``bound`` (a half-width falls as
    1/sqrt(images)); None when it already is that narrow or there is no bound."""
    half = (interval.high - interval.low) / 2.0
    if bound is None or bound <= 0 or half <= bound:
        return None
    return int(np.ceil(interval.images * (half / bound) ** 2))
