"""runtime.processing.nms (IoU rows computed in blocks) against a brute-force greedy NMS."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.processing import nms


def greedy_nms_reference(boxes, scores, iou_threshold, max_output=None):
    """The textbook loop in float64: highest score first, drop what overlaps a kept box."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if max_output is not None and len(keep) >= max_output:
            break
        y1, x1, y2, x2 = (float(v) for v in boxes[i])
        suppressed = False
        for j in keep:
            b1, b2, b3, b4 = (float(v) for v in boxes[j])
            inter = max(min(y2, b3) - max(y1, b1), 0) * max(min(x2, b4) - max(x1, b2), 0)
            union = max(y2 - y1, 0) * max(x2 - x1, 0) + max(b3 - b1, 0) * max(b4 - b2, 0) - inter
            if union > 0 and inter / union > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
    return np.asarray(keep, np.int64)


@pytest.mark.parametrize(
    ("count", "max_output"), [(0, None), (1, 5), (17, None), (300, 64), (300, None), (1100, 64)]
)
def test_nms_matches_the_greedy_reference(count, max_output):
    rng = np.random.default_rng(count)
    centers = rng.uniform(0, 160, (count, 2))
    sizes = rng.uniform(2, 60, (count, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(np.float32)
    # Quantized scores give ties (kept lower index first) and duplicates give IoU exactly 1.
    scores = (rng.integers(0, 20, count) / 20).astype(np.float32)
    if count > 3:
        boxes[3] = boxes[2]
    # The reference is float64: with these seeds no IoU lies within float32 rounding of 0.3 or 0.7.
    for threshold in (0.3, 0.7):
        actual = nms(boxes, scores, threshold, max_output)
        expected = greedy_nms_reference(boxes, scores, threshold, max_output)
        np.testing.assert_array_equal(actual, expected)
