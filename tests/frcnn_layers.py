"""keras-frcnn's RoiPoolingConv the way its TF1 and TF2 versions behave, for Keras 3 tests.

Written from keras-frcnn's description (yhenon/keras-frcnn, you359/Keras-FasterRCNN): RoIs
(x, y, w, h) in feature-map pixels cast to int32, each crop ``img[:, y:y+h, x:x+w, :]`` resized
to ``pool_size`` (TF1: ``tf.image.resize_images``; TF2 forks: ``tf.image.resize``) in a Python
loop over ``num_rois``, concatenated and reshaped to ``[1, num_rois, pool, pool, C]``.
The module is written to a file so a test hands it to the export as ``--custom-objects``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

FRCNN_LAYER = textwrap.dedent(
    """
    import keras
    import tensorflow as tf


    class RoiPoolingConv(keras.layers.Layer):
        resize_fn = staticmethod(tf.compat.v1.image.resize_images)  # TF1's resize_images

        def __init__(self, pool_size, num_rois, **kwargs):
            self.pool_size = pool_size
            self.num_rois = num_rois
            super().__init__(**kwargs)

        def build(self, input_shape):
            self.nb_channels = input_shape[0][3]

        def compute_output_shape(self, input_shape):
            return None, self.num_rois, self.pool_size, self.pool_size, self.nb_channels

        def call(self, x, mask=None):
            img, rois = x[0], x[1]
            outputs = []
            for roi_idx in range(self.num_rois):
                x0 = tf.cast(rois[0, roi_idx, 0], "int32")
                y0 = tf.cast(rois[0, roi_idx, 1], "int32")
                w = tf.cast(rois[0, roi_idx, 2], "int32")
                h = tf.cast(rois[0, roi_idx, 3], "int32")
                crop = img[:, y0 : y0 + h, x0 : x0 + w, :]
                outputs.append(self.resize_fn(crop, (self.pool_size, self.pool_size)))
            final = tf.concat(outputs, axis=0)
            return tf.reshape(
                final, (1, self.num_rois, self.pool_size, self.pool_size, self.nb_channels)
            )

        def get_config(self):
            config = {"pool_size": self.pool_size, "num_rois": self.num_rois}
            return {**super().get_config(), **config}


    class Tf2RoiPoolingConv(RoiPoolingConv):
        resize_fn = staticmethod(tf.image.resize)  # TF2 forks: half-pixel bilinear
    """
)


def write_frcnn_layer_file(directory: Path) -> Path:
    path = Path(directory) / "frcnn_layers_user.py"
    path.write_text(FRCNN_LAYER, encoding="utf-8")
    return path


def frcnn_classifier(layer, height, width, channels, num_rois, classes=4, hidden=32):
    """keras-frcnn's classifier: RoiPoolingConv -> TimeDistributed Flatten/Dense -> softmax
    class scores [1, N, classes] (background last) and regression [1, N, 4 (classes - 1)],
    named as keras-frcnn names them (``dense_class_{classes}``, ``dense_regress_{classes}``)."""
    import keras

    features = keras.Input((height, width, channels), batch_size=1, name="feature_map")
    rois = keras.Input((num_rois, 4), batch_size=1, name="rois")
    x = layer([features, rois])
    x = keras.layers.TimeDistributed(keras.layers.Flatten(), name="flatten")(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(hidden, activation="relu"), name="fc1")(x)
    scores = keras.layers.TimeDistributed(
        keras.layers.Dense(classes, activation="softmax"), name=f"dense_class_{classes}"
    )(x)
    regr = keras.layers.TimeDistributed(
        keras.layers.Dense(4 * (classes - 1), activation="linear"), name=f"dense_regress_{classes}"
    )(x)
    return keras.Model([features, rois], [scores, regr], name="frcnn_classifier")


def frcnn_samples(count, height, width, channels, num_rois, seed, magnitude=1.0):
    """SAMPLES arrays: features >= 0 (ReLU-like), RoIs as rpn_to_roi makes them (x, y, w, h)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (count, 1, height, width, channels)
    features = magnitude * np.maximum(rng.standard_normal(shape), 0)
    x = rng.integers(0, width - 1, (count, 1, num_rois))
    y = rng.integers(0, height - 1, (count, 1, num_rois))
    w = np.minimum(rng.integers(1, width, (count, 1, num_rois)), width - x)
    h = np.minimum(rng.integers(1, height, (count, 1, num_rois)), height - y)
    rois = np.stack([x, y, w, h], axis=-1).astype(np.float32)
    return {"feature_map": features.astype(np.float32), "rois": rois}
