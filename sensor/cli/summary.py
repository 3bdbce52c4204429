"""The replay summary that explains: the hunt's table for every key, what the
selection left out and why, the files each key moved.

``HuntSummary`` is a record sink (``emit(kind, record)``, mde-profile records):
the replay tees its records into it. For each correlation rule it groups every
connection record by the rule's ``group-by`` key, as the hunt does, and asks
the rule's detection rules (``DetectionRule.explain``, side-effect free) why a
record was not counted: a field of the selection that failed (RemoteIPType,
ActionType, RemotePort, ...), an allow entry that suppressed it, or a filter.
Transfers join the key of their control connection (``ControlUid``).

Bounded: ``limits.max_summary_keys`` keys per correlation are tabulated (the
connections of later new keys are still counted by reason, and reported as
not tabulated); transfers waiting for their control connection's record are at
most ``MAX_PENDING_TRANSFERS``; every counted set of values at most
``MAX_VALUES``. The printed and the JSON table show the top ``--top`` keys and
say how many more there are. docs/investigation.md shows how to read it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sensor.detect.rules import CorrelationRule, DetectionRule, RuleSet
from sensor.records.mde import ATTEMPTS_WEIRD, PORT_PROTOCOL

DEFAULT_TOP = 20  # keys shown (``replay --top``)
MAX_PENDING_TRANSFERS = 100_000  # transfers waiting for their control connection's record
MAX_VALUES = 16  # distinct values counted per reason and per key (the rest: "other")
NAMES_PER_KEY = 3  # file names shown per key
MAX_TEXT = 120  # characters of wire text shown
MAX_EXPLAIN_CACHE = 4096  # cached explanations per correlation rule (emptied when full)

SHORT_HEAD = {
    "DeviceName": "Device",
    "InitiatingProcessFileName": "Process",
    "RemotePort": "Port",
    "AccountName": "Account",
}
# what a reason means, by the record field whose value failed the selection
FIELD_HINT = {
    "RemoteIPType": (
        "only Public addresses count: a lab or test range standing in for the Internet is typed Public with "
        "ip_type_overrides in --config (as pcaps/demo.yaml does), a VPN range that only looks public is typed Private"
    ),
    "ActionType": "failed or refused attempts and inbound connections do not count",
    "RemotePort": "FTP data channels and TFTP transfers count with their session, not on their own port",
}


def printable(s: str, limit: int = MAX_TEXT) -> str:
    """Wire text for a terminal: control and other unprintable characters
    escaped, so a filename can never move the cursor or forge a line."""
    out = "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}") for c in s[:limit]
    )
    return out + ("..." if len(s) > limit else "")


def _int(v: Any) -> int:
    return v if type(v) is int and v >= 0 else 0


def _bucket(d: Mapping[str, Any], k: str) -> str:
    """``k``, or "other" once ``d`` holds ``MAX_VALUES`` keys ("other" among them)."""
    return k if k in d or len(d) < MAX_VALUES - 1 else "other"


def _count(d: dict[str, int], k: str, n: int = 1) -> None:
    """``d[k] += n``, at most ``MAX_VALUES`` keys (later ones go to "other")."""
    k = _bucket(d, k)
    d[k] = d.get(k, 0) + n


def _value_text(v: Any) -> str:
    if v is None or v == "":
        return '""'
    return printable(str(v), 64)


@dataclass(slots=True)
class _Files:
    """Transfers of one control connection or one key."""

    files: int = 0
    by_direction: dict[str, list[int]] = field(default_factory=dict)  # direction -> [files, bytes]
    names: list[str] = field(default_factory=list)

    def add(self, rec: Mapping[str, Any]) -> None:
        self.files += 1
        d = _bucket(self.by_direction, printable(str(rec.get("Direction") or ""), 16) or "unknown")
        fb = self.by_direction.setdefault(d, [0, 0])
        fb[0] += 1
        fb[1] += _int(rec.get("Bytes"))
        if len(self.names) < NAMES_PER_KEY:
            self.names.append(str(rec.get("Filename") or ""))

    def merge(self, o: _Files) -> None:
        self.files += o.files
        for d, (n, b) in o.by_direction.items():
            fb = self.by_direction.setdefault(_bucket(self.by_direction, d), [0, 0])
            fb[0] += n
            fb[1] += b
        self.names.extend(o.names[: NAMES_PER_KEY - len(self.names)])


@dataclass(slots=True)
class _Key:
    conns: int = 0
    counted: int = 0
    sent: int = 0
    recv: int = 0
    first: str = ""
    last: str = ""
    app: str = ""
    left_out: dict[str, int] = field(default_factory=dict)  # short reason -> connections
    codes: tuple[str, ...] = ()  # the reason codes of its connections (bounded by the rules)
    files: _Files | None = None


@dataclass
class _Reason:
    code: str  # field:NAME | allow:RULE/FILTER | filter:RULE/SELECTION
    wanted: str = ""
    note: str = ""  # an allow filter's reason and expiry
    connections: int = 0
    keys: int = 0
    values: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        kind, _, what = self.code.partition(":")
        vals = ", ".join(f"{v} {n}" for v, n in sorted(self.values.items(), key=lambda x: (-x[1], x[0])))
        if kind == "field":
            hint = FIELD_HINT.get(what)
            return f"{what} {vals}; the hunt counts {self.wanted}" + (f" -- {hint}" if hint else "")
        if kind == "allow":
            return f"suppressed by allow filter {what}" + (f" ({self.note})" if self.note else "")
        return f"excluded by filter selection {what} of the rule itself"


class _Hunt:
    """One correlation rule's table."""

    def __init__(self, corr: CorrelationRule, dets: list[DetectionRule], max_keys: int) -> None:
        self.corr = corr
        self.dets = dets
        self.max_keys = max_keys
        self.keys: dict[tuple[Any, ...], _Key] = {}
        self.untabulated = 0  # connections of keys beyond max_keys
        self.connections = 0
        self.counted = 0
        self.reasons: dict[str, _Reason] = {}
        # the reasons of records the rules see alike (DetectionRule.explain_key)
        self.group_by = corr.group_by
        self.cacheable = all(e.expires_us is None for d in dets for e in d.filters)
        self.cache: dict[tuple[Any, ...], tuple[tuple[str, str, str | None], ...] | None] = {}

    def observe(self, rec: Mapping[str, Any], files: _Files | None) -> None:
        self.connections += 1
        get = rec.get
        key = tuple([get(f, "") for f in self.group_by])
        k = self.keys.get(key)
        if k is None:
            if len(self.keys) >= self.max_keys:
                self.untabulated += 1
            else:
                k = self.keys[key] = _Key(app=str(rec.get("AppProtocol") or "")[:16])
        missed = self._why(rec)
        if missed is None:
            self.counted += 1
        else:
            for code, _short, val in missed:
                r = self.reasons[code]
                r.connections += 1
                if val is not None:
                    _count(r.values, val)
        if k is None:
            return
        k.conns += 1
        if missed is None:
            k.counted += 1
        else:
            for code, short, _val in missed:
                if code not in k.codes:
                    k.codes += (code,)
                    self.reasons[code].keys += 1
                _count(k.left_out, short)
        for f in ("SentBytes", "DataSentBytes"):
            v = get(f)
            if type(v) is int and v > 0:
                k.sent += v
        for f in ("ReceivedBytes", "DataReceivedBytes"):
            v = get(f)
            if type(v) is int and v > 0:
                k.recv += v
        ts = get("Timestamp")
        if isinstance(ts, str):
            ts = ts[:40]
            if not k.first or ts < k.first:
                k.first = ts
            if ts > k.last:
                k.last = ts
        if files is not None:
            if k.files is None:
                k.files = _Files()
            k.files.merge(files)

    def _why(self, rec: Mapping[str, Any]) -> tuple[tuple[str, str, str | None], ...] | None:
        """None when a detection rule of the correlation counts the record,
        else its reasons: (code, short form for the key's row, the failing
        value for a field reason). Cached by the values the rules read."""
        ck: tuple[Any, ...] | None = None
        if self.cacheable:
            ck = tuple([d.explain_key(rec) for d in self.dets])
            if None in ck:
                ck = None
        if ck is not None and ck in self.cache:
            return self.cache[ck]
        out = self._explain(rec)
        if ck is not None:
            if len(self.cache) >= MAX_EXPLAIN_CACHE:
                self.cache.clear()
            self.cache[ck] = out
        return out

    def _explain(self, rec: Mapping[str, Any]) -> tuple[tuple[str, str, str | None], ...] | None:
        missed: dict[str, tuple[str, str, str | None]] = {}
        for d in self.dets:
            v = d.explain(rec)
            if v.matched:
                return None
            for e in v.suppressed_by:
                code = f"allow:{d.ref}/{e.name}"
                if code not in self.reasons:
                    note = "; ".join(x for x in (e.reason, f"expires {e.expires}" if e.expires else "") if x)
                    self.reasons[code] = _Reason(code, note=printable(note))
                missed.setdefault(code, (code, f"allowed by {e.name}", None))
            for m in v.misses:
                if m.field:
                    code = f"field:{m.field}"
                    if code not in self.reasons:
                        self.reasons[code] = _Reason(code, wanted=m.wanted)
                    val = _value_text(m.value)
                    missed.setdefault(code, (code, f"{m.field} {val}", val))
                else:
                    code = f"filter:{d.ref}/{m.selection}"
                    self.reasons.setdefault(code, _Reason(code))
                    missed.setdefault(code, (code, f"filtered by {m.selection}", None))
        return tuple(missed.values())


def _span(s: int) -> str:
    """A timespan as a rule would write it (24h, 7d, 30m, 90s)."""
    if s % 86400 == 0 and s >= 2 * 86400:
        return f"{s // 86400}d"
    for unit, n in (("h", 3600), ("m", 60)):
        if s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


def _alert_at(c: CorrelationRule) -> int:
    """The smallest count in one window that alerts."""
    return c.threshold + 1 if c.op == "gt" else max(c.threshold, 1)


def condition_text(c: CorrelationRule) -> str:
    n = f"more than {c.threshold}" if c.op == "gt" else f"{c.threshold} or more"
    return f"{n} connections within {_span(c.timespan_s)} by {', '.join(c.group_by)}"


def key_label(row: Mapping[str, Any], group_by: tuple[str, ...]) -> str:
    """A key in one line: ``DEVICE -> IP:PORT as ACCOUNT by PROCESS`` for the
    shipped hunt's fields, ``FIELD=VALUE, ...`` for the others."""
    g = set(group_by)
    if {"DeviceName", "RemoteIP", "RemotePort"} <= g:
        s = f"{printable(str(row['DeviceName']), 64)} -> {printable(str(row['RemoteIP']), 64)}:{row['RemotePort']}"
        extra = [f for f in group_by if f not in ("DeviceName", "RemoteIP", "RemotePort")]
        for f in extra:
            v = row.get(f)
            if v not in (None, ""):
                word = {"AccountName": "as", "InitiatingProcessFileName": "by"}.get(f, f + "=")
                s += f" {word}{'' if word.endswith('=') else ' '}{printable(str(v), 64)}"
        return s
    return ", ".join(f"{f}={printable(str(row.get(f, '')), 64)}" for f in group_by)


class HuntSummary:
    """Record sink: per correlation rule, every key with its counts, why its
    connections were left out, and its files (see the module docstring)."""

    def __init__(self, rules: RuleSet, max_keys: int) -> None:
        self.hunts = [_Hunt(c, [d for d in rules.detections if d.id in c.rules], max_keys) for c in rules.correlations]
        self.pending: dict[str, _Files] = {}  # ControlUid -> its transfers, until its record comes
        self.pending_transfers = 0
        self.transfers_dropped = 0  # beyond MAX_PENDING_TRANSFERS: not shown per key
        # unanswered attempts of a flood, counted in connection_attempts records instead of a
        # connection record each (the pipeline aggregates only when no rule could count one)
        self.attempts_aggregated = 0

    def emit(self, kind: str, rec: dict[str, Any]) -> None:
        if kind == "connections":
            files = self.pending.pop(rec.get("Uid") or "", None) if self.pending else None
            if files is not None:
                self.pending_transfers -= files.files
            for h in self.hunts:
                h.observe(rec, files)
        elif kind == "weird" and rec.get("Name") == ATTEMPTS_WEIRD:
            self.attempts_aggregated += _int(rec.get("Attempts"))
        elif kind == "transfers" and self.hunts:
            uid = str(rec.get("ControlUid") or rec.get("Uid") or "")
            f = self.pending.get(uid)
            if f is None and self.pending_transfers >= MAX_PENDING_TRANSFERS:
                self.transfers_dropped += 1
                return
            if f is None:
                f = self.pending[uid] = _Files()
            f.add(rec)
            self.pending_transfers += 1

    def close(self) -> None:
        pass

    def tables(self, alerts: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
        """The JSON summary's ``hunt``: one table per correlation rule, its
        top ``top`` keys (alerted first, then by count, connections, bytes)."""
        return [self._table(h, alerts, top) for h in self.hunts]

    def _table(self, h: _Hunt, alerts: list[dict[str, Any]], top: int) -> dict[str, Any]:
        c = h.corr
        at = _alert_at(c)
        span = _span(c.timespan_s)
        alerted = {tuple(a.get(f, "") for f in c.group_by) for a in alerts if a.get("RuleId") == c.id}

        def rank(item: tuple[tuple[Any, ...], _Key]) -> tuple[Any, ...]:
            key, k = item
            status = 0 if key in alerted else 3 if k.counted == 0 else 1 if k.counted >= at - 2 else 2
            return (status, -k.counted, -k.conns, -(k.sent + k.recv), k.first, repr(key))

        rows = []
        for key, k in heapq.nsmallest(top, h.keys.items(), key=rank):
            left = k.conns - k.counted
            left_text = ", ".join(s + ("" if n == k.conns else f" ({n} of {k.conns})") for s, n in k.left_out.items())
            if key in alerted:
                status, why = "ALERT", f"{k.counted} counted, alerts at {at} within {span}"
            elif k.counted == 0:
                status, why = "left out", left_text
            elif k.counted >= at:
                status, why = "near", f"{k.counted} counted, but never {at} within {span}"
            else:
                status = "near" if k.counted >= at - 2 else "below"
                why = f"{k.counted} counted, alerts at {at} within {span}"
            if left and k.counted:
                why += f"; {left} left out: {left_text}"
            f = k.files or _Files()
            port = key[c.group_by.index("RemotePort")] if "RemotePort" in c.group_by else None
            row: dict[str, Any] = {"Status": status}
            row.update(zip(c.group_by, key, strict=True))
            row.update(
                {
                    "Protocol": PORT_PROTOCOL.get(port, k.app or "Other") if isinstance(port, int) else k.app,
                    "ConnectionCount": k.counted,
                    "Connections": k.conns,
                    "BytesSent": k.sent,
                    "BytesReceived": k.recv,
                    "FirstSeen": k.first,
                    "LastSeen": k.last,
                    "Why": why,
                    "LeftOut": dict(k.left_out),
                    "Files": f.files,
                    "Transfers": {d: {"Files": n, "Bytes": b} for d, (n, b) in sorted(f.by_direction.items())},
                    "FileNames": list(f.names),
                }
            )
            rows.append(row)
        reasons = sorted(h.reasons.values(), key=lambda r: (-r.connections, r.code))
        return {
            "rule": c.name or c.id,
            "rule_id": c.id,
            "condition": condition_text(c),
            "group_by": list(c.group_by),
            "alert_at": at,
            "connections": h.connections,
            "counted": h.counted,
            "keys": len(h.keys),
            "keys_not_tabulated_connections": h.untabulated,
            "top": top,
            "more": max(len(h.keys) - top, 0),
            "table": rows[:top],
            "left_out": [
                {
                    "reason": r.code,
                    "connections": r.connections,
                    "keys": r.keys,
                    "values": dict(r.values),
                    "wanted": r.wanted,
                    "note": r.note,
                    "text": r.text(),
                }
                for r in reasons
                if r.connections
            ],
            "transfers_unlinked": self.pending_transfers,
            "transfers_not_shown": self.transfers_dropped,
            "attempts_aggregated": self.attempts_aggregated,
        }


def no_alert_reason(tables: list[dict[str, Any]]) -> str:
    """Why nothing alerted, in one line ("" without a correlation rule)."""
    if not tables:
        return ""
    t = tables[0]
    n = t["connections"]
    if n == 0:
        if t.get("attempts_aggregated"):
            return (
                f"only unanswered connection attempts ({t['attempts_aggregated']}, aggregated into "
                f"{ATTEMPTS_WEIRD} records): the hunt counts successful connections"
            )
        return "no connection on a tracked port"
    if t["counted"] == 0:
        why = "; ".join(_reason_short(r) for r in t["left_out"][:3])
        return f"none of the {n} connection(s) is counted by the hunt ({why}): see 'left out' below"
    best = next((r for r in t["table"] if r["ConnectionCount"]), None)
    if best is None:  # every counted key beyond the table's bound
        return f"{t['counted']} of {n} connection(s) counted, no key reached {t['alert_at']} within the window"
    return (
        f"{t['counted']} of {n} connection(s) counted; the busiest key, {key_label(best, tuple(t['group_by']))}, "
        f"has {best['ConnectionCount']}: the hunt alerts at {condition_text_short(t)}"
    )


def _reason_short(r: Mapping[str, Any]) -> str:
    kind, _, what = r["reason"].partition(":")
    if kind == "field":
        vals = list(r["values"])
        what += " " + ", ".join(vals[:2]) + (", ..." if len(vals) > 2 else "")
    else:
        what = f"{'allowed by' if kind == 'allow' else 'filtered by'} {what}"
    return f"{what}: {r['connections']}"


def condition_text_short(t: Mapping[str, Any]) -> str:
    return t["condition"].split(" by ")[0]


def render(tables: list[dict[str, Any]]) -> list[str]:
    """The text form of ``tables``: per hunt its table, what was left out and
    why, and the files per key."""
    out: list[str] = []
    for t in tables:
        gb = tuple(t["group_by"])
        out.append("")
        out.append(
            f"hunt {printable(t['rule'])} ({t['condition']}): {t['keys']} key(s), "
            f"{t['connections']} connection(s), {t['counted']} counted"
        )
        if t.get("attempts_aggregated"):
            out.append(
                f"  not in the table: {t['attempts_aggregated']} unanswered connection attempt(s) of a flood, "
                f"counted in {ATTEMPTS_WEIRD} weird records by originator and port (no rule counts one)"
            )
        rows = t["table"]
        if rows:
            heads = ["Status", "Count", "Conns", *(SHORT_HEAD.get(f, f) for f in gb)]
            heads += ["Protocol", "BytesSent", "BytesRecv", "Files", "Why"]
            cells = [
                [
                    r["Status"],
                    str(r["ConnectionCount"]),
                    str(r["Connections"]),
                    *(printable(str(r[f]), 64) for f in gb),
                    printable(str(r["Protocol"]), 16),
                    str(r["BytesSent"]),
                    str(r["BytesReceived"]),
                    str(r["Files"]),
                    printable(r["Why"], 200),
                ]
                for r in rows
            ]
            widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            out.append(fmt.format(*heads).rstrip())
            out.append(fmt.format(*("-" * w for w in widths)).rstrip())
            out.extend(fmt.format(*c).rstrip() for c in cells)
        if t["more"]:
            out.append(f"... and {t['more']} more key(s) (--top N shows more)")
        if t["keys_not_tabulated_connections"]:
            out.append(
                f"{t['keys_not_tabulated_connections']} connection(s) of further keys not tabulated "
                "(limits.max_summary_keys); they are counted below"
            )
        if t["left_out"]:
            left = t["connections"] - t["counted"]
            out.append("")
            out.append(
                f"left out of the hunt: {left} of {t['connections']} connection(s)"
                + (" (one can be left out for more than one reason)" if len(t["left_out"]) > 1 else "")
            )
            for r in t["left_out"]:
                out.append(f"  {r['connections']} connection(s), {r['keys']} key(s): {r['text']}")
        with_files = [r for r in rows if r["Files"]]
        if with_files:
            out.append("")
            out.append("transfers by key:")
            for r in with_files:
                dirs = ", ".join(f"{d} {x['Files']} ({x['Bytes']} B)" for d, x in r["Transfers"].items())
                names = ", ".join(printable(n, 64) for n in r["FileNames"])
                more = ", ..." if r["Files"] > len(r["FileNames"]) else ""
                out.append(
                    f"  {key_label(r, gb)} ({printable(str(r['Protocol']), 16)}): {r['Files']} file(s): {dirs}"
                    + (f"; {names}{more}" if names else "")
                )
        if t["transfers_unlinked"] or t["transfers_not_shown"]:
            out.append(
                f"  ({t['transfers_unlinked'] + t['transfers_not_shown']} transfer(s) not joined to a key: "
                "their control connection has no record, or too many waited for one)"
            )
    return out
