"""``python -m export --keras-model``: a user's own model, judged against the user's TF model.

References are independent of the code under test: the user's original Keras model with its
``tf.image.crop_and_resize`` layer, run by TensorFlow; artifacts run through ai-edge-litert,
onnxruntime and, in a throwaway env, tflite-runtime 2.14 without TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.config import ExportCheckError, ExportInputError
from runtime.manifest import read_manifest, sha256_file
from tests.keras_models import (
    head_model,
    import_layer_file,
    sample_arrays,
    snr_db,
    write_layer_file,
)

REPO = Path(__file__).resolve().parent.parent
#: A 30-row map: boxes ending at 1.0 hit TF's edge rounding (row 29.000002 zeroed) here.
HEIGHT, WIDTH, CHANNELS, ROIS, SAMPLES = 30, 40, 8, 24, 12


def _keras_run(model, arrays, count):
    names = [t.name for t in model.inputs]
    rows = [[arrays[n][i] for n in names] for i in range(count)]
    outs = [model([np.asarray(v) for v in row], training=False) for row in rows]
    return {
        name: np.stack([np.asarray(o[j]) for o in outs])
        for j, name in enumerate(model.output_names)
    }


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """(dir, layer file, .keras path, samples path, original model) of a tutorial-style head."""
    import keras

    tmp = tmp_path_factory.mktemp("tutorial")
    layer_file = write_layer_file(tmp)
    module = import_layer_file(layer_file)
    keras.utils.set_random_seed(3)
    model = head_model(
        module.RoIPooling(size=(7, 7), name="roi_pool"), HEIGHT, WIDTH, CHANNELS, ROIS
    )
    model_path = tmp / "user_head.keras"
    model.save(model_path)
    samples = tmp / "samples.npz"
    np.savez(samples, **sample_arrays(SAMPLES, HEIGHT, WIDTH, CHANNELS, ROIS, seed=1))
    return tmp, layer_file, model_path, samples, model


@pytest.fixture(scope="module")
def tutorial_export(tutorial):
    """The CLI export of the tutorial model (every artifact of the table)."""
    from export.__main__ import main

    tmp, layer_file, model_path, samples, _ = tutorial
    before = sha256_file(model_path)
    out = tmp / "artifacts"
    argv = ["--keras-model", str(model_path), "--samples", str(samples), "--out", str(out)]
    code = main([*argv, "--custom-objects", str(layer_file), "--no-progress"])
    assert code == 0
    assert sha256_file(model_path) == before  # the user's model file is never edited
    return out


def test_tutorial_layer_exports_and_matches_the_original_tf_model(tutorial, tutorial_export):
    from runtime.check import check_directory
    from runtime.run import run_artifact

    _, _, _, _, original = tutorial
    out = tutorial_export
    manifest = read_manifest(out)
    assert {e.model for e in manifest.artifacts} == {"user_head"}
    assert sorted(e.name.split("/", 1)[1] for e in manifest.artifacts) == sorted(
        [f"tflite/{p}" for p in ("float32", "float16", "dynamic_int8", "int8")]
        + ["onnx/float32", "onnx/int8"]
    )
    proof = json.loads((out / "reports" / "swap_proof.json").read_text())
    assert [s["layer"] for s in proof["swapped_layers"]] == ["roi_pool"]
    assert proof["proof"].startswith("ran the original model here")
    for entry in manifest.artifacts:
        report = json.loads((out / entry.op_report).read_text())
        assert report.get("builtin_ops_only") or report.get("loop_free")
        assert set(report["golden_check"]) == {"class_scores", "box_deltas"}
        if entry.precision == "int8" and entry.format == "tflite":
            assert report["build_notes"]["layer_errors"]  # per-layer int8 error
    assert all(r.ok for r in check_directory(out))
    table = (out / "report.md").read_text()
    assert table.count("| user_head/") == 2 * len(manifest.artifacts)  # one row per output
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    # Fresh inputs (never seen by the export), some of them in TF's edge-rounding trap.
    from export.swap import edge_rounding_rois

    fresh = sample_arrays(4, HEIGHT, WIDTH, CHANNELS, ROIS, seed=99)
    fresh["rois"][:, :12, 2] = 1.0  # boxes ending on the last row
    trapped = sum(len(edge_rounding_rois((1, HEIGHT, WIDTH), r, (7, 7))) for r in fresh["rois"])
    assert trapped > 0
    want = _keras_run(original, fresh, 4)
    for fmt in ("tflite", "onnx"):
        got = run_artifact(out, fresh, format=fmt, precision="float32")
        for name in ("class_scores", "box_deltas"):
            assert np.max(np.abs(got[name] - want[name])) <= 1e-5, (fmt, name)
        got = run_artifact(out, fresh, format=fmt, precision="int8")
        assert snr_db(got["class_scores"], want["class_scores"]) >= 30.0, fmt


def test_edge_rounding_is_reproduced_not_tolerated(tutorial):
    """A box ending at 1.0 on a 30-row map: TF zeroes its last row; the swapped layer too."""
    import tensorflow as tf

    from export.swap import SwappedRoIPooling, edge_rounding_rois
    from models.roi_pooling import roi_pool

    rng = np.random.default_rng(5)
    features = rng.random((1, HEIGHT, WIDTH, CHANNELS), dtype=np.float32)
    starts = rng.uniform(0.0, 0.8, 200).astype(np.float32)
    rois = np.stack([starts, starts[::-1], np.ones(200), np.ones(200)], axis=1).astype(np.float32)
    indexes = np.zeros(200, np.int32)
    want = tf.image.crop_and_resize(features, rois, indexes, (7, 7)).numpy()
    plain = roi_pool(features, rois, indexes, size=(7, 7), samples_per_bin=1).numpy()
    swapped = SwappedRoIPooling((7, 7))(features, rois, indexes).numpy()
    differ = np.flatnonzero(np.abs(plain - want).max(axis=(1, 2, 3)) > 1e-5)
    assert len(differ) > 0  # the trap is real on this map
    np.testing.assert_array_equal(edge_rounding_rois(features.shape, rois, (7, 7)), differ)
    assert np.max(np.abs(swapped - want)) <= 1e-5


def test_roiedge_layer_model_with_two_outputs(tmp_path):
    """roiedge's own RoIPooling (nothing to swap) through the Python API with a dict of arrays."""
    import keras

    from export.keras_model import export_keras_model
    from models.roi_pooling import RoIPooling
    from runtime.run import run_artifact

    keras.utils.set_random_seed(4)
    model = head_model(RoIPooling(size=(5, 5), name="pool"), 16, 20, 6, 10, name="own_head")
    arrays = sample_arrays(10, 16, 20, 6, 10, seed=2)
    out = tmp_path / "own"
    manifest = export_keras_model(
        model, arrays, out, precisions=("float32", "int8"), formats=("tflite",), progress=False
    )
    assert [e.name for e in manifest.artifacts] == [
        "own_head/tflite/float32",
        "own_head/tflite/int8",
    ]
    entry = manifest.artifacts[0]
    assert [s.name for s in entry.inputs] == [
        f"serving_default_{n}:0" for n in ("features", "rois", "box_indexes")
    ]
    with np.load(out / manifest.golden["own_head"]) as golden:
        assert sorted(golden.files) == ["input_0", "input_1", "input_2", "output_0", "output_1"]
        want = model([golden["input_0"][0], golden["input_1"][0], golden["input_2"][0]])
        np.testing.assert_allclose(golden["output_0"][0], want[0], atol=1e-6)
    proof = json.loads((out / "reports" / "swap_proof.json").read_text())
    assert proof["swapped_layers"] == []
    fresh = sample_arrays(2, 16, 20, 6, 10, seed=8)
    got = run_artifact(out, fresh)
    want = _keras_run(model, fresh, 2)
    assert sorted(got) == ["box_deltas", "class_scores"]
    for name in got:
        assert np.max(np.abs(got[name] - want[name])) <= 1e-5
    single = run_artifact(out, {k: v[1] for k, v in fresh.items()})  # no sample axis
    for name in got:
        np.testing.assert_array_equal(single[name], got[name][1])


def test_split_lowering_int8_export_shares_tile_ranges(tmp_path):
    """A model with the tiled ``fixed_point_split`` lowering: the export's int8 (MSE ranges,
    denylists) gives every tile's tensor of one role one range, as the untiled tensor would get,
    and the artifact runs within int8's tolerance of the float model."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from export.keras_model import export_keras_model
    from export.swap import retile_for
    from models.roi_pooling import RoIPooling
    from runtime.run import run_artifact

    keras.utils.set_random_seed(5)
    # 10x10 samples x 6 channels per RoI: 1 RoI a float32 tile of these bytes, 2 an int8 one;
    # the export sizes the int8 artifact's tiles for int8 (a proven copy): 5 tiles.
    layer = RoIPooling(
        size=(5, 5), implementation="fixed_point_split", tile_bytes=2 * 10 * 10 * 6, name="pool"
    )
    model = head_model(layer, 16, 20, 6, 10, name="split_head")
    arrays = sample_arrays(10, 16, 20, 6, 10, seed=2)
    out = tmp_path / "split"
    manifest = export_keras_model(
        model, arrays, out, precisions=("int8",), formats=("tflite",), progress=False
    )
    interpreter = Interpreter(model_path=str(out / manifest.artifacts[0].path))
    roles: dict[str, set] = {}
    for detail in interpreter.get_tensor_details():
        match = re.search(r"roi_tile_(\d+)/(\w+)", detail["name"])
        if match and detail["dtype"] == np.int8:
            roles.setdefault(match.group(2), set()).add((match.group(1), detail["quantization"]))
    tiles = {tile for params in roles.values() for tile, _ in params}
    assert len(tiles) == 5 and len(roles) >= 4, roles
    report = json.loads((out / manifest.artifacts[0].op_report).read_text())
    assert report["build_notes"]["roi_tiles_sized_for_int8"] == ["pool"]
    assert model.get_layer("pool").tile_precision == "float32"  # the user's model untouched
    rows = [[arrays[k][0] for k in ("features", "rois", "box_indexes")]]
    for format, precision in (("tflite", "float32"), ("tflite", "dynamic_int8"), ("onnx", "int8")):
        assert retile_for(model, format, precision, rows) == (model, [])
    for role, params in roles.items():
        assert len({quantization for _, quantization in params}) == 1, (role, params)
    fresh = sample_arrays(2, 16, 20, 6, 10, seed=8)
    got = run_artifact(out, fresh, precision="int8")
    want = _keras_run(model, fresh, 2)
    assert np.max(np.abs(got["class_scores"] - want["class_scores"])) <= 0.02


# ------------------------------------------------------------------------------- proofs and errors


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """A tutorial layer that also max-pools a 2x finer crop, saved with its samples."""
    import keras

    tmp = tmp_path_factory.mktemp("pooled")
    layer_file = write_layer_file(tmp)
    module = import_layer_file(layer_file)
    keras.utils.set_random_seed(6)
    model = head_model(module.MaxPooledRoIPooling(size=(4, 4), name="roi_pool"), 12, 14, 4, 6)
    path = tmp / "pooled.keras"
    model.save(path)
    arrays = sample_arrays(8, 12, 14, 4, 6, seed=3)
    return tmp, layer_file, path, arrays, model


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _our_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without TensorFlow's start-up logging (absl/oneDNN lines we cannot silence)."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    noise = ("WARNING: All log messages", "I0000 ", "W0000 ", "E0000 ")
    return [line for line in proc.stderr.strip().splitlines() if not line.startswith(noise)]


def test_failed_proof_says_how_far_and_what_to_try(pooled):
    from export.keras_model import KerasExportConfig, run_keras_export

    tmp, layer_file, path, arrays, _ = pooled
    np.savez(tmp / "s.npz", **arrays)
    common = dict(keras_model=path, samples=tmp / "s.npz", custom_objects=(layer_file,))
    common.update(roi_layer="MaxPooledRoIPooling", formats=("onnx",), precisions=("float32",))
    with pytest.raises(
        ExportCheckError, match=r"differs from the original by .*--samples-per-bin 2"
    ):
        run_keras_export(KerasExportConfig(out=tmp / "a", progress=False, **common))
    assert not (tmp / "a").exists()  # nothing partial left behind
    run_keras_export(KerasExportConfig(out=tmp / "b", samples_per_bin=2, progress=False, **common))
    proof = json.loads((tmp / "b" / "reports" / "swap_proof.json").read_text())
    assert max(proof["max_abs_by_output"].values()) <= 1e-5


def test_rois_beyond_the_exact_range_are_warned_and_named_when_the_proof_fails(pooled, capsys):
    from export.keras_model import KerasExportConfig, run_keras_export

    tmp, layer_file, path, arrays, _ = pooled
    wide = {**arrays, "rois": (arrays["rois"] * 5.0 - 2.0).astype(np.float32)}  # [-2, 3]
    np.savez(tmp / "wide.npz", **wide)
    config = KerasExportConfig(
        keras_model=path,
        samples=tmp / "wide.npz",
        out=tmp / "wide",
        custom_objects=(layer_file,),
        roi_layer="MaxPooledRoIPooling",
        samples_per_bin=2,
        formats=("onnx",),
        precisions=("float32",),
        progress=False,
    )
    with pytest.raises(ExportCheckError, match=r"note: \d+ sample RoI\(s\) .* outside \[-2, 2\]"):
        run_keras_export(config)
    assert "warning: " in capsys.readouterr().err


def _save_as_tf_keras_2_h5(model, path: Path) -> None:
    """HDF5 whose RoIPooling entry is what tf.keras 2 (tf-keras 2.21) writes for
    ``layer(fm, rois, box_indexes)``: an unregistered class name and one inbound tensor with the
    other two as ``["name", 0, 0]`` references in its kwargs."""
    import h5py

    model.save(path)
    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["name"] == "roi_pool":
                layer.pop("module", None)
                layer.pop("registered_name", None)
                layer.pop("build_config", None)
                layer["class_name"] = "MaxPooledRoIPooling"
                layer["config"]["dtype"] = "float32"
                layer["inbound_nodes"] = [
                    [
                        [
                            "features",
                            0,
                            0,
                            {"rois": ["rois", 0, 0], "box_indexes": ["box_indexes", 0, 0]},
                        ]
                    ]
                ]
        handle.attrs["model_config"] = json.dumps(config)


def test_legacy_model_whose_layer_cannot_run_here_is_proven_from_given_outputs(pooled, capsys):
    """No user code: the swap reads the saved config of a tf.keras 2 HDF5 file; the proof then
    needs the original's outputs as output:NAME arrays, and says it used them."""
    from export.keras_model import KerasExportConfig, run_keras_export

    tmp, _, _, arrays, model = pooled
    legacy = tmp / "legacy.h5"
    _save_as_tf_keras_2_h5(model, legacy)  # its class name is registered nowhere here
    np.savez(tmp / "no_outputs.npz", **arrays)
    outputs = _keras_run(model, arrays, 8)
    np.savez(tmp / "with_outputs.npz", **arrays, **{f"output:{k}": v for k, v in outputs.items()})
    common = dict(keras_model=legacy, roi_layer="MaxPooledRoIPooling", samples_per_bin=2)
    common.update(formats=("onnx",), precisions=("float32",), progress=False)
    config = KerasExportConfig(samples=tmp / "no_outputs.npz", out=tmp / "l0", **common)
    with pytest.raises(ExportInputError, match=r"cannot run here .*output:class_scores"):
        run_keras_export(config)
    config = KerasExportConfig(samples=tmp / "with_outputs.npz", out=tmp / "l1", **common)
    run_keras_export(config)
    said = [line for line in capsys.readouterr().err.splitlines() if "swap proof:" in line]
    assert len(said) == 1 and "original outputs from" in said[0]
    proof = json.loads((tmp / "l1" / "reports" / "swap_proof.json").read_text())
    assert proof["swapped_layers"][0]["read_from"] == "the saved config"
    assert max(proof["max_abs_by_output"].values()) <= 1e-5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("rois"), r"missing key 'rois'"),
        (lambda a: a.update(extra=a["rois"]), r"key 'extra' is not a model input"),
        (lambda a: a.update(rois=a["rois"][:, :, :3]), r"key 'rois' has shape \(8, 6, 3\)"),
        (lambda a: a.update(rois=a["rois"].astype(np.float64)), r"key 'rois' has dtype float64"),
        (
            lambda a: a.update({k: v[:5] for k, v in a.items()}),
            r"key 'features' has 5 samples; expected at least 8",
        ),
        (lambda a: a.update({"output:nope": a["rois"]}), r"'output:nope' is not a model output"),
    ],
)
def test_bad_samples_are_one_line_errors_naming_the_key(pooled, change, message):
    from export.keras_loading import io_infos
    from export.samples import load_samples

    _, _, _, arrays, model = pooled
    arrays = dict(arrays)
    change(arrays)
    with pytest.raises(ExportInputError, match=message) as raised:
        load_samples(arrays, *io_infos(model))
    assert "\n" not in str(raised.value)


def test_dynamic_input_names_the_input_and_the_fix():
    import keras

    from export.keras_loading import io_infos

    features = keras.Input((8, 8, 3), name="features")  # batch left dynamic
    model = keras.Model(features, keras.layers.Flatten()(features), name="dyn")
    with pytest.raises(
        ExportInputError, match=r"input 'features'.*keras.Input\(shape=.*batch_size"
    ):
        io_infos(model)


def test_cli_bad_input_exits_2_with_one_line(pooled, tmp_path, capsys):
    from export.__main__ import main

    _, layer_file, path, arrays, _ = pooled
    np.savez(tmp_path / "s.npz", **{k: v[:3] for k, v in arrays.items()})
    code = main(
        ["--keras-model", str(path), "--samples", str(tmp_path / "s.npz"),
         "--out", str(tmp_path / "o"), "--custom-objects", str(layer_file)]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --samples {tmp_path / 's.npz'}: key 'features' has 3 samples; expected at least "
        "8 (some are held back as golden samples, the rest calibrate int8)"
    ]
    assert not (tmp_path / "o").exists()


def test_python_api_leaves_the_users_model_untouched(pooled, tmp_path):
    from export import export_keras_model

    _, _, _, arrays, model = pooled
    weights = [w.copy() for w in model.get_weights()]
    layers = [type(layer) for layer in model.layers]
    export_keras_model(
        model,
        arrays,
        tmp_path / "api",
        roi_layer="MaxPooledRoIPooling",
        samples_per_bin=2,
        formats=("onnx",),
        precisions=("float32",),
        progress=False,
    )
    assert [type(layer) for layer in model.layers] == layers
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))


def test_saved_layer_with_unknown_semantics_is_refused():
    from export.swap import substitute_class

    entry = {
        "class_name": "RoIPooling",
        "config": {"name": "pool", "size": [7, 7], "spatial_scale": 0.0625},
    }
    with pytest.raises(ExportInputError, match=r"layer pool \(RoIPooling\).*spatial_scale"):
        substitute_class(entry, 1)
    entry = {"class_name": "RoIPooling", "config": {"name": "pool", "trainable": True}}
    with pytest.raises(ExportInputError, match=r"no size or pool_size"):
        substitute_class(entry, 1)


def test_runtime_run_bad_inputs_are_one_line_errors(tutorial_export, tmp_path, capsys):
    from runtime.cli import main

    fresh = sample_arrays(2, HEIGHT, WIDTH, CHANNELS, ROIS, seed=3)
    cases = {
        "missing": ({k: v for k, v in fresh.items() if k != "rois"}, "inputs lack 'rois'"),
        "extra": ({**fresh, "nope": fresh["rois"]}, "unknown key(s) nope"),
        "float index": ({**fresh, "box_indexes": fresh["box_indexes"] * 1.0}, "box_indexes"),
        "mixed axes": ({**fresh, "rois": fresh["rois"][0]}, "leading sample axis"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / "x.npz", **arrays)
        argv = ["run", str(tutorial_export), "--inputs", str(tmp_path / "x.npz")]
        code = main([*argv, "--out", str(tmp_path / "y.npz")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (name, err)
    assert not (tmp_path / "y.npz").exists()


def test_coordinate_inputs_are_traced_through_single_input_layers():
    """Boxes that reach RoIPooling through a slice still count as coordinates (kept float)."""
    import keras

    from export.keras_loading import coordinate_inputs
    from models.roi_pooling import RoIPooling

    features = keras.Input((8, 8, 4), batch_size=1, name="features")
    rois = keras.Input((5, 4), batch_size=1, name="rois")
    indexes = keras.Input((5,), batch_size=1, dtype="int32", name="indexes")
    first = keras.layers.Lambda(lambda t: t[0], name="first_rois")(rois)
    first_indexes = keras.layers.Lambda(lambda t: t[0], name="first_indexes")(indexes)
    pooled = RoIPooling((3, 3))(features, first, first_indexes)
    model = keras.Model([features, rois, indexes], keras.layers.Flatten()(pooled))
    assert coordinate_inputs(model) == ("rois", "indexes")


def test_unswapped_crop_and_resize_layer_names_the_roi_layer_flag(pooled):
    from export import export_keras_model

    tmp, _, _, arrays, model = pooled  # its layer class is MaxPooledRoIPooling
    with pytest.raises(ExportCheckError, match=r"no builtin op for CropAndResize.*--roi-layer"):
        export_keras_model(
            model,
            arrays,
            tmp / "flex",
            formats=("tflite",),
            precisions=("float32",),
            progress=False,
        )
    assert not (tmp / "flex").exists()
