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

from models.roi_pooling import (
    DEFAULT_IMPLEMENTATION,
    RoIPooling,
    RoIPoolingInputError,
    RoIPoolingTypeError,
    roi_pool,
    roi_pool_numpy,
)

BUILTIN_IMPLEMENTATIONS = ("fixed_point", "gather")
TOLERANCE = {np.float32: 1e-5}
# The bar on [0, 1) features. Each output carries a dozen int8 roundings of ~0.002 (the
# input, four weights, four MULs, three ADDs), so the max over many outputs lands near 0.015
# (make bench); quantized coordinates, the failure this form exists to prevent, give ~1.0.
INT8_MAX_ERROR = 0.02


def tf_reference(features, rois, box_indexes, size, samples_per_bin):
    """TF's fused kernel: crop_and_resize to size * s, then an s x s max pool."""
    crop = (size[0] * samples_per_bin, size[1] * samples_per_bin)
    crops = tf.image.crop_and_resize(features, rois, box_indexes, crop, extrapolation_value=0.0)
    return tf.nn.max_pool2d(crops, samples_per_bin, samples_per_bin, "VALID").numpy()


def random_boxes(rng, count, low=-0.4, high=1.4):
    """[count, 4] boxes y1x1y2x2 anywhere in [low, high]: normal, flipped, partly outside."""
    return rng.uniform(low, high, (count, 4)).astype(np.float32)


ADVERSARIAL = {
    "normal": [0.1, 0.2, 0.6, 0.9],
    "flipped": [0.7, 0.8, 0.2, 0.1],
    "partly_outside": [-0.3, 0.25, 0.6, 1.3],
    "fully_outside": [1.2, 1.1, 1.6, 1.5],
    "fully_outside_negative": [-0.9, -0.8, -0.1, -0.2],
    "zero_area": [0.3, 0.4, 0.3, 0.4],
    "whole_image": [0.0, 0.0, 1.0, 1.0],
    "thin_row": [0.5, 0.0, 0.5, 1.0],
}


class RoIPoolTester:
    """Shared checks of one implementation against a slow reference (``expected_fn``)."""

    implementation: str

    def expected_fn(self, features, rois, box_indexes, size, samples_per_bin):
        return tf_reference(features, rois, box_indexes, size, samples_per_bin)

    def check(self, features, rois, box_indexes, size=(7, 7), samples_per_bin=2, dtype=np.float32):
        actual = roi_pool(
            features.astype(dtype),
            rois,
            box_indexes,
            size=size,
            samples_per_bin=samples_per_bin,
            implementation=self.implementation,
        ).numpy()
        expected = self.expected_fn(features, rois, box_indexes, size, samples_per_bin)
        assert actual.shape == (len(rois), size[0], size[1], features.shape[-1])
        np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE[dtype])
        return actual

    @pytest.mark.parametrize("num_rois", [1, 3, 17])
    @pytest.mark.parametrize("samples_per_bin", [1, 2, 3])
    def test_random_boxes(self, num_rois, samples_per_bin):
        rng = np.random.default_rng(100 * num_rois + samples_per_bin)
        features = rng.random((3, 13, 11, 5), dtype=np.float32)
        rois = random_boxes(rng, num_rois)
        box_indexes = rng.integers(0, 3, num_rois).astype(np.int32)
        pooled = self.check(features, rois, box_indexes, (7, 5), samples_per_bin)
        if num_rois > 1:
            # Every RoI is pooled on its own: differing boxes give differing outputs.
            assert not np.allclose(pooled[0], pooled[-1])

    @pytest.mark.parametrize("case", sorted(ADVERSARIAL))
    @pytest.mark.parametrize("size", [(7, 7), (3, 5), (1, 1)])
    def test_adversarial_boxes(self, case, size):
        rng = np.random.default_rng(7)
        features = rng.standard_normal((2, 19, 23, 4)).astype(np.float32)
        rois = np.asarray([ADVERSARIAL[case]] * 3, np.float32)
        self.check(features, rois, np.array([0, 1, 1], np.int32), size, samples_per_bin=2)

    def test_flipped_whole_image_is_the_whole_image_flipped(self):
        # Exact maths, not TF's float rounding (which drops the last sample of this box).
        rng = np.random.default_rng(3)
        features = rng.random((1, 9, 12, 3), dtype=np.float32)
        boxes = np.array([[0, 0, 1, 1], [1, 1, 0, 0]], np.float32)
        pooled = roi_pool(
            features,
            boxes,
            np.zeros(2, np.int32),
            size=(9, 12),
            samples_per_bin=1,
            implementation=self.implementation,
        ).numpy()
        np.testing.assert_allclose(pooled[0], features[0], atol=1e-5)
        np.testing.assert_allclose(pooled[1], features[0, ::-1, ::-1], atol=1e-5)

    def test_static_and_dynamic_num_rois_in_tf_function(self):
        rng = np.random.default_rng(5)
        features = rng.random((2, 10, 10, 3), dtype=np.float32)
        rois = random_boxes(rng, 6, 0.0, 1.0)
        box_indexes = np.array([0, 1, 0, 1, 1, 0], np.int32)
        layer = RoIPooling((4, 4), implementation=self.implementation)
        dynamic = tf.function(
            layer.__call__,
            input_signature=[
                tf.TensorSpec((2, 10, 10, 3), tf.float32),
                tf.TensorSpec((None, 4), tf.float32),
                tf.TensorSpec((None,), tf.int32),
            ],
        )
        expected = tf_reference(features, rois, box_indexes, (4, 4), 2)
        for count in (6, 2):
            out = dynamic(features, rois[:count], box_indexes[:count]).numpy()
            np.testing.assert_allclose(out, expected[:count], atol=1e-5)


class TestFixedPoint(RoIPoolTester):
    implementation = "fixed_point"


class TestGather(RoIPoolTester):
    implementation = "gather"


# The fixed-point variants make bench compares (same sampling grid, other feature paths).
class TestFixedPointTiled(RoIPoolTester):
    implementation = "fixed_point_tiled"


class TestFixedPointSplit(RoIPoolTester):
    implementation = "fixed_point_split"


class TestNeighbourPool(RoIPoolTester):
    implementation = "neighbour_pool"


class TestNeighbourPoolSplit(RoIPoolTester):
    implementation = "neighbour_pool_split"


class TestNeighbourMatmul(RoIPoolTester):
    implementation = "neighbour_matmul"


class TestSeparableMatmul(RoIPoolTester):
    implementation = "separable_matmul"


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


def _convert(
    implementation,
    num_rois,
    precision,
    rng,
    height=20,
    width=20,
    channels=16,
    size=7,
    share_ranges=True,
    **tile_options,
):
    """roi_pool (samples_per_bin 2) through the converter's standard settings per precision."""
    from models.tflite_convert import convert_function

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, height, width, channels), tf.float32, name="features"),
            tf.TensorSpec((num_rois, 4), tf.float32, name="rois"),
            tf.TensorSpec((num_rois,), tf.int32, name="box_indexes"),
        ]
    )
    def pool(features, rois, box_indexes):
        return roi_pool(
            features, rois, box_indexes, (size, size), 2, implementation, **tile_options
        )

    def representative():
        # Proposal-like calibration boxes (centres in the map, 0.05-0.6 wide, some past it): a
        # handful of arbitrary corner pairs leave the int8 weight ranges under-calibrated.
        for _ in range(8):
            features = rng.random((1, height, width, channels), dtype=np.float32)
            centers = rng.uniform(0.0, 1.0, (num_rois, 2))
            extents = rng.uniform(0.05, 0.6, (num_rois, 2))
            rois = np.concatenate([centers - extents / 2, centers + extents / 2], 1)
            yield [features, rois.astype(np.float32), np.zeros(num_rois, np.int32)]

    return convert_function(pool, precision, representative, share_ranges)


def _run_tflite(model, features, rois, box_indexes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, value in (("features", features), ("rois", rois), ("box_indexes", box_indexes)):
        interpreter.set_tensor(next(i for n, i in by_name.items() if name in n), value)
    interpreter.invoke()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), ops


VARIANTS = (
    "fixed_point_tiled",
    "fixed_point_split",
    "neighbour_pool",
    "neighbour_pool_split",
    "neighbour_matmul",
    "separable_matmul",
)


@pytest.mark.parametrize(
    ("implementation", "stacked"), [("fixed_point_split", 1), ("neighbour_pool_split", 4)]
)
def test_split_lowerings_cut_the_rois_into_tiles_and_match_tensorflow(
    implementation, stacked, monkeypatch
):
    """The testers' small maps fit one tile; here tiles of 3 RoIs (and a last one of 2)."""
    from models import roi_lowerings

    per_roi = roi_lowerings._per_roi_bytes((14, 10), 5, stacked)
    monkeypatch.setattr(roi_lowerings, "TILE_BYTES", 3 * per_roi + 1)
    assert roi_lowerings._tile_sizes(17, per_roi) == [3, 3, 3, 3, 3, 2]
    rng = np.random.default_rng(31)
    features = rng.random((2, 13, 11, 5), dtype=np.float32)
    rois = random_boxes(rng, 17)
    box_indexes = rng.integers(0, 2, 17).astype(np.int32)
    pool = tf.function(
        lambda f, r, b: roi_pool(f, r, b, (7, 5), 2, implementation),
        input_signature=[
            tf.TensorSpec(features.shape, tf.float32),
            tf.TensorSpec((17, 4), tf.float32),
            tf.TensorSpec((17,), tf.int32),
        ],
    )
    graph = pool.get_concrete_function().graph
    gathers = [op for op in graph.get_operations() if op.type == "GatherV2"]
    assert len(gathers) == 6 * (4 if stacked == 1 else 1)  # per tile, not per RoI batch

    def after_a_max_pool(op, seen):
        # Whether a MaxPool (an earlier tile's output) is among op's ancestors.
        for tensor in op.inputs:
            if tensor.op.name not in seen:
                seen.add(tensor.op.name)
                if tensor.op.type == "MaxPool" or after_a_max_pool(tensor.op, seen):
                    return True
        return False

    # Tiles stay in order under XNNPACK: every GATHER but the first tile's waits for a tile.
    ordered = [after_a_max_pool(op, set()) for op in gathers]
    assert sum(not o for o in ordered) == (4 if stacked == 1 else 1)
    np.testing.assert_allclose(
        pool(features, rois, box_indexes).numpy(),
        tf_reference(features, rois, box_indexes, (7, 5), 2),
        atol=1e-5,
    )


@pytest.mark.parametrize("implementation", BUILTIN_IMPLEMENTATIONS + VARIANTS)
def test_tflite_builtins_only_float32_matches_tensorflow(implementation):
    rng = np.random.default_rng(21)
    model = _convert(implementation, 17, "float32", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, 17)
    box_indexes = np.zeros(17, np.int32)
    actual, ops = _run_tflite(model, features, rois, box_indexes)
    assert "CROP_AND_RESIZE" not in ops and not any(
        op.startswith(("Flex", "CUSTOM")) or op.islower() for op in ops
    ), ops
    assert "MAX_POOL_2D" in ops
    assert ("BATCH_MATMUL" if implementation == "separable_matmul" else "GATHER") in ops
    np.testing.assert_allclose(
        actual, tf_reference(features, rois, box_indexes, (7, 7), 2), atol=1e-5
    )


# fixed_point's float constants are powers of two float16 holds exactly; gather's sample-step
# constants (1/13, edge slack) round to float16 (~5e-4 relative), moving its samples slightly.
FLOAT16_TOLERANCE = {"fixed_point": 1e-5, "gather": 0.02}


@pytest.mark.parametrize("implementation", BUILTIN_IMPLEMENTATIONS)
def test_tflite_float16_conversion_keeps_the_float_numbers(implementation):
    """Float16 conversion stores every float constant as float16 (2**-25 would become 0)."""
    rng = np.random.default_rng(25)
    model = _convert(implementation, 17, "float16", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, 17)
    box_indexes = np.zeros(17, np.int32)
    actual, ops = _run_tflite(model, features, rois, box_indexes)
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
    model = _convert(implementation, 3, "float32", rng, height, width, channels=3, size=2)
    features = rng.random((1, height, width, 3), dtype=np.float32)
    rois = random_boxes(rng, 3)
    box_indexes = np.zeros(3, np.int32)
    actual, _ = _run_tflite(model, features, rois, box_indexes)
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
    model = _convert("fixed_point", num_rois, "int8", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, num_rois, 0.0, 1.0)
    box_indexes = np.zeros(num_rois, np.int32)
    actual, ops = _run_tflite(model, features, rois, box_indexes)
    assert "QUANTIZE" in ops  # really an int8 model
    error = np.abs(actual - tf_reference(features, rois, box_indexes, (7, 7), 2)).max()
    assert error <= INT8_MAX_ERROR


def test_neighbour_pool_split_int8_does_not_clip_its_products(monkeypatch):
    """int8 gives AVERAGE_POOL_2D, MAX_POOL_2D and CONCATENATION one scale: corner products
    pre-scaled by 4 clipped there (error ~0.7); tiles of 3 RoIs, each calibrated on its own."""
    from models import roi_lowerings

    per_roi = roi_lowerings._per_roi_bytes((14, 14), 16, 4)
    monkeypatch.setattr(roi_lowerings, "TILE_BYTES", 3 * per_roi)
    rng = np.random.default_rng(23)
    model = _convert("neighbour_pool_split", 17, "int8", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, 17, 0.0, 1.0)
    box_indexes = np.zeros(17, np.int32)
    actual, ops = _run_tflite(model, features, rois, box_indexes)
    assert {"QUANTIZE", "AVERAGE_POOL_2D", "SPLIT_V"} <= ops
    error = np.abs(actual - tf_reference(features, rois, box_indexes, (7, 7), 2)).max()
    # The average pool's int8 rounding of four products costs accuracy (near the 0.02 bar on
    # make bench's case), but nothing clips.
    assert error <= 0.05


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

    per_roi = roi_lowerings._per_roi_bytes((14, 14), 16, 1, element_bytes=1)
    rng = np.random.default_rng(40 + num_rois)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, num_rois, 0.0, 1.0)
    box_indexes = np.zeros(num_rois, np.int32)
    expected = tf_reference(features, rois, box_indexes, (7, 7), 2)
    tiles = {"tile_precision": "int8", "tile_bytes": 3 * per_roi}
    model = _convert(
        "fixed_point_split", num_rois, "int8", rng, share_ranges=num_rois < 17, **tiles
    )
    if num_rois == 17:  # six tiles: calibrated alone they differ, shared they agree
        assert any(len(params) > 1 for params in _tile_quantizations(model).values())
        model = share_tile_ranges(model)
    roles = _tile_quantizations(model)
    assert len(roles) >= 8 and all(len(params) == 1 for params in roles.values()), roles
    assert share_tile_ranges(model) == model
    assert _self_comparisons_only(model)
    actual, ops = _run_tflite(model, features, rois, box_indexes)
    assert "QUANTIZE" in ops and ("SPLIT_V" in ops) == (num_rois > 3)
    assert np.abs(actual - expected).max() <= INT8_MAX_ERROR


@pytest.mark.parametrize("tile_precision", ["float32", "int8"])
def test_split_tiles_are_sized_for_the_precision(tile_precision):
    """An int8 tile holds 4x the RoIs of a float32 tile in the same bytes; same numbers."""
    from models import roi_lowerings

    per_roi = roi_lowerings._per_roi_bytes((14, 10), 5)  # float32 bytes of one RoI
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
        model = _convert("fixed_point", len(rois), "float32", rng, channels=8)
        actual, _ = _run_tflite(model, features, rois, box_indexes)
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


def test_shared_tile_ranges_leave_same_scale_ops_tied():
    """fixed_point_tiled recomputes weights per tile and slices them (STRIDED_SLICE): widening
    one side of such an op's scale made XNNPACK refuse the int8 model; share_tile_ranges leaves
    every op that needs one scale on its input and output as the converter tied it."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(3)
    model = _convert("fixed_point_tiled", 40, "int8", rng)
    interpreter = Interpreter(model_content=model)  # XNNPACK, as the benchmarks run it
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    tied = ("STRIDED_SLICE", "RESHAPE", "MAX_POOL_2D", "GATHER")
    for op in interpreter._get_ops_details():
        if op["op_name"] in tied and details[op["inputs"][0]]["dtype"] == np.int8:
            assert (
                details[op["inputs"][0]]["quantization"]
                == details[op["outputs"][0]]["quantization"]
            ), op
