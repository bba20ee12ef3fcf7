"""models.data: determinism, split separation, and boxes that are the drawn shapes' exact extents."""

from __future__ import annotations

import dataclasses

import numpy as np

from models.data import (
    CLASS_NAMES,
    EVAL_SEED,
    TRAIN_SPLIT,
    DataConfig,
    eval_split,
    make_batch,
    make_sample,
    sample_rng,
)


def test_same_seed_same_images_and_splits_differ():
    a = make_batch(3, TRAIN_SPLIT, 10, 4)
    b = make_batch(3, TRAIN_SPLIT, 10, 4)
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes))
    # a slice is the same images as the full range
    c = make_batch(3, TRAIN_SPLIT, 12, 2)
    assert np.array_equal(a.images[2:], c.images)
    assert not np.array_equal(make_batch(4, TRAIN_SPLIT, 10, 4).images, a.images)
    held_out = eval_split(8)
    assert np.array_equal(held_out.images, eval_split(8).images)
    train = make_batch(EVAL_SEED, TRAIN_SPLIT, 0, 8)
    assert not any(np.array_equal(x, y) for x in held_out.images for y in train.images)


def test_scene_statistics():
    config = DataConfig()
    batch = make_batch(0, TRAIN_SPLIT, 0, 200, config)
    assert batch.images.shape == (200, 160, 160, 3) and batch.images.dtype == np.uint8
    counts = [len(b) for b in batch.boxes]
    assert min(counts) >= 1 and max(counts) <= 6
    labels = np.concatenate(batch.labels)
    assert set(labels.tolist()) == set(range(len(CLASS_NAMES)))
    boxes = np.concatenate(batch.boxes)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() >= 6 and sides.max() <= config.max_size + 1
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 160).all()


def test_boxes_are_the_visible_masks_extents():
    for index in range(50):
        sample = make_sample(sample_rng(1, TRAIN_SPLIT, index))
        assert len(sample.masks) == len(sample.boxes)
        assert (sample.masks.sum(axis=0) <= 1).all()  # one owner per pixel
        for mask, (y1, x1, y2, x2) in zip(sample.masks, sample.boxes):
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (y1, x1, y2, x2)


def test_boxes_enclose_the_drawn_pixels_tightly():
    # noise-free single-object scenes: the object's flat colour appears exactly inside its box,
    # touching all four sides, checked from the pixels alone (not the masks)
    config = dataclasses.replace(DataConfig(), max_objects=1, noise_min=0.0, noise_max=0.0)
    for index in range(60):
        sample = make_sample(sample_rng(2, TRAIN_SPLIT, index), config)
        (y1, x1, y2, x2), mask = sample.boxes[0].astype(int), sample.masks[0]
        colour = sample.image[mask][0]
        same = (sample.image == colour).all(axis=-1)
        rows = np.flatnonzero(same.any(axis=1))
        cols = np.flatnonzero(same.any(axis=0))
        assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (y1, x1, y2, x2), index
