"""Detection: Sigma detection rules per record, ``event_count`` windows.

Sans-IO and driven by packet time (a record counts at its first packet). An
alert fires once when a key crosses the condition, then re-arms. Bounded by
``max_window_keys`` and ``max_window_events``. Window state is exported and
imported as plain data for sensor/detect/winstore.py. Semantics:
docs/detection.md.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sensor.core.config import Limits
from sensor.core.counters import Counters
from sensor.core.timefmt import MAX_TS_US, iso_us
from sensor.detect.rules import CorrelationRule, RuleSet
from sensor.records.mde import PORT_PROTOCOL

# a window's key: the record's values of the rule's group-by fields
Key = tuple[Any, ...]

MAX_ALERT_UIDS = 200
MAX_BYTES = (1 << 63) - 1  # a restored byte count above this is refused


@dataclass(slots=True)
class _Ev:
    ts: int
    sent: int
    recv: int
    uid: str

    def __lt__(self, other: _Ev) -> bool:
        return (self.ts, self.uid) < (other.ts, other.uid)


@dataclass(slots=True)
class _KeyState:
    events: list[_Ev] = field(default_factory=list)
    armed: bool = True
    last_alert_ts: int = -1
    episode: dict[str, Any] | None = None  # the open alert's running totals (hunt view)


def _bytes(rec: Mapping[str, Any]) -> tuple[int, int]:
    """A connection's bytes for the alert: its own plus those of its data
    channels / TFTP transfer -- the volume that actually moved."""
    return (
        int(rec.get("SentBytes") or 0) + int(rec.get("DataSentBytes") or 0),
        int(rec.get("ReceivedBytes") or 0) + int(rec.get("DataReceivedBytes") or 0),
    )


def window_id(rule: CorrelationRule) -> str:
    """The rule id plus a stable hash of what decides the window's counting
    (referenced rules, group-by, timespan, condition)."""
    definition = json.dumps(
        {
            "rules": list(rule.rules),
            "group_by": list(rule.group_by),
            "timespan_s": rule.timespan_s,
            "op": rule.op,
            "threshold": rule.threshold,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{rule.id}:{hashlib.sha256(definition.encode()).hexdigest()[:16]}"


def _export_key(st: _KeyState) -> dict[str, Any]:
    ep = st.episode
    return {
        "events": [[e.ts, e.sent, e.recv, e.uid] for e in st.events],
        "armed": st.armed,
        "last_alert_ts": st.last_alert_ts,
        "episode": None if ep is None else dict(ep, Tags=list(ep.get("Tags", ())), Uids=list(ep["Uids"])),
    }


def _import_key(d: Mapping[str, Any], max_events: int) -> _KeyState:
    """A key's state from the state file, which may be damaged or hostile:
    every value is checked (raises KeyError, TypeError or ValueError)."""
    raw = d["events"]
    if not isinstance(raw, list) or not raw:
        raise ValueError("no events")
    evs = []
    for ts, sent, recv, uid in raw[-max_events:]:
        if not all(type(x) is int for x in (ts, sent, recv)) or not isinstance(uid, str):
            raise ValueError("bad event")
        if not 0 <= ts <= MAX_TS_US or not 0 <= sent <= MAX_BYTES or not 0 <= recv <= MAX_BYTES:
            raise ValueError("event out of range")
        evs.append(_Ev(ts, sent, recv, uid))
    evs.sort()
    ep = d.get("episode")
    if ep is not None:
        # the fields observe() updates when a further connection joins the alert
        if (
            not isinstance(ep, dict)
            or not isinstance(ep.get("Uids"), list)
            or not all(type(ep.get(f)) is int for f in ("ConnectionCount", "BytesSent", "BytesReceived"))
            or not all(isinstance(ep.get(f), str) for f in ("FirstSeen", "LastSeen"))
        ):
            raise ValueError("bad episode")
        for v in ep.values():  # the alert's fields: scalars, or lists of them (Tags, Uids)
            if isinstance(v, list):
                if not all(x is None or isinstance(x, (str, int, float, bool)) for x in v):
                    raise ValueError("bad episode")
            elif not (v is None or isinstance(v, (str, int, float, bool))):
                raise ValueError("bad episode")
        ep = dict(ep, Uids=list(ep["Uids"]))
    last = d["last_alert_ts"]
    if type(last) is not int or not -1 <= last <= MAX_TS_US or not isinstance(d["armed"], bool):
        raise ValueError("bad alert state")
    return _KeyState(evs[-max_events:], d["armed"], last, ep)


class DetectStats(Counters):
    __slots__ = ("records", "matched", "alerts", "suppressed", "keys_evicted", "events_dropped", "episodes_dropped")
    records: int
    matched: int
    alerts: int
    suppressed: int
    keys_evicted: int
    events_dropped: int
    episodes_dropped: int


class _Window:
    def __init__(self, rule: CorrelationRule, limits: Limits, stats: DetectStats) -> None:
        self.rule = rule
        self.span_us = rule.timespan_s * 1_000_000
        self.keys: OrderedDict[Key, _KeyState] = OrderedDict()
        self.max_keys = limits.max_window_keys
        self.max_events = limits.max_window_events
        self.stats = stats
        # the open alerts' running totals (the hunt view), as many as keys are kept
        self.episodes: deque[dict[str, Any]] = deque()
        # keys changed since the last export_changes(), in the order they were
        # touched (None: not tracking, the replay case)
        self.dirty: dict[Key, None] | None = None

    def _hit(self, n: int) -> bool:
        return n > self.rule.threshold if self.rule.op == "gt" else n >= self.rule.threshold

    def observe(self, rec: Mapping[str, Any], ts: int) -> dict[str, Any] | None:
        key = tuple(rec.get(f, "") for f in self.rule.group_by)
        dirty = self.dirty
        if dirty is not None:
            dirty.pop(key, None)
            dirty[key] = None
        st = self.keys.get(key)
        if st is None:
            if len(self.keys) >= self.max_keys:
                gone, _ = self.keys.popitem(last=False)
                self.stats.keys_evicted += 1
                if dirty is not None:
                    dirty.setdefault(gone, None)
            st = self.keys[key] = _KeyState()
        else:
            self.keys.move_to_end(key)
        evs = st.events
        sent, recv = _bytes(rec)
        bisect.insort(evs, _Ev(ts, sent, recv, str(rec.get("Uid", ""))))
        latest = evs[-1].ts
        # forget what no window ending at or after `latest` can hold
        cut = bisect.bisect_left(evs, _Ev(latest - self.span_us, 0, 0, ""))
        if cut:
            del evs[:cut]
        if len(evs) > self.max_events:
            drop = len(evs) - self.max_events
            del evs[:drop]
            self.stats.events_dropped += drop
        # the window ending at the new event, and the one ending at the latest
        best: tuple[int, int] | None = None
        for end in {ts, latest}:
            lo = bisect.bisect_left(evs, _Ev(end - self.span_us, 0, 0, ""))
            hi = bisect.bisect_right(evs, _Ev(end, 0, 0, "\U0010ffff"))
            if best is None or hi - lo > best[1] - best[0]:
                best = (lo, hi)
        assert best is not None  # {ts, latest} is never empty
        lo, hi = best
        n = hi - lo
        if not self._hit(n):
            st.armed = True
            return None
        if not st.armed and st.last_alert_ts >= 0 and latest - st.last_alert_ts >= self.span_us:
            st.armed = True
        if not st.armed:
            self.stats.suppressed += 1
            ep = st.episode
            if ep is not None:  # a further connection of an alert already raised
                ev = _Ev(ts, *_bytes(rec), str(rec.get("Uid", "")))
                ep["ConnectionCount"] += 1
                ep["BytesSent"] += ev.sent
                ep["BytesReceived"] += ev.recv
                ep["FirstSeen"] = min(ep["FirstSeen"], iso_us(ts))
                ep["LastSeen"] = max(ep["LastSeen"], iso_us(ts))
                if len(ep["Uids"]) < MAX_ALERT_UIDS:
                    ep["Uids"].append(ev.uid)
            return None
        st.armed = False
        st.last_alert_ts = latest
        win = evs[lo:hi]
        self.stats.alerts += 1
        alert = self._alert(rec, key, win)
        st.episode = dict(alert, Uids=list(alert["Uids"]))
        if len(self.episodes) >= self.max_keys:
            self.episodes.popleft()
            self.stats.episodes_dropped += 1
        self.episodes.append(st.episode)
        return alert

    # -- state export / import (plain data, no I/O) --------------------------------
    def _entry(self, keys: Iterable[Key]) -> dict[str, Any]:
        upserts, deletes = [], []
        for k in keys:
            st = self.keys.get(k)
            if st is None:
                deletes.append(k)
            else:
                upserts.append((k, _export_key(st)))
        return {"rule_id": self.rule.id, "span_us": self.span_us, "upserts": upserts, "deletes": deletes}

    def export_state(self) -> dict[str, Any]:
        """Every key, least recently seen first."""
        return self._entry(list(self.keys))

    def export_changes(self) -> dict[str, Any]:
        """Keys touched since the last call (upserts, in touch order) and keys
        evicted (deletes); needs tracking on."""
        keys = list(self.dirty or ())
        if self.dirty:
            self.dirty.clear()
        return self._entry(keys)

    def import_state(self, entries: Iterable[tuple[Key, Mapping[str, Any]]]) -> tuple[int, int]:
        """(key, state) pairs, least recently seen first; keeps the newest
        ``max_window_keys``. Returns (keys held now, entries refused)."""
        refused = 0
        for key, d in entries:
            try:
                st = _import_key(d, self.max_events)
            except (KeyError, TypeError, ValueError):
                refused += 1
                continue
            self.keys.pop(key, None)
            if len(self.keys) >= self.max_keys:
                self.keys.popitem(last=False)
            self.keys[key] = st
        eps = sorted((st for st in self.keys.values() if st.episode is not None), key=lambda st: st.last_alert_ts)
        self.episodes = deque(st.episode for st in eps[-self.max_keys :] if st.episode is not None)
        return len(self.keys), refused

    def _alert(self, rec: Mapping[str, Any], key: Key, win: list[_Ev]) -> dict[str, Any]:
        r = self.rule
        alert: dict[str, Any] = {
            "Timestamp": iso_us(win[-1].ts),
            "RuleId": r.id,
            "RuleTitle": r.title,
            "Level": r.level,
            "Tags": list(r.tags),
        }
        for f, v in zip(r.group_by, key):
            alert[f] = v
        port = rec.get("RemotePort")
        alert["Protocol"] = PORT_PROTOCOL.get(port, "Other") if isinstance(port, int) else "Other"
        alert["ConnectionCount"] = len(win)
        alert["BytesSent"] = sum(e.sent for e in win)
        alert["BytesReceived"] = sum(e.recv for e in win)
        alert["FirstSeen"] = iso_us(win[0].ts)
        alert["LastSeen"] = iso_us(win[-1].ts)
        alert["Threshold"] = f"{r.op} {r.threshold} in {r.timespan_s}s"
        alert["Uids"] = [e.uid for e in win[:MAX_ALERT_UIDS]]
        return alert


class Detector:
    """``observe(record, ts)`` -> list of alert dicts."""

    def __init__(self, rules: RuleSet, limits: Limits) -> None:
        self.rules = rules
        self.stats = DetectStats()
        self.quiet = rules.quiet_detections
        self.windows: dict[str, list[_Window]] = {}
        for c in rules.correlations:
            w = _Window(c, limits, self.stats)
            for rid in c.rules:
                self.windows.setdefault(rid, []).append(w)

    def carry_over(self, old: Detector) -> int:
        """After a reload: each window whose rule is unchanged takes over the
        keys and open alerts of ``old``'s window for it, and the counters go on
        from ``old``'s. Returns how many windows were carried over (one per
        rule id that references the window)."""
        kept = 0
        for rid, windows in self.windows.items():
            for w in windows:
                for ow in old.windows.get(rid, ()):
                    if ow.rule == w.rule:  # same definition: carry its state over
                        w.keys, w.episodes = ow.keys, ow.episodes
                        kept += 1
        self.stats = old.stats
        for w in self._all_windows():  # the windows count into the detector's counters too
            w.stats = old.stats
        return kept

    # -- state export / import (plain data, no I/O) --------------------------------
    @property
    def tracking(self) -> bool:
        return any(w.dirty is not None for w in self._all_windows())

    def enable_tracking(self) -> None:
        """Record which keys change, for ``export_changes`` (off by default:
        replay keeps no state)."""
        for w in self._all_windows():
            if w.dirty is None:
                w.dirty = {}

    def export_state(self) -> dict[str, dict[str, Any]]:
        """window id -> {rule_id, span_us, upserts: [(key, state)], deletes: []}."""
        return {window_id(w.rule): w.export_state() for w in self._all_windows()}

    def export_changes(self) -> dict[str, dict[str, Any]]:
        """Like ``export_state`` but only what changed since the last call:
        upserted keys in the order they were touched, evicted keys as deletes."""
        out = {}
        for w in self._all_windows():
            e = w.export_changes()
            if e["upserts"] or e["deletes"]:
                out[window_id(w.rule)] = e
        return out

    def window_ids(self) -> dict[str, int]:
        """window id -> its span in microseconds, for the loaded rules."""
        return {window_id(w.rule): w.span_us for w in self._all_windows()}

    def import_state(self, windows: Mapping[str, Iterable[tuple[Key, Mapping[str, Any]]]]) -> tuple[int, int]:
        """Restore keys of the windows whose id matches a loaded rule; others
        are ignored. Returns (keys restored, entries refused)."""
        restored = refused = 0
        for w in self._all_windows():
            entries = windows.get(window_id(w.rule))
            if entries is not None:
                r, f = w.import_state(entries)
                restored += r
                refused += f
        return restored, refused

    def hunt_results(self) -> list[dict[str, Any]]:
        """Each alert with every matching connection of its key until the key
        re-armed: what the hunt's summarize would show for that key."""
        return [ep for ws in self._all_windows() for ep in ws.episodes]

    def _all_windows(self) -> list[_Window]:
        seen: dict[int, _Window] = {}
        for ws in self.windows.values():
            for w in ws:
                seen.setdefault(id(w), w)
        return list(seen.values())

    def observe(self, rec: Mapping[str, Any], ts: int) -> list[dict[str, Any]]:
        self.stats.records += 1
        out: list[dict[str, Any]] = []
        for d in self.rules.detections:
            if not d.match(rec):
                continue
            self.stats.matched += 1
            if d.id not in self.quiet:
                self.stats.alerts += 1
                out.append(
                    {
                        "Timestamp": rec.get("Timestamp"),
                        "RuleId": d.id,
                        "RuleTitle": d.title,
                        "Level": d.level,
                        "Tags": list(d.tags),
                        "Uids": [rec.get("Uid")],
                    }
                )
            for w in self.windows.get(d.id, ()):
                a = w.observe(rec, ts)
                if a is not None:
                    out.append(a)
        return out
