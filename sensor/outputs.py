"""Outputs: the edge that writes records. JSON lines, one object per line.

Everything reaches here as plain dicts; serialisation escapes every control
character and every non-ASCII code point (``ensure_ascii``), so whatever
bytes came off the wire, each record is exactly one valid JSON line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KINDS = ("connections", "alerts", "transfers", "weird")

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode


def to_line(rec: dict[str, Any]) -> bytes:
    return (_dumps(rec) + "\n").encode("ascii")


class MemorySink:
    """Keeps records in lists (tests, the replay summary)."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict]] = {k: [] for k in KINDS}

    def emit(self, kind: str, rec: dict) -> None:
        self.records[kind].append(rec)

    def close(self) -> None:
        pass


class JsonlSink:
    """``OUT/<kind>.jsonl`` files, opened with O_APPEND, one write per record."""

    def __init__(self, outdir: str | Path, truncate: bool = True) -> None:
        self.dir = Path(outdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fds: dict[str, int] = {}
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        for k in KINDS:
            self.fds[k] = os.open(self.dir / f"{k}.jsonl", flags, 0o640)
        self.counts = {k: 0 for k in KINDS}

    def emit(self, kind: str, rec: dict) -> None:
        os.write(self.fds[kind], to_line(rec))
        self.counts[kind] += 1

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class TeeSink:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def emit(self, kind: str, rec: dict) -> None:
        for s in self.sinks:
            s.emit(kind, rec)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
