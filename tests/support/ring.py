"""The flight recorder's files on disk, as the live tests watch them."""

from __future__ import annotations

from pathlib import Path


def ring_on_disk(ring: Path, pattern: str = "xfer-sensor-*.pcapng") -> tuple[int, int]:
    """Bytes and count of the ring files below ``ring`` matching ``pattern``
    (``*/xfer-sensor-*.pcapng``: every worker's folder of ``--workers N``)."""
    size = n = 0
    for f in ring.glob(pattern):
        try:
            size += f.stat().st_size
            n += 1
        except FileNotFoundError:  # removed between the listing and the stat
            pass
    return size, n
