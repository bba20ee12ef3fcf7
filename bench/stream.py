"""Stream fps of the shipped detector: pipelined vs sequential, 1 and 2 cores (docs/streams.md).

    python -m bench.stream --artifacts artifacts [--precisions float32 float16 ...]
        [--frames 150] [--rounds 3] [--json out.json] [--png out.png]

Writes a procedural 640x480 mp4 (models.moving_scenes) to a temporary directory and runs
``runtime.stream_bench.bench_video`` on it: every (cores, precision) pair, the two modes
alternating in each round, each run a fresh process pinned to the first N cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.moving_scenes import moving_frames, write_video
from runtime import strict_json
from runtime.manifest import atomic_write_bytes
from runtime.stream_bench import bench_video, format_summary

PRECISIONS = ("float32", "float16", "dynamic_int8", "int8", "mixed")


def plot(result: dict, path: Path) -> None:
    """Pipelined/sequential fps ratio per precision and core count, every round a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.figures import png_bytes

    figure, axis = plt.subplots(figsize=(7, 3.5))
    rows = result["summary"]
    for offset, cores in enumerate(sorted({r["cores"] for r in rows})):
        mine = [r for r in rows if r["cores"] == cores]
        for i, row in enumerate(mine):
            axis.scatter([i + 0.15 * offset] * len(row["ratio"]), row["ratio"], label=None)
        axis.plot([], [], "o", label=f"{cores} core(s)")
    names = [r["precision"] for r in rows if r["cores"] == rows[0]["cores"]]
    axis.set_xticks(range(len(names)), names)
    axis.axhline(1.5, color="grey", linestyle="--", linewidth=1)
    axis.set_ylabel("pipelined / sequential fps")
    axis.set_title(f"{result['host']}, {result['started']}", fontsize=9)
    axis.legend()
    atomic_write_bytes(path, png_bytes(figure))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as work:
        video = Path(work) / "moving_640x480.mp4"
        write_video(video, moving_frames(args.frames, (480, 640), seed=11), fps=15.0)
        result = bench_video(args.artifacts, video, args.precisions, rounds=args.rounds)
    result["video"] = f"{args.frames} frames 640x480 mp4v (models.moving_scenes seed 11)"
    print(format_summary(result))
    if args.json is not None:
        atomic_write_bytes(args.json, strict_json.dump_bytes(result))
    if args.png is not None:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
