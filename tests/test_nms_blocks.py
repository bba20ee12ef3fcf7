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


# The NMS kernels against the code they replaced (tests/processing_reference.py): the same kept
# indices for every input, including those where the left-out clamps and the float32
# threshold could matter (zero, tiny and NaN boxes, thresholds 0, 1, negative and float64).
def _nms_cases():
    rng = np.random.default_rng(7)
    for count in (1, 2, 17, 63, 64, 65, 129, 300, 1030):
        centers = rng.uniform(0, 160, (count, 2))
        sizes = rng.uniform(0.5, 60, (count, 2))
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(np.float32)
        scores = (rng.integers(0, 12, count) / 12).astype(np.float32)  # ties
        yield f"random{count}", boxes, scores
    boxes = _row_boxes(150, 1.0)
    yield "chain", boxes, np.linspace(1, 0.5, 150).astype(np.float32)
    boxes = np.tile(np.array([[5, 5, 50, 50]], np.float32), (70, 1))
    yield "identical", boxes, np.full(70, 0.5, np.float32)
    degenerate = rng.uniform(0, 50, (90, 4)).astype(np.float32)
    degenerate[::3, 2] = degenerate[::3, 0]  # zero height
    degenerate[1::3, 3] = degenerate[1::3, 1] - 1  # negative width
    degenerate[2::9] = 0  # all-zero boxes
    yield "degenerate", degenerate, rng.random(90).astype(np.float32)
    tiny = rng.uniform(0, 1e-6, (80, 4)).astype(np.float32)  # areas below 1e-12
    tiny[:, 2:] += tiny[:, :2]
    yield "tiny", tiny, rng.random(80).astype(np.float32)
    # Nested boxes whose IoU is exactly float32(0.3), (0.5), (0.7): a float32 and a float64
    # comparison with 0.3 disagree on them.
    nested = [[0, 0, 10, 10], [0, 0, 10, 3], [0, 0, 10, 5], [0, 0, 10, 7]] * 5
    yield (
        "nested",
        np.array(nested, np.float32) + np.repeat(np.arange(5.0), 4)[:, None],
        np.linspace(1, 0.5, 20).astype(np.float32),
    )
    nan = rng.uniform(0, 50, (70, 4)).astype(np.float32)
    nan[:, 2:] += 10
    nan[::7, 1] = np.nan
    nan[3::7, 2] = np.inf
    yield "nan_inf", nan, rng.random(70).astype(np.float32)


@pytest.mark.parametrize(
    "threshold", [0.0, 0.3, 0.5, 0.7, 1.0, -0.5, np.float64(0.3), 1, np.float32(0.3)]
)
def test_nms_is_the_previous_code_bit_for_bit(threshold):
    import processing_reference as reference

    for name, boxes, scores in _nms_cases():
        for limit in (None, 1, 20, 64):
            with np.errstate(invalid="ignore"):  # the NaN and inf boxes
                expected = reference.nms(boxes, scores, threshold, limit)
                actual = nms(boxes, scores, threshold, limit)
            assert actual.dtype == expected.dtype, name
            np.testing.assert_array_equal(actual, expected, err_msg=f"{name} limit {limit}")


def test_per_group_nms_is_the_previous_code_bit_for_bit():
    import processing_reference as reference

    from runtime.nms import greedy_ranked

    rng = np.random.default_rng(11)
    for count in (5, 40, 64, 65, 200):
        centers = rng.uniform(0, 100, (count, 2))
        sizes = rng.uniform(1, 50, (count, 2))
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(np.float32)
        coords = np.ascontiguousarray(boxes.T)
        groups = rng.integers(0, 4, count)
        for threshold, limit in ((0.5, 100), (0.2, 7), (0.0, 300)):
            expected = reference._greedy_ranked(coords, threshold, limit, groups)
            actual = greedy_ranked(coords, threshold, limit, groups)
            np.testing.assert_array_equal(actual, expected, err_msg=f"{count} {threshold}")
