"""The ``xfer-sensor`` console script.

The garbage collector's thresholds are raised before the sensor's modules are
imported: importing them allocates tens of thousands of objects that live as
long as the process (classes, compiled patterns, rule sets), and with
CPython's defaults the collector re-scans them dozens of times on the way
(~10 ms of a replay's start here). The thresholds are the pipeline's own
(``sensor.core.runtime.GC_THRESHOLDS``).

A ``replay`` that returned leaves the process without the interpreter's
teardown (``os._exit`` once stdout, stderr and logging are flushed): by then
every record is written and every sink, spool and worker closed, and the
teardown would only free the objects one by one -- ~3 % of the 1M-packet
benchmark, measured alternating with and without. Its only threads are
daemon threads, already finished; it registers no atexit handler. Other
commands (the daemon above all) exit normally."""
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
        except (OSError, ValueError):   # closed or broken: nothing more can be written to it
            pass
    os._exit(rc)
