"""The SYN scan's per-packet work (issue #13's speed target), kept exact:

- an embryo that ends unanswered (evicted at ``max_flows``, flushed at the
  end) is written from ``RecordBuilder.attempt`` without becoming a Flow:
  the same records, byte for byte and in the same order, as hatching it
  (``FlowTable.attempt_ended`` unset), under every record-shaping option;
- ``Outputs.emit`` encodes a record only for the sinks that take its kind;
- a rule selection evaluates its outcome field first (a failed connection
  is rejected by ``ActionType`` alone) with the rule's results and written
  field order unchanged.

The figures: ``python fuzz/scan.py`` (fuzz/README.md).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fuzz.scan import syn_scan_frames, tcp_frame
from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.sinks import MemorySink, Outputs
from sensor.pipeline import Pipeline
from sensor.records.encode import Encoder, to_line
from sensor.records.mde import RECORD_FIELDS
from tests.test_bounded_state import _mixed_handshakes

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "rules", RECORD_FIELDS)
T0 = 1_790_000_000_000_000
CFG: dict[str, Any] = {
    "home_net": ["192.168.56.0/24", "10.0.0.0/8"],
    "ip_type_overrides": {"203.0.113.0/24": "Public", "198.51.100.0/24": "Public"},
}


def _inbound_scan(n: int) -> Iterator[tuple[int, bytes]]:
    """SYNs from public scanners to home addresses (the device is the responder)."""
    for i in range(n):
        src = bytes((198, 51, 100, 1 + i % 50))
        dst = bytes((10, 2, i >> 8 & 0xFF, i & 0xFF))
        yield T0 + 5 + i * 10, tcp_frame(src, dst, 30000 + i % 20000, (445, 21, 139, 990, 8080)[i % 5], i, 0, 0x02, i)


def _ipv6_syns(n: int) -> Iterator[tuple[int, bytes]]:
    """Bare IPv6 SYNs (the layered path's embryos), checksums left to the
    decoder's defaults (IPv6 TCP checksums are validated: these are valid)."""
    import struct

    from fuzz.scan import checksum

    for i in range(n):
        src = socket.inet_pton(socket.AF_INET6, f"2001:db8::{i + 1:x}")
        dst = socket.inet_pton(socket.AF_INET6, "2001:db8:1::21")
        seg = struct.pack("!HHIIBBHHH", 41000 + i, 21, i * 7, 0, 0x50, 0x02, 1024, 0, 0)
        pseudo = src + dst + struct.pack("!IxxxB", len(seg), 6)
        seg = seg[:16] + checksum(pseudo + seg).to_bytes(2, "big") + seg[18:]
        ip6 = struct.pack("!IHBB", 6 << 28, len(seg), 6, 64) + src + dst
        eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"
        yield T0 + 7 + i * 10, eth + ip6 + seg


def _same_microsecond(n: int, again: int) -> list[tuple[int, bytes]]:
    """``n`` SYNs in one microsecond (more than max_flows: embryos of that
    microsecond are evicted in it), then the first ``again`` of them once more
    in it: their uids count the evicted attempt (FlowTable._recent)."""
    t = T0 + 100_000_000
    syns = [
        tcp_frame(bytes((10, 3, i >> 8, i & 0xFF)), bytes((198, 51, 100, 9)), 5000, 445, i, 0, 0x02, i)
        for i in range(n)
    ]
    return [(t, f) for f in syns + syns[:again]]


def _vlan_syns(n: int) -> list[tuple[int, bytes]]:
    """Bare SYNs with an 802.1Q tag (VLAN 1 + i % 4000), each its own connection."""
    out = []
    for i in range(n):
        f = tcp_frame(bytes((10, 4, i >> 8, i & 0xFF)), bytes((198, 51, 100, 30)), 6000, 139, i, 0, 0x02, i)
        out.append((T0 + 3 + i * 10, f[:12] + b"\x81\x00" + (1 + i % 4000).to_bytes(2, "big") + f[12:]))
    return out


def _frames() -> list[tuple[int, bytes]]:
    out = list(syn_scan_frames(1_500, sources=700, t0_us=T0, gap_us=10))
    out += _mixed_handshakes(T0 + 2_000)
    out += list(_inbound_scan(600))
    out += list(_ipv6_syns(200))
    out += _vlan_syns(300)
    out += _same_microsecond(500, 30)
    # a scan SYN answered long after (hatched by its SYN-ACK), and one refused
    out.append((T0 + 900_000, tcp_frame(bytes((198, 51, 100, 2)), bytes((10, 1, 0, 1)), 445, 1024, 5, 1, 0x12, 9)))
    return sorted(out, key=lambda x: x[0])


def _replay(cfg: dict[str, Any], fast: bool, fused: bool = True) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    pipe = Pipeline(config_from_dict(cfg), RULES, sink)
    pipe.fused = fused
    pipe.flows.embryo_from = 0  # every quiet SYN an embryo
    if not fast:
        pipe.flows.attempt_ended = None  # hatched into a Flow and ended as one
    h = pipe.handler_for(1)
    for ts, f in _frames():
        h(ts, f)
    pipe.finish()
    return pipe, sink


VARIANTS = {
    "defaults": dict(CFG),
    "device_name": dict(CFG, device_name="sensor-1"),
    "inventory": dict(CFG, inventory={"10.0.0.1": "ws-1", "10.2.0.7": "srv-7"}),
    "hostnames": dict(CFG, hostnames={"198.51.100.3": "files.example.net"}),
    "no_home": {"home_net": ["192.0.2.0/24"], "ip_type_overrides": {"198.51.100.0/24": "Public"}},
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unanswered_embryos_end_as_their_flows_would(variant, fused):
    """Evicted (max_flows) and flushed embryos, IPv4 and IPv6, outbound and
    inbound, among answered, refused and expired connections: the records
    and their order are those of the hatched flows, and so are the counters."""
    cfg = dict(VARIANTS[variant], limits={"max_flows": 400}, attempt_records="each")
    (pa, sa), (pb, sb) = _replay(cfg, fast=True, fused=fused), _replay(cfg, fast=False, fused=fused)
    assert pa.flows.attempt_ended is not None and pb.flows.attempt_ended is None
    st = pa.flows.stats
    assert st.evicted > 2_000 and st.embryos > 2_400 and st.created == st.ended
    conns = sa.records["connections"]
    assert len(conns) == st.created
    for kind in ("connections", "transfers", "alerts", "weird"):
        assert [to_line(r) for r in sa.records[kind]] == [to_line(r) for r in sb.records[kind]], kind
    # the fast path wrote most of them: inbound and outbound (the device the home end, or the
    # client when neither is), v4 and v6, each tracked port's protocol
    fails = [c for c in conns if c["ConnState"] == "S0"]
    assert {c["Direction"] for c in fails} == ({"outbound"} if variant == "no_home" else {"outbound", "inbound"})
    assert any(":" in c["RemoteIP"] for c in fails) and {c["AppProtocol"] for c in fails} == {"smb", "ftp", "ftps"}
    assert len({c["Vlan"] for c in fails}) > 250
    assert pa.flows.recent_peak > 0  # attempts evicted in their first microsecond were remembered
    assert pa.flows.stats.as_dict() == pb.flows.stats.as_dict()
    assert pa.action_counts == pb.action_counts and pa.detector.stats.as_dict() == pb.detector.stats.as_dict()
    assert pa.flows.active() == 0 and not pa.flows.flows and not pa.flows.embryos


def test_endpoint_mode_keeps_the_general_path():
    """With attribution (endpoint mode) an attempt's record carries its
    process: embryos are hatched and ended as flows."""
    from sensor.attribution.book import AttributionBook

    pipe = Pipeline(config_from_dict(CFG), RULES, MemorySink(), attribution=AttributionBook())
    assert pipe.flows.attempt_ended is None
    assert Pipeline(config_from_dict(CFG), RULES, MemorySink()).flows.attempt_ended is not None


class _Sink:
    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = frozenset(kinds)
        self.lines: list[bytes] = []

    def put(self, meta: tuple, line: bytes) -> bool:
        self.lines.append(line)
        return True


class _CountingEncoder(Encoder):
    calls = 0

    def encode(self, kind: str, rec: Mapping[str, Any]) -> bytes:
        self.calls += 1
        return super().encode(kind, rec)


def test_outputs_encode_only_for_a_sink_that_takes_the_kind():
    rec = {"Timestamp": "2026-01-01T00:00:00.000000Z", "Uid": "C1", "ActionType": "ConnectionFailed"}
    enc = _CountingEncoder()
    out = Outputs(enc, [])
    for _ in range(3):
        out.emit("connections", rec)
    assert enc.calls == 0 and out.counts["connections"] == 3  # counted, never encoded
    alerts_only, everything = _Sink(("alerts",)), _Sink(("connections", "alerts"))
    enc = _CountingEncoder()
    out = Outputs(enc, [alerts_only, everything])
    out.emit("connections", rec)
    out.emit("alerts", rec)
    assert enc.calls == 2  # once per record, shared by the sinks that take it
    assert everything.lines == [Encoder().encode("connections", rec), Encoder().encode("alerts", rec)]
    assert alerts_only.lines == [Encoder().encode("alerts", rec)]


class _Reads(dict):
    """A record that remembers which fields a rule read."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.read: list[str] = []

    def get(self, k: str, default: Any = None) -> Any:
        self.read.append(k)
        return super().get(k, default)


def test_selection_rejects_a_failed_connection_by_its_action_type_first():
    (d,) = RULES.detections
    # the rule's fields as written (the report renders the hunt in this order)
    assert list(d.detection["selection"]) == ["RemotePort", "RemoteIPType", "ActionType"]
    base = {"RemotePort": 445, "RemoteIPType": "Public", "ActionType": "ConnectionFailed"}
    rec = _Reads(base)
    assert not d.match(rec) and rec.read == ["ActionType"]
    # same results as the rule read in its written order, over the fields' combinations
    for port in (445, 69, 8080, "445", True, None, [21, 8080]):
        for typ in ("Public", "public", "Private", None):
            for action in ("ConnectionSuccess", "connectionsuccess", "ConnectionFailed", "", None, 1):
                r = {"RemotePort": port, "RemoteIPType": typ, "ActionType": action}
                written = all(m(r) for m in _field_checks(r))
                assert d.match(r) == written, r


def _field_checks(r: Mapping[str, Any]) -> list[Any]:
    """The rule's selection, field by field in the written order (Sigma's semantics)."""
    ports = (20, 21, 990, 445, 139, 69)

    def port_ok(v: Any) -> bool:
        vs = v if isinstance(v, list) else [v]
        return any(
            (not isinstance(x, bool) and x == p) or (isinstance(x, str) and x == str(p)) for x in vs for p in ports
        )

    return [
        lambda r: port_ok(r.get("RemotePort")),
        lambda r: r.get("RemoteIPType") is not None and str(r["RemoteIPType"]).lower() == "public",
        lambda r: r.get("ActionType") is not None and str(r["ActionType"]).lower() == "connectionsuccess",
    ]


def test_iso_us_with_its_last_second_kept_matches_datetime():
    """``iso_us`` keeps the text of the last second it formatted: in and out
    of order, across days, clamped at both ends, it is datetime's."""
    import random
    from datetime import UTC, datetime

    from sensor.core.timefmt import MAX_TS_US, iso_us

    def ref(t: int) -> str:
        t = min(max(t, 0), MAX_TS_US)
        return datetime.fromtimestamp(t // 1_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t % 1_000_000:06d}Z"

    rnd = random.Random(13)
    times = [T0 + i * 37_013 for i in range(3_000)]  # packet order: runs of one second
    times += [rnd.randrange(-(10**12), MAX_TS_US + 10**12) for _ in range(3_000)]  # any order
    times += [0, -1, 999_999, 1_000_000, 86_399_999_999, 86_400_000_000, MAX_TS_US, MAX_TS_US + 1, T0, T0 - 1]
    for t in times:
        assert iso_us(t) == ref(t), t


def test_mde_lines_without_copying_the_record_are_the_profiles():
    """``Encoder.encode`` (mde) appends the kind to the record's JSON instead
    of copying the record: the same bytes as the profile's document, shrunk
    the same way when too long, for every kind and hostile strings."""
    from sensor.records.encode import MdeProfile, shrink

    _, sink = _replay(dict(CFG, limits={"max_flows": 400}, attempt_records="each"), fast=True)
    recs = [(k, r) for k, rs in sink.records.items() for r in rs[:300]]
    recs += [
        (
            "connections",
            {"Timestamp": "t", "AppUser": 'é\u2028\n\x00\x1b"\\', "AdditionalFields": {"Files": ["a" * 900] * 30}},
        ),
        ("weird", {"RecordKind": "spoofed", "Name": "x"}),  # a member of that name: the profile's way
        ("alerts", {}),
        ("files", {"Uids": list(range(2_000)), "Timestamp": "t", "Uid": "C1"}),
    ]
    assert {k for k, _ in recs} >= {"connections", "alerts"}
    for limit in (16_384, 600):
        enc, ref = Encoder(max_line_bytes=limit), MdeProfile()
        for kind, rec in recs:
            want = to_line(ref.transform(kind, rec))  # type: ignore[arg-type]
            if len(want) > limit:
                import json

                want = shrink(json.loads(want), limit, MdeProfile.flag_truncated)
            assert enc.encode(kind, rec) == want, (kind, rec)


def test_uids_are_the_base62_digits_of_the_flow_hash():
    """``FlowTable._uid`` (its base 62 cut in two divisions) gives the uid
    of the plain digit-by-digit conversion, for IPv4 and IPv6 keys of any
    time and same-microsecond count."""
    import hashlib
    import random
    from binascii import hexlify

    from sensor.engine.flows import _B62, FlowTable

    def reference(key: tuple, ts: int, n: int) -> str:
        proto, a, ap, b, bp = key
        msg = b"%d|%s|%d|%s|%d|%d|%d" % (proto, hexlify(a), ap, hexlify(b), bp, ts, n)
        v = int.from_bytes(hashlib.blake2b(msg, digest_size=12).digest(), "big")
        digits = []
        for _ in range(17):  # least significant first
            v, r = divmod(v, 62)
            digits.append(_B62[r])
        return "C" + "".join(digits)

    ft = FlowTable(config_from_dict({}), lambda f: None)
    rnd = random.Random(7)
    for _ in range(20_000):
        size = rnd.choice((4, 16))
        key = (
            rnd.choice((6, 17)),
            rnd.randbytes(size),
            rnd.randrange(65536),
            rnd.randbytes(size),
            rnd.randrange(65536),
        )
        ts = rnd.randrange(1 << 62)
        assert ft._uid(key, ts) == reference(key, ts, 0), key
        ft._recent[key] = (ts, 2)  # a flow on this key ended in this microsecond: n = 3
        assert ft._uid(key, ts) == reference(key, ts, 3), key
        ft._recent.clear()
