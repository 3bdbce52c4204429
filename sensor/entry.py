"""The ``xfer-sensor`` console script.

The garbage collector's thresholds are raised before the sensor's modules are
imported: importing them allocates tens of thousands of objects that live as
long as the process (classes, compiled patterns, rule sets), and with
CPython's defaults the collector re-scans them dozens of times on the way
(~10 ms of a replay's start here). The thresholds are the pipeline's own
(see ``GC_THRESHOLDS``)."""
from __future__ import annotations

import gc

# CPython collects generation 0 every 700 net allocations and re-examines
# the older generations every 10 of those: with a flow table of 10^5 live
# objects (flows, their sides, analyzers) that is mostly re-scanning objects
# that live on. Measured on a replay of 100,000 flows: 15-20 % of the time.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often (the process runs one pipeline; see GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> int:
    tune_gc()
    from .cli import main as cli_main
    return cli_main()
