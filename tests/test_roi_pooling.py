"""RoIPooling against TensorFlow's own CropAndResize + MaxPool, a numpy loop, and TFLite.

torchvision-style: one tester class whose ``expected_fn`` is the slow reference, parametrized
over the builtin-only implementations, samples_per_bin and 1, 3 and 17 RoIs (a RoI pooler once
pooled only the first RoI because every test used exactly one).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import tensorflow as tf
from roi_pooling_cases import (
    ADVERSARIAL,
    INT8_MAX_ERROR,
    RoIPoolTester,
    check_split_tiles,
    check_tflite_builtins_only_float32,
    convert_pool,
    random_boxes,
    run_tflite,
    tf_reference,
)

from models.roi_pooling import (
    DEFAULT_IMPLEMENTATION,
    RoIPooling,
    RoIPoolingInputError,
    RoIPoolingTypeError,
    roi_pool,
    roi_pool_numpy,
)

BUILTIN_IMPLEMENTATIONS = ("fixed_point", "gather")


class TestFixedPoint(RoIPoolTester):
    implementation = "fixed_point"


class TestGather(RoIPoolTester):
    implementation = "gather"


# The fixed-point variants make bench compares (same sampling grid, other feature paths).
class TestFixedPointSplit(RoIPoolTester):
    implementation = "fixed_point_split"


def test_split_lowering_cuts_the_rois_into_tiles_and_matches_tensorflow(monkeypatch):
    """The testers' small maps fit one tile; here tiles of 3 RoIs (and a last one of 2)."""
    check_split_tiles("fixed_point_split", 1, monkeypatch)


@pytest.mark.parametrize("implementation", [*BUILTIN_IMPLEMENTATIONS, "fixed_point_split"])
def test_tflite_builtins_only_float32_matches_tensorflow(implementation):
    check_tflite_builtins_only_float32(implementation)


def test_default_is_the_tiled_int8_safe_builtin_form():
    assert DEFAULT_IMPLEMENTATION == "fixed_point_split"
    assert RoIPooling().implementation == "fixed_point_split"
    assert inspect.signature(roi_pool).parameters["implementation"].default == "fixed_point_split"


@pytest.mark.parametrize("samples_per_bin", [1, 2])
def test_numpy_loop_reference_matches_tensorflow(samples_per_bin):
    rng = np.random.default_rng(11)
    features = rng.random((2, 8, 9, 3), dtype=np.float32)
    rois = np.concatenate([random_boxes(rng, 5), np.asarray(list(ADVERSARIAL.values()))])
    box_indexes = rng.integers(0, 2, len(rois)).astype(np.int32)
    expected = tf_reference(features, rois, box_indexes, (3, 4), samples_per_bin)
    actual = roi_pool_numpy(features, rois, box_indexes, (3, 4), samples_per_bin)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


# ----------------------------------------------------------------------------- TFLite


# fixed_point's float constants are powers of two float16 holds exactly; gather's sample-step
# constants (1/13, edge slack) round to float16 (~5e-4 relative), moving its samples slightly.
FLOAT16_TOLERANCE = {"fixed_point": 1e-5, "gather": 0.02}


@pytest.mark.parametrize("implementation", BUILTIN_IMPLEMENTATIONS)
def test_tflite_float16_conversion_keeps_the_float_numbers(implementation):
    """Float16 conversion stores every float constant as float16 (2**-25 would become 0)."""
    rng = np.random.default_rng(25)
    model = convert_pool(implementation, 17, "float16", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, 17)
    box_indexes = np.zeros(17, np.int32)
    actual, ops = run_tflite(model, features, rois, box_indexes)
    assert "DEQUANTIZE" in ops  # really float16 constants
    np.testing.assert_allclose(
        actual,
        tf_reference(features, rois, box_indexes, (7, 7), 2),
        atol=FLOAT16_TOLERANCE[implementation],
    )


@pytest.mark.parametrize("implementation", BUILTIN_IMPLEMENTATIONS)
@pytest.mark.parametrize("map_size", [(1, 1), (2, 7), (7, 2), (3, 9)])
def test_tflite_float32_converts_and_matches_on_small_maps(implementation, map_size):
    """Tiny maps hit converter patterns (an int32 clip to [0, 6] became an int32 RELU6)."""
    height, width = map_size
    rng = np.random.default_rng(23)
    model = convert_pool(implementation, 3, "float32", rng, height, width, channels=3, size=2)
    features = rng.random((1, height, width, 3), dtype=np.float32)
    rois = random_boxes(rng, 3)
    box_indexes = np.zeros(3, np.int32)
    actual, _ = run_tflite(model, features, rois, box_indexes)
    np.testing.assert_allclose(
        actual, tf_reference(features, rois, box_indexes, (2, 2), 2), atol=1e-5
    )


@pytest.mark.parametrize("implementation", BUILTIN_IMPLEMENTATIONS)
def test_onnx_export_is_loop_free_and_matches_tensorflow(implementation):
    """tf2onnx turns CropAndResize into a per-box Loop; the builtin lowerings export without one."""
    import onnxruntime
    import tf2onnx

    from export.formats import ONNX_OPSET

    signature = [
        tf.TensorSpec((2, 9, 11, 5), tf.float32, name="features"),
        tf.TensorSpec((None, 4), tf.float32, name="rois"),
        tf.TensorSpec((None,), tf.int32, name="box_indexes"),
    ]

    @tf.function
    def pool(features, rois, box_indexes):
        return roi_pool(features, rois, box_indexes, (3, 4), 2, implementation=implementation)

    proto, _ = tf2onnx.convert.from_function(pool, input_signature=signature, opset=ONNX_OPSET)
    op_types = {node.op_type for node in proto.graph.node}
    assert not op_types & {"Loop", "Scan", "If"}, op_types
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(24)
    features = rng.random((2, 9, 11, 5), dtype=np.float32)
    for num_rois in (1, 3, 17):  # one model, dynamic N
        rois = random_boxes(rng, num_rois)
        box_indexes = rng.integers(0, 2, num_rois).astype(np.int32)
        inputs = {"features": features, "rois": rois, "box_indexes": box_indexes}
        (actual,) = session.run(None, inputs)
        np.testing.assert_allclose(
            actual, tf_reference(features, rois, box_indexes, (3, 4), 2), atol=1e-5
        )


@pytest.mark.parametrize("num_rois", [1, 3, 17])
def test_full_int8_conversion_with_standard_settings_stays_accurate(num_rois):
    """Optimize.DEFAULT + a representative dataset, nothing else: the coordinates must survive."""
    rng = np.random.default_rng(22)
    model = convert_pool("fixed_point", num_rois, "int8", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, num_rois, 0.0, 1.0)
    box_indexes = np.zeros(num_rois, np.int32)
    actual, ops = run_tflite(model, features, rois, box_indexes)
    assert "QUANTIZE" in ops  # really an int8 model
    error = np.abs(actual - tf_reference(features, rois, box_indexes, (7, 7), 2)).max()
    assert error <= INT8_MAX_ERROR


def _tile_quantizations(model):
    """{role: {(scale, zero_point), ...}} of the int8 tensors named ``roi_tile_<k>/<role>``."""
    import re

    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    roles = {}
    for detail in interpreter.get_tensor_details():
        match = re.search(r"roi_tile_\d+/(\w+)", detail["name"])
        if match and detail["dtype"] == np.int8:
            roles.setdefault(match.group(1), set()).add(detail["quantization"])
    return roles


def _self_comparisons_only(model) -> bool:
    """Whether every GREATER of ``model`` compares a tensor with itself (tile ordering)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    greater = [op for op in interpreter._get_ops_details() if op["op_name"] == "GREATER"]
    return all(op["inputs"][0] == op["inputs"][1] for op in greater)


@pytest.mark.parametrize("num_rois", [1, 3, 17])
def test_split_int8_tiles_share_one_range_and_stay_accurate(num_rois, monkeypatch):
    """int8-sized tiles of 3 RoIs: each tile's MUL/ADD tensors calibrated alone clipped later
    (error ~0.04 on make bench's case); share_tile_ranges gives every tile the union range."""
    from models import roi_lowerings
    from models.tflite_convert import share_tile_ranges

    per_roi = roi_lowerings.per_roi_bytes((14, 14), 16, 1, element_bytes=1)
    rng = np.random.default_rng(40 + num_rois)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, num_rois, 0.0, 1.0)
    box_indexes = np.zeros(num_rois, np.int32)
    expected = tf_reference(features, rois, box_indexes, (7, 7), 2)
    tiles = {"tile_precision": "int8", "tile_bytes": 3 * per_roi}
    model = convert_pool(
        "fixed_point_split", num_rois, "int8", rng, share_ranges=num_rois < 17, **tiles
    )
    if num_rois == 17:  # six tiles: calibrated alone they differ, shared they agree
        assert any(len(params) > 1 for params in _tile_quantizations(model).values())
        model = share_tile_ranges(model)
    roles = _tile_quantizations(model)
    assert len(roles) >= 8 and all(len(params) == 1 for params in roles.values()), roles
    assert share_tile_ranges(model) == model
    assert _self_comparisons_only(model)
    actual, ops = run_tflite(model, features, rois, box_indexes)
    assert "QUANTIZE" in ops and ("SPLIT_V" in ops) == (num_rois > 3)
    assert np.abs(actual - expected).max() <= INT8_MAX_ERROR


@pytest.mark.parametrize("tile_precision", ["float32", "int8"])
def test_split_tiles_are_sized_for_the_precision(tile_precision):
    """An int8 tile holds 4x the RoIs of a float32 tile in the same bytes; same numbers."""
    from models import roi_lowerings

    per_roi = roi_lowerings.per_roi_bytes((14, 10), 5)  # float32 bytes of one RoI
    rng = np.random.default_rng(33)
    features = rng.random((2, 13, 11, 5), dtype=np.float32)
    rois = random_boxes(rng, 17)
    box_indexes = rng.integers(0, 2, 17).astype(np.int32)
    pool = tf.function(
        lambda f, r, b: roi_pool(
            f, r, b, (7, 5), 2, "fixed_point_split", tile_precision, 4 * per_roi
        ),
        input_signature=[
            tf.TensorSpec(features.shape, tf.float32),
            tf.TensorSpec((17, 4), tf.float32),
            tf.TensorSpec((17,), tf.int32),
        ],
    )
    graph = pool.get_concrete_function().graph
    tiles = sum(op.type == "GatherV2" for op in graph.get_operations()) // 4
    assert tiles == {"float32": 5, "int8": 2}[tile_precision]  # 4 RoIs, or 16, per tile
    np.testing.assert_allclose(
        pool(features, rois, box_indexes).numpy(),
        tf_reference(features, rois, box_indexes, (7, 5), 2),
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- Keras


def test_keras_model_round_trips_through_a_saved_keras_file(tmp_path):
    import keras

    features = keras.Input((10, 12, 4), batch_size=2, name="features")
    rois = keras.Input((4,), batch_size=5, name="rois")
    box_indexes = keras.Input((), batch_size=5, dtype="int32", name="box_indexes")
    layer = RoIPooling(size=(3, 4), samples_per_bin=3, name="pool")
    model = keras.Model([features, rois, box_indexes], layer(features, rois, box_indexes))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.get_layer("pool")
    assert restored.get_config() == layer.get_config()
    assert (restored.size, restored.samples_per_bin) == ((3, 4), 3)
    rng = np.random.default_rng(2)
    inputs = [
        rng.random((2, 10, 12, 4), dtype=np.float32),
        random_boxes(rng, 5),
        np.array([0, 1, 1, 0, 1], np.int32),
    ]
    np.testing.assert_allclose(np.asarray(loaded(inputs)), np.asarray(model(inputs)), atol=1e-6)
    assert RoIPooling.from_config(layer.get_config()).get_config() == layer.get_config()


def test_tile_options_round_trip_through_get_config():
    layer = RoIPooling(implementation="fixed_point_split", tile_precision="int8", tile_bytes=4096)
    config = layer.get_config()
    assert (config["tile_precision"], config["tile_bytes"]) == ("int8", 4096)
    restored = RoIPooling.from_config(config)
    assert (restored.tile_precision, restored.tile_bytes) == ("int8", 4096)
    assert restored.get_config() == config
    assert (RoIPooling().tile_precision, RoIPooling().tile_bytes) == ("float32", None)


def test_compute_output_shape():
    layer = RoIPooling(size=(7, 5))
    assert layer.compute_output_shape([(2, 38, 38, 512), (300, 4), (300,)]) == (300, 7, 5, 512)
    assert layer.compute_output_shape([(None, 9, 9, 8), (None, 4), (None,)]) == (None, 7, 5, 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"size": (7, 0)}, RoIPoolingInputError, r"size must be two positive ints.*\(7, 0\)"),
        ({"size": (7, 7, 7)}, RoIPoolingInputError, r"size must be two positive ints"),
        ({"size": 2.5}, RoIPoolingInputError, r"size must be two positive ints.*2\.5"),
        (
            {"samples_per_bin": 0},
            RoIPoolingInputError,
            r"samples_per_bin must be an int >= 1, got 0",
        ),
        ({"samples_per_bin": 1.5}, RoIPoolingTypeError, r"samples_per_bin must be an int"),
        ({"implementation": "magic"}, RoIPoolingInputError, r"implementation must be one of"),
        (
            {"implementation": "fixed_point_split", "tile_precision": "int4"},
            RoIPoolingInputError,
            r"tile_precision must be one of \('float32', 'float16', 'int8'\), got 'int4'",
        ),
        (
            {"implementation": "fixed_point_split", "tile_bytes": 0},
            RoIPoolingInputError,
            r"tile_bytes must be a positive int or None, got 0",
        ),
        (
            {"implementation": "fixed_point_split", "tile_bytes": True},
            RoIPoolingInputError,
            r"tile_bytes must be a positive int or None, got True",
        ),
        (
            {"tile_precision": "int8", "implementation": "fixed_point"},
            RoIPoolingInputError,
            r"tile_precision/tile_bytes apply to .*fixed_point_split.* with implementation "
            r"'fixed_point'",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        RoIPooling(**kwargs)


@pytest.mark.parametrize(
    ("features", "rois", "box_indexes", "error", "message"),
    [
        (
            np.zeros((8, 8, 3), np.float32),
            np.zeros((2, 4), np.float32),
            np.zeros(2, np.int32),
            RoIPoolingInputError,
            r"feature_maps must be rank 4 .*got shape \[8, 8, 3\]",
        ),
        (
            np.zeros((1, 8, 8, 3), np.int32),
            np.zeros((2, 4), np.float32),
            np.zeros(2, np.int32),
            RoIPoolingTypeError,
            r"feature_maps must be a float tensor, got dtype int32",
        ),
        (
            np.zeros((1, 8, 8, 3), np.float32),
            np.zeros((2, 5), np.float32),
            np.zeros(2, np.int32),
            RoIPoolingInputError,
            r"rois must have shape \[num_rois, 4\].*got shape \[2, 5\]",
        ),
        (
            np.zeros((1, 8, 8, 3), np.float32),
            np.zeros((2, 4), np.float32),
            np.zeros(2, np.float32),
            RoIPoolingTypeError,
            r"box_indexes must be int32.*got dtype float32",
        ),
        (
            np.zeros((1, 8, 8, 3), np.float32),
            np.zeros((2, 4), np.float32),
            np.zeros((2, 1), np.int32),
            RoIPoolingInputError,
            r"box_indexes must have shape \[num_rois\].*\[2, 1\]",
        ),
        (
            np.zeros((1, 8, 8, 3), np.float32),
            np.zeros((2, 4), np.float32),
            np.zeros(3, np.int32),
            RoIPoolingInputError,
            r"same num_rois.*\[2, 4\].*\[3\]",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(features, rois, box_indexes, error, message):
    with pytest.raises(error, match=message):
        RoIPooling()(features, rois, box_indexes)


# ----------------------------------------------------------------------------- fixed point


def _grid_with_extremes(top: int, count: int) -> np.ndarray:
    """``count`` evenly spaced ints in [0, top] plus 0, 1, top-1, top and the 7-bit limb edges."""
    edges = [0, 1, top - 1, top]
    for shift in (7, 14):
        edges += [(1 << shift) - 1, 1 << shift, (1 << shift) + 1]
    values = np.concatenate([np.linspace(0, top, count).round(), edges]).astype(np.int64)
    return np.unique(values[(values >= 0) & (values <= top)])


def test_fixed_point_product_is_within_half_a_unit_over_its_whole_domain():
    """round(a*b / 2**22) for a, b in [0, 2**22]: every grid pair, against exact int64 maths."""
    from models.roi_lowerings import WEIGHT_BITS, _fixed_point_product

    top = 1 << WEIGHT_BITS
    values = _grid_with_extremes(top, 1200)
    a, b = np.meshgrid(values, values, indexing="ij")
    actual = _fixed_point_product(tf.constant(a, tf.int32), tf.constant(b, tf.int32)).numpy()
    exact = a.astype(np.float64) * b / top  # a*b < 2**45: exact in float64
    error = np.abs(actual - exact)
    assert error.max() < 0.51, (error.max(), a.flat[error.argmax()], b.flat[error.argmax()])
    assert actual.min() >= 0 and actual.max() == top  # 1 * 1 is exactly 1, nothing overflowed
    # The weights derived from it (1 - wy - wx + wy*wx, ...) are then never negative.
    assert np.all(top - a - b + actual >= 0)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 38, 64, 65, 1000, 1024, 4096, 1 << 20])
def test_fraction_bits_keep_positions_inside_int32(length):
    from models.roi_lowerings import COORDINATE_RANGE, _fraction_bits

    bits = _fraction_bits(length)
    last = max(length - 1, 1)
    assert 1 <= bits <= 24
    # Largest intermediate: |lo| * last + crop_length * step, both bounded by R * last * 2**bits.
    assert 3 * COORDINATE_RANGE * last * 2**bits <= 2**31 - 1
    if bits < 24:  # as many bits as fit: one more would overflow
        assert 3 * COORDINATE_RANGE * last * 2 ** (bits + 1) > 2**31 - 1


def test_fraction_bits_of_an_unknown_length_cover_maps_up_to_1024():
    from models.roi_lowerings import _fraction_bits

    assert _fraction_bits(tf.constant(5)) == _fraction_bits(1024)


INSIDE_RANGE = [[-2.0, -1.5, 2.0, 1.9], [-0.5, 2.0, 1.5, -2.0]]
OUTSIDE_RANGE = [
    [0.1, 0.2, 3.0, 100.0],
    [-1e6, 0.3, 1e6, 0.7],
    [2.0**31, -(2.0**31), 2.0**62, 0.5],
    [1e30, -3e38, 0.5, 3e38],
]


@pytest.mark.parametrize("where", ["tensorflow", "tflite"])
def test_fixed_point_is_exact_inside_the_range_and_clamps_outside(where):
    """Inside EXACT_RANGE: crop_and_resize itself. Outside: crop_and_resize of the clamped box
    (no float->int32 overflow: 100 once wrapped to the far negative side)."""
    from models.roi_pooling import EXACT_RANGE

    rng = np.random.default_rng(31)
    features = rng.random((1, 20, 20, 8), dtype=np.float32)
    rois = np.asarray(INSIDE_RANGE + OUTSIDE_RANGE, np.float32)
    box_indexes = np.zeros(len(rois), np.int32)
    if where == "tensorflow":
        actual = roi_pool(features, rois, box_indexes).numpy()
    else:
        model = convert_pool("fixed_point", len(rois), "float32", rng, channels=8)
        actual, _ = run_tflite(model, features, rois, box_indexes)
    unclamped = tf_reference(features, rois, box_indexes, (7, 7), 2)
    clamped = tf_reference(features, np.clip(rois, *EXACT_RANGE), box_indexes, (7, 7), 2)
    inside = len(INSIDE_RANGE)
    np.testing.assert_allclose(actual[:inside], unclamped[:inside], atol=1e-5)
    np.testing.assert_allclose(actual, clamped, atol=1e-5)
    assert np.abs(actual[inside:] - unclamped[inside:]).max() > 0.1  # the range is real


def test_rois_in_exact_range_on_both_sides():
    from models.roi_pooling import rois_in_exact_range

    assert rois_in_exact_range(np.asarray(INSIDE_RANGE, np.float32))
    assert rois_in_exact_range(np.zeros((0, 4), np.float32))
    for box in OUTSIDE_RANGE:
        assert not rois_in_exact_range([box])
    assert not rois_in_exact_range([[0.0, 0.0, 2.0001, 1.0]])
    assert not rois_in_exact_range([[0.0, float("nan"), 1.0, 1.0]])
