"""The detector's feature extractors: the built-in tiny backbone or a keras.applications one.

``--backbone mobilenet_v2`` builds ``keras.applications.MobileNetV2`` (alpha 1.0) with
``weights=None`` - nothing is downloaded - and, with ``--backbone-weights PATH``, loads a local
``.h5`` / ``.weights.h5`` / ``.keras`` file into it (e.g. the ImageNet ``..._no_top.h5`` file a
user downloaded). The feature layer is found in the architecture, not listed per image size: the
last residual ``Add`` at output stride :data:`FEATURE_STRIDE` (Faster R-CNN's C4 level; for
MobileNetV2 ``block_12_add``, 96 channels). MobileNetV2 uses CONV_2D, DEPTHWISE_CONV_2D, PAD, ADD
and RELU6 only, so it converts to full int8 and maps onto the Edge TPU like the tiny backbone.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from runtime.config import DEFAULT_BACKBONE, DetectorConfig
from runtime.errors import RoiedgeError

if TYPE_CHECKING:
    import keras

#: Every --backbone choice; "tiny" is models.detector's own (stride 8).
BACKBONES = (DEFAULT_BACKBONE, "mobilenet_v2")
#: The output stride of the feature map taken from a keras.applications backbone.
FEATURE_STRIDE = 16
#: keras.applications' smallest input side per backbone (it refuses smaller inputs).
MIN_SIDE = {"mobilenet_v2": 32}
#: Suffixes load_weights reads (legacy HDF5 as the ImageNet files, Keras 3 weights, .keras).
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras")


class BackboneError(RoiedgeError):
    """A backbone choice, image size or weights file that cannot be used."""


class FeatureLayer(NamedTuple):
    """Where a backbone's feature map is taken: layer name, output stride (px), channels."""

    name: str
    stride: int
    channels: int


def check_backbone(name: str, weights: str | None, image_size: tuple[int, int]) -> None:
    """Refuse (one-line BackboneError) an unknown backbone, a too-small image or a bad weights path.

    TensorFlow-free, so the CLI can answer before it starts; whether the file's weights fit the
    architecture is checked when they are loaded (:func:`feature_extractor`).
    """
    if name not in BACKBONES:
        raise BackboneError(f"--backbone {name!r} is not known; expected one of {list(BACKBONES)}")
    if name == DEFAULT_BACKBONE:
        if weights is not None:
            raise BackboneError(
                f"--backbone-weights {weights} needs a keras.applications backbone; "
                f"the {DEFAULT_BACKBONE} backbone trains from scratch"
            )
        return
    small = [side for side in image_size if side < MIN_SIDE[name]]
    if small:
        raise BackboneError(
            f"--image-size {image_size[0]} {image_size[1]}: {name} needs sides >= "
            f"{MIN_SIDE[name]} (multiples of 32 recommended)"
        )
    if weights is None:
        return
    path = Path(weights)
    if not path.name.lower().endswith(WEIGHT_SUFFIXES):
        raise BackboneError(
            f"--backbone-weights {weights}: expected a {'/'.join(WEIGHT_SUFFIXES)} weights file"
        )
    if not path.is_file():
        raise BackboneError(f"--backbone-weights {weights}: no such file")


def _application(name: str, image_size: tuple[int, int]) -> keras.Model:
    """The whole keras.applications model without its classifier, random weights, batch None."""
    import keras

    if name != "mobilenet_v2":
        raise BackboneError(f"backbone {name!r} is not a keras.applications backbone")
    height, width = image_size
    return keras.applications.MobileNetV2(
        input_shape=(height, width, 3), include_top=False, weights=None, alpha=1.0
    )


def _feature_layer_of(model: keras.Model, image_size: tuple[int, int]) -> FeatureLayer:
    """The last residual Add whose output is exactly image_size / FEATURE_STRIDE."""
    import keras

    height, width = image_size
    found = None
    for layer in model.layers:
        shape = tuple(layer.output.shape)
        if not isinstance(layer, keras.layers.Add) or len(shape) != 4:
            continue
        if shape[1] * FEATURE_STRIDE == height and shape[2] * FEATURE_STRIDE == width:
            found = FeatureLayer(layer.name, FEATURE_STRIDE, int(shape[3]))
    if found is None:
        raise BackboneError(
            f"{model.name} at {height}x{width} has no residual block at stride {FEATURE_STRIDE}; "
            f"use an --image-size whose sides are multiples of {FEATURE_STRIDE}"
        )
    return found


@lru_cache(maxsize=8)
def feature_layer(name: str, image_size: tuple[int, int]) -> FeatureLayer:
    """The feature layer of backbone ``name`` at ``image_size`` (H, W); builds the model once."""
    if name == DEFAULT_BACKBONE:
        tiny = DetectorConfig()  # the built-in backbone's stride and width are the defaults
        return FeatureLayer("features", tiny.stride, tiny.feature_channels)
    if any(side % FEATURE_STRIDE for side in image_size):
        raise BackboneError(
            f"--image-size {image_size[0]} {image_size[1]}: {name} needs sides that are "
            f"multiples of its stride {FEATURE_STRIDE} (32 recommended)"
        )
    check_backbone(name, None, image_size)
    model = _application(name, tuple(image_size))
    return _feature_layer_of(model, tuple(image_size))


def _load_weights(model: keras.Model, weights: str) -> None:
    """Load ``weights`` into ``model``; every variable must come from the file (one-line error)."""
    variables = model.weights
    for variable in variables:
        variable.assign(np.full(variable.shape, np.nan, dtype=variable.dtype))
    try:
        model.load_weights(weights)
    except Exception as error:  # keras/h5py raise many types for foreign or corrupt files
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise BackboneError(
            f"--backbone-weights {weights}: not weights of {model.name} (alpha 1.0, no top): "
            f"{first or type(error).__name__}"
        ) from None
    missing = [v.path for v in variables if np.isnan(np.asarray(v.numpy())).any()]
    if missing:
        raise BackboneError(
            f"--backbone-weights {weights}: {len(missing)} of {len(variables)} weights of "
            f"{model.name} are not in the file (first: {missing[0]}); expected a full "
            f"{model.name} (alpha 1.0, include_top=False) weights file"
        )


def feature_extractor(
    name: str, image_size: tuple[int, int], weights: str | None = None
) -> keras.Model:
    """``image`` [B,H,W,3] in [-1, 1] -> features [B,H/16,W/16,C]: the truncated application.

    ``weights`` (a local file) are loaded into the whole application before it is cut at
    :func:`feature_layer`, so the ImageNet no-top files load as they are.
    """
    import keras

    check_backbone(name, weights, image_size)
    model = _application(name, tuple(image_size))
    if weights is not None:
        _load_weights(model, weights)
    layer = _feature_layer_of(model, tuple(image_size))
    return keras.Model(model.input, model.get_layer(layer.name).output, name=name)
