"""Messages of ``python -m export --keras-model`` found with third-party models: Keras load errors
with their real cause, plain functions as custom objects, a build crash as one line (exit 1)."""

from __future__ import annotations

import textwrap

import keras
import numpy as np
import pytest

from export.config import ExportInputError

LAYER_FILE = textwrap.dedent(
    """
    import keras


    def scaled_relu(x):
        return keras.ops.relu(x) * 0.5


    class Scale(keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            if factor == 2.0:
                raise ValueError("factor must not be 2.0 (got 2.0)")
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}
    """
)


def _model_file(tmp_path, factor: float):
    """A saved model using a custom layer (``factor``) and a custom activation function."""
    import importlib.util
    import sys

    layer_file = tmp_path / "user_objects.py"
    layer_file.write_text(LAYER_FILE.replace("== 2.0", "== -1.0"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("user_objects_save", layer_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    features = keras.Input((4,), batch_size=1, name="x")
    hidden = keras.layers.Dense(3, activation=module.scaled_relu, name="fc")(features)
    model = keras.Model(features, module.Scale(factor, name="scale")(hidden), name="user")
    path = tmp_path / f"user_{factor}.keras"
    model.save(path)
    layer_file.write_text(LAYER_FILE, encoding="utf-8")  # the file the user passes
    return path, layer_file


def test_custom_objects_register_plain_functions(tmp_path):
    from export.keras_loading import load_keras_model

    path, layer_file = _model_file(tmp_path, 3.0)
    loaded = load_keras_model(path, [layer_file], "RoIPooling", 1)
    assert loaded.original is not None
    out = np.asarray(loaded.original(np.ones((1, 4), np.float32)))
    assert out.shape == (1, 3)


def test_load_errors_name_the_real_cause_in_one_line(tmp_path):
    from export.keras_loading import load_keras_model

    path, layer_file = _model_file(tmp_path, 2.0)  # the user's __init__ refuses it on load
    with pytest.raises(ExportInputError) as raised:
        load_keras_model(path, [layer_file], "RoIPooling", 1)
    text = str(raised.value)
    assert "\n" not in text and "factor must not be 2.0" in text
    with pytest.raises(ExportInputError) as raised:  # without the file: which class is missing
        load_keras_model(path, [], "RoIPooling", 1)
    text = str(raised.value)
    assert "\n" not in text and "Could not locate function 'scaled_relu'" in text
    assert text.endswith("pass --custom-objects FILE.py defining it")


def test_a_build_crash_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    """A converter/calibrator crash (here: the RuntimeError int8 calibration raised for an
    unswapped keras-frcnn layer) fails the build in one line with its cause."""
    from export import pipeline
    from export.__main__ import main
    from models.roi_pooling import RoIPooling
    from tests.keras_models import head_model, sample_arrays

    model = head_model(RoIPooling((3, 3), name="pool"), 8, 8, 2, 4, name="crashy")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "s.npz", **sample_arrays(8, 8, 8, 2, 4, seed=1))

    def crash(*args, **kwargs):
        raise RuntimeError(
            "tensorflow/lite/kernels/reshape.cc:94 num_input_elements != num_output_elements "
            "(1008 != 8)\nNode number 11 (RESHAPE) failed to prepare."
        )

    monkeypatch.setattr(pipeline, "build_one", crash)
    code = main(
        ["--keras-model", str(tmp_path / "m.keras"), "--samples", str(tmp_path / "s.npz"),
         "--out", str(tmp_path / "o"), "--formats", "tflite", "--precisions", "int8",
         "--no-progress"]
    )  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if "failed" in line]
    assert code == 1
    assert err == [
        "export check failed: crashy/tflite/int8: the build crashed (RuntimeError: Node number "
        "11 (RESHAPE) failed to prepare.)"
    ]
    assert not (tmp_path / "o").exists()
