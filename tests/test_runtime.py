"""The runtime's Detector and CLI (check / detect / bench / errors) on tiny fake artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_fakes import CONFIG, build_keras_models, fake_image

from runtime import processing, strict_json
from runtime.cli import main
from runtime.detector import Detector, DetectorOptions
from runtime.errors import ArtifactError, RoiedgeError
from runtime.golden import error_metrics
from runtime.images import resize
from runtime.manifest import manifest_to_dict, read_manifest, seal, write_manifest

REPO = Path(__file__).resolve().parent.parent


def reseal(directory):
    """Re-hash the golden files and detector config after a test edited them on purpose."""
    write_manifest(seal(read_manifest_unchecked(directory), directory), directory)


def read_manifest_unchecked(directory):
    """The manifest with its detector hash refreshed first (so an edited config still parses)."""
    from runtime.manifest import detector_digest

    path = Path(directory) / "manifest.json"
    data = json.loads(path.read_text())
    data["detector_sha256"] = detector_digest(data["detector"])
    path.write_text(json.dumps(data))
    return read_manifest(directory)


def run_cli(*args, cwd=REPO):
    """``python -m runtime ARGS`` in a subprocess -> CompletedProcess (text)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "runtime", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without the interpreters' own INFO/warning chatter."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO:")]


def test_error_metrics_reference_values():
    reference = np.array([1.0, -1.0, 2.0, -2.0])
    actual = reference + np.array([0.1, -0.1, 0.1, -0.1])
    m = error_metrics(actual, reference)
    assert m.max_abs == pytest.approx(0.1)
    assert m.mean_abs == pytest.approx(0.1)
    assert m.snr_db == pytest.approx(10 * np.log10(10.0 / 0.04))  # signal 10, noise 0.04
    assert m.psnr_db == pytest.approx(20 * np.log10(4.0 / 0.1))  # span 4, rmse 0.1
    assert error_metrics(reference, reference).snr_db == float("inf")


def test_top1_agreement_leaves_out_near_ties_within_the_precisions_bound():
    """A float16 head flipping a reference near-tie (gap 5e-4, inside float16's elementwise
    bound) keeps its top-1; a flip of a decided row (gap 0.4) still counts, for every precision."""
    from runtime.golden import compare_outputs

    reference = np.array([[[0.4997, 0.5002, 0.0001], [0.7, 0.3, 0.0]] + [[0.9, 0.05, 0.05]] * 30])
    tie_flip = reference.copy()
    tie_flip[0, 0] = [0.5003, 0.4996, 0.0001]  # |error| 6e-4, argmax flips
    verdict = compare_outputs("float16", [tie_flip], [reference], ["class_scores"], 0)
    assert verdict.top1_agreement == 1.0 and verdict.ok
    decided_flip = reference.copy()
    decided_flip[0, 1] = [0.3, 0.7, 0.0]
    # float16 leaves the near-tie out (31 rows, 1 flipped); float32's bound (3.8e-4) and int8
    # (no elementwise bound) count it (32 rows, 1 flipped)
    for precision, expected in (("float16", 30 / 31), ("float32", 31 / 32), ("int8", 31 / 32)):
        verdict = compare_outputs(precision, [decided_flip], [reference], ["class_scores"], 0)
        assert verdict.top1_agreement == pytest.approx(expected)


def test_check_passes_every_fake_artifact_and_writes_json(fake_dir, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", str(fake_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "11/11 artifacts within their precision's tolerance" in text
    rows = strict_json.loads(out.read_text())  # an SNR may be "inf"
    artifact_rows = {r["name"] for r in rows if not r["name"].startswith("pipeline/")}
    assert artifact_rows == {e.name for e in read_manifest(fake_dir).artifacts}
    assert [r["ok"] for r in rows if r["name"] == "pipeline/tflite/float32"] == [True]
    head_int8 = next(r for r in rows if r["name"] == "head/tflite/int8")
    assert head_int8["top1_agreement"] >= 0.9
    assert head_int8["outputs"]["class_scores"]["snr_db"] > 20


def test_check_fails_with_exit_1_when_outputs_drift(fake_copy, capsys):
    golden = fake_copy / "golden_head.npz"
    with np.load(golden) as data:
        arrays = dict(data)
    arrays["output_1"] = arrays["output_1"] + 0.01  # box_deltas off by 0.01 everywhere
    np.savez(golden, **arrays)
    reseal(fake_copy)  # a consistent (re-hashed) golden: an accuracy failure, not tampering
    assert main(["check", str(fake_copy), "--only", "head/tflite/float32", "head/tflite/int8"]) == 1
    text = capsys.readouterr().out
    assert "FAIL head/tflite/float32 (float32): box_deltas: max abs error" in text
    assert "1/2 artifacts within" in text  # int8's SNR floor still holds


def test_check_reports_an_unloadable_artifact_and_keeps_going(fake_copy, capsys):
    """A verified file the interpreter rejects fails that artifact (exit 1), not the whole check."""
    import dataclasses

    from runtime.manifest import sha256_file, write_manifest

    bad = fake_copy / "head.float16.tflite"
    bad.write_bytes(b"\x00" * 64)
    manifest = read_manifest(fake_copy)
    artifacts = tuple(
        dataclasses.replace(e, sha256=sha256_file(bad)) if e.path == bad.name else e
        for e in manifest.artifacts
    )
    write_manifest(dataclasses.replace(manifest, artifacts=artifacts), fake_copy)
    assert main(["check", str(fake_copy), "--formats", "tflite"]) == 1
    text = capsys.readouterr().out
    assert "FAIL head/tflite/float16 (float16): cannot load:" in text
    assert "not a structurally valid TFLite flatbuffer" in text
    assert "8/9 artifacts within" in text


def test_detector_int8_matches_float_keras_reference(fake_dir):
    """The int8 pipeline finds the same objects as the float Keras stages with the same numpy code."""
    backbone, head = build_keras_models()
    detector = Detector(fake_dir, precision="int8")
    float_detector = Detector(fake_dir, precision="float32", format="onnx")
    for seed in range(3):
        image = fake_image(seed)
        tensor = processing.preprocess(image, CONFIG)
        _, scores, deltas = (np.asarray(o) for o in backbone(tensor))
        features = np.asarray(backbone(tensor)[0])
        proposals = processing.proposals_from_rpn(scores, deltas, CONFIG)
        class_scores, box_deltas = (
            np.asarray(o) for o in head([features, proposals.proposals, proposals.box_indexes])
        )
        reference = processing.detections_from_head(
            class_scores, box_deltas, proposals.proposals, proposals.num_valid, CONFIG
        ).to_list(CONFIG.class_names)
        assert reference, "the fake detector should detect something"
        for found in (detector.detect(image), float_detector.detect(image)):
            assert len(found) == len(reference)
            for ref in reference:
                same = [d for d in found if d.class_id == ref.class_id]
                ious = processing.box_iou(np.array([ref.box]), np.array([d.box for d in same]))
                assert ious.max() > 0.8
        # float32 ONNX is the Keras maths: boxes equal to float rounding.
        exact = float_detector.detect(image)
        np.testing.assert_allclose(
            [d.box for d in exact], [d.box for d in reference], rtol=1e-4, atol=1e-3
        )
        assert set(detector.timings) >= {"preprocess", "backbone_rpn", "head", "total"}


def test_detector_scales_boxes_to_the_input_image_and_mixes_stages(fake_dir):
    from PIL import Image

    image = fake_image(1)
    big = np.asarray(Image.fromarray(image).resize((96, 64), Image.BILINEAR))  # W=96, H=64
    detector = Detector(
        fake_dir, precision="int8_io", head_precision="float32", head_format="onnx", num_threads=1
    )
    assert detector.head.backend.name == "onnxruntime"
    assert detector.backbone.backend.inputs[0].dtype == "int8"
    large = detector.detect(big)
    assert large
    # Boxes come back in the given image's pixels: y scaled by 64/32 = 2, x by 96/32 = 3.
    resized = processing.preprocess(resize(big, CONFIG.image_size), CONFIG)
    raw = detector.detect_tensor(resized)
    np.testing.assert_allclose(
        [d.box for d in large], raw.boxes * np.array([2, 3, 2, 3]), rtol=1e-6, atol=1e-4
    )
    assert [d.class_name for d in large] == [CONFIG.class_names[c] for c in raw.class_ids]


def test_detector_option_errors(fake_dir):
    with pytest.raises(RoiedgeError, match="precision 'int8_io' is not exported for onnx"):
        Detector(fake_dir, precision="int8_io", format="onnx")
    with pytest.raises(ArtifactError, match="manifest has no artifact backbone_rpn/onnx/int8"):
        Detector(fake_dir, precision="int8", format="onnx")
    with pytest.raises(RoiedgeError, match="edgetpu='maybe'"):
        Detector(fake_dir, DetectorOptions(edgetpu="maybe"))
    options = DetectorOptions(precision="int8_io")
    assert options.stage_choice("head") == ("tflite", "int8", None)


def test_detect_cli_prints_and_draws(fake_dir, tmp_path):
    from PIL import Image

    image_path = tmp_path / "scene.png"
    Image.fromarray(fake_image(0)).save(image_path)
    proc = run_cli("detect", "--artifacts", fake_dir, image_path, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert f"{image_path}: " in proc.stdout and " detections in " in proc.stdout
    drawn = tmp_path / "out" / "scene_detections.jpg"
    assert drawn.is_file()
    with Image.open(drawn) as result:
        pixels = np.asarray(result.convert("RGB"))
    assert pixels.shape == (32, 32, 3)
    assert not np.array_equal(pixels, fake_image(0))  # boxes were drawn


def test_detect_in_a_subprocess_loads_no_tensorflow(fake_dir):
    code = (
        "import sys\n"
        "from runtime.detector import Detector\n"
        "import numpy as np\n"
        f"d = Detector({str(fake_dir)!r}, precision='int8')\n"
        "d.detect(np.zeros((32, 32, 3), np.uint8))\n"
        f"d = Detector({str(fake_dir)!r}, precision='float32', format='onnx')\n"
        "d.detect(np.zeros((32, 32, 3), np.uint8))\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'models', 'export')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr


def _one_line_exit_2(proc, *fragments):
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_sha_mismatch_fails_its_row_and_detect_exits_2_with_one_line(fake_copy, capsys):
    path = fake_copy / "head.int8.tflite"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["check", str(fake_copy), "--formats", "tflite"]) == 1
    text = capsys.readouterr().out
    assert "FAIL head/tflite/int8 (int8): not verified:" in text and "does not match" in text
    assert "8/9 artifacts within" in text  # the others were still checked
    proc = run_cli("detect", "--artifacts", fake_copy, fake_copy / "any.png")
    _one_line_exit_2(proc, str(path), "does not match the manifest's")


def test_missing_artifact_exits_2_with_one_line(fake_copy, tmp_path):
    (fake_copy / "backbone_rpn.int8.tflite").unlink()
    proc = run_cli("detect", "--artifacts", fake_copy, tmp_path / "any.png")
    _one_line_exit_2(proc, "backbone_rpn.int8.tflite", "is missing")


def test_bad_schema_version_exits_2_with_one_line(fake_copy):
    manifest = fake_copy / "manifest.json"
    data = manifest_to_dict(read_manifest(fake_copy))
    data["schema_version"] = 99
    manifest.write_text(json.dumps(data))
    proc = run_cli("check", fake_copy)
    _one_line_exit_2(proc, str(manifest), "schema_version 99 is not supported")


def test_no_manifest_exits_2(tmp_path):
    _one_line_exit_2(run_cli("check", tmp_path), "no manifest found")


@pytest.mark.parametrize("content", [b"this is not a png", None])
def test_unreadable_image_exits_2_with_one_line(fake_dir, tmp_path, content):
    image = tmp_path / "broken.png"
    if content is not None:
        image.write_bytes(content)
    proc = run_cli("detect", "--artifacts", fake_dir, image)
    expected = "cannot read it as an image" if content is not None else "image not found"
    _one_line_exit_2(proc, str(image), expected)


def test_bench_json_rows(fake_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", str(fake_dir), "--runs", "3", "--warmup", "1", "--json", str(out)]
    argv += ["--only", "head/tflite/int8", "--pipelines", "int8", "onnx:float32"]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == [
        "head/tflite/int8",
        "pipeline int8",
        "pipeline onnx:float32",
    ]
    assert "pipeline onnx:float32" in capsys.readouterr().out


def test_check_json_writes_non_finite_floats_as_strings():
    """json.loads (strict) must read what --json writes, whatever the SNR (+inf, -inf, nan)."""
    from runtime.strict_json import dumps

    rows = [{"snr_db": float("inf"), "psnr_db": float("-inf"), "x": [float("nan"), 1.5]}]
    text = dumps(rows)
    assert json.loads(text) == [{"snr_db": "inf", "psnr_db": "-inf", "x": ["nan", 1.5]}]


def _npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (None, r"--inputs .*x\.npz: no such file \(expected an \.npz keyed by input name\)"),
        (lambda p: p.write_bytes(b"not a zip"), r"--inputs .*x\.npz: not a readable \.npz"),
        (lambda p: p.write_bytes(_npy_bytes(np.zeros(3))), r"--inputs .*x\.npz: a single array"),
    ],
)
def test_read_npz_refuses_a_missing_unreadable_or_single_array_file_in_one_line(
    tmp_path, write, message
):
    from runtime.errors import RoiedgeError
    from runtime.run import read_npz

    path = tmp_path / "x.npz"
    if write is not None:
        write(path)
    with pytest.raises(RoiedgeError, match=message) as raised:
        read_npz(path, "--inputs", "an .npz keyed by input name")
    assert "\n" not in str(raised.value)
