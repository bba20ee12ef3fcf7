"""What every export target shares: the build types, the Keras runner, the coordinate-path walk
and the one-thread TFLite/ONNX runners the builders check their output with.

Imported by :mod:`export.tflite_format`, :mod:`export.onnx_format`, :mod:`export.mixed` and the
orchestrators; it imports none of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from export.stages import ModelIO, model_io
from export.tf_private import flatbuffer_utils

#: Per-channel weight scales for full-integer TFLite and ONNX, per stage. The backbone uses
#: per-tensor: on the shipped model TFLite is as accurate (features 22.0 vs 21.2 dB SNR), ONNX
#: loses ~1.3 dB (23.4 vs 24.7 dB), and the per-channel scale tables of ~1.6k channels cost
#: 10-14% of a 94k-parameter model (0.33x -> 0.29x of float32); per-tensor is also what older
#: Edge TPU compilers require. The head's dense layers keep per-channel scales.
PER_CHANNEL_WEIGHTS = {"backbone_rpn": False, "head": True}


#: Op types full int8 keeps in float. An int8 SOFTMAX output has 1/256 steps, so the head's
#: confident detections tie at 255/256 and AP's ranking among them (which box is counted first)
#: becomes arbitrary: on the shipped model that alone cost ~1 point of mAP@.5:.95 (0.7248 vs
#: 0.7348 with a float SOFTMAX, float Keras 0.7349, 200 held-out images). A float SOFTMAX on the
#: dequantized int8 logits costs one DEQUANTIZE of a [64,4] tensor.
FLOAT_SCORE_OPS = ("SOFTMAX",)

# The folder inside an artifacts tree that holds the per-artifact build reports.
REPORT_DIR = "reports"


@dataclasses.dataclass(frozen=True)
class BuildInput:
    """What every builder gets: the stage, its Keras model and calibration samples (dicts)."""

    stage: str
    keras_model: Any
    calibration: Sequence[dict[str, np.ndarray]]
    #: I/O of a model that is not a detector stage (None: the stage's STAGE_IO contract).
    io: ModelIO | None = None
    #: Golden inputs (dicts), on which a transformed copy of the model is proven equal to it.
    golden: Sequence[dict[str, np.ndarray]] = ()
    #: For ``mixed`` (export.mixed): the whole detector, where the calibration images came from
    #: ("procedural": labelled validation scenes exist; "folder": no labels) and the target.
    detector: Any = None
    validation: str = "folder"
    target_drop: float = 0.5
    val_images: int = 200

    @property
    def model_io(self) -> ModelIO:
        return model_io(self.stage, self.io)

    @property
    def shipped_stage(self) -> bool:
        """True for a stage of roiedge's own detector (its STAGE_IO contract): the per-stage
        int8 choices here and in export.tflite_format were measured on it, and only it."""
        return self.io is None

    @property
    def per_channel(self) -> bool:
        """Per-channel weight scales (:data:`PER_CHANNEL_WEIGHTS` for the shipped detector's
        stages; a card's or any other model's: yes)."""
        return PER_CHANNEL_WEIGHTS.get(self.stage, True) if self.shipped_stage else True


@dataclasses.dataclass(frozen=True)
class Built:
    """A built artifact: file bytes and notes for its report."""

    data: bytes
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def keras_outputs(
    keras_model: Any, samples: Sequence[Sequence[np.ndarray]]
) -> list[list[np.ndarray]]:
    """Run a Keras model on rows of inputs (each a list in model input order), inference mode.

    Returns one list of float32 arrays per row, in model output order.
    """
    import tensorflow as tf

    call = tf.function(lambda *a: keras_model(list(a) if len(a) > 1 else a[0], training=False))
    results = []
    for inputs in samples:
        outs = call(*inputs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        results.append([np.asarray(o, np.float32) for o in outs])
    return results


def tflite_model_graph(model_bytes: bytes):
    """The flatbuffer object model (``ModelT``) of a .tflite file's bytes."""
    return flatbuffer_utils().read_model_from_bytearray(bytearray(model_bytes))


def coordinate_path(model, io: ModelIO) -> tuple[list[int], list[int]]:
    """(operator indexes, tensor indexes) computed from the coordinate inputs alone.

    An op is on the coordinate path if none of its inputs depends on a non-coordinate input
    (the feature map): its outputs are box positions, indexes or lerp weights, never features.
    """
    subgraph = model.subgraphs[0]
    signature = model.signatureDefs[0]
    by_name = {s.name.decode(): s.tensorIndex for s in signature.inputs}
    feature_inputs = {by_name[n] for n in io.inputs if n not in io.coordinate_inputs}
    coordinate_inputs = {by_name[n] for n in io.coordinate_inputs}
    depends_on_features = set(feature_inputs)
    reachable = set(coordinate_inputs)
    ops, tensors = [], set()
    for index, op in enumerate(subgraph.operators):
        inputs = [i for i in op.inputs if i >= 0]
        if any(i in depends_on_features for i in inputs):
            depends_on_features.update(op.outputs)
        elif any(i in reachable for i in inputs):
            reachable.update(op.outputs)
            ops.append(index)
            tensors.update(op.outputs)
    return ops, sorted(tensors | coordinate_inputs)


def tflite_interpreter(model_bytes: bytes):
    """A one-thread TFLite interpreter of a model's bytes (tensors not yet allocated)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_bytes, num_threads=1)


def onnx_session(model_bytes: bytes):
    """A one-thread CPU onnxruntime session of a model's bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
