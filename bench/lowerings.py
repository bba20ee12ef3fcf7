"""The RoIPooling lowerings that lost the benchmark, kept to be measured (``make bench``).

``fixed_point_tiled`` (tiles of 16 RoIs recomputing their indexes and weights),
``neighbour_pool``, ``neighbour_pool_split``, ``neighbour_matmul`` (one GATHER from a table of
the four neighbours side by side) and ``separable_matmul`` (rows then columns as matrix
products): the same sampling grid as ``fixed_point``, other feature paths. Importing this module
makes them selectable as ``RoIPooling(implementation=...)``; the package ships only
``fixed_point``, ``fixed_point_split``, ``gather`` and ``crop_and_resize``. Their numbers:
docs/roi_pooling.md.
"""

from __future__ import annotations

import tensorflow as tf

from models.roi_lowerings import (
    DEFAULT_TILING,
    TILE_SCOPE,
    WEIGHT_BITS,
    Sampling,
    Tiling,
    after_previous_tile,
    corner_indexes,
    fixed_point_sampling,
    fixed_weight,
    four_gathers,
    gather_table,
    max_pool_bins,
    per_roi_bytes,
    split_rois,
    tile_sizes,
)
from models.roi_pooling import register_lowering

#: RoIs per tile of ``fixed_point_tiled``.
ROI_TILE = 16


def _fixed_point_tiled_roi_pool(
    feature_maps, rois, box_indexes, crop_size, samples_per_bin, tiling=None
):
    """``fixed_point`` in tiles of :data:`ROI_TILE` RoIs, each max-pooled before the next starts.

    The same ops as ``fixed_point`` on a slice of the RoIs at a time: each tile's
    ``[tile, ch, cw, C]`` intermediates are small enough to stay in cache between the ops that
    write and read them, where the whole-batch ones (120 MB each at 300 RoIs, 14x14x512 float32)
    stream through memory. Needs a static number of RoIs (otherwise one tile). Its tiles are
    fixed (``tiling`` is unused).
    """
    del tiling
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    num_rois = rois.shape[0]
    if num_rois is None:
        bounds = [slice(None)]
    else:
        bounds = [slice(i, min(i + ROI_TILE, num_rois)) for i in range(0, num_rois, ROI_TILE)]
    pooled = []
    for tile, rois_slice in enumerate(bounds):
        with tf.name_scope(f"{TILE_SCOPE}{tile}"):
            crops = four_gathers(feature_maps, box_indexes, grid, rois_slice)
            pooled.append(max_pool_bins(crops, samples_per_bin))
    return pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=0)


def _neighbour_table(feature_maps, grid: Sampling, offsets):
    """``[B*H*W + 1, len(offsets) * C]``: row ``p`` holds pixels ``p + o`` for each offset ``o``.

    Past the map the rows are zeros, so row ``B*H*W`` is all zeros (the extrapolation row). A
    neighbour that wraps to the next row, or past the map, only ever meets a weight of exactly 0:
    a sample on the last column (row) has fraction 0.
    """
    flat = tf.reshape(feature_maps, [-1, grid.channels])
    pixels = tf.shape(flat)[0]
    padded = tf.concat([flat, tf.zeros_like(flat[:1])], axis=0)
    padded = tf.concat([padded, tf.zeros([max(offsets), grid.channels], flat.dtype)], axis=0)
    return tf.concat([padded[o : o + pixels + 1] for o in offsets], axis=1), pixels


def _neighbour_gather(feature_maps, box_indexes, grid: Sampling):
    """One GATHER of the four neighbours of every sample: ``[N, ch, cw, 4 * C]``."""
    table, zero_row = _neighbour_table(feature_maps, grid, (0, 1, grid.width, grid.width + 1))
    base = box_indexes[:, None, None] * (grid.height * grid.width)
    index = base + grid.top[:, :, None] * grid.width + grid.left[:, None, :]
    return tf.gather(table, tf.where(grid.inside, index, zero_row))


def _neighbour_pool_crop_and_resize(feature_maps, rois, box_indexes, crop_size):
    """crop_and_resize as one GATHER of stacked neighbours, one MUL and an AVERAGE_POOL_2D."""
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    crop_height, crop_width = crop_size
    stacked = _neighbour_gather(feature_maps, box_indexes, grid)  # [N, ch, cw, 4C]
    samples = tf.reshape(stacked, [-1, 4, 1, grid.channels])
    # Weights times 4: the average of the four products is their sum.
    weights = tf.stack([fixed_weight(w, feature_maps.dtype, 4.0) for w in grid.weights], -1)
    products = samples * tf.reshape(weights, [-1, 4, 1, 1])
    summed = tf.nn.avg_pool2d(products, (4, 1), (4, 1), "VALID")
    return tf.reshape(summed, [-1, crop_height, crop_width, grid.channels])


def _neighbour_matmul_crop_and_resize(feature_maps, rois, box_indexes, crop_size):
    """crop_and_resize as one GATHER of stacked neighbours and a BATCH_MATMUL with the weights."""
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    crop_height, crop_width = crop_size
    stacked = _neighbour_gather(feature_maps, box_indexes, grid)  # [N, ch, cw, 4C]
    samples = tf.reshape(stacked, [-1, 4, grid.channels])
    weights = tf.stack([fixed_weight(w, feature_maps.dtype) for w in grid.weights], -1)
    summed = tf.matmul(tf.reshape(weights, [-1, 1, 4]), samples)
    return tf.reshape(summed, [-1, crop_height, crop_width, grid.channels])


def _axis_matrix(low, high, fraction, inside, length, dtype):
    """``[N, crop, length]``: each sample's two bilinear weights along one axis, 0 elsewhere."""
    pixels = tf.range(length)[None, None, :]
    unit = 1 << WEIGHT_BITS
    fixed = tf.where(tf.equal(pixels, low[:, :, None]), unit - fraction[:, :, None], 0) + tf.where(
        tf.equal(pixels, high[:, :, None]), fraction[:, :, None], 0
    )
    fixed = tf.where(inside[:, :, None], fixed, 0)
    return fixed_weight(fixed, dtype)


def _separable_matmul_crop_and_resize(feature_maps, rois, box_indexes, crop_size):
    """crop_and_resize as two matrix products: rows (FULLY_CONNECTED-sized) then columns."""
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    batch = tf.shape(feature_maps)[0]
    height, width, channels = grid.height, grid.width, grid.channels
    crop_height = crop_size[0]
    # Rows of all images stacked: sample rows index b*H + y.
    offset = box_indexes[:, None] * height
    rows = _axis_matrix(
        grid.top + offset,
        grid.bottom + offset,
        grid.fractions[0],
        grid.axis_inside[0],
        batch * height,
        feature_maps.dtype,
    )  # [N, ch, B*H]
    columns = _axis_matrix(
        grid.left, grid.right, grid.fractions[1], grid.axis_inside[1], width, feature_maps.dtype
    )  # [N, cw, W]
    table = tf.reshape(feature_maps, [-1, width * channels])  # [B*H, W*C]
    interpolated_rows = tf.matmul(tf.reshape(rows, [-1, batch * height]), table)
    interpolated_rows = tf.reshape(interpolated_rows, [-1, crop_height, width, channels])
    return tf.matmul(columns[:, None], interpolated_rows)  # [N, ch, cw, C]


def _neighbour_pool_split_roi_pool(
    feature_maps, rois, box_indexes, crop_size, samples_per_bin, tiling: Tiling = DEFAULT_TILING
):
    """Per L2-sized tile: one GATHER of the four corners, one MUL, an AVERAGE_POOL_2D summing them.

    Like ``fixed_point_split`` (indexes and weights computed once, split into tiles), but the
    four corner indexes are stacked so one GATHER reads them all, ``[t, ch, cw, 4, C]``; the
    weights multiply them in one MUL, and a ``(1, 4)`` average pool over the corners of
    ``[t, ch, 4 * cw, C]`` is a quarter of their sum. The factor 4 comes after the max pool
    (max commutes with it; exact in float): int8 conversion gives AVERAGE_POOL_2D, MAX_POOL_2D
    and the closing CONCATENATION one scale, so weights pre-scaled by 4 would clip products above
    the pooled range.
    """
    grid = fixed_point_sampling(feature_maps, rois, box_indexes, crop_size)
    crop_height, crop_width = crop_size
    table, zero_row = gather_table(feature_maps, grid.channels)
    per_roi = per_roi_bytes(crop_size, grid.channels, 4, tiling.element_bytes)
    sizes = tile_sizes(rois.shape[0], per_roi, tiling.tile_bytes)
    indexes = split_rois(tf.stack(corner_indexes(box_indexes, grid, zero_row), -1), sizes)
    weights = tf.stack([fixed_weight(w, feature_maps.dtype) for w in grid.weights], -1)
    weights = split_rois(weights[..., None], sizes)  # [t, ch, cw, 4, 1] each
    pooled = []
    for tile, (tile_indexes, tile_weights) in enumerate(zip(indexes, weights)):
        with tf.name_scope(f"{TILE_SCOPE}{tile}"):
            tile_indexes = after_previous_tile(tile_indexes, pooled[-1] if pooled else None)
            products = tf.multiply(tf.gather(table, tile_indexes), tile_weights, "products")
            products = tf.reshape(products, [-1, crop_height, crop_width * 4, grid.channels])
            quarter_samples = tf.nn.avg_pool2d(products, (1, 4), (1, 4), "VALID")
            pooled.append(max_pool_bins(quarter_samples, samples_per_bin) * 4.0)
    return pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=0)


register_lowering("fixed_point_tiled", _fixed_point_tiled_roi_pool, pools=True)
register_lowering("neighbour_pool", _neighbour_pool_crop_and_resize)
register_lowering(
    "neighbour_pool_split", _neighbour_pool_split_roi_pool, pools=True, sized_tiles=True
)
register_lowering("neighbour_matmul", _neighbour_matmul_crop_and_resize)
register_lowering("separable_matmul", _separable_matmul_crop_and_resize)
