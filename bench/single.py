"""The single file against the two-stage runtime: detect() latency, same precision, same images.

    python -m bench.single --artifacts artifacts [--precisions int8 float32] [--threads 1 2]
        [--images 20] [--rounds 5] [--runs 40] [--json out.json] [--png out.png]

Per (threads, precision): ``runtime.single.SingleDetector`` (``detector.<precision>.tflite``, one
interpreter, post-processing in the graph) and ``runtime.detector.Detector`` (the two stage files
+ numpy post-processing), both on the same held-out images at the model size, cycling through
them. The two alternate in every round (``runs`` calls each), so load that comes and goes hits
both alike: p50/p90 over all calls, and the single/two-stage ratio of each round's p50. Where the
time goes: the two-stage split (median ms per step, its numpy post-processing = proposals +
detections + other), and the single file's in-graph post-processing estimated as its p50 minus
the two-stage backbone_rpn + head invocations (median ms, same rounds).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import strict_json
from runtime.bench import POSTPROCESS_STEPS, host_info, host_line, pipeline_split
from runtime.manifest import atomic_write_bytes

PIPELINES = ("single", "two-stage")


def held_out_images(count: int, image_size: tuple[int, int]) -> list[np.ndarray]:
    """The first ``count`` held-out procedural images, drawn at the model size."""
    from models.data import data_config_for, eval_split

    return list(eval_split(count, data_config_for(tuple(image_size))).images)


def measure(artifacts: Path, precision: str, threads: int, images, rounds: int, runs: int) -> dict:
    """Both pipelines of ``precision`` on ``threads`` interpreter threads, interleaved."""
    from runtime.detector import Detector
    from runtime.single import SingleDetector

    detectors = {
        "single": SingleDetector(artifacts, precision, num_threads=threads),
        "two-stage": Detector(artifacts, precision=precision, num_threads=threads),
    }
    detections = {name: sum(len(d.detect(i)) for i in images) for name, d in detectors.items()}
    times = {name: [] for name in detectors}
    round_p50 = {name: [] for name in detectors}
    splits = []
    for _ in range(rounds):
        for name, detector in detectors.items():
            mine = []
            for k in range(runs):
                start = time.perf_counter()
                detector.detect(images[k % len(images)])
                mine.append(time.perf_counter() - start)
                if name == "two-stage":
                    splits.append(pipeline_split(detector.timings))
            times[name] += mine
            round_p50[name].append(float(np.percentile(mine, 50) * 1e3))
    ratios = np.asarray(round_p50["single"]) / np.asarray(round_p50["two-stage"])
    split = {k: float(np.median([s[k] for s in splits])) for k in splits[0]}
    result = {"precision": precision, "threads": threads, "pipelines": {}}
    for name in detectors:
        result["pipelines"][name] = {
            "describe": detectors[name].describe(),
            "p50_ms": float(np.percentile(times[name], 50) * 1e3),
            "p90_ms": float(np.percentile(times[name], 90) * 1e3),
            "round_p50_ms": [round(v, 3) for v in round_p50[name]],
            "detections": detections[name],
        }
    single_p50 = result["pipelines"]["single"]["p50_ms"]
    result.update(
        ratio_single_to_two_stage=float(np.median(ratios)),
        round_ratios=[round(float(r), 3) for r in ratios],
        two_stage_split_ms=split,
        two_stage_postprocess_ms=sum(split[s] for s in POSTPROCESS_STEPS),
        single_in_graph_postprocess_ms_estimate=single_p50
        - split["backbone_rpn"]
        - split["head"]
        - split["preprocess"],
    )
    return result


def format_rows(rows: list[dict]) -> str:
    """A plain-text table, one line per (threads, precision)."""
    lines = [
        f"{'threads':>7} {'precision':<9} {'single p50/p90 ms':>18} {'two-stage p50/p90 ms':>21} "
        f"{'single/two':>10}  {'numpy post ms':>13} {'in-graph post ms':>16}"
    ]
    for row in rows:
        one, two = row["pipelines"]["single"], row["pipelines"]["two-stage"]
        lines.append(
            f"{row['threads']:>7} {row['precision']:<9} "
            f"{one['p50_ms']:>8.2f} /{one['p90_ms']:>8.2f} {two['p50_ms']:>10.2f} /{two['p90_ms']:>8.2f} "
            f"{row['ratio_single_to_two_stage']:>9.2f}x  {row['two_stage_postprocess_ms']:>13.2f} "
            f"{row['single_in_graph_postprocess_ms_estimate']:>16.2f}"
        )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """p50 bars (p90 whiskers) per (precision, threads), single beside two-stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.figures import png_bytes

    rows = result["rows"]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(rows))
    for offset, name in zip((-0.2, 0.2), PIPELINES):
        p50 = [r["pipelines"][name]["p50_ms"] for r in rows]
        p90 = [r["pipelines"][name]["p90_ms"] for r in rows]
        whiskers = [np.zeros(len(rows)), np.asarray(p90) - np.asarray(p50)]
        axis.bar(x + offset, p50, width=0.4, yerr=whiskers, capsize=3, label=name)
    axis.set_xticks(x, [f"{r['precision']}\n{r['threads']} thread(s)" for r in rows])
    axis.set_ylabel("detect() ms (p50, whisker p90)")
    axis.set_title(f"{result['host']['cpu_model']}, {result['started']}", fontsize=9)
    axis.legend()
    atomic_write_bytes(path, png_bytes(figure))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--precisions", nargs="+", default=["int8", "float32"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40, help="timed calls per pipeline per round")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    bad = [f"--{k} {v}" for k, v in (("images", args.images), ("rounds", args.rounds),
                                     ("runs", args.runs)) if v < 1]  # fmt: skip
    bad += [f"--threads {t}" for t in args.threads if t < 1]
    if bad:
        print(f"error: {', '.join(bad)}; expected >= 1", file=sys.stderr)
        return 2
    from runtime.errors import RoiedgeError
    from runtime.manifest import read_manifest

    try:
        manifest = read_manifest(args.artifacts)
        images = held_out_images(args.images, manifest.detector["image_size"])
        result = {
            "command": shlex.join(["python", "-m", "bench.single", *(argv or sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": host_info(),
            "images": args.images,
            "rounds": args.rounds,
            "runs_per_round": args.runs,
            "rows": [],
        }
        print(host_line(result["host"]))
        for threads in args.threads:
            for precision in args.precisions:
                row = measure(args.artifacts, precision, threads, images, args.rounds, args.runs)
                result["rows"].append(row)
        result["host"]["load_avg_after"] = host_info()["load_avg"]
    except RoiedgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(format_rows(result["rows"]))
    if args.json:
        atomic_write_bytes(args.json, strict_json.dump_bytes(result))
    if args.png:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
