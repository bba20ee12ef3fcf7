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
from export.shared import keras_outputs
from models.roi_pooling import RoIPooling, roi_pool

#: Largest allowed max abs difference between the swapped and the original float model.
PROOF_MAX_ABS = 1e-5
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


def _is_roiedge(layer: Any) -> bool:
    return isinstance(layer, (RoIPooling, SwappedRoIPooling))


def roi_pooling_layers(model: Any) -> list[Any]:
    """The model's RoIPooling layers after the swap (roiedge's and swapped ones)."""
    return [layer for layer in model.layers if _is_roiedge(layer)]


def layer_arguments(layer: Any) -> list[Any]:
    """The input tensors of a layer called once (``[]`` for a layer shared by several calls)."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):  # Keras: a layer with several inbound nodes
        return []
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


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
    targets = {
        id(layer): layer
        for layer in model.layers
        if type(layer).__name__ == roi_layer and not _is_roiedge(layer)
    }
    if not targets:
        return model, []
    swaps = []
    replacements = {}
    for key, layer in targets.items():
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
        raise ExportInputError(
            f"model {model.name}: cannot copy it to swap its {roi_layer} layer(s) "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''});"
            " build it as a functional keras.Model(inputs, outputs)"
        ) from None
    return copy, swaps


def substitute_class(entry: dict[str, Any], samples_per_bin: int) -> type:
    """A layer class that loads a saved ``entry``'s config as a :class:`SwappedRoIPooling`.

    Refuses (one-line ExportInputError) configs with keys whose meaning the swap cannot know.
    """
    config = entry["config"]
    name = config.get("name", "?")
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


def prove_swap(
    swapped: Any,
    rows: Sequence[Sequence[np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]],
    output_names: Sequence[str],
    source: str,
    swaps: list[dict[str, Any]] | None,
    extra_reference: Sequence[Sequence[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Check the swapped float model against the original outputs on the golden samples.

    Raises ExportCheckError (one line: how far apart, where, what to try) if any output differs
    by more than :data:`PROOF_MAX_ABS`; returns the proof record for ``reports/swap_proof.json``.
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
            if isinstance(layer, SwappedRoIPooling)
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
    actual = keras_outputs(swapped, rows)
    per_output = {}
    worst = (0.0, output_names[0], 0)
    for j, name in enumerate(output_names):
        diffs = [float(np.max(np.abs(a[j] - r[j]))) for a, r in zip(actual, reference)]
        per_output[name] = max(diffs)
        sample = int(np.argmax(diffs))
        if diffs[sample] > worst[0]:
            worst = (diffs[sample], name, sample)
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
    record = {
        "swapped_layers": swaps,
        "proof": source,
        "max_abs_by_output": per_output,
        "bound": PROOF_MAX_ABS,
        "edge_rounding_rois": edges,
        "edge_rounding": (
            f"{len(edges)} of {total_rois} golden RoIs have a sample TensorFlow rounds just past "
            "the map edge and zeroes; the swapped layer reproduces that rounding"
        ),
    }
    if extra_reference is not None:
        record["given_outputs_max_abs_vs_original"] = {
            name: max(
                float(np.max(np.abs(g[j] - r[j]))) for g, r in zip(extra_reference, reference)
            )
            for j, name in enumerate(output_names)
        }
    layers = ", ".join(
        f"{s['layer']} ({s['class'].rsplit('.', 1)[-1]} size {tuple(s['size'])})" for s in swaps
    )
    if not worst[0] <= PROOF_MAX_ABS:
        raise ExportCheckError(
            f"swap proof failed: swapped {layers} differs from the original by {worst[0]:.3g} max "
            f"abs (output {worst[1]}, golden sample {worst[2]}; bound {PROOF_MAX_ABS:g}; proof: "
            f"{source}); if the layer also max-pools its crops try --samples-per-bin 2, and "
            "check that it computes tf.image.crop_and_resize(feature_maps, rois, box_indexes, size)"
        )
    record["summary"] = (
        f"swapped {layers}: max abs {worst[0]:.2g} <= {PROOF_MAX_ABS:g} on {len(rows)} golden "
        f"samples ({source}); {record['edge_rounding']}"
    )
    return record


#: Artifacts whose RoIPooling runs in int8: a tiled lowering's tiles are sized for int8 there
#: (4x the RoIs of a float32 tile in the same bytes; ``fixed_point_split`` int8 with float32-sized
#: tiles measured ~1.4x the time of int8-sized ones on make bench's case). ONNX int8 keeps
#: RoIPooling float (export.onnx_format.roi_pooling_nodes), int8_io has no RoIPooling.
INT8_ROI_ARTIFACTS = frozenset({("tflite", "int8"), ("tflite", "mixed")})
#: Largest difference allowed between a model and its retiled copy (same arithmetic, other tiles).
RETILE_MAX_ABS = 1e-6


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
    for got, want in zip(keras_outputs(copy, rows), keras_outputs(model, rows)):
        worst = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))
        if not worst <= RETILE_MAX_ABS:
            raise ExportCheckError(
                f"model {model.name}: its copy with RoIPooling tiles sized for int8 differs by "
                f"{worst:.3g} (> {RETILE_MAX_ABS}) from the model; expected the same values"
            )
    return copy, sorted(layer.name for layer in targets.values())
