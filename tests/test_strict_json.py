"""runtime.strict_json: every JSON file roiedge writes is strict JSON (no NaN / Infinity tokens)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from runtime import strict_json

REPO = Path(__file__).resolve().parent.parent


def parse_strictly(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as jq and JSON.parse do."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_strict_parser_refuses_what_python_json_writes_by_default():
    with pytest.raises(ValueError, match="NaN"):
        parse_strictly(json.dumps({"snr_db": float("nan")}))


def test_non_finite_floats_become_markers_and_come_back_as_floats():
    value = {
        "snr_db": math.inf,
        "psnr_db": -math.inf,
        "mean": float("nan"),
        "numpy": [np.float32(np.inf), np.float64(-np.inf), np.float32(0.25), np.int64(3)],
        "array": np.array([1.5, np.nan]),
        "pair": (0.5, math.inf),
        "flag": True,
        "name": "int8",
    }
    text = strict_json.dumps(value, indent=2)
    assert parse_strictly(text) == {
        "snr_db": "inf",
        "psnr_db": "-inf",
        "mean": "nan",
        "numpy": ["inf", "-inf", 0.25, 3],
        "array": [1.5, "nan"],
        "pair": [0.5, "inf"],
        "flag": True,
        "name": "int8",
    }
    back = strict_json.loads(text)
    assert back["snr_db"] == math.inf and back["psnr_db"] == -math.inf
    assert math.isnan(back["mean"]) and math.isnan(back["array"][1])
    assert back["numpy"][:2] == [math.inf, -math.inf] and back["flag"] is True
    assert back["name"] == "int8"
    # Files from before the strict writer still read.
    assert strict_json.loads('{"snr_db": Infinity}') == {"snr_db": math.inf}


def test_default_hook_results_are_made_finite_too():
    class Odd:
        pass

    text = strict_json.dumps([Odd()], default=lambda _: float("-inf"))
    assert parse_strictly(text) == ["-inf"]
    assert strict_json.dump_bytes({"a": 1}).endswith(b"}\n")


def test_runtime_check_json_is_strict_when_an_output_matches_exactly(
    tmp_path, tmp_path_factory, monkeypatch
):
    # An artifact that reproduces its golden outputs exactly has SNR and PSNR +inf.
    from runtime_fakes import shared_fake_artifacts

    import runtime.check
    from runtime.cli import main

    original = runtime.check.compare_outputs

    def exact(precision, actual, reference, *args, **kwargs):
        return original(precision, reference, reference, *args, **kwargs)

    monkeypatch.setattr(runtime.check, "compare_outputs", exact)
    artifacts = shared_fake_artifacts(tmp_path_factory)  # read-only: check writes only --json
    out = tmp_path / "check.json"
    argv = ["check", str(artifacts), "--only", "head/tflite/float32", "--json", str(out)]
    assert main(argv) == 0
    rows = parse_strictly(out.read_text())
    assert {o["snr_db"] for row in rows for o in row["outputs"].values()} == {"inf"}
    assert strict_json.loads(out.read_text())[0]["outputs"]["class_scores"]["psnr_db"] == math.inf


def test_report_json_is_strict_with_non_finite_values(tmp_path, monkeypatch):
    import export.report.cli as report_cli

    # Only the JSON is under test here: the markdown and the plot have their own tests.
    monkeypatch.setattr(report_cli, "format_markdown", lambda report: "")
    monkeypatch.setattr(report_cli, "plot_report", lambda report, path: None)
    report = {
        "keras": {"map50": float("nan"), "latency_ms": np.float32(3.5)},
        "artifacts": [{"name": "head/tflite/int8", "snr_db": np.float64(np.inf)}],
    }
    json_path = report_cli.write_report(report, tmp_path)[0]
    assert parse_strictly(json_path.read_text())["artifacts"][0]["snr_db"] == "inf"
    loaded = strict_json.loads(json_path.read_text())
    assert math.isnan(loaded["keras"]["map50"]) and loaded["keras"]["latency_ms"] == 3.5


#: json.dumps calls that write no roiedge file: the manifest's hash input and error text, and
#: the Keras model config put back into a legacy .h5 (read by Keras itself).
NOT_FILES = {
    ("runtime/manifest.py", "detector_digest"),
    ("runtime/manifest.py", "_shown"),
    ("export/keras_loading.py", "_positional_legacy_nodes"),
}


def _json_writes(path: Path) -> list[str]:
    """Names of the functions in ``path`` that call json.dump / json.dumps ("" = module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = (
                child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            )
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in ("dump", "dumps")
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id == "json"
            ):
                found.append(function)
            visit(child, name or function)

    visit(tree, "")
    return found


SOURCES = sorted(
    str(p.relative_to(REPO))
    for package in ("runtime", "export", "models", "scripts")
    for p in (REPO / package).rglob("*.py")
    if p.name != "strict_json.py"
)


@pytest.mark.parametrize("source", SOURCES)
def test_every_json_writer_goes_through_strict_json(source):
    calls = [f for f in _json_writes(REPO / source) if (source, f) not in NOT_FILES]
    assert not calls, f"{source}: json.dump(s) in {calls}; write through runtime.strict_json"
