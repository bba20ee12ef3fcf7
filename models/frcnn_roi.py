"""keras-frcnn's ``RoiPoolingConv`` in TFLite builtins: integer crops resized bilinearly.

keras-frcnn (yhenon/keras-frcnn and its forks) pools each RoI ``(x, y, w, h)`` -- feature-map
pixels, cast to int32 -- by cropping ``img[:, y:y+h, x:x+w, :]`` and resizing the crop to
``pool_size`` x ``pool_size`` with TensorFlow's bilinear resize, in a Python loop over
``num_rois``, then stacks the crops as ``[1, num_rois, pool, pool, C]`` for ``TimeDistributed``
layers. Which resize depends on the TensorFlow it was written for (:data:`RESIZES`):

* ``"legacy"``: TF1's ``tf.image.resize_images`` (and ``tf.compat.v1.image.resize_images``,
  ``resize_bilinear(align_corners=False)``): sample ``i`` of ``P`` at ``i * crop / P``;
* ``"half_pixel"``: TF2's ``tf.image.resize`` (bilinear, no antialias): at
  ``(i + 0.5) * crop / P - 0.5``;
* ``"align_corners"``: ``resize_bilinear(align_corners=True)``: at ``i * (crop - 1) / (P - 1)``.

Each kernel then reads rows ``max(floor(s), 0)`` and ``min(ceil(s), crop - 1)`` of the crop with
weight ``s - floor(s)``. Here every sample position is the exact rational ``(a * crop + b) / D``
in int32 (no float rounding at all), the four bilinear weights are int32 numerators over ``D**2``
cast to float once, and the four corners come from GATHERs on the ``[H*W, C]`` map: builtins
only. The RoIs enter through FLOOR_DIV (no int8 kernel, so full-integer conversion leaves them
float) and are int32 from there on: coordinates are never quantized.

Semantics for RoIs as keras-frcnn's ``rpn_to_roi`` makes them (``x, y >= 0``, ``w, h >= 1``, the
box on the map). Elsewhere TF's slice wraps negative starts or fails on empty crops; here
``x, y`` are clamped onto the map and the crop to ``[1, map - x]`` pixels.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from runtime.errors import RoiedgeError

#: The bilinear resize conventions of RoiPoolingConv variants (module docstring).
RESIZES = ("legacy", "half_pixel", "align_corners")


class FrcnnRoiError(RoiedgeError, ValueError):
    """A RoiPoolingConv argument or input has the wrong shape, dtype or value."""


def resize_terms(pool_size: int, resize: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(a [P], b [P], D): sample ``i`` of a crop of ``n`` pixels lies at ``(a[i]*n + b[i]) / D``."""
    if resize not in RESIZES:
        raise FrcnnRoiError(f"RoiPoolingConv resize {resize!r}: expected one of {RESIZES}")
    i = np.arange(pool_size, dtype=np.int64)
    if resize == "legacy":
        return i, np.zeros_like(i), pool_size
    if resize == "half_pixel":
        return 2 * i + 1, np.full_like(i, -pool_size), 2 * pool_size
    if pool_size == 1:
        return np.zeros_like(i), np.zeros_like(i), 1
    return i, -i, pool_size - 1


def integer_boxes(rois: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, 4] int64 (x, y, crop width, crop height) as the lowering reads ``rois`` [N, 4]."""
    whole = np.floor(np.asarray(rois, np.float64)).astype(np.int64)
    x = np.clip(whole[:, 0], 0, width - 1)
    y = np.clip(whole[:, 1], 0, height - 1)
    w = np.clip(np.minimum(x + whole[:, 2], width) - x, 1, None)
    h = np.clip(np.minimum(y + whole[:, 3], height) - y, 1, None)
    return np.stack([x, y, w, h], axis=1)


def sample_positions(start, length, pool_size: int, resize: str) -> np.ndarray:
    """[N, P] float64 map positions (pixels) of the samples along one axis, clamped to the crop
    as the kernels clamp their rows (``start`` [N], ``length`` [N] crop pixels)."""
    a, b, d = resize_terms(pool_size, resize)
    length = np.asarray(length, np.float64)[:, None]
    inside = (a[None, :] * length + b[None, :]) / d
    return np.asarray(start, np.float64)[:, None] + np.clip(inside, 0.0, length - 1)


def _axis(start, length, pool_size: int, resize: str, zeros):
    """(low [N,P], high [N,P], fraction [N,P]) int32 for one axis; fraction in units of 1/D."""
    a, b, d = resize_terms(pool_size, resize)
    a = tf.constant(a.astype(np.int32))[None, :] + zeros[:, None]
    b = tf.constant(b.astype(np.int32))[None, :]
    numerator = a * length[:, None] + b  # exact: crop and pool sizes are small
    floor = tf.math.floordiv(numerator, d)
    fraction = numerator - floor * d  # in [0, D)
    ceil = floor + tf.cast(fraction > 0, tf.int32)
    low = start[:, None] + tf.maximum(floor, 0)
    high = start[:, None] + tf.minimum(ceil, length[:, None] - 1)
    return low, high, fraction


def frcnn_roi_pool(feature_maps, rois, pool_size: int, resize: str = "legacy"):
    """``[1, N, P, P, C]``: RoiPoolingConv of ``feature_maps`` [1, H, W, C] float (static H, W, C)
    at ``rois`` [1, N, 4] float (x, y, w, h) feature-map pixels, in TFLite builtins."""
    feature_maps = tf.convert_to_tensor(feature_maps)
    rois = tf.convert_to_tensor(rois)
    shape = feature_maps.shape
    if shape.rank != 4 or None in shape[1:] or shape[0] not in (1, None):
        raise FrcnnRoiError(
            f"RoiPoolingConv feature map shape {shape}: expected [1, H, W, C] with static H, W, C"
        )
    if rois.shape.rank != 3 or rois.shape[-1] != 4 or not rois.dtype.is_floating:
        raise FrcnnRoiError(
            f"RoiPoolingConv rois {rois.shape} {rois.dtype.name}: expected [1, N, 4] float "
            "(x, y, w, h) feature-map pixels"
        )
    _, height, width, channels = shape
    # FLOOR_DIV has no int8 kernel: full-integer conversion keeps the RoIs float up to here.
    # Shapes change on the int32 side only: a RESHAPE of the float RoIs would be int8.
    whole = tf.reshape(tf.cast(tf.math.floordiv(rois, 1.0), tf.int32), [-1, 4])
    x, y, w, h = tf.unstack(whole, axis=1)
    zeros = tf.math.floordiv(x, 1 << 30) * 0  # [N] int32 zeros from an input (no folding)
    x = tf.clip_by_value(x, 0, width - 1)
    y = tf.clip_by_value(y, 0, height - 1)
    w = tf.maximum(tf.minimum(x + w, width) - x, 1)
    h = tf.maximum(tf.minimum(y + h, height) - y, 1)
    top, bottom, fy = _axis(y, h, pool_size, resize, zeros)
    left, right, fx = _axis(x, w, pool_size, resize, zeros)
    d = resize_terms(pool_size, resize)[2]
    flat = tf.reshape(feature_maps, [-1, channels])

    def gather(rows, cols):
        return tf.gather(flat, rows[:, :, None] * width + cols[:, None, :])  # [N, P, P, C]

    wy, wx = fy[:, :, None], fx[:, None, :]
    scale = 1.0 / float(d * d)

    def weight(numerator):  # exact int32 numerator over D**2, one rounding in float
        return (tf.cast(numerator, feature_maps.dtype) * scale)[..., None]

    pooled = (
        gather(top, left) * weight((d - wy) * (d - wx))
        + gather(top, right) * weight((d - wy) * wx)
        + gather(bottom, left) * weight(wy * (d - wx))
        + gather(bottom, right) * weight(wy * wx)
    )
    return tf.reshape(pooled, [1, -1, pool_size, pool_size, channels])


@keras.saving.register_keras_serializable(package="roiedge")
class FrcnnRoiPooling(keras.layers.Layer):
    """keras-frcnn's RoiPoolingConv in builtins: ``call([img [1,H,W,C], rois [1,N,4] (x, y, w,
    h) feature pixels])`` -> ``[1, num_rois, pool_size, pool_size, C]`` (:func:`frcnn_roi_pool`).

    Args: ``pool_size`` (int), ``num_rois`` (int, the RoIs per call), ``resize`` (one of
    :data:`RESIZES`), ``**kwargs`` to ``keras.layers.Layer``.
    """

    def __init__(self, pool_size=7, num_rois=32, resize="legacy", **kwargs):
        super().__init__(**kwargs)
        for key, value in (("pool_size", pool_size), ("num_rois", num_rois)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise FrcnnRoiError(f"RoiPoolingConv {key} {value!r}: expected a positive int")
        resize_terms(1, resize)
        self.pool_size, self.num_rois, self.resize = int(pool_size), int(num_rois), resize

    def call(self, inputs, mask=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise FrcnnRoiError(
                f"layer {self.name}: takes [feature_map, rois], got {type(inputs).__name__}"
            )
        pooled = frcnn_roi_pool(inputs[0], inputs[1], self.pool_size, self.resize)
        channels = inputs[0].shape[-1]
        return tf.reshape(pooled, [1, self.num_rois, self.pool_size, self.pool_size, channels])

    def compute_output_shape(self, input_shape):
        channels = input_shape[0][-1]
        return (1, self.num_rois, self.pool_size, self.pool_size, channels)

    def get_config(self):
        config = {"pool_size": self.pool_size, "num_rois": self.num_rois, "resize": self.resize}
        return {**super().get_config(), **config}
