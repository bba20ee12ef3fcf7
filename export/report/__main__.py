"""``python -m export.report``."""

import sys

from export.report.cli import main

sys.exit(main())
