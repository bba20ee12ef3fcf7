"""A frozen copy of runtime/processing.py before its post-processing was cut to fewer numpy calls.

The tests compare the current post-processing with it bit for bit, and
``bench/postprocess.py`` times the two against each other. Do not edit: it is the
reference. What follows is the original module docstring.

Numpy pre- and post-processing of the two-stage detector, shared by the device and the Keras side.

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
    by_coord = np.array(deltas.T, dtype=np.float64, order="C")  # [4, n]
    by_coord /= _column(tuple(scales), np.float64)
    corners = np.array(anchors.T, dtype=np.float64, order="C")  # [4, n] y1 x1 y2 x2
    size = corners[2:] - corners[:2]  # (height, width)
    center = corners[:2] + 0.5 * size
    center += by_coord[:2] * size
    half = 0.5 * (size * np.exp(np.minimum(by_coord[2:], _MAX_LOG_SCALE)))
    boxes = np.empty((4, len(size[0])), dtype=np.float32)
    np.subtract(center, half, out=boxes[:2])
    np.add(center, half, out=boxes[2:])
    return boxes


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``boxes`` [...,4] in pixels clipped to the image (0..H, 0..W)."""
    height, width = image_size
    return np.clip(boxes, 0.0, _image_scale(height, width)).astype(np.float32, copy=False)


def _clip_columns(columns: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """:func:`clip_boxes` of coordinate-major boxes [4,n] (the same clip, element by element)."""
    height, width = image_size
    return np.clip(columns, 0.0, _column((height, width, height, width), np.float32))


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
_NMS_BLOCK = 64


def _overlap_block(
    row_coords: np.ndarray,
    row_areas: np.ndarray,
    col_coords: np.ndarray,
    col_areas: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """``box_iou(rows, cols) > iou_threshold`` [B,M] bool from precomputed coordinates and areas.

    ``row_coords`` [4,B] / ``col_coords`` [4,M] float32 (y1, x1, y2, x2 rows), ``*_areas`` the
    boxes' areas as :func:`box_iou` computes them. The same float32 operations in the same order
    as :func:`box_iou`, in one buffer instead of a dozen temporaries. Its ``union > 0`` guard
    is left out: a positive intersection implies a positive union in float32 too, and a zero
    intersection gives IoU 0 either way (thresholds are >= 0). The clamps take arrays, not
    scalars: numpy's maximum against a broadcast scalar runs ~4x slower than against an array.
    """
    b, m = row_coords.shape[1], col_coords.shape[1]
    # Explicit C-ordered buffers: a [2,B,M] result numpy allocates itself from broadcast operands
    # gets a layout that makes every later operation strided and ~4x slower.
    low, extent = np.empty((2, 2, b, m), dtype=np.float32)
    np.maximum(row_coords[:2, :, None], col_coords[:2, None, :], out=low)  # (y1, x1)
    np.minimum(row_coords[2:, :, None], col_coords[2:, None, :], out=extent)  # (y2, x2)
    np.subtract(extent, low, out=extent)
    low.fill(0)
    np.maximum(extent, low, out=extent)  # the intersection's (height, width)
    inter = np.multiply(extent[0], extent[1], out=low[0])
    union = np.add(row_areas[:, None], col_areas, out=low[1])
    np.subtract(union, inter, out=union)
    extent[0].fill(1e-12)
    np.maximum(union, extent[0], out=union)
    return np.divide(inter, union, out=inter) > iou_threshold


def _box_areas(coords: np.ndarray) -> np.ndarray:
    """Areas [N] float32 of boxes given as ``coords`` [4,N], clamped at 0 like :func:`box_iou`."""
    return np.maximum(coords[2] - coords[0], 0) * np.maximum(coords[3] - coords[1], 0)


#: _UPPER[i, j] is True for i < j (the block's "earlier box, later box" pairs).
_UPPER = np.triu(np.ones((_NMS_BLOCK, _NMS_BLOCK), dtype=bool), 1)
_UPPER.flags.writeable = False
_ALL_KEPT = np.ones(_NMS_BLOCK, dtype=bool)
_ALL_KEPT.flags.writeable = False


def _greedy_blocks(
    coords: np.ndarray, iou_threshold: float, limit: int, groups: np.ndarray | None
) -> np.ndarray:
    """Greedy NMS of ``coords`` [4,N] float32 boxes already in score order -> kept ranks [M].

    Takes the next (up to) _NMS_BLOCK undecided boxes, settles them among themselves (their
    IoUs with each other), then computes the IoUs of the block's kept boxes only with the
    undecided boxes after the block and drops what they suppress: IoUs are computed for kept
    rows against boxes no kept box has suppressed yet, not for every pair. ``groups`` [N] (or
    None): boxes suppress only boxes of the same group (per-class NMS in one pass).
    """
    areas = _box_areas(coords)
    undecided = np.arange(coords.shape[1])
    kept: list[np.ndarray] = []
    num_kept = 0
    while len(undecided) and num_kept < limit:
        size = min(len(undecided), _NMS_BLOCK)
        block, rest = undecided[:size], undecided[size:]
        if size == coords.shape[1]:  # the block is every box: no copies
            block_coords, block_areas = coords, areas
        else:
            block_coords, block_areas = coords[:, block], areas[block]
        overlaps = _overlap_block(
            block_coords, block_areas, block_coords, block_areas, iou_threshold
        )
        overlaps &= _UPPER[:size, :size]
        if groups is not None:
            overlaps &= groups[block][:, None] == groups[block][None, :]
        block_kept = _settle_block(overlaps)
        kept.append(block[block_kept])
        num_kept += len(kept[-1])
        if not len(rest) or num_kept >= limit:
            break
        # Every box of the block is now kept or suppressed; of the rest, keep the ones no kept
        # box of the block overlaps.
        winners = kept[-1]
        overlaps = _overlap_block(
            coords[:, winners], areas[winners], coords[:, rest], areas[rest], iou_threshold
        )
        if groups is not None:
            overlaps &= groups[winners][:, None] == groups[rest][None, :]
        undecided = rest[~overlaps.any(axis=0)]
    return kept[0][:limit] if len(kept) == 1 else np.concatenate(kept)[:limit]


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


def _greedy_ranked(
    coords: np.ndarray, iou_threshold: float, limit: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Kept ranks [M] int64 of greedy NMS over boxes in score order.

    ``coords`` [4,N] float32 C-contiguous: the boxes' (y1, x1, y2, x2) as rows.
    """
    n = coords.shape[1]
    if limit <= 0 or not n:
        return np.zeros(0, np.int64)
    greedy = _greedy_blocks if n <= _NMS_MATRIX_MAX else _greedy_rows
    return greedy(coords, iou_threshold, limit, groups).astype(np.int64, copy=False)


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
    return order[_greedy_ranked(np.ascontiguousarray(boxes[order].T), iou_threshold, limit)]


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
        sample = scores[::7].copy()
        sample.sort()  # NaNs last; a NaN cut selects nothing and falls through to the full sort
        cut = sample[-min(len(sample), 2 * k // 7 + 1)]
        above = np.flatnonzero(scores > cut)
        if len(above) < k:
            # Quantized (int8) scores tie a lot: many anchors share the cut's value.
            at_cut = np.flatnonzero(scores == cut)[: k - len(above)]
            above = np.concatenate([above, at_cut]) if len(at_cut) else above
        if len(above) >= k:
            return above[np.argsort(-scores[above], kind="stable")[:k]]
    return np.argsort(-scores, kind="stable")[:k]


def proposals_from_rpn(
    rpn_scores: np.ndarray,
    rpn_deltas: np.ndarray,
    config: DetectorConfig,
    anchors: np.ndarray | None = None,
) -> Proposals:
    """The RPN outputs -> the head's ``proposals`` [P,4] normalized + ``box_indexes`` [P] int32.

    ``rpn_scores`` [1,N] or [N] float32 objectness; ``rpn_deltas`` [1,N,4] or [N,4]; ``anchors``
    from :func:`make_anchors` (made once per config if not given). Keeps the
    ``rpn_pre_nms_top_n`` best anchors, decodes and clips only those, drops boxes smaller than
    ``rpn_min_size`` pixels, applies NMS at ``rpn_nms_iou`` and pads the best ``num_proposals``
    with zero rows.
    """
    scores = np.asarray(rpn_scores, dtype=np.float32).reshape(-1)
    deltas = np.asarray(rpn_deltas, dtype=np.float32).reshape(-1, 4)
    if anchors is None:
        try:
            anchors = _config_anchors(config)
        except TypeError:  # a config built with list fields is no cache key
            anchors = make_anchors(config)
    if scores.shape[0] != anchors.shape[0] or deltas.shape[0] != anchors.shape[0]:
        raise RoiedgeError(
            f"RPN outputs have {scores.shape[0]} scores and {deltas.shape[0]} deltas; expected "
            f"{anchors.shape[0]} (one per anchor of this config)"
        )
    top = top_k_indices(scores, config.rpn_pre_nms_top_n)
    columns = _decode_columns(deltas[top], anchors[top], config.box_coder_scales)  # [4, n]
    columns = _clip_columns(columns, config.image_size)
    big_enough = (columns[2:] - columns[:2]) >= config.rpn_min_size  # [2, n] (height, width)
    big = big_enough[0] & big_enough[1]
    # ``top`` is in descending score order (ties by index), and so are the boxes left after the
    # size filter: they go to NMS as ranked, without sorting them again.
    columns = columns[:, big]
    keep = _greedy_ranked(columns, config.rpn_nms_iou, config.num_proposals)
    height, width = config.image_size
    proposals = np.zeros((config.num_proposals, 4), dtype=np.float32)
    proposals[: len(keep)] = columns[:, keep].T / _image_scale(height, width)
    box_indexes = np.zeros((config.num_proposals,), dtype=np.int32)
    return Proposals(proposals, box_indexes, len(keep))


@functools.lru_cache(maxsize=8)
def _config_anchors(config: DetectorConfig) -> np.ndarray:
    """:func:`make_anchors` of ``config``, made once per config (read-only)."""
    anchors = make_anchors(config)
    anchors.flags.writeable = False
    return anchors


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
    rows, classes = np.nonzero(object_scores >= config.score_threshold)
    if not len(rows):
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )
    height, width = config.image_size
    rois = proposals[rows] * _image_scale(height, width)
    columns = _decode_columns(box_deltas[rows, classes], rois, config.box_coder_scales)
    columns = _clip_columns(columns, config.image_size)  # [4, m]
    scores = object_scores[rows, classes]
    # One NMS pass over all classes in (score desc, class, row) order, suppressing within a class
    # only: per class that is the order and the greedy result of NMS class by class, and the
    # global cut to max_detections drops anything a per-class cut would have dropped.
    order = np.lexsort((rows, classes, -scores))
    kept = order[
        _greedy_ranked(columns[:, order], config.nms_iou, config.max_detections, classes[order])
    ]
    boxes = np.ascontiguousarray(columns[:, kept].T)
    return Detections(boxes, scores[kept], classes[kept].astype(np.int32))
