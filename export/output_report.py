"""Per-output error report of one exported model: ``report.md`` (table) and ``report.png`` (plot).

Reads each artifact's golden check (every output of every artifact against the original Keras
model on the golden samples, judged by :mod:`runtime.golden`) from its op report; the detector's
parity report (``python -m export.report``) measures mAP instead and needs the detector.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from runtime import strict_json
from runtime.manifest import Manifest, atomic_write_bytes
from runtime.tolerances import tolerance_for


def _rows(manifest: Manifest, directory: Path) -> list[dict[str, Any]]:
    rows = []
    for entry in manifest.artifacts:
        report = strict_json.loads((directory / entry.op_report).read_text(encoding="utf-8"))
        for output, metrics in report["golden_check"].items():
            rows.append(
                {
                    "artifact": entry.name,
                    "precision": entry.precision,
                    "bytes": entry.bytes,
                    "output": output,
                    **{k: metrics[k] for k in ("max_abs", "mean_abs", "snr_db")},
                    "top1_agreement": metrics.get("top1_agreement"),
                    "ok": not metrics["failures"],
                }
            )
    return rows


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def markdown(manifest: Manifest, directory: Path, proof_summary: str) -> str:
    """The table: one row per artifact output, its errors against the original model."""
    rows = _rows(manifest, directory)
    lines = [
        f"# {manifest.artifacts[0].model if manifest.artifacts else '?'}: artifacts vs the "
        "original Keras model (golden samples)",
        "",
        f"Swap proof: {proof_summary}",
        "",
        "| artifact | output | max abs | mean abs | SNR dB | floor dB | top-1 | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        floor = tolerance_for(row["precision"]).min_snr_db
        top1 = "" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        lines.append(
            f"| {row['artifact']} | {row['output']} | {row['max_abs']:.2e} | "
            f"{row['mean_abs']:.2e} | {_db(row['snr_db'])} | {'' if floor is None else floor} | "
            f"{top1} | {'ok' if row['ok'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"


def plot(manifest: Manifest, directory: Path) -> bytes:
    """PNG: SNR of every output of every artifact, with each precision's floor marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.figures import png_bytes

    rows = _rows(manifest, directory)
    artifacts = list(dict.fromkeys(r["artifact"] for r in rows))
    outputs = list(dict.fromkeys(r["output"] for r in rows))
    width = 0.8 / max(len(outputs), 1)
    figure, axis = plt.subplots(figsize=(1.4 * len(artifacts) + 3, 4))
    finite = [r["snr_db"] for r in rows if math.isfinite(r["snr_db"])]
    cap = (max(finite) if finite else 100.0) + 10
    for j, output in enumerate(outputs):
        values = [
            min(next((r["snr_db"] for r in rows if r["artifact"] == a and r["output"] == output),
                     0.0), cap)
            for a in artifacts
        ]  # fmt: skip
        positions = [i + (j - (len(outputs) - 1) / 2) * width for i in range(len(artifacts))]
        axis.bar(positions, values, width, label=output)
    for i, artifact in enumerate(artifacts):
        precision = next(r["precision"] for r in rows if r["artifact"] == artifact)
        floor = tolerance_for(precision).min_snr_db
        if floor is not None:
            axis.hlines(floor, i - 0.45, i + 0.45, colors="black", linestyles="dashed")
    axis.set_xticks(range(len(artifacts)))
    axis.set_xticklabels([a.split("/", 1)[1] for a in artifacts], rotation=20)
    axis.set_ylabel("SNR vs original model (dB)")
    axis.set_title("per-output error on the golden samples (dashed: the precision's floor)")
    axis.legend()
    return png_bytes(figure, dpi=100)


def write(manifest: Manifest, directory: Path, proof_summary: str) -> None:
    """``directory/report.md`` and ``directory/report.png`` (atomically)."""
    text = markdown(manifest, directory, proof_summary)
    atomic_write_bytes(Path(directory) / "report.md", text.encode("utf-8"))
    atomic_write_bytes(Path(directory) / "report.png", plot(manifest, directory))
