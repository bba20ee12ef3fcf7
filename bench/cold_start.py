"""Cold start (process start -> first detection) and peak RSS: TF-free runtime vs float Keras.

    .venv/bin/python bench/cold_start.py [--artifacts artifacts] [--repeats 3] [--json F]

Every measurement is a fresh subprocess (so imports, interpreter loads and page faults count);
the median over ``--repeats`` is reported. The runtime rows use ``python -m runtime _bench-child``
(the same as ``python -m runtime bench``); the Keras row loads the shipped ``.keras`` detector with
``models.detector`` and runs its float reference path on the same image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime import strict_json  # noqa: E402
from runtime.bench import run_child  # noqa: E402
from runtime.manifest import atomic_write_bytes  # noqa: E402

_KERAS_CHILD = """
import json, sys, time, resource
import numpy as np
from models.detector import FloatDetector, load_detector
from runtime.check import load_golden
from runtime.strict_json import dumps
from runtime.manifest import read_manifest
directory = sys.argv[1]
x = load_golden(directory, read_manifest(directory), "backbone_rpn")["input_0"]
image = np.clip(x.reshape(-1, *x.shape[-3:])[0], 0, 255).astype(np.uint8)
start = time.perf_counter()
detector = FloatDetector(load_detector())
load_s = time.perf_counter() - start
start = time.perf_counter()
found = detector(image)
first_s = time.perf_counter() - start
at = time.time()
times = []
for _ in range(10):
    t = time.perf_counter(); detector(image); times.append(time.perf_counter() - t)
print(dumps({"name": "float Keras (TensorFlow)", "first_detection_at": at,
    "load_s": load_s, "first_s": first_s, "detections": len(found.scores),
    "p50_ms": float(np.percentile(times, 50) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def keras_child(directory: str) -> dict:
    """One float-Keras cold start in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _KERAS_CHILD, directory],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"keras child failed: {proc.stderr.strip().splitlines()[-1:]}")
    result = strict_json.loads(proc.stdout.strip().splitlines()[-1])
    result["cold_start_s"] = result.pop("first_detection_at") - started
    return result


def main() -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipelines", nargs="*", default=["int8", "float32", "onnx:int8"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    directory = str(Path(args.artifacts).resolve())
    from runtime.manifest import read_manifest, sha256_file

    exported_from = read_manifest(directory).source_models.get("keras_sha256")
    shipped = REPO / "models" / "shipped" / "detector.keras"
    if exported_from and shipped.is_file() and sha256_file(shipped) != exported_from:
        print(
            f"note: {directory} was exported from another detector than {shipped}; "
            "timings compare, detections may differ",
            file=sys.stderr,
        )
    jobs = [
        (f"runtime {p}", lambda p=p: run_child(["pipeline", p, directory, "--runs", "10"]))
        for p in args.pipelines
    ]
    jobs.append(("float Keras (TensorFlow)", lambda: keras_child(directory)))
    rows = []
    for name, job in jobs:
        runs = [job() for _ in range(args.repeats)]
        row = {
            "name": name,
            "repeats": args.repeats,
            "cold_start_s": statistics.median(r["cold_start_s"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "load_s": statistics.median(r["load_s"] for r in runs),
            "first_s": statistics.median(r["first_s"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "detections": runs[0].get("detections"),
        }
        rows.append(row)
        print(
            f"{name:<28} cold start {row['cold_start_s']:6.2f} s   peak RSS {row['peak_rss_mb']:6.0f} MB"
            f"   load {row['load_s']:.2f} s   first {row['first_s']:.3f} s   p50 {row['p50_ms']:.1f} ms"
            f"   ({row['detections']} detections)",
            flush=True,
        )
    if args.json:
        atomic_write_bytes(args.json, strict_json.dump_bytes(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
