"""The ``xfer-sensor`` console script.

Raises the garbage collector's thresholds (``sensor.core.runtime``) before
the sensor's modules are imported, and leaves a finished ``replay`` with
``os._exit`` once everything is flushed and closed, skipping the interpreter's
teardown; other commands (the daemon above all) exit normally. Why:
bench/README.md, "Figures behind design choices"."""

from __future__ import annotations

import logging
import os
import sys

from sensor.core.runtime import tune_gc


def main() -> int:
    tune_gc()
    from sensor.cli.main import main as cli_main

    rc = cli_main()
    if sys.argv[1:2] == ["replay"]:
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """Leave without the interpreter's teardown, nothing unwritten."""
    logging.shutdown()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):  # closed or broken: nothing more can be written to it
            pass
    os._exit(rc)
