"""keras-frcnn's RoiPoolingConv: the builtin lowering, its swap and its int8 export.

References: a straight numpy port of the layer's crop + TF bilinear resize written here (loops,
float64), and the original TF layer itself (tests/frcnn_layers.py, run by TensorFlow).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from export.config import ExportInputError
from models.frcnn_roi import RESIZES, frcnn_roi_pool
from tests.frcnn_layers import (
    frcnn_classifier,
    frcnn_samples,
    write_frcnn_layer_file,
)
from tests.keras_models import import_layer_file, snr_db


def numpy_roi_pooling_conv(img, rois, pool, resize) -> np.ndarray:
    """[1, N, P, P, C] float64: crop img[y:y+h, x:x+w] per RoI, resize like TF's bilinear kernel
    (source row = i*n/P legacy, (i+0.5)*n/P-0.5 half-pixel, i*(n-1)/(P-1) align-corners; rows
    max(floor, 0) and min(ceil, n-1), weight = source - floor)."""
    img = np.asarray(img, np.float64)[0]
    out = []
    for x, y, w, h in np.asarray(rois)[0]:
        x, y, w, h = int(x), int(y), int(w), int(h)
        crop = img[y : y + h, x : x + w]

        def source(i, n):
            if resize == "legacy":
                return i * n / pool
            if resize == "half_pixel":
                return (i + 0.5) * n / pool - 0.5
            return i * (n - 1) / (pool - 1) if pool > 1 else 0.0

        pooled = np.zeros((pool, pool, img.shape[-1]))
        for i in range(pool):
            sy = source(i, crop.shape[0])
            top, bottom = max(int(np.floor(sy)), 0), min(int(np.ceil(sy)), crop.shape[0] - 1)
            ly = sy - np.floor(sy)
            for j in range(pool):
                sx = source(j, crop.shape[1])
                left, right = max(int(np.floor(sx)), 0), min(int(np.ceil(sx)), crop.shape[1] - 1)
                lx = sx - np.floor(sx)
                t = crop[top, left] + (crop[top, right] - crop[top, left]) * lx
                b = crop[bottom, left] + (crop[bottom, right] - crop[bottom, left]) * lx
                pooled[i, j] = t + (b - t) * ly
        out.append(pooled)
    return np.stack(out)[None]


def _use(difference, bound) -> float:
    """Largest |difference| / bound (0 where both are 0: all the pixels read are 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.where(difference > 0, difference / bound, 0.0)))


def _inputs(seed, height=13, width=17, channels=3, count=20, magnitude=1.0):
    arrays = frcnn_samples(1, height, width, channels, count, seed, magnitude)
    rng = np.random.default_rng(seed)
    rois = arrays["rois"][0] + rng.uniform(0, 0.99, arrays["rois"][0].shape)  # cast drops it
    return arrays["feature_map"][0], rois.astype(np.float32)


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize("magnitude", [1.0, 1000.0])
def test_lowering_matches_a_numpy_port_of_the_layer(resize, magnitude):
    from export.swap_frcnn import SwappedRoiPoolingConv

    img, rois = _inputs(3, magnitude=magnitude)
    layer = SwappedRoiPoolingConv(5, rois.shape[1], resize)
    want = numpy_roi_pooling_conv(img, rois, 5, resize)
    got = np.asarray(frcnn_roi_pool(img, rois, 5, resize))
    bound = layer.rounding_bound([img, rois])
    assert got.shape == want.shape == bound.shape
    assert _use(np.abs(got - want), bound) <= 1.0
    for other in RESIZES:  # each convention is told apart from the others
        if other != resize:
            far = np.abs(np.asarray(frcnn_roi_pool(img, rois, 5, other)) - want)
            assert _use(far, bound) > 100.0, other


@pytest.fixture(scope="module")
def user_layers(tmp_path_factory):
    path = write_frcnn_layer_file(tmp_path_factory.mktemp("frcnn"))
    return path, import_layer_file(path)


@pytest.mark.parametrize(
    ("cls", "resize"), [("RoiPoolingConv", "legacy"), ("Tf2RoiPoolingConv", "half_pixel")]
)
def test_swap_reads_the_resize_and_proves_the_copy(user_layers, cls, resize):
    from export.shared import keras_outputs
    from export.swap import prove_swap, swap_roi_layers

    _, module = user_layers
    keras.utils.set_random_seed(1)
    model = frcnn_classifier(getattr(module, cls)(7, 6, name="roi_pool"), 12, 15, 4, 6)
    arrays = frcnn_samples(3, 12, 15, 4, 6, seed=4, magnitude=50.0)
    rows = [[arrays["feature_map"][i], arrays["rois"][i]] for i in range(3)]
    swapped, swaps = swap_roi_layers(model, "RoIPooling", 1)  # recognized by its class name
    assert [(s["layer"], s["resize"], s["num_rois"]) for s in swaps] == [("roi_pool", resize, 6)]
    reference = keras_outputs(model, rows)
    proof = prove_swap(swapped, rows, reference, model.output_names, "test", swaps, original=model)
    assert proof["by_layer"]["roi_pool"]["max_bound_use"] <= 1.0


def test_int8_export_keeps_the_rois_float(user_layers, tmp_path):
    """TFLite int8 of a keras-frcnn classifier: RoIs never quantized, scores close to float."""
    from export.__main__ import main
    from export.stages import ModelIO
    from export.tflite_format import quantization_leaks
    from runtime.check import check_directory, format_results
    from runtime.manifest import read_manifest
    from runtime.run import run_artifact

    path, module = user_layers
    keras.utils.set_random_seed(2)
    model = frcnn_classifier(module.RoiPoolingConv(7, 8, name="roi_pool"), 14, 18, 16, 8)
    model.save(tmp_path / "classifier.keras")
    np.savez(tmp_path / "s.npz", **frcnn_samples(12, 14, 18, 16, 8, seed=2))
    out = tmp_path / "art"
    code = main(
        ["--keras-model", str(tmp_path / "classifier.keras"), "--samples", str(tmp_path / "s.npz"),
         "--out", str(out), "--custom-objects", str(path), "--formats", "tflite",
         "--precisions", "float32,int8", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    proof = json.loads((out / "reports" / "swap_proof.json").read_text())
    assert proof["coordinate_inputs"] == ["rois"]
    entry = next(e for e in read_manifest(out).artifacts if e.precision == "int8")
    io = ModelIO(("feature_map", "rois"), tuple(model.output_names), ("rois",))
    assert quantization_leaks((out / entry.path).read_bytes(), entry.model, io) == []
    fresh = frcnn_samples(4, 14, 18, 16, 8, seed=9)
    want = [np.asarray(o) for o in model([fresh["feature_map"][0], fresh["rois"][0]])]
    got = run_artifact(out, {k: v[:1] for k, v in fresh.items()}, precision="float32")
    assert np.max(np.abs(got["dense_class_4"][0] - want[0])) <= 1e-5
    got = run_artifact(out, {k: v[:1] for k, v in fresh.items()}, precision="int8")
    print("int8 SNR dense_class_4", snr_db(got["dense_class_4"][0], want[0]))
    assert snr_db(got["dense_class_4"][0], want[0]) >= 20.0
    # runtime check: full output names, top-1 judged on the softmax output.
    results = check_directory(out)
    assert all(r.ok for r in results) and all(r.top1_agreement is not None for r in results)
    table = format_results(results)
    assert " dense_regress_4 " in table and " dense_class_4 " in table
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if "| dense_class_4 |" in line]
    assert rows and all(row.split("|")[7].strip() for row in rows)  # the top-1 column


def test_uncovered_roi_layers_are_refused_in_one_line():
    from export.swap import swap_roi_layers

    class PyramidROIAlign(keras.layers.Layer):
        def call(self, inputs):
            return inputs[0][:, :2, :2]

    boxes = keras.Input((4, 4), batch_size=1, name="boxes")
    features = keras.Input((8, 8, 3), batch_size=1, name="p2")
    model = keras.Model([boxes, features], PyramidROIAlign(name="roi_align")([features, boxes]))
    with pytest.raises(ExportInputError) as raised:
        swap_roi_layers(model, "RoIPooling", 1)
    text = str(raised.value)
    assert "\n" not in text and "roi_align (PyramidROIAlign)" in text
    assert "pyramid levels" in text and "RoiPoolingConv" in text and "functional" not in text


def test_graph_coordinate_inputs_find_slice_and_gather_operands():
    import tensorflow as tf

    from export.coordinates import graph_coordinate_inputs

    features = keras.Input((10, 10, 3), batch_size=1, name="features")
    start = keras.Input((), batch_size=1, dtype="int32", name="start")
    picks = keras.Input((4,), batch_size=1, dtype="int32", name="picks")
    scale = keras.Input((3,), batch_size=1, name="scale")
    crop = keras.layers.Lambda(
        lambda t: tf.slice(t[0], tf.stack([0, t[1][0], 0, 0]), [1, 3, 10, 3]),
        output_shape=(1, 3, 10, 3),
    )([features, start])
    rows = keras.layers.Lambda(lambda t: tf.gather(t[0][0], t[1][0]), output_shape=(4, 10, 3))(
        [features, picks]
    )
    weighted = keras.layers.Lambda(
        lambda t: t[0] * t[1][:, None, None, :], output_shape=(1, 3, 10, 3)
    )([crop, scale])
    model = keras.Model([features, start, picks, scale], [weighted, rows])
    assert graph_coordinate_inputs(model) == ("start", "picks")


def test_saved_roi_pooling_conv_without_its_class_asks_for_it(user_layers, tmp_path):
    from export.keras_loading import load_keras_model

    _, module = user_layers
    model = frcnn_classifier(module.RoiPoolingConv(3, 2, name="roi_pool"), 6, 6, 2, 2)
    model.save(tmp_path / "c.keras")
    with pytest.raises(ExportInputError) as raised:
        load_keras_model(tmp_path / "c.keras", [], "RoIPooling", 1)
    text = str(raised.value)
    assert "\n" not in text and text.startswith("layer roi_pool (RoiPoolingConv)")
    assert "--custom-objects" in text


def test_graph_coordinate_inputs_of_roiedge_lowerings_are_the_boxes():
    """The tiled lowering orders its tiles with ``x > x`` of the features (a constant zero in the
    gather index): the features are still not a coordinate input."""
    from export.coordinates import graph_coordinate_inputs
    from models.roi_pooling import RoIPooling
    from tests.keras_models import head_model

    for implementation in ("fixed_point", "fixed_point_split"):
        layer = RoIPooling(size=(3, 3), implementation=implementation, name="pool")
        model = head_model(layer, 8, 10, 4, 20, name="boxes_head")
        assert graph_coordinate_inputs(model) == ("rois", "box_indexes"), implementation
