"""Which inputs of any Keras model are coordinates (kept float by int8), found in its TF graph.

A model input is a coordinate input when its values reach, through any ops, an operand that
says *where* to read rather than *what*: slice begins/ends/sizes, gather indices, resize sizes,
reshape/pad/tile/range shapes, or the boxes and box indexes of ``CropAndResize``. Quantizing
such an input to 8 bits moves crops by pixels (keras-frcnn's int8 crash, RoIPooling's 18 dB
error), so int8 builds keep these inputs and the ops computed from them alone float
(``export.tflite_format``/``export.onnx_format`` read them from ``ModelIO.coordinate_inputs``).
``Shape``/``Size``/``Rank`` end the walk: a tensor's shape is static here, not its values.
"""

from __future__ import annotations

from typing import Any

#: TF op type -> the operand positions that are coordinates (None: every operand).
INDEX_OPERANDS: dict[str, tuple[int, ...] | None] = {
    "StridedSlice": (1, 2, 3),
    "Slice": (1, 2),
    "GatherV2": (1,),
    "Gather": (1,),
    "GatherNd": (1,),
    "ResourceGather": (1,),
    "CropAndResize": (1, 2),
    "ResizeBilinear": (1,),
    "ResizeNearestNeighbor": (1,),
    "ScaleAndTranslate": (1,),
    "Reshape": (1,),
    "Pad": (1,),
    "PadV2": (1,),
    "MirrorPad": (1,),
    "Tile": (1,),
    "Range": None,
    "Fill": (0,),
    "BroadcastTo": (1,),
    "OneHot": (0,),
    "ScatterNd": (0, 2),
    "TensorScatterUpdate": (1,),
    "TensorScatterAdd": (1,),
    "UnsortedSegmentSum": (1, 2),
    "UnsortedSegmentMax": (1, 2),
}
#: Ops whose outputs do not depend on their operands' values.
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
#: Comparisons: one comparing a tensor with itself is a constant (``x > x`` is false for every
#: float), the zero the tiled RoIPooling lowerings add to order their tiles after the features.
_COMPARISONS = frozenset({"Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual"})


def _self_comparison(op) -> bool:
    return op.type in _COMPARISONS and len(op.inputs) == 2 and op.inputs[0] is op.inputs[1]


def graph_coordinate_inputs(model: Any) -> tuple[str, ...]:
    """Names of ``model``'s inputs whose values reach a coordinate operand (model order).

    Traces ``model`` once with its static input signature; empty when it cannot be traced.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
    names = [t.name for t in model.inputs]

    def call(*args):
        return model(list(args) if len(args) > 1 else args[0], training=False)

    try:
        graph = tf.function(call).get_concrete_function(*specs).graph
    except Exception:  # an untraceable model: the export's own tracing reports it later
        return ()
    placeholders = [t for t in graph.inputs if t.op.type == "Placeholder"][: len(names)]
    by_tensor = {t.ref(): n for t, n in zip(placeholders, names)}
    found: set[str] = set()
    seen: set[Any] = set()
    stack = []
    for op in graph.get_operations():
        positions = INDEX_OPERANDS.get(op.type, ())
        operands = list(op.inputs)
        chosen = (
            operands if positions is None else [operands[i] for i in positions if i < len(operands)]
        )
        stack.extend(chosen)
    while stack:
        tensor = stack.pop()
        if tensor.ref() in seen:
            continue
        seen.add(tensor.ref())
        if tensor.ref() in by_tensor:
            found.add(by_tensor[tensor.ref()])
            continue
        if tensor.op.type in _SHAPE_OPS or _self_comparison(tensor.op):
            continue
        stack.extend(tensor.op.inputs)
    return tuple(n for n in names if n in found)
