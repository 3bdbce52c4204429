"""Hypothesis properties of the packet path: the only allowed failure is the
sensor's own anomaly path (weird callbacks and records), never an exception --
and never an analyzer's internal-error weird (``*_analyzer_error``, e.g.
``smb_analyzer_error``): that is an exception the analyzer caught, a bug.

- the decoder, for every supported link type (and an unknown one), on
  arbitrary bytes and on mutated real frames, through ``decode`` and through
  the Ethernet fast path of ``handler``;
- the flow tracker on arbitrary sequences of ``Packet`` objects (flags,
  sequence numbers across the wrap, timestamps going backwards, ports): never
  more than ``max_flows`` flows, bytes never negative, ``flush()`` ends every
  flow exactly once;
- every analyzer on arbitrary call sequences (both directions, gaps, close);
- the whole pipeline on arbitrary frame lists: every record serialises to
  exactly one JSON line;
- a quick (20,000 mutated packets) run of fuzz/mutate.py: 0 crashes.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz import mutate
from sensor.analyzers.base import ConnInfo
from sensor.analyzers.ftp import FtpAnalyzer
from sensor.analyzers.smb import SmbAnalyzer
from sensor.analyzers.tftp import TftpRequestAnalyzer, TftpTransferAnalyzer
from sensor.core.config import config_from_dict
from sensor.core.events import Event, Weird
from sensor.detect.rules import load_rules
from sensor.engine.decode import SUPPORTED_LINKTYPES, Decoder, Packet
from sensor.engine.flows import FlowTable
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.encode import to_line
from sensor.records.mde import RECORD_FIELDS

REPO = Path(__file__).resolve().parent.parent

RULES = load_rules(REPO / "rules", RECORD_FIELDS)
DEFAULT_PORTS = frozenset((20, 21, 69, 139, 445, 990))
ALL_PORTS = frozenset(range(65536))
LINKTYPES = sorted(SUPPORTED_LINKTYPES) + [147]  # 147: a user link type nothing decodes
PCAP_TS_MAX = mutate.PCAP_TS_MAX
CONN_STATES = {"S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _corpus_sample(n: int = 400) -> list[bytes]:
    rng = random.Random(6)
    out = []
    for name in ("ftp_passive_anon", "smb445", "tftp", "ftps_explicit", "smb139"):
        _, frames = mutate.read_capture(REPO / "pcaps/real" / f"{name}.pcap")
        out += [f for _, f in rng.sample(frames, min(len(frames), n // 5))]
    return out


REAL_FRAMES = _corpus_sample()


class WeirdLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str]] = []

    def __call__(self, ts: int, name: str, detail: str) -> None:
        assert isinstance(name, str) and name and isinstance(detail, str)
        self.calls.append((ts, name, detail))


def _check_packet(p: Packet) -> None:
    assert p.proto in (6, 17)
    assert len(p.src) == len(p.dst) and len(p.src) in (4, 16)
    assert 0 <= p.sport < 65536 and 0 <= p.dport < 65536
    assert 0 <= p.seq < 2**32 and 0 <= p.ack < 2**32 and 0 <= p.flags < 256
    assert isinstance(p.payload, bytes)


def _decode_all_ways(lt: int, ports, ts: int, data: bytes) -> list[Packet]:
    """``decode`` and ``handler`` (Ethernet: the inline fast path) on the same
    bytes; both must agree on whether a target packet came out."""
    w1, w2 = WeirdLog(), WeirdLog()
    d1 = Decoder(lt, ports, on_weird=w1)
    p1 = d1.decode(ts, data)
    got: list[Packet] = []
    d2 = Decoder(lt, ports, on_weird=w2)
    d2.handler(got.append)(ts, data)
    assert len(got) <= 1
    assert (p1 is None) == (not got)
    for d, w in ((d1, w1), (d2, w2)):
        assert d.stats.malformed == len(w.calls)  # every malformation reported, and only through the callback
    out = ([p1] if p1 is not None else []) + got
    for p in out:
        _check_packet(p)
    return out


# --------------------------------------------------------------------------
# decoder
# --------------------------------------------------------------------------


@FAST
@given(
    lt=st.sampled_from(LINKTYPES), data=st.binary(max_size=160), ts=st.integers(0, 2**64 - 1), all_ports=st.booleans()
)
def test_decoder_arbitrary_bytes_never_raises(lt, data, ts, all_ports):
    _decode_all_ways(lt, ALL_PORTS if all_ports else DEFAULT_PORTS, ts, data)


def _ip_frame(v6: bool, proto: int, payload_len_field: int | None, body: bytes) -> bytes:
    if v6:
        ln = len(body) if payload_len_field is None else payload_len_field
        hdr = struct.pack(
            "!IHBB16s16s",
            0x60000000,
            ln & 0xFFFF,
            proto,
            64,
            b"\xfd" + b"\0" * 14 + b"\1",
            b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\2",
        )
        return b"\2" * 6 + b"\4" * 6 + b"\x86\xdd" + hdr + body
    tot = 20 + len(body) if payload_len_field is None else payload_len_field
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, tot & 0xFFFF, 1, 0, 64, proto, 0, bytes((10, 0, 0, 1)), bytes((203, 0, 113, 10))
    )
    return b"\2" * 6 + b"\4" * 6 + b"\x08\x00" + hdr + body


# structured frames: Ethernet / IPv4|IPv6 / TCP|UDP on tracked ports, every length field arbitrary
l4_body = st.builds(
    lambda proto, sport, dport, seq, off, flags, ulen, payload: (
        (
            struct.pack("!HHIIBBHHH", sport, dport, seq, 0, off, flags, 65535, 0, 0)
            if proto == 6
            else struct.pack("!HHHH", sport, dport, ulen, 0)
        )
        + payload
    ),
    st.sampled_from((6, 17)),
    st.sampled_from((20, 21, 69, 445, 139, 990, 40000)),
    st.sampled_from((21, 69, 445, 50000)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.binary(max_size=40),
)
structured = st.builds(
    lambda v6, proto, lf, body, cut: _ip_frame(v6, proto, lf, body)[:cut],
    st.booleans(),
    st.sampled_from((6, 17)),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
    l4_body,
    st.integers(0, 200),
)


@FAST
@given(data=structured, lt=st.sampled_from(LINKTYPES), ts=st.integers(0, PCAP_TS_MAX))
def test_decoder_structured_frames_never_raise(data, lt, ts):
    # the same bytes as Ethernet, and re-wrapped for every link type
    _decode_all_ways(1, DEFAULT_PORTS, ts, data)
    kind = {
        0: "null",
        108: "loop",
        101: "raw",
        12: "raw",
        14: "raw",
        228: "ipv4",
        229: "ipv6",
        113: "sll",
        276: "sll2",
        1: "vlan",
    }.get(lt)
    if kind:
        _decode_all_ways(lt, DEFAULT_PORTS, ts, mutate.relink(kind, data))


@FAST
@given(
    i=st.integers(0, len(REAL_FRAMES) - 1),
    edits=st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 1600)),
    kind=st.sampled_from(sorted(mutate.LINKS)),
    fam6=st.sampled_from((10, 24, 28, 30)),
)
def test_decoder_mutated_real_frames_never_raise(i, edits, cut, kind, fam6):
    b = bytearray(REAL_FRAMES[i])
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    if cut is not None:
        del b[cut:]
    data = mutate.relink(kind, bytes(b), vlan=7, fam6=fam6)
    _decode_all_ways(mutate.LINKS[kind], DEFAULT_PORTS, 1_790_000_000_000_000, data)
    _decode_all_ways(mutate.LINKS[kind], ALL_PORTS, 1_790_000_000_000_000, data)


# IPv4, total length 20 (no room for the UDP header it carries), UDP length 12, to port 69: the decoder
# once gave it plen = -8 (found by the fuzzer: negative SentBytes), fixed in 7c59052
NEG_UDP = _ip_frame(False, 17, 20, struct.pack("!HHHH", 40000, 69, 12, 0) + b"abcd")


@FAST
@example(data=NEG_UDP, lt=1)
@given(data=structured, lt=st.sampled_from((1,)))
def test_decoded_payload_lengths_are_consistent(data, lt):
    for p in _decode_all_ways(lt, DEFAULT_PORTS, 0, data):
        assert p.plen >= 0, p
        assert len(p.payload) <= p.plen
        assert len(p.payload) == p.plen or p.truncated


# --------------------------------------------------------------------------
# flow tracker
# --------------------------------------------------------------------------

ADDRS = (
    bytes((10, 0, 0, 1)),
    bytes((10, 0, 0, 2)),
    bytes((203, 0, 113, 10)),
    b"\xfd" + b"\0" * 14 + b"\1",
    b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\2",
)
PORTS = (21, 445, 69, 20, 40000, 40001, 50000)

packet = st.builds(
    lambda a, b, v6, proto, sp, dp, flags, seq, ack, plen, dt: (dt, a, b, v6, proto, sp, dp, flags, seq, ack, plen),
    st.integers(0, 2),
    st.integers(0, 2),
    st.booleans(),
    st.sampled_from((6, 6, 6, 17)),
    st.sampled_from(PORTS),
    st.sampled_from(PORTS),
    st.integers(0, 255),
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from((0, 1, 2**31, 2**32 - 1, 2**32 - 100))),
    st.integers(0, 2**32 - 1),
    st.one_of(st.integers(0, 3000), st.just(0)),
    st.one_of(
        st.integers(-3_600_000_000, 3_600_000_000),
        st.integers(0, 2_000_000),
        st.sampled_from((0, 1, -1, 86_400_000_000, -86_400_000_000)),
    ),
)


def _packets(spec, t0: int = 1_790_000_000_000_000) -> list[Packet]:
    out, t = [], t0
    for dt, a, b, v6, proto, sp, dp, flags, seq, ack, plen in spec:
        t = max(0, t + dt)
        src, dst = (ADDRS[3], ADDRS[4]) if v6 and a != b else (ADDRS[a], ADDRS[b])
        if src == dst and sp == dp:
            dp += 1
        out.append(
            Packet(
                t,
                src,
                dst,
                proto,
                sp,
                dp,
                flags if proto == 6 else 0,
                seq if proto == 6 else 0,
                ack if proto == 6 else 0,
                plen,
                b"\0" * min(plen, 64),
                0,
                plen > 64,
            )
        )
    return out


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.lists(packet, max_size=60),
    max_flows=st.integers(1, 6),
    seq_jump=st.sampled_from((1000, 1 << 30)),
    tiny=st.booleans(),
)
def test_flow_table_bounded_and_ends_every_flow_once(spec, max_flows, seq_jump, tiny):
    t = {"tcp_attempt": 1.0, "tcp_established": 5.0, "tcp_closed": 0.5, "udp": 1.0} if tiny else {}
    cfg = config_from_dict(
        {
            "timeouts": t,
            "limits": {
                "max_flows": max_flows,
                "max_seq_jump": seq_jump,
                "flow_scan_interval": 0.001,
                "flow_scan_budget": 2,
            },
        }
    )
    ended, weirds = [], []
    ft = FlowTable(cfg, ended.append, lambda ts, f, n, d: weirds.append(n))
    created: dict[str, object] = {}
    tracked_pkts = 0
    for p in _packets(spec):
        f = ft.process(p)
        assert len(ft.flows) <= max_flows
        if f is not None:
            tracked_pkts += 1
            created[f.uid] = f
            for side in (f.o, f.r):
                assert side.bytes >= 0 and side.pkts >= 0
    ft.flush()
    assert ft.flows == {} and all(not q for q in ft.queues)
    uids = [f.uid for f in ended]
    assert len(uids) == len(set(uids)), "a flow ended twice"
    assert set(uids) == set(created)
    assert ft.stats.created == ft.stats.ended == len(ended)
    assert ft.stats.active_max <= max_flows
    assert sum(f.o.pkts + f.r.pkts for f in ended) == tracked_pkts
    for f in ended:
        assert f.o.bytes >= 0 and f.r.bytes >= 0
        assert f.first_ts <= f.last_ts
        assert f.conn_state in CONN_STATES
        assert f.end_reason in ("flush", "timeout", "evicted", "reused")
    assert ft.stats.evicted == sum(f.end_reason == "evicted" for f in ended)
    # a 5-tuple reused after RST/FIN (or a SYN with a new ISN) ends the old flow
    assert ft.stats.reused == sum(f.end_reason == "reused" for f in ended)


# --------------------------------------------------------------------------
# analyzers
# --------------------------------------------------------------------------

TCP_CONN = ConnInfo("Cprop", "tcp", "10.0.0.1", 40000, "203.0.113.10", 21)
UDP_CONN = ConnInfo("Uprop", "udp", "10.0.0.1", 40000, "203.0.113.10", 69)
wireish = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(mutate.FTP_TOKENS + mutate.HOSTILE_ARGS + (b"\r\n", b"\xfeSMB", b"\x00\x00\x00\x40")),
        max_size=12,
    ).map(b"".join),
)
call = st.one_of(
    st.tuples(st.sampled_from(("ts", "tc")), wireish),
    st.tuples(st.just("gap"), st.tuples(st.booleans(), st.integers(0, 1 << 40))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(("ftp", "ftp-mid", "smb", "smb-mid", "tftp", "tftp-transfer")),
    calls=st.lists(call, max_size=20),
    ts0=st.integers(0, PCAP_TS_MAX),
)
def test_analyzers_never_raise(which, calls, ts0):
    a = {
        "ftp": lambda: FtpAnalyzer(TCP_CONN),
        "ftp-mid": lambda: FtpAnalyzer(TCP_CONN, midstream=True),
        "smb": lambda: SmbAnalyzer(TCP_CONN),
        "smb-mid": lambda: SmbAnalyzer(TCP_CONN, midstream=True),
        "tftp": lambda: TftpRequestAnalyzer(UDP_CONN),
        "tftp-transfer": lambda: TftpTransferAnalyzer(UDP_CONN),
    }[which]()
    evs = []
    for i, (kind, arg) in enumerate(calls):
        ts = ts0 + i
        if kind == "ts":
            evs += a.receive_ts(arg, ts)
        elif kind == "tc":
            evs += a.receive_tc(arg, ts)
        else:
            evs += a.gap(arg[0], arg[1], ts)
    evs += a.close(ts0 + len(calls))
    assert all(isinstance(e, Event) for e in evs)
    # a caught exception of the analyzer's own is a bug, not an anomaly of the input
    internal = [e for e in evs if isinstance(e, Weird) and mutate.is_internal_error(e.name)]
    assert not internal, internal


# --------------------------------------------------------------------------
# the whole pipeline
# --------------------------------------------------------------------------

CFG = config_from_dict(
    {
        "home_net": ["10.0.0.0/8"],
        "ip_type_overrides": {"203.0.113.0/24": "Public"},
        "limits": {"max_flows": 8, "max_window_keys": 4},
    }
)


def _run_pipeline(frames: list[tuple[int, int, bytes]]) -> MemorySink:
    sink = MemorySink()
    pipe = Pipeline(CFG, RULES, sink)
    for lt, ts, data in frames:
        pipe.handler_for(lt)(ts, data)
    pipe.finish()
    internal = {n: c for n, c in pipe.weird_counts.items() if mutate.is_internal_error(n)}
    assert not internal, (internal, [w for w in sink.records["weird"] if mutate.is_internal_error(w["Name"])])
    for kind, recs in sink.records.items():
        for rec in recs:
            line = to_line(rec)
            assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
            assert json.loads(line) == json.loads(json.dumps(rec)), kind
    assert pipe.flows.flows == {}
    return sink


def _ftp_frames(lines: list[bytes], ts0: int, dts: list[int]) -> list[tuple[int, int, bytes]]:
    """A TCP session on port 21 (handshake, then the lines alternately client and
    server, seq numbers right), as Ethernet frames."""
    cseq, sseq = 0xFFFFFF00, 1000

    def seg(c2s: bool, flags: int, payload: bytes, seq: int, ack: int) -> bytes:
        sp, dp = (40000, 21) if c2s else (21, 40000)
        tcp = struct.pack("!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
        src, dst = (bytes((10, 0, 0, 1)), bytes((203, 0, 113, 10)))
        if not c2s:
            src, dst = dst, src
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0, 64, 6, 0, src, dst)
        return b"\2" * 6 + b"\4" * 6 + b"\x08\x00" + ip + tcp + payload

    out = [
        seg(True, 0x02, b"", cseq, 0),
        seg(False, 0x12, b"", sseq, cseq + 1),
        seg(True, 0x10, b"", cseq + 1, sseq + 1),
    ]
    cseq += 1
    sseq += 1
    for i, line in enumerate(lines):
        if i % 2 == 0:
            out.append(seg(True, 0x18, line, cseq, sseq))
            cseq += len(line)
        else:
            out.append(seg(False, 0x18, line, sseq, cseq))
            sseq += len(line)
    out += [seg(True, 0x11, b"", cseq, sseq), seg(False, 0x11, b"", sseq, cseq + 1)]
    res, t = [], ts0
    for i, f in enumerate(out):
        t = max(0, t + dts[i % len(dts)])
        res.append((1, t, f))
    return res


frame_any = st.one_of(structured, st.binary(max_size=120))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(
        st.tuples(st.sampled_from((1, 1, 1, 101, 113, 276, 0)), st.integers(0, PCAP_TS_MAX), frame_any), max_size=30
    )
)
def test_pipeline_arbitrary_frames_one_json_line_per_record(frames):
    _run_pipeline(frames)


ftp_line = st.builds(
    lambda tok, arg, end: tok + arg + end,
    st.sampled_from(mutate.FTP_TOKENS),
    st.one_of(st.sampled_from(mutate.HOSTILE_ARGS), st.binary(max_size=60)),
    st.sampled_from((b"\r\n", b"\r\n", b"\n", b"")),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(ftp_line, max_size=14),
    ts0=st.integers(0, PCAP_TS_MAX),
    dts=st.lists(st.integers(-10_000_000, 100_000_000), min_size=1, max_size=5),
    noise=st.lists(st.tuples(st.just(1), st.integers(0, PCAP_TS_MAX), structured), max_size=5),
)
def test_pipeline_ftp_sessions_with_hostile_lines(lines, ts0, dts, noise):
    _run_pipeline(_ftp_frames(lines, ts0, dts) + noise)


@settings(max_examples=50, deadline=None)
@example(ts0=1 << 62)
@given(ts0=st.integers(0, 2**64 - 1))
def test_pipeline_any_pcapng_timestamp(ts0):
    # packet times past year 9999 (pcapng's 64-bit timestamps) once raised in records.iso_us
    _run_pipeline(_ftp_frames([b"USER a\r\n", b"331 x\r\n"], ts0, [1000]))


# --------------------------------------------------------------------------
# the mutation fuzzer, quick mode
# --------------------------------------------------------------------------


def test_mutation_fuzz_quick_no_crash(tmp_path):
    s = mutate.run(packets=20_000, seed=20_000, crash_dir=tmp_path / "crashes", determinism_every=10)
    assert s.packets_mutated >= 20_000
    assert s.determinism_checked > 0
    assert s.crashes == 0, s.text()
    assert len(s.by_link) >= 8  # the batches went through most link types


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(packet, max_size=80))
def test_every_scan_ends_every_flow_idle_past_its_timeout(spec):
    # with a budget that never binds and no bound on the table, right after
    # each expiry scan no flow in the table has been idle past its class's
    # timeout at the scan's time, and the timeout heaps hold each flow once
    cfg = config_from_dict(
        {
            "timeouts": {"tcp_attempt": 1.0, "tcp_established": 5.0, "tcp_closed": 0.5, "udp": 1.0},
            "limits": {"flow_scan_interval": 0.001, "flow_scan_budget": 100_000},
        }
    )
    ft = FlowTable(cfg, lambda f: None)
    for p in _packets(spec):
        before = ft.next_scan
        ft.process(p)
        live = {id(f) for f in ft.flows.values()}
        entries = [e for q in ft.queues for e in q if e[2] == e[3].qver and e[3].inq]
        assert sorted(id(e[3]) for e in entries) == sorted(live)
        assert ft.qlive == [sum(1 for e in q if e[2] == e[3].qver and e[3].inq) for q in ft.queues]
        if ft.next_scan != before:  # a scan ran at ft.now, before this packet was accounted
            scan = ft.next_scan - ft.scan_interval_us
            for f in ft.flows.values():
                if f.key == (p.proto,) + (
                    ((p.src, p.sport) + (p.dst, p.dport))
                    if (p.src, p.sport) <= (p.dst, p.dport)
                    else ((p.dst, p.dport) + (p.src, p.sport))
                ):
                    continue  # this packet's own flow may be new or just refreshed
                assert f.last_ts > scan - ft.timeouts_us[f.tclass], (f.uid, f.tclass, f.last_ts, scan)
