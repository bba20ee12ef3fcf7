"""Numpy pre- and post-processing of the two-stage detector, shared by the device and the Keras side.

The detector runs as two models (see ``DetectorConfig``):

1. ``backbone_rpn``: ``image`` [1,H,W,3] float32 in [0,255] -> ``features`` [1,h,w,C],
   ``rpn_scores`` [1,N] (sigmoid objectness), ``rpn_deltas`` [1,N,4]; N = h*w*A anchors.
2. ``head``: ``features``, ``proposals`` [P,4] normalized, ``box_indexes`` [P] int32 ->
   ``class_scores`` [P,K+1] (softmax, column 0 = background), ``box_deltas`` [P,K,4].

Between and after them: :func:`preprocess`, :func:`proposals_from_rpn`, :func:`detections_from_head`.
Boxes are always ``[y1, x1, y2, x2]``; deltas are ``(ty, tx, th, tw)`` multiplied by
``config.box_coder_scales``. Anchors are ordered row-major over the feature map (y, then x), then
by anchor size, then by ratio (ratio = height / width) -- the order of the flattened RPN outputs.
Imports numpy only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError

# Largest log-scale a delta may apply (as in Detectron): exp(4.135) ~ 62x.
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)


class Detection(NamedTuple):
    """One detected object: ``box`` (y1, x1, y2, x2) in image pixels, its score and class."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    class_name: str


class Detections(NamedTuple):
    """All detections of one image, sorted by descending score.

    ``boxes`` [D,4] float32 pixels (y1, x1, y2, x2); ``scores`` [D] float32; ``class_ids`` [D] int32
    in 0..K-1 (indexes of ``config.class_names``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def to_list(self, class_names: tuple[str, ...]) -> list[Detection]:
        """The detections as a list of :class:`Detection`, names from ``class_names``."""
        return [
            Detection(tuple(float(v) for v in box), float(score), int(cls), class_names[int(cls)])
            for box, score, cls in zip(self.boxes, self.scores, self.class_ids)
        ]


class Proposals(NamedTuple):
    """The head's inputs from the RPN.

    ``proposals`` [P,4] float32 normalized (y1, x1, y2, x2) -- rows >= ``num_valid`` are zero padding;
    ``box_indexes`` [P] int32 (all 0, batch 1); ``num_valid`` how many leading rows are real.
    """

    proposals: np.ndarray
    box_indexes: np.ndarray
    num_valid: int


def preprocess(image: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """An HxWx3 uint8 RGB image -> the ``image`` tensor [1,H,W,3] float32 in [0,255].

    The pixel normalisation happens inside the model, so this only checks the shape and casts.
    """
    image = np.asarray(image)
    expected = (*config.image_size, 3)
    if image.shape != expected:
        raise RoiedgeError(
            f"image has shape {image.shape}; expected {expected} (H, W, RGB) for this detector"
        )
    if image.dtype != np.uint8:
        raise RoiedgeError(f"image has dtype {image.dtype}; expected uint8 pixels")
    return image.astype(np.float32)[None]


def make_anchors(config: DetectorConfig) -> np.ndarray:
    """All anchors [h*w*A, 4] float32 in pixels (y1, x1, y2, x2), in the RPN outputs' order."""
    h, w = config.feature_size
    stride = config.stride
    shapes = []
    for size in config.anchor_sizes:
        for ratio in config.anchor_ratios:
            shapes.append((size * math.sqrt(ratio), size / math.sqrt(ratio)))
    shapes_arr = np.asarray(shapes, dtype=np.float64)  # [A, 2] (height, width)
    cy = (np.arange(h, dtype=np.float64) + 0.5) * stride
    cx = (np.arange(w, dtype=np.float64) + 0.5) * stride
    cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [h, w]
    centers = np.stack([cy, cx], axis=-1)[:, :, None, :]  # [h, w, 1, 2]
    half = shapes_arr[None, None, :, :] / 2.0  # [1, 1, A, 2]
    anchors = np.concatenate([centers - half, centers + half], axis=-1)  # [h, w, A, 4]
    return anchors.reshape(-1, 4).astype(np.float32)


def encode_boxes(
    boxes: np.ndarray, anchors: np.ndarray, scales: tuple[float, float, float, float]
) -> np.ndarray:
    """Deltas [N,4] (ty, tx, th, tw) * scales that turn ``anchors`` [N,4] into ``boxes`` [N,4]."""
    boxes = np.asarray(boxes, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64)
    ah = np.maximum(anchors[:, 2] - anchors[:, 0], 1e-6)
    aw = np.maximum(anchors[:, 3] - anchors[:, 1], 1e-6)
    ay = anchors[:, 0] + 0.5 * ah
    ax = anchors[:, 1] + 0.5 * aw
    bh = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    bw = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    by = boxes[:, 0] + 0.5 * bh
    bx = boxes[:, 1] + 0.5 * bw
    deltas = np.stack([(by - ay) / ah, (bx - ax) / aw, np.log(bh / ah), np.log(bw / aw)], axis=-1)
    return (deltas * np.asarray(scales, dtype=np.float64)).astype(np.float32)


def decode_boxes(
    deltas: np.ndarray, anchors: np.ndarray, scales: tuple[float, float, float, float]
) -> np.ndarray:
    """Boxes [...,4] from ``deltas`` [...,4] applied to ``anchors`` [...,4] (same units as anchors)."""
    deltas = np.asarray(deltas, dtype=np.float64) / np.asarray(scales, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64)
    ah = anchors[..., 2] - anchors[..., 0]
    aw = anchors[..., 3] - anchors[..., 1]
    ay = anchors[..., 0] + 0.5 * ah
    ax = anchors[..., 1] + 0.5 * aw
    th = np.minimum(deltas[..., 2], _MAX_LOG_SCALE)
    tw = np.minimum(deltas[..., 3], _MAX_LOG_SCALE)
    cy = ay + deltas[..., 0] * ah
    cx = ax + deltas[..., 1] * aw
    h = ah * np.exp(th)
    w = aw * np.exp(tw)
    boxes = np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
    return boxes.astype(np.float32)


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``boxes`` [...,4] in pixels clipped to the image (0..H, 0..W)."""
    height, width = image_size
    limits = np.asarray([height, width, height, width], dtype=np.float32)
    return np.clip(boxes, 0.0, limits).astype(np.float32)


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


#: Up to this many boxes NMS computes IoU rows in blocks of _NMS_BLOCK (64 x 1024 at most).
_NMS_MATRIX_MAX = 1024
_NMS_BLOCK = 64


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
    if len(order) <= _NMS_MATRIX_MAX:
        # IoU rows in blocks, in score order, computed when a kept box first needs one: the same
        # pairwise IoUs as the row-by-row form below with one box_iou call per block instead of
        # per kept box (the RPN's 300 boxes: that loop was a third of the int8 pipeline's time).
        ranked = boxes[order]
        kept_ranks: list[int] = []
        suppressed_ranks = np.zeros(len(order), dtype=bool)
        block_start, overlaps = 0, np.zeros((0, len(order)), dtype=bool)
        for rank in range(len(order)):
            if len(kept_ranks) >= limit:
                break
            if suppressed_ranks[rank]:
                continue
            kept_ranks.append(rank)
            if rank >= block_start + len(overlaps):
                block_start = rank
                rows = ranked[rank : rank + _NMS_BLOCK]
                overlaps = box_iou(rows, ranked) > iou_threshold
            suppressed_ranks |= overlaps[rank - block_start]  # earlier ranks are decided
        return order[kept_ranks].astype(np.int64)
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for rank, index in enumerate(order):
        if len(keep) >= limit:
            break
        if suppressed[rank]:
            continue
        keep.append(int(index))
        rest = order[rank + 1 :]
        if len(rest):
            ious = box_iou(boxes[index : index + 1], boxes[rest])[0]
            suppressed[rank + 1 :] |= ious > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def proposals_from_rpn(
    rpn_scores: np.ndarray,
    rpn_deltas: np.ndarray,
    config: DetectorConfig,
    anchors: np.ndarray | None = None,
) -> Proposals:
    """The RPN outputs -> the head's ``proposals`` [P,4] normalized + ``box_indexes`` [P] int32.

    ``rpn_scores`` [1,N] or [N] float32 objectness; ``rpn_deltas`` [1,N,4] or [N,4]; ``anchors``
    from :func:`make_anchors` (computed if not given). Keeps the ``rpn_pre_nms_top_n`` best
    anchors, decodes and clips them, drops boxes smaller than ``rpn_min_size`` pixels, applies
    NMS at ``rpn_nms_iou`` and pads the best ``num_proposals`` with zero rows.
    """
    scores = np.asarray(rpn_scores, dtype=np.float32).reshape(-1)
    deltas = np.asarray(rpn_deltas, dtype=np.float32).reshape(-1, 4)
    if anchors is None:
        anchors = make_anchors(config)
    if scores.shape[0] != anchors.shape[0] or deltas.shape[0] != anchors.shape[0]:
        raise RoiedgeError(
            f"RPN outputs have {scores.shape[0]} scores and {deltas.shape[0]} deltas; expected "
            f"{anchors.shape[0]} (one per anchor of this config)"
        )
    top = np.argsort(-scores, kind="stable")[: config.rpn_pre_nms_top_n]
    boxes = clip_boxes(
        decode_boxes(deltas[top], anchors[top], config.box_coder_scales), config.image_size
    )
    top_scores = scores[top]
    big = ((boxes[:, 2] - boxes[:, 0]) >= config.rpn_min_size) & (
        (boxes[:, 3] - boxes[:, 1]) >= config.rpn_min_size
    )
    boxes, top_scores = boxes[big], top_scores[big]
    keep = nms(boxes, top_scores, config.rpn_nms_iou, config.num_proposals)
    height, width = config.image_size
    proposals = np.zeros((config.num_proposals, 4), dtype=np.float32)
    proposals[: len(keep)] = boxes[keep] / np.asarray([height, width, height, width], np.float32)
    box_indexes = np.zeros((config.num_proposals,), dtype=np.int32)
    return Proposals(proposals, box_indexes, len(keep))


def detections_from_head(
    class_scores: np.ndarray,
    box_deltas: np.ndarray,
    proposals: np.ndarray,
    num_valid: int,
    config: DetectorConfig,
) -> Detections:
    """The head outputs -> final detections in image pixels.

    ``class_scores`` [P,K+1] softmax (column 0 background); ``box_deltas`` [P,K,4];
    ``proposals`` [P,4] normalized, of which the first ``num_valid`` rows are real.
    Decodes each class's box from its proposal, keeps scores >= ``score_threshold``, runs NMS per
    class at ``nms_iou`` and returns at most ``max_detections`` by descending score.
    """
    num_classes = config.num_classes
    class_scores = np.asarray(class_scores, dtype=np.float32)
    box_deltas = np.asarray(box_deltas, dtype=np.float32)
    proposals = np.asarray(proposals, dtype=np.float32)
    p = proposals.shape[0]
    if class_scores.shape != (p, num_classes + 1) or box_deltas.shape != (p, num_classes, 4):
        raise RoiedgeError(
            f"head outputs have shapes {class_scores.shape} and {box_deltas.shape}; expected "
            f"{(p, num_classes + 1)} and {(p, num_classes, 4)}"
        )
    n = int(min(max(num_valid, 0), p))
    height, width = config.image_size
    scale = np.asarray([height, width, height, width], dtype=np.float32)
    rois = proposals[:n] * scale  # [n, 4] pixels
    all_boxes, all_scores, all_classes = [], [], []
    for cls in range(num_classes):
        scores = class_scores[:n, cls + 1]
        keep = scores >= config.score_threshold
        if not keep.any():
            continue
        boxes = decode_boxes(box_deltas[:n, cls][keep], rois[keep], config.box_coder_scales)
        boxes = clip_boxes(boxes, config.image_size)
        scores = scores[keep]
        kept = nms(boxes, scores, config.nms_iou, config.max_detections)
        all_boxes.append(boxes[kept])
        all_scores.append(scores[kept])
        all_classes.append(np.full(len(kept), cls, dtype=np.int32))
    if not all_boxes:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores)
    classes = np.concatenate(all_classes)
    order = np.argsort(-scores, kind="stable")[: config.max_detections]
    return Detections(boxes[order], scores[order], classes[order])
