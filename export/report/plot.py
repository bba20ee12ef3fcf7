"""The report's PNG: accuracy vs latency per pipeline and an abs-error histogram per output."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from export.stages import STAGE_IO


def plot_report(report: dict[str, Any], path: Path) -> None:
    """A PNG: mAP@0.5 vs p50 latency per pipeline, and an abs-error histogram per output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    present = {name for row in report["artifacts"] for name in row.get("histograms", {})}
    outputs = [name for _, names in STAGE_IO.values() for name in names if name in present]
    panels = 1 + len(outputs)
    cols = 3
    rows = math.ceil(panels / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    axis = axes[0][0]
    keras = report["keras"]
    if "map50" in keras:
        axis.scatter([keras["latency_ms"]], [keras["map50"]], marker="*", s=160, color="black")
        axis.annotate("keras float", (keras["latency_ms"], keras["map50"]), fontsize=8)
    for row in report["pipelines"]:
        if "map50" in row:
            axis.scatter(
                [row["latency_ms"]],
                [row["map50"]],
                color="tab:green" if row.get("passed", True) else "tab:red",
            )
            axis.annotate(row["name"], (row["latency_ms"], row["map50"]), fontsize=7)
    axis.set_xscale("log")
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("pipeline p50 latency, ms (log)")
    axis.set_ylabel("mAP@0.5 (held-out)")
    axis.set_title("accuracy vs latency")
    axis.grid(alpha=0.3)
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
