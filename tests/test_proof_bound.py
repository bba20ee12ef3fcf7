"""The swap proof's float32 rounding bound (export.proof_bound) against independent references.

References: TensorFlow's own ``tf.image.crop_and_resize`` and a float64 numpy crop_and_resize
written here (exact sample positions, not TF's float32 ones). Correct swaps must pass at every
feature magnitude; wrong swaps (another samples_per_bin, a half-pixel shift, x and y exchanged)
must fail at every magnitude, both when the original layer runs here and when only its outputs
are given.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from export.config import ExportCheckError
from export.shared import keras_outputs
from export.swap import SwappedRoIPooling, prove_swap, retile_for, swap_roi_layers
from tests.keras_models import head_model

MAGNITUDES = (1, 10, 100, 1000)
OUTPUTS = ["class_scores", "box_deltas"]


def crop_and_resize_float64(features, rois, box_indexes, crop_size) -> np.ndarray:
    """crop_and_resize in float64 with exact sample positions (samples off the map read 0)."""
    features = np.asarray(features, np.float64)
    _, height, width, _ = features.shape
    rois = np.asarray(rois, np.float64)

    def axis(lo, hi, length, crop):
        if crop > 1:
            return (
                lo[:, None] * (length - 1)
                + np.arange(crop) / (crop - 1) * ((hi - lo) * (length - 1))[:, None]
            )
        return (0.5 * (lo + hi) * (length - 1))[:, None]

    ys = axis(rois[:, 0], rois[:, 2], height, crop_size[0])  # [N, ch]
    xs = axis(rois[:, 1], rois[:, 3], width, crop_size[1])  # [N, cw]
    inside = ((ys >= 0) & (ys <= height - 1))[:, :, None] & ((xs >= 0) & (xs <= width - 1))[
        :, None, :
    ]
    yc, xc = np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)
    top, left = np.floor(yc).astype(int), np.floor(xc).astype(int)
    bottom, right = np.minimum(top + 1, height - 1), np.minimum(left + 1, width - 1)
    wy, wx = (yc - top)[:, :, None, None], (xc - left)[:, None, :, None]
    n = np.arange(len(rois))[:, None, None]

    def pick(r, c):
        return features[np.asarray(box_indexes)[n], r[:, :, None], c[:, None, :]]

    value = (
        pick(top, left) * (1 - wy) * (1 - wx)
        + pick(top, right) * (1 - wy) * wx
        + pick(bottom, left) * wy * (1 - wx)
        + pick(bottom, right) * wy * wx
    )
    return value * inside[..., None]


def _inputs(seed, magnitude, height=30, width=40, channels=8, count=60):
    rng = np.random.default_rng(seed)
    features = (magnitude * rng.standard_normal((1, height, width, channels))).astype(np.float32)
    corners = rng.uniform(0.01, 0.99, (count, 2, 2))  # off the edge: no TF edge rounding here
    rois = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    rois[::3] = rois[::3][:, [2, 3, 0, 1]]  # some flipped boxes
    return features, rois.astype(np.float32), np.zeros(count, np.int32)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("samples_per_bin", [1, 2])
def test_tf_and_the_lowering_stay_within_the_bound_of_float64(magnitude, samples_per_bin):
    features, rois, indexes = _inputs(7 + magnitude, magnitude)
    layer = SwappedRoIPooling((7, 7), samples_per_bin)
    crop = (7 * samples_per_bin, 7 * samples_per_bin)
    exact = crop_and_resize_float64(features, rois, indexes, crop)
    theirs = tf.image.crop_and_resize(features, rois, indexes, crop).numpy()
    if samples_per_bin > 1:
        exact = tf.nn.max_pool2d(exact, 2, 2, "VALID").numpy()
        theirs = tf.nn.max_pool2d(theirs, 2, 2, "VALID").numpy()
    ours = layer(features, rois, indexes).numpy()
    bound = layer.rounding_bound([features, rois, indexes])
    for name, got in (("tf", theirs), ("lowering", ours)):
        use = np.max(np.abs(got - exact) / bound)
        print(f"{name} vs float64 at magnitude {magnitude}: {use:.3f} of the bound")
        assert use <= 1.0, name
    assert np.max(np.abs(ours - theirs) / bound) <= 1.0
    # Not vacuous: the bound is a small fraction of the values, far below a pixel's change.
    assert np.max(bound) <= 1e-3 * magnitude * np.max(np.abs(features))


class ShiftedRoIPooling(keras.layers.Layer):
    """A wrong layer: crop_and_resize half a pixel lower than the boxes say."""

    def __init__(self, size=(7, 7), **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size)

    def call(self, features, rois, box_indexes):
        shift = 0.5 / (features.shape[1] - 1)
        rois = rois + tf.constant([shift, 0.0, shift, 0.0])
        return tf.image.crop_and_resize(features, rois, box_indexes, self.size)


class TransposedRoIPooling(ShiftedRoIPooling):
    """A wrong layer: boxes read as x1, y1, x2, y2."""

    def call(self, features, rois, box_indexes):
        rois = tf.gather(rois, [1, 0, 3, 2], axis=1)
        return tf.image.crop_and_resize(features, rois, box_indexes, self.size)


class MaxPooledRoIPooling(ShiftedRoIPooling):
    """crop_and_resize at 2x then a 2x2 max pool: samples_per_bin 2, wrongly swapped as 1."""

    def call(self, features, rois, box_indexes):
        crop = (2 * self.size[0], 2 * self.size[1])
        crops = tf.image.crop_and_resize(features, rois, box_indexes, crop)
        return tf.nn.max_pool2d(crops, 2, 2, "VALID")


class PlainRoIPooling(ShiftedRoIPooling):
    """The tutorial layer: crop_and_resize to ``size``."""

    def call(self, features, rois, box_indexes):
        return tf.image.crop_and_resize(features, rois, box_indexes, self.size)


def _rows(magnitude, height, width, channels, count, samples=3, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(samples):
        features = magnitude * rng.standard_normal((1, height, width, channels))
        corners = rng.uniform(0.0, 1.0, (count, 2, 2))
        rois = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        rois[: count // 3, 2:] = 1.0  # boxes ending on the map edge (TF's rounding trap)
        indexes = np.zeros(count, np.int32)
        rows.append([features.astype(np.float32), rois.astype(np.float32), indexes])
    return rows


def _prove(layer, samples_per_bin, magnitude, given: bool, shape=(30, 40, 8, 24)):
    keras.utils.set_random_seed(3)
    model = head_model(layer, *shape)
    rows = _rows(magnitude, *shape)
    reference = keras_outputs(model, rows)
    swapped, swaps = swap_roi_layers(model, type(layer).__name__, samples_per_bin)
    original = None if given else model
    return prove_swap(swapped, rows, reference, OUTPUTS, "test", swaps, original=original)


@pytest.mark.parametrize("given", [False, True], ids=["original_here", "outputs_given"])
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_correct_swaps_pass_at_every_magnitude(magnitude, given):
    proof = _prove(PlainRoIPooling((7, 7), name="roi_pool"), 1, magnitude, given)
    assert proof["swapped_layers"][0]["layer"] == "roi_pool"
    pooled = _prove(MaxPooledRoIPooling((4, 4), name="roi_pool"), 2, magnitude, given)
    assert "of the float32 rounding bound" in pooled["summary"]


WRONG = {
    "samples_per_bin_1_for_2": (MaxPooledRoIPooling, 1),
    "samples_per_bin_2_for_1": (PlainRoIPooling, 2),
    "half_pixel_shift": (ShiftedRoIPooling, 1),
    "x_y_exchanged": (TransposedRoIPooling, 1),
}


@pytest.mark.parametrize("given", [False, True], ids=["original_here", "outputs_given"])
@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_wrong_swaps_fail_at_every_magnitude(wrong, magnitude, given):
    cls, samples_per_bin = WRONG[wrong]
    with pytest.raises(ExportCheckError, match=r"swap proof failed: .*float32 rounding"):
        _prove(cls((4, 4), name="roi_pool"), samples_per_bin, magnitude, given, (12, 14, 4, 6))


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_retiled_copy_is_proven_with_the_same_bound(magnitude):
    from models.roi_pooling import RoIPooling

    keras.utils.set_random_seed(5)
    layer = RoIPooling(
        size=(5, 5), implementation="fixed_point_split", tile_bytes=2 * 10 * 10 * 6, name="pool"
    )
    model = head_model(layer, 16, 20, 6, 10, name="split_head")
    rows = _rows(magnitude, 16, 20, 6, 10)
    copy, names = retile_for(model, "tflite", "int8", rows)
    assert names == ["pool"] and copy is not model
