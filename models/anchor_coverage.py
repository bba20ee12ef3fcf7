"""How many ground-truth boxes the detector's anchors can match (issue 25, item 3: a first piece)."""

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
