"""Test-local user models for ``export --keras-model``: a tutorial-style crop_and_resize layer.

The layer is written to a file so each test can hand it to the export as ``--custom-objects``,
exactly as a user would pass the module their notebook defined it in.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

#: A RoIPooling layer the way the tutorials write it (Keras 3 compatible): crop_and_resize to
#: ``size``. ``MaxPooledRoIPooling`` also max-pools a 2x finer crop (samples_per_bin 2).
TUTORIAL_LAYER = textwrap.dedent(
    """
    import keras
    import tensorflow as tf


    @keras.saving.register_keras_serializable(package="user_tutorial")
    class RoIPooling(keras.layers.Layer):
        def __init__(self, size=(7, 7), **kwargs):
            super().__init__(**kwargs)
            self.size = tuple(size)

        def call(self, feature_maps, rois, box_indexes):
            return tf.image.crop_and_resize(feature_maps, rois, box_indexes, self.size)

        def get_config(self):
            return {**super().get_config(), "size": list(self.size)}


    @keras.saving.register_keras_serializable(package="user_tutorial")
    class MaxPooledRoIPooling(RoIPooling):
        def call(self, feature_maps, rois, box_indexes):
            crop = (2 * self.size[0], 2 * self.size[1])
            crops = tf.image.crop_and_resize(feature_maps, rois, box_indexes, crop)
            return tf.nn.max_pool2d(crops, 2, 2, "VALID")
    """
)


#: The held-out bar case's layer: another user's style (one list input, ``pool_size``, not
#: registered), never seen by the other tests.
HELD_OUT_LAYER = textwrap.dedent(
    """
    import keras
    import tensorflow as tf


    class RoIPooling(keras.layers.Layer):
        def __init__(self, pool_size=7, **kwargs):
            super().__init__(**kwargs)
            self.pool_size = pool_size

        def call(self, inputs):
            feature_maps, rois, box_indexes = inputs
            size = (self.pool_size, self.pool_size)
            return tf.image.crop_and_resize(feature_maps, rois, box_indexes, size)

        def get_config(self):
            return {**super().get_config(), "pool_size": self.pool_size}
    """
)


def write_layer_file(directory: Path) -> Path:
    """The tutorial layer module as ``directory/user_layers.py``."""
    path = Path(directory) / "user_layers.py"
    path.write_text(TUTORIAL_LAYER, encoding="utf-8")
    return path


def import_layer_file(path: Path):
    """Import the written module (as the export does) and return it."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"user_layers_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def head_model(layer, height, width, channels, num_rois, classes=5, hidden=64, name="user_head"):
    """features [1,H,W,C], rois [N,4], box_indexes [N] -> layer -> dense class and box outputs."""
    import keras

    features = keras.Input((height, width, channels), batch_size=1, name="features")
    rois = keras.Input((4,), batch_size=num_rois, name="rois")
    box_indexes = keras.Input((), batch_size=num_rois, dtype="int32", name="box_indexes")
    x = layer(features, rois, box_indexes)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(hidden, activation="relu", name="fc")(x)
    scores = keras.layers.Dense(classes, activation="softmax", name="class_scores")(x)
    deltas = keras.layers.Dense(4 * (classes - 1), name="box_deltas")(x)
    return keras.Model([features, rois, box_indexes], [scores, deltas], name=name)


def sample_arrays(count, height, width, channels, num_rois, seed) -> dict[str, np.ndarray]:
    """SAMPLES.npz arrays: features in [0, 1), RPN-like boxes clipped to [0, 1] (many end on 1.0)."""
    rng = np.random.default_rng(seed)
    features = rng.random((count, 1, height, width, channels), dtype=np.float32)
    centers = rng.uniform(0.0, 1.0, (count, num_rois, 2))
    extents = rng.uniform(0.1, 0.9, (count, num_rois, 2))
    boxes = np.concatenate([centers - extents / 2, centers + extents / 2], axis=-1)
    rois = np.clip(boxes, 0.0, 1.0).astype(np.float32)
    return {
        "features": features,
        "rois": rois,
        "box_indexes": np.zeros((count, num_rois), np.int32),
    }


def snr_db(actual, reference) -> float:
    """10 log10(sum reference^2 / sum (actual - reference)^2)."""
    reference = np.asarray(reference, np.float64)
    noise = np.sum((np.asarray(actual, np.float64) - reference) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))
