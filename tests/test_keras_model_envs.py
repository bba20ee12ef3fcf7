"""``python -m export --keras-model`` artifacts in throwaway device envs (tflite-runtime 2.14
without TensorFlow; ai-edge-litert + onnxruntime), built by pip like scripts/test_edge.sh: slow
(``make test-slow``), since ``make test`` installs no venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from runtime.manifest import read_manifest
from scripts.edge_envs import BACKENDS as EDGE_BACKENDS
from scripts.edge_envs import FORMATS as EDGE_FORMATS
from scripts.edge_envs import edge_env
from tests.keras_models import HELD_OUT_LAYER, import_layer_file, sample_arrays, snr_db
from tests.test_keras_model import (  # noqa: F401  (fixtures)
    CHANNELS,
    HEIGHT,
    REPO,
    ROIS,
    WIDTH,
    _cli,
    _keras_run,
    tutorial,
    tutorial_export,
)

pytestmark = pytest.mark.slow


def test_runtime_run_in_tflite_runtime_214_env(tutorial, tutorial_export, tmp_path):  # noqa: F811
    """`python -m runtime run` with only numpy<2 + tflite-runtime 2.14 reproduces the model."""
    _, _, _, _, original = tutorial
    python = _edge_env("tflite-runtime")
    device = tmp_path / "device"
    shutil.copytree(REPO / "runtime", device / "runtime", ignore=shutil.ignore_patterns("__py*"))
    shutil.copytree(tutorial_export, device / "artifacts")
    fresh = sample_arrays(3, HEIGHT, WIDTH, CHANNELS, ROIS, seed=7)
    np.savez(device / "x.npz", **fresh)
    want = _keras_run(original, fresh, 3)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for precision in ("float32", "int8"):
        proc = subprocess.run(
            [
                *(python, "-m", "runtime", "run", "artifacts", "--inputs", "x.npz"),
                *("--out", f"y_{precision}.npz", "--precision", precision),
                *("--backend", "tflite_runtime"),
            ],
            cwd=device,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        with np.load(device / f"y_{precision}.npz") as got:
            if precision == "float32":
                for name in ("class_scores", "box_deltas"):
                    assert np.max(np.abs(got[name] - want[name])) <= 1e-5, name
            else:
                assert snr_db(got["class_scores"], want["class_scores"]) >= 30.0
    proc = subprocess.run(
        [
            *(python, "-m", "runtime", "check", "artifacts", "--formats", "tflite"),
            *("--tflite-backend", "tflite_runtime"),
        ],
        cwd=device,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _edge_env(name: str) -> str:
    """The python of scripts/edge_envs.py's env ``name`` (built there if missing)."""
    return str(edge_env(name))


def test_held_out_bar_case_in_both_device_envs(tmp_path):
    """The bar: a held-out tutorial-style head (30x40x128 features, 100 RoIs, 7x7, dense class
    and box outputs) exported with the CLI; every artifact passes `runtime check` with
    tflite-runtime 2.14 and with ai-edge-litert + onnxruntime; `runtime run` on fresh inputs
    reproduces the original TF model: float32 >= 80 dB, int8 >= 20 dB SNR."""
    import keras

    height, width, channels, rois, classes = 30, 40, 128, 100, 21
    layer_file = tmp_path / "held_out_layer.py"
    layer_file.write_text(HELD_OUT_LAYER, encoding="utf-8")
    module = import_layer_file(layer_file)
    keras.utils.set_random_seed(2026)
    features = keras.Input((height, width, channels), batch_size=1, name="feature_map")
    proposals = keras.Input((4,), batch_size=rois, name="proposals")
    index = keras.Input((), batch_size=rois, dtype="int32", name="image_index")
    x = module.RoIPooling(pool_size=7, name="roi_pooling")([features, proposals, index])
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    scores = keras.layers.Dense(classes, activation="softmax", name="classes")(x)
    deltas = keras.layers.Dense(4 * (classes - 1), name="boxes")(x)
    model = keras.Model([features, proposals, index], [scores, deltas], name="frcnn_head")
    model.save(tmp_path / "head.keras")

    def arrays(count, seed):
        rng = np.random.default_rng(seed)
        shape = (count, 1, height, width, channels)
        centers = rng.uniform(0, 1, (count, rois, 2))
        extents = rng.uniform(0.05, 0.8, (count, rois, 2))
        boxes = np.concatenate([centers - extents / 2, centers + extents / 2], -1)
        return {
            "feature_map": np.maximum(rng.normal(0, 1, shape), 0).astype(np.float32),
            "proposals": np.clip(boxes, 0, 1).astype(np.float32),
            "image_index": np.zeros((count, rois), np.int32),
        }

    np.savez(tmp_path / "samples.npz", **arrays(40, 1))
    proc = _cli(
        "--keras-model", str(tmp_path / "head.keras"), "--samples", str(tmp_path / "samples.npz"),
        "--custom-objects", str(layer_file), "--out", str(tmp_path / "artifacts"), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    device = tmp_path / "device"
    shutil.copytree(REPO / "runtime", device / "runtime", ignore=shutil.ignore_patterns("__py*"))
    shutil.copytree(tmp_path / "artifacts", device / "artifacts")
    fresh = arrays(10, 777)
    np.savez(device / "fresh.npz", **fresh)
    want = _keras_run(model, fresh, 10)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs, backends = EDGE_FORMATS, EDGE_BACKENDS
    floors = {"float32": 80.0, "float16": 35.0, "dynamic_int8": 20.0, "int8": 20.0}
    for name, formats in runs.items():
        python = _edge_env(name)
        check = subprocess.run(
            [python, "-m", "runtime", "check", "artifacts", "--formats", *formats,
             "--tflite-backend", backends[name]],
            cwd=device, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        print(check.stdout)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-2000:]
        for entry in read_manifest(device / "artifacts").artifacts:
            if entry.format not in formats:
                continue
            out = f"y_{name}_{entry.format}_{entry.precision}.npz"
            backend = ["--backend", backends[name]] if entry.format == "tflite" else []
            proc = subprocess.run(
                [python, "-m", "runtime", "run", "artifacts", "--inputs", "fresh.npz", "--out", out,
                 "--format", entry.format, "--precision", entry.precision, *backend],
                cwd=device, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-2000:]
            with np.load(device / out) as got:
                for output in ("classes", "boxes"):
                    snr = snr_db(got[output], want[output])
                    print(f"{name} {entry.name} {output}: {snr:.1f} dB")
                    assert snr >= floors[entry.precision], (name, entry.name, output, snr)
