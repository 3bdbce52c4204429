"""Process-wide settings of a sensor process: the garbage collector's thresholds."""

from __future__ import annotations

import gc

# CPython collects generation 0 every 700 net allocations and re-examines
# the older generations every 10 of those: with a flow table of 10^5 live
# objects (flows, their sides, analyzers) that is mostly re-scanning objects
# that live on (what it cost: bench/README.md).
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect less often (the process runs one pipeline; see GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)
