"""The two stages' I/O contract and how a Keras stage becomes a frozen, named TF function."""

from __future__ import annotations

import dataclasses
from typing import Any

from export.config import ExportInputError

#: Input and output names of each stage, in the Keras models' order (the contract).
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "backbone_rpn": (("image",), ("features", "rpn_scores", "rpn_deltas")),
    "head": (("features", "proposals", "box_indexes"), ("class_scores", "box_deltas")),
}

#: Inputs whose arithmetic must never be quantized: box coordinates and batch indexes feed the
#: RoIPooling sample positions and GATHER indexes; int8 there moves samples by whole pixels.
COORDINATE_INPUTS: dict[str, tuple[str, ...]] = {
    "backbone_rpn": (),
    "head": ("proposals", "box_indexes"),
}


@dataclasses.dataclass(frozen=True)
class ModelIO:
    """Input and output names of one exported model in Keras order, and which inputs are
    coordinates (box corners, batch indexes) whose arithmetic int8 conversion must not quantize."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    coordinate_inputs: tuple[str, ...] = ()


def model_io(stage: str, io: ModelIO | None = None) -> ModelIO:
    """``io`` if given, else the detector stage's contract from STAGE_IO / COORDINATE_INPUTS."""
    if io is not None:
        return io
    return ModelIO(*STAGE_IO[stage], COORDINATE_INPUTS[stage])


def input_specs(stage: str, keras_model: Any, io: ModelIO | None = None) -> list:
    """tf.TensorSpecs of a stage's inputs with the contract's names (checked against Keras)."""
    import tensorflow as tf

    io = model_io(stage, io)
    names, outputs = io.inputs, io.outputs
    if len(keras_model.inputs) != len(names) or len(keras_model.outputs) != len(outputs):
        raise ExportInputError(
            f"{stage}: Keras model has {len(keras_model.inputs)} inputs and "
            f"{len(keras_model.outputs)} outputs; expected inputs {names} and outputs {outputs}"
        )
    specs = []
    for name, tensor in zip(names, keras_model.inputs):
        if any(d is None for d in tensor.shape):
            raise ExportInputError(
                f"{stage}: input {name} has dynamic shape {tuple(tensor.shape)}; "
                "the export needs static shapes (batch 1)"
            )
        specs.append(tf.TensorSpec(tuple(tensor.shape), tensor.dtype, name=name))
    return specs


def named_function(stage: str, keras_model: Any, io: ModelIO | None = None):
    """A tf.function of the stage: contract-named inputs, dict of contract-named outputs."""
    import tensorflow as tf

    specs = input_specs(stage, keras_model, io)
    output_names = model_io(stage, io).outputs

    def serve(*args):
        outs = keras_model(list(args) if len(args) > 1 else args[0], training=False)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        return {name: tf.identity(t, name=name) for name, t in zip(output_names, outs)}

    return tf.function(serve, input_signature=specs), specs


def frozen_function(stage: str, keras_model: Any, io: ModelIO | None = None):
    """The stage as a ConcreteFunction with its weights frozen to constants.

    The TFLite converter keeps Keras 3 variables as resource variables (READ_VARIABLE ops that
    break calibration); freezing first gives a variable-free graph with the same signature.
    """
    import tensorflow as tf

    from export.tf_private import convert_variables_to_constants_v2

    function, specs = named_function(stage, keras_model, io)
    concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    def call(*args):
        return tf.nest.pack_sequence_as(structure, frozen(*args))

    return tf.function(call, input_signature=specs).get_concrete_function()
