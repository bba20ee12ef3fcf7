"""Greedy non-maximum suppression in numpy (:func:`nms`) and the box IoU it is defined by.

Boxes are ``[y1, x1, y2, x2]``. :func:`greedy_ranked` is the blocked form
:func:`runtime.processing.proposals_from_rpn` and ``detections_from_head`` run on boxes already
ranked by score. Imports numpy only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [N,M] float32 of boxes ``a`` [N,4] and ``b`` [M,4] (y1, x1, y2, x2)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    y1 = np.maximum(a[:, None, 0], b[None, :, 0])
    x1 = np.maximum(a[:, None, 1], b[None, :, 1])
    y2 = np.minimum(a[:, None, 2], b[None, :, 2])
    x2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


#: Up to this many boxes NMS works on blocks of _NMS_BLOCK candidates against the boxes still
#: undecided (64 x 1024 IoUs at most); above it, one kept box's IoU row at a time.
_NMS_MATRIX_MAX = 1024
#: 64: a full block's overlaps are settled as one 64-bit integer per row (_settle_bits).
_NMS_BLOCK = 64
#: _UPPER[i, j] is True for i < j (the block's "earlier box, later box" pairs).
_UPPER = np.triu(np.ones((_NMS_BLOCK, _NMS_BLOCK), dtype=bool), 1)
_UPPER.flags.writeable = False
_ALL_KEPT = np.ones(_NMS_BLOCK, dtype=bool)
_ALL_KEPT.flags.writeable = False
#: Multiplies coordinate rows (y1, x1, y2, x2) into (y1, x1, -y2, -x2).
_NEGATE_FAR_CORNER = np.array([[1], [1], [-1], [-1]], dtype=np.float32)
_NEGATE_FAR_CORNER.flags.writeable = False
#: Boxes at least this large keep every IoU denominator >= 1e-12 (see _IouTest).
_MIN_UNCLAMPED_AREA = 2e-12


class _IouTest(NamedTuple):
    """How :func:`_overlaps` decides ``IoU > threshold`` for one NMS call.

    ``threshold``: a Python float or int threshold as the float32 it is compared as (numpy
    compares a float32 array with a Python number in float32), anything else as given.
    The clamps of :func:`box_iou` that cannot change the answer are left out:
    ``clamp_width`` is False for a threshold >= 0. Then only the intersection's height needs
    clamping at 0: when it is <= 0 the product is +-0, and when only the width is negative the
    product is negative, so the IoU is <= 0 (or NaN) and not above the threshold, as box_iou's
    0 is not. ``clamp_union`` is False when every area is finite and >= 2e-12: the union is
    then >= 1e-12 unclamped, being the area sum minus an intersection no larger than the
    smaller area (float rounding is monotone), so at least about the larger area.
    """

    threshold: float | np.floating
    clamp_width: bool
    clamp_union: bool


def _iou_test(iou_threshold: float, large_areas: bool) -> _IouTest:
    """The :class:`_IouTest` of ``iou_threshold``; ``large_areas``: every area is finite and
    >= _MIN_UNCLAMPED_AREA."""
    threshold = np.float32(iou_threshold) if type(iou_threshold) in (float, int) else iou_threshold
    return _IouTest(threshold, not iou_threshold >= 0, not large_areas)


def _nms_rows(coords: np.ndarray, areas: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """What NMS reads of each box: [5,N] (or [6,N] with ``groups``) float32 rows (y1, x1, -y2,
    -x2, area[, group]) from ``coords`` [4,N] (y1, x1, y2, x2 rows) and ``areas`` [N]."""
    rows = np.empty((4 + (groups is not None) + 1, coords.shape[1]), dtype=np.float32)
    np.multiply(coords, _NEGATE_FAR_CORNER, out=rows[:4])
    rows[4] = areas
    if groups is not None:
        rows[5] = groups  # class ids: small integers, exact in float32
    return rows


def _overlap_block(rows: np.ndarray, cols: np.ndarray, test: _IouTest) -> np.ndarray:
    """``box_iou(row box, column box) > threshold`` [K,M] bool, entry [i, j] for (row i, col j).

    ``rows`` [C,K] / ``cols`` [C,M] from :func:`_nms_rows`.
    """
    return _overlaps(rows[:, :, None], cols[:, None, :], rows.shape[1], cols.shape[1], test)


def _overlaps(rows: np.ndarray, cols: np.ndarray, k: int, m: int, test: _IouTest) -> np.ndarray:
    """``box_iou > threshold`` [K,M] bool of ``rows`` and ``cols`` ([C,K,M] or broadcasting to
    it) of :func:`_nms_rows` values; with a 6th row, boxes of different groups never overlap.

    With the far corner negated, one maximum gives the intersection's near corner and its
    negated far corner. The same float32 operations as :func:`box_iou` up to signs (negating is
    exact, so the values agree up to the sign of zero, which no comparison sees), in one buffer
    instead of a dozen temporaries, less the clamps ``test`` leaves out. Its ``union > 0`` guard
    is left out: a positive intersection implies a positive union in float32 too, and a zero
    intersection gives IoU 0 either way (thresholds are >= 0). The clamps take arrays, not
    scalars: numpy's maximum against a broadcast scalar runs ~4x slower than against an array.
    """
    # One explicit C-ordered buffer: a result numpy allocates itself from broadcast operands
    # gets a layout that makes every later operation strided and ~4x slower.
    corners = np.empty((4, k, m), dtype=np.float32)
    np.maximum(rows[:4], cols[:4], out=corners)  # y1, x1, -y2, -x2 of the intersection
    np.add(corners[2:], corners[:2], out=corners[2:])  # -(height, width)
    inter, union = corners[0], corners[1]
    if test.clamp_width:
        corners[:2].fill(0)
        np.minimum(corners[2:], corners[:2], out=corners[2:])
    else:
        inter.fill(0)
        np.minimum(corners[2], inter, out=corners[2])
    np.multiply(corners[2], corners[3], out=inter)
    np.add(rows[4], cols[4], out=union)
    np.subtract(union, inter, out=union)
    if test.clamp_union:
        corners[2].fill(1e-12)
        np.maximum(union, corners[2], out=union)
    overlaps = np.divide(inter, union, out=inter) > test.threshold
    if len(cols) > 5:
        overlaps &= rows[5] == cols[5]
    return overlaps


def _box_areas(coords: np.ndarray) -> np.ndarray:
    """Areas [N] float32 of boxes given as ``coords`` [4,N], clamped at 0 like :func:`box_iou`."""
    return np.maximum(coords[2] - coords[0], 0) * np.maximum(coords[3] - coords[1], 0)


def _greedy_blocks(boxes: np.ndarray, test: _IouTest, limit: int) -> np.ndarray:
    """Greedy NMS of boxes already in score order -> kept ranks [M] int64.

    ``boxes`` [C,N] from :func:`_nms_rows` (with groups: boxes suppress only boxes of the same
    group, per-class NMS in one pass). Takes the next (up to) _NMS_BLOCK undecided boxes,
    settles them among themselves (their IoUs with each other), then computes the IoUs of the
    block's kept boxes only with the undecided boxes after the block and keeps those no kept
    box overlaps as the new undecided boxes: IoUs are computed for kept rows against boxes no
    kept box has suppressed yet, not for every pair.
    """
    ranks = None  # input positions of the undecided boxes; None while they are 0..N-1
    kept: list[np.ndarray] = []
    num_kept = 0
    while True:
        count = boxes.shape[1]
        size = min(count, _NMS_BLOCK)
        block = boxes[:, :size]
        overlaps = _overlap_block(block, block, test)
        if size == _NMS_BLOCK:
            winners = _settle_bits(overlaps, limit - num_kept)
        else:
            overlaps &= _UPPER[:size, :size]
            winners = _settle_block(overlaps).nonzero()[0][: limit - num_kept]
        kept.append(winners if ranks is None else ranks.take(winners))
        num_kept += len(winners)
        if size == count or num_kept >= limit:
            break
        # Every box of the block is now kept or suppressed; of the rest, keep the ones no kept
        # box of the block overlaps.
        overlaps = _overlap_block(block.take(winners, axis=1), boxes[:, size:], test)
        free = np.nonzero(~overlaps.any(axis=0))[0]
        if not len(free):
            break
        boxes = boxes[:, size:].take(free, axis=1)
        ranks = free + size if ranks is None else ranks[size:].take(free)
    return kept[0] if len(kept) == 1 else np.concatenate(kept)


def _settle_block(later_overlaps: np.ndarray) -> np.ndarray:
    """Greedy keep mask [B] bool of B boxes in score order, given ``overlaps[i, j]`` for i < j.

    Box j is kept iff no kept box i < j overlaps it. Iterating ``keep = ~any(keep[i] &
    overlaps[i])`` from all-True makes entry j final once entries < j are (after at most j + 1
    rounds), and its fixpoint is that unique greedy answer, so stopping at the first repeat is
    exact; usually it takes a few rounds, each one small matrix-vector product.
    """
    keep = _ALL_KEPT[: len(later_overlaps)]  # read-only; each round makes a new array
    while True:
        settled = keep @ later_overlaps  # overlapped by a kept earlier box
        np.logical_not(settled, out=settled)
        if settled.tobytes() == keep.tobytes():
            return keep
        keep = settled


def _settle_bits(overlaps: np.ndarray, budget: int) -> np.ndarray:
    """Greedy kept positions [M] int64 of 64 boxes in score order, at most ``budget``.

    ``overlaps`` [64,64] bool, ``overlaps[i, j]`` for box i suppressing box j; only entries
    i < j are read. Each row becomes one 64-bit integer and the greedy pass takes a few integer
    operations per kept box: faster than :func:`_settle_block`'s rounds when many boxes
    overlap, as the RPN's do.
    """
    rows = np.packbits(overlaps, axis=1, bitorder="little").view("<u8").ravel().tolist()
    # Bit j of ``undecided``: box j is neither kept nor overlapped by a kept box yet. The lowest
    # undecided box is the next kept one.
    undecided = (1 << 64) - 1
    winners = []
    while undecided and len(winners) < budget:
        lowest = undecided & -undecided
        position = lowest.bit_length() - 1
        winners.append(position)
        undecided &= ~(rows[position] | lowest)
    return np.array(winners, dtype=np.int64)


def _greedy_rows(
    coords: np.ndarray, iou_threshold: float, limit: int, groups: np.ndarray | None
) -> np.ndarray:
    """Greedy NMS like :func:`_greedy_blocks`, one kept box's IoU row at a time (large N)."""
    ranked = coords.T  # [N, 4]
    kept: list[int] = []
    suppressed = np.zeros(len(ranked), dtype=bool)
    for rank in range(len(ranked)):
        if len(kept) >= limit:
            break
        if suppressed[rank]:
            continue
        kept.append(rank)
        if rank + 1 < len(ranked):
            over = box_iou(ranked[rank : rank + 1], ranked[rank + 1 :])[0] > iou_threshold
            if groups is not None:
                over &= groups[rank + 1 :] == groups[rank]
            suppressed[rank + 1 :] |= over
    return np.asarray(kept, dtype=np.int64)


def greedy_ranked(
    coords: np.ndarray,
    iou_threshold: float,
    limit: int,
    groups: np.ndarray | None = None,
    areas: np.ndarray | None = None,
    large_areas: bool = False,
) -> np.ndarray:
    """Kept ranks [M] int64 of greedy NMS over boxes in score order.

    ``coords`` [4,N] float32: the boxes' (y1, x1, y2, x2) as rows; ``groups`` [N] small
    non-negative integers (or None): boxes suppress only boxes of their group; ``areas`` [N]
    their areas as :func:`_box_areas` computes them (up to the sign of zero), computed here if
    None; ``large_areas``: the caller knows every area is finite and >= _MIN_UNCLAMPED_AREA.
    """
    n = coords.shape[1]
    if limit <= 0 or not n:
        return np.zeros(0, np.int64)
    if n > _NMS_MATRIX_MAX:
        return _greedy_rows(coords, iou_threshold, limit, groups)
    if areas is None:
        areas = _box_areas(coords)
    boxes = _nms_rows(coords, areas, groups)
    kept = _greedy_blocks(boxes, _iou_test(iou_threshold, large_areas), limit)
    return kept.astype(np.int64, copy=False)  # nonzero's intp is 32-bit on 32-bit ARM


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_output: int | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression; indices [M] int64 of kept boxes by descending score.

    A box is dropped when its IoU with an already kept, higher-scoring box is > ``iou_threshold``.
    Ties in score keep the lower index first.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    limit = len(order) if max_output is None else int(max_output)
    return order[greedy_ranked(np.ascontiguousarray(boxes[order].T), iou_threshold, limit)]


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(-scores, kind="stable")[:k]`` [min(k,N)] int64, without sorting all N scores.

    ``scores`` [N] float32. A cut taken from a strided sample of the scores: when at least
    ``k`` scores are >= it, the top ``k`` are the scores above it plus, in index order, the first
    of those equal to it, so sorting those alone gives the same indices. Otherwise (or NaNs) all
    N are sorted.
    """
    n = scores.shape[0]
    if 0 < 4 * k < n:
        # A prime stride: the RPN's anchors repeat every A positions with different statistics.
        sample = np.sort(scores[::7])  # NaNs last; a NaN cut selects nothing: the full sort
        cut = sample[-min(len(sample), 2 * k // 7 + 1)]
        above = np.nonzero(scores > cut)[0]
        if len(above) < k:
            # Quantized (int8) scores tie a lot: many anchors share the cut's value.
            at_cut = np.nonzero(scores == cut)[0][: k - len(above)]
            above = np.concatenate([above, at_cut]) if len(at_cut) else above
        if len(above) >= k:
            return above.take(np.argsort(-scores.take(above), kind="stable")[:k])
    return np.argsort(-scores, kind="stable")[:k]
