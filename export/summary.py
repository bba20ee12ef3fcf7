"""The table ``python -m export`` prints when it is done: one line per artifact written."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runtime import strict_json
from runtime.errors import RoiedgeError, one_line, say


def summary(manifest, out: Path) -> str:
    """One line per artifact: size, size vs float32, worst golden SNR, head top-1 agreement."""
    lines = [f"{'artifact':34s} {'bytes':>10s} {'vs f32':>7s} {'min SNR dB':>10s} {'top-1':>6s}"]
    for entry in manifest.artifacts:
        report = strict_json.loads((out / entry.op_report).read_text(encoding="utf-8"))
        checks = report.get("golden_check", {})
        # A single-file detector is judged by matched detections, not per-output SNR.
        snr = min((c["snr_db"] for c in checks.values() if "snr_db" in c), default=float("nan"))
        top1 = checks.get("class_scores", {}).get("top1_agreement")
        if top1 is None:
            top1 = checks.get("location", {}).get("detections_matched")
        try:
            ratio = entry.bytes / manifest.find(entry.model, entry.format, "float32").bytes
            ratio_text = f"{ratio:.2f}x"
        except RoiedgeError:
            ratio_text = "-"
        lines.append(
            f"{entry.name:34s} {entry.bytes:10d} {ratio_text:>7s} {snr:10.1f} "
            f"{'' if top1 is None else f'{top1:.3f}':>6s}"
        )
    total = sum(a.bytes for a in manifest.artifacts)
    lines.append(f"wrote {len(manifest.artifacts)} artifacts ({total / 1e6:.1f} MB) to {out}")
    return "\n".join(lines)


def export_outcome(run: Callable[[], tuple[Any, Path]], notes: Sequence[str] = ()) -> int:
    """Run one export CLI's ``run() -> (manifest, out)``; print its summary (then each of
    ``notes``, one line each: what the export did not build and why) or its one-line error.

    Exit codes of every ``python -m export`` path: 0 written, 1 a failed check or build
    (``ExportCheckError``), 2 bad input (``RoiedgeError``).
    """
    from export.config import ExportCheckError

    try:
        manifest, out = run()
    except RoiedgeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except ExportCheckError as error:
        print(f"export check failed: {one_line(error)}", file=sys.stderr)
        return 1
    say("\n".join([summary(manifest, Path(out)), *notes]))
    return 0
