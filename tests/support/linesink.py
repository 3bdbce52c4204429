"""A sink that keeps every record as the line an output would write, with its
kind: two runs compare byte for byte, in order."""

from __future__ import annotations

from sensor.io.sinks import MemorySink
from sensor.records.encode import to_line


class LineSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[bytes] = []

    def emit(self, kind: str, rec: dict) -> None:
        self.lines.append(kind.encode() + b" " + to_line(rec))
