"""TCP reassembly, one direction of one connection (sans-IO).

``segment(seq, payload)`` returns the bytes that became deliverable in order,
plus a gap signal when bytes are known to be missing. Bounded: out-of-order
bytes and segments, and ``depth`` (bytes delivered at all). Design and
defaults: docs/engine.md.

The first copy of a byte wins: a retransmission or overlap is compared with
the copy already delivered (the last ``retain`` bytes are kept for that) or
waiting out of order, and one that differs is counted in ``conflicts``
(the dispatcher reports it as the weird ``tcp_overlap_conflict``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sensor.core.frozen import frozen
from sensor.engine.decode import seq_unwrap

_M32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ReassemblyLimits:
    max_ooo_bytes: int = 256 * 1024  # bytes waiting out of order, per direction
    max_ooo_segments: int = 256  # segments waiting out of order, per direction
    depth: int = 4 * 1024 * 1024  # bytes delivered per direction, then stop
    retain: int = 16 * 1024  # bytes delivered last, kept to compare overlaps with (limits.overlap_check_bytes)


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
        "keep",
        "keep_bytes",
        "conflicts",
        "conflict_detail",
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
        # the last bytes delivered, as (offset, data), at most ``limits.retain`` bytes
        # beyond the newest chunk: what an overlap is compared with
        self.keep: deque[tuple[int, bytes]] = deque()
        self.keep_bytes = 0
        self.conflicts = 0  # segments whose bytes differed from the first copy
        self.conflict_detail = ""

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
            self.remember(self.next, payload)
            self.next += len(payload)
            self.delivered += len(payload)
            return payload
        return None

    def remember(self, off: int, data: bytes) -> None:
        """``data`` was delivered at ``off``: keep it to compare overlaps with
        (the fused path calls this for the in-order data it delivers itself)."""
        keep = self.keep
        keep.append((off, data))
        kb = self.keep_bytes + len(data)
        retain = self.limits.retain
        while kb - len(keep[0][1]) > retain:
            kb -= len(keep.popleft()[1])
        self.keep_bytes = kb

    def _compare(self, off: int, data: bytes) -> None:
        """``data`` at ``off`` overlaps bytes already delivered: count a
        conflict when a kept copy of them differs (older ones are unchecked)."""
        end = off + len(data)
        for k_off, k_data in reversed(self.keep):
            k_end = k_off + len(k_data)
            if k_end <= off:
                break
            lo, hi = max(off, k_off), min(end, k_end)
            if lo < hi and data[lo - off : hi - off] != k_data[lo - k_off : hi - k_off]:
                self._conflict(lo, hi - lo)
                return

    def _conflict(self, off: int, n: int) -> None:
        self.conflicts += 1
        self.conflict_detail = f"{n} bytes at stream offset {off} differ from the first copy, which is kept"

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
            if self.keep:
                self._compare(off, payload)
            return out  # entirely old: a retransmission
        if off < self.next:
            if self.keep:
                self._compare(off, payload[: self.next - off])
            payload = payload[self.next - off :]
            off = self.next
        if off > self.next:
            old = self.ooo.get(off)
            if old is None:
                self.ooo_bytes += len(payload)
                self.ooo[off] = payload
            else:
                n = min(len(old), len(payload))
                if old[:n] != payload[:n]:
                    self._conflict(off, n)
                if len(payload) > len(old):  # the first copy, and what only the new one has
                    self.ooo_bytes += len(payload) - len(old)
                    self.ooo[off] = old + payload[len(old) :]
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
        self.remember(self.next, data)
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
            if self.keep and off < self.next:
                self._compare(off, data[: self.next - off])
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
