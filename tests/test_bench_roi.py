"""The RoIPooling benchmark's CLI on a tiny case: rows, errors against TF, host, per-op profile,
JSON and PNG, bad usage."""

import json

from bench import roi as bench_roi

TINY = [
    "--height", "6", "--width", "7", "--channels", "4", "--num-rois", "3", "--size", "2",
    "--runs", "1", "--rounds", "2", "--warmup", "0", "--calibration-samples", "2",
    "--implementations", "fixed_point,gather",
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
        assert row["latency_ms"] > 0 and len(row["round_ratios"]) == 2
        low, high = row["ratio_range"]
        assert 0 < low <= row["ratio_vs_tf_fused"] <= high
    host = result["host"]
    assert host["cpu_model"] and host["usable_cpus"] >= 1 and "avx512_vnni" in host["cpu_flags"]
    # The default implementation is profiled op by op: its GATHERs and its MAX_POOL_2D appear.
    profile = result["profiles"]["fixed_point/float32"]
    ops = [name for row in profile["ops"] for name in row["ops"]]
    assert {"GATHER", "MAX_POOL_2D"} <= set(ops) and profile["total_ms"] > 0
    assert out_png.read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "tflite fixed_point int8" in out and "per-op profile" in out


def test_bench_bad_usage_exits_2_with_one_line(capsys):
    assert bench_roi.main(["--num-rois", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: --num-rois is 0; expected >= 1"
    assert bench_roi.main(["--tile-bytes", "1024,x"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "error: --tile-bytes is '1024,x'; expected a comma list of ints >= 1"


def test_bench_sizes_split_tiles_per_precision_and_tile_size(tmp_path):
    """One form per --tile-bytes value; int8 forms get int8-sized tiles sharing one range;
    --ablate 1 adds the cut-down tile rows."""
    out_json = tmp_path / "bench.json"
    argv = [*TINY[:-1], "fixed_point_split", "--tile-bytes", "128,100000", "--profile", "0"]
    argv += ["--calibration-samples", "8"]  # 3 RoIs: 2 samples calibrate int8 too coarsely
    assert bench_roi.main([*argv, "--ablate", "1", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    forms = result["forms"]
    assert {(r["precision"], r["tile_precision"], r["tile_bytes"]) for r in forms} == {
        (precision, precision, tile_bytes)
        for precision in ("float32", "int8")
        for tile_bytes in (128, 100000)
    }
    for row in forms:
        bar = 1e-5 if row["precision"] == "float32" else 0.02
        assert row["max_abs_error"] <= bar and row["latency_ms"] > 0
    # The ablation times the int8 split with cut-down tiles, down to one GATHER per tile.
    bodies = [row["tile_body"] for row in result["ablation"]]
    assert bodies[0] == "1 GATHER" and bodies[-1].endswith("(the lowering)") and len(bodies) == 4
    assert all(row["ratio_vs_tf_fused"] > 0 for row in result["ablation"])


def test_scaling_sweep_writes_cases_errors_and_a_log_log_plot(tmp_path, capsys):
    from bench import scaling as bench_scaling

    out_json, out_png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    argv = ["--rois", "2,5", "--channels", "3,8", "--height", "6", "--width", "7"]
    argv += ["--runs", "1", "--rounds", "1", "--json", str(out_json), "--png", str(out_png)]
    assert bench_scaling.main(argv) == 0
    cases = json.loads(out_json.read_text())["cases"]
    assert {(c["num_rois"], c["channels"]) for c in cases} == {(2, 3), (5, 3), (2, 8), (5, 8)}
    for case in cases:
        assert case["float32_max_abs_error"] <= 1e-5  # one resizable model serves every count
        assert case["int8_max_abs_error"] <= 0.05
    assert out_png.read_bytes().startswith(b"\x89PNG")
    assert bench_scaling.main(["--rois", "16,x"]) == 2
    assert "error: --rois is '16,x'" in capsys.readouterr().err
