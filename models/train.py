"""Train the two-stage detector: ``python -m models.train``.

Without ``--data`` it trains on the procedural shapes (the shipped detector); with
``--data TRAIN.json`` (a COCO instances dataset, see :mod:`models.coco`) on the user's images at
``--image-size H W``, class names from the dataset, with horizontal flips and scale jitter, and
with ``--val VAL.json`` a per-epoch validation mAP line.

Approximate joint training in one graph: the RPN learns objectness and box deltas on sampled
anchors; the head learns on the RPN's own (NMS-ed, gradient-stopped) proposals plus the true boxes
and jittered copies of them, pooled by RoIPooling's ``crop_and_resize`` lowering (the exported head uses the
builtin-only default lowering of the same op; a test checks both give the same head outputs). Every random
choice derives from ``--seed`` (data stream, sampling, jitter, weights), so a retrain lands within
noise of the shipped model. Writes ``<out>`` (.keras), its config sidecar and ``<stem>.training.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.data import TRAIN_SPLIT, DataConfig
from models.train_config import TrainConfig
from models.train_data import MAX_GT, ProceduralBatches, training_data
from runtime import strict_json
from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError, one_line, say
from runtime.manifest import atomic_write_bytes
from runtime.processing import box_iou, encode_boxes, make_anchors

# ---------------------------------------------------------------------------- data and targets


def rpn_targets(
    boxes: np.ndarray,
    anchors: np.ndarray,
    rng: np.random.Generator,
    cfg: TrainConfig,
    scales: tuple[float, float, float, float] = DetectorConfig().box_coder_scales,
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor labels [N] (1 object, 0 background, -1 ignored) and delta targets [N,4] of one image."""
    n = anchors.shape[0]
    labels = np.full(n, -1, dtype=np.int8)
    targets = np.zeros((n, 4), dtype=np.float32)
    if len(boxes) == 0:
        labels[:] = 0
    else:
        ious = box_iou(anchors, boxes)  # [N, G]
        best = ious.argmax(axis=1)
        best_iou = ious.max(axis=1)
        labels[best_iou < cfg.rpn_negative_iou] = 0
        labels[best_iou >= cfg.rpn_positive_iou] = 1
        per_gt = ious.max(axis=0)  # the best anchors of every box are positive too
        forced = ((ious >= per_gt[None, :] - 1e-6) & (ious > 0.1)).any(axis=1)
        labels[forced] = 1
        targets = encode_boxes(boxes[best], anchors, scales)
    positives = np.flatnonzero(labels == 1)
    max_pos = int(cfg.rpn_batch * cfg.rpn_positive_fraction)
    if len(positives) > max_pos:
        labels[rng.choice(positives, len(positives) - max_pos, replace=False)] = -1
    negatives = np.flatnonzero(labels == 0)
    max_neg = cfg.rpn_batch - int((labels == 1).sum())
    if len(negatives) > max_neg:
        labels[rng.choice(negatives, len(negatives) - max_neg, replace=False)] = -1
    return labels, targets


def training_batch(
    step: int,
    cfg: TrainConfig,
    anchors: np.ndarray,
    data: DataConfig | None = None,
    source=None,
    det: DetectorConfig | None = None,
) -> dict[str, np.ndarray]:
    """Batch ``step`` of the training stream: images, padded ground truth and RPN targets.

    ``source(step) -> Batch`` (with a ``max_gt`` attribute) defaults to the procedural stream.
    """
    source = source or ProceduralBatches(cfg, data or DataConfig())
    batch = source(step)
    scales = (det or DetectorConfig()).box_coder_scales
    rng = np.random.default_rng([cfg.seed, 1000 + TRAIN_SPLIT, step])
    b = cfg.batch_size
    max_gt = source.max_gt
    gt_boxes = np.zeros((b, max_gt, 4), np.float32)
    gt_labels = np.full((b, max_gt), -1, np.int32)
    rpn_labels = np.zeros((b, anchors.shape[0]), np.int8)
    rpn_deltas = np.zeros((b, anchors.shape[0], 4), np.float32)
    for i, (boxes, labels) in enumerate(zip(batch.boxes, batch.labels)):
        gt_boxes[i, : len(boxes)] = boxes
        gt_labels[i, : len(labels)] = labels
        rpn_labels[i], rpn_deltas[i] = rpn_targets(boxes, anchors, rng, cfg, scales)
    return {
        "images": batch.images.astype(np.float32),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "rpn_labels": rpn_labels.astype(np.int32),
        "rpn_deltas": rpn_deltas,
    }


def _prefetch(cfg: TrainConfig, anchors: np.ndarray, source, det: DetectorConfig, depth: int = 4):
    """Yields batches 0..steps-1 in order, produced by a background thread."""
    out: queue.Queue = queue.Queue(maxsize=depth)

    def work() -> None:
        try:
            for step in range(cfg.steps):
                out.put(training_batch(step, cfg, anchors, source=source, det=det))
        except BaseException as error:  # re-raised in the training thread, not lost
            out.put(error)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    for _ in range(cfg.steps):
        item = out.get()
        if isinstance(item, BaseException):
            raise item
        yield item


# ---------------------------------------------------------------------------- TF graph pieces


def _decode_tf(tf, deltas, anchors, scales):
    """TF twin of runtime.processing.decode_boxes (same clamp)."""
    d = deltas / tf.constant(scales, tf.float32)
    ah = anchors[..., 2] - anchors[..., 0]
    aw = anchors[..., 3] - anchors[..., 1]
    ay = anchors[..., 0] + 0.5 * ah
    ax = anchors[..., 1] + 0.5 * aw
    limit = float(np.log(1000.0 / 16.0))
    h = ah * tf.exp(tf.minimum(d[..., 2], limit))
    w = aw * tf.exp(tf.minimum(d[..., 3], limit))
    cy = ay + d[..., 0] * ah
    cx = ax + d[..., 1] * aw
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def _encode_tf(tf, boxes, anchors, scales):
    """TF twin of runtime.processing.encode_boxes."""
    ah = tf.maximum(anchors[..., 2] - anchors[..., 0], 1e-3)
    aw = tf.maximum(anchors[..., 3] - anchors[..., 1], 1e-3)
    ay = anchors[..., 0] + 0.5 * ah
    ax = anchors[..., 1] + 0.5 * aw
    bh = tf.maximum(boxes[..., 2] - boxes[..., 0], 1e-3)
    bw = tf.maximum(boxes[..., 3] - boxes[..., 1], 1e-3)
    by = boxes[..., 0] + 0.5 * bh
    bx = boxes[..., 1] + 0.5 * bw
    d = tf.stack([(by - ay) / ah, (bx - ax) / aw, tf.math.log(bh / ah), tf.math.log(bw / aw)], -1)
    return d * tf.constant(scales, tf.float32)


def _iou_tf(tf, a, b):
    """Pairwise IoU [..., N, M] of a [..., N, 4] and b [..., M, 4]."""
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = inter_h * inter_w
    area_a = tf.maximum(a[..., 2] - a[..., 0], 0.0) * tf.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = tf.maximum(b[..., 2] - b[..., 0], 0.0) * tf.maximum(b[..., 3] - b[..., 1], 0.0)
    return inter / tf.maximum(area_a + area_b - inter, 1e-6)


def _huber(tf, x):
    ax = tf.abs(x)
    return tf.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def make_train_step(layers, cfg: TrainConfig, det: DetectorConfig, optimizer, max_gt: int = MAX_GT):
    """A compiled ``step(batch, step_index) -> dict of losses`` updating the shared layers;
    ground truth comes padded to ``max_gt`` boxes per image."""
    import keras
    import tensorflow as tf

    h, w = det.image_size
    image = keras.Input((h, w, 3), name="image")
    features, logits, deltas = layers.backbone(image, training=True)
    backbone = keras.Model(image, [features, logits, deltas], name="backbone_train")
    fh, fw = det.feature_size
    f_in = keras.Input((fh, fw, det.feature_channels), name="features")
    rois_in = keras.Input((4,), name="proposals")
    idx_in = keras.Input((), dtype="int32", name="box_indexes")
    cls_logits, box_deltas = layers.head(
        f_in, rois_in, idx_in, layers.roi_pooling("crop_and_resize")
    )
    head = keras.Model([f_in, rois_in, idx_in], [cls_logits, box_deltas], name="head_train")
    variables = backbone.trainable_variables + [
        v for v in head.trainable_variables if all(v is not u for u in backbone.trainable_variables)
    ]

    anchors = tf.constant(make_anchors(det))
    scales = det.box_coder_scales
    size = tf.constant([h, w, h, w], tf.float32)
    b = cfg.batch_size
    pt = cfg.train_proposals
    j = cfg.jitter_per_gt

    @tf.function(reduce_retracing=True)
    def step(batch, step_index):
        images = batch["images"]
        gt_boxes, gt_labels = batch["gt_boxes"], batch["gt_labels"]
        gt_valid = gt_labels >= 0
        with tf.GradientTape() as tape:
            features, logits, deltas = backbone(images, training=True)
            # --- RPN losses on sampled anchors
            rpn_labels = batch["rpn_labels"]
            sampled = tf.cast(rpn_labels >= 0, tf.float32)
            positive = tf.cast(rpn_labels == 1, tf.float32)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
            rpn_cls = tf.reduce_sum(bce * sampled) / tf.maximum(tf.reduce_sum(sampled), 1.0)
            reg = tf.reduce_sum(_huber(tf, deltas - batch["rpn_deltas"]), -1)
            rpn_reg = tf.reduce_sum(reg * positive) / tf.maximum(tf.reduce_sum(positive), 1.0)
            # --- proposals from the RPN itself (no gradient through the boxes)
            scores = tf.stop_gradient(tf.sigmoid(logits))
            top_scores, top_idx = tf.math.top_k(scores, k=det.rpn_pre_nms_count)
            top_boxes = _decode_tf(
                tf,
                tf.gather(tf.stop_gradient(deltas), top_idx, batch_dims=1),
                tf.gather(anchors, top_idx),
                scales,
            )
            top_boxes = tf.minimum(tf.maximum(top_boxes, 0.0), size)
            keep, num_keep = tf.image.non_max_suppression_padded(
                top_boxes,
                top_scores,
                max_output_size=pt,
                iou_threshold=det.rpn_nms_iou,
                pad_to_max_output_size=True,
            )
            proposals = tf.gather(top_boxes, keep, batch_dims=1)  # [B, pt, 4]
            prop_valid = tf.range(pt)[None, :] < num_keep[:, None]
            # --- jittered copies of the true boxes
            seed = tf.stack([tf.constant(cfg.seed, tf.int32), tf.cast(step_index, tf.int32)])
            noise = tf.random.stateless_uniform((b, max_gt, j, 4), seed, -1.0, 1.0)
            gh = gt_boxes[..., 2] - gt_boxes[..., 0]
            gw = gt_boxes[..., 3] - gt_boxes[..., 1]
            cy = (gt_boxes[..., 0] + 0.5 * gh)[..., None] + 0.15 * noise[..., 0] * gh[..., None]
            cx = (gt_boxes[..., 1] + 0.5 * gw)[..., None] + 0.15 * noise[..., 1] * gw[..., None]
            jh = gh[..., None] * tf.exp(0.25 * noise[..., 2])
            jw = gw[..., None] * tf.exp(0.25 * noise[..., 3])
            jitter = tf.stack([cy - jh / 2, cx - jw / 2, cy + jh / 2, cx + jw / 2], -1)
            jitter = tf.reshape(tf.minimum(tf.maximum(jitter, 0.0), size), (b, max_gt * j, 4))
            jitter_valid = tf.reshape(tf.tile(gt_valid[..., None], (1, 1, j)), (b, max_gt * j))
            rois = tf.concat([proposals, gt_boxes, jitter], axis=1)  # [B, R, 4]
            roi_valid = tf.concat([prop_valid, gt_valid, jitter_valid], axis=1)
            r = pt + max_gt * (1 + j)
            # --- head targets
            ious = _iou_tf(tf, rois, gt_boxes)  # [B, R, G]
            ious = tf.where(gt_valid[:, None, :], ious, -1.0)
            match = tf.argmax(ious, axis=-1, output_type=tf.int32)
            best = tf.reduce_max(ious, axis=-1)
            matched_labels = tf.gather(gt_labels, match, batch_dims=1)
            matched_boxes = tf.gather(gt_boxes, match, batch_dims=1)
            target_cls = tf.where(best >= cfg.head_positive_iou, matched_labels + 1, 0)
            target_deltas = _encode_tf(tf, matched_boxes, rois, scales)
            flat_rois = tf.reshape(rois / size, (b * r, 4))
            box_indexes = tf.repeat(tf.range(b, dtype=tf.int32), r)
            cls_logits, box_deltas = head([features, flat_rois, box_indexes], training=True)
            valid = tf.cast(tf.reshape(roi_valid, (-1,)), tf.float32)
            target_cls = tf.reshape(target_cls, (-1,))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=target_cls, logits=cls_logits
            )
            head_cls = tf.reduce_sum(ce * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
            fg = tf.cast(target_cls > 0, tf.float32) * valid
            cls_index = tf.maximum(target_cls - 1, 0)
            pred = tf.gather(box_deltas, cls_index, batch_dims=1)  # [BR, 4]
            reg = tf.reduce_sum(_huber(tf, pred - tf.reshape(target_deltas, (-1, 4))), -1)
            head_reg = tf.reduce_sum(reg * fg) / tf.maximum(tf.reduce_sum(fg), 1.0)
            total = rpn_cls + rpn_reg + head_cls + head_reg
        grads = tape.gradient(total, variables)
        grads, _ = tf.clip_by_global_norm(grads, cfg.clip_norm)
        optimizer.apply_gradients(zip(grads, variables))
        return {
            "loss": total,
            "rpn_cls": rpn_cls,
            "rpn_reg": rpn_reg,
            "head_cls": head_cls,
            "head_reg": head_reg,
            "fg": tf.reduce_sum(fg) / b,
        }

    return step


# ---------------------------------------------------------------------------- driver


def train(cfg: TrainConfig, det: DetectorConfig | None = None) -> dict[str, Any]:
    """Train, save ``cfg.out`` (+ sidecars) and return the training record."""
    import keras
    import tensorflow as tf
    from tqdm import tqdm

    from models.detector import DetectorLayers, FloatDetector, LoadedDetector, save_detector
    from models.tf_threads import set_tensorflow_threads

    det, source, description, val = training_data(cfg, det)
    set_tensorflow_threads(cfg.threads)
    keras.utils.set_random_seed(cfg.seed)
    started = time.time()
    layers = DetectorLayers(det, cfg.backbone_weights)
    # A short run (a few dozen steps on one's own data) would otherwise end still warming up,
    # at a fraction of the learning rate; the shipped run (3600 steps) keeps its 150.
    warmup = min(cfg.warmup_steps, cfg.steps // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(cfg.steps - warmup, 1),
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
        alpha=0.02,
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    step_fn = make_train_step(layers, cfg, det, optimizer, source.max_gt)
    anchors = make_anchors(det)
    backbone_rpn, head = layers.export_models()  # shares the trained layers' weights
    validate = FloatDetector(LoadedDetector(backbone_rpn, head, det)) if val else None
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    batches = _prefetch(cfg, anchors, source, det)
    progress = tqdm(total=cfg.steps, disable=cfg.quiet, unit="step", file=sys.stderr)
    for step in range(cfg.steps):
        batch = next(batches)
        losses = step_fn({k: tf.constant(v) for k, v in batch.items()}, tf.constant(step))
        values = {k: float(v) for k, v in losses.items()}
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        progress.update(1)
        progress.set_postfix(loss=f"{values['loss']:.3f}")
        if (step + 1) % cfg.steps_per_epoch == 0:
            epoch = {k: v / cfg.steps_per_epoch for k, v in sums.items()}
            epoch["epoch"] = (step + 1) // cfg.steps_per_epoch
            epoch["elapsed_s"] = round(time.time() - started, 1)
            history.append(epoch)
            sums = {}
            if not cfg.quiet:
                progress.write(
                    f"epoch {epoch['epoch']:3d}/{cfg.epochs}  "
                    + "  ".join(f"{k} {epoch[k]:.4f}" for k in ("loss", "rpn_cls", "rpn_reg"))
                    + "  "
                    + "  ".join(f"{k} {epoch[k]:.4f}" for k in ("head_cls", "head_reg", "fg"))
                    + f"  ({epoch['elapsed_s']:.0f}s)"
                )
            if validate is not None:
                from models.evaluate import score_dataset

                summary = score_dataset(validate, *val)
                epoch["val_map50"] = summary["map50"]
                epoch["val_map50_95"] = summary["map50_95"]
                progress.write(
                    f"epoch {epoch['epoch']:3d}/{cfg.epochs}  val mAP@0.5 {summary['map50']:.4f}"
                    f"  mAP@0.5:0.95 {summary['map50_95']:.4f}  ({summary['images']} images)"
                )
    progress.close()
    wall = time.time() - started
    out = Path(cfg.out)
    save_detector(backbone_rpn, head, det, out)
    record = {
        "train_config": dataclasses.asdict(cfg),
        "data": description,
        "detector_config": det.to_dict(),
        "steps": cfg.steps,
        "images_seen": cfg.steps * cfg.batch_size,
        "wall_time_s": round(wall, 1),
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "final_losses": history[-1] if history else {},
        "history": history,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    record_path = out.with_name(out.stem + ".training.json")
    atomic_write_bytes(record_path, strict_json.dump_bytes(record))
    return record


#: What each flag does (``--help``); the default is appended from TrainConfig.
FLAG_HELP = {
    "seed": "seed of every random choice (data stream, sampling, jitter, weights)",
    "epochs": "training epochs; a loss line (and a val mAP line with --val) after each",
    "steps_per_epoch": "optimizer steps per epoch",
    "batch_size": "images per step",
    "learning_rate": "peak AdamW learning rate (after warmup; cosine decay to 2%% of it)",
    "warmup_steps": "linear learning-rate warmup steps (at most a fifth of all steps)",
    "weight_decay": "AdamW weight decay",
    "clip_norm": "gradients are clipped to this global norm",
    "rpn_batch": "anchors sampled per image for the RPN loss",
    "rpn_positive_fraction": "largest share of positive anchors in the RPN sample",
    "rpn_positive_iou": "an anchor at this IoU or more with a box is an RPN positive",
    "rpn_negative_iou": "an anchor below this IoU with every box is an RPN negative",
    "train_proposals": "RPN proposals per image the head trains on (plus the true boxes)",
    "jitter_per_gt": "jittered copies of each true box added to the head's RoIs",
    "head_positive_iou": "a RoI at this IoU or more with a box is a head positive",
    "threads": "TensorFlow threads (intra- and inter-op)",
    "out": "the trained detector (.keras); its config sidecar .json and <stem>.training.json "
    "are written next to it",
    "quiet": "no progress bar or epoch lines",
    "data": "COCO instances JSON to train on (default: procedural shapes)",
    "val": "COCO instances JSON scored after every epoch (mAP line)",
    "images": "folder the datasets' file_name entries are relative to (default: the JSON's)",
    "image_size": "model input H W; multiples of the backbone's stride (8 tiny, 16 "
    "mobilenet_v2) (default 160 160)",
    "num_proposals": "RoIs the head classifies per image (default 64; the head's cost grows "
    "with it: see docs/real_sizes.md)",
    "pool_size": "RoIPooling output H W per RoI (default 7 7)",
    "max_detections": "most detections kept per image after NMS (default 20)",
    "score_threshold": "lowest class score kept as a detection (default 0.05)",
    "backbone": "feature extractor: tiny (built-in, stride 8) or mobilenet_v2 "
    "(keras.applications, stride 16, random weights unless --backbone-weights)",
    "backbone_weights": "local .h5/.keras weights file for --backbone mobilenet_v2 (e.g. "
    "ImageNet's ..._no_top.h5); nothing is downloaded",
    "anchor_sizes": "anchor sizes in pixels at the model size (default: chosen from the --data "
    "boxes so each is matched at IoU >= 0.5; procedural: 16 32 56 96 scaled)",
    "anchor_ratios": "anchor aspect ratios h/w (default 0.5 1 2)",
}


def _parser() -> argparse.ArgumentParser:
    from models.backbones import BACKBONES

    parser = argparse.ArgumentParser(
        prog="python -m models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        text = FLAG_HELP[field.name]
        kind = str(field.type)
        if "(default" not in text and field.default is not None and kind != "bool":
            text += f" (default {field.default})"
        if kind == "bool":
            parser.add_argument(flag, action="store_true", help=text)
        elif kind.startswith("tuple[int, int]"):
            parser.add_argument(flag, type=int, nargs=2, metavar=("H", "W"), help=text)
        elif kind.startswith("tuple[float, ...]"):
            parser.add_argument(flag, type=float, nargs="+", metavar="X", help=text)
        elif field.name == "backbone":
            parser.add_argument(flag, choices=BACKBONES, default=field.default, help=text)
        else:
            convert = {"int": int, "float": float, "str": str}[kind.split(" | ")[0]]
            parser.add_argument(flag, type=convert, default=field.default, help=text)
    return parser


def _bad_numbers(cfg: TrainConfig) -> str | None:
    """One line naming the first numeric flag out of its range, or None.

    Checked before TensorFlow sees them: a negative thread count aborts its C++ runtime, a NaN
    learning rate trains to NaN weights, and a huge --image-size allocates gigabytes.
    """
    from runtime import limits
    from runtime.limits import bad_number

    if cfg.epochs < 1 or cfg.steps_per_epoch < 1 or cfg.batch_size < 1:
        return "--epochs, --steps-per-epoch and --batch-size must be >= 1"
    # (flag, value, low, high, low_open, LIMITS row): every numeric field of TrainConfig. An
    # IoU of 2 or a NaN weight decay would otherwise train a broken model without a word.
    checks = [
        ("--seed", cfg.seed, 0, 2**31 - 1, False, None),  # TensorFlow's stateless seeds: int32
        ("--batch-size", cfg.batch_size, 1, None, False, "flag_batch"),
        ("--threads", cfg.threads, 1, None, False, "flag_threads"),
        ("--learning-rate", cfg.learning_rate, 0, None, True, None),
        ("--warmup-steps", cfg.warmup_steps, 0, None, False, None),
        ("--weight-decay", cfg.weight_decay, 0, None, False, None),
        ("--clip-norm", cfg.clip_norm, 0, None, True, None),
        ("--rpn-batch", cfg.rpn_batch, 1, None, False, None),
        ("--rpn-positive-fraction", cfg.rpn_positive_fraction, 0, 1, True, None),
        ("--rpn-positive-iou", cfg.rpn_positive_iou, 0, 1, True, None),
        ("--rpn-negative-iou", cfg.rpn_negative_iou, 0, 1, False, None),
        ("--train-proposals", cfg.train_proposals, 1, None, False, "config_proposals"),
        ("--jitter-per-gt", cfg.jitter_per_gt, 0, None, False, "train_jitter"),
        ("--head-positive-iou", cfg.head_positive_iou, 0, 1, True, None),
    ]
    for side in cfg.image_size or ():
        checks.append(("--image-size side", side, 8, None, False, "config_image_side"))
    longest = 4.0 * max(cfg.image_size or (160, 160))  # DetectorConfig's bound on anchor sizes
    top = float(limits.limit("config_anchor_ratio"))
    checks += [("--anchor-sizes", v, 0, longest, True, None) for v in cfg.anchor_sizes or ()]
    checks += [("--anchor-ratios", v, 1 / top, top, False, None) for v in cfg.anchor_ratios or ()]
    for side in cfg.pool_size or ():
        checks.append(("--pool-size side", side, 1, None, False, "config_pool_side"))
    optional = [
        ("--num-proposals", cfg.num_proposals, 1, None, False, "config_proposals"),
        ("--max-detections", cfg.max_detections, 1, None, False, "config_detections"),
        ("--score-threshold", cfg.score_threshold, 0, 1, False, None),
    ]
    checks += [check for check in optional if check[1] is not None]
    for flag, value, low, high, low_open, limit_name in checks:
        bad = bad_number(flag, value, low, high, low_open=low_open, limit_name=limit_name)
        if bad:
            return bad
    for flag, values in (
        ("--anchor-sizes", cfg.anchor_sizes),
        ("--anchor-ratios", cfg.anchor_ratios),
    ):
        if values is not None and len(set(values)) != len(values):
            return f"{flag} repeats a value ({list(values)}); expected distinct numbers"
    if cfg.rpn_negative_iou > cfg.rpn_positive_iou:
        return (
            f"--rpn-negative-iou {cfg.rpn_negative_iou} is above --rpn-positive-iou "
            f"{cfg.rpn_positive_iou}; expected negative <= positive (anchors below the one are "
            "background, above the other objects)"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("image_size", "pool_size", "anchor_sizes", "anchor_ratios"):
        if getattr(args, name) is not None:
            setattr(args, name, tuple(getattr(args, name)))
    cfg = TrainConfig(**vars(args))
    bad = _bad_numbers(cfg)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if not cfg.out.endswith(".keras"):
        say(f"error: --out {cfg.out!r} must end in .keras", file=sys.stderr)
        return 2
    from models.backbones import check_backbone

    try:
        check_backbone(cfg.backbone, cfg.backbone_weights, cfg.image_size or (160, 160))
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if cfg.data is not None and cfg.out == TrainConfig.out:
        print(
            f"error: --data needs --out PATH.keras (the default {cfg.out} is the shipped detector)",
            file=sys.stderr,
        )
        return 2
    try:
        # Found now, not after the training: a model that cannot be saved loses all of it.
        from models.detector import config_path
        from runtime.replace import output_lock
        from runtime.safe_files import writable_output

        # ``--data own.json --out own.keras``: the sidecar own.json would replace the dataset.
        datasets = (cfg.data, cfg.val)
        writable_output(cfg.out, "--out", inputs=datasets)
        writable_output(config_path(cfg.out), "--out (its config sidecar)", inputs=datasets)
        record_path = Path(cfg.out).with_name(Path(cfg.out).stem + ".training.json")
        writable_output(record_path, "--out (its training record)", inputs=datasets)
        # A second training to the same --out is refused at once: otherwise both run and the
        # one that saves last silently replaces the other's model.
        with output_lock(cfg.out, "--out", "models.train"):
            record = train(cfg)
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    say(
        f"saved {cfg.out} after {record['steps']} steps in {record['wall_time_s']:.0f}s; "
        f"final loss {record['final_losses'].get('loss', float('nan')):.4f}"
    )
    return 0


if __name__ == "__main__":
    from runtime.interrupts import run_main

    sys.exit(run_main(main))
