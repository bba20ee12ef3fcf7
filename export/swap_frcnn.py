"""Swap keras-frcnn's ``RoiPoolingConv`` for :class:`models.frcnn_roi.FrcnnRoiPooling`.

A layer of class ``RoiPoolingConv`` (found by class name, or named with ``--roi-layer``) is
replaced in the copy by :class:`SwappedRoiPoolingConv` with its ``pool_size`` and ``num_rois``.
Which bilinear resize the user's layer uses (TF1's ``resize_images`` or TF2's ``tf.image.resize``,
:data:`models.frcnn_roi.RESIZES`) is not in its config: it is read off the live layer by running
it once on random inputs of its own shapes and keeping the convention that agrees within the
float32 rounding bound (:mod:`export.proof_bound`); a layer that matches none is refused. The
export's proof then checks the copy on the golden samples like any swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from export.config import ExportInputError
from export.proof_bound import EPS32, TF_POSITION_ULPS, bilinear_bound, layer_arguments
from models.frcnn_roi import RESIZES, FrcnnRoiPooling, integer_boxes, sample_positions

#: keras-frcnn's layer class name (recognized without ``--roi-layer``).
FRCNN_CLASS = "RoiPoolingConv"
#: Config keys of a saved RoiPoolingConv the swap understands (the rest is Keras bookkeeping).
FRCNN_KEYS = frozenset({"pool_size", "num_rois"})


@keras.saving.register_keras_serializable(package="roiedge")
class SwappedRoiPoolingConv(FrcnnRoiPooling):
    """:class:`FrcnnRoiPooling` standing in for a user's RoiPoolingConv, with its proof bound."""

    def rounding_bound(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """[1, N, P, P, C] float64: how far this layer and TF's crop + resize may differ on
        ``inputs`` = (feature map [1,H,W,C], rois [1,N,4]) by rounding alone. The positions here
        are exact rationals; TF's resize computes ``scale = crop / P`` and the sample position in
        float32 (4 ulps of the crop length, as crop_and_resize's)."""
        feature_maps, rois = np.asarray(inputs[0]), np.asarray(inputs[1])
        _, height, width, _ = feature_maps.shape
        boxes = integer_boxes(rois.reshape(-1, 4), height, width)
        x, y, w, h = boxes.T
        p = self.pool_size
        ys = sample_positions(y, h, p, self.resize)
        xs = sample_positions(x, w, p, self.resize)
        dy = TF_POSITION_ULPS * EPS32 * h.astype(np.float64)
        dx = TF_POSITION_ULPS * EPS32 * w.astype(np.float64)
        bound = bilinear_bound(feature_maps, np.zeros(len(boxes), np.int64), ys, xs, dy, dx)
        return bound[None]


def is_frcnn_layer(layer: Any) -> bool:
    """A keras-frcnn RoiPoolingConv: that class name, or a subclass of a class of that name."""
    return any(cls.__name__ == FRCNN_CLASS for cls in type(layer).__mro__)


def _int_setting(layer: Any, key: str) -> int:
    try:
        config = layer.get_config()
    except Exception:  # keras-frcnn's Keras 2 layer has no get_config: Keras 3 raises
        config = {}
    value = config.get(key, getattr(layer, key, None))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ExportInputError(
            f"layer {layer.name} ({type(layer).__name__}): {key} is {value!r}; the swap needs it "
            "as a positive int"
        )
    return int(value)


def _probe_inputs(layer: Any, num_rois: int, seed: int = 0) -> list[np.ndarray]:
    """Random (feature map [1,H,W,C], rois [1,N,4] x y w h) of the layer's input shapes."""
    arguments = layer_arguments(layer)
    shape = tuple(arguments[0].shape) if len(arguments) == 2 else (1, None, None, None)
    height, width, channels = (d if d else 16 for d in shape[1:4])
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((1, height, width, channels)).astype(np.float32)
    x = rng.integers(0, width - 1, num_rois)
    y = rng.integers(0, height - 1, num_rois)
    w = np.maximum(1, rng.integers(1, width + 1, num_rois) - x // 2)
    h = np.maximum(1, rng.integers(1, height + 1, num_rois) - y // 2)
    boxes = np.stack([x, y, np.minimum(w, width - x), np.minimum(h, height - y)], axis=1)
    rois = boxes + rng.uniform(0.0, 0.99, boxes.shape)  # fractions the int cast drops
    return [features, rois[None].astype(np.float32)]


def frcnn_replacement(layer: Any) -> tuple[SwappedRoiPoolingConv, dict[str, Any]]:
    """(the swapped layer, its swap record) for a live RoiPoolingConv ``layer``.

    Raises ExportInputError (one line) when the layer matches none of the resize conventions.
    """
    pool_size = _int_setting(layer, "pool_size")
    num_rois = _int_setting(layer, "num_rois")
    inputs = _probe_inputs(layer, num_rois)
    try:
        want = np.asarray(layer(inputs), np.float64)
    except Exception as error:  # the user's layer: anything it raises is its own
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportInputError(
            f"layer {layer.name} ({type(layer).__name__}): running it on [feature map "
            f"{inputs[0].shape}, rois {inputs[1].shape}] to read its resize failed "
            f"({type(error).__name__}: {text})"
        ) from None
    misses = []
    for resize in RESIZES:
        candidate = SwappedRoiPoolingConv(pool_size, num_rois, resize, name=layer.name)
        got = np.asarray(candidate(inputs), np.float64)
        if got.shape != want.shape:
            misses.append(f"{resize}: shape {got.shape} vs {want.shape}")
            continue
        difference = np.abs(got - want)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(difference > 0, difference / candidate.rounding_bound(inputs), 0)
        ratio = float(np.max(np.where(np.isnan(difference), np.inf, ratios)))
        if ratio <= 1.0:
            record = {
                "layer": layer.name,
                "class": f"{type(layer).__module__}.{type(layer).__name__}",
                "size": [pool_size, pool_size],
                "num_rois": num_rois,
                "resize": resize,
                "read_from": "the live layer (resize: matched on random inputs)",
            }
            return candidate, record
        misses.append(f"{resize}: {ratio:.3g}x the rounding bound")
    raise ExportInputError(
        f"layer {layer.name} ({type(layer).__name__}): matches no RoiPoolingConv convention "
        f"roiedge's swap covers (integer (x, y, w, h) crop resized bilinearly to "
        f"{pool_size}x{pool_size}; {'; '.join(misses)})"
    )
