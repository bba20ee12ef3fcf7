"""RoIPooling that lowers to TFLite builtin ops only (see :func:`roi_pool`).

TFLite has no ``CROP_AND_RESIZE`` builtin: ``tf.image.crop_and_resize`` converts only as a
Flex op, which tflite-runtime and ai-edge-litert cannot run. The default implementation here
rebuilds the same bilinear sampling from GATHER, integer and float arithmetic and MAX_POOL_2D,
and matches ``tf.image.crop_and_resize`` followed by a max pool to ~1e-6.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.roi_lowerings import (  # noqa: F401  (the range constants are public here)
    COORDINATE_RANGE,
    EDGE_SLACK,
    ELEMENT_BYTES,
    EXACT_RANGE,
    LOWERINGS,
    POOLING_LOWERINGS,
    SIZED_TILE_LOWERINGS,
    Tiling,
    max_pool_bins,
)
from runtime.errors import RoiedgeError

__all__ = [
    "EXACT_RANGE",
    "IMPLEMENTATIONS",
    "RoIPooling",
    "RoIPoolingInputError",
    "RoIPoolingTypeError",
    "roi_pool",
    "roi_pool_numpy",
    "rois_in_exact_range",
]

#: Selectable lowerings: the builtin-only forms (the int8-safe default first), then the TF oracle.
IMPLEMENTATIONS = [
    "fixed_point",
    "fixed_point_split",
    "gather",
    "crop_and_resize",
]
#: The default lowering: ``fixed_point``'s sampling and int32 coordinates, cut into L2-sized
#: tiles (``make bench``: float32 2.2-2.9x TF's fused kernel against 4.9-7.5x untiled, int8
#: ~10% faster, int8 error 0.014 with the tiles' ranges shared by ``share_tile_ranges``).
DEFAULT_IMPLEMENTATION = "fixed_point_split"


def rois_in_exact_range(rois) -> bool:
    """True if every coordinate of ``rois`` (``[..., 4]`` normalized) lies in :data:`EXACT_RANGE`.

    Outside it the fixed-point lowerings clamp the coordinate to the range (so their result is
    crop_and_resize of the clamped box); NaN counts as outside. For the export to warn when
    calibration or golden RoIs leave the range.
    """
    values = np.asarray(rois, np.float64)
    low, high = EXACT_RANGE
    return bool(np.all((values >= low) & (values <= high)))


class RoIPoolingInputError(RoiedgeError, ValueError):
    """A RoIPooling argument or input has the wrong shape or value."""


class RoIPoolingTypeError(RoiedgeError, TypeError):
    """A RoIPooling argument or input has the wrong type or dtype."""


def _check_size(size) -> tuple[int, int]:
    """Returns ``size`` as two positive Python ints, or raises a one-line error."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
        or not all(v >= 1 for v in size)
    ):
        raise RoIPoolingInputError(
            f"RoIPooling size must be two positive ints (height, width), got {size!r}"
        )
    return int(size[0]), int(size[1])


def _check_samples_per_bin(samples_per_bin) -> int:
    if isinstance(samples_per_bin, bool) or not isinstance(samples_per_bin, (int, np.integer)):
        raise RoIPoolingTypeError(
            f"RoIPooling samples_per_bin must be an int >= 1, got {samples_per_bin!r}"
        )
    if samples_per_bin < 1:
        raise RoIPoolingInputError(
            f"RoIPooling samples_per_bin must be an int >= 1, got {samples_per_bin!r}"
        )
    return int(samples_per_bin)


def _check_implementation(implementation) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise RoIPoolingInputError(
            f"RoIPooling implementation must be one of {tuple(IMPLEMENTATIONS)}, got "
            f"{implementation!r}"
        )
    return implementation


def register_lowering(name: str, lowering, *, pools: bool = False, sized_tiles: bool = False):
    """Make ``name`` selectable as ``RoIPooling(implementation=name)`` (``bench/lowerings.py``).

    ``lowering``: ``(feature_maps, rois, box_indexes, crop_size) -> crops`` (max-pooled here), or
    with ``pools``, ``(..., crop_size, samples_per_bin, tiling) -> pooled``; ``sized_tiles``: its
    tiles follow ``tile_precision``/``tile_bytes``.
    """
    if name in IMPLEMENTATIONS:
        return
    (POOLING_LOWERINGS if pools else LOWERINGS)[name] = lowering
    if sized_tiles:
        SIZED_TILE_LOWERINGS.append(name)
    IMPLEMENTATIONS.append(name)


def _check_tiling(implementation: str, tile_precision, tile_bytes) -> Tiling:
    """The :class:`Tiling` of a split lowering, or a one-line error for bad or unused options."""
    if tile_precision not in ELEMENT_BYTES:
        raise RoIPoolingInputError(
            f"RoIPooling tile_precision must be one of {tuple(ELEMENT_BYTES)}, "
            f"got {tile_precision!r}"
        )
    if tile_bytes is not None and (
        isinstance(tile_bytes, bool)
        or not isinstance(tile_bytes, (int, np.integer))
        or tile_bytes < 1
    ):
        raise RoIPoolingInputError(
            f"RoIPooling tile_bytes must be a positive int or None, got {tile_bytes!r}"
        )
    tiling = Tiling(None if tile_bytes is None else int(tile_bytes), ELEMENT_BYTES[tile_precision])
    if tiling != Tiling() and implementation not in SIZED_TILE_LOWERINGS:
        # Refused, not ignored: the caller asked for tiles this lowering does not cut.
        raise RoIPoolingInputError(
            f"RoIPooling tile_precision/tile_bytes apply to {tuple(SIZED_TILE_LOWERINGS)} only, "
            f"got tile_precision={tile_precision!r}, tile_bytes={tile_bytes!r} with "
            f"implementation {implementation!r}"
        )
    return tiling


def _shape_str(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_inputs(feature_maps, rois, box_indexes):
    """Shared input checks of :func:`roi_pool` and :class:`RoIPooling`.

    Checks static ranks, shapes and dtypes (the parts known at trace time) and returns the
    three inputs as tensors, ``box_indexes`` as int32.
    """
    tensors = []
    for name, value in (
        ("feature_maps", feature_maps),
        ("rois", rois),
        ("box_indexes", box_indexes),
    ):
        if isinstance(value, (list, tuple)) or not hasattr(value, "shape"):
            value = np.asarray(value)
            if value.dtype == np.float64:
                value = value.astype(np.float32)
        try:
            value = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as error:
            raise RoIPoolingTypeError(
                f"RoIPooling {name} must be a tensor, got {type(value).__name__}: {error}"
            ) from None
        tensors.append(value)
    feature_maps, rois, box_indexes = tensors

    fm_shape = feature_maps.shape
    if fm_shape.rank != 4:
        raise RoIPoolingInputError(
            f"RoIPooling feature_maps must be rank 4 [batch, height, width, channels], "
            f"got shape {_shape_str(fm_shape)}"
        )
    if not feature_maps.dtype.is_floating:
        raise RoIPoolingTypeError(
            f"RoIPooling feature_maps must be a float tensor, got dtype {feature_maps.dtype.name}"
        )
    if rois.shape.rank != 2 or rois.shape[1] not in (None, 4):
        raise RoIPoolingInputError(
            f"RoIPooling rois must have shape [num_rois, 4] (normalized y1, x1, y2, x2), "
            f"got shape {_shape_str(rois.shape)}"
        )
    if not rois.dtype.is_floating:
        raise RoIPoolingTypeError(
            f"RoIPooling rois must be a float tensor, got dtype {rois.dtype.name}"
        )
    if box_indexes.shape.rank != 1:
        raise RoIPoolingInputError(
            f"RoIPooling box_indexes must have shape [num_rois], "
            f"got shape {_shape_str(box_indexes.shape)}"
        )
    if box_indexes.dtype not in (tf.int32, tf.int64):
        raise RoIPoolingTypeError(
            f"RoIPooling box_indexes must be int32 (or int64), got dtype {box_indexes.dtype.name}"
        )
    n_rois, n_indexes = rois.shape[0], box_indexes.shape[0]
    if n_rois is not None and n_indexes is not None and n_rois != n_indexes:
        raise RoIPoolingInputError(
            f"RoIPooling rois and box_indexes must have the same num_rois, "
            f"got rois {_shape_str(rois.shape)} and box_indexes {_shape_str(box_indexes.shape)}"
        )
    rois = tf.cast(rois, tf.float32)
    box_indexes = tf.cast(box_indexes, tf.int32)
    return feature_maps, rois, box_indexes


def roi_pool(
    feature_maps,
    rois,
    box_indexes,
    size=(7, 7),
    samples_per_bin: int = 2,
    implementation: str = DEFAULT_IMPLEMENTATION,
    tile_precision: str = "float32",
    tile_bytes: int | None = None,
):
    """Pools each RoI of ``feature_maps`` to a fixed ``size`` grid (TF Object Detection API style).

    Computes exactly ``max_pool(crop_and_resize(feature_maps, rois, box_indexes,
    (size[0] * s, size[1] * s)), s, s)`` with ``s = samples_per_bin``: bilinear samples on a
    regular grid inside each box, then the max over each ``s`` x ``s`` block.

    Args:
        feature_maps: ``[B, H, W, C]`` float.
        rois: ``[N, 4]`` float, normalized ``[y1, x1, y2, x2]`` read exactly as
            ``tf.image.crop_and_resize`` reads boxes: ``0`` and ``1`` are the centres of the
            first and last pixel, flipped boxes flip the crop, samples outside ``[0, 1]`` are 0.
        box_indexes: ``[N]`` int32 in ``[0, B)``, the image of each RoI.
        size: ``(height, width)`` of the pooled grid, or one int for a square grid.
        samples_per_bin: bilinear samples per bin along each axis (``1`` is plain
            crop_and_resize; ``2`` is the TF Object Detection API's 14x14 crop + 2x2 max pool).
        implementation: ``"fixed_point_split"`` (the default) or ``"fixed_point"``: TFLite
            builtins only, coordinates in int32 fixed point so full-int8 conversion stays
            accurate; the default cuts the RoIs into cache-sized tiles (int8 conversion must
            give the tiles one range per role: ``models.tflite_convert.convert_function`` and
            the export do). ``"gather"`` (builtins only, float coordinates: exact in float, but
            full-int8 conversion quantizes its coordinates) or ``"crop_and_resize"`` (TF's
            fused kernel; the reference, Flex-only in TFLite).
        tile_precision: ``"float32"``, ``"float16"`` or ``"int8"``, the precision the model
            will be converted to: ``fixed_point_split`` cuts the
            RoIs into tiles whose ``[t, 2*size[0], 2*size[1], C]`` intermediate takes
            ``tile_bytes`` in it (an int8 tile holds 4x the RoIs of a float32 one).
        tile_bytes: bytes of one tile's intermediate (default
            :data:`models.roi_lowerings.TILE_BYTES`, one core's L2). Only for the split
            lowering (other implementations refuse non-default tile options).

    Range: the fixed-point forms are exact for box coordinates in :data:`EXACT_RANGE`
    (``[-2, 2]``); any finite coordinate outside it is clamped to it first (the result is that
    of the clamped box; NaN and infinities are unspecified). :func:`rois_in_exact_range` checks
    a set of boxes. ``gather`` and ``crop_and_resize`` have no range limit.

    Returns:
        ``[N, size[0], size[1], C]`` with the dtype of ``feature_maps``.
    """
    size = _check_size(size)
    samples_per_bin = _check_samples_per_bin(samples_per_bin)
    implementation = _check_implementation(implementation)
    tiling = _check_tiling(implementation, tile_precision, tile_bytes)
    feature_maps, rois, box_indexes = _check_inputs(feature_maps, rois, box_indexes)
    crop_size = (size[0] * samples_per_bin, size[1] * samples_per_bin)
    if implementation in POOLING_LOWERINGS:
        pool = POOLING_LOWERINGS[implementation]
        return pool(feature_maps, rois, box_indexes, crop_size, samples_per_bin, tiling)
    crops = LOWERINGS[implementation](feature_maps, rois, box_indexes, crop_size)
    crops = tf.cast(crops, feature_maps.dtype)
    return max_pool_bins(crops, samples_per_bin)


def roi_pool_numpy(feature_maps, rois, box_indexes, size=(7, 7), samples_per_bin=2):
    """Brute-force loop reference of :func:`roi_pool` in numpy (float64; a runnable spec).

    Same arguments and shapes as :func:`roi_pool`; follows TF's ``CropAndResize`` kernel
    (``crop_and_resize_op.cc``) sample by sample, then takes the max of each bin.
    """
    feature_maps = np.asarray(feature_maps, np.float64)
    rois = np.asarray(rois, np.float32)
    box_indexes = np.asarray(box_indexes)
    size = _check_size(size)
    samples_per_bin = _check_samples_per_bin(samples_per_bin)
    _, height, width, channels = feature_maps.shape
    crop_height, crop_width = size[0] * samples_per_bin, size[1] * samples_per_bin
    out = np.zeros((len(rois), size[0], size[1], channels), np.float64)

    def position(lo, hi, i, length, crop_length):
        # float32 like the kernel, so the floor of a sample lands on the same pixel.
        lo, hi, scale = np.float32(lo), np.float32(hi), np.float32(length - 1)
        if crop_length > 1:
            step = (hi - lo) * scale / np.float32(crop_length - 1)
            return float(lo * scale + np.float32(i) * step)
        return float(np.float32(0.5) * (lo + hi) * scale)

    for n, (y1, x1, y2, x2) in enumerate(rois):
        image = feature_maps[int(box_indexes[n])]
        crop = np.zeros((crop_height, crop_width, channels), np.float64)
        for i in range(crop_height):
            y = position(y1, y2, i, height, crop_height)
            if y < 0 or y > height - 1:
                continue
            top, bottom = int(np.floor(y)), int(np.ceil(y))
            y_lerp = y - top
            for j in range(crop_width):
                x = position(x1, x2, j, width, crop_width)
                if x < 0 or x > width - 1:
                    continue
                left, right = int(np.floor(x)), int(np.ceil(x))
                x_lerp = x - left
                top_value = image[top, left] + (image[top, right] - image[top, left]) * x_lerp
                bottom_value = (
                    image[bottom, left] + (image[bottom, right] - image[bottom, left]) * x_lerp
                )
                crop[i, j] = top_value + (bottom_value - top_value) * y_lerp
        for i in range(size[0]):
            for j in range(size[1]):
                block = crop[
                    i * samples_per_bin : (i + 1) * samples_per_bin,
                    j * samples_per_bin : (j + 1) * samples_per_bin,
                ]
                out[n, i, j] = block.reshape(-1, channels).max(axis=0)
    return out


@keras.saving.register_keras_serializable(package="roiedge")
class RoIPooling(keras.layers.Layer):
    """Keras layer wrapper of :func:`roi_pool`: pools each RoI to a fixed ``size`` grid.

    Call it as ``RoIPooling(size=(7, 7))(feature_maps, rois, box_indexes)`` with
    ``feature_maps`` ``[B, H, W, C]`` float, ``rois`` ``[N, 4]`` normalized
    ``[y1, x1, y2, x2]`` float and ``box_indexes`` ``[N]`` int32; returns
    ``[N, size[0], size[1], C]``. See :func:`roi_pool` for the exact semantics.

    Args:
        size: ``(height, width)`` of the pooled grid.
        samples_per_bin: bilinear samples per bin along each axis (default 2).
        implementation: one of :data:`IMPLEMENTATIONS`; the default is TFLite builtin-only.
        tile_precision: the precision the split lowerings size their tiles for (see
            :func:`roi_pool`; ``"int8"`` for a model that will be converted to int8).
        tile_bytes: bytes of one tile's intermediate (None: one core's L2).
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype``, ...).
    """

    def __init__(
        self,
        size=(7, 7),
        samples_per_bin: int = 2,
        implementation: str = DEFAULT_IMPLEMENTATION,
        tile_precision: str = "float32",
        tile_bytes: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = _check_size(size)
        self.samples_per_bin = _check_samples_per_bin(samples_per_bin)
        self.implementation = _check_implementation(implementation)
        _check_tiling(self.implementation, tile_precision, tile_bytes)
        self.tile_precision = tile_precision
        self.tile_bytes = None if tile_bytes is None else int(tile_bytes)

    def call(self, feature_maps, rois=None, box_indexes=None):
        if rois is None and box_indexes is None and isinstance(feature_maps, (list, tuple)):
            if len(feature_maps) != 3:
                raise RoIPoolingInputError(
                    "RoIPooling takes (feature_maps, rois, box_indexes), "
                    f"got a list of {len(feature_maps)} inputs"
                )
            feature_maps, rois, box_indexes = feature_maps
        if rois is None or box_indexes is None:
            raise RoIPoolingInputError(
                "RoIPooling takes (feature_maps, rois, box_indexes), got rois or box_indexes None"
            )
        return roi_pool(
            feature_maps,
            rois,
            box_indexes,
            size=self.size,
            samples_per_bin=self.samples_per_bin,
            implementation=self.implementation,
            tile_precision=self.tile_precision,
            tile_bytes=self.tile_bytes,
        )

    def compute_output_shape(self, feature_maps_shape, rois_shape=None, box_indexes_shape=None):
        """``(N, size[0], size[1], C)`` from ``[feature_maps_shape, rois_shape, box_indexes_shape]``."""
        if rois_shape is None and _is_shape_list(feature_maps_shape):
            feature_maps_shape, rois_shape, _ = feature_maps_shape
        feature_maps_shape = tuple(feature_maps_shape)
        rois_shape = tuple(rois_shape) if rois_shape is not None else (None, 4)
        if len(feature_maps_shape) != 4:
            raise RoIPoolingInputError(
                f"RoIPooling feature_maps must be rank 4 [batch, height, width, channels], "
                f"got shape {_shape_str(feature_maps_shape)}"
            )
        if len(rois_shape) != 2 or rois_shape[1] not in (None, 4):
            raise RoIPoolingInputError(
                f"RoIPooling rois must have shape [num_rois, 4], got shape {_shape_str(rois_shape)}"
            )
        return (rois_shape[0], self.size[0], self.size[1], feature_maps_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "size": list(self.size),
                "samples_per_bin": self.samples_per_bin,
                "implementation": self.implementation,
                "tile_precision": self.tile_precision,
                "tile_bytes": self.tile_bytes,
            }
        )
        return config


def _is_shape_list(value) -> bool:
    """True for ``[fm_shape, rois_shape, idx_shape]``, False for a single shape."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        return False
    return all(isinstance(v, (list, tuple, tf.TensorShape)) for v in value)
