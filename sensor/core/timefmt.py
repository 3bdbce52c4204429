"""Packet time as text: ISO 8601 UTC with microseconds.

In the core layer so that analyzers (transfer timestamps) and records use one
formatter; ``sensor.records.mde`` re-exports ``iso_us`` for its importers.
"""

from __future__ import annotations

from datetime import UTC, datetime

MAX_TS_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, the last ISO 8601 can say


_DAYS: dict[int, str] = {}  # day number since 1970 -> "YYYY-MM-DDT"
_MAX_DAYS_CACHED = 4096


def iso_us(ts_us: int) -> str:
    """ISO 8601 UTC with microseconds, e.g. 2026-11-28T03:00:00.000123Z.
    Times a capture can hold but ISO 8601 cannot (before 1970 is fine, past
    year 9999 is not; pcapng has 64-bit timestamps) are clamped.
    UTC has no leap seconds in POSIX time, so the time of day is plain
    arithmetic and only the date goes through ``datetime`` (once per day)."""
    ts_us = min(max(ts_us, 0), MAX_TS_US)
    sec, us = divmod(ts_us, 1_000_000)
    global _last
    last = _last
    if sec == last[0]:  # the same second as the last call (records come in packet time)
        return f"{last[1]}{us:06d}Z"
    prefix = _second(sec)
    _last = (sec, prefix)  # one reference: a reader in another thread sees both or neither
    return f"{prefix}{us:06d}Z"


_last: tuple[int, str] = (-1, "")  # the last second formatted, and its text up to the microseconds


def _second(sec: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.`` of a second since 1970."""
    day, sec = divmod(sec, 86400)
    date = _DAYS.get(day)
    if date is None:
        date = datetime.fromtimestamp(day * 86400, tz=UTC).strftime("%Y-%m-%dT")
        if len(_DAYS) < _MAX_DAYS_CACHED:
            _DAYS[day] = date
    hour, sec = divmod(sec, 3600)
    minute, sec = divmod(sec, 60)
    return f"{date}{hour:02d}:{minute:02d}:{sec:02d}."
