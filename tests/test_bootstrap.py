"""Paired bootstrap intervals of mAP drops: resampled mAPs are the project's mAP of the resampled
images, identical detectors have a zero interval, a real loss fails, a tiny val set is too small."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

CLASSES = 3


def _scene(rng, images: int, jitter: float, miss: float = 0.0):
    """(detections, truths) per image: truths random boxes; detections the truths moved by
    ``jitter`` pixels (std), a fraction ``miss`` of them dropped, plus one false positive."""
    truths, detections = [], []
    for _ in range(images):
        n = int(rng.integers(1, 5))
        y, x = rng.uniform(0, 200, (2, n))
        h, w = rng.uniform(20, 60, (2, n))
        boxes = np.stack([y, x, y + h, x + w], 1).astype(np.float32)
        labels = rng.integers(0, CLASSES, n)
        truths.append((boxes, labels))
        keep = rng.uniform(size=n) >= miss
        moved = boxes[keep] + rng.normal(0, jitter, (int(keep.sum()), 4)).astype(np.float32)
        fp = np.array([[0, 0, 30, 30]], np.float32) + rng.uniform(0, 200)
        detections.append(
            (
                np.concatenate([moved, fp]),
                np.concatenate([rng.uniform(0.5, 1.0, int(keep.sum())), [rng.uniform(0, 0.6)]]),
                np.concatenate([labels[keep], rng.integers(0, CLASSES, 1)]),
            )
        )
    return detections, truths


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), images=st.integers(1, 12))
def test_resampled_map_is_the_map_of_the_resampled_images(seed, images):
    from models.metrics import (
        COCO_IOU_THRESHOLDS,
        ap_from_matches,
        image_matches,
        map50_95_of,
        mean_average_precision,
    )

    rng = np.random.default_rng(seed)
    detections, truths = _scene(rng, images, jitter=4.0, miss=0.2)
    draw = rng.integers(0, images, images)
    matches = image_matches(detections, truths, CLASSES, COCO_IOU_THRESHOLDS)
    ap, _ = ap_from_matches(matches, len(COCO_IOU_THRESHOLDS), draw)
    reference = mean_average_precision(
        [detections[i] for i in draw], [truths[i] for i in draw], CLASSES
    )
    assert map50_95_of(ap) == pytest.approx(reference["map50_95"], nan_ok=True)
    assert map50_95_of(ap[:1]) == pytest.approx(reference["map50"], nan_ok=True)


def test_identical_detectors_have_a_zero_interval_and_pass():
    from models.bootstrap import paired_drop_intervals

    detections, truths = _scene(np.random.default_rng(0), 30, jitter=3.0)
    intervals = paired_drop_intervals(detections, detections, truths, CLASSES, resamples=100)
    for interval in intervals.values():
        assert interval.drop == interval.low == interval.high == 0.0
        assert interval.verdict(0.005) == "pass"


def test_a_real_loss_fails_and_a_tiny_val_set_is_too_small_to_judge():
    from models.bootstrap import images_needed, paired_drop_intervals
    from models.metrics import mean_average_precision

    rng = np.random.default_rng(1)
    reference, truths = _scene(rng, 200, jitter=1.0)
    # the candidate: the same detections moved ~6 px more (a loss at high IoU thresholds)
    candidate = [(b + rng.normal(0, 6, b.shape).astype(np.float32), s, c) for b, s, c in reference]
    loss = paired_drop_intervals(reference, candidate, truths, CLASSES, resamples=200)["map50_95"]
    direct = (
        mean_average_precision(reference, truths, CLASSES)["map50_95"]
        - (mean_average_precision(candidate, truths, CLASSES)["map50_95"])
    )
    assert loss.drop == pytest.approx(direct) and loss.low <= loss.drop <= loss.high
    assert loss.low > 0.05 and loss.verdict(0.02) == "fail"
    # five images of a slightly different candidate: the interval cannot resolve 0.5 pt
    slight = [(b + rng.normal(0, 1.5, b.shape).astype(np.float32), s, c) for b, s, c in reference]
    few = paired_drop_intervals(reference[:5], slight[:5], truths[:5], CLASSES, resamples=200)
    interval = few["map50_95"]
    assert interval.verdict(0.005) == "too small"
    assert images_needed(interval, 0.005) > 5


def test_report_fails_a_bound_only_when_the_interval_is_past_it():
    from export.report.verdicts import map_drop_failures
    from runtime.tolerances import tolerance_for

    bound = tolerance_for("int8").max_map50_95_drop

    def row(drop, low, high):
        values = {"drop": drop, "low": low, "high": high, "images": 40, "resamples": 200}
        return {"drop_intervals": {"map50_95": values}}

    # a point drop past the bound whose interval still reaches it: not a failure, too small
    noisy = row(2 * bound, -bound, 5 * bound)
    assert map_drop_failures("int8", {}, noisy) == [] and noisy["too_small_to_judge"]
    assert map_drop_failures("int8", {}, row(3 * bound, 2 * bound, 4 * bound))
    calm = row(0.5 * bound, 0.0, bound)
    assert map_drop_failures("int8", {}, calm) == [] and "too_small_to_judge" not in calm
