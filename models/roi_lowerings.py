"""The builtin-only lowerings of crop_and_resize behind :func:`models.roi_pooling.roi_pool`.

Each lowering maps ``(feature_maps [B,H,W,C], rois [N,4] normalized y1x1y2x2, box_indexes [N]
int32, crop_size)`` to the ``[N, ch, cw, C]`` crops of ``tf.image.crop_and_resize`` (the
``POOLING_LOWERINGS`` also max-pool, tile by tile). ``fixed_point`` (the default) and its
variants share one int32 sampling grid (:func:`fixed_point_sampling`); ``gather`` computes its
coordinates in float. Inputs are already checked by :mod:`models.roi_pooling`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

#: ``fixed_point`` keeps box coordinates in [-COORDINATE_RANGE, COORDINATE_RANGE] (normalized):
#: the int32 sample arithmetic is sized for that range, and every coordinate is clamped to it
#: first, so the fixed-point forms equal crop_and_resize only for boxes inside it.
COORDINATE_RANGE = 2
#: The normalized box coordinates for which the fixed-point lowerings are exact (inclusive).
EXACT_RANGE = (-float(COORDINATE_RANGE), float(COORDINATE_RANGE))
#: Relative slack (about 8 float32 ulps) by which a sample may pass the map edge and still count
#: as on it, absorbing the converter's re-association of the sample-position arithmetic.
EDGE_SLACK = 2.0**-20
#: Name scope of each tile's ops in the tiled lowerings (``roi_tile_<k>/...``): int8 conversion
#: gives the tensors of one role in every tile the union of their calibrated ranges
#: (:func:`models.tflite_convert.share_tile_ranges`).
TILE_SCOPE = "roi_tile_"


def max_pool_bins(crops, samples_per_bin: int):
    """Max-pools ``samples_per_bin`` x ``samples_per_bin`` blocks (no-op for 1)."""
    if samples_per_bin == 1:
        return crops
    return tf.nn.max_pool2d(crops, samples_per_bin, samples_per_bin, "VALID")


def _static_or_dynamic(tensor):
    """The shape of ``tensor`` as a list, static dims as ints, unknown ones as scalars."""
    static = tensor.shape.as_list()
    dynamic = tf.shape(tensor)
    return [dynamic[i] if d is None else d for i, d in enumerate(static)]


def _crop_and_resize_oracle(feature_maps, rois, box_indexes, crop_size):
    # The reference: TF's fused kernel. Flex-only in TFLite (no CROP_AND_RESIZE builtin).
    crops = tf.image.crop_and_resize(
        tf.cast(feature_maps, tf.float32), rois, box_indexes, crop_size, extrapolation_value=0.0
    )
    return crops


def _sample_coordinates(lo, hi, length, crop_length: int):
    """Sample positions along one axis exactly as CropAndResize computes them.

    ``lo``/``hi`` are ``[N]`` normalized box edges, ``length`` the map length along the axis.
    Returns ``[N, crop_length]`` float32 positions in pixels; positions outside
    ``[0, length - 1]`` are extrapolated (value 0).
    """
    scale = tf.cast(length - 1, tf.float32)
    if crop_length > 1:
        # Same operation order as CropAndResize's kernel, so floor() lands on the same pixel.
        step = (hi - lo) * scale / float(crop_length - 1)
        steps = tf.range(crop_length, dtype=tf.float32)
        return lo[:, None] * scale + steps[None, :] * step[:, None]
    return (0.5 * (lo + hi) * scale)[:, None]


def _gather_crop_and_resize(feature_maps, rois, box_indexes, crop_size):
    """crop_and_resize from GATHER on a ``[B*H*W, C]`` view plus arithmetic (builtins only)."""
    _, height, width, channels = _static_or_dynamic(feature_maps)
    crop_height, crop_width = crop_size
    y1, x1, y2, x2 = tf.unstack(rois, axis=1)
    ys = _sample_coordinates(y1, y2, height, crop_height)  # [N, ch]
    xs = _sample_coordinates(x1, x2, width, crop_width)  # [N, cw]

    def axis_terms(positions, length):
        # TFLite's converter folds `/ (crop_length - 1)` into a reciprocal multiply, so a sample
        # that CropAndResize puts exactly on the map edge (a box ending at 1.0, or a flipped one
        # ending at 0.0) can land a few ulps outside it and would be zeroed: allow EDGE_SLACK.
        last = tf.cast(length - 1, tf.float32)
        slack = last * EDGE_SLACK
        inside = tf.logical_and(positions >= -slack, positions <= last + slack)
        # Out-of-map samples are zeroed by `inside`; clamping only keeps GATHER in range. It is
        # done in float: the converter turns an int32 clip to [0, 6] into RELU6, which has no
        # int32 kernel (a map 7 pixels wide would not convert).
        positions = tf.clip_by_value(positions, 0.0, last)
        low = tf.floor(positions)
        lerp = positions - low
        high = tf.math.ceil(positions)
        low_i, high_i = tf.cast(low, tf.int32), tf.cast(high, tf.int32)
        return tf.cast(inside, feature_maps.dtype), tf.cast(lerp, feature_maps.dtype), low_i, high_i

    y_inside, y_lerp, top, bottom = axis_terms(ys, height)
    x_inside, x_lerp, left, right = axis_terms(xs, width)

    flat = tf.reshape(feature_maps, [-1, channels])
    base = box_indexes * (height * width)  # [N]
    top_rows = (base[:, None] + top * width)[:, :, None]  # [N, ch, 1]
    bottom_rows = (base[:, None] + bottom * width)[:, :, None]
    left_cols = left[:, None, :]  # [N, 1, cw]
    right_cols = right[:, None, :]

    top_left = tf.gather(flat, top_rows + left_cols)  # [N, ch, cw, C]
    top_right = tf.gather(flat, top_rows + right_cols)
    bottom_left = tf.gather(flat, bottom_rows + left_cols)
    bottom_right = tf.gather(flat, bottom_rows + right_cols)

    x_lerp = x_lerp[:, None, :, None]
    y_lerp = y_lerp[:, :, None, None]
    top_values = top_left + (top_right - top_left) * x_lerp
    bottom_values = bottom_left + (bottom_right - bottom_left) * x_lerp
    crops = top_values + (bottom_values - top_values) * y_lerp
    inside = y_inside[:, :, None, None] * x_inside[:, None, :, None]
    return crops * inside


def _fraction_bits(length) -> int:
    """Fixed-point fraction bits for sample positions on an axis of ``length`` pixels.

    The largest int32 intermediate is about ``3 * COORDINATE_RANGE * (length - 1) * 2**bits``.
    """
    last = max(int(length) - 1, 1) if isinstance(length, int) else 1023
    bits = int(np.floor(np.log2((2**31 - 1) / (3 * COORDINATE_RANGE * last))))
    return min(bits, 24)


#: Fraction bits of the int32 bilinear weights (2**-22 ~ 2.4e-7: far below the 1e-5 float bar,
#: and every intermediate of :func:`_fixed_point_product` stays below 2**31).
WEIGHT_BITS = 22


def _fixed_point_product(a, b):
    """``round(a * b / 2**WEIGHT_BITS)`` for int32 ``a, b`` in ``[0, 2**WEIGHT_BITS]``, in int32.

    ``a * b`` needs 44 bits, so ``a`` is split into 8 + 7 + 7 bit limbs and the partial products
    are accumulated Horner-style, shifting right between limbs (error < 0.51 units of the result).
    """
    high = tf.math.floordiv(a, 1 << 14)  # < 2**8 (a == 2**22 gives exactly 2**8)
    rest = a - high * (1 << 14)
    middle = tf.math.floordiv(rest, 1 << 7)  # < 2**7
    low = rest - middle * (1 << 7)  # < 2**7
    partial = tf.math.floordiv(low * b, 1 << 7) + middle * b  # < 2**30
    partial = tf.math.floordiv(partial, 1 << 7) + high * b  # <= 2**30 + 2**23
    return tf.math.floordiv(partial + (1 << 7), 1 << 8)


class Sampling(NamedTuple):
    """The int32 sampling grid of :func:`fixed_point_sampling`, shapes ``[N, ch]``/``[N, cw]``."""

    top: Any
    bottom: Any
    left: Any
    right: Any
    inside: Any  # [N, ch, cw] bool: the sample lies on the map (else it reads 0)
    weights: tuple  # four [N, ch, cw] int32 in units of 2**-WEIGHT_BITS: TL, TR, BL, BR
    height: Any
    width: Any
    channels: Any
    axis_inside: tuple  # ([N, ch], [N, cw]) bool
    fractions: tuple  # ([N, ch], [N, cw]) int32 in units of 2**-WEIGHT_BITS


def fixed_point_sampling(feature_maps, rois, box_indexes, crop_size) -> Sampling:
    """The int32 sample grid of the fixed-point lowerings: crop_and_resize's sample rows and
    columns, which samples lie on the map, and the four bilinear weights (builtins only).

    Full-integer quantization (``Optimize.DEFAULT`` + a representative dataset) quantizes every
    float op with an int8 kernel; box coordinates quantized to 8 bits put samples pixels away
    (errors near 1.0 on unit features). Here the boxes enter through FLOOR_DIV and FLOOR_MOD,
    which have no int8 kernels and so stay float, and become ``round(rois * 2**bits)`` exactly
    (dividing by a power of two is exact), clamped to :data:`EXACT_RANGE`; everything after is
    int32, which is never quantized. The four bilinear weights are int32 products too, so int8
    conversion rounds each of them once (at its CAST) instead of through a chain of quantized
    SUB/MUL ops.
    """
    _, height, width, channels = _static_or_dynamic(feature_maps)
    crop_height, crop_width = crop_size
    bits = min(_fraction_bits(height), _fraction_bits(width))
    one = 1 << bits
    # The powers of two below are built at run time, not stored: float16 conversion stores every
    # float constant as float16, where 2**-25 flushes to zero (and 2**-22 is subnormal). POW of
    # an int32 exponent that depends on an input cannot be constant-folded, and POW has no int8
    # kernel, so like FLOOR_DIV it stays float32 under full-integer conversion.
    # Shapes are set on the int32 side: a RESHAPE between POW and its consumer would be int8.
    zeros = tf.math.floordiv(box_indexes, 1 << 30)  # [N] zeros (box indexes are in [0, B))

    def power_of_two(exponent, rank):
        exponent = tf.reshape(zeros + exponent, [-1] + [1] * (rank - 1))
        return tf.pow(2.0, tf.cast(exponent, tf.float32))  # [N, 1, ...] float32, exact

    # floor(rois * 2**(bits+1)) then a rounding halving in int32: rois to the nearest 2**-bits.
    # Clamped before any large value meets a float->int32 cast (which overflows past 2**31, i.e.
    # |rois| >= 2**(30 - bits), ~64, and no float clamp survives int8 conversion unquantized):
    # the integer part is cast alone (exact below 2**31); coarser casts of rois / 2**31, 2**62,
    # ... (each exact where the finer one overflows) saturate it for any finite coordinate. The
    # fraction (FLOOR_MOD, in [0, 1): no int8 kernel either) is then scaled exactly.
    whole = tf.cast(tf.math.floordiv(rois, 1.0), tf.int32)
    for exponent in (31, 62, 93, 124):
        coarse = tf.cast(tf.math.floordiv(rois, power_of_two(exponent, 2)), tf.int32)
        whole = tf.where(coarse >= 1, COORDINATE_RANGE, whole)
        whole = tf.where(coarse <= -2, -COORDINATE_RANGE - 1, whole)
    whole = tf.clip_by_value(whole, -COORDINATE_RANGE - 1, COORDINATE_RANGE)
    fraction = tf.math.floordiv(tf.math.floormod(rois, 1.0), power_of_two(-(bits + 1), 2))
    halves = whole * (1 << (bits + 1)) + tf.cast(fraction, tf.int32)
    rois_fixed = tf.clip_by_value(
        tf.math.floordiv(halves + 1, 2), -COORDINATE_RANGE * one, COORDINATE_RANGE * one
    )
    y1, x1, y2, x2 = tf.unstack(rois_fixed, axis=1)

    def axis_terms(lo, hi, length, crop_length):
        # Same formula as CropAndResize, in units of 2**-bits pixel: lo*(L-1) + i*step.
        last = length - 1
        if crop_length > 1:
            step = tf.math.floordiv((hi - lo) * last, crop_length - 1)
            samples = tf.range(crop_length, dtype=tf.int32)
            positions = lo[:, None] * last + samples[None, :] * step[:, None]
        else:
            positions = tf.math.floordiv((lo + hi) * last, 2)[:, None]
        # CropAndResize puts samples of boxes ending on the map edge exactly on it; rounding the
        # corners and flooring the step may move them by a few units of 2**-bits (< 1e-5 px):
        # such samples still count as on the edge, clamped onto it.
        slack = crop_length + 2
        inside = tf.logical_and(positions >= -slack, positions <= last * one + slack)
        positions = tf.clip_by_value(positions, 0, last * one)
        low = tf.math.floordiv(positions, one)
        fraction = positions - low * one  # in [0, one)
        # The weight fraction at WEIGHT_BITS (a power-of-two rescale, exact when shifting left).
        if bits >= WEIGHT_BITS:
            fraction = tf.math.floordiv(fraction, 1 << (bits - WEIGHT_BITS))
        else:
            fraction = fraction * (1 << (WEIGHT_BITS - bits))
        high = tf.minimum(low + 1, last)
        return inside, low, high, fraction

    y_inside, top, bottom, y_fraction = axis_terms(y1, y2, height, crop_height)
    x_inside, left, right, x_fraction = axis_terms(x1, x2, width, crop_width)

    # Bilinear weights in units of 2**-WEIGHT_BITS, [N, ch, cw]; only wy*wx needs a product, the
    # others follow exactly from it, so the four weights sum to exactly 1.
    unit = 1 << WEIGHT_BITS
    wy = y_fraction[:, :, None]
    wx = x_fraction[:, None, :]
    bottom_right = _fixed_point_product(wy, wx)
    weights = (
        unit - wy - wx + bottom_right,  # top left
        wx - bottom_right,  # top right
        wy - bottom_right,  # bottom left
        bottom_right,
    )
    inside = tf.logical_and(y_inside[:, :, None], x_inside[:, None, :])  # [N, ch, cw]
    return Sampling(
        top,
        bottom,
        left,
        right,
        inside,
        weights,
        height,
        width,
        channels,
        (y_inside, x_inside),
        (y_fraction, x_fraction),
    )


def fixed_weight(fixed, dtype, scale: float = 1.0):
    """An int32 weight in units of 2**-WEIGHT_BITS as ``dtype`` (times ``scale``, a power of 2)."""
    # In float32 (a float16 feature map could not hold 2**22), then the features' dtype. Two
    # constant factors of 2**-11: each is a normal float16 (a float16-converted model stores
    # 2**-22 as a subnormal), and int8 conversion requantizes both exactly.
    half_scale = 2.0 ** -(WEIGHT_BITS // 2)
    scaled = tf.cast(fixed, tf.float32) * (half_scale * scale) * half_scale
    return tf.cast(scaled, dtype)


def _fixed_point_crop_and_resize(feature_maps, rois, box_indexes, crop_size):
    """crop_and_resize with int32 coordinates: four GATHERs, four MULs, three ADDs.

    Each GATHER gives ``[N, ch, cw, C]``; the MULs and ADDs are elementwise int8 ops that XNNPACK
    runs fast, where a stacked ``[N, ch, cw, 4, C]`` tensor reduced with SUM was ~2x slower (and
    the single-GATHER variants in ``bench/lowerings.py`` are slower still: ``make bench``).
    """
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    return four_gathers(feature_maps, box_indexes, grid, slice(None))


def gather_table(feature_maps, channels):
    """``([B*H*W + 1, C] table, B*H*W)``: the map's pixels as rows, then one zero row."""
    flat = tf.reshape(feature_maps, [-1, channels])
    zero_row = tf.shape(flat)[0]
    return tf.concat([flat, tf.zeros_like(flat[:1])], axis=0), zero_row


def four_gathers(feature_maps, box_indexes, grid: Sampling, rois_slice: slice):
    """The bilinear samples of RoIs ``rois_slice`` from four GATHERs, four MULs and three ADDs."""
    # One zero row after the map: samples outside it gather zeros (CropAndResize's extrapolation).
    flat, zero_row = gather_table(feature_maps, grid.channels)

    def rois_of(tensor):
        # All RoIs: no slice, which would be a STRIDED_SLICE copying the whole [N, ch, cw] tensor.
        return tensor if rois_slice == slice(None) else tensor[rois_slice]

    base = rois_of(box_indexes)[:, None, None] * (grid.height * grid.width)
    inside = rois_of(grid.inside)

    def gather(y_rows, x_cols):
        index = base + rois_of(y_rows)[:, :, None] * grid.width + rois_of(x_cols)[:, None, :]
        return tf.gather(flat, tf.where(inside, index, zero_row))  # [n, ch, cw, C]

    def weight(fixed):
        return fixed_weight(rois_of(fixed), feature_maps.dtype)[..., None]

    top_left, top_right, bottom_left, bottom_right = grid.weights
    # Four MULs and three ADDs (not a stacked SUM): fast elementwise int8 kernels under XNNPACK.
    return (
        gather(grid.top, grid.left) * weight(top_left)
        + gather(grid.top, grid.right) * weight(top_right)
        + gather(grid.bottom, grid.left) * weight(bottom_left)
        + gather(grid.bottom, grid.right) * weight(bottom_right)
    )


#: Bytes of one tile's largest intermediate the split lowerings aim for: the L2 cache of one
#: core on the benchmark hosts (1 MiB), so an op's output is still cached when the next reads it.
TILE_BYTES = 1 << 20
#: Bytes per feature element in each precision a model may be converted to: the split lowerings
#: size their tiles for it (an int8 tile holds 4x the RoIs of a float32 one in the same bytes).
ELEMENT_BYTES = {"float32": 4, "float16": 2, "int8": 1}


class Tiling(NamedTuple):
    """How the split lowerings cut the RoIs: ``tile_bytes`` (None: :data:`TILE_BYTES`) per
    tile's ``[t, ch, cw, C]`` intermediate at ``element_bytes`` per element (the precision the
    model will run in)."""

    tile_bytes: int | None = None
    element_bytes: int = 4


DEFAULT_TILING = Tiling()


def tile_sizes(num_rois, per_roi_bytes, tile_bytes: int | None = None) -> list:
    """RoIs per tile: as many as fit ``tile_bytes`` (default :data:`TILE_BYTES`; at least 1);
    ``[None]`` (one tile) if the number of RoIs is unknown at trace time."""
    if num_rois is None:
        return [None]
    tile_bytes = TILE_BYTES if tile_bytes is None else tile_bytes
    tile = max(1, tile_bytes // max(int(per_roi_bytes), 1))
    return [tile] * (num_rois // tile) + ([num_rois % tile] if num_rois % tile else [])


def per_roi_bytes(crop_size, channels, stacked: int = 1, element_bytes: int = 4) -> int:
    """Bytes of one RoI's ``[ch, cw, stacked * C]`` intermediate (C unknown: 256)."""
    channels = channels if isinstance(channels, int) else 256
    return crop_size[0] * crop_size[1] * stacked * channels * element_bytes


def split_rois(tensor, sizes: list) -> list:
    """``tensor`` split along its first (RoI) axis into tiles of ``sizes`` (one SPLIT_V op)."""
    return [tensor] if len(sizes) == 1 else tf.split(tensor, sizes)


def corner_indexes(box_indexes, grid: Sampling, zero_row) -> list:
    """Four ``[N, ch, cw]`` int32 table rows (TL, TR, BL, BR); off-map samples read the zero row."""
    base = box_indexes[:, None, None] * (grid.height * grid.width)
    corners = (
        (grid.top, grid.left),
        (grid.top, grid.right),
        (grid.bottom, grid.left),
        (grid.bottom, grid.right),
    )
    return [
        tf.where(grid.inside, base + rows[:, :, None] * grid.width + cols[:, None, :], zero_row)
        for rows, cols in corners
    ]


def after_previous_tile(tensor, previous):
    """``tensor`` (int32) plus a zero that depends on ``previous``'s data: orders the tiles.

    XNNPACK delegates the MULs, ADDs and pools but not GATHER, and the interpreter's partitioner
    runs every node that is ready before the next delegated partition: without this dependency
    all tiles' GATHERs run first (hundreds of MB alive at once) and the tiling is lost.
    ``x > x`` is false for every float (NaN too) and, int8 GREATER comparing one tensor with
    itself (one scale), for every int8 value, so the zero is exact. (``x > inf`` was not under
    int8: inf quantizes to a scale ~1e36, and GREATER's rescaling of the pair overflows, so some
    scales of ``x`` gave true and a GATHER index past the table.)
    """
    if previous is None:
        return tensor
    value = previous[0, 0, 0, 0]
    return tensor + tf.cast(value > value, tf.int32)


def bilinear_tile(table, corners, weights):
    """One tile's bilinear samples ``[t, ch, cw, C]``: four GATHERs, four MULs, three ADDs.

    ``corners`` are the four ``[t, ch, cw]`` table rows (TL, TR, BL, BR), ``weights`` their
    ``[t, ch, cw, 1]`` weights. Ops are named per role: the int8 range sharing matches tensors
    across tiles by name.
    """
    samples = tf.multiply(tf.gather(table, corners[0]), weights[0], "product_0")
    for corner in range(1, 4):
        product = tf.multiply(
            tf.gather(table, corners[corner]), weights[corner], f"product_{corner}"
        )
        samples = tf.add(samples, product, f"sum_{corner}")
    return samples


def fixed_point_split_roi_pool(
    feature_maps,
    rois,
    box_indexes,
    crop_size,
    samples_per_bin,
    tiling: Tiling = DEFAULT_TILING,
    tile_body=bilinear_tile,
):
    """``fixed_point`` in L2-sized tiles whose indexes and weights are computed once.

    The sample grid, the four gather indexes and the four weights are computed for all RoIs
    (a handful of ops on ``[N, ch, cw]``), then cut into tiles by one SPLIT_V each; per tile
    only four GATHERs, four MULs, three ADDs and the MAX_POOL_2D remain, each tile's GATHERs
    ordered after the previous tile (:func:`after_previous_tile`). ``fixed_point_tiled`` recomputes the
    indexes and weights per tile: ~50 small ops per tile, which dominate at small tiles. Needs a
    static number of RoIs (otherwise one tile). Full-int8 conversion calibrates each tile's MULs
    on their own; :func:`models.tflite_convert.share_tile_ranges` gives them one range.
    ``tile_body`` (default :func:`bilinear_tile`) is swapped only by the benchmark's ablation,
    which times cut-down tiles.
    """
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    table, zero_row = gather_table(feature_maps, grid.channels)
    per_roi = per_roi_bytes(crop_size, grid.channels, 1, tiling.element_bytes)
    sizes = tile_sizes(rois.shape[0], per_roi, tiling.tile_bytes)
    indexes = [split_rois(i, sizes) for i in corner_indexes(box_indexes, grid, zero_row)]
    weights = [
        split_rois(fixed_weight(w, feature_maps.dtype)[..., None], sizes) for w in grid.weights
    ]
    pooled = []
    for tile in range(len(sizes)):
        with tf.name_scope(f"{TILE_SCOPE}{tile}"):
            previous = pooled[-1] if pooled else None
            corners = [after_previous_tile(indexes[corner][tile], previous) for corner in range(4)]
            samples = tile_body(table, corners, [weights[corner][tile] for corner in range(4)])
            pooled.append(max_pool_bins(samples, samples_per_bin))
    return pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=0)


#: Lowerings that pool themselves: (feature_maps, rois, box_indexes, crop_size, s, tiling).
#: The benchmarks' variants join these tables through ``models.roi_pooling.register_lowering``.
POOLING_LOWERINGS = {
    "fixed_point_split": fixed_point_split_roi_pool,
}
#: The pooling lowerings whose tiles follow a :class:`Tiling` (L2-sized, per precision).
SIZED_TILE_LOWERINGS = ["fixed_point_split"]
LOWERINGS = {
    "fixed_point": _fixed_point_crop_and_resize,
    "gather": _gather_crop_and_resize,
    "crop_and_resize": _crop_and_resize_oracle,
}
