"""roiedge export: converts the Keras detector to TFLite and ONNX artifacts (never edits the model).

``python -m export --out DIR`` (``make export``) builds every row of :data:`export.formats.ARTIFACTS`
for both stages, audits ops, checks each artifact against golden float-Keras outputs and installs
``DIR/manifest.json`` atomically. Modules:

* ``formats``: the artifact table (model, format, precision, file name) as data;
* ``config``: :class:`ExportConfig` (CLI flags map 1:1) and the error types (exit 2 / exit 1);
* ``stages``: the stage I/O contract and frozen, named TF functions of the Keras stages;
* ``calibration``: procedural scenes at the model's size, or the user's images (a folder or a COCO
  json, golden samples held back) -> per-stage inputs (head inputs via the float backbone + the
  runtime's proposals);
* ``tflite_format`` / ``onnx_format``: one builder per precision; full-int8 keeps RoIPooling's
  coordinate path (everything computed from ``proposals``/``box_indexes`` alone) in float/int32;
* ``audit`` / ``edgetpu``: builtin-only and loop-free checks, op counts, Edge TPU table;
* ``pipeline``: the run (temp dir next to ``--out``, verify, swap in);
* ``keras_model`` / ``samples`` / ``swap``: any Keras model with RoIPooling
  (``python -m export --keras-model``, :func:`export_keras_model`): SAMPLES.npz, the tutorial
  layer swapped for the builtin-only lowering in a copy and proven equal, the same table.
"""

from export.keras_model import export_keras_model

__all__ = ["export_keras_model"]
