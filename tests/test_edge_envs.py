"""The runtime on device-like environments: `scripts/test_edge.sh` (what `make test-edge` runs).

Two throwaway venvs, one with only numpy<2 + tflite-runtime 2.14 + Pillow (a Raspberry Pi OS
image), one with only ai-edge-litert + onnxruntime + Pillow; in each, `runtime/` and the session's
artifacts are copied outside the repo; the README's `python -m runtime check artifacts` (no flags:
the ONNX rows are skipped where onnxruntime is absent), `check`, `detect` and the 14 device cases
of scripts/device_cases.py must pass.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # builds two venvs with pip: make test installs none
def test_runtime_checks_and_detects_in_device_environments(exported_artifacts):
    out, _ = exported_artifacts
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "test_edge.sh"), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "== test-edge: all steps passed" in log
    for env in ("tflite-runtime", "litert-onnx"):
        assert f"[{env}] check" in log and f"[{env}] detect tflite:int8" in log, log[-4000:]
        assert f"-- [{env}] README check (no flags)" in log and f"-- [{env}] device cases" in log
    assert "-- [tflite-runtime] onnxruntime absent, ONNX rows skipped" in log
    # Both envs ran every device case and passed them all.
    cases = [line for line in log.splitlines() if line.startswith("case ")]
    assert len(cases) == 2 * 14 and all(": PASS (" in line for line in cases), cases
