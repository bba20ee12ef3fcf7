"""ONNX int8 keeps its score ops (Softmax, Sigmoid) float, found by op type in any model.

A small Keras model with a softmax and a sigmoid output (no detector stage, as a ``--keras-model``
user's model) is quantized by ``export.onnx_format.onnx_int8``; the graph and the outputs are
checked independently of the code under test: which node feeds each score op, and whether the
scores onnxruntime returns sit on an 8-bit grid (ties among confident detections) or not.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.stages import ModelIO

IO = ModelIO(("x",), ("class_scores", "objectness"))
CALIBRATION = 48


@pytest.fixture(scope="module")
def score_build():
    """BuildInput of x[1,16] -> swish dense -> softmax class_scores[1,6], sigmoid objectness[1,8]
    (no detector stage: a --keras-model user's model)."""
    import keras

    from export.tflite_format import BuildInput

    keras.utils.set_random_seed(3)
    x = keras.Input((16,), batch_size=1, name="x")
    # swish = x * sigmoid(x): a Sigmoid that is an activation, not a score
    hidden = keras.layers.Dense(32, activation="swish", name="fc")(x)
    # Large weights: most samples end confident (probabilities within 1/255 of 1), where an
    # 8-bit score has only its top code left and a float score still orders them.
    scale = keras.initializers.RandomNormal(stddev=1.5)
    scores = keras.layers.Dense(6, activation="softmax", kernel_initializer=scale, name="cls")(
        hidden
    )
    objectness = keras.layers.Dense(8, activation="sigmoid", kernel_initializer=scale, name="obj")(
        hidden
    )
    model = keras.Model(x, [scores, objectness])
    rng = np.random.default_rng(5)
    samples = [{"x": rng.normal(0, 2, (1, 16)).astype(np.float32)} for _ in range(CALIBRATION)]
    return BuildInput("user_scores", model, samples, io=IO)


def _graph(data: bytes):
    import onnx

    return onnx.load_from_string(data).graph


def _run(data: bytes, samples) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    outs = [session.run(list(IO.outputs), s) for s in samples]
    return {n: np.concatenate([o[j] for o in outs]) for j, n in enumerate(IO.outputs)}


def _on_8bit_grid(values: np.ndarray) -> bool:
    """True when every value is k * step for one step of an 8-bit code (a quantized output)."""
    top = values.max()
    step = top / np.round(top / np.min(values[values > 1e-6]))
    codes = values / step
    return bool(np.all(np.abs(codes - np.round(codes)) < 1e-3) and np.round(codes).max() <= 255)


def test_onnx_int8_keeps_softmax_and_sigmoid_float(score_build):
    from export.onnx_format import onnx_int8

    built = onnx_int8(score_build)
    graph = _graph(built.data)
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    outputs = {o.name for o in graph.output}
    sigmoid_softmax = [n for n in graph.node if n.op_type in ("Softmax", "Sigmoid")]
    score_ops = [n for n in sigmoid_softmax if n.output[0] in outputs]
    assert sorted(n.op_type for n in score_ops) == ["Sigmoid", "Softmax"]
    for node in score_ops:
        # float op on dequantized int8 logits; its float output is the model's output as is
        assert producer[node.input[0]].op_type == "DequantizeLinear", node.name
        assert "QuantizeLinear" not in consumers.get(node.output[0], []), node.name
    # the swish's Sigmoid is an activation: quantized like the rest
    swish = [n for n in sigmoid_softmax if n not in score_ops]
    assert len(swish) == 1 and consumers[swish[0].output[0]] == ["QuantizeLinear"]
    # ...while the dense layers are int8 (QDQ weights)
    dense = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    assert dense and all(producer[n.input[1]].op_type == "DequantizeLinear" for n in dense)
    assert {"Softmax", "Sigmoid"} <= set(built.notes["kept_float_op_types"])
    assert built.notes["kept_float_score_nodes"] == 2

    outputs = _run(built.data, score_build.calibration)
    for name in IO.outputs:
        confident = outputs[name][outputs[name] > 254 / 255]
        assert confident.size >= 10, name  # the model is confident enough to test ties
        # float scores on 8-bit logits: confident outputs keep many distinct values (an 8-bit
        # score has one or two there) and lie off any 8-bit grid
        assert len(np.unique(confident)) >= 10, name
        assert not _on_8bit_grid(outputs[name]), name


def test_int8_scores_tie_and_the_export_refuses_them(score_build, monkeypatch):
    """The same model with its score ops quantized: 8-bit scores, and onnx_int8's check fails."""
    import onnx

    from export import onnx_format
    from export.config import ExportCheckError

    monkeypatch.setattr(onnx_format, "FLOAT_SCORE_OP_TYPES", ())
    all_int8 = onnx_format.onnx_int8(score_build)
    graph = _graph(all_int8.data)
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert all(n.output[0] in quantized for n in graph.node if n.op_type in ("Softmax", "Sigmoid"))
    outputs = _run(all_int8.data, score_build.calibration)
    for name in IO.outputs:
        assert _on_8bit_grid(outputs[name]), name
        confident = outputs[name][outputs[name] > 254 / 255]
        assert len(np.unique(confident)) <= 2, name  # confident scores tie

    monkeypatch.undo()
    assert onnx_format.quantized_scores(onnx.load_from_string(all_int8.data))
    real_score_nodes, calls = onnx_format.score_nodes, []

    def none_excluded(graph):  # the exclusion finds no score node, the check after it does
        calls.append(graph)
        return [] if len(calls) == 1 else real_score_nodes(graph)

    monkeypatch.setattr(onnx_format, "score_nodes", none_excluded)
    with pytest.raises(ExportCheckError, match="score tensor"):
        onnx_format.onnx_int8(score_build)


def test_mixed_candidates_leave_out_the_score_ops(score_build, tmp_path):
    import onnx

    from export.mixed import onnx_layers
    from export.onnx_format import preprocessed

    names = onnx_layers(score_build)
    # the candidates are nodes of the pre-processed graph onnx_int8 quantizes: the dense layers
    # and the swish's Sigmoid, not the score ops at the outputs (float already)
    graph = onnx.load(preprocessed(score_build, tmp_path)).graph
    kinds = {n.name: n.op_type for n in graph.node}
    outputs = {o.name for o in graph.output}
    scores = {
        n.name for n in graph.node if n.op_type in ("Softmax", "Sigmoid") and n.output[0] in outputs
    }
    assert len(scores) == 2 and names and set(names) <= set(kinds)
    assert {kinds[n] for n in names} >= {"Sigmoid"} and {kinds[n] for n in names} & {
        "MatMul",
        "Gemm",
    }
    assert not scores & set(names)


def _reshape_gemm_model(target):
    """x[4,2,2,3] -> Reshape(target) -> Gemm(W[12,5]) -> y (an ONNX model, no TensorFlow)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
            helper.make_node("Gemm", ["flat", "w"], ["y"], name="dense"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array(target, np.int64), "shape"),
            numpy_helper.from_array(rng.normal(size=(12, 5)).astype(np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("target", [[4, 12], [4, -1]])
def test_a_pooled_reshape_into_a_dense_layer_becomes_an_equal_flatten(target):
    import onnxruntime as ort

    from export.onnx_format import flatten_pooled_reshapes

    model = _reshape_gemm_model(target)
    x = np.random.default_rng(1).normal(size=(4, 2, 2, 3)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert flatten_pooled_reshapes(model.graph, {"reshape"}) == ["reshape_flatten"]
    assert [n.op_type for n in model.graph.node] == ["Flatten", "Gemm"]
    assert "shape" not in {t.name for t in model.graph.initializer}
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_other_reshapes_stay():
    from export.onnx_format import flatten_pooled_reshapes

    model = _reshape_gemm_model([4, 12])
    assert flatten_pooled_reshapes(model.graph, set()) == []  # not RoIPooling's (quantized)
    assert flatten_pooled_reshapes(model.graph, {"reshape", "dense"}) == []  # feeds float only
    model = _reshape_gemm_model([2, 24])  # not [N, K] of its [N, ...] input
    assert flatten_pooled_reshapes(model.graph, {"reshape"}) == []
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Gemm"]
