"""Calibration and golden inputs of both stages, from procedural scenes or the user's images.

The user's images (a folder, or the ``images[]`` of a COCO instances JSON) load and resize exactly
as the runtime does at inference; the golden images are held back from them, never calibrated on.
Procedural scenes are rendered at the detector's own input size.

Head inputs are realistic: each image goes through the float ``backbone_rpn`` and the runtime's
``proposals_from_rpn``, exactly as at inference time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.config import CALIBRATION_SEED, ExportInputError
from runtime.errors import RoiedgeError, one_line
from runtime.images import IMAGE_SUFFIXES  # the suffixes detect picks up, .webp included


def procedural_images(
    count: int,
    split: int,
    seed: int = CALIBRATION_SEED,
    progress=None,
    size: tuple[int, int] = (160, 160),
    start: int = 0,
):
    """``count`` procedural uint8 [H,W,3] scenes of ``models.data`` (split ``split``, sample
    indexes ``start``...) at ``size``."""
    from models.data import data_config_for, make_sample, sample_rng

    data = data_config_for(size)
    images = []
    for index in range(start, start + count):
        images.append(make_sample(sample_rng(seed, split, index), data).image)
        if progress is not None:
            progress.update(1)
    return images


def image_files(directory: Path) -> list[Path]:
    """The image files of ``directory`` (:data:`runtime.images.IMAGE_SUFFIXES`, sorted), or a
    one-line ExportInputError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportInputError(
            f"--calibration {directory}: no such directory (expected a folder of .jpg/.png images)"
        )
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportInputError(
            f"--calibration {directory}: contains no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def calibration_files(source: Path) -> list[Path]:
    """The image files of ``--calibration``: a folder's .jpg/.png files, or a COCO JSON's images."""
    source = Path(source)
    if source.suffix.lower() != ".json":
        return image_files(source)
    from models.coco import load_coco

    try:
        dataset = load_coco(source, require_annotations=False)
    except RoiedgeError as error:
        raise ExportInputError(f"--calibration {one_line(error)}") from None
    return [item.path for item in dataset.images]


def hold_out_golden(files: Sequence[Path], count: int) -> tuple[list[Path], list[Path]]:
    """(calibration files, golden files): ``count`` files spread evenly over ``files`` are held
    back as golden samples, so the on-device check never runs on an image it was calibrated on."""
    files = list(files)
    if len(files) <= count:
        raise ExportInputError(
            f"--calibration has {len(files)} images; expected more than --golden-samples "
            f"({count}): golden samples are held back from calibration"
        )
    picks = {int((i + 0.5) * len(files) / count) for i in range(count)}
    golden = [f for i, f in enumerate(files) if i in picks]
    return [f for i, f in enumerate(files) if i not in picks], golden


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 RGB, decoded and resized (bilinear) to ``size`` = (H, W) as the
    runtime's ``detect`` does (a large JPEG decoded at a reduced scale first)."""
    from runtime.images import open_image, resize

    try:
        return resize(open_image(path, reduce_to=tuple(size))[0], size)
    except RoiedgeError as error:
        raise ExportInputError(str(error)) from None


class StageInputs:
    """Turns uint8 images into each stage's inputs with the float Keras backbone."""

    def __init__(self, detector: Any) -> None:
        import tensorflow as tf

        from runtime.processing import make_anchors

        self.config = detector.config
        self.anchors = make_anchors(detector.config)
        self._backbone = tf.function(lambda x: detector.backbone_rpn(x, training=False))

    def __call__(self, image: np.ndarray) -> dict[str, list[np.ndarray]]:
        """{"backbone_rpn": [image], "head": [features, proposals, box_indexes]} for one image."""
        from runtime.processing import preprocess, proposals_from_rpn

        try:
            x = preprocess(image, self.config)
        except RoiedgeError as error:
            raise ExportInputError(str(error)) from None
        features, rpn_scores, rpn_deltas = (np.asarray(t) for t in self._backbone(x))
        props = proposals_from_rpn(rpn_scores, rpn_deltas, self.config, self.anchors)
        return {
            "backbone_rpn": [x],
            "head": [features, props.proposals, props.box_indexes],
        }


def stage_samples(
    detector: Any, images: Sequence[np.ndarray], progress=None
) -> dict[str, list[list[np.ndarray]]]:
    """Per stage, one list of inputs (Keras order) per image."""
    make = StageInputs(detector)
    samples: dict[str, list[list[np.ndarray]]] = {"backbone_rpn": [], "head": []}
    for image in images:
        for stage, inputs in make(image).items():
            samples[stage].append(inputs)
        if progress is not None:
            progress.update(1)
    return samples
