"""Tiny TFLite/ONNX artifacts for the runtime tests, built with TensorFlow (tests may import it).

``build_fake_artifacts(dir)`` writes a complete artifacts directory -- a 32x32 two-class detector
that honours the two-stage contract, every TFLite precision plus ONNX float32, golden ``.npz``
data from the Keras models and a manifest -- in well under a minute, so runtime tests never need
``make export``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from export.formats import ARTIFACTS
from export.stages import STAGE_IO
from runtime import processing
from runtime.config import DetectorConfig
from runtime.manifest import (
    ArtifactEntry,
    Manifest,
    TensorSpec,
    atomic_write_bytes,
    seal,
    sha256_file,
    write_manifest,
)

CONFIG = DetectorConfig(
    image_size=(32, 32),
    class_names=("disc", "square"),
    stride=8,
    feature_channels=4,
    anchor_sizes=(12.0,),
    anchor_ratios=(1.0,),
    rpn_pre_nms_top_n=16,
    rpn_nms_iou=0.7,
    rpn_min_size=1.0,
    num_proposals=8,
    score_threshold=0.05,
    max_detections=5,
)
BACKBONE_IO = STAGE_IO["backbone_rpn"]
HEAD_IO = STAGE_IO["head"]
#: "mixed" is an int8 file with some float layers and float I/O: nothing the runtime handles
#: differently from int8, and its search needs the real detector, so the fakes leave it out.
TFLITE_PRECISIONS = {
    model: tuple(
        a.precision
        for a in ARTIFACTS
        if a.model == model and a.format == "tflite" and a.precision != "mixed"
    )
    for model in STAGE_IO
}


def build_keras_models(seed: int = 0) -> tuple[Any, Any]:
    """The two Keras stages of the fake detector (random but deterministic weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    h, w = CONFIG.image_size
    fh, fw = CONFIG.feature_size
    c, a, k, p = (
        CONFIG.feature_channels,
        CONFIG.anchors_per_location,
        CONFIG.num_classes,
        CONFIG.num_proposals,
    )

    image = keras.Input((h, w, 3), batch_size=1, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(image)
    features = layers.Conv2D(c, 8, strides=8, activation="relu", name="features")(x)
    scores = layers.Conv2D(a, 1, activation="sigmoid")(features)
    scores = layers.Reshape((fh * fw * a,), name="rpn_scores")(scores)
    deltas = layers.Conv2D(4 * a, 1)(features)
    deltas = layers.Reshape((fh * fw * a, 4), name="rpn_deltas")(deltas)
    backbone = keras.Model(image, [features, scores, deltas], name="backbone_rpn")

    feat_in = keras.Input((fh, fw, c), batch_size=1, name="features")
    proposals = keras.Input((4,), batch_size=p, name="proposals")
    box_indexes = keras.Input((), batch_size=p, dtype="int32", name="box_indexes")
    flat = layers.Reshape((fh * fw * c,))(feat_in)
    gathered = keras.ops.take(flat, box_indexes, axis=0)  # [P, h*w*C]
    joined = layers.Concatenate()([gathered, proposals * 4.0])
    hidden = layers.Dense(16, activation="relu")(joined)
    class_scores = layers.Dense(k + 1, activation="softmax", name="class_scores")(hidden)
    box_deltas = layers.Reshape((k, 4), name="box_deltas")(layers.Dense(4 * k)(hidden))
    head = keras.Model([feat_in, proposals, box_indexes], [class_scores, box_deltas], name="head")
    return backbone, head


def fake_image(seed: int) -> np.ndarray:
    """A 32x32 RGB uint8 image: noise plus one bright square."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, size=(*CONFIG.image_size, 3), dtype=np.uint8)
    y, x = rng.integers(2, 16, size=2)
    image[y : y + 14, x : x + 14] = rng.integers(150, 255, size=3, dtype=np.uint8)
    return image


def stage_samples(backbone: Any, count: int, offset: int = 0) -> tuple[list, list]:
    """Per-sample Keras inputs/outputs of both stages on ``count`` fake images."""
    backbone_samples, head_samples = [], []
    for i in range(count):
        tensor = processing.preprocess(fake_image(offset + i), CONFIG)
        outs = [np.asarray(o) for o in backbone(tensor)]
        proposals = processing.proposals_from_rpn(outs[1], outs[2], CONFIG)
        backbone_samples.append(([tensor], outs))
        head_samples.append(([outs[0], proposals.proposals, proposals.box_indexes], None))
    return backbone_samples, head_samples


def _function(model: Any, names: tuple[tuple[str, ...], tuple[str, ...]]) -> Any:
    import tensorflow as tf

    specs = [tf.TensorSpec(tuple(t.shape), t.dtype, name=n) for n, t in zip(names[0], model.inputs)]

    def serve(*args):
        outs = model(list(args) if len(args) > 1 else args[0])
        return {n: tf.identity(o, name=n) for n, o in zip(names[1], outs)}

    from export.tf_private import convert_variables_to_constants_v2

    # Freeze: Keras 3 variables become READ_VARIABLE ops in TFLite, which break calibration.
    concrete = tf.function(serve, input_signature=specs).get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    def call(*args):
        return tf.nest.pack_sequence_as(structure, frozen(*args))

    return tf.function(call, input_signature=specs)


def to_tflite(model: Any, names: Any, precision: str, calibration: list[list[np.ndarray]]) -> bytes:
    """Convert one Keras stage at ``precision`` (float32/float16/dynamic_int8/int8/int8_io)."""
    import tensorflow as tf

    function = _function(model, names)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], tf.Module()
    )
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision in ("int8", "int8_io"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            for sample in calibration:
                yield {n: v for n, v in zip(names[0], sample)}

        converter.representative_dataset = representative
        if precision == "int8_io":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


def to_onnx(model: Any, names: Any) -> bytes:
    """Convert one Keras stage to float32 ONNX with tf2onnx."""
    import tf2onnx

    function = _function(model, names)
    proto, _ = tf2onnx.convert.from_function(
        function, input_signature=function.input_signature, opset=17
    )
    return proto.SerializeToString()


def _entry(
    directory: Path, model: str, fmt: str, precision: str, path: str, specs: Any
) -> ArtifactEntry:
    file = directory / path
    return ArtifactEntry(
        name=f"{model}/{fmt}/{precision}",
        model=model,
        format=fmt,
        precision=precision,
        path=path,
        sha256=sha256_file(file),
        bytes=file.stat().st_size,
        inputs=specs[0],
        outputs=specs[1],
    )


def build_fake_artifacts(directory: os.PathLike, onnx: bool = True) -> Manifest:
    """Write the fake detector's artifacts, golden data and manifest to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone, head = build_keras_models()
    calib_backbone, calib_head = stage_samples(backbone, 32, offset=100)
    gold_backbone, gold_head = stage_samples(backbone, 2, offset=0)
    gold_head = [(inputs, [np.asarray(o) for o in head(inputs)]) for inputs, _ in gold_head]

    def spec_of(model: Any, names: Any) -> tuple:
        return tuple(
            tuple(
                TensorSpec(n, tuple(int(d) for d in t.shape), str(t.dtype).replace("tf.", ""))
                for n, t in zip(side_names, tensors)
            )
            for side_names, tensors in zip(names, (model.inputs, model.outputs))
        )

    entries = []
    for model_name, model, names, calib, gold in (
        ("backbone_rpn", backbone, BACKBONE_IO, calib_backbone, gold_backbone),
        ("head", head, HEAD_IO, calib_head, gold_head),
    ):
        specs = spec_of(model, names)
        for precision in TFLITE_PRECISIONS[model_name]:
            path = f"{model_name}.{precision}.tflite"
            atomic_write_bytes(
                directory / path, to_tflite(model, names, precision, [s[0] for s in calib])
            )
            entries.append(_entry(directory, model_name, "tflite", precision, path, specs))
        if onnx:
            path = f"{model_name}.float32.onnx"
            atomic_write_bytes(directory / path, to_onnx(model, names))
            entries.append(_entry(directory, model_name, "onnx", "float32", path, specs))
        arrays = {}
        for i in range(len(names[0])):
            arrays[f"input_{i}"] = np.stack([s[0][i] for s in gold])
        for j in range(len(names[1])):
            arrays[f"output_{j}"] = np.stack([s[1][j] for s in gold])
        np.savez(directory / f"golden_{model_name}.npz", **arrays)
    manifest = Manifest(
        artifacts=tuple(entries),
        golden={"backbone_rpn": "golden_backbone_rpn.npz", "head": "golden_head.npz"},
        source_models={"backbone_rpn": "fake", "head": "fake"},
        detector=CONFIG.to_dict(),
        versions={"tensorflow": "test"},
    )
    manifest = seal(manifest, directory)
    write_manifest(manifest, directory)
    return manifest


_BUILT: dict[bool, Path] = {}


def shared_fake_artifacts(tmp_path_factory: Any, onnx: bool = True) -> Path:
    """One read-only fake artifacts directory per test process (building one takes ~10 s)."""
    if onnx not in _BUILT:
        directory = tmp_path_factory.mktemp("fake_artifacts_shared")
        build_fake_artifacts(directory, onnx=onnx)
        _BUILT[onnx] = directory
    return _BUILT[onnx]
