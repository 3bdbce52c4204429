"""What the report shows, aggregated from records as they come, every part bounded.

``ReportBuilder`` is a record sink (``emit(kind, record)``): the replay tees its
records into it, ``xfer-sensor report DIR`` feeds it the record files. It never
sees a packet. Records are mde-profile dicts; every value is checked before use
(a record file is a file a user hands us): a record without a usable
``Timestamp`` is skipped and counted, a number that is not a whole number >= 0
counts as 0 and is counted, text is cut to ``MAX_TEXT`` characters.

Timelines share one time axis of at most ``MAX_BINS`` bins: the bin width starts
at one second and doubles while the records' time span does not fit, so the
bins depend only on the set of records, never on their order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_BINS = 240  # time bins of a timeline (the x axis)
MAX_REMOTE_KEYS = 100_000  # (RemoteIP, RemotePort) rows counted one by one; later new keys go to "other"
OVERVIEW_ROWS = 30  # rows drawn in the overview; the others are drawn merged as one row
MAX_KEPT_CONNECTIONS = 500_000  # connections remembered for the alerts' details (replay: all of them)
MAX_KEPT_TRANSFERS = 200_000  # transfers remembered for the alerts' files
MAX_ALERTS = 10_000  # alerts listed; more are counted
MAX_DETAILED_ALERTS = 200  # alerts with a section of their own (timeline, connections, files, rule)
MAX_MARKS_PER_ALERT = 2_000  # counted connections drawn and listed per alert
MAX_FILES_PER_ALERT = 1_000  # transfers drawn and listed per alert
MAX_WEIRD_NAMES = 1_000  # weird names counted one by one
MAX_TEXT = 512  # characters of any text shown

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MAX_I = 1 << 63


def parse_ts(v: Any) -> int | None:
    """An ISO 8601 record time as microseconds since 1970, or None."""
    if not isinstance(v, str) or not 10 <= len(v) <= 40:
        return None
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return (d - _EPOCH) // _US


def text(v: Any) -> str:
    """Any value as text of at most MAX_TEXT characters (never markup: the page escapes it)."""
    if v is None:
        return ""
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + "\u2026"


@dataclass
class Conn:
    """A connection remembered for an alert's details."""

    ts: int
    last: int
    local: str
    remote: str
    remote_port: int
    action: str
    app: str
    sent: int
    received: int
    data_sent: int
    data_received: int
    user: str
    process: str
    pid: int
    parent: str
    ppid: int
    command_line: str
    account: str
    attribution: str
    parent_uid: str


@dataclass
class Transfer:
    ts: int
    uid: str
    protocol: str
    command: str
    filename: str
    truncated: bool
    direction: str
    bytes: int
    complete: bool
    share: str
    user: str
    claimed: int | None


@dataclass
class Alert:
    ts: int
    rule_id: str
    title: str
    level: str
    key: dict[str, str]  # the group-by fields and the protocol label, as text
    count: int
    sent: int
    received: int
    first: int | None
    last: int | None
    threshold: str
    uids: list[str]
    uids_total: int


@dataclass
class Counts:
    connections: int = 0
    transfers: int = 0
    alerts: int = 0
    weird: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # why -> records or lines left out
    bad_values: int = 0  # numbers that were not whole numbers >= 0 (counted as 0)
    remote_keys_other: int = 0  # connections whose remote/port key came after MAX_REMOTE_KEYS
    conns_not_kept: int = 0
    transfers_not_kept: int = 0
    alerts_not_kept: int = 0
    actions: dict[str, int] = field(default_factory=dict)


class Timeline:
    """Series of per-bin sums on one shared, doubling time axis (seconds)."""

    def __init__(self, max_bins: int = MAX_BINS) -> None:
        self.max_bins = max_bins
        self.width = 1  # seconds per bin, a power of two
        self.lo: int | None = None  # lowest and highest bin index (absolute: t // width)
        self.hi = 0
        self.series: dict[Any, dict[int, int]] = {}

    def add(self, key: Any, t_s: int, value: int) -> None:
        i = t_s // self.width
        if self.lo is None:
            self.lo = self.hi = i
        elif i < self.lo or i > self.hi:
            lo, hi = min(self.lo, i), max(self.hi, i)
            while hi - lo + 1 > self.max_bins:
                self._double()
                lo, hi, i = lo // 2, hi // 2, i // 2
            self.lo, self.hi = lo, hi
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = {}
        s[i] = s.get(i, 0) + value

    def _double(self) -> None:
        self.width *= 2
        for key, s in self.series.items():
            merged: dict[int, int] = {}
            for i, v in s.items():
                merged[i // 2] = merged.get(i // 2, 0) + v
            self.series[key] = merged

    def span(self) -> tuple[int, int]:
        """First second of the first bin, first second after the last."""
        if self.lo is None:
            return 0, 1
        return self.lo * self.width, (self.hi + 1) * self.width


class ReportBuilder:
    """A record sink that keeps what the report draws (see the module's docstring).

    ``wanted``: when the alerts are known first (a records folder), only the
    connections and transfers they name are remembered."""

    def __init__(self, wanted: set[str] | None = None) -> None:
        self.wanted = wanted
        self.counts = Counts()
        self.overview = Timeline()  # (RemoteIP, RemotePort) -> connections per bin
        self.volume = Timeline()  # "sent" / "received" -> bytes per bin (at each connection's first packet)
        self.remote_totals: dict[tuple[str, int], int] = {}
        self.conns: dict[str, Conn] = {}
        self.transfers: dict[str, list[Transfer]] = {}  # owner uid (ControlUid, else Uid) -> its transfers
        self.kept_transfers = 0
        self.alerts: list[Alert] = []
        self.weird: dict[str, int] = {}
        self.first: int | None = None
        self.last: int | None = None

    # -- input -----------------------------------------------------------------
    def emit(self, kind: str, rec: Any) -> None:
        if not isinstance(rec, dict):
            self._skip("not a JSON object")
            return
        if kind == "connections":
            self._connection(rec)
        elif kind == "transfers":
            self._transfer(rec)
        elif kind == "alerts":
            self._alert(rec)
        elif kind == "weird":
            self._weird(rec)

    def close(self) -> None:
        pass

    def _skip(self, why: str) -> None:
        self.counts.skipped[why] = self.counts.skipped.get(why, 0) + 1

    def _int(self, v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_I:
            return v
        if v is not None:
            self.counts.bad_values += 1
        return 0

    def _seen(self, t: int) -> None:
        if self.first is None or t < self.first:
            self.first = t
        if self.last is None or t > self.last:
            self.last = t

    def _connection(self, rec: dict[str, Any]) -> None:
        ts = parse_ts(rec.get("Timestamp"))
        if ts is None:
            self._skip("connection without a valid Timestamp")
            return
        c = self.counts
        c.connections += 1
        last = parse_ts(rec.get("LastSeen"))
        last = ts if last is None or last < ts else last
        self._seen(ts)
        self._seen(last)
        action = text(rec.get("ActionType"))
        if len(c.actions) < 64 or action in c.actions:
            c.actions[action] = c.actions.get(action, 0) + 1
        remote, port = text(rec.get("RemoteIP")), self._int(rec.get("RemotePort"))
        key: tuple[str, int] | None = (remote, port)
        if key not in self.remote_totals and len(self.remote_totals) >= MAX_REMOTE_KEYS:
            c.remote_keys_other += 1
            key = None
        if key is not None:
            self.remote_totals[key] = self.remote_totals.get(key, 0) + 1
        t_s = ts // 1_000_000
        self.overview.add(key, t_s, 1)
        sent, received = self._int(rec.get("SentBytes")), self._int(rec.get("ReceivedBytes"))
        self.volume.add("sent", t_s, sent)
        self.volume.add("received", t_s, received)
        uid = rec.get("Uid")
        if not isinstance(uid, str) or not uid:
            return
        if self.wanted is not None and uid not in self.wanted:
            return
        if len(self.conns) >= MAX_KEPT_CONNECTIONS and uid not in self.conns:
            c.conns_not_kept += 1
            return
        self.conns[uid] = Conn(
            ts,
            last,
            f"{text(rec.get('LocalIP'))}:{self._int(rec.get('LocalPort'))}",
            remote,
            port,
            action,
            text(rec.get("AppProtocol")),
            sent,
            received,
            self._int(rec.get("DataSentBytes")),
            self._int(rec.get("DataReceivedBytes")),
            text(rec.get("AppUser")),
            text(rec.get("InitiatingProcessFileName")),
            self._int(rec.get("InitiatingProcessId")),
            text(rec.get("InitiatingProcessParentFileName")),
            self._int(rec.get("InitiatingProcessParentId")),
            text(rec.get("InitiatingProcessCommandLine")),
            text(rec.get("InitiatingProcessAccountName")),
            text(rec.get("AttributionSource")),
            text(rec.get("ParentUid")),
        )

    def _transfer(self, rec: dict[str, Any]) -> None:
        ts = parse_ts(rec.get("Timestamp"))
        if ts is None:
            self._skip("transfer without a valid Timestamp")
            return
        self.counts.transfers += 1
        owner = rec.get("ControlUid") or rec.get("Uid")
        if not isinstance(owner, str):
            return
        if self.wanted is not None and owner not in self.wanted:
            return
        if self.kept_transfers >= MAX_KEPT_TRANSFERS:
            self.counts.transfers_not_kept += 1
            return
        self.kept_transfers += 1
        claimed = rec.get("ClaimedBytes")
        self.transfers.setdefault(owner, []).append(
            Transfer(
                ts,
                text(rec.get("Uid")),
                text(rec.get("Protocol")),
                text(rec.get("Command")),
                text(rec.get("Filename")),
                rec.get("FilenameTruncated") is True,
                text(rec.get("Direction")),
                self._int(rec.get("Bytes")),
                rec.get("Complete") is True,
                text(rec.get("Share")),
                text(rec.get("User")),
                self._int(claimed) if claimed is not None else None,
            )
        )

    def _alert(self, rec: dict[str, Any]) -> None:
        ts = parse_ts(rec.get("Timestamp"))
        if ts is None:
            self._skip("alert without a valid Timestamp")
            return
        self.counts.alerts += 1
        if len(self.alerts) >= MAX_ALERTS:
            self.counts.alerts_not_kept += 1
            return
        raw = rec.get("Uids")
        uids = [u for u in raw if isinstance(u, str)] if isinstance(raw, list) else []
        key = {
            k: text(rec.get(k))
            for k in ("DeviceName", "InitiatingProcessFileName", "RemoteIP", "RemotePort", "AccountName", "Protocol")
        }
        self.alerts.append(
            Alert(
                ts,
                text(rec.get("RuleId")),
                text(rec.get("RuleTitle")),
                text(rec.get("Level")),
                key,
                self._int(rec.get("ConnectionCount")),
                self._int(rec.get("BytesSent")),
                self._int(rec.get("BytesReceived")),
                parse_ts(rec.get("FirstSeen")),
                parse_ts(rec.get("LastSeen")),
                text(rec.get("Threshold")),
                uids[:MAX_MARKS_PER_ALERT],
                len(uids),
            )
        )

    def _weird(self, rec: dict[str, Any]) -> None:
        self.counts.weird += 1
        name = text(rec.get("Name"))
        if name in self.weird or len(self.weird) < MAX_WEIRD_NAMES:
            self.weird[name] = self.weird.get(name, 0) + 1
        else:
            self.weird["(other names)"] = self.weird.get("(other names)", 0) + 1

    # -- output ----------------------------------------------------------------
    def alert_uids(self) -> set[str]:
        return {u for a in self.alerts for u in a.uids}

    def files_of(self, uids: Iterable[str]) -> list[Transfer]:
        out: list[Transfer] = []
        for u in uids:
            out.extend(self.transfers.get(u, ()))
        out.sort(key=lambda t: (t.ts, t.uid, t.filename))
        return out[:MAX_FILES_PER_ALERT]

    def top_remotes(self) -> list[tuple[str, int, int]]:
        """(RemoteIP, RemotePort, connections), most connections first."""
        rows = sorted(self.remote_totals.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(ip, port, n) for (ip, port), n in rows]
