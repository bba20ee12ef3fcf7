"""Stream throughput: the pipelined detector vs the sequential ``detect`` loop on one video.

Each measurement runs in a fresh process pinned to the first ``cores`` CPUs (as ``taskset -c``
would) and decodes the whole video through the detector: frames/s over the video (decode
included, after one warm-up detection) and per-frame latency p50/p90 (capture to result). The
two modes alternate in every round, so each pipelined/sequential ratio comes from neighbouring
runs under the same load. Sequential runs its interpreters with one thread per core (detect's
best), pipelined with one thread per interpreter and one head per core.

    python -m runtime bench artifacts --video V [--pipelines float32 int8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import strict_json
from runtime.errors import RoiedgeError

MODES = ("sequential", "pipelined")


def host_cpu() -> str:
    """The CPU model (lscpu's "Model name", from /proc/cpuinfo), else the platform's name."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(artifacts: str, video: str, precision: str, mode: str, cores: int) -> dict[str, Any]:
    """In this process, pinned to CPUs 0..cores-1: one pass over ``video`` in ``mode``."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(cores)))
    from runtime.detector import Detector
    from runtime.stream import sequential_detections
    from runtime.video import VideoFile

    fmt, _, prec = precision.rpartition(":")
    threads = cores if mode == "sequential" else 1
    detector = Detector(artifacts, precision=prec, format=fmt or "tflite", num_threads=threads)
    source = VideoFile(video)
    if mode == "sequential":
        results = sequential_detections(detector, source)
    else:
        results = detector.stream(source, head_copies=cores)
    detector.detect(np.zeros((*detector.config.image_size, 3), np.uint8))  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    latencies, timings = [], []
    for result in results:
        latencies.append(result.latency_s)
        timings.append(result.timings)
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    steps = sorted({name for t in timings for name in t})
    return {
        "mode": mode,
        "precision": precision,
        "cores": cores,
        "frames": len(latencies),
        "fps": len(latencies) / elapsed,
        # CPU time of every thread of the process per frame: the work a frame costs, which a
        # loaded host does not change (wall fps it does: it shares the cores by runnable thread).
        "cpu_ms_per_frame": cpu_s / len(latencies) * 1e3,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p90_ms": float(np.percentile(latencies, 90) * 1e3),
        # Median ms per step (a step's own time, waiting in queues excluded).
        "step_ms": {n: float(np.median([t.get(n, 0.0) for t in timings]) * 1e3) for n in steps},
    }


def bench_video(
    artifacts: os.PathLike,
    video: os.PathLike,
    precisions: list[str],
    core_counts: tuple[int, ...] = (1, 2),
    rounds: int = 3,
) -> dict[str, Any]:
    """Every (cores, precision) pair, ``rounds`` interleaved sequential/pipelined runs each."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    runs = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    for cores in (c for c in core_counts if c <= available):
        for precision in precisions:
            for round_ in range(rounds):
                # Alternate which mode goes first, so neither always runs on a warmer machine.
                for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                    row = _child(str(artifacts), str(video), precision, mode, cores)
                    row["round"] = round_
                    runs.append(row)
                    print(
                        f"  {cores} core(s) {precision:<10} {mode:<10} round {round_}: "
                        f"{row['fps']:6.1f} fps",
                        file=sys.stderr,
                    )
    return {
        "host": host_cpu(),
        "started": started,
        "load_before": load_before,
        "load_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "video": str(video),
        "runs": runs,
        "summary": summarize(runs),
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (cores, precision): fps ranges of both modes, the per-round ratio range, latencies."""
    rows = []
    keys = sorted({(r["cores"], r["precision"]) for r in runs})
    for cores, precision in keys:
        by = {m: [r for r in runs if (r["cores"], r["precision"], r["mode"]) == (cores, precision, m)] for m in MODES}  # fmt: skip
        ratios = [
            p["fps"] / s["fps"]
            for s in by["sequential"]
            for p in by["pipelined"]
            if p["round"] == s["round"]
        ]
        row: dict[str, Any] = {"cores": cores, "precision": precision, "ratio": ratios}
        for mode in MODES:
            row[mode] = {
                "fps": [r["fps"] for r in by[mode]],
                "p50_ms": float(np.median([r["p50_ms"] for r in by[mode]])),
                "cpu_ms_per_frame": float(np.median([r["cpu_ms_per_frame"] for r in by[mode]])),
                "p90_ms": float(np.median([r["p90_ms"] for r in by[mode]])),
                "step_ms": {
                    name: float(np.median([r["step_ms"].get(name, 0.0) for r in by[mode]]))
                    for name in sorted({n for r in by[mode] for n in r["step_ms"]})
                },
            }
        rows.append(row)
    return rows


def format_summary(result: dict[str, Any]) -> str:
    """The summary as a plain-text table with the host and load."""
    lines = [
        f"stream bench on {result['host']}, {result['started']}, load average "
        f"{_load(result['load_before'])} -> {_load(result['load_after'])}, video {result['video']}",
        f"{'cores':>5} {'precision':<10} {'sequential fps':>16} {'pipelined fps':>16} "
        f"{'ratio':>11} {'seq p50/p90 ms':>15} {'pipe p50/p90 ms':>16} {'CPU ms/frame':>13}",
    ]
    for row in result["summary"]:
        seq, pipe, ratio = row["sequential"], row["pipelined"], row["ratio"]
        lines.append(
            f"{row['cores']:>5} {row['precision']:<10} {_range(seq['fps']):>16} "
            f"{_range(pipe['fps']):>16} {_range(ratio, 2) + 'x':>11} "
            f"{seq['p50_ms']:>7.1f}/{seq['p90_ms']:<7.1f} {pipe['p50_ms']:>8.1f}/{pipe['p90_ms']:<7.1f}"
            f" {seq['cpu_ms_per_frame']:>6.1f}/{pipe['cpu_ms_per_frame']:<6.1f}"
        )
    return "\n".join(lines)


def _range(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def _load(load: Any) -> str:
    return "?" if load is None else f"{load[0]:.1f}"


def _child(artifacts: str, video: str, precision: str, mode: str, cores: int) -> dict[str, Any]:
    runtime_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (runtime_parent, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "runtime.stream_bench", "--child"]
    command += [artifacts, video, precision, mode, str(cores)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RoiedgeError(
            f"stream bench {mode} {precision} on {cores} core(s) failed: "
            f"{lines[-1] if lines else proc.returncode}"
        )
    return strict_json.loads(proc.stdout.strip().splitlines()[-1])


def run_from_cli(args: argparse.Namespace) -> int:
    """``python -m runtime bench DIR --video V``: the table, and --json with every run."""
    from runtime.manifest import atomic_write_bytes

    result = bench_video(args.artifacts, args.video, list(args.pipelines), rounds=args.rounds)
    print(format_summary(result))
    if args.json is not None:
        atomic_write_bytes(args.json, strict_json.dump_bytes(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        _, _, art, vid, prec, mode_, cores_ = sys.argv
        print(strict_json.dumps(measure(art, vid, prec, mode_, int(cores_))))
        sys.exit(0)
    sys.exit("usage: python -m runtime bench DIR --video VIDEO (this module is its child)")
