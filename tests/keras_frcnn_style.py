"""A keras-frcnn-style detector built the way keras-frcnn builds it, small, for tests.

keras-frcnn (yhenon/keras-frcnn): a VGG base; ``rpn`` = 3x3 conv, then a 1x1 conv of A sigmoid
scores ``[1,H,W,A]`` and a 1x1 conv of 4A linear deltas ``[1,H,W,4A]`` (tx, ty, tw, th per
anchor, times ``std_scaling`` 4); ``classifier`` = ``RoiPoolingConv`` (RoIs (x, y, w, h) in feature
pixels, cast to int, each crop resized to ``pool_size``) + TimeDistributed Flatten/Dense, softmax
class scores with background LAST and ``4 * (classes - 1)`` deltas scaled by ``[8, 8, 4, 4]``.
Anchors: sizes x ratios (size-major), ratio pairs multiply (x, y), centred on the cell index.

:class:`RoiPoolingConv` here is written for these tests with the same semantics (the user's layer
a card export loads through ``custom_objects``). Also: a small COCO set written by the test
(its own category ids), and a few training steps with keras-frcnn-style targets.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CLASS_NAMES = ("disc", "block")
CATEGORY_IDS = (7, 12)  # the dataset's own ids, not 1..K
STRIDE = 8
ANCHOR_SIZES = (16, 32)  # at 64x64; anchor_sizes() scales them with the image


def anchor_sizes(image_size) -> tuple[int, ...]:
    """The anchors' sizes (pixels) for ``image_size``: write_coco_set's objects are 0.3-0.5 of
    the image side, so the anchors scale with it (16, 32 at 64 px; 32, 64 at 128 px)."""
    scale = min(image_size) / 64
    return tuple(round(size * scale) for size in ANCHOR_SIZES)


ANCHOR_RATIOS = (1.0, 0.5, 2.0)  # w/h; keras-frcnn's [[1,1],[1/sqrt2,2/sqrt2],[2/sqrt2,1/sqrt2]]
RPN_STD = 4.0
CLASSIFIER_STD = (8.0, 8.0, 4.0, 4.0)
MEAN = (103.939, 116.779, 123.68)  # keras-frcnn's img_channel_mean, subtracted from RGB

LAYER_SOURCE = '''
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="frcnn")
class RoiPoolingConv(keras.layers.Layer):
    """keras-frcnn semantics: rois [1, num_rois, 4] (x, y, w, h) feature pixels, cast to int32,
    crop img[:, y:y+h, x:x+w, :], bilinear tf.image.resize to pool_size; [1, num_rois, p, p, C]."""

    def __init__(self, pool_size, num_rois, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.num_rois = num_rois

    def call(self, x):
        img, rois = x[0], x[1]
        outputs = []
        for roi_idx in range(self.num_rois):
            x1 = tf.cast(rois[0, roi_idx, 0], "int32")
            y1 = tf.cast(rois[0, roi_idx, 1], "int32")
            w = tf.cast(rois[0, roi_idx, 2], "int32")
            h = tf.cast(rois[0, roi_idx, 3], "int32")
            crop = img[:, y1 : y1 + h, x1 : x1 + w, :]
            outputs.append(tf.image.resize(crop, (self.pool_size, self.pool_size)))
        final = tf.concat(outputs, axis=0)
        channels = img.shape[-1]
        return tf.reshape(final, (1, self.num_rois, self.pool_size, self.pool_size, channels))

    def compute_output_shape(self, input_shape):
        channels = input_shape[0][-1]
        return (None, self.num_rois, self.pool_size, self.pool_size, channels)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "num_rois": self.num_rois}
'''


def write_layer_file(folder: Path) -> Path:
    path = Path(folder) / "frcnn_layers.py"
    path.write_text(LAYER_SOURCE, encoding="utf-8")
    return path


def import_layer(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("frcnn_layers_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RoiPoolingConv


def build_models(layer, num_rois=8, pool=4, channels=16, hidden=32, seed=0):
    """(model_rpn, model_classifier) as keras-frcnn's train_frcnn/test_frcnn build them."""
    import keras

    keras.utils.set_random_seed(seed)
    num_anchors = len(ANCHOR_SIZES) * len(ANCHOR_RATIOS)
    img_input = keras.Input(shape=(None, None, 3))
    x = img_input
    for width in (8, 16, channels):  # vgg-like blocks: conv, conv, pool
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D((2, 2), strides=(2, 2))(x)
    base = x
    r = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name="rpn_conv1")(base)
    x_class = keras.layers.Conv2D(num_anchors, 1, activation="sigmoid", name="rpn_out_class")(r)
    x_regr = keras.layers.Conv2D(num_anchors * 4, 1, activation="linear", name="rpn_out_regress")(r)
    model_rpn = keras.Model(img_input, [x_class, x_regr, base], name="model_rpn")

    feature_input = keras.Input(shape=(None, None, channels))
    roi_input = keras.Input(shape=(num_rois, 4))
    pooled = layer(pool, num_rois)([feature_input, roi_input])
    out = keras.layers.TimeDistributed(keras.layers.Flatten())(pooled)
    out = keras.layers.TimeDistributed(keras.layers.Dense(hidden, activation="relu"))(out)
    nb_classes = len(CLASS_NAMES) + 1
    out_class = keras.layers.TimeDistributed(
        keras.layers.Dense(nb_classes, activation="softmax"), name=f"dense_class_{nb_classes}"
    )(out)
    out_regr = keras.layers.TimeDistributed(
        keras.layers.Dense(4 * (nb_classes - 1), activation="linear"),
        name=f"dense_regress_{nb_classes}",
    )(out)
    model_classifier = keras.Model([feature_input, roi_input], [out_class, out_regr])
    return model_rpn, model_classifier


def card_dict(image_size, num_rois=8, score_threshold=0.5):
    """The card of these models (paths relative to the card)."""
    return {
        "schema_version": 1,
        "backbone_rpn": "model_rpn.keras",
        "custom_objects": "frcnn_layers.py",
        "image_size": list(image_size),
        "preprocess": {
            "channels": "RGB",
            "mean": list(MEAN),
            "std": [1, 1, 1],
            "resize": "stretch",
        },
        "class_names": list(CLASS_NAMES),
        "category_ids": list(CATEGORY_IDS),
        "anchors": {
            "stride": STRIDE,
            "sizes": list(anchor_sizes(image_size)),
            "ratios": list(ANCHOR_RATIOS),
            "ratio_side": "w/h",
            "order": "size_major",
            "centre_offset": 0,
        },
        "rpn": {
            "outputs": ["scores", "deltas", "features"],
            "layouts": {"scores": "[1,H,W,A]", "deltas": "[1,H,W,4A]"},
            "scores": "probability",
            "delta_order": "xywh",
            "delta_scales": [RPN_STD] * 4,
            "pre_nms_top_n": None,
            "post_nms_top_n": 300,
            "nms_iou": 0.7,
            "min_size": 0,
        },
        "rois": {
            "format": "feature_xywh",
            "integer": True,
            "num_rois": num_rois,
            "box_indexes": False,
        },
        "head": {
            "model": "model_classifier.keras",
            "inputs": ["features", "rois"],
            "outputs": ["class_scores", "box_deltas"],
            "scores": "softmax",
            "background": "last",
            "class_selection": "argmax",
            "deltas_layout": "[1,N,4K]",
            "delta_order": "xywh",
            "delta_scales": list(CLASSIFIER_STD),
            "round_to_feature_pixels": True,
            "clip": False,
        },
        "postprocess": {"score_threshold": score_threshold, "nms_iou": 0.5, "max_detections": 300},
    }


# ------------------------------------------------------------------------------------- data set


def write_coco_set(folder: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """``count`` PNGs of 1-3 discs/blocks on noise and an instances JSON with CATEGORY_IDS."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    height, width = size
    for index in range(count):
        pixels = rng.integers(40, 90, (height, width, 3), dtype=np.uint8)
        canvas = Image.fromarray(pixels)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(1, 3))):
            side = float(rng.uniform(0.3, 0.5) * min(size))
            x1 = float(rng.uniform(0, width - side))
            y1 = float(rng.uniform(0, height - side))
            label = int(rng.integers(0, 2))
            box = (x1, y1, x1 + side, y1 + side)
            if label == 0:
                draw.ellipse(box, fill=(230, 60, 40))
            else:
                draw.rectangle(box, fill=(40, 200, 230))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": CATEGORY_IDS[label],
                    "bbox": [x1, y1, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"images/img_{index:03d}.png"
        canvas.save(folder / name)
        images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    path = folder / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}),
        encoding="utf-8",
    )
    return path


def load_set(path: Path):
    """[(RGB uint8 image, boxes [G,4] x1 y1 x2 y2 pixels, labels [G] 0..K-1)] of a written set."""
    from PIL import Image

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    by_image: dict[int, list] = {i["id"]: [] for i in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append(([x, y, x + w, y + h], CATEGORY_IDS.index(a["category_id"])))
    items = []
    for info in data["images"]:
        image = np.asarray(Image.open(Path(path).parent / info["file_name"]).convert("RGB"))
        objects = by_image[info["id"]]
        boxes = np.asarray([o[0] for o in objects], np.float64).reshape(-1, 4)
        items.append((image, boxes, np.asarray([o[1] for o in objects], np.int64)))
    return items


# -------------------------------------------------------------------------------------- training


def _iou(a, b):
    """IoU [N,M] of x1 y1 x2 y2 boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _anchors_xyxy(rows, cols):
    """[rows, cols, A, 4] anchors in image pixels, keras-frcnn's layout (centre at the cell index
    times the stride)."""
    sizes = anchor_sizes((rows * STRIDE, cols * STRIDE))
    out = np.zeros((rows, cols, len(sizes) * len(ANCHOR_RATIOS), 4))
    a = 0
    for size in sizes:
        for ratio in ANCHOR_RATIOS:
            w, h = size * math.sqrt(ratio), size / math.sqrt(ratio)
            cy, cx = np.meshgrid(np.arange(rows) * STRIDE, np.arange(cols) * STRIDE, indexing="ij")
            out[:, :, a] = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            a += 1
    return out


def _coding(boxes, targets):
    """keras-frcnn's (tx, ty, tw, th) of ``targets`` relative to ``boxes`` (x1 y1 x2 y2)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    tw_, th_ = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    tcx, tcy = targets[:, 0] + tw_ / 2, targets[:, 1] + th_ / 2
    return np.stack([(tcx - cx) / w, (tcy - cy) / h, np.log(tw_ / w), np.log(th_ / h)], -1)


def train(model_rpn, model_classifier, items, image_size, steps=40, seed=0, lr=1e-3):
    """Adam steps of both models on keras-frcnn-style targets, one image a step (RPN: IoU >= 0.5
    positive, < 0.3 negative; classifier: jittered ground truth and background RoIs, bg last).
    The gradient steps are traced once (tf.function): eager steps cost ~10x more."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    height, width = image_size
    rows, cols = height // STRIDE, width // STRIDE
    anchors = _anchors_xyxy(rows, cols).reshape(-1, 4)
    num_rois = model_classifier.inputs[1].shape[1]
    k = len(CLASS_NAMES)
    rpn_opt, cls_opt = keras.optimizers.Adam(lr), keras.optimizers.Adam(lr)

    @tf.function
    def rpn_step(tensor, positive, valid, regr):
        with tf.GradientTape() as tape:
            scores, deltas, _ = model_rpn(tensor, training=True)
            scores = tf.reshape(scores, [-1, 1])
            deltas = tf.reshape(deltas, [-1, 4])
            bce = keras.losses.binary_crossentropy(positive[:, None], scores)
            cls_loss = tf.reduce_sum(bce * valid) / tf.maximum(1.0, tf.reduce_sum(valid))
            diff = tf.abs(deltas - regr)
            smooth = tf.where(diff < 1, 0.5 * diff**2, diff - 0.5)
            reg_loss = tf.reduce_sum(tf.reduce_sum(smooth, 1) * positive) / tf.maximum(
                1.0, tf.reduce_sum(positive)
            )
            loss = cls_loss + reg_loss
        grads = tape.gradient(loss, model_rpn.trainable_variables)
        rpn_opt.apply_gradients(zip(grads, model_rpn.trainable_variables))
        return model_rpn(tensor, training=False)[2]

    @tf.function
    def classifier_step(features, roi_tensor, onehot, regr_t, mask):
        with tf.GradientTape() as tape:
            probs, box = model_classifier([features, roi_tensor], training=True)
            ce = tf.reduce_mean(keras.losses.categorical_crossentropy(onehot, probs))
            diff = tf.abs(box - regr_t) * mask
            smooth = tf.where(diff < 1, 0.5 * diff**2, diff - 0.5)
            loss = ce + tf.reduce_sum(smooth) / tf.maximum(1.0, tf.reduce_sum(mask))
        grads = tape.gradient(loss, model_classifier.trainable_variables)
        cls_opt.apply_gradients(zip(grads, model_classifier.trainable_variables))

    from runtime.images import resize

    for step in range(steps):
        image, boxes, labels = items[step % len(items)]
        sy, sx = height / image.shape[0], width / image.shape[1]
        gt = boxes * [sx, sy, sx, sy]
        tensor = (resize(image, image_size).astype(np.float32) - MEAN)[None]
        overlaps = _iou(anchors, gt)
        best = overlaps.max(1)
        positive = (best >= 0.5) | np.isin(np.arange(len(anchors)), overlaps.argmax(0))
        valid = positive | (best < 0.3)
        regr = _coding(anchors, gt[overlaps.argmax(1)]) * RPN_STD
        features = rpn_step(
            tf.constant(tensor),
            tf.constant(positive.astype(np.float32)),
            tf.constant(valid.astype(np.float32)),
            tf.constant(regr.astype(np.float32)),
        )

        rois, targets, label_rows = [], [], []
        for _ in range(num_rois):
            if rng.random() < 0.6 and len(gt):
                g = int(rng.integers(len(gt)))
                box = gt[g] / STRIDE + rng.normal(0, 0.3, 4)
            else:
                x, y = rng.uniform(0, cols - 2), rng.uniform(0, rows - 2)
                box = np.array([x, y, x + rng.uniform(1, 3), y + rng.uniform(1, 3)])
            x1, y1 = max(0, round(box[0])), max(0, round(box[1]))
            x2, y2 = min(cols, max(x1 + 1, round(box[2]))), min(rows, max(y1 + 1, round(box[3])))
            roi = np.array([x1, y1, x2, y2], np.float64)
            iou = _iou(roi[None] * STRIDE, gt)[0] if len(gt) else np.zeros(1)
            g = int(iou.argmax())
            label = int(labels[g]) if iou[g] >= 0.5 else k
            rois.append([x1, y1, x2 - x1, y2 - y1])
            t = np.zeros(4 * k)
            if label < k:
                t[4 * label : 4 * label + 4] = (
                    _coding(roi[None] * STRIDE, gt[g][None])[0] * CLASSIFIER_STD
                )
            targets.append((t, label))
            label_rows.append(label)
        regr_t = np.stack([t for t, _ in targets]).astype(np.float32)[None]
        mask = np.zeros_like(regr_t)
        for i, (_, label) in enumerate(targets):
            if label < k:
                mask[0, i, 4 * label : 4 * label + 4] = 1
        classifier_step(
            features,
            tf.constant(np.asarray(rois, np.float32)[None]),
            tf.constant(np.eye(k + 1, dtype=np.float32)[label_rows][None]),
            tf.constant(regr_t),
            tf.constant(mask),
        )


def write_detector(
    folder: Path, data_json: Path, image_size, steps=40, num_rois=8, score_threshold=0.5
):
    """Build, train and save the two models, the layer file and the card; returns the card path."""
    folder.mkdir(parents=True, exist_ok=True)
    layer_file = write_layer_file(folder)
    model_rpn, model_classifier = build_models(import_layer(layer_file), num_rois=num_rois)
    if steps:
        train(model_rpn, model_classifier, load_set(data_json), image_size, steps=steps)
    model_rpn.save(folder / "model_rpn.keras")
    model_classifier.save(folder / "model_classifier.keras")
    card = folder / "card.json"
    card.write_text(json.dumps(card_dict(image_size, num_rois, score_threshold), indent=1))
    return card
