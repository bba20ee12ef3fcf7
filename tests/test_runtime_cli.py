"""The runtime CLI on real use: directories, COCO JSON, --keep-going, name clashes, --out onto a
file; Ctrl-C / SIGTERM in every CLI (runtime, export, report, train): one line, 130 / 143."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from runtime_fakes import fake_image
from test_runtime import REPO, _error_lines, _one_line_exit_2, run_cli

from runtime.detector import Detector
from runtime.replace import lock_path


@pytest.fixture
def photos(tmp_path):
    """a/scene.png, a/deeper/other.jpg, b/scene.png (a name clash) and a non-image file."""
    root = tmp_path / "photos"
    for relative, seed in (("a/scene.png", 0), ("a/deeper/other.jpg", 1), ("b/scene.png", 2)):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fake_image(seed)).save(path, quality=100)
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_detect_directories_recursively_with_coco_json_and_unique_names(fake_dir, photos, tmp_path):
    out, coco = tmp_path / "out", tmp_path / "results.json"
    proc = run_cli("detect", "--artifacts", fake_dir, photos, "--out", out, "--json", coco)
    assert proc.returncode == 0, proc.stderr
    files = [photos / "a/deeper/other.jpg", photos / "a/scene.png", photos / "b/scene.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        "other_detections.jpg",
        "scene_detections-2.jpg",
        "scene_detections.jpg",
    ]
    rows = json.loads(coco.read_text())
    detector = Detector(fake_dir, precision="int8")
    for image_id, path in enumerate(files, 1):
        mine = [r for r in rows if r["file_name"] == str(path)]
        expected = detector.detect(path)
        assert len(mine) == len(expected) and expected, path
        for row, d in zip(mine, expected):
            y1, x1, y2, x2 = d.box
            assert row["image_id"] == image_id
            assert row["category_id"] == d.class_id + 1 and row["category_name"] == d.class_name
            np.testing.assert_allclose(row["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.01)
            assert row["score"] == pytest.approx(d.score, abs=1e-5)


def test_keep_going_continues_past_unreadable_images(fake_dir, photos, tmp_path):
    (photos / "b" / "broken.png").write_bytes(b"not a png")
    coco = tmp_path / "results.json"
    proc = run_cli("detect", "--artifacts", fake_dir, photos, "--keep-going", "--json", coco)
    assert proc.returncode == 1, proc.stderr
    assert "broken.png: cannot read it as an image" in proc.stderr
    assert "1 of 4 images could not be read" in proc.stderr
    assert {r["file_name"] for r in json.loads(coco.read_text())} >= {str(photos / "b/scene.png")}
    _one_line_exit_2(run_cli("detect", "--artifacts", fake_dir, photos), "broken.png")


def test_out_onto_a_file_is_a_one_line_error(fake_dir, photos, tmp_path):
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"x")
    proc = run_cli("detect", "--artifacts", fake_dir, photos, "--out", existing)
    _one_line_exit_2(proc, "--out", "is an existing file; expected a directory")


def _handler_installed(pid: int, signum: int) -> bool:
    """Whether process ``pid`` catches ``signum`` (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


def _interrupt(argv, signum, ready=lambda: True, cwd=REPO, timeout=180):
    """Start ``argv``, wait until it handles SIGTERM and ``ready()``, send ``signum``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    while not (_handler_installed(proc.pid, signal.SIGTERM) and ready()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_runtime_bench_interrupted_says_one_line_and_exits_128_plus_signal(
    fake_dir, tmp_path, signum
):
    argv = [sys.executable, "-m", "runtime", "bench", str(fake_dir), "--runs", "100000"]
    code, _, stderr = _interrupt([*argv, "--json", str(tmp_path / "bench.json")], signum)
    assert code == 128 + signum, stderr
    assert "Traceback" not in stderr
    (line,) = [ln for ln in _error_lines(stderr) if "WARNING" not in ln]
    assert line.startswith("interrupted" if signum == signal.SIGINT else "terminated")
    assert list(tmp_path.iterdir()) == []


def test_export_sigterm_removes_its_building_directory(tmp_path):
    out = tmp_path / "art"
    argv = [sys.executable, "-m", "export", "--out", str(out), "--calibration-images", "4"]
    argv += ["--golden-samples", "1", "--formats", "tflite", "--no-progress"]
    code, _, stderr = _interrupt(argv, signal.SIGTERM, ready=lambda: any(tmp_path.iterdir()))
    assert code == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("terminated")
    # Nothing is left, not even the --out lock (its holder removes it: runtime.replace).
    assert list(tmp_path.iterdir()) == [], lock_path(out).name


def test_train_and_report_sigterm_exit_143_with_one_line(exported_artifacts, tmp_path):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(exported_artifacts[0], artifacts)
    before = sorted(p.name for p in artifacts.iterdir())
    runs = [
        [sys.executable, "-m", "export.report", "--artifacts", str(artifacts)],
        [sys.executable, "-m", "models.train", "--out", str(tmp_path / "m.keras"), "--quiet"],
    ]
    for argv in runs:
        code, _, stderr = _interrupt(argv, signal.SIGTERM)
        assert code == 143, stderr[-2000:]
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("terminated"), stderr[-2000:]
    assert sorted(p.name for p in artifacts.iterdir()) == before
    # Nothing besides the artifacts: no partial model, no lock (its holder removes it).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"], lock_path(
        tmp_path / "m.keras"
    )


_SIGNAL_IN_DEL = """
import os, signal, sys, time
from runtime.interrupts import run_main

class Collected:
    def __del__(self):
        os.kill(os.getpid(), signal.SIG{name})
        for _ in range(1000):  # the handler runs here, inside __del__: CPython swallows its exception
            pass

def main():
    Collected()
    time.sleep(0.2)
    print("finished")
    return 0

sys.exit(run_main(main))
"""


@pytest.mark.parametrize(("name", "code"), [("TERM", 143), ("INT", 130)])
def test_a_signal_swallowed_inside_a_destructor_still_stops_the_cli(name, code):
    result = subprocess.run(
        [sys.executable, "-c", _SIGNAL_IN_DEL.format(name=name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == code, result.stdout + result.stderr
    assert "finished" not in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(("terminated", "interrupted"))
