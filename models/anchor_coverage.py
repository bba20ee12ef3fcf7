"""How many ground-truth boxes the detector's anchors match, and anchor sizes chosen so most are."""

from __future__ import annotations

import numpy as np

from runtime.processing import make_anchors


def best_anchor_iou(boxes: np.ndarray, anchors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Best IoU [N] float64 of each box [N,4] (y1, x1, y2, x2 px) with any anchor [M,4] (same order).

    Anchors are taken in chunks so memory stays O(N * chunk) at real image sizes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes), dtype=np.float64)
    if len(boxes) == 0 or len(anchors) == 0:
        return best
    box_area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    for start in range(0, len(anchors), chunk):
        part = anchors[start : start + chunk]
        part_area = (part[:, 2] - part[:, 0]).clip(0) * (part[:, 3] - part[:, 1]).clip(0)
        top = np.maximum(boxes[:, None, 0], part[None, :, 0])
        left = np.maximum(boxes[:, None, 1], part[None, :, 1])
        bottom = np.minimum(boxes[:, None, 2], part[None, :, 2])
        right = np.minimum(boxes[:, None, 3], part[None, :, 3])
        inter = (bottom - top).clip(0) * (right - left).clip(0)
        union = box_area[:, None] + part_area[None, :] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        best = np.maximum(best, iou.max(axis=1))
    return best


def anchor_coverage(boxes: np.ndarray, config, min_iou: float = 0.5) -> float:
    """Fraction of boxes [N,4] (y1, x1, y2, x2 px at config.image_size) with an anchor at IoU >= min_iou.

    ``config`` is a detector config with anchor_sizes, anchor_ratios, stride and feature_size;
    an empty box set counts as fully covered (1.0).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return 1.0
    best = best_anchor_iou(boxes, make_anchors(config))
    return float(np.mean(best >= min_iou))


#: A training box counts as covered when some anchor overlaps it at this IoU or more.
COVERAGE_IOU = 0.5
#: Training warns when fewer than this fraction of the boxes are covered.
WARN_BELOW = 0.95
#: Most anchor sizes chosen from the data (anchors per cell = sizes x ratios).
MAX_CHOSEN_SIZES = 6
#: Candidate sizes are a geometric grid with this many steps per octave.
STEPS_PER_OCTAVE = 4
#: Boxes the choice looks at (a seeded sample of a larger set; memory O(boxes x 1024)).
MAX_BOXES = 2000


def _sample(boxes: np.ndarray, limit: int = MAX_BOXES) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) <= limit:
        return boxes
    pick = np.random.default_rng(0).choice(len(boxes), limit, replace=False)
    return boxes[np.sort(pick)]


def _candidate_sizes(boxes: np.ndarray, config) -> np.ndarray:
    """A geometric grid of sizes spanning the boxes' sqrt-areas, within the config's bounds."""
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]).clip(1e-3) * (boxes[:, 3] - boxes[:, 1]).clip(1e-3))
    low = max(float(sides.min()) / 1.5, 1.0)
    high = min(float(sides.max()) * 1.5, 4.0 * max(config.image_size))
    steps = max(1, int(np.ceil(np.log2(max(high / low, 1.0)) * STEPS_PER_OCTAVE)))
    return np.unique(np.round(low * 2.0 ** (np.arange(steps + 1) / STEPS_PER_OCTAVE), 1))


def nearest_cell_iou(boxes: np.ndarray, config) -> np.ndarray:
    """Best IoU [N] float64 of each box [N,4] (y1, x1, y2, x2 px) with any anchor of ``config``.

    Only the anchors of the feature cell whose centre is nearest the box's centre are compared:
    the overlap of two boxes of fixed shapes only shrinks as their centres move apart along
    either axis, so for every anchor shape the nearest centre is the best one. Equals
    :func:`best_anchor_iou` over all anchors (tested) at O(N * A) instead of O(N * h * w * A).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    fh, fw = config.feature_size
    anchors = make_anchors(config).astype(np.float64).reshape(fh, fw, -1, 4)
    row = np.clip(np.floor((boxes[:, 0] + boxes[:, 2]) / 2 / config.stride), 0, fh - 1)
    col = np.clip(np.floor((boxes[:, 1] + boxes[:, 3]) / 2 / config.stride), 0, fw - 1)
    near = anchors[row.astype(int), col.astype(int)]  # [N, A, 4]
    inter_h = np.minimum(boxes[:, None, 2], near[..., 2]) - np.maximum(
        boxes[:, None, 0], near[..., 0]
    )
    inter_w = np.minimum(boxes[:, None, 3], near[..., 3]) - np.maximum(
        boxes[:, None, 1], near[..., 1]
    )
    inter = inter_h.clip(0) * inter_w.clip(0)
    box_area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    near_area = (near[..., 2] - near[..., 0]) * (near[..., 3] - near[..., 1])
    union = box_area[:, None] + near_area - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou.max(axis=1) if len(boxes) else np.zeros(0)


def _hits(boxes: np.ndarray, config, sizes: np.ndarray, min_iou: float) -> np.ndarray:
    """[sizes, boxes] bool: the box has an anchor of that one size (any ratio) at ``min_iou``."""
    import dataclasses

    return np.stack(
        [
            nearest_cell_iou(boxes, dataclasses.replace(config, anchor_sizes=(float(size),)))
            >= min_iou
            for size in sizes
        ]
    )


def choose_anchor_sizes(boxes: np.ndarray, config, min_iou: float = COVERAGE_IOU) -> tuple:
    """Anchor sizes (px, ascending) under which the most boxes [N,4] have an anchor at ``min_iou``.

    Boxes are (y1, x1, y2, x2) pixels at ``config.image_size``; ``config``'s stride and
    anchor_ratios are kept. Greedy set cover over a geometric grid of sizes: each step adds the
    size that covers the most still-uncovered boxes, until every box any grid size can cover is
    covered (the stride caps what is reachable: a box much smaller than the stride sits between
    anchor centres) or MAX_CHOSEN_SIZES are taken. No boxes, or none reachable: the config's sizes.
    """
    boxes = _sample(boxes)
    if len(boxes) == 0:
        return tuple(config.anchor_sizes)
    candidates = _candidate_sizes(boxes, config)
    hits = _hits(boxes, config, candidates, min_iou)
    reachable = int(hits.any(axis=0).sum())
    covered = np.zeros(len(boxes), dtype=bool)
    chosen: list[float] = []
    while len(chosen) < MAX_CHOSEN_SIZES and int(covered.sum()) < reachable:
        gains = (hits & ~covered[None, :]).sum(axis=1)
        best = int(gains.argmax())
        if gains[best] == 0:
            break
        chosen.append(float(candidates[best]))
        covered |= hits[best]
    return tuple(sorted(chosen)) if chosen else tuple(config.anchor_sizes)


def coverage_report(boxes: np.ndarray, config, min_iou: float = COVERAGE_IOU) -> tuple[str, bool]:
    """(one line on how many boxes ``config``'s anchors cover, True when below WARN_BELOW)."""
    boxes = _sample(boxes)
    covered = anchor_coverage(boxes, config, min_iou)
    reachable = (
        float(_hits(boxes, config, _candidate_sizes(boxes, config), min_iou).any(axis=0).mean())
        if len(boxes)
        else 1.0
    )
    line = (
        f"anchor coverage: {100 * covered:.1f}% of {len(boxes)} training boxes have an anchor at "
        f"IoU >= {min_iou} (sizes {list(config.anchor_sizes)}, ratios "
        f"{list(config.anchor_ratios)}, stride {config.stride}; {100 * reachable:.1f}% "
        "reachable with these ratios at this stride)"
    )
    low = covered < WARN_BELOW
    if low:
        line += (
            f"; below {100 * WARN_BELOW:.0f}%: boxes without an anchor are hard for the RPN to find"
        )
    return line, low
