"""The RoIPooling benchmark's CLI on a tiny case: rows, errors against TF, JSON and PNG, bad usage."""

import json

from models import bench_roi

TINY = [
    "--height", "6", "--width", "7", "--channels", "4", "--num-rois", "3", "--size", "2",
    "--runs", "1", "--warmup", "0", "--calibration-samples", "2",
]  # fmt: skip


def test_bench_writes_every_form_with_errors_against_tf(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert bench_roi.main([*TINY, "--json", str(out_json), "--png", str(out_png)]) == 0
    result = json.loads(out_json.read_text())
    forms = {(row["implementation"], row["precision"]): row for row in result["forms"]}
    assert set(forms) == {
        (impl, precision) for impl in ("fixed_point", "gather") for precision in ("float32", "int8")
    }
    assert forms["fixed_point", "float32"]["max_abs_error"] <= 1e-5
    assert forms["fixed_point", "int8"]["max_abs_error"] <= 0.05
    for row in forms.values():
        assert row["latency_ms"] > 0 and row["ratio_vs_tf_fused"] > 0
    assert out_png.read_bytes().startswith(b"\x89PNG")
    assert "tflite fixed_point int8" in capsys.readouterr().out


def test_bench_bad_usage_exits_2_with_one_line(capsys):
    assert bench_roi.main(["--num-rois", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: --num-rois is 0; expected >= 1"
