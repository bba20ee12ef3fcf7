"""Run a command, sample its process tree's resident memory, stop it past a limit.

    python scripts/peak_rss.py --limit-mb 8000 -- python -m export --out /tmp/x ...

Prints one line: wall seconds, peak RSS (MiB, the whole process tree summed, sampled every
0.2 s from /proc) and the exit code; the command is killed (its process group) if the tree's
RSS passes ``--limit-mb``, so a measurement cannot take the shared machine down. Linux only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def tree_rss_mib(root: int) -> float:
    """Summed VmRSS (MiB) of ``root`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid, ppid = int(entry.name), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=float, default=8000.0, help="kill the command past this")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (expected: -- COMMAND ...)")
    start = time.monotonic()
    process = subprocess.Popen(command, start_new_session=True)
    peak, killed = 0.0, False
    try:
        while process.poll() is None:
            peak = max(peak, tree_rss_mib(process.pid))
            if peak > args.limit_mb and not killed:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            time.sleep(args.interval)
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return 130
    seconds = time.monotonic() - start
    note = f" KILLED past {args.limit_mb:.0f} MiB" if killed else ""
    print(
        f"peak_rss_mib={peak:.0f} wall_s={seconds:.1f} exit={process.returncode}{note}",
        file=sys.stderr,
    )
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
