"""numpy pre- and post-processing of a detector card's conventions (the device's and the float
reference's one implementation).

:func:`detect` runs a card detector given two callables, the backbone_rpn and head models (TFLite
/ONNX stages on the device, the original Keras models in ``models.evaluate``), so the two differ
only in the models' numerics. Boxes out are (y1, x1, y2, x2) in model-input pixels, like
:class:`runtime.processing.Detections`. keras-frcnn's conventions (``rpn_to_roi``, ``apply_regr``,
test_frcnn's chunks of ``num_rois``) are the "feature_xywh" RoI format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from runtime.card import CardError, DetectorCard
from runtime.nms import nms, top_k_indices
from runtime.processing import Detections

#: Largest log-scale a delta may apply before exp (keeps float64 finite; keras-frcnn has none).
_MAX_LOG_SCALE = 20.0


def preprocess(pixels: np.ndarray, card: DetectorCard) -> tuple[np.ndarray, tuple[float, float]]:
    """An HxWx3 uint8 RGB image -> (tensor [1,H,W,3] float32, (sy, sx) model -> image pixels).

    Resized to ``card.image_size`` ("stretch", or "keep_aspect_pad": scaled to fit, padded
    right/bottom with the mean so padding is 0 after normalisation), channels reordered, then
    ``(x - mean) / std`` per channel (in the card's channel order).
    """
    from runtime.images import resize

    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise CardError(
            f"image has shape {pixels.shape} dtype {pixels.dtype}; expected HxWx3 uint8 RGB"
        )
    height, width = card.image_size
    source_h, source_w = pixels.shape[:2]
    pre = card.preprocess
    mean = np.asarray(pre.mean, np.float32)
    if pre.resize == "stretch":
        resized = resize(pixels, (height, width)).astype(np.float32)
        scale = (source_h / height, source_w / width)
    else:
        factor = min(height / source_h, width / source_w)
        inner = (max(1, round(source_h * factor)), max(1, round(source_w * factor)))
        inner = (min(inner[0], height), min(inner[1], width))
        fitted = resize(pixels, inner).astype(np.float32)
        if pre.channels == "BGR":
            fitted = fitted[:, :, ::-1]
        resized = np.empty((height, width, 3), np.float32)
        resized[...] = mean
        resized[: inner[0], : inner[1]] = fitted
        scale = (1.0 / factor, 1.0 / factor)
        return _normalise(resized, card, reorder=False), scale
    return _normalise(resized, card, reorder=True), scale


def _normalise(image: np.ndarray, card: DetectorCard, reorder: bool) -> np.ndarray:
    pre = card.preprocess
    if reorder and pre.channels == "BGR":
        image = image[:, :, ::-1]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return ((image - mean) / std).astype(np.float32)[None]


def cell_anchors(card: DetectorCard) -> np.ndarray:
    """[A, 2] float64 (width, height) in image pixels of one cell's anchors, in the card's order."""
    anchors = card.anchors
    shapes = []
    pairs = (
        [(s, r) for s in anchors.sizes for r in anchors.ratios]
        if anchors.order == "size_major"
        else [(s, r) for r in anchors.ratios for s in anchors.sizes]
    )
    for size, ratio in pairs:
        root = math.sqrt(ratio)
        wide, tall = size * root, size / root
        shapes.append((wide, tall) if anchors.ratio_side == "w/h" else (tall, wide))
    return np.asarray(shapes, np.float64)


def split_backbone(outputs: Sequence[np.ndarray], card: DetectorCard):
    """backbone_rpn outputs (Keras order) -> (features [1,h,w,C], scores [h*w*A], deltas [h*w*A,4]).

    Scores become probabilities; deltas stay in the card's ``rpn.delta_order``, unscaled.
    Flattened cell-major: index = (row * w + col) * A + anchor.
    """
    named = dict(zip(card.rpn.outputs, outputs))
    features = np.asarray(named["features"], np.float32)
    scores = np.asarray(named["scores"], np.float32).reshape(-1)
    deltas = np.asarray(named["deltas"], np.float32).reshape(-1, 4)
    if card.rpn.scores == "logit":
        scores = 1.0 / (1.0 + np.exp(-scores))
    return features, scores, deltas


def _as_xywh(deltas: np.ndarray, order: str, scales: Sequence[float]) -> np.ndarray:
    """Deltas [..., 4] in ``order`` divided by ``scales`` -> float64 (tx, ty, tw, th)."""
    scaled = np.asarray(deltas, np.float64) / np.asarray(scales, np.float64)
    if order == "yxhw":
        scaled = scaled[..., [1, 0, 3, 2]]
    return scaled


def _apply_xywh(x, y, w, h, t: np.ndarray, integer: bool):
    """keras-frcnn's apply_regr(_np): centre shift by t*(w, h), size times exp; round if asked."""
    cx = x + w / 2.0 + t[..., 0] * w
    cy = y + h / 2.0 + t[..., 1] * h
    w1 = np.exp(np.minimum(t[..., 2], _MAX_LOG_SCALE)) * w
    h1 = np.exp(np.minimum(t[..., 3], _MAX_LOG_SCALE)) * h
    x1, y1 = cx - w1 / 2.0, cy - h1 / 2.0
    if integer:  # np.round: half to even, like Python's round in keras-frcnn
        x1, y1, w1, h1 = np.round(x1), np.round(y1), np.round(w1), np.round(h1)
    return x1, y1, w1, h1


def proposals(
    scores: np.ndarray, deltas: np.ndarray, feature_size: tuple[int, int], card: DetectorCard
) -> np.ndarray:
    """RPN outputs -> RoIs [R,4] float32 in the card's ``rois.format`` (R <= post_nms_top_n).

    feature_xywh (keras-frcnn ``rpn_to_roi``): anchors and decoding in feature pixels, rounded
    when ``rois.integer``, sizes floored at 1, clipped to [0, cols-1] x [0, rows-1], empty boxes
    dropped, NMS; rows (x, y, w, h). normalized_yxyx: decoding in image pixels, clipped to the
    image, boxes under ``min_size`` dropped, NMS; rows corners / image size.
    """
    rows, cols = feature_size
    stride = card.anchors.stride
    shapes = cell_anchors(card)  # [A, 2] image pixels
    count = rows * cols * len(shapes)
    if scores.shape[0] != count or deltas.shape[0] != count:
        raise CardError(
            f"RPN outputs have {scores.shape[0]} scores and {deltas.shape[0]} deltas; expected "
            f"{rows}x{cols} cells x {len(shapes)} anchors = {count}"
        )
    grid_y, grid_x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    offset = card.anchors.centre_offset
    centre_x = np.repeat((grid_x.reshape(-1) + offset), len(shapes))
    centre_y = np.repeat((grid_y.reshape(-1) + offset), len(shapes))
    t = _as_xywh(deltas, card.rpn.delta_order, card.rpn.delta_scales)
    keep_feature = card.rois.format == "feature_xywh"
    unit = stride if keep_feature else 1.0  # feature pixels or image pixels
    aw = np.tile(shapes[:, 0], rows * cols) / unit
    ah = np.tile(shapes[:, 1], rows * cols) / unit
    cx, cy = centre_x * stride / unit, centre_y * stride / unit
    x1, y1, w1, h1 = _apply_xywh(cx - aw / 2.0, cy - ah / 2.0, aw, ah, t, card.rois.integer)
    if keep_feature:
        w1, h1 = np.maximum(1.0, w1), np.maximum(1.0, h1)
        x2, y2 = x1 + w1, y1 + h1
        x1, y1 = np.maximum(0.0, x1), np.maximum(0.0, y1)
        x2, y2 = np.minimum(cols - 1.0, x2), np.minimum(rows - 1.0, y2)
        min_side = card.rpn.min_size / stride
        valid = (x2 - x1 > max(min_side, 0.0)) & (y2 - y1 > max(min_side, 0.0))
    else:
        height, width = card.image_size
        x2, y2 = np.clip(x1 + w1, 0, width), np.clip(y1 + h1, 0, height)
        x1, y1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
        valid = (x2 - x1 >= card.rpn.min_size) & (y2 - y1 >= card.rpn.min_size) & (x2 > x1)
        valid &= y2 > y1
    kept = np.nonzero(valid & np.isfinite(scores))[0]
    if card.rpn.pre_nms_top_n is not None:
        kept = kept[top_k_indices(scores[kept], card.rpn.pre_nms_top_n)]
    corners = np.stack([y1, x1, y2, x2], axis=1)[kept]
    picked = kept[nms(corners, scores[kept], card.rpn.nms_iou, card.rpn.post_nms_top_n)]
    if keep_feature:
        rois = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[picked]
    else:
        height, width = card.image_size
        rois = np.stack([y1 / height, x1 / width, y2 / height, x2 / width], axis=1)[picked]
    return rois.astype(np.float32)


def roi_batches(rois: np.ndarray, card: DetectorCard, roi_shape: Sequence[int]):
    """RoIs [R,4] -> list of (head RoI input of ``roi_shape``, rows used), ``num_rois`` a call.

    The last chunk is padded with its first RoI (as keras-frcnn's test_frcnn does); padded rows'
    outputs are ignored. No RoI -> no call.
    """
    size = card.rois.num_rois
    batches = []
    for start in range(0, len(rois), size):
        chunk = rois[start : start + size]
        padded = np.repeat(chunk[:1], size, axis=0)
        padded[: len(chunk)] = chunk
        batches.append((padded.reshape(roi_shape).astype(np.float32), len(chunk)))
    return batches


def head_outputs(outputs: Sequence[np.ndarray], used: int, card: DetectorCard):
    """One head call's outputs -> (probabilities [used, K+1] with background last, deltas
    [used, K or 1, 4] in the head's delta order)."""
    named = dict(zip(card.head.outputs, outputs))
    probs = np.asarray(named["class_scores"], np.float32).reshape(-1, card.num_classes + 1)
    if card.head.background == "first":
        probs = np.concatenate([probs[:, 1:], probs[:, :1]], axis=1)
    per_class = 1 if card.head.deltas_layout == "[1,N,4]" else card.num_classes
    deltas = np.asarray(named["box_deltas"], np.float32).reshape(-1, per_class, 4)
    return probs[:used], deltas[:used]


def detections(
    probs: np.ndarray, deltas: np.ndarray, rois: np.ndarray, card: DetectorCard
) -> Detections:
    """Head results of all RoIs -> final Detections (model pixels, y1 x1 y2 x2).

    ``probs`` [R, K+1] background last; ``deltas`` [R, K|1, 4]; ``rois`` [R,4] as the head got
    them. argmax: one candidate per RoI, its top column unless background; per_class: every
    class column. Candidates need score >= score_threshold; per-class NMS; best max_detections.
    """
    post = card.postprocess
    k = card.num_classes
    if card.head.class_selection == "argmax":
        top = np.argmax(probs, axis=1)
        roi_index = np.nonzero(
            (top != k) & (probs[np.arange(len(probs)), top] >= post.score_threshold)
        )[0]
        class_ids = top[roi_index]
    else:
        roi_index, class_ids = np.nonzero(probs[:, :k] >= post.score_threshold)
    scores = probs[roi_index, class_ids]
    chosen = deltas[roi_index, class_ids if deltas.shape[1] > 1 else 0]
    t = _as_xywh(chosen, card.head.delta_order, card.head.delta_scales)
    boxes = _decode_head(rois[roi_index].astype(np.float64), t, card)
    if card.head.clip:
        height, width = card.image_size
        boxes = np.clip(boxes, 0.0, [height, width, height, width])
    keep = []
    for class_id in np.unique(class_ids):
        members = np.nonzero(class_ids == class_id)[0]
        keep.append(members[nms(boxes[members], scores[members], post.nms_iou)])
    kept = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    kept = kept[np.argsort(-scores[kept], kind="stable")][: post.max_detections]
    return Detections(
        boxes[kept].astype(np.float32).reshape(-1, 4),
        scores[kept].astype(np.float32),
        class_ids[kept].astype(np.int32),
    )


def _decode_head(rois: np.ndarray, t: np.ndarray, card: DetectorCard) -> np.ndarray:
    """RoIs [D,4] + deltas (tx, ty, tw, th) [D,4] -> boxes [D,4] float64 image px (y1 x1 y2 x2)."""
    if card.rois.format == "feature_xywh":
        x, y, w, h = rois.T
        x1, y1, w1, h1 = _apply_xywh(x, y, w, h, t, card.head.round_to_feature_pixels)
        stride = card.anchors.stride
        return np.stack([y1, x1, y1 + h1, x1 + w1], axis=1) * stride
    height, width = card.image_size
    y1, x1, y2, x2 = (rois * [height, width, height, width]).T
    nx, ny, nw, nh = _apply_xywh(x1, y1, x2 - x1, y2 - y1, t, False)
    return np.stack([ny, nx, ny + nh, nx + nw], axis=1)


def detect(
    tensor: np.ndarray,
    run_backbone: Callable[[np.ndarray], Sequence[np.ndarray]],
    run_head: Callable[..., Sequence[np.ndarray]],
    card: DetectorCard,
    roi_shape: Sequence[int],
) -> Detections:
    """The whole card detector on one preprocessed ``tensor`` [1,H,W,3].

    ``run_backbone(tensor)`` returns the backbone_rpn outputs in Keras order; ``run_head(*inputs)``
    takes the head inputs in ``card.head.inputs`` order and returns its outputs in Keras order.
    ``roi_shape``: the head's RoI input shape ([1, num_rois, 4] or [num_rois, 4]).
    """
    outputs = run_backbone(tensor)
    features, scores, deltas = split_backbone(outputs, card)
    rois = proposals(scores, deltas, features.shape[1:3], card)
    probs, box_deltas = [], []
    for batch, used in roi_batches(rois, card, roi_shape):
        feeds = {
            "features": features,
            "rois": batch,
            "box_indexes": np.zeros(card.rois.num_rois, np.int32),
        }
        p, d = head_outputs(run_head(*(feeds[name] for name in card.head.inputs)), used, card)
        probs.append(p)
        box_deltas.append(d)
    if not probs:
        empty = np.zeros((0, 4), np.float32)
        return Detections(empty, np.zeros(0, np.float32), np.zeros(0, np.int32))
    return detections(np.concatenate(probs), np.concatenate(box_deltas), rois, card)


def check_model_shapes(
    card: DetectorCard,
    backbone_outputs: Sequence[Sequence[int | None]],
    head_inputs: Sequence[Sequence[int | None]],
    head_outputs: Sequence[Sequence[int | None]],
) -> None:
    """Refuse a card whose models disagree with it (before any conversion); one-line CardError.

    Shapes are the models' static shapes at ``card.image_size`` (batch 1).
    """
    if len(backbone_outputs) != 3:
        raise CardError(
            f"backbone_rpn {card.backbone_rpn} has {len(backbone_outputs)} outputs; the card's "
            f"rpn.outputs expects 3 ({', '.join(card.rpn.outputs)})"
        )
    named = dict(zip(card.rpn.outputs, (tuple(s) for s in backbone_outputs)))
    features = named["features"]
    if len(features) != 4 or None in features[1:3]:
        raise CardError(
            f"backbone_rpn output {card.rpn.outputs.index('features')} (features) has shape "
            f"{features}; expected [1, h, w, C] (is rpn.outputs in the model's order?)"
        )
    rows, cols = features[1], features[2]
    a = card.anchors.per_cell
    expect = {
        "scores": {
            "[1,H,W,A]": (1, rows, cols, a),
            "[1,H*W*A]": (1, rows * cols * a),
            "[1,H*W*A,1]": (1, rows * cols * a, 1),
        }[card.rpn.scores_layout],
        "deltas": {
            "[1,H,W,4A]": (1, rows, cols, 4 * a),
            "[1,H*W*A,4]": (1, rows * cols * a, 4),
        }[card.rpn.deltas_layout],
    }
    for name, shape in expect.items():
        seen = tuple(1 if d is None else d for d in named[name][:1]) + tuple(named[name][1:])
        if seen != shape:
            raise CardError(
                f"backbone_rpn output {name} has shape {list(named[name])}; the card's "
                f"rpn.layouts.{name} {getattr(card.rpn, name + '_layout')} with "
                f"{len(card.anchors.sizes)} sizes x {len(card.anchors.ratios)} ratios = {a} "
                f"anchors on {rows}x{cols} cells expects {list(shape)}"
            )
    for side, cells, size in (
        ("height", rows, card.image_size[0]),
        ("width", cols, card.image_size[1]),
    ):
        if cells not in (size // card.anchors.stride, -(-size // card.anchors.stride)):
            raise CardError(
                f"backbone_rpn features have {cells} cells along the {side}; anchors.stride "
                f"{card.anchors.stride} on image_size {size} expects {size // card.anchors.stride}"
            )
    if len(head_inputs) != len(card.head.inputs) or len(head_outputs) != 2:
        raise CardError(
            f"head {card.head.model} has {len(head_inputs)} inputs and {len(head_outputs)} "
            f"outputs; the card expects inputs {list(card.head.inputs)} and 2 outputs"
        )
    roi_shape = tuple(head_inputs[card.head.inputs.index("rois")])
    n = card.rois.num_rois
    if roi_shape not in ((1, n, 4), (None, n, 4), (n, 4)):
        raise CardError(
            f"head input rois has shape {list(roi_shape)}; rois.num_rois {n} expects [1, {n}, 4]"
        )
    k = card.num_classes
    outs = dict(zip(card.head.outputs, (tuple(s) for s in head_outputs)))
    if outs["class_scores"][-1] != k + 1:
        raise CardError(
            f"head output class_scores has shape {list(outs['class_scores'])}; "
            f"{k} class_names + background expects a last axis of {k + 1}"
        )
    per_roi = {"[1,N,4K]": (4 * k,), "[N,K,4]": (k, 4), "[1,N,4]": (4,)}[card.head.deltas_layout]
    if tuple(outs["box_deltas"][-len(per_roi) :]) != per_roi:
        raise CardError(
            f"head output box_deltas has shape {list(outs['box_deltas'])}; head.deltas_layout "
            f"{card.head.deltas_layout} with {k} classes expects it to end in {list(per_roi)}"
        )
