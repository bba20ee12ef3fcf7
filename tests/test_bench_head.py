"""The realistic-head benchmark's CLI on a tiny head: every format, agreement, RSS, bad usage."""

import json

import pytest

from bench import head as bench_head

TINY = [
    "--height", "6", "--width", "7", "--channels", "4", "--num-rois", "3", "--fc", "8",
    "--classes", "3", "--runs", "1", "--rounds", "1", "--calibration-samples", "2",
    "--agreement-samples", "1", "--profile", "0",
]  # fmt: skip


# The float32 head with the other RoIPooling lowerings (--variants' default), same weights.
VARIANT_FORMS = (
    "tflite/float32@fixed_point",
    "tflite/float32@fixed_point_tiled",
    "tflite/float32@neighbour_pool_split",
)


@pytest.mark.slow
def test_head_bench_measures_every_format_against_keras(tmp_path, capsys):
    out = tmp_path / "head.json"
    assert bench_head.main([*TINY, "--json", str(out)]) == 0
    forms = json.loads(out.read_text())["forms"]
    assert set(forms) == {
        "keras/float32",
        "tflite/float32",
        "tflite/float16",
        "tflite/int8",
        "onnx/float32",
        "onnx/int8",
        "tflite/float32:no_xnnpack",
        "tflite/float16:no_xnnpack",
        "tflite/int8:no_xnnpack",
        *VARIANT_FORMS,
    }
    # Float forms pick the same class as Keras on every RoI; each ran in its own process.
    float_forms = ("tflite/float32", "tflite/float16", "onnx/float32", "tflite/float32:no_xnnpack")
    for name in float_forms + VARIANT_FORMS:
        assert forms[name]["top1_agreement"] == 1.0
    for name, row in forms.items():
        assert row["latency_ms"] > 0
        assert ":" in name or row["peak_rss_mb"] > 0
    # A TF-free TFLite process stays far below one that imports TensorFlow.
    assert forms["tflite/int8"]["peak_rss_mb"] < forms["keras/float32"]["peak_rss_mb"] / 2
    assert "tflite/int8" in capsys.readouterr().out


def test_head_bench_bad_usage_exits_2_with_one_line(capsys):
    assert bench_head.main(["--implementation", "magic"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --implementation is 'magic'; expected one of fixed_point")
    assert bench_head.main(["--fc", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --fc is 0; expected >= 1"
    assert bench_head.main(["--variants", "fixed_point_split,magic"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --variants has 'magic'; expected a comma list of fixed_point")
