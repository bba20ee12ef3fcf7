"""The report's PNG: accuracy vs latency per pipeline and an abs-error histogram per output."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from export.stages import STAGE_IO


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of the (latency, accuracy) points no other point beats on both (lower, higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (lat2 <= lat and acc2 >= acc) and (lat2 < lat or acc2 > acc)
            for j, (lat2, acc2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _pareto(axis: Any, report: dict[str, Any]) -> None:
    """mAP@.5:.95 against p50 latency per pipeline (and float Keras), Pareto front joined."""
    import matplotlib.ticker

    keras = report["keras"]
    named = []
    if "map50_95" in keras:
        named.append(("keras float", keras["latency_ms"], keras["map50_95"], None))
    for row in report["pipelines"]:
        if "map50_95" in row:
            named.append((row["name"], row["latency_ms"], row["map50_95"], row.get("passed", True)))
    for name, lat, acc, passed in named:
        if passed is None:
            axis.scatter([lat], [acc], marker="*", s=160, color="black")
        else:
            axis.scatter([lat], [acc], color="tab:green" if passed else "tab:red")
        axis.annotate(name, (lat, acc), fontsize=7)
    front = pareto_front([(lat, acc) for _, lat, acc, _ in named])
    if len(front) > 1:
        axis.step(
            [named[i][1] for i in front],
            [named[i][2] for i in front],
            where="post",
            color="gray",
            lw=0.8,
            ls="--",
            label="Pareto front",
        )
        axis.legend(fontsize=6)
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("pipeline p50 latency, ms (log)")
    axis.set_ylabel("mAP@.5:.95 (held-out)")
    axis.set_title("accuracy vs latency (green: within tolerance)")
    axis.grid(alpha=0.3)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """A PNG: mAP@.5:.95 vs p50 latency per pipeline (Pareto view), abs-error histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {name for row in report["artifacts"] for name in row.get("histograms", {})}
    outputs = [name for _, names in STAGE_IO.values() for name in names if name in present]
    panels = 1 + len(outputs)
    cols = 3
    rows = math.ceil(panels / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    _pareto(axes[0][0], report)
    bins = np.asarray(report["error_bins"])
    centers = np.sqrt(bins[:-1] * bins[1:])
    for k, output in enumerate(outputs, start=1):
        axis = axes[k // cols][k % cols]
        for row in report["artifacts"]:
            counts = row.get("histograms", {}).get(output)
            if counts:
                axis.plot(centers, counts, label=f"{row['format']}/{row['precision']}", lw=1.2)
        axis.set_xscale("log")
        axis.set_yscale("symlog", linthresh=1)
        axis.set_ylim(bottom=0)
        axis.set_xlabel("|error| vs float Keras")
        axis.set_ylabel("count")
        axis.set_title(f"{output}: abs error")
        axis.legend(fontsize=6)
        axis.grid(alpha=0.3)
    for k in range(panels, rows * cols):
        axes[k // cols][k % cols].axis("off")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, path)
