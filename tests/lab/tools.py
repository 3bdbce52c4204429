"""Small helpers the lab tests share."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from pathlib import Path


def sensor_cmd() -> list[str]:
    """The installed ``xfer-sensor`` command (the venv's first)."""
    exe = Path(sys.executable).parent / "xfer-sensor"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("xfer-sensor")
    if found:
        return [found]
    raise RuntimeError("xfer-sensor is not installed (pip install -e '.[test]')")


def union_length(segments: Iterable[tuple[int, int]]) -> int:
    """How many sequence numbers the half-open ranges ``[s, e)`` cover together."""
    total, end = 0, None
    for s, e in sorted(segments):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total
