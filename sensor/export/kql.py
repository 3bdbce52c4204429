"""The hunt as KQL, rendered from the loaded rules: the one place that does it.

``hunt_kql(correlation, detections)`` writes the Defender for Endpoint query an
``event_count`` correlation and the detection rules it counts stand for:
the detections' selections and condition as a ``where``, the correlation's
group-by as the ``summarize``'s ``by``, its condition as the last ``where``.
Sigma's string matching is case-insensitive, so strings compare with ``=~`` /
``in~`` / ``contains`` / ``startswith`` / ``endswith`` (all case-insensitive in
KQL). Rule values are rule-file text: every string is written as a KQL string
literal, escaped.

Two users, one renderer: the HTML report (``sensor/report``) shows the hunt
over Defender's own ``DeviceNetworkEvents``; ``xfer-sensor rules export
--target kql`` (``sensor/export/targets.py``) writes it over the sensor's
records as a Sentinel/ADX custom table (``CUSTOM_TABLE``, ingest/sentinel),
where a control session's record also carries its data channels' bytes
(``DataSentBytes``/``DataReceivedBytes``): ``data_bytes=True`` adds them, as
the sensor's alerts do (sensor/detect/detector.py ``_bytes``).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sensor.detect.rules import CorrelationRule, DetectionRule

TABLE = "DeviceNetworkEvents"
CUSTOM_TABLE = "XferNetworkEvents_CL"  # the mde connection records in Sentinel (ingest/sentinel/tables.json)
_CMP = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def kql_string(s: str) -> str:
    """A KQL string literal: double quotes, backslash escapes (JSON's are KQL's)."""
    return json.dumps(s, ensure_ascii=False)


def _field(name: str) -> str:
    if name.startswith("AdditionalFields."):  # a dynamic column in Defender (JSON text)
        return f"tostring(parse_json(AdditionalFields).{name.split('.', 1)[1]})"
    return name


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return kql_string(str(v))


def _one(f: str, mods: Sequence[str], v: Any) -> str:
    if "exists" in mods:
        return f"isnotempty({f})" if v else f"isempty({f})"
    if v is None:
        return f"isempty({f})"
    for m in mods:
        if m in _CMP:
            return f"{f} {_CMP[m]} {_literal(v)}"
    if "cidr" in mods:
        fn = "ipv6_is_in_range" if ":" in str(v) else "ipv4_is_in_range"
        return f"{fn}({f}, {kql_string(str(v))})"
    if "re" in mods:
        return f"{f} matches regex {kql_string(str(v))}"
    if isinstance(v, bool | int | float):
        return f"{f} == {_literal(v)}"
    s = str(v)
    for m in ("contains", "startswith", "endswith"):
        if m in mods:
            return f"{f} {m} {kql_string(s)}"
    if any(c in s for c in "*?"):  # a Sigma wildcard: the same pattern as a regex
        return f"{f} matches regex {kql_string('(?is)' + fnmatch.translate(s))}"
    return f"{f} =~ {kql_string(s)}"


def _key(key: str, value: Any) -> str:
    parts = key.split("|")
    f, mods = _field(parts[0]), parts[1:]
    values = value if isinstance(value, list) else [value]
    plain = not mods and len(values) > 1
    if plain and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return f"{f} in ({', '.join(str(v) for v in values)})"
    if plain and all(isinstance(v, str) and not any(c in v for c in "*?") for v in values):
        return f"{f} in~ ({', '.join(kql_string(v) for v in values)})"
    terms = [_one(f, mods, v) for v in values]
    if len(terms) == 1:
        return terms[0]
    return "(" + (" and " if "all" in mods else " or ").join(terms) + ")"


def _selection(body: Any, top: bool = False) -> str:
    if isinstance(body, Mapping):
        terms = [_key(str(k), v) for k, v in body.items()]
        s = " and ".join(terms)
        return s if len(terms) == 1 or top else f"({s})"
    alts = [_selection(x) for x in body]
    return alts[0] if len(alts) == 1 else "(" + " or ".join(alts) + ")"


def _condition(node: Any, sels: Mapping[str, str], top: bool = False) -> str:
    op = node[0]
    if op == "sel":
        return sels[node[1]]
    if op == "not":
        return f"not({_condition(node[1], sels, True)})"
    if op in ("and", "or"):
        s = f"{_condition(node[1], sels)} {op} {_condition(node[2], sels)}"
        return s if top else f"({s})"
    names = [sels[n] for n in node[1]]
    s = (" and " if op == "all" else " or ").join(names)
    return s if top or len(names) == 1 else f"({s})"


def _predicate(detection: Mapping[str, Any], tree: Any) -> str:
    sels = {str(k): _selection(v) for k, v in detection.items() if k != "condition"}
    if tree[0] == "sel":  # one selection: no parentheses around it
        return _selection(detection[tree[1]], True)
    return _condition(tree, sels, True)


def detection_kql(d: DetectionRule) -> str:
    """A detection rule's selections and condition, ANDed with each of its
    allow filters' conditions (the Sigma filter semantics), as one KQL predicate."""
    base = _predicate(d.detection, d.condition)
    if not d.filters:
        return base
    parts = [base if d.condition[0] == "not" else f"({base})"]
    for e in d.filters:
        p = _predicate(e.filter.detection, e.condition)
        parts.append(p if e.condition[0] == "not" else f"({p})")
    return " and ".join(parts)


def _span(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % n == 0 and (unit != "d" or seconds // n > 1):
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def hunt_kql(
    c: CorrelationRule,
    detections: Sequence[DetectionRule],
    table: str = TABLE,
    data_bytes: bool = False,
    until: str | None = None,
) -> str:
    """The hunt of correlation ``c`` over the detection rules it counts, as KQL;
    ``data_bytes``: the byte sums include the data channels' (the sensor's records);
    ``until``: the look-back ends at this ISO 8601 UTC time, not now."""
    span = _span(c.timespan_s)
    preds = [detection_kql(d) for d in detections]
    where = preds[0] if len(preds) == 1 else " or ".join(f"({p})" for p in preds)
    by = ", ".join(c.group_by)
    lines = [
        table,
        f"| where Timestamp between (datetime({until}) - {span} .. datetime({until}))"
        if until
        else f"| where Timestamp > ago({span})",
        f"| where {where or 'false'}",
    ]
    if data_bytes:
        lines.append(
            "| extend SentBytes = SentBytes + coalesce(DataSentBytes, long(0)),"
            " ReceivedBytes = ReceivedBytes + coalesce(DataReceivedBytes, long(0))"
        )
    lines += [
        "| summarize ConnectionCount=count(), BytesSent=sum(SentBytes), BytesReceived=sum(ReceivedBytes),",
        f"            FirstSeen=min(Timestamp), LastSeen=max(Timestamp){' by ' + by if by else ''}",
        f"| where ConnectionCount {_CMP[c.op]} {c.threshold}",
    ]
    return "\n".join(lines)
