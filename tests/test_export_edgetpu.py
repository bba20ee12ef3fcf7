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
#: real compiler's output has) and its model metadata dropped (as the real compiler's output
#: lacks it: ultralytics/yolov5#9903, google-coral/edgetpu#652), "plain" copies the model
#: unchanged, "fail" exits 1. It tests the plumbing only; the compiler itself is never faked
#: into a result.
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
    graph.metadata = None  # the real compiler keeps no model metadata either
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


@pytest.fixture(scope="module")
def fake_single(fake_dir):
    """(detector.int8_io.tflite of the fake detector with its metadata, its standalone pieces)."""
    from runtime_fakes import CONFIG

    from export.detection_metadata import attach
    from export.single_file import PIECES, post_processing_pieces, single_file, stage_precisions

    stages = {
        m: (fake_dir / f"{m}.{p}.tflite").read_bytes()
        for m, p in stage_precisions("int8_io").items()
    }
    data = single_file(stages["backbone_rpn"], stages["head"], CONFIG)
    proposals, detections = post_processing_pieces(CONFIG)
    pieces = dict(zip(PIECES, (stages["backbone_rpn"], proposals, stages["head"], detections)))
    return attach(data, CONFIG.class_names, CONFIG.image_size), pieces


def test_single_file_report_says_where_the_cpu_part_starts(fake_single):
    from export.audit import tflite_ops
    from export.single_file import PIECES

    data, pieces = fake_single
    report = edgetpu_report(data, PIECES)
    rows = report["placement"]
    # Each piece's rows are its own model's ops (independently counted in the standalone
    # file), plus the conversion ops the chain puts in front of it.
    conversions = {"QUANTIZE", "DEQUANTIZE", "CAST"}
    for piece, piece_data in pieces.items():
        own = [r["op"] for r in rows if r["piece"] == piece]
        standalone = tflite_ops(piece_data)
        assert {op for op in own if op not in conversions} == set(standalone) - conversions
        assert len(own) >= sum(standalone.values())
    assert [r["piece"] for r in rows] == sorted((r["piece"] for r in rows), key=PIECES.index)
    # The integer backbone maps whole; the float proposal piece starts the CPU part.
    backbone = [r for r in rows if r["piece"] == "backbone_rpn"]
    assert all(r["where"] == "edgetpu" for r in backbone)
    first = report["first_cpu_op"]
    assert first["piece"] == "proposals" and first["op"] == "DEQUANTIZE"
    assert first["index"] == len(backbone)
    assert all(r["where"] == "cpu" for r in rows[first["index"] :])
    nms = [r for r in rows if r["op"] == "NON_MAX_SUPPRESSION_V4"]
    assert [r["piece"] for r in nms] == ["proposals", "detections"]
    assert all("not in Coral's supported ops" in r["reason"] for r in nms)
    summary = {p["piece"]: p for p in report["pieces"]}
    assert summary["backbone_rpn"]["cpu_ops"] == 0 and summary["head"]["edgetpu_ops"] == 0
    assert sum(p["edgetpu_ops"] + p["cpu_ops"] for p in report["pieces"]) == len(rows)
    assert f"CPU part starts at op #{first['index']} DEQUANTIZE of proposals" in report["cpu_part"]
    assert "NON_MAX_SUPPRESSION_V4" in report["cpu_part"]


def test_export_writes_the_single_files_edgetpu_report(exported_artifacts):
    """`python -m export`'s op report of detector.int8_io.tflite, beside the backbone's."""
    from export.single_file import PIECES
    from runtime import strict_json

    out, manifest = exported_artifacts
    entry = manifest.find("detector", "tflite", "int8_io")
    report = strict_json.loads((out / entry.op_report).read_bytes())["edgetpu"]
    assert report == edgetpu_report((out / entry.path).read_bytes(), PIECES)
    assert report["first_cpu_op"]["piece"] == "proposals"


def _with_single(directory, data: bytes):
    """Add ``data`` as detector/tflite/int8_io to the manifest of ``directory``."""
    import dataclasses

    from runtime_fakes import CONFIG

    from runtime.manifest import (
        ArtifactEntry,
        TensorSpec,
        atomic_write_bytes,
        read_manifest,
        sha256_file,
        write_manifest,
    )

    path = directory / "detector.int8_io.tflite"
    atomic_write_bytes(path, data)
    d = CONFIG.max_detections
    entry = ArtifactEntry(
        name="detector/tflite/int8_io",
        model="detector",
        format="tflite",
        precision="int8_io",
        path=path.name,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        inputs=(TensorSpec("image", (1, *CONFIG.image_size, 3), "uint8"),),
        outputs=tuple(
            TensorSpec(n, s, "float32")
            for n, s in zip(
                ("location", "category", "score", "number_of_detections"),
                ((1, d, 4), (1, d), (1, d), (1,)),
            )
        ),
    )
    manifest = read_manifest(directory)
    write_manifest(dataclasses.replace(manifest, artifacts=(*manifest.artifacts, entry)), directory)


def test_compile_edgetpu_compiles_the_single_file_and_keeps_its_metadata(
    fake_copy, fake_single, tmp_path
):
    from runtime_fakes import CONFIG

    from export.detection_metadata import LABELS_FILE, read_metadata
    from export.edgetpu import compile_edgetpu
    from runtime.flatbuffer import validate_tflite_file
    from runtime.manifest import verified_path

    _with_single(fake_copy, fake_single[0])
    manifest = compile_edgetpu(fake_copy, _fake_compiler(tmp_path, "custom"))
    compiled = {e.model: e for e in manifest.artifacts if e.precision == "int8_io_edgetpu"}
    assert set(compiled) == {"backbone_rpn", "detector"}
    entry = compiled["detector"]
    assert entry.path == "detector.int8_io_edgetpu.tflite"
    path = verified_path(fake_copy, entry)
    assert validate_tflite_file(path).edgetpu_compiled
    metadata, files = read_metadata(path.read_bytes())  # attached again after the compiler
    outputs = [t.name for t in metadata.subgraphMetadata[0].outputTensorMetadata]
    assert outputs == [b"location", b"category", b"score", b"number of detections"]
    assert files[LABELS_FILE].decode().split() == list(CONFIG.class_names)
    assert "fake" in (fake_copy / entry.op_report).read_text()


def test_a_failed_single_file_compile_writes_nothing(fake_copy, fake_single, tmp_path):
    """The backbone compiles, the detector does not: neither is written nor added."""
    import sys

    from export.edgetpu import compile_edgetpu
    from runtime.errors import RoiedgeError
    from runtime.manifest import read_manifest

    _with_single(fake_copy, fake_single[0])
    script = tmp_path / "edgetpu_compiler_half"
    text = FAKE_COMPILER.format(python=sys.executable, mode="custom")
    text = text.replace('if mode == "fail":', 'if model.name.startswith("detector"):')
    script.write_text(text, encoding="utf-8")
    script.chmod(0o755)
    before = read_manifest(fake_copy)
    with pytest.raises(RoiedgeError, match=r"failed on .*detector.int8_io.tflite \(exit 1\)"):
        compile_edgetpu(fake_copy, str(script))
    assert read_manifest(fake_copy) == before
    assert not list(fake_copy.glob("*int8_io_edgetpu*"))
