"""``python -m export.report``: measure, write report.json/.md/.png, exit 1 on a broken tolerance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from export.report.config import REPORT_JSON, REPORT_MD, REPORT_PNG, ReportConfig
from export.report.markdown import format_markdown, speed_table
from export.report.plot import plot_report
from export.report.verdicts import build_report
from runtime import strict_json
from runtime.errors import RoiedgeError, one_line, say
from runtime.manifest import atomic_write_bytes
from runtime.safe_files import writable_output


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """Atomically write report.json, report.md and report.png into ``directory``."""
    json_path = directory / REPORT_JSON
    md_path = directory / REPORT_MD
    png_path = directory / REPORT_PNG
    atomic_write_bytes(json_path, strict_json.dump_bytes(report))
    atomic_write_bytes(md_path, format_markdown(report).encode())
    plot_report(report, png_path)
    return [json_path, md_path, png_path]


def build_parser() -> argparse.ArgumentParser:
    defaults = ReportConfig(artifacts=Path("artifacts"))
    parser = argparse.ArgumentParser(
        prog="python -m export.report",
        description="Accuracy, speed and size of every exported artifact against the float Keras model.",
    )
    parser.add_argument(
        "--artifacts", type=Path, required=True, help="artifacts directory (make export)"
    )
    parser.add_argument(
        "--images", type=int, default=defaults.images, help="held-out images for mAP"
    )
    parser.add_argument(
        "--stage-images",
        type=int,
        default=defaults.stage_images,
        help="images for per-output error statistics",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="score on this COCO instances JSON (your val set) instead of the held-out split",
    )
    parser.add_argument("--runs", type=int, default=defaults.runs, help="timed runs per latency")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed runs first")
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="threads for every backend"
    )
    parser.add_argument(
        "--speed-only", action="store_true", help="latency and size only (make bench)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: exit 0 all within tolerance, 1 a tolerance broken, 2 bad usage or input."""
    args = build_parser().parse_args(argv)
    try:
        config = ReportConfig(**vars(args))
        if not config.speed_only:  # found before the measuring, not after it
            for name in (REPORT_JSON, REPORT_MD, REPORT_PNG):
                writable_output(config.artifacts / name, "--artifacts")
        report = build_report(config)
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if config.speed_only:
        print(speed_table(report))
        return 0
    paths = write_report(report, config.artifacts)
    say(format_markdown(report))
    say("wrote " + ", ".join(str(p) for p in paths))
    return 0 if report["passed"] else 1
