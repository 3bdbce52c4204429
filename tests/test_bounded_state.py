"""Bounded state under floods, and what the wire can write.

- a SYN scan from many sources (written with struct) mixed with real FTP
  sessions (crafted with tests/craft.py), replayed with a small
  ``limits.max_flows``: tracked flows never exceed it, evictions are counted,
  every evicted flow still gets its record, and the FTP sessions are counted
  and alerted on as without the scan;
- rule windows: a flood of distinct group keys with a small
  ``limits.max_window_keys``: keys evicted and counted, never more than the cap;
  a key's events capped by ``max_window_events``;
- what the wire writes: FTP USER/STOR arguments, SMB user/share/file names and
  TFTP filenames with CR/LF, NUL, ESC, invalid UTF-8/UTF-16 and 10 KB lengths
  give exactly one valid JSON line per record, capped, flagged where the
  record has a flag, and nothing from the wire becomes a file path.

The 1,000,000-SYN version with peak RSS is ``python fuzz/scan.py`` (not part
of the normal test run).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.scan import syn_scan_frames, tcp_frame
from fuzz.tftp_flood import REAL, flood_frames, real_transfers
from sensor.core.config import config_from_dict
from sensor.detect.detector import Detector
from sensor.detect.rules import load_rules
from sensor.records.mde import RECORD_FIELDS, iso_us
from tests.support.craft import Tcp, udp_exchange, write_raw_pcap

REPO = Path(__file__).resolve().parent.parent

RULES = load_rules(REPO / "rules", RECORD_FIELDS)
DEV = "192.168.56.10"
SRV = "203.0.113.10"
T0 = 1_790_000_000.0
CFG = {
    "home_net": ["192.168.56.0/24", "10.0.0.0/8"],
    "ip_type_overrides": {"203.0.113.0/24": "Public", "198.51.100.0/24": "Public"},
}


def ftp_sessions(starts: list[float]) -> list:
    pkts = []
    for i, t in enumerate(starts):
        c = Tcp(DEV, SRV, 40000 + i, 21, t).handshake()
        c.s2c(b"220 ready\r\n").c2s(b"USER anonymous\r\n").s2c(b"331 password\r\n").c2s(b"PASS guest@\r\n")
        c.s2c(b"230 ok\r\n").c2s(b"QUIT\r\n").s2c(b"221 bye\r\n")
        pkts += c.fin().pkts
    return pkts


def frames_of(pkts) -> list[tuple[float, bytes, int]]:
    return [(float(p.time), bytes(p), len(bytes(p))) for p in pkts]


# --------------------------------------------------------------------------
# a SYN scan against max_flows
# --------------------------------------------------------------------------

SCAN_SYNS = 20_000
MAX_FLOWS = 2_000


@pytest.fixture(scope="module")
def scan_replay(tmp_path_factory):
    from sensor.io.capture import read_file
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    tmp = tmp_path_factory.mktemp("scan")
    # 20,000 SYNs from 5,000 sources to 4 tracked ports of public servers, 50 us
    # apart (1 s of packet time: no timeout helps), and 5 FTP sessions during it
    scan = [
        (ts / 1e6, f, len(f)) for ts, f in syn_scan_frames(SCAN_SYNS, sources=5_000, t0_us=int(T0 * 1e6), gap_us=50)
    ]
    ftp = frames_of(ftp_sessions([T0 + 0.05 + 0.18 * i for i in range(5)]))
    frames = sorted(scan + ftp, key=lambda x: x[0])
    path = write_raw_pcap(tmp / "scan.pcap", frames)
    out = {}
    for name, cfg in (("scan", dict(CFG, limits={"max_flows": MAX_FLOWS})), ("alone", CFG)):
        sink = MemorySink()
        pipe = Pipeline(config_from_dict(cfg), RULES, sink)
        src = path if name == "scan" else write_raw_pcap(tmp / "alone.pcap", sorted(ftp))
        res = read_file(src, pipe.handler_for, pipe.capture_filters())
        assert not res.error
        pipe.finish()
        out[name] = (pipe, sink, res)
    return out


def test_scan_never_exceeds_max_flows_and_counts_evictions(scan_replay):
    pipe, sink, res = scan_replay["scan"]
    st = pipe.flows.stats
    assert res.packets == SCAN_SYNS + len(ftp_sessions([T0] * 5))
    assert st.active_max == MAX_FLOWS  # reached, never passed
    assert st.created == SCAN_SYNS + 5
    assert st.ended == st.created and pipe.flows.flows == {}
    # at most MAX_FLOWS flows were still there to flush at the end; the rest went by eviction
    assert st.evicted >= st.created - MAX_FLOWS - st.expired
    assert st.evicted > 0
    # an evicted flow is not lost: every flow has its record, or (an unanswered
    # SYN ended while the table was nearly full) is counted in a connection_attempts record
    conns = sink.records["connections"]
    groups = [w for w in sink.records["weird"] if w["Name"] == "connection_attempts"]
    agg = pipe.flows.attempt_groups.stats
    assert agg.aggregated == sum(g["Attempts"] for g in groups) > SCAN_SYNS // 2
    assert len(groups) == agg.groups
    assert len(conns) + agg.aggregated == st.created
    scan = [c for c in conns if c["RemotePort"] != 21 or c["RemoteIP"] != SRV]
    assert len(scan) + agg.aggregated == SCAN_SYNS
    assert {c["ConnState"] for c in scan} <= {"S0"} and {c["ActionType"] for c in scan} <= {"ConnectionFailed"}


def test_scan_does_not_hide_the_ftp_sessions(scan_replay):
    pipe, sink, _ = scan_replay["scan"]
    _, alone, _ = scan_replay["alone"]
    ftp = sorted(
        (c for c in sink.records["connections"] if c["RemoteIP"] == SRV and c["RemotePort"] == 21),
        key=lambda c: c["LocalPort"],
    )
    want = sorted(alone.records["connections"], key=lambda c: c["LocalPort"])
    assert len(ftp) == len(want) == 5
    for got, ref in zip(ftp, want):
        for f in (
            "ActionType",
            "SentBytes",
            "ReceivedBytes",
            "SentPackets",
            "ReceivedPackets",
            "ConnState",
            "History",
            "AccountName",
            "FirstSeen",
            "LastSeen",
            "CommunityId",
        ):
            assert got[f] == ref[f], (f, got[f], ref[f])
    assert ftp[0]["ActionType"] == "ConnectionSuccess" and ftp[0]["AccountName"] == "anonymous"
    assert ftp[0]["SentBytes"] == len(b"USER anonymous\r\nPASS guest@\r\nQUIT\r\n")
    alerts = [a for a in sink.records["alerts"] if "ConnectionCount" in a]
    assert len(alerts) == 1
    assert alerts[0]["RemoteIP"] == SRV and alerts[0]["ConnectionCount"] == 4
    hunt = pipe.detector.hunt_results()
    assert [h["ConnectionCount"] for h in hunt if h["RemoteIP"] == SRV] == [5]


def test_flow_table_structures_bounded_during_the_scan(tmp_path):
    """Checked after every packet, not only at the end."""
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    pipe = Pipeline(config_from_dict(dict(CFG, limits={"max_flows": 300})), RULES, MemorySink())
    h = pipe.handler_for(1)
    worst = 0
    for _i, (ts, f) in enumerate(syn_scan_frames(5_000, sources=700, t0_us=int(T0 * 1e6), gap_us=10)):
        h(ts, f)
        n = pipe.flows.active()  # full and embryonic flows
        assert n <= 300
        assert pipe.flows.queued() == len(pipe.flows.flows)  # every full flow in exactly one timeout queue
        assert len(pipe.flows._eorder) <= 4 * len(pipe.flows.embryos) + 256 + 2
        worst = max(worst, n)
    assert worst == 300 and pipe.flows.stats.evicted == 5_000 - 300 - pipe.flows.stats.expired
    pipe.finish()


RSS_BOUND = 200 * 1000 * 1000  # issue 6: peak RSS under the scan, aim <= 200 MB
DEFAULT_MAX_FLOWS = config_from_dict({}).limits.max_flows


def test_half_open_flow_memory_fits_the_rss_bound():
    """The flow table full of scan flows (max_flows of them) must fit the
    issue's RSS bound: RSS_BOUND / max_flows bytes per half-open flow
    (2,000 B with the defaults), measured with tracemalloc."""
    import gc
    import tracemalloc

    from sensor.pipeline import Pipeline

    class Null:
        def emit(self, kind, rec):
            pass

        def close(self):
            pass

    pipe = Pipeline(config_from_dict({}), RULES, Null())
    h = pipe.handler_for(1)
    frames = list(syn_scan_frames(3_000, sources=3_000, t0_us=int(T0 * 1e6), gap_us=10))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for ts, f in frames:
            h(ts, f)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    n = pipe.flows.active()
    assert n == 3_000 and not pipe.flows.embryos  # far from max_flows: full flows
    per_flow = sum(s.size_diff for s in after.compare_to(before, "filename")) / n
    assert per_flow <= RSS_BOUND / DEFAULT_MAX_FLOWS, f"{per_flow:.0f} bytes per half-open flow"


# --------------------------------------------------------------------------
# embryonic flows: a bare SYN kept small, the same records as a full flow
# --------------------------------------------------------------------------


def _mixed_handshakes(t0_us: int) -> list[tuple[int, bytes]]:
    """Bare SYNs that stay unanswered, are answered (SYN-ACK, ACK, data,
    FIN), refused (RST), retransmitted, or answered after the attempt
    timeout; some in the same microsecond; then a quiet minute so the
    expiry scan ends the unanswered ones mid-capture."""
    out = []
    srv = bytes((198, 51, 100, 7))
    t = t0_us
    for i in range(300):
        cli = bytes((10, 9, i >> 8, i & 0xFF))
        sport, dport, isn = 20000 + i, (445, 21, 139, 990)[i % 4], 1000 * i
        kind = i % 6
        out.append((t, tcp_frame(cli, srv, sport, dport, isn, 0, 0x02, i)))
        if kind == 1:  # answered, data both ways, closed
            out.append((t + 100, tcp_frame(srv, cli, dport, sport, 77, isn + 1, 0x12, i)))
            out.append((t + 200, tcp_frame(cli, srv, sport, dport, isn + 1, 78, 0x10, i)))
            out.append((t + 300, tcp_frame(cli, srv, sport, dport, isn + 1, 78, 0x18, i, b"hello")))
            out.append((t + 400, tcp_frame(srv, cli, dport, sport, 78, isn + 6, 0x11, i)))
            out.append((t + 500, tcp_frame(cli, srv, sport, dport, isn + 6, 79, 0x11, i)))
        elif kind == 2:  # refused
            out.append((t + 50, tcp_frame(srv, cli, dport, sport, 0, isn + 1, 0x14, i)))
        elif kind == 3:  # retransmitted, then unanswered
            out.append((t + 1_000_000, tcp_frame(cli, srv, sport, dport, isn, 0, 0x02, i)))
        elif kind == 4:  # answered after the attempt timeout (60 s): a new flow, picked up mid-way
            out.append((t + 70_000_000, tcp_frame(srv, cli, dport, sport, 5, isn + 1, 0x12, i)))
        if i % 50 != 7:  # every 50th pair shares a microsecond
            t += 1_000
    return sorted(out, key=lambda x: x[0])


def _replay_frames(frames, cfg, embryos: bool):
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    sink = MemorySink()
    pipe = Pipeline(config_from_dict(cfg), RULES, sink)
    if not embryos:
        pipe.flows.quiet_syn = None  # every SYN a full flow at once, as before embryos
    h = pipe.handler_for(1)
    for ts, f in frames:
        h(ts, f)
    pipe.finish()
    return pipe, sink


def test_embryo_memory():
    """Under pressure (from EMBRYOS_FROM of max_flows) an unanswered SYN is
    an embryo: a tenth of the RSS bound's share per flow."""
    import gc
    import tracemalloc

    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    pipe = Pipeline(config_from_dict({}), RULES, MemorySink())
    h = pipe.handler_for(1)
    frames = list(syn_scan_frames(6_000, sources=6_000, t0_us=int(T0 * 1e6), gap_us=10))
    pipe.flows.embryo_from = 0  # as if the table were half full
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for ts, f in frames:
            h(ts, f)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(pipe.flows.embryos) == 6_000 and not pipe.flows.flows
    # the flow table's own allocations (the decoder's checksum-offload sender
    # memory, bounded by itself at 4,096 senders, is not the embryos')
    only = [tracemalloc.Filter(True, "*/sensor/engine/flows.py")]
    diff = after.filter_traces(only).compare_to(before.filter_traces(only), "filename")
    per_embryo = sum(s.size_diff for s in diff) / 6_000
    assert per_embryo <= RSS_BOUND / DEFAULT_MAX_FLOWS / 10, f"{per_embryo:.0f} bytes per embryo"


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("embryo_from", [0, None])
def test_embryos_give_the_records_of_full_flows(fused, embryo_from):
    """Same records, byte for byte and in the same order, with and without
    embryos: uids, histories, states, expiry order mid-capture and at the end."""
    frames = _mixed_handshakes(int(T0 * 1e6))
    got = {}
    for emb in (True, False):
        from sensor.io.sinks import MemorySink
        from sensor.pipeline import Pipeline

        sink = MemorySink()
        # embryo_from None: the default share of a max_flows the capture half fills
        pipe = Pipeline(config_from_dict(dict(CFG, limits={"max_flows": 400})), RULES, sink)
        pipe.fused = fused
        if embryo_from is not None:
            pipe.flows.embryo_from = embryo_from
        if not emb:
            pipe.flows.quiet_syn = None
        h = pipe.handler_for(1)
        for ts, f in frames:
            h(ts, f)
        pipe.finish()
        got[emb] = (pipe, sink)
    (pe, se), (pf, sf) = got[True], got[False]
    assert pe.flows.stats.embryos > (150 if embryo_from == 0 else 40) and pf.flows.stats.embryos == 0
    assert pe.flows.stats.evicted == 0
    assert pe.flows.stats.expired > 0  # the quiet minute ended embryos through the expiry scan
    for kind in ("connections", "transfers", "alerts", "weird"):
        assert se.records[kind] == sf.records[kind], kind
    states = {c["ConnState"] for c in se.records["connections"]}
    assert {"S0", "SF", "REJ"} <= states
    a, b = pe.flows.stats.as_dict(), pf.flows.stats.as_dict()
    for k in ("embryos", "hatched"):
        a.pop(k), b.pop(k)
    assert a == b


def test_embryos_keep_the_vlan_tag():
    """An 802.1Q-tagged bare SYN (the fused path's general branch) packs its
    VLAN id into the embryo; the record of the hatched flow carries it."""
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    def tagged(frame: bytes, vid: int) -> bytes:
        return frame[:12] + b"\x81\x00" + vid.to_bytes(2, "big") + frame[12:]

    frames = [(ts, tagged(f, 1 + i % 4094)) for i, (ts, f) in enumerate(_mixed_handshakes(int(T0 * 1e6)))]
    out = []
    for emb in (True, False):
        sink = MemorySink()
        pipe = Pipeline(config_from_dict(CFG), RULES, sink)
        pipe.flows.embryo_from = 0
        if not emb:
            pipe.flows.quiet_syn = None
        h = pipe.handler_for(1)
        for ts, f in frames:
            h(ts, f)
        pipe.finish()
        out.append((pipe, sink))
    (pe, se), (_, sf) = out
    assert pe.flows.stats.embryos > 150
    assert se.records["connections"] == sf.records["connections"]
    vlans = [c["Vlan"] for c in se.records["connections"]]
    assert all(v > 0 for v in vlans) and len(set(vlans)) > 200  # each flow its first packet's tag


def test_embryo_bounds_and_eviction_order():
    """Embryos count against max_flows; beyond it the oldest bare SYN goes first."""
    n, cap = 3_000, 500
    pipe, sink = _replay_frames(
        list(syn_scan_frames(n, sources=n, t0_us=int(T0 * 1e6), gap_us=10)),
        dict(CFG, limits={"max_flows": cap}, attempt_records="each"),
        True,
    )
    st = pipe.flows.stats
    assert st.active_max == cap and st.created == st.ended == n and st.embryos == n - cap // 2
    assert pipe.flows.active() == 0 and not pipe.flows.embryos and not pipe.flows._eorder
    conns = sink.records["connections"]
    # evicted oldest first, then the rest flushed oldest first: packet order
    firsts = [c["FirstSeen"] for c in conns]
    assert firsts == sorted(firsts) and len(set(c["Uid"] for c in conns)) == n


# --------------------------------------------------------------------------
# a TFTP read-request flood
# --------------------------------------------------------------------------

FLOOD = 20_000
FLOOD_MAX_FLOWS = 2_000
TFTP_CFG = {"home_net": ["192.168.56.0/24"], "ip_type_overrides": {"203.0.113.0/24": "Public"}}


@pytest.fixture(scope="module")
def tftp_flood(tmp_path_factory):
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    frames = sorted(list(flood_frames(FLOOD, t0_us=int(T0 * 1e6))) + real_transfers(FLOOD * 10, t0_us=int(T0 * 1e6)))
    sink = MemorySink()
    pipe = Pipeline(config_from_dict(dict(TFTP_CFG, limits={"max_flows": FLOOD_MAX_FLOWS})), RULES, sink)
    h = pipe.handler_for(1)
    worst = worst_exp = 0
    for i, (ts, f) in enumerate(frames):
        h(ts, f)
        if i % 7 == 0:
            worst = max(worst, pipe.flows.active())
            worst_exp = max(worst_exp, pipe.app.expect.count)
    pipe.finish()
    path = write_raw_pcap(tmp_path_factory.mktemp("tftp") / "flood.pcap", [(ts / 1e6, f, len(f)) for ts, f in frames])
    return pipe, sink, worst, worst_exp, path


def test_tftp_flood_bounded_and_real_transfers_recorded(tftp_flood):
    pipe, sink, worst, worst_exp, _ = tftp_flood
    st, ex = pipe.flows.stats, pipe.app.expect
    assert worst <= FLOOD_MAX_FLOWS and st.active_max == FLOOD_MAX_FLOWS
    assert worst_exp <= ex.max and ex.stats.peak == ex.max  # room made before adding: never above the bound
    assert st.evicted > 0 and ex.stats.dropped > 0
    assert st.created == st.ended == FLOOD + 2 * len(REAL)  # requests and the real transfers' flows
    assert not ex.by_key and ex.count == 0 or ex.count == sum(len(q) for q in ex.by_key.values())
    transfers = sorted(sink.records["transfers"], key=lambda t: t["Filename"])
    assert [(t["Filename"], t["Bytes"], t["Complete"]) for t in transfers] == [
        (f"real-{k}.bin", size, True) for k, (_, _, size) in enumerate(REAL)
    ]
    reqs = {c["Uid"]: c for c in sink.records["connections"] if c["RemotePort"] == 69}
    assert len(reqs) == FLOOD + len(REAL)
    assert all(reqs[t["ControlUid"]]["ActionType"] == "ConnectionSuccess" for t in transfers)
    assert all(not isinstance(c.get("AdditionalFields"), str) for c in reqs.values())
    assert [a["ConnectionCount"] for a in pipe.detector.hunt_results()] == [len(REAL)]


def test_tftp_request_state_freed_when_the_flow_ends():
    """An ended request flow's application state does not wait for the
    cyclic garbage collector (its thresholds are raised)."""
    import gc
    import weakref

    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    pipe = Pipeline(config_from_dict(TFTP_CFG), RULES, MemorySink())
    h = pipe.handler_for(1)
    for ts, f in flood_frames(50, t0_us=int(T0 * 1e6)):
        h(ts, f)
    refs = [weakref.ref(f.ctx.session) for f in pipe.flows.flows.values()]  # (AppState has no weakref slot)
    assert len(refs) == 50 and all(r() is not None for r in refs)
    gc.disable()
    try:
        pipe.finish()
        assert [r for r in refs if r() is not None] == []
    finally:
        gc.enable()


# --------------------------------------------------------------------------
# the bounds reached are reported: replay's stderr and JSON, the daemon's log and metrics
# --------------------------------------------------------------------------


def _cli_replay(pcap: Path, cfg_text: str, tmp: Path) -> tuple[subprocess.CompletedProcess, dict]:
    cfg = tmp / f"bounds-{abs(hash(cfg_text))}.yaml"
    cfg.write_text(cfg_text)
    cp = _sensor("replay", str(pcap), "--config", str(cfg), "--format", "json", "--progress", "never")
    assert cp.returncode == 0, cp.stderr
    return cp, json.loads(cp.stdout)


def test_replay_reports_overflow_and_emergency_on_stderr(scan_replay, tmp_path):
    pcap = tmp_path / "scan.pcap"
    write_raw_pcap(
        pcap,
        [(ts / 1e6, f, len(f)) for ts, f in syn_scan_frames(SCAN_SYNS, sources=5_000, t0_us=int(T0 * 1e6), gap_us=50)],
    )
    cp, res = _cli_replay(
        pcap, f"ip_type_overrides: {{198.51.100.0/24: Public}}\nlimits: {{max_flows: {MAX_FLOWS}}}\n", tmp_path
    )
    fl = res["stats"]["flows"]
    lines = cp.stderr.decode().splitlines()
    full = [x for x in lines if "flow table full" in x]
    emerg = [x for x in lines if "emergency mode" in x]
    agg = [x for x in lines if "unanswered attempts aggregated" in x]
    assert len(full) == 1 and len(emerg) == 1 and len(agg) == 1, lines
    assert f"unanswered attempts aggregated: {res['stats']['attempts']['aggregated']} bare SYN(s)" in agg[0]
    # the summary counts them (not tabulated: no rule counts one) and says why nothing alerted
    (hunt,) = res["hunt"]
    assert hunt["attempts_aggregated"] == res["stats"]["attempts"]["aggregated"] > 0
    assert hunt["connections"] == 0 and hunt["attempts_aggregated"] == SCAN_SYNS  # all in emergency mode
    assert res["no_alerts"].startswith(f"only unanswered connection attempts ({SCAN_SYNS}, aggregated")
    assert f"{fl['evicted']} flow(s) evicted at limits.max_flows {MAX_FLOWS}" in full[0]
    assert fl["evicted"] == SCAN_SYNS - MAX_FLOWS - fl["expired"]
    assert f"entered {fl['emergency_entered']} time(s)" in emerg[0] and fl["emergency_entered"] == 1
    assert all(x.startswith("xfer-sensor: warning: ") for x in lines)
    assert res["bounds"] == [x.removeprefix("xfer-sensor: warning: ") for x in full + agg + emerg]
    # far from the bound: nothing said
    cp, res = _cli_replay(pcap, f"limits: {{max_flows: {SCAN_SYNS * 2}}}\n", tmp_path)
    assert cp.stderr == b"" and res["bounds"] == [] and res["stats"]["flows"]["evicted"] == 0


def test_replay_reports_expectations_dropped(tftp_flood, tmp_path):
    *_, path = tftp_flood
    cp, res = _cli_replay(path, f"limits: {{max_flows: {FLOOD_MAX_FLOWS}}}\n", tmp_path)
    dropped = res["stats"]["expectations"]["dropped"]
    assert dropped > 0
    assert f"expected connections full: {dropped} dropped" in cp.stderr.decode()
    assert res["transfers"] == len(REAL)


def test_daemon_bound_news_once_per_burst_and_metrics():
    from sensor.io import metrics
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    pipe = Pipeline(config_from_dict(dict(CFG, limits={"max_flows": 100})), RULES, MemorySink())
    h = pipe.handler_for(1)
    frames = iter(syn_scan_frames(1_000, sources=1_000, t0_us=int(T0 * 1e6), gap_us=10))

    def feed(k):
        for _ in range(k):
            h(*next(frames))

    feed(95)  # 95 % of max_flows: emergency, no eviction yet
    assert [x.split(":")[0] for x in pipe.bound_news()] == ["flow table emergency mode entered"]
    feed(50)  # evictions start: one line
    (line,) = pipe.bound_news()
    assert line.startswith("flow table full: evicting at limits.max_flows 100 (45 flow(s)")
    feed(50)  # the same burst goes on: nothing more
    assert pipe.bound_news() == []
    assert pipe.bound_news() == []  # a check without evictions ends the burst
    feed(10)
    (line,) = pipe.bound_news()
    assert "(10 flow(s) in the last check, 105 since start)" in line
    snap = metrics.collect(pipe_stats=pipe.stats(), capture_stats={}, flows_active=pipe.flows.active())
    text = metrics.render(snap)
    assert "xfer_sensor_flows_emergency 1" in text
    assert "xfer_sensor_flows_emergency_entered_total 1" in text
    assert "xfer_sensor_flows_evicted_total 105" in text
    # the evicted bare SYNs (in emergency mode) were counted in their groups, not written yet
    assert f"xfer_sensor_attempts_aggregated_total {pipe.flows.attempt_groups.stats.aggregated}" in text
    assert pipe.flows.attempt_groups.stats.aggregated == 105 and "xfer_sensor_attempt_groups_written_total 0" in text
    assert "xfer_sensor_flows_active 100" in text
    assert "xfer_sensor_expectations_dropped_total 0" in text


# --------------------------------------------------------------------------
# rule windows
# --------------------------------------------------------------------------


def _conn(ts: int, ip: str, port: int = 445, uid: str = "", user: str = "") -> dict:
    return {
        "Timestamp": iso_us(ts),
        "DeviceName": "WS-1",
        "ActionType": "ConnectionSuccess",
        "RemoteIP": ip,
        "RemotePort": port,
        "RemoteIPType": "Public",
        "InitiatingProcessFileName": "",
        "AccountName": user,
        "Uid": uid,
        "SentBytes": 10,
        "ReceivedBytes": 20,
    }


def test_window_key_flood_evicts_and_counts():
    cap = 100
    d = Detector(RULES, config_from_dict({"limits": {"max_window_keys": cap}}).limits)
    windows = d._all_windows()
    assert windows
    t = int(T0 * 1e6)
    alerts = []
    n_keys = 20_000
    for k in range(n_keys):
        alerts += d.observe(
            _conn(t + k * 1000, f"198.51.{k >> 8 & 255}.{k & 255}", uid=f"K{k}", user=f"u{k >> 16}"), t + k * 1000
        )
        if k % 97 == 0:
            assert all(len(w.keys) <= cap for w in windows)
        if k == n_keys // 2:
            # one key bunched inside the flood still crosses the threshold
            for j in range(4):
                alerts += d.observe(_conn(t + k * 1000 + j, SRV, 21, uid=f"F{j}"), t + k * 1000 + j)
    assert all(len(w.keys) <= cap for w in windows)
    distinct = n_keys + 1
    assert d.stats.keys_evicted == distinct - sum(len(w.keys) for w in windows) == distinct - cap
    counted = [a for a in alerts if "ConnectionCount" in a]
    assert [(a["RemoteIP"], a["ConnectionCount"]) for a in counted] == [(SRV, 4)]


def test_window_events_per_key_capped():
    d = Detector(RULES, config_from_dict({"limits": {"max_window_events": 50}}).limits)
    t = int(T0 * 1e6)
    for k in range(5_000):
        d.observe(_conn(t + k, SRV, 21, uid=f"E{k}"), t + k)
    (w,) = d._all_windows()
    (state,) = w.keys.values()
    assert len(state.events) == 50
    assert d.stats.events_dropped == 5_000 - 50


def test_window_key_flood_alert_state_bounded():
    cap = 50
    d = Detector(RULES, config_from_dict({"limits": {"max_window_keys": cap}}).limits)
    t = int(T0 * 1e6)
    raised = 0
    for k in range(2_000):
        for j in range(4):  # each key crosses the threshold (> 3)
            ts = t + (k * 4 + j) * 1000
            raised += sum(
                "ConnectionCount" in a for a in d.observe(_conn(ts, f"198.51.{k >> 8}.{k & 255}", uid=f"K{k}-{j}"), ts)
            )
    assert raised == 2_000
    assert d.stats.keys_evicted == 2_000 - cap
    retained = sum(len(w.episodes) for w in d._all_windows())
    assert retained <= cap, f"{retained} alert episodes kept with max_window_keys={cap}"


# --------------------------------------------------------------------------
# what the wire writes
# --------------------------------------------------------------------------

BIG = 10_000
FTP_USER = b"ev\x1b[31mil\x00us\xff\xfeer\rX" + b"U" * BIG
FTP_STOR = b"../../../../PWNED-stor\x1b]0;title\x07\x00\xc3\x28\xed\xa0\x80" + b"F" * BIG
FTP_STOR2 = b"/tmp/PWNED-abs\r\n"  # an absolute path, sent whole
SMB_USER = "adm\r\nin\x1b[0m\x00" + "u" * 5000
SMB_SHARE = "\\\\srv\\sh\r\nare\x1b[1m\x00" + "S" * BIG
SMB_NAME = "..\\..\\PWNED-smb\x1b[2J\x1b[31m\r\nFAKE\x00\u202e.exe" + "N" * BIG
TFTP_NAME = b"../PWNED-tftp\r\n\x1b[31m\xff\xfe\xc3\x28" + b"T" * BIG
WIRE_MARKERS = ("PWNED",)


def _smb_create_raw(mid: int, name16: bytes) -> bytes:
    """CREATE request whose name is raw UTF-16LE bytes (a lone surrogate included)."""
    import tests.test_analyzer_smb as S

    body = struct.pack("<HBBIQQIIIIIHHII", 57, 0, 0, 2, 0, 0, 0x0012019F, 0x80, 7, 5, 0x40, 120, len(name16), 0, 0)
    return S.nbss(S.h2(5, mid, tree=S.TREE_ID, sid=S.SID) + body + name16)


def wire_capture(path: Path) -> Path:
    import tests.test_analyzer_smb as S

    pk = []
    # FTP: hostile USER, then a STOR with a 10 KB hostile name over a passive data channel
    c = Tcp(DEV, SRV, 40000, 21, T0).handshake()
    c.s2c(b"220 ready\r\n").c2s(b"USER " + FTP_USER + b"\r\n").s2c(b"331 pw\r\n").c2s(b"PASS x\r\n").s2c(b"230 ok\r\n")
    c.c2s(b"PASV\r\n").s2c(b"227 Entering Passive Mode (203,0,113,10,156,64)\r\n")
    c.c2s(b"STOR " + FTP_STOR + b"\r\n")
    d = Tcp(DEV, SRV, 40001, 40000, c.t + 0.01).handshake().c2s(b"D" * 3000).fin()
    c.t = d.t + 0.01
    c.s2c(b"150 go\r\n").s2c(b"226 done\r\n")
    c.c2s(b"STOR " + FTP_STOR2).s2c(b"550 no\r\n").c2s(b"QUIT\r\n").s2c(b"221 bye\r\n")
    pk += c.fin().pkts + d.pkts
    # SMB: hostile user, share, file names (one with a lone UTF-16 surrogate)
    msgs = S.login(user=SMB_USER, domain="DOM\nAIN", ws="W\x1bS")
    msgs += [(True, S.tree_req(3, SMB_SHARE)), (False, S.tree_resp(3))]
    msgs += [
        (True, S.create_req(4, SMB_NAME, disposition=5, access=0x0012019F)),
        (False, S.create_resp(4, S.FID, action=2)),
    ]
    msgs += [(True, S.write_req(5, S.FID, 0, b"W" * 2000)), (False, S.write_resp(5, 2000))]
    msgs += [(True, S.close_req(6, S.FID)), (False, S.close_resp(6))]
    msgs += [
        (True, _smb_create_raw(7, "PWNED-lone".encode("utf-16-le") + b"\x00\xd8" + "x\r\n".encode("utf-16-le"))),
        (False, S.create_resp(7, S.FID2, action=2)),
    ]
    msgs += [(True, S.write_req(8, S.FID2, 0, b"V" * 100)), (False, S.write_resp(8, 100))]
    msgs += [(True, S.close_req(9, S.FID2)), (False, S.close_resp(9))]
    s = Tcp(DEV, SRV, 40100, 445, T0 + 5).handshake()
    for to_server, data in msgs:
        s.send(to_server, data)
    pk += s.fin().pkts
    # TFTP: a WRQ with a 10 KB hostile filename, the server answering from a new port
    pk += udp_exchange(DEV, SRV, 40200, 69, T0 + 9, [(True, b"\x00\x02" + TFTP_NAME + b"\x00octet\x00")])
    pk += udp_exchange(
        DEV,
        SRV,
        40200,
        50000,
        T0 + 9.01,
        [(False, b"\x00\x04\x00\x00"), (True, b"\x00\x03\x00\x01" + b"q" * 100), (False, b"\x00\x04\x00\x01")],
    )
    return write_raw_pcap(path, sorted(frames_of(pk)))


def _strings(v, path=""):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _strings(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _strings(x, f"{path}[{i}]")
    elif isinstance(v, str):
        yield path, v


def _sensor(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "xfer-sensor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sensor"]
    return subprocess.run([*cmd, *args], capture_output=True, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def wire_out(tmp_path_factory):
    from sensor.io.capture import read_file
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    tmp = tmp_path_factory.mktemp("wire")
    pcap = wire_capture(tmp / "wire.pcap")
    out = tmp / "out"
    cp = _sensor("replay", str(pcap), "--out", str(out))
    sink = MemorySink()
    pipe = Pipeline(config_from_dict({}), RULES, sink)
    read_file(pcap, pipe.handler_for, pipe.capture_filters())
    pipe.finish()
    return tmp, out, cp, sink


def test_wire_text_one_json_line_per_record(wire_out):
    tmp, out, cp, sink = wire_out
    assert cp.returncode == 0, cp.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{k}.jsonl" for k in ("connections", "alerts", "transfers", "weird", "files")
    )
    for kind in ("connections", "transfers", "weird", "alerts"):
        raw = (out / f"{kind}.jsonl").read_bytes()
        raw.decode("ascii")  # escaped: no raw byte >= 0x80
        assert not any(b < 0x20 for b in raw.replace(b"\n", b"")), f"raw control byte in {kind}.jsonl"
        lines = raw.split(b"\n")
        assert lines[-1] == b""
        recs = [json.loads(line) for line in lines[:-1]]
        assert len(recs) == len(sink.records[kind]), kind  # one line per record, none split, none merged
        assert all(isinstance(r, dict) for r in recs)
    assert len(sink.records["connections"]) == 5 and len(sink.records["transfers"]) >= 4


def test_wire_text_is_kept_escaped_and_capped(wire_out):
    _, out, _, _ = wire_out
    recs = {
        k: [json.loads(x) for x in (out / f"{k}.jsonl").read_text().splitlines()]
        for k in ("connections", "transfers", "weird")
    }
    for kind, rs in recs.items():
        for r in rs:
            for path, s in _strings(r):
                assert len(s) <= 4 * 1024 + 16, (kind, path, len(s))  # capped (4 escapes per byte at most)
    ftp_user = [c["AccountName"] for c in recs["connections"] if c["RemotePort"] == 21]
    assert ftp_user and ftp_user[0].startswith("ev\x1b[31mil\x00us") and len(ftp_user[0]) <= 1024
    stor = next(t for t in recs["transfers"] if t["Protocol"] == "ftp" and t["Filename"].startswith("../../"))
    assert stor["FilenameTruncated"] is True and len(stor["Filename"]) <= 1024
    assert stor["Filename"].startswith("../../../../PWNED-stor\x1b]0;title\x07\x00")
    smb = next(t for t in recs["transfers"] if t["Protocol"] == "smb" and "FAKE" in t["Filename"])
    assert smb["FilenameTruncated"] is True and len(smb["Filename"]) <= 1024
    assert "\r\nFAKE\x00" in smb["Filename"]
    assert any(t["Protocol"] == "smb" and t["Filename"].startswith("PWNED-lone") for t in recs["transfers"])
    assert all(len(w["Detail"]) <= 512 for w in recs["weird"])


def test_wire_tftp_long_filename_flagged(wire_out):
    _, out, _, _ = wire_out
    tftp = [json.loads(x) for x in (out / "transfers.jsonl").read_text().splitlines()]
    tftp = [t for t in tftp if t["Protocol"] == "tftp"]
    assert len(tftp) == 1
    assert tftp[0]["Filename"].startswith("../PWNED-tftp\r\n\x1b[31m")
    assert len(tftp[0]["Filename"]) < len(TFTP_NAME)
    assert tftp[0]["FilenameTruncated"] is True


def test_wire_never_names_a_file(wire_out):
    tmp, out, _, _ = wire_out
    assert sorted(p.name for p in tmp.iterdir()) == ["out", "wire.pcap"]
    assert sorted(p.name for p in out.iterdir()) == [
        "alerts.jsonl",
        "connections.jsonl",
        "files.jsonl",
        "transfers.jsonl",
        "weird.jsonl",
    ]
    for base in (tmp, out, Path("/tmp"), REPO):
        assert not any("PWNED" in p.name for p in base.iterdir()), base


def test_replay_summary_escapes_wire_text(tmp_path):
    """Four FTP logins with a hostile USER to one public server: the alert's
    row in the printed hunt table carries that account."""
    pkts = []
    for i in range(4):
        c = Tcp(DEV, SRV, 41000 + i, 21, T0 + i).handshake()
        c.s2c(b"220 ready\r\n").c2s(b"USER " + FTP_USER + b"\r\n").s2c(b"331 pw\r\n").c2s(b"PASS x\r\n")
        c.s2c(b"230 ok\r\n")
        pkts += c.fin().pkts
    pcap = write_raw_pcap(tmp_path / "users.pcap", sorted(frames_of(pkts)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ip_type_overrides: {203.0.113.0/24: Public}\n")
    cp = _sensor("replay", str(pcap), "--config", str(cfg))
    assert cp.returncode == 0, cp.stderr
    assert b"1 alert(s)" in cp.stdout
    bad = sorted({chr(b) for b in cp.stdout if b < 0x20 and b not in (0x0A,)})
    assert not bad, f"raw control characters from the wire on the terminal: {bad!r}"
    assert max(len(line) for line in cp.stdout.split(b"\n")) < 400


# --------------------------------------------------------------------------
# a TFTP request flood: what each request flow keeps while it lives
# --------------------------------------------------------------------------

# the interpreter, the imports and the replay's fixed tables: a replay of a
# 2,000-request flood peaks at ~37 MB (fuzz/tftp_flood.py --requests 2000)
REPLAY_BASE = 40 * 1000 * 1000


def test_tftp_request_flow_memory_fits_the_rss_bound():
    """A request flood holds up to max_flows request flows, each with its
    session, analyzer and (up to the expectation bound) an expectation:
    with the table of expectations already full, each more request must
    cost at most its share of the RSS bound, (RSS_BOUND - REPLAY_BASE) /
    max_flows (1,600 bytes with the defaults), measured with tracemalloc."""
    import gc
    import tracemalloc

    from sensor.engine.expect import MAX_EXPECTATIONS
    from sensor.engine.flows import UdpSide
    from sensor.pipeline import Pipeline

    class Null:
        def emit(self, kind, rec):
            pass

        def close(self):
            pass

    pipe = Pipeline(config_from_dict(TFTP_CFG), RULES, Null())
    h = pipe.handler_for(1)
    frames = list(flood_frames(MAX_EXPECTATIONS + 10_000, t0_us=int(T0 * 1e6)))
    gc.collect()
    tracemalloc.start()  # (from the start: the expectations dropped later were allocated then)
    try:
        for ts, f in frames[:MAX_EXPECTATIONS]:
            h(ts, f)
        assert pipe.app.expect.count == MAX_EXPECTATIONS
        gc.collect()
        before = tracemalloc.take_snapshot()
        for ts, f in frames[MAX_EXPECTATIONS:]:
            h(ts, f)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    flows = list(pipe.flows.flows.values())
    assert len(flows) == len(frames) and pipe.app.expect.count == MAX_EXPECTATIONS
    assert all(f.ctx.session is not None and f.ctx.analyzer is not None for f in flows)  # full request flows
    assert type(flows[0].o) is UdpSide and type(flows[0].r) is UdpSide
    # a few hosts: one copy of each address and of its text for all their flows
    assert len({id(f.orig_b) for f in flows}) == 4 and len({id(f.orig_h) for f in flows}) == 4
    assert len({id(f.key[3]) for f in flows if f.key[3] == f.resp_b}) == 1
    per_flow = sum(s.size_diff for s in after.compare_to(before, "filename")) / 10_000
    assert per_flow <= (RSS_BOUND - REPLAY_BASE) / DEFAULT_MAX_FLOWS, f"{per_flow:.0f} bytes per request flow"


def _tftp_records(frames):
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    sink = MemorySink()
    pipe = Pipeline(config_from_dict(TFTP_CFG), RULES, sink)
    h = pipe.handler_for(1)
    for ts, f in frames:
        h(ts, f)
    pipe.finish()
    return sink.records


def test_tftp_request_fields_are_the_last_requests():
    """The request flow's record carries TftpOp/TftpFilename/TftpMode of its
    last request, and TftpOptions of the last request that had options, in
    that order (set when the flow ends, from the request datagram the
    analyzer keeps; as when they were set at each request)."""
    from fuzz.scan import udp_frame
    from fuzz.tftp_flood import SERVER, client

    t = int(T0 * 1e6)
    a = b"\x00\x01first.bin\x00OCTET\x00blksize\x001024\x00"
    b = b"\x00\x02second.cfg\x00netascii\x00"
    cli = client(0)
    frames = [
        (t, udp_frame(cli, SERVER, 40000, 69, a, 1)),
        (t + 2_000_000, udp_frame(cli, SERVER, 40000, 69, a, 2)),  # retransmitted
        (t + 3_000_000, udp_frame(cli, SERVER, 40000, 69, b, 3)),  # another request, unanswered: same flow
        # a request answered on port 69 itself (an ERROR): its transfer names the request's file
        (t + 4_000_000, udp_frame(cli, SERVER, 40001, 69, a, 4)),
        (t + 4_000_100, udp_frame(SERVER, cli, 69, 40001, b"\x00\x05\x00\x01Not found\x00", 5)),
    ]
    recs = _tftp_records(frames)
    by_port = {c["LocalPort"]: c for c in recs["connections"]}
    assert by_port[40000]["AdditionalFields"] == {
        "TftpOp": "write",
        "TftpFilename": "second.cfg",
        "TftpMode": "netascii",
        "TftpOptions": {"blksize": "1024"},
    }
    assert list(by_port[40000]["AdditionalFields"]) == ["TftpOp", "TftpFilename", "TftpMode", "TftpOptions"]
    assert by_port[40001]["AdditionalFields"]["TftpFilename"] == "first.bin"
    assert by_port[40001]["AdditionalFields"]["TftpMode"] == "octet"
    (tr,) = recs["transfers"]
    assert (tr["Filename"], tr["ErrorCode"], tr["Complete"], tr["ControlUid"]) == (
        "first.bin",
        1,
        False,
        by_port[40001]["Uid"],
    )
