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


def _row_boxes(count, step, size=10.0):
    """``count`` equal squares along x, each ``step`` right of the previous one."""
    x = np.arange(count, dtype=np.float32) * step
    return np.stack([np.zeros(count), x, np.full(count, size), x + size], 1).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "boxes"),
    [
        # Each box overlaps its next three (IoU 0.82, 0.67, 0.54 at step 1): greedy keeps every
        # fourth, a suppression chain as long as the input, across block boundaries.
        ("chain", _row_boxes(150, 1.0)),
        ("identical", np.tile(np.array([[5, 5, 50, 50]], np.float32), (130, 1))),
        ("disjoint", _row_boxes(200, 20.0)),  # nothing overlaps: every box kept, many blocks
        ("degenerate", np.zeros((70, 4), np.float32)),  # zero area everywhere: IoU 0
    ],
)
@pytest.mark.parametrize("max_output", [None, 1, 63, 64, 65, 1000])
def test_nms_structures_across_blocks(name, boxes, max_output):
    scores = np.linspace(1, 0.5, len(boxes)).astype(np.float32)  # descending: rank = index
    expected = greedy_nms_reference(boxes, scores, 0.5, max_output)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_output), expected)
    # Same boxes, shuffled and with all scores tied: ties keep the lower index first.
    order = np.random.default_rng(len(boxes)).permutation(len(boxes))
    tied = np.full(len(boxes), 0.5, np.float32)
    expected = greedy_nms_reference(boxes[order], tied, 0.5, max_output)
    np.testing.assert_array_equal(nms(boxes[order], tied, 0.5, max_output), expected)


@pytest.mark.parametrize("count", [1023, 1024, 1025])
def test_nms_both_sides_of_the_block_size_limit(count):
    rng = np.random.default_rng(count)
    centers = rng.uniform(0, 400, (count, 2))
    sizes = rng.uniform(5, 80, (count, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(np.float32)
    scores = (rng.integers(0, 50, count) / 50).astype(np.float32)
    expected = greedy_nms_reference(boxes, scores, 0.6, 100)
    np.testing.assert_array_equal(nms(boxes, scores, 0.6, 100), expected)
