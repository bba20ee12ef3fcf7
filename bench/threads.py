"""Throughput of one Detector shared by threads vs one Detector per thread (runtime/README.md).

    python bench/threads.py --artifacts artifacts [--precision int8] [--json out.json]

Modes and thread counts (1, 2, 4) are interleaved over three rounds in one run; the table gives
every round's detections/s and its ratio to the shared detector on one thread in the same round.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import strict_json
from runtime.bench import thread_scaling
from runtime.manifest import atomic_write_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--precision", nargs="+", default=["int8", "float32"])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {"host": platform.processor() or platform.machine(), "rows": {}}
    for precision in args.precision:
        rows = thread_scaling(str(args.artifacts), precision, calls=args.calls, rounds=args.rounds)
        reference = next(r for r in rows if r["mode"] == "shared" and r["threads"] == 1)["per_s"]
        for row in rows:
            ratios = [a / b for a, b in zip(row["per_s"], reference)]
            row["ratio_to_shared_1"] = ratios
            print(
                f"{precision:<8} {row['mode']:<10} {row['threads']} threads "
                f"{' '.join(f'{v:6.1f}' for v in row['per_s'])} det/s  "
                f"x{min(ratios):.2f}-{max(ratios):.2f} vs shared/1"
            )
        results["rows"][precision] = rows
    if args.json:
        atomic_write_bytes(args.json, strict_json.dump_bytes(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
