"""End-to-end export: every artifact of the table, checked with independent code.

Uses the session-wide export of the shipped detector (tests/conftest.py, small calibration);
each artifact is re-run here with ai-edge-litert / onnxruntime through the tensor names the
manifest gives, against golden outputs that are re-computed here with Keras.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.config import ExportCheckError, ExportConfig
from export.formats import ARTIFACTS, ONNX_OPSET
from runtime import strict_json
from runtime.manifest import (
    manifest_from_dict,
    manifest_to_dict,
    read_manifest,
    verified_path,
)
from runtime.tolerances import tolerance_for

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_path() -> Path:
    from models.detector import SHIPPED

    return SHIPPED


@pytest.fixture(scope="module")
def exported(exported_artifacts):
    """The session export of the shipped detector (tests/conftest.py): every table artifact."""
    return exported_artifacts


def _golden(out: Path, manifest, model: str) -> dict[str, np.ndarray]:
    with np.load(out / manifest.golden[model], allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _run_tflite(path: Path, entry, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Plain Interpreter API by tensor name (what tflite-runtime 2.14 offers), no signatures."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    by_name_in = {d["name"]: d for d in interpreter.get_input_details()}
    by_name_out = {d["name"]: d for d in interpreter.get_output_details()}
    for spec, value in zip(entry.inputs, inputs):
        details = by_name_in[spec.name]
        assert np.dtype(details["dtype"]).name == spec.dtype
        scale, zero_point = details["quantization"]
        if spec.dtype == "int8":
            value = np.clip(np.round(value / scale + zero_point), -128, 127)
        interpreter.set_tensor(details["index"], np.asarray(value).astype(spec.dtype))
    interpreter.invoke()
    outputs = []
    for spec in entry.outputs:
        details = by_name_out[spec.name]
        value = interpreter.get_tensor(details["index"])
        if spec.dtype == "int8":
            scale, zero_point = details["quantization"]
            value = (value.astype(np.float32) - zero_point) * scale
        outputs.append(np.asarray(value, np.float32))
    return outputs


def _run_onnx(path: Path, entry, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {spec.name: np.asarray(v).astype(spec.dtype) for spec, v in zip(entry.inputs, inputs)}
    return session.run([spec.name for spec in entry.outputs], feed)


def _snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - actual) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference**2.0)) / noise)


def test_manifest_lists_every_table_artifact_and_round_trips(exported):
    out, manifest = exported
    # The stage table, plus one single-file detector per TFLite precision both stages have.
    stage_names = {a.name for a in ARTIFACTS}
    tflite_precisions = {a.precision for a in ARTIFACTS if a.format == "tflite"}
    single_names = {f"detector/tflite/{p}" for p in tflite_precisions}
    assert {e.name for e in manifest.artifacts} == stage_names | single_names
    reread = read_manifest(out)
    assert reread == manifest
    assert manifest_from_dict(json.loads(json.dumps(manifest_to_dict(manifest)))) == manifest
    for entry in manifest.artifacts:
        path = verified_path(out, entry)
        assert path.stat().st_size == entry.bytes
        assert (out / entry.op_report).is_file()
    assert set(manifest.golden) == {"backbone_rpn", "head", "detector"}
    assert manifest.detector["num_proposals"] > 0 and "class_names" in manifest.detector
    for key in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        assert manifest.versions[key]
    # nothing but the published tree is left next to --out
    assert sorted(p.name for p in out.parent.iterdir()) == ["artifacts"]


def test_golden_data_is_the_float_keras_output(exported, model_path):
    import tensorflow as tf

    from models.detector import load_detector

    out, manifest = exported
    detector = load_detector(model_path)
    stages = {"backbone_rpn": detector.backbone_rpn, "head": detector.head}
    for model, keras_model in stages.items():
        golden = _golden(out, manifest, model)
        entry = manifest.find(model, "tflite", "float32")
        n_in, n_out = len(entry.inputs), len(entry.outputs)
        assert sorted(golden) == sorted(
            [f"input_{i}" for i in range(n_in)] + [f"output_{j}" for j in range(n_out)]
        )
        samples = golden["input_0"].shape[0]  # samples stacked on a leading axis
        assert samples >= 1
        for i in range(n_in):
            assert golden[f"input_{i}"].shape == (samples, *entry.inputs[i].shape)
        for s in range(samples):
            inputs = [tf.constant(golden[f"input_{i}"][s]) for i in range(n_in)]
            outs = keras_model(inputs if n_in > 1 else inputs[0], training=False)
            for j in range(n_out):
                np.testing.assert_allclose(
                    golden[f"output_{j}"][s], np.asarray(outs[j]), rtol=1e-5, atol=1e-5
                )
    head = _golden(out, manifest, "head")
    proposals = head["input_1"]
    assert proposals.min() >= 0 and proposals.max() <= 1 and np.any(proposals > 0)


@pytest.fixture(scope="module")
def fresh(exported, model_path):
    """Per stage: (inputs, float Keras outputs) on 4 procedural images the export never saw
    (neither calibration nor golden: split 9 of seed 2027), run by Keras here."""
    from export.calibration import stage_samples
    from models.data import make_batch
    from models.detector import load_detector

    detector = load_detector(model_path)
    images = make_batch(2027, 9, 0, 4).images
    inputs = stage_samples(detector, images)
    models = {"backbone_rpn": detector.backbone_rpn, "head": detector.head}
    result = {}
    for stage, rows in inputs.items():
        outputs = []
        for row in rows:
            outs = models[stage](row if len(row) > 1 else row[0], training=False)
            outputs.append([np.asarray(o, np.float32) for o in outs])
        result[stage] = (rows, outputs)
    return result


@pytest.mark.parametrize("name", [a.name for a in ARTIFACTS])
def test_artifact_reproduces_keras_on_fresh_inputs(exported, fresh, name):
    """Each artifact on inputs the export's own golden check never saw, against float Keras
    run here (not the golden files the export wrote and judged itself)."""
    out, manifest = exported
    entry = next(e for e in manifest.artifacts if e.name == name)
    rows, keras_outputs = fresh[entry.model]
    run = _run_tflite if entry.format == "tflite" else _run_onnx
    path = out / entry.path
    results = [run(path, entry, row) for row in rows]
    tolerance = tolerance_for(entry.precision)
    for j, spec in enumerate(entry.outputs):
        actual = np.stack([r[j] for r in results]).astype(np.float64)
        reference = np.stack([o[j] for o in keras_outputs]).astype(np.float64)
        assert actual.shape == reference.shape
        max_abs = float(np.max(np.abs(actual - reference)))
        bound = tolerance.max_abs_bound(float(np.max(np.abs(reference))))
        if bound is not None:
            assert max_abs <= bound, f"{name} {spec.name}: max abs {max_abs:.3g} > {bound:.3g}"
        if tolerance.min_snr_db is not None:
            snr = _snr_db(reference, actual)
            assert snr >= tolerance.min_snr_db, f"{name} {spec.name}: SNR {snr:.1f} dB"
        if entry.model == "head" and j == 0 and tolerance.min_top1_agreement is not None:
            agree = float(np.mean(actual.argmax(-1) == reference.argmax(-1)))
            assert agree >= tolerance.min_top1_agreement, f"{name}: top-1 {agree:.3f}"


def test_tflite_artifacts_use_builtin_ops_only(exported):
    from ai_edge_litert.interpreter import Interpreter

    out, manifest = exported
    for entry in manifest.artifacts:
        if entry.format != "tflite":
            continue
        interpreter = Interpreter(model_path=str(out / entry.path))
        names = {op["op_name"] for op in interpreter._get_ops_details()}
        assert names, entry.name
        assert not {n for n in names if "Flex" in n or "CUSTOM" in n.upper()}, entry.name
        if entry.model == "head":
            assert "GATHER" in names and "MAX_POOL_2D" in names  # RoIPooling lowered to builtins


def test_onnx_artifacts_are_loop_free_valid_and_pinned_to_one_opset(exported):
    import onnx

    out, manifest = exported
    for entry in manifest.artifacts:
        if entry.format != "onnx":
            continue
        model = onnx.load(out / entry.path)
        onnx.checker.check_model(model, full_check=True)
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {
            ONNX_OPSET
        }
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"Loop", "Scan", "If"}, entry.name
        if entry.precision == "int8":
            assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_int8_head_keeps_coordinate_inputs_out_of_quantization(exported):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    out, manifest = exported
    entry = manifest.find("head", "tflite", "int8")
    interpreter = Interpreter(model_path=str(out / entry.path))
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    coordinate = {
        d["index"]
        for d in interpreter.get_input_details()
        if d["name"] in (entry.inputs[1].name, entry.inputs[2].name)
    }
    assert len(coordinate) == 2
    ops = interpreter._get_ops_details()
    consumers = [op for op in ops if coordinate & set(op["inputs"])]
    assert consumers and all(op["op_name"] != "QUANTIZE" for op in consumers)
    # every consumer of the box coordinates computes in float32/int32
    for op in consumers:
        for index in (*op["inputs"], *op["outputs"]):
            if index >= 0:
                assert np.dtype(tensors[index]["dtype"]) in (np.float32, np.int32), op
    # ...while the feature path is int8
    int8_ops = [
        op
        for op in ops
        if op["op_name"] in ("FULLY_CONNECTED", "GATHER", "MAX_POOL_2D")
        and np.dtype(tensors[op["outputs"][0]]["dtype"]) == np.int8
    ]
    assert {op["op_name"] for op in int8_ops} == {"FULLY_CONNECTED", "GATHER", "MAX_POOL_2D"}

    entry = manifest.find("head", "onnx", "int8")
    graph = onnx.load(out / entry.path).graph
    names = {entry.inputs[1].name, entry.inputs[2].name}
    quantized_inputs = [
        n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in names
    ]
    assert quantized_inputs == []
    # ...while the dense layers run on int8 (QDQ) operands
    producer = {o: n for n in graph.node for o in n.output}
    dense = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert dense
    for node in dense:
        assert all(producer[i].op_type == "DequantizeLinear" for i in node.input[:2]), node.name


def test_onnx_int8_head_pools_in_float_and_runs_its_dense_layers_on_integer_kernels(
    exported, tmp_path
):
    """What onnxruntime makes of the int8 head: QGemm for every dense layer, while RoIPooling's
    MaxPool (and the transposes around it) is fed float, not uint8 (uint8 MaxPool is a slow
    generic kernel), and the score Softmax runs on dequantized logits."""
    import onnx
    import onnxruntime as ort

    out, manifest = exported
    dense = sum(
        n.op_type in ("Gemm", "MatMul")
        for n in onnx.load(out / manifest.find("head", "onnx", "float32").path).graph.node
    )
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    entry = manifest.find("head", "onnx", "int8")
    ort.InferenceSession(str(out / entry.path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(tmp_path / "optimized.onnx").graph
    producer = {o: n for n in graph.node for o in n.output}
    assert sum(n.op_type == "QGemm" for n in graph.node) == dense > 0
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    assert pools
    for node in pools:
        source = producer.get(node.input[0])
        while source is not None and source.op_type in ("Transpose", "ReorderInput", "Reshape"):
            source = producer.get(source.input[0])
        # uint8 producers: QuantizeLinear and the fused integer kernels (QLinearAdd, ...)
        assert source is not None and source.op_type != "QuantizeLinear", node.name
        assert not source.op_type.startswith("QLinear"), (node.name, source.op_type)
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmax and all(producer[n.input[0]].op_type == "DequantizeLinear" for n in softmax)


def test_int8_artifacts_are_at_most_0_3x_float32(exported):
    _, manifest = exported
    for entry in manifest.artifacts:
        if entry.precision in ("int8", "int8_io"):
            reference = manifest.find(entry.model, entry.format, "float32")
            ratio = entry.bytes / reference.bytes
            assert ratio <= 0.3, f"{entry.name}: {ratio:.3f} x float32"


def test_op_reports_count_ops_and_check_edgetpu(exported):
    out, manifest = exported
    for entry in manifest.artifacts:
        report = strict_json.loads((out / entry.op_report).read_text())
        assert report["artifact"] == entry.name
        assert sum(report["ops"].values()) == report["op_count"] > 0
    int8_io = manifest.find("backbone_rpn", "tflite", "int8_io")
    assert [s.dtype for s in (*int8_io.inputs, *int8_io.outputs)] == ["int8"] * 4
    edgetpu = json.loads((out / int8_io.op_report).read_text())["edgetpu"]
    assert "coral.ai" in edgetpu["source"]
    assert edgetpu["non_int8_activation_tensors"] == []
    assert edgetpu["dynamic_shape_tensors"] == []
    assert {row["op"] for row in edgetpu["ops"]} >= {"CONV_2D", "DEPTHWISE_CONV_2D"}


def test_failed_export_leaves_the_previous_artifacts_untouched(
    exported, model_path, monkeypatch, tmp_path
):
    import shutil

    from export import pipeline

    out = tmp_path / "artifacts"
    shutil.copytree(exported[0], out)  # a private copy: the session export stays untouched
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def broken(build):
        raise ExportCheckError("simulated failure half-way through")

    monkeypatch.setitem(pipeline.BUILDERS["onnx"], "int8", broken)
    config = ExportConfig(
        out=out,
        model=model_path,
        calibration_images=4,
        golden_samples=1,
        models=("backbone_rpn",),
        formats=("onnx",),
        progress=False,
    )
    with pytest.raises(ExportCheckError, match="simulated"):
        pipeline.run_export(config)
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
    # Nothing is left beside --out, not even the lock that refused a second export meanwhile.
    assert sorted(p.name for p in out.parent.iterdir()) == ["artifacts"]


@pytest.mark.slow  # trains / exports in a subprocess: minutes on 2 cores
def test_cli_exports_with_a_folder_of_calibration_images(model_path, tmp_path):
    from PIL import Image

    from models.data import make_batch

    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(make_batch(7, 0, 0, 6).images):
        # other sizes and formats: the runtime's loader converts and resizes them
        Image.fromarray(image).resize((200, 120)).save(
            folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        )
    out = tmp_path / "artifacts"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [
            sys.executable, "-m", "export",
            "--model", str(model_path),
            "--calibration", str(folder),
            "--out", str(out),
            "--models", "backbone_rpn",
            "--formats", "tflite",
            "--precisions", "int8,int8_io",
            "--golden-samples", "2",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(out)
    assert sorted(e.name for e in manifest.artifacts) == [
        "backbone_rpn/tflite/int8",
        "backbone_rpn/tflite/int8_io",
    ]
    report = json.loads((out / manifest.artifacts[0].op_report).read_text())
    assert report["build_notes"]["calibration_samples"] == 4  # 2 held back as golden samples
    # asking for more images than the folder has is refused, not silently reduced
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(model_path), "--calibration",
         str(folder), "--calibration-images", "7", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has 6 images" in result.stderr
    assert read_manifest(out) == manifest
