"""``python -m bench.onnx_profile --artifacts DIR`` (run by ``make bench``): where onnxruntime spends
an ONNX artifact's time, int8 against float32, per stage and op group (:mod:`export.onnx_profile`
does the profiling; this prints the table, writes the JSON and the plot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_profile import GROUPS, profile_stage


def profile_artifacts(
    directory: Path, threads: int = 2, runs: int = 50, rounds: int = 7
) -> dict[str, Any]:
    """:func:`profile_stage` for every stage with both ONNX float32 and int8 in the manifest."""
    from runtime.bench import host_info
    from runtime.manifest import read_manifest

    manifest = read_manifest(directory)
    have = {(e.model, e.precision) for e in manifest.artifacts if e.format == "onnx"}
    stages = sorted({m for m, _ in have if (m, "float32") in have and (m, "int8") in have})
    host = host_info()
    profiles = [profile_stage(directory, stage, threads, runs, rounds) for stage in stages]
    return {"host": host, "load_avg_after": host_info()["load_avg"], "stages": profiles}


def format_table(result: dict[str, Any]) -> str:
    """The profile as a plain table: per stage and precision, p50 and ms per group."""
    from runtime.bench import host_line

    lines = [
        host_line(result["host"]),
        "onnxruntime profile (median ms per run; the profiler's per-node overhead inflates totals):",
        f"{'stage/precision':<24}{'p50 ms':>8}" + "".join(f"{g:>13}" for g in GROUPS),
    ]
    for stage in result["stages"]:
        for precision in ("float32", "int8"):
            row = stage["profile"][precision]
            lines.append(
                f"{stage['stage'] + '/' + precision:<24}{row['p50_ms']:>8.3f}"
                + "".join(f"{row['groups_ms'][g]:>13.3f}" for g in GROUPS)
            )
        low, high = stage["ratio_range"]
        line = (
            f"  unprofiled, interleaved: int8/float32 {stage['ratio']:.2f}x ({low:.2f}-{high:.2f})"
        )
        if stage["floor"] is not None:
            low, high = stage["floor_range"]
            line += (
                f"; its float RoIPooling alone {stage['floor']:.2f}x ({low:.2f}-{high:.2f}) of "
                "float32: int8 cannot go below that"
            )
        lines.append(line)
    return "\n".join(lines)


def plot(result: dict[str, Any]) -> bytes:
    """Stacked bars: ms per group, float32 and int8 side by side for every stage (PNG bytes)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.figures import png_bytes

    labels, stacks = [], []
    for stage in result["stages"]:
        for precision in ("float32", "int8"):
            labels.append(f"{stage['stage']}\n{precision}")
            stacks.append([stage["profile"][precision]["groups_ms"][g] for g in GROUPS])
    figure, axis = plt.subplots(figsize=(7, 4))
    bottoms = np.zeros(len(labels))
    for index, group in enumerate(GROUPS):
        heights = np.asarray([s[index] for s in stacks])
        axis.bar(labels, heights, bottom=bottoms, label=group)
        bottoms += heights
    axis.set_ylabel("ms per run (onnxruntime profile)")
    axis.set_title(f"ONNX int8 vs float32 by op group ({result['host']['cpu_model']})", fontsize=9)
    axis.legend()
    return png_bytes(figure)


def main(argv: list[str] | None = None) -> int:
    from runtime import strict_json
    from runtime.errors import RoiedgeError, one_line
    from runtime.manifest import atomic_write_bytes

    parser = argparse.ArgumentParser(prog="python -m bench.onnx_profile", description=__doc__)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    for flag in ("threads", "runs", "rounds"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag} is {getattr(args, flag)}; expected >= 1", file=sys.stderr)
            return 2
    try:
        result = profile_artifacts(args.artifacts, args.threads, args.runs, args.rounds)
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if not result["stages"]:
        print(f"error: {args.artifacts}: no stage has both ONNX float32 and int8", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        atomic_write_bytes(args.json, strict_json.dump_bytes(result))
    if args.png:
        atomic_write_bytes(args.png, plot(result))
    return 0


if __name__ == "__main__":
    from runtime.interrupts import run_main

    sys.exit(run_main(main))
