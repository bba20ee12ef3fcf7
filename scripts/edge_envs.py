"""The device-like venvs the runtime is tested in: their requirements and how they are built.

    python scripts/edge_envs.py NAME      builds .edge-envs/NAME (unless its stamp matches its
                                          requirements; FRESH=1 rebuilds), prints its python

``tflite-runtime``: numpy<2 + tflite-runtime 2.14 + Pillow (a Raspberry Pi OS-like image);
``litert-onnx``: numpy + ai-edge-litert + onnxruntime + Pillow. Each has opencv-python-headless
for the stream check (4.11.0.86 takes numpy<2, 5.1.0.95 numpy 2). scripts/test_edge.sh and the
slow tests (tests/test_keras_model_envs.py, tests/test_detector_card.py) use this one helper.
The boot interpreter is ``$PYTHON_BOOT`` (default python3). Standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENVS = REPO / ".edge-envs"

REQUIREMENTS = {
    "tflite-runtime": (
        "numpy<2 tflite-runtime==2.14.0 pillow==11.3.0 opencv-python-headless==4.11.0.86"
    ),
    "litert-onnx": (
        "numpy==2.4.6 ai-edge-litert==2.3.0 onnxruntime==1.31.1 pillow==13.0.0 "
        "opencv-python-headless==5.1.0.95"
    ),
}
#: The artifact formats each env can run, and its TFLite backend (runtime --tflite-backend).
FORMATS = {"tflite-runtime": ("tflite",), "litert-onnx": ("tflite", "onnx")}
BACKENDS = {"tflite-runtime": "tflite_runtime", "litert-onnx": "ai_edge_litert"}


def edge_env(name: str, fresh: bool | None = None) -> Path:
    """The python of env ``name``, built with pip first unless its stamp matches."""
    if name not in REQUIREMENTS:
        raise SystemExit(f"error: env {name!r}: expected one of {', '.join(REQUIREMENTS)}")
    requirements = REQUIREMENTS[name]
    env = ENVS / name
    stamp = env / ".requirements"
    fresh = os.environ.get("FRESH", "0") == "1" if fresh is None else fresh
    python = env / "bin" / "python"
    if not fresh and stamp.is_file() and stamp.read_text().strip() == requirements:
        print(f"== env {name}: reusing {env}", file=sys.stderr)
        return python
    print(f"== env {name}: building ({requirements})", file=sys.stderr)
    shutil.rmtree(env, ignore_errors=True)
    boot = os.environ.get("PYTHON_BOOT", "python3")
    subprocess.run([boot, "-m", "venv", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements.split()], check=True)
    stamp.write_text(requirements + "\n")
    return python


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python scripts/edge_envs.py {{{','.join(REQUIREMENTS)}}}", file=sys.stderr)
        return 2
    try:
        print(edge_env(argv[0]))
    except subprocess.CalledProcessError as error:
        print(f"error: building env {argv[0]} failed ({error})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
