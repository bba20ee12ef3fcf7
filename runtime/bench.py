"""Speed of each artifact and of the whole pipeline, each measured in a fresh subprocess.

A fresh process per measurement makes load time, first-inference time and peak RSS honest (no
interpreter or page cache of an earlier run shared in-process). Per measurement: ``load_s``
(sha256 check + interpreter load), ``first_s`` (first inference), ``p50_ms``/``p90_ms`` over
``runs`` inferences after ``warmup``, ``peak_rss_mb`` of the process, and for pipelines
``cold_start_s``: from the parent starting the process to the child's first detection.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime import strict_json
from runtime.errors import RoiedgeError


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (None where it cannot be read).

    Linux: VmHWM from /proc (ru_maxrss survives execve, so a child forked from a large parent
    would report the parent's peak); elsewhere ru_maxrss.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def latencies(call: Any, runs: int, warmup: int) -> dict[str, float]:
    """``call()`` timed ``runs`` times after ``warmup`` untimed calls -> p50_ms, p90_ms."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p90_ms": float(np.percentile(times, 90) * 1e3),
    }


def measure_artifact(
    directory: str, name: str, runs: int, warmup: int, backend: str | None, threads: int | None
) -> dict[str, Any]:
    """In this process: load artifact ``name`` and time it on its golden inputs (first sample)."""
    from runtime.backends import load_stage
    from runtime.check import load_golden
    from runtime.golden import golden_samples
    from runtime.manifest import read_manifest

    manifest = read_manifest(directory)
    matches = [e for e in manifest.artifacts if e.name == name]
    if not matches:
        raise RoiedgeError(f"{directory}: manifest has no artifact named {name!r}")
    entry = matches[0]
    inputs = golden_samples(load_golden(directory, manifest, entry.model), entry, name)[0]
    start = time.perf_counter()
    backend = backend if entry.format == "tflite" else None  # --backend names a TFLite interpreter
    stage = load_stage(directory, entry, backend, num_threads=threads)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    stage.run(*inputs)
    first_s = time.perf_counter() - start
    result = {"kind": "artifact", "name": name, "backend": stage.backend.name}
    result.update(
        load_s=load_s, first_s=first_s, **latencies(lambda: stage.run(*inputs), runs, warmup)
    )
    result["peak_rss_mb"] = peak_rss_mb()
    return result


#: detect()'s timed steps, in order (runtime.detector.Detector.timings); "other" is the rest of
#: a call (rescaling boxes to the input image, building the Detection list, the timers).
PIPELINE_STEPS = ("preprocess", "backbone_rpn", "proposals", "head", "detections", "other")
#: The steps outside both model invocations after preprocessing: the post-processing.
POSTPROCESS_STEPS = ("proposals", "detections", "other")


def pipeline_split(timings: dict[str, float]) -> dict[str, float]:
    """One detect() call's ``Detector.timings`` (seconds) -> ms per step of PIPELINE_STEPS + total.

    "other" = total - the timed steps (>= 0), so the steps add up to the total.
    """
    split = {step: timings.get(step, 0.0) * 1e3 for step in PIPELINE_STEPS[:-1]}
    total = timings.get("total", 0.0) * 1e3
    split["other"] = max(total - sum(split.values()), 0.0)
    split["total"] = total
    return split


def measure_pipeline(
    directory: str, precision: str, runs: int, warmup: int, backend: str | None, threads: int | None
) -> dict[str, Any]:
    """In this process: build a Detector at ``precision`` and time detections on the golden images.

    The timed calls cycle through every golden image (their RPN outputs differ, and with them
    the work of NMS), starting with the first.
    """
    from runtime.check import load_golden
    from runtime.detector import Detector, DetectorOptions
    from runtime.manifest import read_manifest

    start = time.perf_counter()
    fmt, _, prec = precision.rpartition(":")
    fmt = fmt or "tflite"
    backend = backend if fmt in ("tflite", "single") else None  # --backend: a TFLite interpreter
    if fmt == "single":  # detector.<prec>.tflite: one interpreter (runtime/single.py)
        from runtime.single import SingleDetector

        detector = SingleDetector(directory, prec, backend, threads)
    else:
        options = DetectorOptions(precision=prec, format=fmt, backend=backend, num_threads=threads)
        detector = Detector(directory, options)
    load_s = time.perf_counter() - start
    manifest = read_manifest(directory)
    image_tensor = load_golden(directory, manifest, "backbone_rpn")["input_0"]
    images = np.clip(image_tensor.reshape(-1, *image_tensor.shape[-3:]), 0, 255).astype(np.uint8)
    start = time.perf_counter()
    found = detector.detect(images[0])
    first_s = time.perf_counter() - start
    first_detection_at = time.time()
    result = {
        "kind": "pipeline",
        "name": f"pipeline {precision}",
        "backend": detector.describe(),
        "detections": len(found),
        "images": len(images),
        "first_detection_at": first_detection_at,
    }
    splits: list[dict[str, float]] = []

    def detect_and_record():
        detector.detect(images[len(splits) % len(images)])
        splits.append(pipeline_split(detector.timings))

    result.update(load_s=load_s, first_s=first_s, **latencies(detect_and_record, runs, warmup))
    # detect()'s split: the median ms per step over the timed and warm-up calls. The
    # post-processing share is everything outside preprocessing and the two model invocations
    # (proposals, detections, other), as the median over calls of its fraction of that call.
    result["split_ms"] = {
        step: float(np.median([split[step] for split in splits]))
        for step in (*PIPELINE_STEPS, "total")
    }
    shares = [
        sum(split[step] for step in POSTPROCESS_STEPS) / max(split["total"], 1e-9)
        for split in splits
    ]
    result["postprocess_share"] = float(np.median(shares))
    # Its spread over the calls: the quartiles (a preempted call alone would set min or max).
    result["postprocess_share_iqr"] = [float(v) for v in np.percentile(shares, [25, 75])]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m runtime _bench-child ARGS`` and return its JSON, adding ``cold_start_s``."""
    runtime_parent = str(Path(__file__).resolve().parent.parent)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (runtime_parent, child_env.get("PYTHONPATH", "")) if p
    )
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "_bench-child", *args],
        capture_output=True,
        text=True,
        env=child_env,
        check=False,
    )
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RoiedgeError(
            f"benchmark of {args[0]} {args[1]} failed: {lines[-1] if lines else proc.returncode}"
        )
    result = strict_json.loads(proc.stdout.strip().splitlines()[-1])
    if "first_detection_at" in result:
        result["cold_start_s"] = result.pop("first_detection_at") - started
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    """The benchmark rows as a plain-text table."""
    header = (
        f"{'what':<34} {'load s':>7} {'first s':>8} {'p50 ms':>8} {'p90 ms':>8} {'RSS MB':>7} "
        f"{'cold s':>7}  backend"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        cold = f"{row['cold_start_s']:.2f}" if "cold_start_s" in row else ""
        rss = f"{row['peak_rss_mb']:.0f}" if row.get("peak_rss_mb") is not None else "?"
        lines.append(
            f"{row['name']:<34} {row['load_s']:>7.3f} {row['first_s']:>8.3f} {row['p50_ms']:>8.2f} "
            f"{row['p90_ms']:>8.2f} {rss:>7} {cold:>7}  {row['backend']}"
        )
        if "split_ms" in row:
            split = ", ".join(f"{k} {v:.2f}" for k, v in row["split_ms"].items() if k != "total")
            low, high = row.get("postprocess_share_iqr", (None, None))
            spread = f" (quartiles {low:.0%}-{high:.0%})" if low is not None else ""
            lines.append(
                f"  split ms: {split}; post-processing {row['postprocess_share']:.0%}{spread}"
            )
    return "\n".join(lines)


def thread_scaling(
    directory: str,
    precision: str = "int8",
    thread_counts: tuple[int, ...] = (1, 2, 4),
    calls: int = 200,
    rounds: int = 3,
    interpreter_threads: int = 1,
) -> list[dict[str, Any]]:
    """Throughput (detections/s) of one shared Detector vs one Detector per thread.

    ``shared``: every worker thread calls the same Detector (one lock per TFLite stage);
    ``per_thread``: each worker thread owns a Detector (its own interpreters, more memory).
    ``calls`` detections are split over the workers; the modes and thread counts are interleaved
    ``rounds`` times and each row keeps every round's throughput, so ratios come from one run.
    """
    import threading

    from runtime.check import load_golden
    from runtime.detector import Detector
    from runtime.manifest import read_manifest

    manifest = read_manifest(directory)
    x = load_golden(directory, manifest, "backbone_rpn")["input_0"]
    image = np.clip(x.reshape(-1, *x.shape[-3:])[0], 0, 255).astype(np.uint8)

    def build() -> Detector:
        return Detector(directory, precision=precision, num_threads=interpreter_threads)

    shared = build()
    own = [build() for _ in range(max(thread_counts))]
    for detector in [*own, shared]:
        detector.detect(image)  # warm-up: first invocations allocate
    rows = {
        (mode, n): {"mode": mode, "threads": n, "per_s": []}
        for mode in ("shared", "per_thread")
        for n in thread_counts
    }
    for _ in range(rounds):
        for n in thread_counts:
            for mode in ("shared", "per_thread"):
                detectors = [shared] * n if mode == "shared" else own[:n]
                share = [calls // n + (i < calls % n) for i in range(n)]

                def work(detector: Detector, count: int) -> None:
                    for _ in range(count):
                        detector.detect(image)

                workers = [
                    threading.Thread(target=work, args=(d, c)) for d, c in zip(detectors, share)
                ]
                start = time.perf_counter()
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                rows[(mode, n)]["per_s"].append(calls / (time.perf_counter() - start))
    return list(rows.values())


# ---------------------------------------------------------------------------- host and interleaved timing
# What the benchmarks record next to every number: the host, its load, and interleaved timing.
# Two hosts of the same cloud "kind" can differ in CPU generation, cache sizes and neighbours'
# load, and a latency ratio can flip between them; so every benchmark JSON carries
# :func:`host_info` and measures its ratios with :func:`interleaved` (reference and candidates
# alternated within one run, a ratio per round, the range over rounds).

#: CPU flags that decide which kernels XNNPACK, oneDNN and onnxruntime pick.
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return model, flags


def _caches() -> list[dict[str, Any]]:
    """CPU 0's caches from sysfs: level, type, size (as the kernel reports it, e.g. '1024K')."""
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            caches.append(
                {
                    "level": int((index / "level").read_text()),
                    "type": (index / "type").read_text().strip(),
                    "size": (index / "size").read_text().strip(),
                    "shared_by_cpus": (index / "shared_cpu_list").read_text().strip(),
                }
            )
        except OSError:
            continue
    return caches


def host_info() -> dict[str, Any]:
    """The CPU model, the kernel-relevant flags, cores, caches and the current load average."""
    model, flags = _cpu_model_and_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": model,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "caches": _caches(),
        "machine": platform.machine(),
        "load_avg": load_avg(),
    }


def load_avg() -> list[float] | None:
    """1, 5 and 15 minute load averages (others' work on a shared machine skews timings)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def host_line(host: dict[str, Any]) -> str:
    """One line naming the host for printed tables."""
    flags = ",".join(flag for flag, present in host["cpu_flags"].items() if present)
    caches = " ".join(f"L{c['level']}{c['type'][0].lower()} {c['size']}" for c in host["caches"])
    return (
        f"host: {host['cpu_model']}, {host['usable_cpus']} cpus, {caches}; {flags}; "
        f"load {host['load_avg']}"
    )


def interleaved(
    calls: dict[str, Callable[[], Any]],
    reference: str,
    rounds: int,
    runs: dict[str, int] | int,
    warmup: int = 1,
    progress: Callable | None = None,
) -> dict[str, dict[str, Any]]:
    """Times every call in turn, ``rounds`` times: per call the p50 of each round and its ratio
    to ``reference``'s p50 in the same round, so load that comes and goes hits both alike.

    ``runs`` is the number of timed calls per round (one number, or per call). Returns per name:
    ``p50_ms`` (median over rounds), ``round_ms``, and ``ratio`` (median), ``ratio_min``,
    ``ratio_max``, ``round_ratios``.
    """
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    steps = range(rounds) if progress is None else progress(range(rounds))
    for _ in steps:
        for name, call in calls.items():
            count = runs if isinstance(runs, int) else runs[name]
            per_round[name].append(latencies(call, count, warmup)["p50_ms"])
    reference_ms = np.asarray(per_round[reference])
    result = {}
    for name, values in per_round.items():
        ratios = np.asarray(values) / reference_ms
        result[name] = {
            "p50_ms": float(np.median(values)),
            "round_ms": [round(v, 3) for v in values],
            "ratio": float(np.median(ratios)),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "round_ratios": [round(float(r), 3) for r in ratios],
        }
    return result
