"""Small helpers the lab tests share."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
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


def record_ts(iso: str) -> float:
    """A record's ISO 8601 time (``...T12:00:00.000000Z``) as Unix seconds."""
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def keep_copies(env: str, paths: Iterable[Path]) -> None:
    """When ``$<env>`` names a folder, (re)make it and copy *paths* (files,
    and folders without their sockets) into it: a lab run's records and
    captures, kept for a look after the run."""
    keep = os.environ.get(env)
    if not keep:
        return
    shutil.rmtree(keep, ignore_errors=True)
    Path(keep).mkdir(parents=True)
    for src in paths:
        if src.is_dir():
            shutil.copytree(src, Path(keep) / src.name, ignore=shutil.ignore_patterns("*.sock"))
        elif src.exists():
            shutil.copy(src, keep)
