"""Entry point of ``python -m runtime``."""

import sys

from runtime.cli import main
from runtime.interrupts import run_main

sys.exit(run_main(main))
