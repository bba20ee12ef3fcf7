"""The benchmark-only RoIPooling lowerings (bench/lowerings.py) against TensorFlow's own
CropAndResize + MaxPool: registered by importing the module, exact in float, builtins only in
TFLite, their int8 forms unclipped and XNNPACK-loadable."""

from __future__ import annotations

import numpy as np
import pytest
from roi_pooling_cases import (
    RoIPoolTester,
    check_split_tiles,
    check_tflite_builtins_only_float32,
    convert_pool,
    random_boxes,
    run_tflite,
    tf_reference,
)

import bench.lowerings  # noqa: F401  (registers the lowerings)

LOSERS = (
    "fixed_point_tiled",
    "neighbour_pool",
    "neighbour_pool_split",
    "neighbour_matmul",
    "separable_matmul",
)


class TestFixedPointTiled(RoIPoolTester):
    implementation = "fixed_point_tiled"


class TestNeighbourPool(RoIPoolTester):
    implementation = "neighbour_pool"


class TestNeighbourPoolSplit(RoIPoolTester):
    implementation = "neighbour_pool_split"


class TestNeighbourMatmul(RoIPoolTester):
    implementation = "neighbour_matmul"


class TestSeparableMatmul(RoIPoolTester):
    implementation = "separable_matmul"


def test_the_package_alone_does_not_offer_them():
    """Without bench/ the shipped package lists only the lowerings a user chooses from."""
    import subprocess
    import sys

    code = "from models.roi_pooling import IMPLEMENTATIONS; print(','.join(IMPLEMENTATIONS))"
    shipped = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        .stdout.split()[-1]
        .split(",")
    )
    assert not set(LOSERS) & set(shipped)
    assert {"fixed_point", "fixed_point_split"} <= set(shipped)


def test_neighbour_pool_split_cuts_the_rois_into_tiles_and_matches_tensorflow(monkeypatch):
    check_split_tiles("neighbour_pool_split", 4, monkeypatch)


@pytest.mark.parametrize("implementation", LOSERS)
def test_tflite_builtins_only_float32_matches_tensorflow(implementation):
    check_tflite_builtins_only_float32(implementation)


def test_neighbour_pool_split_int8_does_not_clip_its_products(monkeypatch):
    """int8 gives AVERAGE_POOL_2D, MAX_POOL_2D and CONCATENATION one scale: corner products
    pre-scaled by 4 clipped there (error ~0.7); tiles of 3 RoIs, each calibrated on its own."""
    from models import roi_lowerings

    per_roi = roi_lowerings.per_roi_bytes((14, 14), 16, 4)
    monkeypatch.setattr(roi_lowerings, "TILE_BYTES", 3 * per_roi)
    rng = np.random.default_rng(23)
    model = convert_pool("neighbour_pool_split", 17, "int8", rng)
    features = rng.random((1, 20, 20, 16), dtype=np.float32)
    rois = random_boxes(rng, 17, 0.0, 1.0)
    box_indexes = np.zeros(17, np.int32)
    actual, ops = run_tflite(model, features, rois, box_indexes)
    assert {"QUANTIZE", "AVERAGE_POOL_2D", "SPLIT_V"} <= ops
    error = np.abs(actual - tf_reference(features, rois, box_indexes, (7, 7), 2)).max()
    # The average pool's int8 rounding of four products costs accuracy (near the 0.02 bar on
    # make bench's case), but nothing clips.
    assert error <= 0.05


def test_shared_tile_ranges_leave_same_scale_ops_tied():
    """fixed_point_tiled recomputes weights per tile and slices them (STRIDED_SLICE): widening
    one side of such an op's scale made XNNPACK refuse the int8 model; share_tile_ranges leaves
    every op that needs one scale on its input and output as the converter tied it."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(3)
    model = convert_pool("fixed_point_tiled", 40, "int8", rng)
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
