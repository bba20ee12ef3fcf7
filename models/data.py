"""Procedural detection data: coloured circles, rectangles and triangles on textured backgrounds.

Every image is a pure function of ``(seed, split, index)``, so any slice of a split is reproducible
and the training split (``TRAIN_SPLIT``) never shares a random stream with the held-out evaluation
split (``EVAL_SPLIT``, fixed seed ``EVAL_SEED``). Boxes are exact: ``[y1, x1, y2, x2]`` in pixels with
``y2``/``x2`` exclusive, i.e. the extent of the object's visible mask. Numpy only.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

CLASS_NAMES = ("circle", "rectangle", "triangle")
TRAIN_SPLIT = 0
EVAL_SPLIT = 1
EVAL_SEED = 20261125
EVAL_IMAGES = 500


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How scenes are drawn. Sizes are in pixels; ``min_visible`` is the fraction of an object's
    own area that must stay unoccluded by objects drawn after it."""

    image_size: tuple[int, int] = (160, 160)
    min_objects: int = 1
    max_objects: int = 6
    min_size: float = 12.0
    max_size: float = 90.0
    min_visible: float = 0.6
    noise_min: float = 3.0
    noise_max: float = 14.0
    min_color_distance: float = 80.0


def data_config_for(image_size: tuple[int, int]) -> DataConfig:
    """Procedural scenes at ``image_size`` = (H, W): object sizes scale with the shorter side
    (at 160x160 this is exactly ``DataConfig()``, the shipped detector's data)."""
    height, width = (int(v) for v in image_size)
    if (height, width) == DataConfig().image_size:
        return DataConfig()
    scale = min(height, width) / min(DataConfig().image_size)
    base = DataConfig()
    return dataclasses.replace(
        base,
        image_size=(height, width),
        min_size=base.min_size * min(scale, 1.0),
        max_size=base.max_size * scale,
    )


class Sample(NamedTuple):
    """One scene: ``image`` [H,W,3] uint8; ``boxes`` [n,4] float32 pixels; ``labels`` [n] int32;
    ``masks`` [n,H,W] bool visible masks (the boxes are their extents)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


class Batch(NamedTuple):
    """Many scenes: ``images`` [B,H,W,3] uint8; per-image ``boxes`` and ``labels`` lists."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field plus optional stripes, float32 [H,W,3] in [0,255]."""
    grid = int(rng.integers(2, 7))
    coarse = rng.uniform(20, 235, size=(grid + 1, grid + 1, 3))
    # Pull the colours of the field together so objects stand out by colour more than the field.
    coarse = coarse.mean(axis=(0, 1), keepdims=True) * 0.4 + coarse * 0.6
    ys = np.linspace(0, grid, height)
    xs = np.linspace(0, grid, width)
    y0 = np.minimum(ys.astype(int), grid - 1)
    x0 = np.minimum(xs.astype(int), grid - 1)
    fy = (ys - y0).astype(np.float32)[:, None, None]
    fx = (xs - x0).astype(np.float32)[None, :, None]
    coarse = coarse.astype(np.float32)
    rows = coarse[:, x0] * (1 - fx) + coarse[:, x0 + 1] * fx  # [grid+1, W, 3], separable bilinear
    field = rows[y0] * (1 - fy) + rows[y0 + 1] * fy
    if rng.random() < 0.5:
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, np.pi)
        yy = np.arange(height, dtype=np.float32)[:, None]
        xx = np.arange(width, dtype=np.float32)[None, :]
        phase = (yy * np.sin(angle) + xx * np.cos(angle)) * np.float32(2 * np.pi / period)
        field = field + (np.float32(rng.uniform(8, 25)) * np.sin(phase))[:, :, None]
    return field.astype(np.float32)


def _shape_mask(
    rng: np.random.Generator, label: int, size: float, height: int, width: int
) -> np.ndarray:
    """A boolean mask [H,W] of one shape of class ``label`` and extent about ``size`` pixels."""
    yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(width, dtype=np.float32)[None, :] + 0.5
    if label == 0:  # circle
        r = size / 2.0
        cy = rng.uniform(r, height - r)
        cx = rng.uniform(r, width - r)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if label == 1:  # axis-aligned rectangle, aspect ratio up to 2:1
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        h = size * min(1.0, aspect)
        w = size * min(1.0, 1.0 / aspect)
        y1 = rng.uniform(0, height - h)
        x1 = rng.uniform(0, width - w)
        return (yy >= y1) & (yy < y1 + h) & (xx >= x1) & (xx < x1 + w)
    # triangle: a randomly rotated, possibly squashed triangle inscribed in a circle of ~size/2
    r = size / 2.0
    cy = rng.uniform(r, height - r)
    cx = rng.uniform(r, width - r)
    theta = rng.uniform(0, 2 * np.pi)
    angles = theta + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    vy = cy + r * np.sin(angles)
    vx = cx + r * np.cos(angles)
    inside = np.ones((height, width), dtype=bool)
    sign = None
    for i in range(3):
        j = (i + 1) % 3
        cross = (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
        if sign is None:
            # orientation of the triangle, so "inside" is the same side of every edge
            k = (i + 2) % 3
            sign = np.sign((vx[j] - vx[i]) * (vy[k] - vy[i]) - (vy[j] - vy[i]) * (vx[k] - vx[i]))
        inside &= cross * sign >= 0
    return inside


def make_sample(rng: np.random.Generator, config: DataConfig = DataConfig()) -> Sample:
    """Draw one scene with ``rng``: 1..max_objects shapes, each keeping >= min_visible of itself."""
    height, width = config.image_size
    background = _background(rng, height, width)
    image = background.copy()
    owner = np.full((height, width), -1, dtype=np.int32)
    areas: list[int] = []
    labels: list[int] = []
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(count):
        for _attempt in range(20):
            label = int(rng.integers(0, len(CLASS_NAMES)))
            size = float(np.exp(rng.uniform(np.log(config.min_size), np.log(config.max_size))))
            mask = _shape_mask(rng, label, size, height, width)
            area = int(mask.sum())
            if area < 0.25 * config.min_size**2:
                continue
            new_owner = np.where(mask, len(areas), owner)
            visible = np.bincount(new_owner[new_owner >= 0].ravel(), minlength=len(areas) + 1)
            if all(visible[k] >= config.min_visible * areas[k] for k in range(len(areas))):
                break
        else:
            continue
        local = background[mask].mean(axis=0)
        for _colour_try in range(20):
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
            if np.linalg.norm(colour - local) >= config.min_color_distance:
                break
        owner = new_owner
        areas.append(area)
        labels.append(label)
        image[mask] = colour
    noise = rng.uniform(config.noise_min, config.noise_max)
    image += np.float32(noise) * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    masks = owner[None, :, :] == np.arange(len(labels))[:, None, None]
    boxes = np.zeros((len(labels), 4), dtype=np.float32)
    for k in range(len(labels)):
        rows = np.flatnonzero(masks[k].any(axis=1))
        cols = np.flatnonzero(masks[k].any(axis=0))
        boxes[k] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return Sample(image, boxes, np.asarray(labels, dtype=np.int32), masks)


def sample_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split`` under ``seed``."""
    return np.random.default_rng([int(seed), int(split), int(index)])


def make_batch(
    seed: int, split: int, start: int, count: int, config: DataConfig = DataConfig()
) -> Batch:
    """Images ``start .. start+count-1`` of ``split`` under ``seed``."""
    samples = [make_sample(sample_rng(seed, split, i), config) for i in range(start, start + count)]
    return Batch(
        np.stack([s.image for s in samples]),
        [s.boxes for s in samples],
        [s.labels for s in samples],
    )


def eval_split(num_images: int = EVAL_IMAGES, config: DataConfig = DataConfig()) -> Batch:
    """The fixed held-out evaluation split (seed ``EVAL_SEED``, ``EVAL_SPLIT``), first ``num_images``."""
    return make_batch(EVAL_SEED, EVAL_SPLIT, 0, num_images, config)
