"""The swap proof's bound: float32 rounding of bilinear sampling, element by element.

A swapped RoI layer and the original compute the same bilinear samples with different float32
(or fixed-point) arithmetic, so their outputs differ by rounding that grows with the feature
values: a fixed max-abs bound refuses correct swaps at larger magnitudes and passes or fails
with the CPU's last bits. The bound here is derived, not measured: for every output element

    bound = M * (VALUE_ULPS * eps32 + 2 * (dy + dx))

where ``M`` is the largest |feature value| among the pixels that sample can read (the bilinear
corners of its position, widened by the position error), ``eps32 = 2**-23`` and ``dy``/``dx``
the largest distance, in pixels, by which either implementation's sample position can lie from
the exact one (a sample that moves by ``d`` changes by at most ``d * |corner difference| <= 2 M d``;
bilinear sampling is continuous across pixel boundaries, so which pixel ``floor`` picks does not
matter). Derived per term:

* values: TF's kernel forms ``top = tl + (tr - tl) * xl``, the same for bottom, then
  ``top + (bottom - top) * yl``: 9 roundings of values up to ``2 M`` (half an ulp each, ~5 eps M
  in all); the fixed-point lowering forms ``sum w_i v_i`` (4 products, 3 sums: ~4 eps M) with
  integer weights cut to ``2**-22`` (``2**-21 M`` = 4 eps M). Both: ~13 eps M;
  :data:`VALUE_ULPS` = 16.
* TF's positions ``lo * (L-1) + i * ((hi - lo) * (L-1) / (crop - 1))``: 6 float32 roundings of
  values up to ``A = (L-1) * max(1, |lo|, |hi|, |hi - lo|)``, i.e. 3 eps A;
  :data:`TF_POSITION_ULPS` = 4 (per ulp of ``A``).
* the lowering's positions: its own worst case (``models.roi_lowerings.fixed_point_position_error``
  for the fixed-point grid; exactly 0 between two copies of the same lowering).
* ``samples_per_bin > 1``: the max of a bin moves by at most the largest bound of its samples.

The bound is a worst case of float32 arithmetic, so it holds for any correct implementation on
any CPU: the verdict depends on the inputs only. A wrong swap (another sampling grid, a half-pixel
shift, x and y exchanged, another samples_per_bin) moves samples by a pixel fraction, i.e. by a
sizeable part of ``M`` -- thousands of times the bound. The proof compares the swapped layer's
output with the original layer's on the golden samples' own inputs (:func:`layer_proof`); the
model outputs after it are only the original layers applied to values within rounding of the
original's, so their difference is reported, not judged. Without the original layer (it cannot
run here; its outputs were given), the model outputs are judged against the bound carried
through the rest of the model (:func:`propagated_bounds`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: float32 machine epsilon (2**-23).
EPS32 = float(np.finfo(np.float32).eps)
#: Value roundings of two bilinear implementations together, in eps32 * M (derived above).
VALUE_ULPS = 16
#: TF CropAndResize's sample-position rounding, in eps32 * (L - 1) * max(1, |coordinates|).
TF_POSITION_ULPS = 4
#: Floor of a judged model output's bound, in eps32 * its largest |value| (outputs that do not
#: depend on the swapped layer may still be recomputed by another kernel).
OUTPUT_FLOOR_ULPS = 16


def crop_and_resize_positions(lo, hi, length: int, crop_length: int) -> np.ndarray:
    """[N, crop_length] float64 exact sample positions (pixels) of crop_and_resize on one axis.

    ``lo``/``hi``: [N] normalized box edges (0 and 1 are the centres of the first and last pixel).
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    last = float(length - 1)
    if crop_length > 1:
        steps = np.arange(crop_length, dtype=np.float64) / (crop_length - 1)
        return lo[:, None] * last + steps[None, :] * ((hi - lo) * last)[:, None]
    return (0.5 * (lo + hi) * last)[:, None]


def tf_position_error(lo, hi, length: int) -> np.ndarray:
    """[N] pixels: how far TF's float32 sample positions can lie from the exact ones."""
    lo, hi = np.abs(np.asarray(lo, np.float64)), np.asarray(hi, np.float64)
    span = np.maximum.reduce([np.ones_like(lo), lo, np.abs(hi), np.abs(hi - lo)])
    return TF_POSITION_ULPS * EPS32 * (length - 1) * span


def bilinear_bound(
    feature_maps, box_indexes, ys, xs, dy, dx, value_ulps: float = VALUE_ULPS
) -> np.ndarray:
    """[N, ch, cw, C] float64: the rounding bound of every bilinear sample (formula above).

    ``feature_maps`` [B, H, W, C]; ``box_indexes`` [N] int; ``ys`` [N, ch] / ``xs`` [N, cw]
    exact positions in pixels; ``dy``/``dx`` [N] (or scalars) position errors in pixels.
    Positions off the map read its nearest edge pixels (a bound, not a value).
    """
    magnitudes = np.abs(np.asarray(feature_maps, np.float64))
    _, height, width, _ = magnitudes.shape
    box_indexes = np.asarray(box_indexes, np.int64).reshape(-1)
    count = len(box_indexes)
    dy = np.broadcast_to(np.asarray(dy, np.float64), (count,))
    dx = np.broadcast_to(np.asarray(dx, np.float64), (count,))

    def candidates(positions, error, length):
        # Every pixel a position within `error` of the exact one can read: floor(p - e) up to
        # ceil(p + e), at most 3 pixels (error < 0.5), clamped onto the map.
        low = np.floor(positions - error[:, None])
        high = np.ceil(positions + error[:, None])
        rows = [low, low + 1, high]
        return [np.clip(r, 0, length - 1).astype(np.int64) for r in rows]

    rows = candidates(np.asarray(ys, np.float64), dy, height)
    cols = candidates(np.asarray(xs, np.float64), dx, width)
    largest = None
    for r in rows:
        for c in cols:
            values = magnitudes[box_indexes[:, None, None], r[:, :, None], c[:, None, :]]
            largest = values if largest is None else np.maximum(largest, values)
    factor = value_ulps * EPS32 + 2.0 * (dy + dx)
    return largest * factor[:, None, None, None]


def max_pool_bound(bound: np.ndarray, samples_per_bin: int) -> np.ndarray:
    """[N, ch/s, cw/s, C]: a bin's max moves by at most the largest bound of its samples."""
    if samples_per_bin == 1:
        return bound
    n, ch, cw, c = bound.shape
    s = samples_per_bin
    return bound.reshape(n, ch // s, s, cw // s, s, c).max(axis=(2, 4))


def crop_and_resize_bound(
    feature_maps,
    rois,
    box_indexes,
    size: tuple[int, int],
    samples_per_bin: int,
    lowering_error: Callable[[int, int, int, int], float] | None,
    value_ulps: float = VALUE_ULPS,
    with_tf: bool = True,
) -> np.ndarray:
    """[N, size[0], size[1], C]: bound of ``max_pool(crop_and_resize(..., size * s), s)``.

    ``rois`` [N, 4] normalized y1x1y2x2. The position error is TF's (``with_tf``) plus
    ``lowering_error(height, width, length, crop_length)`` (None: 0).
    """
    feature_maps = np.asarray(feature_maps)
    rois = np.asarray(rois, np.float64).reshape(-1, 4)
    _, height, width, _ = feature_maps.shape
    crop = (size[0] * samples_per_bin, size[1] * samples_per_bin)
    errors = []
    positions = []
    for axis, length, crop_length in ((0, height, crop[0]), (1, width, crop[1])):
        lo, hi = rois[:, axis], rois[:, axis + 2]
        positions.append(crop_and_resize_positions(lo, hi, length, crop_length))
        error = np.zeros(len(rois))
        if with_tf:
            error = error + tf_position_error(lo, hi, length)
        if lowering_error is not None:
            error = error + lowering_error(height, width, length, crop_length)
        errors.append(error)
    bound = bilinear_bound(
        feature_maps, box_indexes, positions[0], positions[1], errors[0], errors[1], value_ulps
    )
    return max_pool_bound(bound, samples_per_bin)


# ------------------------------------------------------------------------------------ the proofs


def layer_arguments(layer: Any) -> list[Any]:
    """The input tensors of a layer called once (``[]`` for a layer shared by several calls)."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):  # Keras: a layer with several inbound nodes
        return []
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


class _Taps:
    """A copy of a model whose named layers record their inputs/output and can be offset.

    Each named layer is wrapped (the layer object itself runs inside the wrapper, so nothing is
    retrained or re-read, and the layer gains no inbound node); every other layer is shared.
    The copy runs eagerly, so :attr:`offsets` (name -> array added to that layer's output) and
    :attr:`seen` (name -> ``[output, *flat inputs]`` of the last call) apply per call.
    """

    def __init__(self, model: Any, names: Sequence[str]):
        import keras
        import tensorflow as tf

        taps = self
        self.names = set(names)
        self.offsets: dict[str, np.ndarray | None] = {}
        self.seen: dict[str, list[np.ndarray]] = {}

        class Tap(keras.layers.Layer):
            def __init__(self, inner, **kwargs):
                super().__init__(**kwargs)
                self.inner = inner

            def call(self, *args, **kwargs):
                kwargs.pop("training", None)
                out = self.inner(*args, **kwargs)
                offset = taps.offsets.get(self.name)
                if offset is not None:
                    out = out + tf.constant(offset, out.dtype)
                if tf.executing_eagerly():
                    try:  # keyword arguments in the order of the layer's call signature
                        bound = inspect.signature(self.inner.call).bind(*args, **kwargs)
                        flat = tf.nest.flatten(list(bound.arguments.values()))
                    except TypeError:
                        flat = tf.nest.flatten([list(args), kwargs])
                    taps.seen[self.name] = [np.asarray(out)] + [np.asarray(t) for t in flat]
                return out

        def clone(layer):
            return Tap(layer, name=layer.name) if layer.name in self.names else layer

        self.model = keras.models.clone_model(model, clone_function=clone)

    def run(self, row) -> list[np.ndarray]:
        """The model outputs (float64) for one row of inputs in model order."""
        self.seen = {}
        outs = self.model([np.asarray(v) for v in row] if len(row) > 1 else np.asarray(row[0]))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return [np.asarray(o, np.float64) for o in outs]


def layer_values(model: Any, names: Sequence[str], rows) -> list[dict[str, list[np.ndarray]]]:
    """Per row: layer name -> ``[output, *flat input tensors]`` (numpy) of each named layer."""
    taps = _Taps(model, names)
    found = []
    for row in rows:
        taps.run(row)
        found.append(dict(taps.seen))
    return found


def layer_proof(
    original: Any,
    copy: Any,
    names: Sequence[str],
    rows,
    bound_of: Callable[[Any, list[np.ndarray]], np.ndarray],
) -> dict[str, Any]:
    """Compare each named layer of ``copy`` with the same-named one of ``original``, element by
    element, on the inputs the golden ``rows`` give them.

    ``bound_of(copy_layer, inputs)`` gives the bound (same shape as the output) for the copy
    layer's numpy inputs. Returns ``{"worst": (ratio, layer, sample, |diff|, bound there),
    "layers": {name: {"max_abs", "max_bound_use", "largest_bound"}}}``; ratio = |diff| / bound
    at the worst element (<= 1 passes; NaN or a shape mismatch gives inf).
    """
    theirs = layer_values(original, names, rows)
    ours = layer_values(copy, names, rows)
    worst = (0.0, names[0], 0, 0.0, 0.0)
    layers = {}
    for name in names:
        layer = copy.get_layer(name)
        record = {"max_abs": 0.0, "max_bound_use": 0.0, "largest_bound": 0.0}
        for sample, (want, got) in enumerate(zip(theirs, ours)):
            reference, value, inputs = want[name][0], got[name][0], got[name][1:]
            bound = bound_of(layer, inputs)
            if reference.shape != value.shape or bound.shape != value.shape:
                ratio, diff, limit = float("inf"), float("inf"), 0.0
            else:
                difference = np.abs(value.astype(np.float64) - reference.astype(np.float64))
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratios = np.where(difference > 0, difference / bound, 0.0)
                ratios = np.where(np.isnan(difference), np.inf, ratios)
                at = np.unravel_index(int(np.argmax(ratios)), ratios.shape)
                ratio, diff, limit = float(ratios[at]), float(difference[at]), float(bound[at])
                record["max_abs"] = max(record["max_abs"], float(np.max(difference)))
                record["largest_bound"] = max(record["largest_bound"], float(np.max(bound)))
            record["max_bound_use"] = max(record["max_bound_use"], ratio)
            if ratio > worst[0]:
                worst = (ratio, name, sample, diff, limit)
        layers[name] = record
    return {"worst": worst, "layers": layers}


def propagated_bounds(
    model: Any,
    names: Sequence[str],
    rows,
    bound_of: Callable[[Any, list[np.ndarray]], np.ndarray],
) -> list[list[float]]:
    """Per row, per model output: how far its values move when every named layer's output moves
    by its bound (the largest change over the sign patterns all +, all - and random +-), plus
    the floor :data:`OUTPUT_FLOOR_ULPS` * eps32 * max |output|.
    """
    taps = _Taps(model, names)
    rng = np.random.default_rng(0)
    results = []
    for row in rows:
        taps.offsets = {}
        centre = taps.run(row)
        bounds = {
            name: bound_of(model.get_layer(name), values[1:]) for name, values in taps.seen.items()
        }
        moved = [0.0] * len(centre)
        for pattern in ("plus", "minus", "random"):
            for name, bound in bounds.items():
                if pattern == "random":
                    signs = rng.choice([-1.0, 1.0], size=bound.shape)
                else:
                    signs = np.full(bound.shape, 1.0 if pattern == "plus" else -1.0)
                taps.offsets[name] = (bound * signs).astype(np.float32)
            for j, (a, b) in enumerate(zip(taps.run(row), centre)):
                moved[j] = max(moved[j], float(np.max(np.abs(a - b))))
        floor = [OUTPUT_FLOOR_ULPS * EPS32 * float(np.max(np.abs(c))) for c in centre]
        results.append([m + f for m, f in zip(moved, floor)])
    return results
