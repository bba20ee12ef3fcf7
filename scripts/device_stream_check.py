"""The stream bar in a device environment: ``python -m runtime stream`` on a video it never saw.

    python device_stream_check.py ARTIFACTS [--precision int8] [--backend tflite_runtime]

Writes a 24-frame mp4 of the golden scene sliding across a 240x320 frame (OpenCV mp4v), runs
``python -m runtime stream --video V --precision P --json out.jsonl --out out.mp4`` and checks:
every frame present in order, detections equal to ``Detector.detect`` on the frames decoded here,
an mp4 with the same frame count and size. Needs only runtime/, numpy, an interpreter, Pillow and
opencv-python-headless (``make test-edge`` runs it in each device env). Exit 0 ok, 1 failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from runtime.check import load_golden
from runtime.detector import Detector
from runtime.manifest import read_manifest

FRAMES, HEIGHT, WIDTH = 24, 240, 320


def decode(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()
    x = load_golden(args.artifacts, read_manifest(args.artifacts), "backbone_rpn")["input_0"]
    scene = np.clip(x.reshape(-1, *x.shape[-3:])[0], 0, 255).astype(np.uint8)
    work = Path(tempfile.mkdtemp(prefix="stream-check-"))
    video = work / "unseen.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    for t in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        y, x0 = 40, 4 * t
        frame[y : y + scene.shape[0], x0 : x0 + scene.shape[1]] = scene
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    lines, out = work / "out.jsonl", work / "out.mp4"
    command = [sys.executable, "-m", "runtime", "stream", "--artifacts", str(args.artifacts)]
    command += ["--video", str(video), "--precision", args.precision]
    command += ["--json", str(lines), "--out", str(out)]
    command += ["--backend", args.backend] if args.backend else []
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    problems = [] if proc.returncode == 0 else [f"stream exited {proc.returncode}: {proc.stderr}"]
    records = (
        [json.loads(line) for line in lines.read_text().splitlines()] if lines.exists() else []
    )
    frames = decode(video)
    detector = Detector(args.artifacts, precision=args.precision, backend=args.backend)
    if [r["frame"] for r in records] != list(range(len(frames))) or len(frames) != FRAMES:
        problems.append(f"frames {[r['frame'] for r in records]}; expected 0..{len(frames) - 1}")
    total = 0
    for record, frame in zip(records, frames):
        found = detector.detect(frame)
        total += len(found)
        want = [[d.class_name, float(d.score), [float(d.box[1]), float(d.box[0])]] for d in found]
        got = [[r["category_name"], r["score"], r["bbox"][:2]] for r in record["detections"]]
        if got != want:
            problems.append(f"frame {record['frame']}: stream {got[:2]} != detect {want[:2]}")
    written = decode(out) if out.exists() else []
    if len(written) != FRAMES or {f.shape for f in written} != {(HEIGHT, WIDTH, 3)}:
        problems.append(f"out.mp4 has {len(written)} frames; expected {FRAMES} of {WIDTH}x{HEIGHT}")
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"stream check: {len(records)} frames, {total} detections, {len(problems)} problems")
    return 1 if problems or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
