"""Swap a user's RoIPooling layer for roiedge's builtin-only lowering, in a copy, and prove it.

A tutorial-style RoIPooling layer returns ``tf.image.crop_and_resize(feature_maps, rois,
box_indexes, size)``, which TFLite runs only as a Flex op. :func:`swap_roi_layers` builds a copy
of the model in which every such layer is replaced by :class:`SwappedRoIPooling` (same name,
same inputs, same ``size``; every other layer is the original object, weights untouched), and
:func:`prove_swap` checks that the copy computes what the original does.

TensorFlow's kernel decides whether a sample lies on the map from its float32 position
``y1 * (H - 1) + i * ((y2 - y1) * (H - 1) / (crop - 1))``; for a box ending at exactly 1.0 that
rounds to a hair past ``H - 1`` for some heights (29.000002 on a 30-row map) and the sample is
zeroed. roiedge's lowerings count such samples as on the edge (``models.roi_pooling.EDGE_SLACK``),
so the swapped layer multiplies by the inside/outside mask recomputed with TF's own float32
operation order (the divisor is a run-time tensor, so converters keep a true division instead of
folding it into a reciprocal multiply): the copy reproduces TF's rounding instead of the tolerance
being loosened for those boxes. The RoIs where this matters are counted in the proof.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from export.config import ExportCheckError, ExportInputError
from export.proof_bound import (
    crop_and_resize_bound,
    layer_arguments,
    layer_proof,
    propagated_bounds,
)
from export.shared import keras_outputs
from models.roi_lowerings import fixed_point_position_error
from models.roi_pooling import RoIPooling, roi_pool

#: Config keys of a saved RoIPooling layer that carry no semantics (Keras bookkeeping).
_BOOKKEEPING_KEYS = frozenset({"name", "trainable", "dtype", "autocast", "input_dim", "batch_size"})
#: Config keys the swap understands: the pooled grid size, under either common name.
_SIZE_KEYS = ("size", "pool_size")


def _size_pair(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value)
    ):
        raise ExportInputError(f"{where}: size {value!r} is not two positive ints (height, width)")
    return int(value[0]), int(value[1])


def _edge_inside(lo, hi, length: int, crop_length: int, zeros):
    """[N, crop_length] float 0/1: which samples TF's CropAndResize kernel puts on the map.

    Same float32 operations in the same order as ``crop_and_resize_op.cc``. ``zeros`` is an [N]
    int32 zero tensor computed from an input, so the divisor is not a constant.
    """
    last = float(length - 1)
    if crop_length > 1:
        divisor = tf.cast(zeros + (crop_length - 1), tf.float32)  # [N]
        step = ((hi - lo) * last) / divisor
        steps = tf.range(crop_length, dtype=tf.float32)
        positions = lo[:, None] * last + steps[None, :] * step[:, None]
    else:
        positions = ((0.5 * (lo + hi)) * last)[:, None]
    inside = tf.logical_and(positions >= 0.0, positions <= last)
    return tf.cast(inside, tf.float32)


def tf_edge_mask(feature_maps, rois, box_indexes, crop_size):
    """[N, ch, cw] float32 0/1: TF CropAndResize's on-map test of every sample of every RoI."""
    height, width = int(feature_maps.shape[1]), int(feature_maps.shape[2])
    zeros = tf.math.floordiv(tf.cast(box_indexes, tf.int32), 1 << 30)
    y1, x1, y2, x2 = tf.unstack(tf.cast(rois, tf.float32), axis=1)
    ys = _edge_inside(y1, y2, height, crop_size[0], zeros)
    xs = _edge_inside(x1, x2, width, crop_size[1], zeros)
    return ys[:, :, None] * xs[:, None, :]


def edge_rounding_rois(feature_shape, rois: np.ndarray, crop_size) -> np.ndarray:
    """Indexes of RoIs with a sample TF zeroes that lies within rounding of the map edge.

    Numpy float32 twin of :func:`_edge_inside`: a sample counts when TF puts it outside
    ``[0, L - 1]`` by less than ``models.roi_pooling.EDGE_SLACK`` relative (where roiedge's
    lowering alone would still sample the edge pixel). ``rois`` is [N, 4] y1x1y2x2.
    """
    from models.roi_pooling import EDGE_SLACK

    rois = np.asarray(rois, np.float32).reshape(-1, 4)
    hit = np.zeros(len(rois), bool)
    for axis, length, crop in (
        (0, feature_shape[1], crop_size[0]),
        (1, feature_shape[2], crop_size[1]),
    ):
        lo, hi = rois[:, axis], rois[:, axis + 2]
        last = np.float32(length - 1)
        if crop > 1:
            step = ((hi - lo) * last) / np.float32(crop - 1)
            positions = (
                lo[:, None] * last + np.arange(crop, dtype=np.float32)[None, :] * step[:, None]
            )
        else:
            positions = ((np.float32(0.5) * (lo + hi)) * last)[:, None]
        slack = last * np.float32(EDGE_SLACK)
        near = ((positions < 0) & (positions >= -slack)) | (
            (positions > last) & (positions <= last + slack)
        )
        hit |= near.any(axis=1)
    return np.flatnonzero(hit)


def tf_rounding_roi_pool(feature_maps, rois, box_indexes, size, samples_per_bin: int = 1):
    """``max_pool(crop_and_resize(feature_maps, rois, box_indexes, size * s), s)`` in builtins.

    ``feature_maps`` [B,H,W,C] float (static H, W), ``rois`` [N,4] normalized y1x1y2x2,
    ``box_indexes`` [N] int32 -> [N, size[0], size[1], C]. roiedge's ``fixed_point`` lowering
    with every sample TF's CropAndResize puts off the map zeroed (:func:`tf_edge_mask`), so boxes
    ending on the map edge match TF's kernel too.
    """
    s = samples_per_bin
    crop_size = (size[0] * s, size[1] * s)
    crops = roi_pool(
        feature_maps,
        rois,
        box_indexes,
        size=crop_size,
        samples_per_bin=1,
        implementation="fixed_point",
    )
    mask = tf_edge_mask(feature_maps, rois, box_indexes, crop_size)
    crops = crops * tf.cast(mask, crops.dtype)[..., None]
    if s == 1:
        return crops
    return tf.nn.max_pool2d(crops, s, s, "VALID")


@keras.saving.register_keras_serializable(package="roiedge")
class SwappedRoIPooling(keras.layers.Layer):
    """roiedge's builtin-only RoIPooling with TF CropAndResize's edge rounding, for swapped layers.

    ``call(feature_maps [B,H,W,C], rois [N,4] normalized y1x1y2x2, box_indexes [N] int32)`` ->
    ``[N, size[0], size[1], C]`` by :func:`tf_rounding_roi_pool`. Args: ``size`` (height,
    width) of the pooled grid; ``samples_per_bin`` bilinear samples per bin and axis, max-pooled
    (1 = plain crop_and_resize); ``**kwargs`` to ``keras.layers.Layer``.
    """

    def __init__(self, size=(7, 7), samples_per_bin: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.size = _size_pair(size, f"layer {kwargs.get('name', '?')}")
        if isinstance(samples_per_bin, bool) or not isinstance(samples_per_bin, (int, np.integer)):
            raise ExportInputError(f"samples_per_bin {samples_per_bin!r} is not an int >= 1")
        if samples_per_bin < 1:
            raise ExportInputError(f"samples_per_bin {samples_per_bin!r} is not an int >= 1")
        self.samples_per_bin = int(samples_per_bin)

    def call(self, feature_maps, rois=None, box_indexes=None):
        if rois is None and box_indexes is None and isinstance(feature_maps, (list, tuple)):
            if len(feature_maps) != 3:
                raise ExportInputError(
                    f"layer {self.name}: takes (feature_maps, rois, box_indexes), "
                    f"got a list of {len(feature_maps)} inputs"
                )
            feature_maps, rois, box_indexes = feature_maps
        return tf_rounding_roi_pool(
            feature_maps, rois, box_indexes, self.size, self.samples_per_bin
        )

    def get_config(self):
        return {
            **super().get_config(),
            "size": list(self.size),
            "samples_per_bin": self.samples_per_bin,
        }

    def rounding_bound(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """[N, size[0], size[1], C] float64: how far this layer and TF's crop_and_resize (+ max
        pool) may differ on ``inputs`` = (feature_maps, rois, box_indexes) by rounding alone
        (:mod:`export.proof_bound`: TF's float32 positions plus the fixed-point grid's)."""
        feature_maps, rois, box_indexes = inputs[:3]
        return crop_and_resize_bound(
            feature_maps,
            rois,
            box_indexes,
            self.size,
            self.samples_per_bin,
            fixed_point_position_error,
        )


def _is_roiedge(layer: Any) -> bool:
    return isinstance(layer, (RoIPooling, SwappedRoIPooling))


def roi_pooling_layers(model: Any) -> list[Any]:
    """The model's RoIPooling layers after the swap (roiedge's and swapped ones)."""
    return [layer for layer in model.layers if _is_roiedge(layer)]


def _layer_size(layer: Any) -> tuple[int, int]:
    """``size`` (or ``pool_size``) of a live layer, from its config, else its attributes."""
    try:
        config = layer.get_config()
    except Exception:  # a tutorial layer without get_config: Keras 3 raises NotImplementedError
        config = {}
    for key in _SIZE_KEYS:
        value = config.get(key, getattr(layer, key, None))
        if value is not None:
            return _size_pair(value, f"layer {layer.name} ({type(layer).__name__})")
    raise ExportInputError(
        f"layer {layer.name} ({type(layer).__name__}): has no size or pool_size; the swap cannot "
        "tell what grid it pools to"
    )


#: RoI layers of other projects the swap does not cover, with what differs (refused by name).
UNCOVERED_LAYERS = {
    "PyramidROIAlign": "4 pyramid levels chosen by box area, crop_and_resize per level, then "
    "reordered",
    "ROIAlign": "average-pooled samples at bin centres (torchvision-style), not crop_and_resize",
    "RoIAlign": "average-pooled samples at bin centres (torchvision-style), not crop_and_resize",
}
COVERED = (
    "roiedge's swap covers single-level crop_and_resize RoIPooling (+ max pool) and keras-frcnn "
    "RoiPoolingConv"
)


def refuse_uncovered(model: Any) -> None:
    """One-line ExportInputError naming the first layer of a class the swap does not cover."""
    for layer in model.layers:
        why = UNCOVERED_LAYERS.get(type(layer).__name__)
        if why:
            raise ExportInputError(f"layer {layer.name} ({type(layer).__name__}): {why}; {COVERED}")


def swap_roi_layers(model: Any, roi_layer: str, samples_per_bin: int):
    """(copy, swaps): ``model`` with every non-roiedge layer of class ``roi_layer`` replaced.

    The copy shares every other layer object with ``model`` (same weights, nothing retrained);
    ``model`` itself is not edited. ``swaps`` lists what was replaced, with the size read.
    """
    import keras

    def inner_layers(layer):
        for inner in getattr(layer, "layers", ()):
            yield inner
            yield from inner_layers(inner)

    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(
            type(inner).__name__ == roi_layer and not _is_roiedge(inner)
            for inner in inner_layers(layer)
        ):
            raise ExportInputError(
                f"layer {layer.name} is a nested model containing a {roi_layer}; the swap "
                "handles layers of the top-level functional model only (flatten the model)"
            )
    from export.swap_frcnn import FRCNN_CLASS, frcnn_replacement, is_frcnn_layer

    refuse_uncovered(model)
    targets = {
        id(layer): layer
        for layer in model.layers
        if (type(layer).__name__ == roi_layer or is_frcnn_layer(layer)) and not _is_roiedge(layer)
    }
    if not targets:
        return model, []
    swaps = []
    replacements = {}
    for key, layer in targets.items():
        if is_frcnn_layer(layer):
            replacements[key], record = frcnn_replacement(layer)
            swaps.append(record)
            continue
        arguments = layer_arguments(layer)
        if len(arguments) != 3:
            raise ExportInputError(
                f"layer {layer.name} ({type(layer).__name__}): takes {len(arguments)} input "
                "tensor(s); the swap covers crop_and_resize-style layers called with "
                "(feature_maps, rois [N,4] normalized y1x1y2x2, box_indexes [N]) and keras-frcnn's "
                f"{FRCNN_CLASS} ([feature_map, rois (x, y, w, h)])"
            )
        size = _layer_size(layer)
        replacements[key] = SwappedRoIPooling(size, samples_per_bin, name=layer.name)
        swaps.append(
            {
                "layer": layer.name,
                "class": f"{type(layer).__module__}.{type(layer).__name__}",
                "size": list(size),
                "samples_per_bin": samples_per_bin,
                "read_from": "the live layer",
            }
        )

    def clone(layer):
        return replacements.get(id(layer), layer)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as error:  # clone_model raises ValueError/TypeError for non-functional models
        from runtime.errors import one_line

        functional = type(model).__name__ in ("Functional", "Model") and hasattr(model, "inputs")
        advice = (
            "the swapped layer was called like the original and failed: check the layer's inputs"
            if functional
            else "build it as a functional keras.Model(inputs, outputs)"
        )
        raise ExportInputError(
            f"model {model.name}: cannot copy it to swap its {roi_layer} layer(s) "
            f"({type(error).__name__}: {one_line(error)[:400]}); {advice}"
        ) from None
    return copy, swaps


def substitute_class(entry: dict[str, Any], samples_per_bin: int) -> type:
    """A layer class that loads a saved ``entry``'s config as a :class:`SwappedRoIPooling`.

    Refuses (one-line ExportInputError) configs with keys whose meaning the swap cannot know.
    """
    config = entry["config"]
    name = config.get("name", "?")
    if entry["class_name"].rsplit(">", 1)[-1] == "RoiPoolingConv":
        raise ExportInputError(
            f"layer {name} (RoiPoolingConv): its class cannot run here and its saved config does "
            "not say which resize it uses (TF1 resize_images or TF2 tf.image.resize); pass "
            "--custom-objects FILE.py defining RoiPoolingConv so the swap reads it off the layer"
        )
    unknown = sorted(set(config) - _BOOKKEEPING_KEYS - set(_SIZE_KEYS))
    if unknown:
        raise ExportInputError(
            f"layer {name} ({entry['class_name']}): its saved config has {', '.join(unknown)}, "
            "which the swap cannot interpret (it knows size/pool_size); pass --custom-objects "
            "FILE.py defining the class so the original runs and the swap is proven on it"
        )
    if not any(k in config for k in _SIZE_KEYS):
        raise ExportInputError(
            f"layer {name} ({entry['class_name']}): its saved config has no size or pool_size "
            "(the class lacks get_config); pass --custom-objects FILE.py defining it"
        )

    class Substitute(SwappedRoIPooling):
        def __init__(self, **kwargs):
            size = next(kwargs.pop(k) for k in _SIZE_KEYS if k in kwargs)
            for key in _SIZE_KEYS:
                kwargs.pop(key, None)
            kwargs = {k: v for k, v in kwargs.items() if k in ("name", "trainable", "dtype")}
            super().__init__(size=size, samples_per_bin=samples_per_bin, **kwargs)

    Substitute.__name__ = f"Swapped{entry['class_name']}"
    return Substitute


def _roi_layer_values(model: Any, rows: Sequence[Sequence[np.ndarray]]):
    """Per RoIPooling layer: (layer, [(feature map shape, rois [N,4]) per sample])."""
    import keras

    layers = roi_pooling_layers(model)
    if not layers:
        return []
    args = [layer_arguments(layer) for layer in layers]
    if any(len(a) != 3 for a in args):
        return []
    probe = keras.Model(model.inputs, [t for a in args for t in a[:2]])
    call = tf.function(lambda *x: probe(list(x) if len(x) > 1 else x[0], training=False))
    found = [(layer, []) for layer in layers]
    for row in rows:
        values = [np.asarray(v) for v in call(*row)]
        for i, (_, per_sample) in enumerate(found):
            per_sample.append((values[2 * i].shape, values[2 * i + 1]))
    return found


def roi_inputs(model: Any, rows: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The ``rois`` reaching each RoIPooling layer, for every sample (a flat list of [N,4])."""
    return [rois for _, values in _roi_layer_values(model, rows) for _, rois in values]


def _rounding_bound(layer: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
    return layer.rounding_bound(inputs)


def prove_swap(
    swapped: Any,
    rows: Sequence[Sequence[np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]],
    output_names: Sequence[str],
    source: str,
    swaps: list[dict[str, Any]] | None,
    extra_reference: Sequence[Sequence[np.ndarray]] | None = None,
    original: Any = None,
) -> dict[str, Any]:
    """Check the swapped float model against the original on the golden samples.

    With the ``original`` model: every swapped layer's output against the original layer's, on
    the inputs the golden samples give it, element by element within the float32 rounding
    bound of :mod:`export.proof_bound` (the model outputs' differences are recorded). Without
    it (the layer cannot run here): the model outputs against ``reference`` within that bound
    carried through the rest of the model. Raises ExportCheckError (one line: how far apart,
    where, what to try); returns the proof record for ``reports/swap_proof.json``.
    """

    if swaps is None:  # swapped while loading: read back what was swapped
        swaps = [
            {
                "layer": layer.name,
                "class": type(layer).__name__.removeprefix("Swapped"),
                "size": list(layer.size),
                "samples_per_bin": layer.samples_per_bin,
                "read_from": "the saved config",
            }
            for layer in swapped.layers
            if hasattr(layer, "rounding_bound")
        ]
    if not swaps:
        found = ", ".join(layer.name for layer in roi_pooling_layers(swapped))
        summary = (
            f"nothing to swap: RoIPooling layer(s) {found} are roiedge's; exported as is"
            if found
            else "nothing to swap: no RoIPooling layer found (a crop_and_resize layer of another "
            "class name needs --roi-layer NAME); exported as is"
        )
        return {"swapped_layers": [], "summary": summary}
    names = [s["layer"] for s in swaps]
    actual = keras_outputs(swapped, rows)
    per_output = {
        name: max(float(np.max(np.abs(a[j] - r[j]))) for a, r in zip(actual, reference))
        for j, name in enumerate(output_names)
    }
    layers = ", ".join(
        f"{s['layer']} ({s['class'].rsplit('.', 1)[-1]} size {tuple(s['size'])})" for s in swaps
    )
    hint = (
        "if the layer also max-pools its crops try --samples-per-bin 2, and check that it "
        "computes tf.image.crop_and_resize(feature_maps, rois, box_indexes, size)"
    )
    record: dict[str, Any] = {
        "swapped_layers": swaps,
        "proof": source,
        "max_abs_by_output": per_output,
        "bound": BOUND_RULE,
    }
    if original is not None:
        found = layer_proof(original, swapped, names, rows, _rounding_bound)
        ratio, layer_name, sample, diff, limit = found["worst"]
        record["by_layer"] = found["layers"]
        record["judged"] = "swapped layers' outputs vs the original layers', element by element"
        if not ratio <= 1.0:
            raise ExportCheckError(
                f"swap proof failed: swapped {layers}: layer {layer_name} differs from the "
                f"original by {diff:.3g} where float32 rounding allows {limit:.3g} (golden "
                f"sample {sample}; proof: {source}); {hint}"
            )
        verdict = f"max {ratio:.2g} of the float32 rounding bound (layer {layer_name})"
    else:
        allowed = propagated_bounds(swapped, names, rows, _rounding_bound)
        record["bound_by_output"] = {
            name: max(a[j] for a in allowed) for j, name in enumerate(output_names)
        }
        record["judged"] = "model outputs vs the given ones, within the bound carried to them"
        worst = (0.0, output_names[0], 0, 0.0, 0.0)
        for sample, (a, r, limits) in enumerate(zip(actual, reference, allowed)):
            for j, name in enumerate(output_names):
                diff = float(np.max(np.abs(np.asarray(a[j], np.float64) - r[j])))
                ratio = diff / limits[j] if limits[j] > 0 else (0.0 if diff == 0 else np.inf)
                ratio = np.inf if np.isnan(diff) else ratio
                if ratio > worst[0]:
                    worst = (ratio, name, sample, diff, limits[j])
        ratio, output, sample, diff, limit = worst
        if not ratio <= 1.0:
            raise ExportCheckError(
                f"swap proof failed: swapped {layers} differs from the original by {diff:.3g} "
                f"max abs (output {output}, golden sample {sample}) where float32 rounding "
                f"carried to it allows {limit:.3g} (proof: {source}); {hint}"
            )
        verdict = f"max {ratio:.2g} of the float32 rounding bound carried to the outputs"
    edges = []
    total_rois = 0
    for layer, values in _roi_layer_values(swapped, rows):
        total_rois += sum(len(rois) for _, rois in values)
        if not isinstance(layer, SwappedRoIPooling):
            continue
        crop = (layer.size[0] * layer.samples_per_bin, layer.size[1] * layer.samples_per_bin)
        for sample, (shape, rois) in enumerate(values):
            for roi in edge_rounding_rois(shape, rois, crop):
                edges.append({"layer": layer.name, "golden_sample": sample, "roi": int(roi)})
    record["edge_rounding_rois"] = edges
    record["edge_rounding"] = (
        f"{len(edges)} of {total_rois} golden RoIs have a sample TensorFlow rounds just past "
        "the map edge and zeroes; the swapped layer reproduces that rounding"
    )
    if extra_reference is not None:
        record["given_outputs_max_abs_vs_original"] = {
            name: max(
                float(np.max(np.abs(g[j] - r[j]))) for g, r in zip(extra_reference, reference)
            )
            for j, name in enumerate(output_names)
        }
    record["summary"] = (
        f"swapped {layers}: {verdict} on {len(rows)} golden samples ({source}); "
        f"{record['edge_rounding']}"
    )
    return record


#: How the proof's bound is set (recorded in swap_proof.json; derivation in export.proof_bound).
BOUND_RULE = (
    "per element: M * (16 eps32 + 2 (dy + dx)); M = largest |feature| the sample can read, "
    "dy/dx = worst sample-position error in pixels of TF's float32 kernel plus the lowering's"
)


#: Artifacts whose RoIPooling runs in int8: a tiled lowering's tiles are sized for int8 there
#: (4x the RoIs of a float32 tile in the same bytes; ``fixed_point_split`` int8 with float32-sized
#: tiles measured ~1.4x the time of int8-sized ones on make bench's case). ONNX int8 keeps
#: RoIPooling float (export.onnx_format.roi_pooling_nodes), int8_io has no RoIPooling.
INT8_ROI_ARTIFACTS = frozenset({("tflite", "int8"), ("tflite", "mixed")})


def retile_for(model: Any, format: str, precision: str, rows: Sequence[Sequence[np.ndarray]]):
    """(model, retiled layer names): for an int8 artifact, a copy whose tiled RoIPooling layers
    size their tiles for int8, proven to compute what ``model`` computes on ``rows``.

    Only layers of a lowering with sized tiles (``models.roi_lowerings.SIZED_TILE_LOWERINGS``)
    left at the float32 default sizing change; every other layer is the original object, and
    ``model`` itself is returned untouched when nothing changes (other artifacts, other
    lowerings, layers the user sized for int8 already). ``rows``: input lists in model order.
    """
    import keras

    from models.roi_lowerings import SIZED_TILE_LOWERINGS

    if (format, precision) not in INT8_ROI_ARTIFACTS:
        return model, []
    targets = {
        id(layer): layer
        for layer in model.layers
        if isinstance(layer, RoIPooling)
        and layer.implementation in SIZED_TILE_LOWERINGS
        and layer.tile_precision == "float32"
    }
    if not targets:
        return model, []

    def clone(layer):
        if id(layer) not in targets:
            return layer
        return RoIPooling.from_config({**layer.get_config(), "tile_precision": "int8"})

    copy = keras.models.clone_model(model, clone_function=clone)
    names = sorted(layer.name for layer in targets.values())
    ratio, name, sample, diff, limit = layer_proof(model, copy, names, rows, retile_bound)["worst"]
    if not ratio <= 1.0:
        raise ExportCheckError(
            f"model {model.name}: its copy with RoIPooling tiles sized for int8 differs in layer "
            f"{name} by {diff:.3g} where float32 rounding allows {limit:.3g} (golden sample "
            f"{sample}); expected the same values"
        )
    return copy, names


def retile_bound(layer: Any, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """A retiled RoIPooling layer's bound against its untiled self: the same int32 sampling
    grid (no position error), only the float sums may be grouped differently."""
    feature_maps, rois, box_indexes = inputs[:3]
    return crop_and_resize_bound(
        feature_maps, rois, box_indexes, layer.size, layer.samples_per_bin, None, with_tf=False
    )
