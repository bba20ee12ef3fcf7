"""What training learns from: the procedural stream or a COCO dataset with its augmentation.

:func:`training_data` turns a :class:`models.train_config.TrainConfig` into the detector config and a
batch source ``source(step) -> models.data.Batch`` (deterministic in ``(seed, step)``, with the
``max_gt`` boxes per image the training graph pads to).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NamedTuple

import numpy as np

from models.data import CLASS_NAMES, TRAIN_SPLIT, Batch, DataConfig, data_config_for, make_batch
from models.train_config import TrainConfig
from runtime.config import DetectorConfig
from runtime.errors import RoiedgeError, printable, say

MAX_GT = 6  # DataConfig.max_objects; procedural ground truth is padded to this many boxes per image
#: Scale jitter of --data training: each image is zoomed by a log-uniform factor in this range and
#: cropped or padded back to the model size.
SCALE_JITTER = (0.75, 1.25)
#: An augmented box is kept when at least this fraction of it stays inside the frame.
MIN_KEPT_FRACTION = 0.5


def augment(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random horizontal flip and scale jitter of one uint8 [H,W,3] image, boxes [n,4] pixels.

    The zoomed image (resized by the runtime's resize) is cropped or padded with its mean colour
    back to H x W at a random offset; boxes follow and are clipped, and a box keeping less than
    MIN_KEPT_FRACTION of its area (or under 2 pixels a side) is dropped with its label.
    """
    from runtime.images import resize

    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes = np.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], 1)
    factor = float(np.exp(rng.uniform(*np.log(SCALE_JITTER))))
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    zoomed = resize(np.ascontiguousarray(image), (new_h, new_w))
    boxes = boxes * np.asarray([new_h / height, new_w / width] * 2, np.float32)
    # offset of the zoomed image's top-left corner in the frame (negative = cropped)
    oy = int(rng.integers(min(0, height - new_h), max(0, height - new_h) + 1))
    ox = int(rng.integers(min(0, width - new_w), max(0, width - new_w) + 1))
    canvas = np.empty_like(image)
    canvas[:] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    ys, xs = max(oy, 0), max(ox, 0)
    ye, xe = min(oy + new_h, height), min(ox + new_w, width)
    canvas[ys:ye, xs:xe] = zoomed[ys - oy : ye - oy, xs - ox : xe - ox]
    moved = boxes + np.asarray([oy, ox, oy, ox], np.float32)
    clipped = np.clip(moved, 0, np.asarray([height, width, height, width], np.float32))
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    kept_h, kept_w = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (kept_h >= 2) & (kept_w >= 2) & (kept_h * kept_w >= MIN_KEPT_FRACTION * area)
    return canvas, clipped[keep], np.asarray(labels)[keep]


class DatasetBatches:
    """Training batches drawn (with replacement, seeded by step) from a resized dataset, augmented."""

    def __init__(self, data: Batch, cfg: TrainConfig) -> None:
        self.data = data
        self.cfg = cfg
        self.max_gt = max(1, max(len(b) for b in data.boxes))

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng([self.cfg.seed, 2000, step])
        picks = rng.integers(0, len(self.data.images), self.cfg.batch_size)
        images, boxes, labels = [], [], []
        for index in picks:
            image, b, lab = augment(
                self.data.images[index], self.data.boxes[index], self.data.labels[index], rng
            )
            images.append(image)
            boxes.append(b)
            labels.append(lab)
        return Batch(np.stack(images), boxes, labels)


class ProceduralBatches:
    """Training batches of the procedural stream (the shipped detector's data)."""

    max_gt = MAX_GT

    def __init__(self, cfg: TrainConfig, data: DataConfig) -> None:
        self.cfg = cfg
        self.data = data

    def __call__(self, step: int) -> Batch:
        cfg = self.cfg
        return make_batch(cfg.seed, TRAIN_SPLIT, step * cfg.batch_size, cfg.batch_size, self.data)


class TrainingData(NamedTuple):
    """What one training run learns from and is validated on."""

    det: DetectorConfig
    source: Any  # step -> Batch, with max_gt
    description: dict[str, Any]
    val: Any  # (CocoDataset, Batch at det.image_size) or None


#: TrainConfig fields that set the DetectorConfig field of the same name when given.
DETECTOR_FLAGS = (
    "num_proposals",
    "pool_size",
    "max_detections",
    "score_threshold",
    "anchor_sizes",
    "anchor_ratios",
)
#: Procedural images whose boxes measure the anchor coverage of a procedural run.
PROCEDURAL_COVERAGE_IMAGES = 64


def with_detector_flags(det: DetectorConfig, cfg: TrainConfig) -> DetectorConfig:
    """``det`` with the ``--num-proposals``/``--pool-size``/``--max-detections``/
    ``--score-threshold``/``--anchor-sizes``/``--anchor-ratios`` values ``cfg`` gives
    (DetectorConfig validates them)."""
    given = {name: getattr(cfg, name) for name in DETECTOR_FLAGS if getattr(cfg, name) is not None}
    return dataclasses.replace(det, **given) if given else det


#: What to try when the coverage is low, by where the anchor sizes came from.
_ANCHOR_HINTS = {
    "chosen from the training boxes": "the rest are out of reach at this stride and these "
    "ratios: try other --anchor-ratios or a backbone with a smaller stride",
    "--anchor-sizes": "check --anchor-sizes/--anchor-ratios, or leave --anchor-sizes out to "
    "choose them from the --data boxes",
    "default": "set --anchor-sizes/--anchor-ratios to change them",
}


def _anchors(
    det: DetectorConfig, cfg: TrainConfig, boxes: np.ndarray, choose: bool
) -> tuple[DetectorConfig, dict[str, Any]]:
    """``det`` with anchor sizes chosen from ``boxes`` [N,4] when ``choose`` and no
    --anchor-sizes; prints the coverage line (a warning below 95% even with --quiet)."""
    from models.anchor_coverage import choose_anchor_sizes, coverage_report

    origin = "--anchor-sizes" if cfg.anchor_sizes is not None else "default"
    if choose and cfg.anchor_sizes is None:
        det = dataclasses.replace(det, anchor_sizes=choose_anchor_sizes(boxes, det))
        origin = "chosen from the training boxes"
    line, low = coverage_report(boxes, det)
    if low:
        say(f"warning: {line} ({_ANCHOR_HINTS[origin]})", file=sys.stderr)
    elif not cfg.quiet:
        say(line, file=sys.stderr)
    return det, {"line": line, "sizes_from": origin, "below_warning": low}


def _check_backbone(det: DetectorConfig, cfg: TrainConfig) -> None:
    if det.backbone != cfg.backbone:
        raise RoiedgeError(
            f"detector config has backbone {det.backbone!r}; --backbone is {cfg.backbone!r}"
        )


def training_data(cfg: TrainConfig, det: DetectorConfig | None) -> TrainingData:
    """The detector config and batch source of ``cfg``: a COCO dataset or the procedural stream.

    With ``cfg.data`` the class names come from the dataset and the config from
    :func:`models.detector.detector_config` at ``cfg.image_size``; a given ``det`` must agree.
    """
    from models.coco import load_coco, resized_batch, scale_to
    from models.detector import detector_config

    if cfg.data is None:
        if cfg.val is not None:
            raise RoiedgeError(
                f"--val {cfg.val} needs --data (the procedural data has its own held-out split)"
            )
        if det is None:
            det = with_detector_flags(
                detector_config(cfg.image_size or (160, 160), backbone=cfg.backbone), cfg
            )
        if tuple(det.class_names) != CLASS_NAMES:
            raise RoiedgeError(
                f"class names {list(det.class_names)} do not match the procedural data's "
                f"{list(CLASS_NAMES)}; train on your own labels with --data TRAIN.json"
            )
        _check_backbone(det, cfg)
        data = data_config_for(det.image_size)
        images = make_batch(cfg.seed, TRAIN_SPLIT, 0, PROCEDURAL_COVERAGE_IMAGES, data)
        _, coverage = _anchors(det, cfg, np.concatenate(images.boxes), choose=False)
        description = {"procedural": dataclasses.asdict(data), "anchors": coverage}
        return TrainingData(det, ProceduralBatches(cfg, data), description, None)
    dataset = load_coco(cfg.data, cfg.images)
    size = tuple(cfg.image_size) if cfg.image_size else (det.image_size if det else (160, 160))
    chosen = det is None
    if det is None:
        det = with_detector_flags(detector_config(size, dataset.class_names, cfg.backbone), cfg)
    _check_backbone(det, cfg)
    # The dataset's own category ids travel with the detector to `detect --json` (issue 20).
    if tuple(det.class_names) == dataset.class_names:
        det = dataclasses.replace(det, category_ids=dataset.category_ids)
    if tuple(det.class_names) != dataset.class_names or tuple(det.image_size) != size:
        raise RoiedgeError(
            f"detector config (classes {list(det.class_names)}, image size {det.image_size}) does "
            f"not match --data {cfg.data} (classes {list(dataset.class_names)}) at image size {size}"
        )
    boxes = [
        item.boxes[~item.crowd] * scale_to(size, item.height, item.width) for item in dataset.images
    ]
    det, coverage = _anchors(det, cfg, np.concatenate(boxes).reshape(-1, 4), choose=chosen)
    from tqdm import tqdm

    with tqdm(
        total=len(dataset.images),
        disable=cfg.quiet,
        desc=f"loading {printable(cfg.data)}",
        file=sys.stderr,
    ) as bar:
        resized = resized_batch(dataset, det.image_size, progress=bar)
    val = None
    if cfg.val is not None:
        val_set = load_coco(cfg.val, cfg.images)
        if (val_set.class_names, val_set.category_ids) != (
            dataset.class_names,
            dataset.category_ids,
        ):
            raise RoiedgeError(
                f"--val {cfg.val} has classes {list(val_set.class_names)} with category ids "
                f"{list(val_set.category_ids)}; expected the training classes "
                f"{list(dataset.class_names)} with ids {list(dataset.category_ids)}"
            )
        val = (val_set, resized_batch(val_set, det.image_size))
    description = {
        "dataset": str(cfg.data),
        "images": len(dataset.images),
        "annotations": dataset.num_annotations,
        "class_names": list(dataset.class_names),
        "category_ids": list(dataset.category_ids),
        "augmentation": {"hflip": 0.5, "scale_jitter": list(SCALE_JITTER)},
        "anchors": coverage,
    }
    return TrainingData(det, DatasetBatches(resized, cfg), description, val)
