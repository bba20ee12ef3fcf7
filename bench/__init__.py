"""Benchmarks (``make bench``): a dev folder, not part of the installed packages."""
