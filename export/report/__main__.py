"""``python -m export.report``."""

import sys

from export.report.cli import main
from runtime.interrupts import run_main

sys.exit(run_main(main))
