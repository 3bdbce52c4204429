"""``attempt_records: aggregate`` (the default; sensor/engine/attempts.py):
bare SYNs that end unanswered while the flow table is in emergency mode are
counted in ``connection_attempts`` weird records by (originator, responder
port) instead of a connection record each -- every one of them in exactly
one group, nothing else aggregated, the alerts unchanged, and only when no
loaded rule could match such an attempt's record."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fuzz.scan import syn_scan_frames
from sensor.attribution.book import AttributionBook
from sensor.core.config import ConfigError, config_from_dict
from sensor.core.timefmt import iso_us
from sensor.detect.rules import load_rule_docs, load_rules
from sensor.engine.attempts import GROUP_SPAN_US
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.encode import to_line
from sensor.records.mde import RECORD_FIELDS, RecordBuilder
from tests.test_scan_speed import CFG, RULES, T0, _frames

REPO = Path(__file__).resolve().parent.parent
ATTEMPT_CONSTANTS = RecordBuilder(config_from_dict({})).attempt_constants()


def _replay(
    cfg: dict[str, Any], frames: list[tuple[int, bytes]], fused: bool = True, rules=RULES, book=None, finish=True
):
    sink = MemorySink()
    pipe = Pipeline(config_from_dict(cfg), rules, sink, attribution=book)
    pipe.fused = fused
    h = pipe.handler_for(1)
    for ts, f in frames:
        h(ts, f)
    if finish:
        pipe.finish()
    return pipe, sink


def _groups(sink: MemorySink) -> list[dict[str, Any]]:
    return [w for w in sink.records["weird"] if w["Name"] == "connection_attempts"]


def _no_uid(rec: dict[str, Any]) -> bytes:
    return to_line({k: v for k, v in rec.items() if k != "Uid"})


@pytest.mark.parametrize("fused", [True, False])
def test_aggregated_attempts_are_exactly_the_unanswered_syns_each_would_write(fused):
    """Against ``each`` on a capture of outbound and inbound scans, IPv4 and
    IPv6, VLANs, answered, refused and expired connections: the connection
    records missing are bare unanswered SYNs only, and per (originator,
    responder port) their number is the groups' Attempts; everything else
    (other connections, transfers, alerts) is the same."""
    frames = _frames()
    cfg = dict(CFG, limits={"max_flows": 400})
    pa, sa = _replay(cfg, frames, fused)
    pe, se = _replay(dict(cfg, attempt_records="each"), frames, fused)
    groups = _groups(sa)
    st = pa.flows.attempt_groups.stats
    assert st.aggregated > 2_000 and st.groups == len(groups) and pe.flows.attempt_groups is None
    assert pa.flows.stats.created == pa.flows.stats.ended == pe.flows.stats.created
    each, agg = Counter(map(_no_uid, se.records["connections"])), Counter(map(_no_uid, sa.records["connections"]))
    assert not agg - each  # nothing new, nothing changed (uids aside: fewer flows share a microsecond)
    missing = [r for r in se.records["connections"] if (each - agg)[_no_uid(r)]]
    gone = Counter()
    for r in missing:
        assert (r["ConnState"], r["History"], r["ActionType"]) == ("S0", "S", "ConnectionFailed")
        assert all(r[k] == v for k, v in ATTEMPT_CONSTANTS.items())
        orig = (r["LocalIP"], r["RemotePort"]) if r["Direction"] == "outbound" else (r["RemoteIP"], r["LocalPort"])
        gone[orig] += 1
    assert sum(gone.values()) == st.aggregated == len(se.records["connections"]) - len(sa.records["connections"])
    got = Counter()
    for g in groups:
        got[(g["OriginatorIP"], g["ResponderPort"])] += g["Attempts"]
        assert g["FirstSeen"] <= g["LastSeen"] and g["Timestamp"] == g["FirstSeen"] and g["Source"] == "flow"
    assert got == gone
    assert any(":" in ip for ip, _ in got) and len(got) > 100  # IPv6 originators too, many groups
    for kind in ("transfers", "alerts"):
        assert [to_line(r) for r in sa.records[kind]] == [to_line(r) for r in se.records[kind]], kind
    assert pa.detector.hunt_results() == pe.detector.hunt_results()
    # the same capture: the same output, byte for byte
    _, again = _replay(cfg, frames, fused)
    for kind in ("connections", "weird", "alerts", "transfers"):
        assert [to_line(r) for r in again.records[kind]] == [to_line(r) for r in sa.records[kind]], kind


def test_scan_with_ftp_sessions_keeps_their_records_and_the_alert():
    """fuzz/scan.py in small: five FTP logins inside a scan far past max_flows
    have the records they have alone, and alert once; every scan SYN is in a
    connection record or counted in a group."""
    from fuzz.scan import FTP_SERVER, ftp_frames, merged

    n, t0 = 20_000, T0
    frames = list(merged(syn_scan_frames(n, 5_000, t0, 10), ftp_frames(t0, n * 10)))
    cfg = dict(CFG, limits={"max_flows": 2_000})
    pipe, sink = _replay(cfg, frames)
    _, alone = _replay(CFG, sorted(ftp_frames(t0, n * 10)))
    ftp = [c for c in sink.records["connections"] if c["RemoteIP"] == FTP_SERVER]
    assert [to_line(c) for c in ftp] == [to_line(c) for c in alone.records["connections"]]
    assert len(ftp) == 5 and {(c["ActionType"], c["AppUser"]) for c in ftp} == {("ConnectionSuccess", "anonymous")}
    assert sink.records["alerts"] == alone.records["alerts"] and len(alone.records["alerts"]) == 1
    (alert,) = pipe.detector.hunt_results()
    assert (alert["ConnectionCount"], alert["AccountName"], alert["RemoteIP"]) == (5, "anonymous", FTP_SERVER)
    scan_records = len(sink.records["connections"]) - 5
    assert scan_records + sum(g["Attempts"] for g in _groups(sink)) == n
    assert pipe.flows.attempt_groups.stats.aggregated > n * 0.8


def test_a_rule_that_could_count_a_failed_attempt_keeps_each_record(tmp_path):
    """A detection rule that can match an unanswered attempt's record turns
    aggregation off (its alerts must not change); the replay says which."""
    rule = tmp_path / "failed.yml"
    rule.write_text(
        "title: failed SMB attempts\nid: 11111111-2222-3333-4444-555555555555\nlogsource: {product: xfer}\n"
        "detection:\n  sel: {ActionType: ConnectionFailed, RemotePort: 445}\n  condition: sel\n"
    )
    rules = load_rules(tmp_path, RECORD_FIELDS)
    frames = list(syn_scan_frames(3_000, 300, T0, 10))
    pipe, sink = _replay(dict(CFG, limits={"max_flows": 400}), frames, rules=rules)
    assert pipe.flows.attempt_groups is None and not _groups(sink)
    assert len(sink.records["connections"]) == 3_000
    assert any(line.startswith("unanswered attempts not aggregated: rule") for line in pipe.bound_report())
    # the daemon reloads such a rule under a flood: the groups held are written, then a record each
    pipe, sink = _replay(dict(CFG, limits={"max_flows": 400}), frames[:2_000], finish=False)
    held = sum(g[2] for g in pipe.flows.attempt_groups.groups.values())
    assert held > 1_000 and not _groups(sink)
    pipe.attempt_policy(config_from_dict(CFG), rules)
    assert pipe.flows.attempt_groups is None and sum(g["Attempts"] for g in _groups(sink)) == held
    h = pipe.handler_for(1)
    for ts, f in frames[2_000:]:
        h(ts, f)
    pipe.finish()
    assert len(sink.records["connections"]) + held == 3_000 and pipe.stats()["attempts"]["aggregated"] == held
    pipe.attempt_policy(config_from_dict(CFG), RULES)  # and back: aggregated again
    assert pipe.flows.attempt_groups is not None and pipe.attempt_stats.aggregated == held
    # endpoint mode: an attempt's record names its process: never aggregated
    pipe, _ = _replay(dict(CFG, limits={"max_flows": 400}), frames, book=AttributionBook())
    assert pipe.flows.attempt_groups is None


def _rule(detection: str):
    doc = f"title: t\nid: 11111111-2222-3333-4444-555555555555\nlogsource: {{product: xfer}}\ndetection:\n{detection}"
    (r,) = load_rule_docs([("t.yml", 0, yaml.safe_load(doc))], RECORD_FIELDS).detections
    return r


@pytest.mark.parametrize(
    ("detection", "could"),
    [
        ("  s: {ActionType: ConnectionSuccess}\n  condition: s\n", False),
        ("  s: {ActionType: ConnectionFailed}\n  condition: s\n", True),
        ("  s: {ActionType|contains: fail}\n  condition: s\n", True),
        ("  s: {RemotePort: 445}\n  condition: s\n", True),  # not decided by an attempt's constant fields
        ("  s: {RemotePort: 445, ConnState: SF}\n  condition: s\n", False),
        ("  s: [{ConnState: SF}, {AppUser: x}]\n  condition: s\n", False),  # AppUser is "" in every attempt
        ("  s: [{ConnState: SF}, {RemoteIP: 1.2.3.4}]\n  condition: s\n", True),
        ("  s: {ConnState: SF}\n  f: {RemotePort: 21}\n  condition: s or not f\n", True),
        ("  s: {ConnState: SF}\n  f: {RemotePort: 21}\n  condition: s and not f\n", False),
        ("  s: {RemotePort: 21}\n  f: {History: S}\n  condition: s and not f\n", False),
        ("  s: {RemotePort: 21}\n  f: {History: S}\n  condition: not (s and not f)\n", True),
        ("  s1: {SentBytes: 0}\n  s2: {RemotePort: 21}\n  condition: all of s*\n", True),
        ("  s1: {SentBytes: 1}\n  s2: {RemotePort: 21}\n  condition: all of s*\n", False),
        ("  s1: {SentBytes: 1}\n  s2: {AccountName: x}\n  condition: 1 of s*\n", False),
    ],
)
def test_could_match_decides_only_on_the_fields_every_attempt_has(detection, could):
    assert _rule(detection).could_match(ATTEMPT_CONSTANTS) is could
    assert RULES.detections[0].could_match(ATTEMPT_CONSTANTS) is False  # the shipped hunt: never


def test_groups_are_bounded_and_written_by_age_and_when_the_flood_ends():
    """At most limits.max_attempt_groups groups (a new one writes the oldest);
    a group is written once GROUP_SPAN_US old; emergency mode ending writes
    them all; every attempt is counted once."""
    # 70,000 SYNs from 3,000 sources, 1 ms apart: 70 s of packet time
    n = 70_000
    frames = list(syn_scan_frames(n, 3_000, T0, 1_000))
    pipe, sink = _replay(dict(CFG, limits={"max_flows": 400, "max_attempt_groups": 50}), frames)
    st = pipe.flows.attempt_groups.stats
    groups = _groups(sink)
    assert st.groups_peak == 50 and st.groups == len(groups) > 50
    assert sum(g["Attempts"] for g in groups) == st.aggregated
    assert st.aggregated + len(sink.records["connections"]) == n
    # with room for every group, the span still cuts them: none spans more than GROUP_SPAN_US
    pipe, sink = _replay(dict(CFG, limits={"max_flows": 400}), frames)
    spans = {(g["OriginatorIP"], g["ResponderPort"]) for g in _groups(sink)}
    assert len(_groups(sink)) > len(spans)  # a source's attempts in more than one group
    for g in _groups(sink):
        assert g["LastSeen"] <= iso_us(_us(g["FirstSeen"]) + GROUP_SPAN_US)
    # the flood ends (the table drains under 70 %: emergency mode ends): its groups are written then
    quiet = list(syn_scan_frames(5, 5, T0 + 300_000_000, 1_000_000))  # a SYN a second, 5 min later
    pipe, sink = _replay(dict(CFG, limits={"max_flows": 400}), frames[:1_000] + quiet, finish=False)
    assert pipe.flows.stats.emergency_exited == 1 and not pipe.flows.attempt_groups.groups  # before the end
    assert sum(g["Attempts"] for g in _groups(sink)) == pipe.flows.attempt_groups.stats.aggregated > 0


def _us(text: str) -> int:
    d = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def test_attempt_records_option_is_checked():
    assert config_from_dict({}).attempt_records == "aggregate"
    assert config_from_dict({"attempt_records": "each"}).attempt_records == "each"
    for bad in ("all", True, None, 1):
        with pytest.raises(ConfigError, match="attempt_records"):
            config_from_dict({"attempt_records": bad})
    with pytest.raises(ConfigError, match="limits.max_attempt_groups"):
        config_from_dict({"limits": {"max_attempt_groups": 0}})
