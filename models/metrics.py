"""COCO-style mean average precision in plain numpy (any detector, any backend).

``mean_average_precision`` takes per-image predictions and ground truth as numpy arrays, so the
float Keras detector, TFLite and ONNX pipelines are all scored by the same code. Matching follows
pycocotools' ``bbox`` evaluation: predictions of a class are taken by descending score over all
images; each is a true positive when its best-IoU still-unmatched ground-truth box of that class
in the same image has IoU >= the threshold. AP is the 101-point interpolated area under the
monotone precision envelope; classes without ground truth are left out of the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.processing import box_iou

#: IoU thresholds 0.50:0.05:0.95 as COCO defines them.
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _prediction(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(item, Mapping):
        classes = item.get("class_ids", item.get("classes", item.get("labels")))
        boxes, scores = item["boxes"], item["scores"]
    else:
        boxes, scores, classes = item
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32).reshape(-1),
        np.asarray(classes, np.int64).reshape(-1),
    )


def _ground_truth(item: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(item, Mapping):
        classes = item.get("class_ids", item.get("classes", item.get("labels")))
        boxes = item["boxes"]
    else:
        boxes, classes = item
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64).reshape(-1)


def interpolated_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP of a precision/recall curve (recall ascending)."""
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.asarray(precision, np.float64)[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.where(index < len(recall), envelope[np.minimum(index, len(recall) - 1)], 0.0)
    return float(values.mean())


def average_precision(
    predictions: Sequence[Any], ground_truths: Sequence[Any], class_id: int, iou_threshold: float
) -> float:
    """AP of one class at one IoU threshold; NaN when the class has no ground truth."""
    return float(
        mean_average_precision(predictions, ground_truths, class_id + 1, (iou_threshold,))["ap"][0][
            class_id
        ]
    )


def mean_average_precision(
    predictions: Sequence[Any],
    ground_truths: Sequence[Any],
    num_classes: int,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """COCO-style mAP over images.

    Args:
        predictions: one item per image, ``(boxes [n,4], scores [n], class_ids [n])`` or a mapping
            with ``boxes``, ``scores`` and ``class_ids`` (a ``runtime.processing.Detections`` works).
        ground_truths: one item per image, ``(boxes [m,4], class_ids [m])`` or a mapping with
            ``boxes`` and ``class_ids``. Boxes are ``[y1, x1, y2, x2]`` in any one unit.
        num_classes: K; class ids are 0..K-1.
        iou_thresholds: the IoU thresholds to average over (COCO's 0.50:0.05:0.95 by default).

    Returns:
        ``{"map": mean AP over thresholds and classes, "map50": AP at IoU 0.5 (NaN if 0.5 is not
        a threshold), "map50_95": same as "map", "per_class": {class_id: {"ap50", "ap",
        "num_gt"}}, "ap": [T][K] nested list (NaN = no ground truth), "iou_thresholds": [...]}``.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"{len(predictions)} prediction entries for {len(ground_truths)} ground-truth images"
        )
    thresholds = [float(t) for t in iou_thresholds]
    preds = [_prediction(p) for p in predictions]
    gts = [_ground_truth(g) for g in ground_truths]
    ap = np.full((len(thresholds), num_classes), np.nan)
    num_gt = np.zeros(num_classes, np.int64)
    for cls in range(num_classes):
        gt_boxes = [boxes[labels == cls] for boxes, labels in gts]
        total = sum(len(b) for b in gt_boxes)
        num_gt[cls] = total
        entries = [
            (image, score, box)
            for image, (boxes, scores, labels) in enumerate(preds)
            for box, score in zip(boxes[labels == cls], scores[labels == cls])
        ]
        order = sorted(range(len(entries)), key=lambda i: -entries[i][1])  # stable
        ious = [
            box_iou(entries[i][2][None], gt_boxes[entries[i][0]])[0]
            if len(gt_boxes[entries[i][0]])
            else np.zeros(0, np.float32)
            for i in order
        ]
        if total == 0:
            continue
        for t_index, threshold in enumerate(thresholds):
            matched = [np.zeros(len(b), bool) for b in gt_boxes]
            tp = np.zeros(len(order))
            for rank, i in enumerate(order):
                image = entries[i][0]
                candidate = np.where(matched[image], -1.0, ious[rank])
                if len(candidate) and candidate.max() >= threshold:
                    best = int(candidate.argmax())
                    matched[image][best] = True
                    tp[rank] = 1.0
            tp_cum = np.cumsum(tp)
            fp_cum = np.cumsum(1.0 - tp)
            recall = tp_cum / total
            precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)
            ap[t_index, cls] = interpolated_ap(recall, precision)
    with np.errstate(all="ignore"):
        valid = ~np.isnan(ap)
        per_threshold = [
            float(np.mean(ap[t][valid[t]])) if valid[t].any() else float("nan")
            for t in range(len(thresholds))
        ]
    overall = float(np.mean(per_threshold)) if per_threshold else float("nan")
    index50 = next((i for i, t in enumerate(thresholds) if abs(t - 0.5) < 1e-9), None)
    per_class = {}
    for cls in range(num_classes):
        column = ap[:, cls]
        per_class[cls] = {
            "ap50": float(column[index50]) if index50 is not None else float("nan"),
            "ap": float(np.mean(column)) if not np.isnan(column).any() else float("nan"),
            "num_gt": int(num_gt[cls]),
        }
    return {
        "map": overall,
        "map50": per_threshold[index50] if index50 is not None else float("nan"),
        "map50_95": overall,
        "per_class": per_class,
        "ap": ap.tolist(),
        "iou_thresholds": thresholds,
    }
