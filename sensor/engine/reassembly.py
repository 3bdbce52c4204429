"""TCP reassembly, one direction of one connection (sans-IO).

``segment(seq, payload)`` returns the bytes that became deliverable in order,
plus a gap signal when bytes are known to be missing. Bounded: out-of-order
bytes and segments, and ``depth`` (bytes delivered at all). Design and
defaults: docs/engine.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from sensor.core.frozen import frozen
from sensor.engine.decode import seq_unwrap

_M32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ReassemblyLimits:
    max_ooo_bytes: int = 256 * 1024  # bytes waiting out of order, per direction
    max_ooo_segments: int = 256  # segments waiting out of order, per direction
    depth: int = 4 * 1024 * 1024  # bytes delivered per direction, then stop


@frozen
class Chunk:
    """In-order data (``gap`` = 0) or a gap of ``gap`` missing bytes."""

    data: bytes
    gap: int = 0


class Stream:
    __slots__ = (
        "base",
        "next",
        "ooo",
        "ooo_bytes",
        "delivered",
        "limits",
        "started",
        "depth_reached",
        "gaps",
        "gap_bytes",
    )

    def __init__(self, limits: ReassemblyLimits = ReassemblyLimits()) -> None:
        self.limits = limits
        self.base = 0
        self.next = 0  # next expected offset (unwrapped, relative to base)
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.delivered = 0
        self.started = False
        self.depth_reached = False
        self.gaps = 0
        self.gap_bytes = 0

    def start(self, isn_next: int) -> None:
        """Anchor at the first payload byte's sequence number (SYN seq + 1)."""
        if not self.started:
            self.base = isn_next & _M32
            self.started = True

    def _offset(self, seq: int) -> int:
        return seq_unwrap(seq, self.base, self.next)

    def in_order(self, seq: int, payload: bytes) -> bytes | None:
        """Fast path: ``payload`` if it is exactly the next data and nothing
        waits out of order (the common case), else None -- call ``segment``."""
        if (
            self.started
            and not self.ooo
            and ((seq - self.base) & _M32) == (self.next & _M32)
            and self.delivered + len(payload) <= self.limits.depth
        ):
            self.next += len(payload)
            self.delivered += len(payload)
            return payload
        return None

    def segment(self, seq: int, payload: bytes) -> list[Chunk]:
        if not payload or self.depth_reached:
            return []
        if not self.started:
            # picked up mid-stream: start here and say so
            self.start(seq)
            out = [Chunk(b"", gap=-1)]  # unknown amount missing before this point
            self.gaps += 1
        else:
            out = []
        off = self._offset(seq)
        end = off + len(payload)
        if end <= self.next:
            return out  # entirely old: a retransmission
        if off < self.next:
            payload = payload[self.next - off :]
            off = self.next
        if off > self.next:
            if off not in self.ooo or len(self.ooo[off]) < len(payload):
                self.ooo_bytes += len(payload) - len(self.ooo.get(off, b""))
                self.ooo[off] = payload
            if self.ooo_bytes > self.limits.max_ooo_bytes or len(self.ooo) > self.limits.max_ooo_segments:
                out += self._skip_to_first_ooo()
                out += self._drain()
            return out
        out += self._deliver(payload)
        out += self._drain()
        return out

    def _deliver(self, data: bytes) -> list[Chunk]:
        room = self.limits.depth - self.delivered
        if room <= 0:
            self.depth_reached = True
            return []
        if len(data) > room:
            data = data[:room]
            self.depth_reached = True
        self.next += len(data)
        self.delivered += len(data)
        return [Chunk(data)]

    def _drain(self) -> list[Chunk]:
        out: list[Chunk] = []
        while self.ooo and not self.depth_reached:
            # the smallest waiting offset
            off = min(self.ooo)
            if off > self.next:
                break
            data = self.ooo.pop(off)
            self.ooo_bytes -= len(data)
            if off + len(data) <= self.next:
                continue
            out += self._deliver(data[self.next - off :])
        return out

    def _skip_to_first_ooo(self) -> list[Chunk]:
        off = min(self.ooo)
        gap = off - self.next
        self.next = off
        self.gaps += 1
        self.gap_bytes += gap
        return [Chunk(b"", gap=gap)]

    def skip_to(self, seq_end: int) -> list[Chunk]:
        """Bytes up to ``seq_end`` exist but were not captured (snaplen): a gap."""
        if not self.started or self.depth_reached:
            return []
        end = self._offset(seq_end)
        if end <= self.next:
            return []
        gap = end - self.next
        self.next = end
        self.gaps += 1
        self.gap_bytes += gap
        return [Chunk(b"", gap=gap)] + self._drain()

    def flush(self) -> list[Chunk]:
        """The connection ended: whatever still waits is behind a hole."""
        out: list[Chunk] = []
        while self.ooo and not self.depth_reached:
            out += self._skip_to_first_ooo()
            out += self._drain()
        self.ooo.clear()
        self.ooo_bytes = 0
        return out
