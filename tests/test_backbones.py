"""``models.train --backbone mobilenet_v2``: the config it records, the weights file it loads,
what it refuses, and (slow) a trained detector through export and ``runtime check``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.config import DetectorConfig

SIZE = (64, 96)  # the smallest sides keras.applications' MobileNetV2 takes are 32


def _train_cli(*flags, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "models.train", *map(str, flags)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return lines[0]


def test_feature_layer_is_found_in_the_architecture_at_stride_16():
    import keras

    from models.backbones import feature_layer
    from models.detector import detector_config

    found = feature_layer("mobilenet_v2", SIZE)
    # Independently: the deepest residual Add of MobileNetV2 before its last downsampling.
    model = keras.applications.MobileNetV2(input_shape=(*SIZE, 3), include_top=False, weights=None)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    at_16 = [add for add in adds if add.output.shape[1] == SIZE[0] // 16]
    assert found.name == at_16[-1].name == "block_12_add"
    assert (found.stride, found.channels) == (16, at_16[-1].output.shape[-1])
    config = detector_config(SIZE, ("a", "b"), "mobilenet_v2")
    assert (config.stride, config.feature_channels, config.backbone) == (16, 96, "mobilenet_v2")
    assert config.feature_size == (4, 6)
    assert DetectorConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["backbone"] == "mobilenet_v2"


def test_tiny_backbone_is_the_default_and_old_configs_read_as_tiny():
    from models.detector import detector_config

    assert detector_config() == DetectorConfig() and DetectorConfig().backbone == "tiny"
    assert "backbone" not in DetectorConfig().to_dict()  # older runtimes read it unchanged
    with pytest.raises(Exception, match="backbone"):
        DetectorConfig(backbone="Mobile Net!")


def test_weights_file_is_loaded_and_foreign_files_are_refused(tmp_path):
    import keras

    from models.backbones import BackboneError, feature_extractor

    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV2(input_shape=(*SIZE, 3), include_top=False, weights=None)
    for variable in source.weights:  # BN statistics too, so nothing equals a fresh init
        variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype("float32"))
    keras3 = tmp_path / "mnv2.weights.h5"
    source.save_weights(keras3)
    legacy = tmp_path / "mnv2_no_top.h5"  # the layout of the ImageNet files
    source.save(legacy)
    whole = tmp_path / "mnv2.keras"
    source.save(whole)
    wanted = {w.path: np.asarray(w) for w in source.weights}
    for path in (keras3, legacy, whole):
        loaded = feature_extractor("mobilenet_v2", SIZE, str(path))
        assert loaded.weights
        for weight in loaded.weights:
            np.testing.assert_array_equal(np.asarray(weight), wanted[weight.path])

    other = keras.applications.MobileNetV2(
        input_shape=(*SIZE, 3), include_top=False, weights=None, alpha=0.35
    )
    foreign = tmp_path / "alpha035.weights.h5"
    other.save_weights(foreign)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    for bad in (foreign, garbage):
        with pytest.raises(BackboneError, match="--backbone-weights") as caught:
            feature_extractor("mobilenet_v2", SIZE, str(bad))
        assert "\n" not in str(caught.value) and str(bad) in str(caught.value)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--backbone", "mobilenet_v2", "--backbone-weights", "missing.h5"], "no such file"),
        (["--backbone", "mobilenet_v2", "--backbone-weights", "w.txt"], ".h5/.hdf5/.keras"),
        (["--backbone-weights", "w.h5"], "tiny backbone"),
        (["--backbone", "mobilenet_v2", "--image-size", "16", "64"], "sides >= 32"),
        (["--backbone", "mobilenet_v2", "--image-size", "120", "160"], "multiples of its stride"),
    ],
)
def test_backbone_flags_are_refused_in_one_line_before_training(tmp_path, flags, named):
    out = tmp_path / "m.keras"
    line = _one_error_line(_train_cli("--out", out, "--epochs", "1", *flags, timeout=120))
    assert named in line
    assert not out.exists()


def test_unknown_backbone_is_refused_by_argparse(tmp_path):
    done = _train_cli("--out", tmp_path / "m.keras", "--backbone", "resnet9", timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr


@pytest.mark.slow  # trains MobileNetV2 (~1-2 min) and exports every precision (~3 min)
def test_mobilenet_v2_detector_trains_exports_and_checks(tmp_path):
    from coco_fixtures import write_dataset

    from models.detector import load_detector

    dataset = write_dataset(tmp_path / "data", 6, seed=4)
    model = tmp_path / "mnv2.keras"
    done = _train_cli(
        "--data", dataset, "--image-size", 96, 96, "--backbone", "mobilenet_v2",
        "--anchor-ratios", 1.0, 2.0, "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 2,
        "--warmup-steps", 1, "--out", model,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "anchor coverage:" in done.stderr
    config = load_detector(model).config
    assert (config.backbone, config.stride, config.anchor_ratios) == (
        "mobilenet_v2",
        16,
        (1.0, 2.0),
    )
    artifacts = tmp_path / "artifacts"
    export = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(model), "--out", str(artifacts),
         "--calibration", str(dataset), "--golden-samples", "2", "--val-images", "10",
         "--no-progress"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["detector"] == config.to_dict()
    names = {a["name"] for a in manifest["artifacts"]}
    assert {"backbone_rpn/tflite/int8", "backbone_rpn/tflite/int8_io", "head/tflite/int8"} <= names
    check = subprocess.run(
        [sys.executable, "-m", "runtime", "check", str(artifacts)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
    assert "FAIL" not in check.stdout
