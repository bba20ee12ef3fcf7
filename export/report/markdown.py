"""The report as text: Markdown tables (report.md, the CLI) and the plain speed table."""

from __future__ import annotations

import math
from typing import Any


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what ``report.md`` holds and the CLI prints)."""
    keras = report["keras"]
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        "# roiedge parity and speed report",
        "",
        f"Measured {report['created']} on {machine['cpu']} ({machine['cores']} cores), "
        f"{report['config']['threads']} threads (TensorFlow: {machine['keras_threads']}); "
        f"{versions}.",
        "",
        f"Float Keras: mAP@0.5 {_num(keras.get('map50'), '.4f')}, mAP@0.5:0.95 "
        f"{_num(keras.get('map50_95'), '.4f')} on {keras.get('images', '-')} {keras.get('scored_on', 'held-out')} images; "
        f"p50 latency pipeline {keras['latency_ms']:.2f} ms, backbone_rpn "
        f"{keras['backbone_rpn_latency_ms']:.2f} ms, head {keras['head_latency_ms']:.2f} ms.",
        "",
        "## Pipelines (both stages exported)",
        "",
        "| pipeline | mAP@0.5 | Δ pts [95%] | mAP@.5:.95 | Δ pts [95%] | box IoU vs float | matched | bytes "
        "| p50 ms | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base = keras.get("map50")
    base95 = keras.get("map50_95")
    for row in report["pipelines"]:
        lines.append(
            f"| {row['name']} | {_num(row.get('map50'), '.4f')} | {_delta(base, row)} | "
            f"{_num(row.get('map50_95'), '.4f')} | {_delta(base95, row, 'map50_95')} | "
            f"{_num(row.get('agreement', {}).get('mean_iou'), '.3f')} | "
            f"{_num(row.get('agreement', {}).get('matched'), '.3f')} | {row['bytes']:,} | "
            f"{row['latency_ms']:.2f} | {_verdict(row)} |"
        )
    if not report["pipelines"]:
        lines.append("| none: no pipeline has both stages exported (see Not measured) | |||||||||")
    lines += _single_file_lines(report["pipelines"])
    lines += [
        "",
        "## Artifacts (the other stage in float Keras)",
        "",
        "| artifact | mAP@0.5 | Δ pts [95%] | mAP@.5:.95 | Δ pts [95%] | top-1 | box IoU | bytes | p50 ms "
        "| verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report["artifacts"]:
        lines.append(
            f"| {row['name']} | {_num(row.get('map50'), '.4f')} | {_delta(base, row)} | "
            f"{_num(row.get('map50_95'), '.4f')} | {_delta(base95, row, 'map50_95')} | "
            f"{_num(row.get('top1_agreement'), '.3f')} | "
            f"{_num(row.get('agreement', {}).get('mean_iou'), '.3f')} | {row['bytes']:,} | "
            f"{row['latency_ms']:.2f} | {_verdict(row)} |"
        )
    if any("outputs" in row for row in report["artifacts"]):
        lines += [
            "",
            "## Per-output error against float Keras (same inputs)",
            "",
            "| artifact | output | max abs | mean abs | p99 abs | SNR dB | cosine |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in report["artifacts"]:
            for name, stats in row.get("outputs", {}).items():
                lines.append(
                    f"| {row['name']} | {name} | {stats['max_abs']:.2e} | {stats['mean_abs']:.2e} | "
                    f"{stats['p99_abs']:.2e} | {_num(stats['snr_db'], '.1f')} | "
                    f"{_num(stats['cosine'], '.6f')} |"
                )
    if report.get("mixed"):
        lines += [
            "",
            "## Mixed precision (layers kept float; cost against the int8 artifact)",
            "",
            "| artifact | target | met | layers kept float | + bytes | + p50 ms |",
            "| --- | --- | --- | --- | ---: | ---: |",
        ]
        for row in report["mixed"]:
            target = ", ".join(f"{k} {v}" for k, v in row["target"].items() if k != "target_met")
            kept = "<br>".join(row["kept_float_layers"]) or "none (int8 meets the target)"
            reached = ", ".join(f"{k} {_num(v, '.2f')}" for k, v in row.get("reached", {}).items())
            met = "yes" if row["target_met"] else f"**NO** ({reached}; {row.get('why')})"
            lines.append(
                f"| {row['name']} | {target} | {met} | {kept} | "
                f"{_num(row.get('extra_bytes_vs_int8'), ',')} | "
                f"{_num(row.get('extra_ms_vs_int8'), '+.2f')} |"
            )
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | bound | |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in report["targets"]:
        lines.append(
            f"| {row['target']} | {_num(row['measured'], '.3f')} | {row['bound']:.2f} | "
            f"{row['note']} |"
        )
    if report.get("not_measured"):
        lines += ["", "## Not measured", ""]
        lines += [f"- {row['name']}: {row['reason']}" for row in report["not_measured"]]
    failures = [
        f"- {row['name']}: " + "; ".join(row["failures"])
        for row in report["artifacts"] + report["pipelines"]
        if row.get("failures")
    ]
    lines += ["", "## Verdict", ""]
    lines += failures or ["Every artifact and pipeline is within its precision's tolerance."]
    return "\n".join(lines) + "\n"


def _single_file_lines(pipelines: list[dict]) -> list[str]:
    """The single files (``detector/*`` rows) against the two-stage pipeline each one chains."""
    singles = [row for row in pipelines if row.get("single_file")]
    if not singles:
        return []
    lines = [
        "",
        "### Single files against their two-stage pipeline",
        "",
        "| single file | two-stage | Δ mAP@0.5 pts | Δ mAP@.5:.95 pts | p50 single / two-stage |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in singles:
        delta = row.get("vs_two_stage", {})
        shown = [f"{100 * delta[k]:+.2f}" if k in delta else "-" for k in ("map50", "map50_95")]
        lines.append(
            f"| {row['name']} | {row['two_stage'] or '-'} | {shown[0]} | {shown[1]} | "
            f"{_num(row.get('latency_vs_two_stage'), '.2f')} |"
        )
    return lines


def _delta(base: float | None, row: dict, key: str = "map50") -> str:
    """The Δ against float Keras in points, with its paired bootstrap 95% interval if any."""
    if base is None or row.get(key) is None:
        return "-"
    interval = row.get("drop_intervals", {}).get(key)
    if interval is None:
        return f"{100 * (row[key] - base):+.2f}"
    # the interval is of the drop (Keras - row); Δ = -drop, so its ends swap
    return (
        f"{100 * (row[key] - base):+.2f} "
        f"[{-100 * interval['high']:+.2f}, {-100 * interval['low']:+.2f}]"
    )


def _verdict(row: dict) -> str:
    if "passed" not in row:
        return "-"
    small = " (val set too small to judge a bound)" if row.get("too_small_to_judge") else ""
    return ("pass" if row["passed"] else "**FAIL**") + small


def speed_table(report: dict[str, Any]) -> str:
    """Latency and size per artifact and pipeline, with the ratio to the float Keras stage."""
    keras = report["keras"]
    reference = {
        "backbone_rpn": keras["backbone_rpn_latency_ms"],
        "head": keras["head_latency_ms"],
        "pipeline": keras["latency_ms"],
    }
    lines = [f"{'what':<34} {'bytes':>11} {'p50 ms':>9} {'x Keras':>8}"]
    lines.append(f"{'keras float pipeline':<34} {'':>11} {keras['latency_ms']:>9.2f} {1.0:>8.2f}")
    for row in report["artifacts"]:
        ratio = row["latency_ms"] / reference[row["model"]]
        lines.append(
            f"{row['name']:<34} {row['bytes']:>11,} {row['latency_ms']:>9.2f} {ratio:>8.2f}"
        )
    for row in report["pipelines"]:
        ratio = row["latency_ms"] / reference["pipeline"]
        name = f"pipeline {row['name']}"
        lines.append(f"{name:<34} {row['bytes']:>11,} {row['latency_ms']:>9.2f} {ratio:>8.2f}")
    return "\n".join(lines)
