"""Shared RoIPooling test cases: TF's own CropAndResize + MaxPool as the reference, the tester
class every lowering runs, and the TFLite conversion helpers (tests/test_roi_pooling.py,
tests/test_roi_pooling_int8.py, tests/test_bench_lowerings.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models.roi_pooling import RoIPooling, roi_pool

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


def convert_pool(
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


def run_tflite(model, features, rois, box_indexes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, value in (("features", features), ("rois", rois), ("box_indexes", box_indexes)):
        interpreter.set_tensor(next(i for n, i in by_name.items() if name in n), value)
    interpreter.invoke()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), ops


def check_split_tiles(implementation, stacked, monkeypatch):
    """The testers' small maps fit one tile; here tiles of 3 RoIs (and a last one of 2)."""
    from models import roi_lowerings

    per_roi = roi_lowerings.per_roi_bytes((14, 10), 5, stacked)
    monkeypatch.setattr(roi_lowerings, "TILE_BYTES", 3 * per_roi + 1)
    assert roi_lowerings.tile_sizes(17, per_roi) == [3, 3, 3, 3, 3, 2]
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


def check_tflite_builtins_only_float32(implementation):
    """``implementation`` through float32 TFLite: builtins only, the same numbers as TF."""
    rng = np.random.default_rng(21)
    model = convert_pool(implementation, 17, "float32", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, 17)
    box_indexes = np.zeros(17, np.int32)
    actual, ops = run_tflite(model, features, rois, box_indexes)
    assert "CROP_AND_RESIZE" not in ops and not any(
        op.startswith(("Flex", "CUSTOM")) or op.islower() for op in ops
    ), ops
    assert "MAX_POOL_2D" in ops
    assert ("BATCH_MATMUL" if implementation == "separable_matmul" else "GATHER") in ops
    np.testing.assert_allclose(
        actual, tf_reference(features, rois, box_indexes, (7, 7), 2), atol=1e-5
    )
