"""What the benchmarks record next to every number: the host, its load, and interleaved timing.

Two hosts of the same cloud "kind" can differ in CPU generation, cache sizes and neighbours'
load, and a latency ratio can flip between them; so every benchmark JSON carries
:func:`host_info` and measures its ratios with :func:`interleaved` (reference and candidates
alternated within one run, a ratio per round, the range over rounds).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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
    from runtime.bench import latencies

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
