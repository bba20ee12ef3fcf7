"""The whole two-stage detector as one builtin-only ``detector.<precision>.tflite``.

The file chains (:mod:`export.tflite_stitch`) four pieces by their signature names:

1. the exported ``backbone_rpn.<precision>.tflite`` (unchanged; a uint8 ``image`` input is cast,
   or for the int8 Edge TPU backbone requantized, to what it takes);
2. ``proposals``: the RPN post-processing of :func:`runtime.processing.proposals_from_rpn` in
   float32 TFLite builtins -- TOPK_V2 of the objectness, anchor decoding, clip, the min-size
   filter, NON_MAX_SUPPRESSION_V4 and the zero padding to ``num_proposals`` rows;
3. the exported ``head.<precision>.tflite`` (unchanged);
4. ``detections``: :func:`runtime.processing.detections_from_head` in float32 builtins -- box
   decoding per class, clip, score threshold and one class-offset NON_MAX_SUPPRESSION_V4 (boxes of
   different classes never overlap, so it is per-class NMS cut to ``max_detections`` overall).

Both NMS calls get ranks, not scores: TOPK_V2 orders tied scores by index as the runtime's stable
sort does, while NMS's priority queue (score alone) pops them in heap order, and int8 scores tie
a lot (the int8 RPN's objectness has ~60 distinct values among its 300 best anchors), so the
kept boxes would differ from the runtime's.

Outputs, in this order, the TFLite detection post-process layout MediaPipe's ObjectDetector reads:
``location`` [1,D,4] normalized (ymin, xmin, ymax, xmax), ``category`` [1,D] (0-based class id =
line of the labels file), ``score`` [1,D], ``number of detections`` [1]; all float32, D =
``max_detections``, rows past the count zero. Input ``image`` [1,H,W,3] uint8 RGB.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from export.tflite_stitch import GraphInput, chain
from runtime.config import DetectorConfig
from runtime.processing import make_anchors

#: The four outputs, in order, as named in the model's signature (its tensor names).
OUTPUTS = ("location", "category", "score", "number_of_detections")
#: The largest log-scale a delta may apply (runtime.processing's clamp, Detectron's).
MAX_LOG_SCALE = math.log(1000.0 / 16.0)
#: The pieces chained into a single file, in execution order; every tensor a piece brings is
#: named ``<piece>/<its name>`` (export.tflite_stitch), which is how the Edge TPU report tells
#: which piece an op belongs to.
PIECES = ("backbone_rpn", "proposals", "head", "detections")
#: Precision of each stage a single file chains: the Edge TPU variant pairs the integer
#: backbone with the int8 head (whose box inputs must stay float).
STAGE_PRECISIONS = {
    "int8_io": {"backbone_rpn": "int8_io", "head": "int8"},
}


def stage_precisions(precision: str) -> dict[str, str]:
    """Which stage artifact precision each stage of ``detector.<precision>.tflite`` uses."""
    return STAGE_PRECISIONS.get(precision, {"backbone_rpn": precision, "head": precision})


def _decode(deltas, geometry, scales):
    """Boxes [n,4] (y1,x1,y2,x2) from deltas [n,4] * scales on anchors' (cy, cx, h, w) [n,4]."""
    import tensorflow as tf

    shifts = deltas / tf.constant(scales, tf.float32)
    center = shifts[:, :2] * geometry[:, 2:] + geometry[:, :2]
    half = tf.exp(tf.minimum(shifts[:, 2:], MAX_LOG_SCALE)) * geometry[:, 2:] * 0.5
    return tf.concat([center - half, center + half], axis=1)


def _geometry(corners: np.ndarray) -> np.ndarray:
    """(cy, cx, h, w) [n,4] float32 of corner boxes [n,4] (y1, x1, y2, x2), in float64 first."""
    corners = corners.astype(np.float64)
    size = corners[:, 2:] - corners[:, :2]
    return np.concatenate([corners[:, :2] + 0.5 * size, size], axis=1).astype(np.float32)


def _ranks(n: int):
    """[n] float32 n, n-1, ..., 1: strictly decreasing NMS scores that keep a ranked order."""
    import tensorflow as tf

    return tf.constant(np.arange(n, 0, -1, dtype=np.float32))


def proposals_function(config: DetectorConfig):
    """tf.function rpn_scores [1,N], rpn_deltas [1,N,4] -> proposals [P,4] normalized,
    box_indexes [P] int32 (zeros), num_valid [1] int32 (as runtime.processing)."""
    import tensorflow as tf

    h, w = config.image_size
    n, p = config.num_anchors, config.num_proposals
    geometry = tf.constant(_geometry(make_anchors(config)))
    limits = tf.constant([h, w, h, w], tf.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, n), tf.float32, name="rpn_scores"),
            tf.TensorSpec((1, n, 4), tf.float32, name="rpn_deltas"),
        ]
    )
    def proposals(rpn_scores, rpn_deltas):
        top_n = config.rpn_pre_nms_count  # as runtime.nms.top_k_indices: min(k, N)
        _, top = tf.math.top_k(rpn_scores[0], k=top_n, sorted=True)
        boxes = _decode(
            tf.gather(rpn_deltas[0], top), tf.gather(geometry, top), config.box_coder_scales
        )
        boxes = tf.minimum(tf.maximum(boxes, 0.0), limits)
        extent = boxes[:, 2:] - boxes[:, :2]
        big = tf.reduce_min(extent, axis=1) >= config.rpn_min_size
        # NMS ranks by top-k rank, not by score: TOPK_V2 breaks score ties by anchor index as the
        # runtime's stable sort does, NMS pops them in heap order, and int8 (or
        # saturated float) objectness ties a lot. Too small boxes get -1, under the NMS
        # threshold: dropped, as the runtime does.
        ranks = tf.where(big, _ranks(top_n), -1.0)
        keep, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=boxes,
            scores=ranks,
            max_output_size=p,
            iou_threshold=config.rpn_nms_iou,
            score_threshold=-0.5,
            pad_to_max_output_size=True,
        )
        valid = tf.cast(tf.range(p) < count, tf.float32)[:, None]
        kept = tf.gather(boxes, keep) / limits * valid
        return {
            "proposals": tf.identity(kept, name="proposals"),
            "box_indexes": tf.identity(keep * 0, name="box_indexes"),
            "num_valid": tf.identity(tf.reshape(count, (1,)), name="num_valid"),
        }

    return proposals


def detections_function(config: DetectorConfig):
    """tf.function of the head outputs + proposals -> the four outputs (see module doc)."""
    import tensorflow as tf

    h, w = config.image_size
    p, k, d = config.num_proposals, config.num_classes, config.max_detections
    limits = tf.constant([h, w, h, w], tf.float32)
    # Class c's boxes are moved by c * offset: boxes of different classes never overlap.
    offset = float(max(h, w) + 1)

    @tf.function(
        input_signature=[
            tf.TensorSpec((p, k + 1), tf.float32, name="class_scores"),
            tf.TensorSpec((p, k, 4), tf.float32, name="box_deltas"),
            tf.TensorSpec((p, 4), tf.float32, name="proposals"),
            tf.TensorSpec((1,), tf.int32, name="num_valid"),
        ]
    )
    def detections(class_scores, box_deltas, proposals, num_valid):
        rois = proposals * limits  # [P,4] pixels
        corners_geometry = tf.concat(
            [rois[:, :2] + 0.5 * (rois[:, 2:] - rois[:, :2]), rois[:, 2:] - rois[:, :2]], axis=1
        )
        geometry = tf.reshape(tf.tile(corners_geometry[:, None, :], (1, k, 1)), (p * k, 4))
        boxes = _decode(tf.reshape(box_deltas, (p * k, 4)), geometry, config.box_coder_scales)
        boxes = tf.minimum(tf.maximum(boxes, 0.0), limits)  # [P*K,4], row-major (row, class)
        # Rank the (class, row) pairs class-major as the runtime does: TOPK_V2 breaks score ties
        # by index, so the order is (score desc, class, row) -- the runtime's stable sort.
        object_scores = tf.reshape(tf.transpose(class_scores[:, 1:]), (k * p,))
        scores, order = tf.math.top_k(object_scores, k=k * p, sorted=True)
        classes = order // p
        ranked = tf.gather(boxes, (order % p) * k + classes)  # [K*P,4] in rank order
        class_ids = tf.cast(classes, tf.float32)
        kept = tf.logical_and(order % p < num_valid[0], scores >= config.score_threshold)
        # NMS gets the rank as score (strictly decreasing: its priority queue pops ties
        # in heap order); the rows it must not keep get -1, under its threshold.
        keep, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=ranked + (class_ids * offset)[:, None],
            scores=tf.where(kept, _ranks(k * p), -1.0),
            max_output_size=d,
            iou_threshold=config.nms_iou,
            score_threshold=-0.5,
            pad_to_max_output_size=True,
        )
        valid = tf.range(d) < count
        location = tf.where(valid[:, None], tf.gather(ranked, keep) / limits, 0.0)
        category = tf.where(valid, tf.gather(class_ids, keep), 0.0)
        score = tf.where(valid, tf.gather(scores, keep), 0.0)
        return {
            "location": tf.identity(location[None], name="location"),
            "category": tf.identity(category[None], name="category"),
            "score": tf.identity(score[None], name="score"),
            "number_of_detections": tf.identity(
                tf.cast(tf.reshape(count, (1,)), tf.float32), name="number_of_detections"
            ),
        }

    return detections


def _float_tflite(function) -> bytes:
    import tensorflow as tf

    concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


@functools.lru_cache(maxsize=4)
def post_processing_pieces(config: DetectorConfig) -> tuple[bytes, bytes]:
    """(proposals, detections) float32 TFLite pieces of ``config`` (converted once per config)."""
    return _float_tflite(proposals_function(config)), _float_tflite(detections_function(config))


def _input_quantization(backbone: bytes) -> tuple[float, int] | None:
    """The int8 backbone's image (scale, zero_point) as a uint8 tensor's (None: a float input)."""
    from export.tf_private import flatbuffer_utils

    fb = flatbuffer_utils()
    model = fb.read_model_from_bytearray(bytearray(backbone))
    tensor = model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]]
    if fb.type_to_name(tensor.type) != "INT8":
        return None
    # uint8 pixels are the image itself: scale 1, zero point 0; QUANTIZE requantizes to int8.
    return (1.0, 0)


def single_file(backbone: bytes, head: bytes, config: DetectorConfig) -> bytes:
    """One ``.tflite`` (no metadata) chaining ``backbone``, the proposal piece, ``head`` and
    the detection piece; input ``image`` [1,H,W,3] uint8, outputs :data:`OUTPUTS`."""
    proposals, detections = post_processing_pieces(config)
    h, w = config.image_size
    image = GraphInput("image", (1, h, w, 3), "uint8", _input_quantization(backbone))
    return chain(
        [image],
        [(piece, data, {}) for piece, data in zip(PIECES, (backbone, proposals, head, detections))],
        OUTPUTS,
    )


def run_single(model: bytes, image: np.ndarray) -> dict[str, Any]:
    """The four outputs of a single file on one HxWx3 uint8 image (ai-edge-litert; for checks)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner()
    return {k: np.asarray(v) for k, v in runner(image=image[None]).items()}
