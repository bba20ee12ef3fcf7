"""The Edge TPU report applies the compiler's documented rules; `python -m export edgetpu`."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_fakes import to_tflite

from export.edgetpu import INSTALL_HINT, edgetpu_report
from export.edgetpu import main as edgetpu_main


@pytest.fixture(scope="module")
def pool_concat_model():
    """A tiny full-int8 (int8 in/out) model: conv -> max pool -> concatenation -> conv."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 4), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    joined = keras.layers.Concatenate()([x, x * 0.5])
    x = keras.layers.Conv2D(4, 1)(joined)
    model = keras.Model(image, [x, joined])
    rng = np.random.default_rng(0)
    calibration = [[rng.uniform(0, 1, (1, 8, 8, 4)).astype(np.float32)] for _ in range(16)]
    return to_tflite(model, (("image",), ("out", "joined")), "int8_io", calibration)


def _edited(data: bytes, edit) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    edit(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_index(data: bytes, name: str) -> int:
    return next(r["index"] for r in edgetpu_report(data)["placement"] if r["op"] == name)


def test_placement_applies_the_compiler_rules(pool_concat_model):
    clean = edgetpu_report(pool_concat_model)
    ops = [r["op"] for r in clean["placement"]]
    assert "MAX_POOL_2D" in ops and "CONCATENATION" in ops
    assert clean["likely_fully_mapped"] and clean["cpu_ops"] == 0 and clean["first_cpu_op"] is None

    pool = _op_index(pool_concat_model, "MAX_POOL_2D")

    def fuse_relu(model):
        model.subgraphs[0].operators[pool].builtinOptions.fusedActivationFunction = 1  # RELU

    report = edgetpu_report(_edited(pool_concat_model, fuse_relu))
    rows = report["placement"]
    assert all(r["where"] == "edgetpu" for r in rows[:pool])
    assert rows[pool]["where"] == "cpu" and "fused activation" in rows[pool]["reason"]
    assert all(r["where"] == "cpu" for r in rows[pool:])  # the first unmapped op cuts the graph
    assert "after the first unmapped op" in rows[-1]["reason"]
    assert report["first_cpu_op"]["op"] == "MAX_POOL_2D" and not report["likely_fully_mapped"]

    concat = _op_index(pool_concat_model, "CONCATENATION")

    def batch_of_two(model):  # an activation with a 4th non-unit dimension
        graph = model.subgraphs[0]
        tensor = graph.tensors[graph.operators[concat].outputs[0]]
        tensor.shape = np.array([2, 4, 4, 8], dtype=np.int32)
        tensor.shapeSignature = None

    rows = edgetpu_report(_edited(pool_concat_model, batch_of_two))["placement"]
    assert rows[concat]["where"] == "cpu"
    assert "non-unit dimension outside the 3 innermost" in rows[concat]["reason"]
    assert all(r["where"] == "edgetpu" for r in rows[:concat])


def test_export_edgetpu_without_the_compiler_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    from export.__main__ import main as export_main

    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler on this PATH, on any host
    for run in (
        lambda: edgetpu_main([str(tmp_path)]),
        lambda: export_main(["edgetpu", str(tmp_path)]),
    ):
        assert run() == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"error: {INSTALL_HINT}"]
        assert "apt-get install edgetpu-compiler" in lines[0]


#: A stand-in for edgetpu_compiler (``--show_operations --out_dir DIR MODEL``): MODE "custom"
#: writes MODEL_edgetpu.tflite with its first op code turned into edgetpu-custom-op (what the
#: real compiler's output has), "plain" copies the model unchanged, "fail" exits 1.
FAKE_COMPILER = """#!{python}
import sys
from pathlib import Path

from tensorflow.lite.tools import flatbuffer_utils

mode = "{mode}"
out_dir, model = Path(sys.argv[sys.argv.index("--out_dir") + 1]), Path(sys.argv[-1])
if mode == "fail":
    print("Internal compiler error. Aborting!", file=sys.stderr)
    sys.exit(1)
print("Edge TPU Compiler version 16.0 (fake)")
data = model.read_bytes()
if mode == "custom":
    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph.operatorCodes[0].builtinCode = 32
    graph.operatorCodes[0].deprecatedBuiltinCode = 32
    graph.operatorCodes[0].customCode = b"edgetpu-custom-op"
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(graph))
(out_dir / (model.stem + "_edgetpu.tflite")).write_bytes(data)
"""


def _fake_compiler(tmp_path, mode: str) -> str:
    import sys

    path = tmp_path / f"edgetpu_compiler_{mode}"
    path.write_text(FAKE_COMPILER.format(python=sys.executable, mode=mode), encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def test_compile_edgetpu_adds_the_compiled_backbone_to_the_manifest(fake_copy, tmp_path):
    from export.edgetpu import compile_edgetpu
    from runtime.flatbuffer import validate_tflite_file
    from runtime.manifest import read_manifest, sha256_file, verified_path

    before = read_manifest(fake_copy)
    manifest = compile_edgetpu(fake_copy, _fake_compiler(tmp_path, "custom"))
    entry = manifest.find("backbone_rpn", "tflite", "int8_io_edgetpu")
    path = verified_path(fake_copy, entry)  # sha256 and bytes as the manifest says
    assert entry.sha256 == sha256_file(path)
    assert validate_tflite_file(path).edgetpu_compiled
    source = before.find("backbone_rpn", "tflite", "int8_io")
    assert (entry.inputs, entry.outputs) == (source.inputs, source.outputs)
    assert "fake" in (fake_copy / entry.op_report).read_text()
    assert read_manifest(fake_copy) == manifest  # written, and every earlier artifact kept
    assert {e.name for e in manifest.artifacts} == {e.name for e in before.artifacts} | {entry.name}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fail", r"failed on .*int8_io.tflite \(exit 1\): Internal compiler error"),
        ("plain", r"maps no op to the Edge TPU \(no edgetpu-custom-op\)"),
    ],
)
def test_compile_edgetpu_refuses_a_failed_or_unmapped_compile(fake_copy, tmp_path, mode, message):
    from export.edgetpu import compile_edgetpu
    from runtime.errors import RoiedgeError
    from runtime.manifest import read_manifest

    before = read_manifest(fake_copy)
    with pytest.raises(RoiedgeError, match=message):
        compile_edgetpu(fake_copy, _fake_compiler(tmp_path, mode))
    assert read_manifest(fake_copy) == before  # nothing half-added
    assert not (fake_copy / "backbone_rpn.int8_io_edgetpu.tflite").exists()
