"""Unanswered connection attempts, aggregated under a flood.

A SYN scan or flood fills the flow table with embryos (bare SYNs nobody
answered, sensor/engine/flows.py); at ``limits.max_flows`` each new one evicts
the oldest. Written one record each, such attempts cost the sensor ~20 us
apiece (uid, record, detection, summary) and bury whoever reads the records.
With ``attempt_records: aggregate`` (the default), an embryo *evicted while
the flow table is in emergency mode* is counted here instead, in a group per
(originator address, responder port), and each group becomes one
``connection_attempts`` weird record: how many attempts, the first and last
one's time, the last responder. Nothing else is aggregated: an attempt that
got any answer was hatched into a flow and keeps its own record, as do
attempts that end by timeout or at the end of the capture, and every
attempt while the table is not under pressure. The pipeline turns this on
only when no loaded detection rule can match an unanswered attempt's record
(``DetectionRule.could_match``), so alerts never change.

Bounded: at most ``limits.max_attempt_groups`` groups; a new group beyond it
writes the oldest first. A group is written when it is ``GROUP_SPAN_US`` of
packet time old (at the flow table's idle scan), when emergency mode ends and
at the end (``flush``), so every aggregated attempt is in exactly one record.
docs/engine.md ("Flood of unanswered attempts") says why and what is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

GROUP_SPAN_US = 60_000_000  # a group is written once its first attempt is this old (packet time)

# on_group(originator address, responder port, attempts, first ts, last ts, last responder address)
GroupCallback = Callable[[bytes, int, int, int, int, bytes], None]


class AttemptStats:
    __slots__ = ("aggregated", "groups", "groups_peak")

    def __init__(self) -> None:
        self.aggregated = 0  # attempts counted in a group instead of a record each
        self.groups = 0  # groups written (connection_attempts records)
        self.groups_peak = 0  # most groups held at once

    def as_dict(self) -> dict[str, int]:
        return {"aggregated": self.aggregated, "groups": self.groups, "groups_peak": self.groups_peak}


class AttemptGroups:
    """Groups of unanswered attempts by (originator address, responder port),
    oldest first; ``on_group`` gets each when it is written."""

    __slots__ = ("max_groups", "on_group", "groups", "stats")

    def __init__(self, max_groups: int, on_group: GroupCallback, stats: AttemptStats | None = None) -> None:
        self.max_groups = max_groups
        self.on_group = on_group
        # originator address + responder port (2 bytes) -> [first ts, last ts, attempts, last responder]
        self.groups: dict[bytes, list[Any]] = {}
        self.stats = stats if stats is not None else AttemptStats()  # (the owner's: kept across reloads)

    def add(self, key: bytes, resp_b: bytes, ts: int) -> None:
        """One attempt: ``key`` its originator address followed by the responder
        port as 2 big-endian bytes (as they end an embryo's wire key)."""
        self.stats.aggregated += 1
        g = self.groups.get(key)
        if g is not None:
            if ts > g[1]:
                g[1] = ts
            elif ts < g[0]:  # (a full flow's SYN evicted after a later embryo's)
                g[0] = ts
            g[2] += 1
            g[3] = resp_b
            return
        groups = self.groups
        if len(groups) >= self.max_groups:
            self._write(next(iter(groups)))
        groups[key] = [ts, ts, 1, resp_b]
        if len(groups) > self.stats.groups_peak:
            self.stats.groups_peak = len(groups)

    def expire(self, now: int) -> None:
        """Write the groups whose first attempt is ``GROUP_SPAN_US`` old at ``now`` (oldest first)."""
        limit = now - GROUP_SPAN_US
        due = []
        for key, g in self.groups.items():
            if g[0] > limit:
                break
            due.append(key)
        for key in due:
            self._write(key)

    def flush(self) -> None:
        """Write every group, oldest first."""
        for key in list(self.groups):
            self._write(key)

    def _write(self, key: bytes) -> None:
        first, last, n, resp_b = self.groups.pop(key)
        self.stats.groups += 1
        self.on_group(key[:-2], int.from_bytes(key[-2:], "big"), n, first, last, resp_b)
