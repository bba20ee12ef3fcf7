"""Runtime backends: quantized I/O, name-bound (never positional) tensors, Edge TPU fallback."""

from __future__ import annotations

import ctypes
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import backends
from runtime.backends import BackendError, Stage, open_backend
from runtime.errors import ArtifactError, RoiedgeError
from runtime.manifest import ArtifactEntry, TensorSpec
from runtime.tolerances import TOLERANCES, tolerance_for

REPO = Path(__file__).resolve().parent.parent


def _edgetpu_present() -> bool:
    try:
        ctypes.CDLL("libedgetpu.so.1")
    except OSError:
        return False
    return True


def _frozen(function, specs):
    import tensorflow as tf

    from export.tf_private import convert_variables_to_constants_v2

    concrete = tf.function(function, input_signature=specs).get_concrete_function()
    return convert_variables_to_constants_v2(concrete), concrete


@pytest.fixture(scope="module")
def conv_models(tmp_path_factory):
    """A small conv net as Keras, plus its TFLite float32 and int8-I/O conversions."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3), batch_size=1, name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    out = keras.layers.Conv2D(4, 3, strides=2, padding="same")(x)
    model = keras.Model(inp, out)
    spec = [tf.TensorSpec((1, 16, 16, 3), tf.float32, name="image")]
    frozen, _ = _frozen(lambda image: {"result": model(image)}, spec)
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32) for _ in range(32)]
    directory = tmp_path_factory.mktemp("conv")
    paths = {}
    for kind in ("float32", "int8_io"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
        if kind == "int8_io":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([c] for c in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        paths[kind] = directory / f"conv.{kind}.tflite"
        paths[kind].write_bytes(converter.convert())
    return model, paths


def test_int8_io_backend_takes_and_returns_float_close_to_keras(conv_models):
    model, paths = conv_models
    backend = open_backend(paths["int8_io"], "tflite", "ai_edge_litert")
    (inp,) = backend.inputs
    (out,) = backend.outputs
    assert inp.dtype == "int8" and inp.scale and inp.zero_point is not None
    assert out.dtype == "int8" and out.scale
    image = np.random.default_rng(5).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    result = backend.run({inp.name: image})[out.name]
    reference = np.asarray(model(image))
    assert result.dtype == np.float32
    snr = 10 * np.log10(np.sum(reference**2) / np.sum((result - reference) ** 2))
    assert snr > 25.0, snr
    # The conversion is exactly the tensor's affine map: compare with a hand-run interpreter.
    from ai_edge_litert.interpreter import Interpreter

    raw = Interpreter(model_path=str(paths["int8_io"]))
    raw.allocate_tensors()
    detail_in, detail_out = raw.get_input_details()[0], raw.get_output_details()[0]
    scale, zero = detail_in["quantization"]
    raw.set_tensor(
        detail_in["index"], np.clip(np.round(image / scale) + zero, -128, 127).astype(np.int8)
    )
    raw.invoke()
    scale_out, zero_out = detail_out["quantization"]
    expected = (raw.get_tensor(detail_out["index"]).astype(np.float32) - zero_out) * scale_out
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def test_float_backends_agree_with_keras(conv_models):
    model, paths = conv_models
    image = np.random.default_rng(6).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    reference = np.asarray(model(image))
    for name in ("ai_edge_litert", "tensorflow"):
        backend = open_backend(paths["float32"], "tflite", name, num_threads=1)
        result = backend.run({backend.inputs[0].name: image})[backend.outputs[0].name]
        np.testing.assert_allclose(result, reference, rtol=1e-5, atol=1e-5)


def _two_input_tflite(path: Path) -> None:
    """A TFLite model whose signature declares (b, a) and returns {"y": a - 2b, "x": a + 3b}."""
    import tensorflow as tf

    specs = [
        tf.TensorSpec((2, 3), tf.float32, name="b"),
        tf.TensorSpec((2, 3), tf.float32, name="a"),
    ]
    function = tf.function(lambda b, a: {"y": a - 2.0 * b, "x": a + 3.0 * b}, input_signature=specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], tf.Module()
    )
    path.write_bytes(converter.convert())


def _two_input_onnx(path: Path) -> None:
    """The same maths as an ONNX graph with inputs (b, a) and outputs (y, x)."""
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    three = helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])
    nodes = [
        helper.make_node("Mul", ["b", "two"], ["b2"]),
        helper.make_node("Sub", ["a", "b2"], ["y"]),
        helper.make_node("Mul", ["b", "three"], ["b3"]),
        helper.make_node("Add", ["a", "b3"], ["x"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reordered",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("b", "a")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("y", "x")],
        initializer=[two, three],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _entry(fmt: str, path: Path, inputs=("a", "b"), outputs=("x", "y")) -> ArtifactEntry:
    return ArtifactEntry(
        name=f"toy/{fmt}",
        model="head",
        format=fmt,
        precision="float32",
        path=path.name,
        sha256="",
        bytes=0,
        inputs=tuple(TensorSpec(n, (2, 3), "float32") for n in inputs),
        outputs=tuple(TensorSpec(n, (2, 3), "float32") for n in outputs),
    )


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_stage_binds_tensors_by_name_not_position(tmp_path, fmt):
    path = tmp_path / f"toy.{fmt}"
    (_two_input_tflite if fmt == "tflite" else _two_input_onnx)(path)
    backend = open_backend(path, fmt)
    stage = Stage(_entry(fmt, path), backend, path)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 10.0, np.float32)
    x, y = stage.run(a, b)
    np.testing.assert_allclose(x, a + 3 * b)
    np.testing.assert_allclose(y, a - 2 * b)
    # The manifest's order is its own: swapping it swaps what run() expects and returns.
    swapped = Stage(_entry(fmt, path, inputs=("b", "a"), outputs=("y", "x")), backend, path)
    y2, x2 = swapped.run(b, a)
    np.testing.assert_allclose(x2, x)
    np.testing.assert_allclose(y2, y)


def test_stage_rejects_unknown_tensor_name_and_wrong_shape(tmp_path):
    path = tmp_path / "toy.tflite"
    _two_input_tflite(path)
    backend = open_backend(path, "tflite")
    with pytest.raises(ArtifactError, match="'c' is not a tensor of this file"):
        Stage(_entry("tflite", path, inputs=("a", "c")), backend, path)
    entry = _entry("tflite", path)
    wrong = dataclasses.replace(entry, inputs=(TensorSpec("a", (3, 3), "float32"), entry.inputs[1]))
    with pytest.raises(ArtifactError, match=r"has shape \(2, 3\); the manifest expects \(3, 3\)"):
        Stage(wrong, backend, path)


def test_backend_choice_errors(tmp_path):
    path = tmp_path / "toy.tflite"
    _two_input_tflite(path)
    with pytest.raises(BackendError, match="backend 'nope' unknown"):
        open_backend(path, "tflite", "nope")
    with pytest.raises(BackendError, match="runs onnx files, not tflite"):
        open_backend(path, "tflite", "onnxruntime")
    assert set(backends.backend_names()) >= {
        "ai_edge_litert",
        "tflite_runtime",
        "tensorflow",
        "onnxruntime",
    }
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(ArtifactError, match=r"garbage\.tflite: not a structurally valid TFLite"):
        open_backend(garbage, "tflite", "ai_edge_litert")
    with pytest.raises(ArtifactError, match=r"garbage\.onnx: onnxruntime cannot load it"):
        (tmp_path / "garbage.onnx").write_bytes(b"junk")
        open_backend(tmp_path / "garbage.onnx", "onnx")


def with_edgetpu_opcode(source: Path, target: Path) -> None:
    """A copy of ``source`` listing edgetpu_compiler's custom op among its operator codes.

    Test data only (the compiler cannot be installed here): the runtime must treat any model
    carrying the op as compiled, since the op has no CPU kernel.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(source.read_bytes()))
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = b"edgetpu-custom-op"
    code.version = 1
    model.operatorCodes.append(code)
    target.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


@pytest.mark.skipif(_edgetpu_present(), reason="an Edge TPU runtime is installed here")
def test_edgetpu_modes_tell_compiled_from_uncompiled_models(tmp_path, capsys):
    path = tmp_path / "toy.tflite"
    _two_input_tflite(path)
    backend = open_backend(path, "tflite", "ai_edge_litert", edgetpu="try")
    assert backend.delegate is None and not backend.summary.edgetpu_compiled
    err = capsys.readouterr().err
    assert "warning: toy.tflite was not compiled by edgetpu_compiler" in err
    assert "running it on the CPU" in err
    a = np.ones((2, 3), np.float32)
    names = {t.name for t in backend.inputs}
    assert len(backend.run(dict.fromkeys(names, a))) == 2
    with pytest.raises(BackendError, match=r"toy\.tflite was not compiled by edgetpu_compiler"):
        open_backend(path, "tflite", "ai_edge_litert", edgetpu="require")
    compiled = tmp_path / "toy_edgetpu.tflite"
    with_edgetpu_opcode(path, compiled)
    for mode in ("off", "try", "require"):  # no CPU kernel: the delegate is needed in every mode
        with pytest.raises(BackendError, match=r"libedgetpu\.so\.1 could not be loaded"):
            open_backend(compiled, "tflite", "ai_edge_litert", edgetpu=mode)


def test_edgetpu_delegate_is_used_when_loadable():
    """With a (fake) loadable delegate, it is returned and no CPU fallback message is printed."""

    loaded: list[str] = []

    class FakeModule:
        @staticmethod
        def load_delegate(library):
            loaded.append(library)
            return "delegate"

    original = ctypes.CDLL
    ctypes.CDLL = lambda name: None  # pretend the library is on this machine
    try:
        assert backends.load_edgetpu_delegate(FakeModule, required=True) == "delegate"
    finally:
        ctypes.CDLL = original
    assert loaded == ["libedgetpu.so.1"]


def test_every_exported_precision_has_a_tolerance():
    """The export's artifact table and the tolerance table agree (each read where it lives)."""
    from export.formats import PRECISIONS

    assert {t.precision for t in TOLERANCES} == set(PRECISIONS)
    with pytest.raises(RoiedgeError, match="no tolerance defined for precision 'int4'"):
        tolerance_for("int4")


def test_runtime_imports_no_tensorflow_keras_or_sibling_packages():
    """Importing every runtime module (and running the CLI's parser) loads no TF/Keras/models/export."""
    modules = sorted(
        f"runtime.{p.stem}"
        for p in (REPO / "runtime").glob("*.py")
        if p.stem not in ("__init__", "__main__")
    )
    assert {"runtime.backends", "runtime.detector", "runtime.check", "runtime.cli"} <= set(modules)
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import runtime.backends as b\n"
        "[c.available() for c in b._REGISTRY.values()]\n"
        "from runtime.cli import _parser; _parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'models', 'export', 'tf_keras', 'tensorboard'))\n"
        "print('LOADED', bad)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr


def test_tflite_backend_preference_and_fallback(tmp_path, monkeypatch):
    """ai_edge_litert first, then tflite_runtime, then (lazily) tensorflow; a clear error if none."""
    path = tmp_path / "toy.tflite"
    _two_input_tflite(path)
    assert open_backend(path, "tflite").name == "ai_edge_litert"
    monkeypatch.setattr(backends.LiteRTBackend, "available", classmethod(lambda cls: False))
    monkeypatch.setattr(backends.TFLiteRuntimeBackend, "available", classmethod(lambda cls: False))
    fallback = open_backend(path, "tflite")
    assert fallback.name == "tensorflow"
    a = np.ones((2, 3), np.float32)
    assert len(fallback.run(dict.fromkeys((t.name for t in fallback.inputs), a))) == 2
    monkeypatch.setattr(backends.TensorFlowLiteBackend, "available", classmethod(lambda cls: False))
    with pytest.raises(BackendError, match="no tflite interpreter installed; expected one of"):
        open_backend(path, "tflite")
    with pytest.raises(BackendError, match="backend 'tflite_runtime' is not installed"):
        open_backend(path, "tflite", "tflite_runtime")


def test_load_image_accepts_paths_pil_and_arrays_and_rejects_others(tmp_path):
    from PIL import Image

    from runtime.images import load_image

    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 200
    path = tmp_path / "x.png"
    Image.fromarray(rgba).save(path)
    from_path = load_image(path)
    assert from_path.shape == (5, 7, 3) and from_path.dtype == np.uint8
    assert (from_path[..., 0] == 200).all()
    gray = Image.fromarray(np.full((4, 6), 9, np.uint8))
    assert load_image(gray).shape == (4, 6, 3)
    with pytest.raises(RoiedgeError, match=r"shape \(4, 6\) and dtype uint8; expected HxWx3 uint8"):
        load_image(np.zeros((4, 6), np.uint8))
    with pytest.raises(RoiedgeError, match="dtype float32; expected HxWx3 uint8"):
        load_image(np.zeros((4, 6, 3), np.float32))


def test_float_into_an_unscaled_integer_input_is_refused():
    """int32 box indexes have no quantization scale: 2.7 must not silently become 2."""
    info = backends.TensorInfo("box_indexes", (3,), "int32")
    with pytest.raises(BackendError, match=r"'box_indexes' is float32 .* int32 without a"):
        backends.to_stored(np.array([0.0, 2.7, 1.0], np.float32), info, "ai_edge_litert")
    stored = backends.to_stored(np.array([0, 2, 1]), info, "ai_edge_litert")
    assert stored.dtype == np.int32 and stored.tolist() == [0, 2, 1]
    # with a scale, floats are quantized (round half to even, then clipped to int8)
    scaled = backends.TensorInfo("image", (3,), "int8", scale=0.5, zero_point=-1)
    quantized = backends.to_stored(np.array([1.0, 100.0, -0.25]), scaled, "x")
    assert quantized.tolist() == [1, 127, -1]
    np.testing.assert_allclose(backends.from_stored(quantized, scaled), [1.0, 64.0, 0.0])
