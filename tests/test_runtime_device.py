"""The runtime on a real device: shared by threads, partial installs, every artifact reported,
integrity (hashes, confined paths, structurally valid flatbuffers), on tiny fake artifacts."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest
from runtime_fakes import fake_image
from test_runtime import _one_line_exit_2, run_cli

from runtime import backends
from runtime.check import check_directory
from runtime.cli import main
from runtime.detector import Detector
from runtime.errors import ArtifactError
from runtime.flatbuffer import summarize_tflite, validate_tflite_file
from runtime.manifest import (
    SCHEMA_VERSION,
    manifest_to_dict,
    read_manifest,
    sha256_file,
    write_manifest,
)


def _rehash(directory, path):
    """Update the manifest's sha256/bytes of ``path`` (a test replacing a file on purpose)."""
    manifest = read_manifest(directory)
    artifacts = tuple(
        dataclasses.replace(e, sha256=sha256_file(path), bytes=path.stat().st_size)
        if e.path == path.name
        else e
        for e in manifest.artifacts
    )
    write_manifest(dataclasses.replace(manifest, artifacts=artifacts), directory)


# ------------------------------------------------------------------------------ thread safety


@pytest.mark.parametrize("head_format", ["tflite", "onnx"])
def test_one_detector_shared_by_4_threads_x_100_calls_gives_single_threaded_results(
    fake_dir, head_format
):
    head = {"head_format": "onnx", "head_precision": "float32"} if head_format == "onnx" else {}
    detector = Detector(fake_dir, precision="int8", num_threads=1, **head)
    images = [fake_image(seed) for seed in range(8)]
    expected = [[(d.class_id, d.score, d.box) for d in detector.detect(im)] for im in images]
    assert any(expected), "the fake detector should detect something"
    mismatches, errors = [], []

    def worker(offset: int) -> None:
        try:
            for call in range(100):
                i = (call + offset) % len(images)
                got = [(d.class_id, d.score, d.box) for d in detector.detect(images[i])]
                if got != expected[i]:
                    mismatches.append((offset, call))
                if set(detector.timings) < {"preprocess", "backbone_rpn", "head", "total"}:
                    mismatches.append(("timings", offset, call))
        except Exception as error:  # collected: a thread's exception would otherwise vanish
            errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]


# ---------------------------------------------------------------------------- partial installs


def test_check_and_bench_skip_formats_whose_interpreter_is_missing(fake_dir, monkeypatch, capsys):
    monkeypatch.setattr(backends.OnnxRuntimeBackend, "available", classmethod(lambda cls: False))
    assert main(["check", str(fake_dir)]) == 0
    text = capsys.readouterr().out
    assert "backbone_rpn/onnx/float32" in text and "skipped (onnxruntime not installed)" in text
    assert "9/9 artifacts within their precision's tolerance; 2 skipped" in text
    assert main(["check", str(fake_dir), "--require-all"]) == 1
    capsys.readouterr()
    argv = ["bench", str(fake_dir), "--runs", "2", "--warmup", "0", "--only", "head/onnx/float32"]
    assert main([*argv, "--pipelines", "onnx:float32"]) == 0
    text = capsys.readouterr().out
    assert "pipeline" not in text.split("skipped")[0].splitlines()[-1]
    assert text.count("skipped (onnxruntime not installed)") == 2
    assert main([*argv, "--pipelines", "onnx:float32", "--require-all"]) == 1


# ------------------------------------------------------------------------- every artifact row


def test_check_reports_every_artifact_when_some_are_missing_corrupt_or_golden_tampered(
    fake_copy, capsys
):
    (fake_copy / "backbone_rpn.float16.tflite").unlink()
    truncated = fake_copy / "head.int8.tflite"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    _rehash(fake_copy, truncated)  # sha256 updated: only the structure check can catch it
    assert main(["check", str(fake_copy), "--formats", "tflite"]) == 1
    text = capsys.readouterr().out
    assert "FAIL backbone_rpn/tflite/float16 (float16): not verified:" in text
    assert "is missing" in text
    assert "FAIL head/tflite/int8 (int8): cannot load:" in text
    assert "not a structurally valid TFLite flatbuffer" in text
    assert "7/9 artifacts within" in text

    golden = fake_copy / "golden_backbone_rpn.npz"
    with np.load(golden) as data:
        arrays = dict(data)
    arrays["output_0"] = arrays["output_0"] + 1.0  # edited; the manifest is left untouched
    np.savez(golden, **arrays)
    results = check_directory(fake_copy, only=["backbone_rpn/tflite/int8", "head/tflite/float32"])
    by_name = {r.entry.name: r for r in results}
    assert not by_name["backbone_rpn/tflite/int8"].ok
    (reason,) = by_name["backbone_rpn/tflite/int8"].failures
    assert reason.startswith("golden: ") and "does not match the manifest's" in reason
    assert by_name["head/tflite/float32"].ok


# ------------------------------------------------------------------------------------ integrity


def test_manifest_paths_must_stay_inside_the_artifacts_dir(fake_copy, tmp_path, capsys):
    outside = tmp_path / "outside.tflite"
    shutil.copy(fake_copy / "backbone_rpn.int8.tflite", outside)
    data = manifest_to_dict(read_manifest(fake_copy))
    entry = next(e for e in data["artifacts"] if e["name"] == "backbone_rpn/tflite/int8")
    entry["path"] = "../outside.tflite"
    (fake_copy / "manifest.json").write_text(json.dumps(data))
    proc = run_cli("detect", "--artifacts", fake_copy, tmp_path / "any.png")
    _one_line_exit_2(proc, "'../outside.tflite' is not a relative path inside")
    entry["path"] = str(outside)  # absolute
    (fake_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="is not a relative path inside"):
        Detector(fake_copy, precision="int8")
    # A symlink inside the directory pointing out of it.
    entry["path"] = "backbone_rpn.int8.tflite"
    (fake_copy / "manifest.json").write_text(json.dumps(data))
    (fake_copy / "backbone_rpn.int8.tflite").unlink()
    (fake_copy / "backbone_rpn.int8.tflite").symlink_to(outside)
    assert main(["check", str(fake_copy), "--only", "backbone_rpn/tflite/int8"]) == 1
    assert "outside the artifacts directory" in capsys.readouterr().out


def test_old_schema_and_edited_detector_config_are_clear_errors(fake_copy):
    path = fake_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["detector"]["score_threshold"] = 0.9  # edited by hand, hash not updated
    path.write_text(json.dumps(data))
    _one_line_exit_2(run_cli("check", fake_copy), "does not match its detector_sha256")
    data["schema_version"] = 1
    path.write_text(json.dumps(data))
    _one_line_exit_2(run_cli("check", fake_copy), "schema_version 1 is not supported", "re-export")
    assert SCHEMA_VERSION == 2


def test_flatbuffer_walk_agrees_with_tflite_and_catches_every_truncation(fake_dir):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    for path in sorted(fake_dir.glob("*.tflite")):
        data = path.read_bytes()
        summary = validate_tflite_file(path)
        reference = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
        assert summary.subgraphs == len(reference.subgraphs)
        assert summary.tensors == sum(len(g.tensors) for g in reference.subgraphs)
        assert summary.operators == len(Interpreter(model_path=str(path))._get_ops_details())
        assert not summary.edgetpu_compiled
        for cut in range(0, len(data), max(1, len(data) // 97)):
            with pytest.raises(ValueError):
                summarize_tflite(data[:cut])


# ------------------------------------------------------------------------------------- Edge TPU


def test_int8_io_uses_its_compiled_backbone_only_where_the_edge_tpu_runtime_is(fake_copy, capsys):
    from test_runtime_backends import _edgetpu_present, with_edgetpu_opcode

    from runtime.backends import BackendError
    from runtime.errors import RoiedgeError
    from runtime.manifest import EDGETPU_PRECISION

    if _edgetpu_present():
        pytest.skip("an Edge TPU runtime is installed here")
    manifest = read_manifest(fake_copy)
    source = manifest.find("backbone_rpn", "tflite", "int8_io")
    compiled = fake_copy / f"backbone_rpn.{EDGETPU_PRECISION}.tflite"
    with_edgetpu_opcode(fake_copy / source.path, compiled)
    entry = dataclasses.replace(
        source,
        name=f"backbone_rpn/tflite/{EDGETPU_PRECISION}",
        precision=EDGETPU_PRECISION,
        path=compiled.name,
        sha256=sha256_file(compiled),
        bytes=compiled.stat().st_size,
    )
    write_manifest(dataclasses.replace(manifest, artifacts=(*manifest.artifacts, entry)), fake_copy)

    detector = Detector(fake_copy, precision="int8_io", edgetpu="try")
    assert detector.backbone.entry.precision == "int8_io"
    assert "running the uncompiled int8_io on the CPU" in capsys.readouterr().err
    with pytest.raises(RoiedgeError, match="libedgetpu\\) not installed"):
        Detector(fake_copy, precision="int8_io", edgetpu="require")
    with pytest.raises(BackendError, match="could not be loaded"):
        Detector(fake_copy, precision=EDGETPU_PRECISION)
    (result,) = check_directory(fake_copy, only=[entry.name])
    assert result.skipped == "Edge TPU runtime libedgetpu not installed" and not result.ok
