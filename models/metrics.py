"""COCO-style mean average precision in plain numpy (any detector, any backend).

``mean_average_precision`` takes per-image predictions and ground truth as numpy arrays, so the
float Keras detector, TFLite and ONNX pipelines are all scored by the same code. Matching follows
pycocotools' ``bbox`` evaluation (area range "all", maxDets 100): per image and class, detections by descending
score each take the best-IoU still-unmatched ground-truth box with IoU >= the threshold; crowd
boxes are ignored regions (IoU = intersection / detection area, matched any number of times, and a
detection on one counts neither way). Over all images, AP is the 101-point interpolated area under
the monotone precision envelope; classes without (non-crowd) ground truth are left out of the
mean. A test checks the numbers against pycocotools' COCOeval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: IoU thresholds 0.50:0.05:0.95 as COCO defines them.
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: COCO's maxDets for the reported AP: the best 100 detections per image and class count.
MAX_DETECTIONS = 100


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


def _ground_truth(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    crowd = None
    if isinstance(item, Mapping):
        classes = item.get("class_ids", item.get("classes", item.get("labels")))
        boxes = item["boxes"]
        crowd = item.get("crowd", item.get("iscrowd"))
    elif len(item) == 3:
        boxes, classes, crowd = item
    else:
        boxes, classes = item
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
    return boxes, np.asarray(classes, np.int64).reshape(-1), crowd


def coco_iou(detections: np.ndarray, truths: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU [D,G] float64 as COCO's ``bbox`` evaluation defines it: for a crowd truth, the
    intersection over the detection's own area. Boxes ``[y1, x1, y2, x2]``."""
    d = np.asarray(detections, np.float64).reshape(-1, 4)
    g = np.asarray(truths, np.float64).reshape(-1, 4)
    area_d = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    inter_h = np.minimum(d[:, None, 2], g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0])
    inter_w = np.minimum(d[:, None, 3], g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.maximum(inter_h, 0) * np.maximum(inter_w, 0)
    union = np.where(
        np.asarray(crowd, bool)[None, :], area_d[:, None], area_d[:, None] + area_g - inter
    )
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(ious: np.ndarray, ignore: np.ndarray, thresholds: list[float]):
    """COCO's greedy matching of one image and class: detections (rows, by descending score)
    against truths (columns; ignored = crowd last). Returns matched [T,D] and ignored [T,D] bools.

    A detection takes the highest-IoU truth with IoU >= t that is unmatched (crowds may match
    many times), preferring regular truths: once it holds one, ignored truths are not tried.
    A detection matched to an ignored truth is itself ignored (neither TP nor FP).
    """
    num_det, num_gt = ious.shape
    matched = np.zeros((len(thresholds), num_det), bool)
    ignored = np.zeros((len(thresholds), num_det), bool)
    for t_index, threshold in enumerate(thresholds):
        taken = np.zeros(num_gt, bool)
        for d in range(num_det):
            best_iou = min(threshold, 1 - 1e-10)
            best = -1
            for g in range(num_gt):
                if taken[g] and not ignore[g]:
                    continue
                if best > -1 and not ignore[best] and ignore[g]:
                    break
                if ious[d, g] < best_iou:
                    continue
                best_iou = ious[d, g]
                best = g
            if best == -1:
                continue
            matched[t_index, d] = True
            ignored[t_index, d] = ignore[best]
            taken[best] = True
    return matched, ignored


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


#: Per class, per image: (detection scores [D], matched [T,D], ignored [T,D], regular truths).
ImageMatches = list[list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]]


def image_matches(
    predictions: Sequence[Any],
    ground_truths: Sequence[Any],
    num_classes: int,
    thresholds: Sequence[float],
    max_detections: int = MAX_DETECTIONS,
) -> ImageMatches:
    """COCO's per-image, per-class matching of :func:`mean_average_precision` (same inputs), kept
    per image so that a resample of the images (a bootstrap) is scored without re-matching."""
    thresholds = [float(t) for t in thresholds]
    preds = [_prediction(p) for p in predictions]
    gts = [_ground_truth(g) for g in ground_truths]
    matches: ImageMatches = []
    for cls in range(num_classes):
        per_image = []
        for (p_boxes, p_scores, p_labels), (g_boxes, g_labels, g_crowd) in zip(preds, gts):
            mine = p_labels == cls
            order = np.argsort(-p_scores[mine], kind="stable")[:max_detections]
            d_boxes, d_scores = p_boxes[mine][order], p_scores[mine][order]
            truth = g_labels == cls
            crowd = g_crowd[truth]
            gt_order = np.argsort(crowd, kind="stable")  # regular truths first, crowds last
            t_boxes, crowd = g_boxes[truth][gt_order], crowd[gt_order]
            matched, ignored = _match(coco_iou(d_boxes, t_boxes, crowd), crowd, thresholds)
            per_image.append((d_scores, matched, ignored, int((~crowd).sum())))
        matches.append(per_image)
    return matches


def ap_from_matches(
    matches: ImageMatches, num_thresholds: int, images: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(AP [T,K] with NaN for classes without truth, regular truths per class [K]) over the
    images ``images`` (indexes into the matched images, repeats allowed; None = all)."""
    num_classes = len(matches)
    ap = np.full((num_thresholds, num_classes), np.nan)
    num_gt = np.zeros(num_classes, np.int64)
    for cls, per_image in enumerate(matches):
        chosen = per_image if images is None else [per_image[i] for i in images]
        total = int(sum(item[3] for item in chosen))
        num_gt[cls] = total
        if total == 0:
            continue
        scores = np.concatenate([item[0] for item in chosen])
        rank = np.argsort(-scores, kind="stable")
        matched = np.concatenate([item[1] for item in chosen], axis=1)[:, rank]
        ignored = np.concatenate([item[2] for item in chosen], axis=1)[:, rank]
        for t_index in range(num_thresholds):
            tp_cum = np.cumsum(matched[t_index] & ~ignored[t_index]).astype(np.float64)
            fp_cum = np.cumsum(~matched[t_index] & ~ignored[t_index]).astype(np.float64)
            recall = tp_cum / total
            # COCO adds eps to the denominator; max() gives the same 0 for no counted detections
            # and keeps exact fractions (1/1 == 1.0) otherwise
            precision = tp_cum / np.maximum(tp_cum + fp_cum, np.spacing(1))
            ap[t_index, cls] = interpolated_ap(recall, precision)
    return ap, num_gt


def map50_95_of(ap: np.ndarray) -> float:
    """mAP@.5:.95 of an AP [T,K] table as :func:`mean_average_precision` averages it (per
    threshold over the classes with truth, then over thresholds)."""
    with np.errstate(all="ignore"):
        valid = ~np.isnan(ap)
        per_threshold = [
            float(np.mean(ap[t][valid[t]])) if valid[t].any() else np.nan for t in range(len(ap))
        ]
    return float(np.mean(per_threshold)) if per_threshold else float("nan")


def mean_average_precision(
    predictions: Sequence[Any],
    ground_truths: Sequence[Any],
    num_classes: int,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_detections: int = MAX_DETECTIONS,
) -> dict[str, Any]:
    """COCO mAP over images (pycocotools' ``bbox`` COCOeval, area range "all").

    Args:
        predictions: one item per image, ``(boxes [n,4], scores [n], class_ids [n])`` or a mapping
            with ``boxes``, ``scores`` and ``class_ids`` (a ``runtime.processing.Detections`` works).
        ground_truths: one item per image, ``(boxes [m,4], class_ids [m][, crowd [m]])`` or a
            mapping with ``boxes``, ``class_ids`` and optionally ``crowd`` (bool). Boxes are
            ``[y1, x1, y2, x2]`` in any one unit. Crowd boxes are ignored regions, as in COCO.
        num_classes: K; class ids are 0..K-1.
        iou_thresholds: the IoU thresholds to average over (COCO's 0.50:0.05:0.95 by default).
        max_detections: per image and class, only the best this many count (COCO's maxDets).

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
    matches = image_matches(predictions, ground_truths, num_classes, thresholds, max_detections)
    ap, num_gt = ap_from_matches(matches, len(thresholds))
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
