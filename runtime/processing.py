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

import functools
import math
from typing import NamedTuple

import numpy as np

from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError
from runtime.nms import (  # noqa: F401  (box_iou, nms: also public here, as before)
    box_iou,
    greedy_ranked,
    nms,
    top_k_indices,
)

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
        # tolist() converts each array to Python floats and ints in one call, not one per value.
        return [
            Detection(tuple(box), score, cls, class_names[cls])
            for box, score, cls in zip(
                np.asarray(self.boxes).tolist(),
                np.asarray(self.scores).tolist(),
                np.asarray(self.class_ids).tolist(),
            )
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
    """Boxes [...,4] from ``deltas`` [...,4] applied to ``anchors`` [...,4] (same units as anchors).

    Computed in float64 and rounded once to float32.
    """
    columns = _decode_columns(np.reshape(deltas, (-1, 4)), np.reshape(anchors, (-1, 4)), scales)
    return np.ascontiguousarray(columns.T).reshape(np.shape(deltas))


def _decode_columns(
    deltas: np.ndarray, anchors: np.ndarray, scales: tuple[float, float, float, float]
) -> np.ndarray:
    """:func:`decode_boxes` of [n,4] inputs as coordinate-major boxes [4,n] float32 (y1, x1, y2, x2).

    Coordinate-major, every step is one long loop per coordinate pair rather than n loops of
    four, and NMS takes the rows as they are.
    """
    return _apply_deltas(deltas.T, _box_geometry(anchors.T), scales)


def _box_geometry(corners: np.ndarray) -> np.ndarray:
    """Boxes given as rows ``corners`` [4,n] (y1, x1, y2, x2) -> [4,n] float64 rows (center y,
    center x, height, width), computed in float64 from the corners' values."""
    geometry = np.array(corners, dtype=np.float64, order="C")  # y1 x1 y2 x2 for now
    size = np.subtract(geometry[2:], geometry[:2], out=geometry[2:])  # (height, width)
    geometry[:2] += 0.5 * size  # the center
    return geometry


def _apply_deltas(
    deltas: np.ndarray, geometry: np.ndarray, scales: tuple[float, float, float, float]
) -> np.ndarray:
    """Deltas given as rows [4,n] (ty, tx, th, tw) * scales applied to ``geometry`` [4,n] float64
    (:func:`_box_geometry`) -> boxes [4,n] float32 rows (y1, x1, y2, x2), rounded once."""
    shifts = np.array(deltas, dtype=np.float64, order="C")
    shifts /= _column(tuple(scales), np.float64)
    center = shifts[:2]
    center *= geometry[2:]
    center += geometry[:2]
    # np.exp gets a fresh C-ordered input and output, as it always had: its vectorised and
    # scalar loops need not round alike, and the boxes must stay the same bit for bit.
    half = np.exp(np.minimum(shifts[2:], _MAX_LOG_SCALE))
    half *= geometry[2:]
    half *= 0.5
    boxes = np.empty(geometry.shape, dtype=np.float32)
    np.subtract(center, half, out=boxes[:2])
    np.add(center, half, out=boxes[2:])
    return boxes


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``boxes`` [...,4] in pixels clipped to the image (0..H, 0..W)."""
    height, width = image_size
    return np.clip(boxes, 0.0, _image_scale(height, width)).astype(np.float32, copy=False)


def _clip_columns(columns: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """:func:`clip_boxes` of float32 coordinate-major boxes [4,n], in place (the same clip)."""
    height, width = image_size
    return np.clip(columns, 0.0, _column((height, width, height, width), np.float32), out=columns)


@functools.lru_cache(maxsize=16)
def _image_scale(height: int, width: int) -> np.ndarray:
    """[4] float32 (H, W, H, W): pixels <-> normalized, and the clip limits (read-only)."""
    scale = np.asarray([height, width, height, width], dtype=np.float32)
    scale.flags.writeable = False
    return scale


@functools.lru_cache(maxsize=16)
def _column(values: tuple[float, ...], dtype: type) -> np.ndarray:
    """``values`` as a read-only [len, 1] array of ``dtype`` (the box coder scales)."""
    column = np.asarray(values, dtype=dtype)[:, None]
    column.flags.writeable = False
    return column


class AnchorTable(NamedTuple):
    """Anchors with what box decoding needs of them, made once per detector (read-only arrays).

    ``corners`` [N,4] pixels (y1, x1, y2, x2), as given (:func:`make_anchors`: float32);
    ``geometry`` [N,4] float64 (center y, center x, height, width) computed from ``corners``
    exactly as decoding computes them per box; anchor-major, so the few hundred anchors
    decoded per image are a few hundred cache lines.
    """

    corners: np.ndarray
    geometry: np.ndarray


def anchor_table(anchors: np.ndarray) -> AnchorTable:
    """The :class:`AnchorTable` of ``anchors`` [N,4] (from :func:`make_anchors`)."""
    corners = np.array(anchors).reshape(-1, 4)  # a copy, of the caller's values and dtype
    geometry = np.ascontiguousarray(_box_geometry(corners.T).T)
    corners.flags.writeable = False
    geometry.flags.writeable = False
    return AnchorTable(corners, geometry)


def proposals_from_rpn(
    rpn_scores: np.ndarray,
    rpn_deltas: np.ndarray,
    config: DetectorConfig,
    anchors: np.ndarray | AnchorTable | None = None,
) -> Proposals:
    """The RPN outputs -> the head's ``proposals`` [P,4] normalized + ``box_indexes`` [P] int32.

    ``rpn_scores`` [1,N] or [N] float32 objectness; ``rpn_deltas`` [1,N,4] or [N,4]; ``anchors``
    from :func:`make_anchors` or :func:`anchor_table` (made once per config if not given). Keeps
    the ``rpn_pre_nms_top_n`` best anchors, decodes and clips only those, drops boxes smaller
    than ``rpn_min_size`` pixels, applies NMS at ``rpn_nms_iou`` and pads the best
    ``num_proposals`` with zero rows.
    """
    scores = np.asarray(rpn_scores, dtype=np.float32).reshape(-1)
    deltas = np.asarray(rpn_deltas, dtype=np.float32).reshape(-1, 4)
    if anchors is None:
        try:
            anchors = _config_anchors(config)
        except TypeError:  # a config built with list fields is no cache key
            anchors = make_anchors(config)
    num_anchors = len(anchors.corners if isinstance(anchors, AnchorTable) else anchors)
    if scores.shape[0] != num_anchors or deltas.shape[0] != num_anchors:
        raise RoiedgeError(
            f"RPN outputs have {scores.shape[0]} scores and {deltas.shape[0]} deltas; expected "
            f"{num_anchors} (one per anchor of this config)"
        )
    top = top_k_indices(scores, config.rpn_pre_nms_top_n)
    if isinstance(anchors, AnchorTable):
        geometry = anchors.geometry.take(top, axis=0).T
    else:
        geometry = _box_geometry(np.take(anchors, top, axis=0).T)
    boxes = _apply_deltas(deltas.take(top, axis=0).T, geometry, config.box_coder_scales)  # [4, n]
    _clip_columns(boxes, config.image_size)
    # Decoded boxes have y2 >= y1 and x2 >= x1 (the clip keeps that), so these extents are
    # box_iou's clamped ones and their product its areas.
    extent = boxes[2:] - boxes[:2]  # [2, n] (height, width)
    if not extent.min() >= config.rpn_min_size:  # some too small (or NaN): drop them
        big_enough = extent >= config.rpn_min_size
        big = big_enough[0] & big_enough[1]
        boxes, extent = boxes[:, big], extent[:, big]
    areas = np.multiply(extent[0], extent[1], out=extent[0])
    # ``top`` is in descending score order (ties by index), and so are the boxes left after the
    # size filter: they go to NMS as ranked, without sorting them again.
    # The boxes are clipped to the image and at least rpn_min_size on each side: areas finite,
    # and >= 1e-10 when rpn_min_size >= 1e-5.
    keep = greedy_ranked(
        boxes,
        config.rpn_nms_iou,
        config.num_proposals,
        areas=areas,
        large_areas=config.rpn_min_size >= 1e-5,
    )
    height, width = config.image_size
    proposals = np.zeros((config.num_proposals, 4), dtype=np.float32)
    np.divide(
        boxes.take(keep, axis=1),
        _column((height, width, height, width), np.float32),
        out=proposals[: len(keep)].T,
    )
    box_indexes = np.zeros((config.num_proposals,), dtype=np.int32)
    return Proposals(proposals, box_indexes, len(keep))


@functools.lru_cache(maxsize=8)
def _config_anchors(config: DetectorConfig) -> AnchorTable:
    """:func:`anchor_table` of :func:`make_anchors` of ``config``, made once per config."""
    return anchor_table(make_anchors(config))


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
    class at ``nms_iou`` and returns at most ``max_detections`` by descending score (ties: lower
    class id, then lower proposal row first).
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
    object_scores = class_scores[:n, 1:]  # [n, K]: column c is class id c
    # Class-major (class, row) order, so a stable sort by score alone gives the order
    # (score desc, class, row).
    classes, rows = np.nonzero(np.greater_equal(object_scores.T, config.score_threshold))
    if not len(rows):
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )
    scores = object_scores[rows, classes]
    order = np.argsort(-scores, kind="stable")
    rows, classes, scores = rows[order], classes[order], scores[order]
    height, width = config.image_size
    rois = proposals[rows] * _image_scale(height, width)  # [m, 4] pixels
    boxes = _decode_columns(box_deltas[rows, classes], rois, config.box_coder_scales)
    _clip_columns(boxes, config.image_size)  # [4, m]
    # Decoded boxes have y2 >= y1 and x2 >= x1 (the clip keeps that): these are box_iou's areas.
    extent = boxes[2:] - boxes[:2]
    areas = np.multiply(extent[0], extent[1], out=extent[0])
    # One NMS pass over all classes in (score desc, class, row) order, suppressing within a class
    # only: per class that is the order and the greedy result of NMS class by class, and the
    # global cut to max_detections drops anything a per-class cut would have dropped.
    kept = greedy_ranked(boxes, config.nms_iou, config.max_detections, classes, areas)
    return Detections(
        np.ascontiguousarray(boxes[:, kept].T), scores[kept], classes[kept].astype(np.int32)
    )
