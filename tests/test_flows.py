"""Flow tracking: byte accounting in sequence space, state, originator, link types."""

import pytest

from sensor.core.config import config_from_dict
from sensor.engine.decode import Decoder, Packet
from sensor.engine.flows import FlowTable
from tests.support.craft import Tcp, relink, tcp_session, udp_exchange

DEV, SRV = "10.1.1.5", "93.184.216.34"
T0 = 1_700_000_000.0


def one(r):
    assert len(r.connections) == 1, r.connections
    return r.connections[0]


def test_retransmissions_counted_once(replay):
    c = Tcp(DEV, SRV, 40000, 21, T0).handshake()
    data = b"STOR secret.zip\r\n"
    c.c2s(data).retransmit_last(True, data).retransmit_last(True, data)
    c.s2c(b"150 ok\r\n").retransmit_last(False, b"150 ok\r\n")
    r = replay(c.fin().pkts)
    rec = one(r)
    assert rec["SentBytes"] == len(data) and rec["ReceivedBytes"] == 8
    assert rec["SentPackets"] == 1 + 1 + 3 + 1 + 1 + 1  # SYN, ACK, data x3, ACK of the reply, FIN, last ACK
    assert "T" in rec["History"] and "t" in rec["History"]


def test_sequence_wrap_does_not_inflate(replay):
    # ISN just below 2^32: the payload crosses the wrap
    c = Tcp(DEV, SRV, 40000, 445, T0, isn_c=0xFFFFFF00, isn_s=0xFFFFFFF0).handshake()
    up = bytes(range(256)) * 20  # 5120 bytes, wraps after 255
    c.c2s(up).s2c(b"z" * 3000)
    c.retransmit_last(True, up[4200:])  # the last segment again, after the wrap
    rec = one(replay(c.fin().pkts))
    assert rec["SentBytes"] == 5120
    assert rec["ReceivedBytes"] == 3000
    assert rec["ConnState"] == "SF"


def test_out_of_order_and_gap_accounting(replay):
    c = Tcp(DEV, SRV, 40000, 21, T0).handshake()
    seq0 = c.cseq
    c._emit(True, "PA", b"B" * 100, seq=seq0 + 100)  # second segment first
    c._emit(True, "PA", b"A" * 100, seq=seq0)  # then the first
    c.cseq = seq0 + 200
    c._emit(True, "PA", b"D" * 100, seq=seq0 + 300)  # a gap of 100 bytes (capture loss)
    c.cseq = seq0 + 400
    rec = one(replay(c.fin().pkts))
    assert rec["SentBytes"] == 400  # Zeek counts the missed bytes in orig_bytes too
    assert rec["ReceivedBytes"] == 0


def test_snaplen_cut_packets_count_bytes_from_sequence_numbers(replay, tmp_path):
    from tests.support.craft import write_raw_pcap

    pkts = tcp_session(DEV, SRV, 40000, 445, T0, c2s=b"W" * 1000, s2c=b"R" * 500)
    path = write_raw_pcap(
        tmp_path / "snap.pcap", [(float(p.time), bytes(p)[:64], len(bytes(p))) for p in pkts], snaplen=64
    )
    r = replay(path)
    rec = one(r)
    assert rec["SentBytes"] == 1000 and rec["ReceivedBytes"] == 500
    assert r.pipe.decode_stats.truncated >= 2


def test_originator_is_syn_sender_even_if_synack_first_in_capture(replay):
    pkts = tcp_session(DEV, SRV, 40000, 21, T0, c2s=b"a" * 10, s2c=b"b" * 20)
    pkts[0].time, pkts[1].time = pkts[1].time, pkts[0].time  # SYN-ACK appears first
    rec = one(replay(pkts))
    assert rec["LocalIP"] == DEV and rec["RemotePort"] == 21
    assert rec["SentBytes"] == 10 and rec["ReceivedBytes"] == 20
    assert rec["ActionType"] == "ConnectionSuccess"


def test_midstream_server_first_is_flipped():
    cfg = config_from_dict({})
    ended = []
    ft = FlowTable(cfg, ended.append)
    # first packet seen: server:21 -> client:40000 data (no SYN)
    p = Packet(1, bytes([93, 184, 216, 34]), bytes([10, 1, 1, 5]), 6, 21, 40000, 0x18, 100, 5, 10, b"x" * 10, 0, False)
    f = ft.process(p)
    assert f.orig_h == "10.1.1.5" and f.resp_p == 21 and f.history == "^d"
    ft.flush()
    assert ended[0].conn_state == "OTH"


@pytest.mark.parametrize("kind", ["sll", "sll2", "raw", "null"])
def test_link_types_give_the_same_records(replay, kind):
    pkts = tcp_session(DEV, SRV, 40000, 21, T0, c2s=b"USER x\r\n", s2c=b"331 x\r\n")
    base = one(replay(pkts))
    q, lt = relink(pkts, kind)
    rec = one(replay(q, linktype=lt))
    for k in ("ActionType", "SentBytes", "ReceivedBytes", "SentPackets", "ReceivedPackets", "History", "CommunityId"):
        assert rec[k] == base[k], (kind, k)


def test_timeouts_end_flows_on_packet_time(replay):
    # an S0 attempt, then an hour of unrelated target traffic: the attempt ends
    # by timeout (not at flush) and its record comes first
    from tests.support.craft import tcp_unanswered

    pkts = tcp_unanswered(DEV, SRV, 40000, 21, T0, tries=1)
    pkts += tcp_session(DEV, "93.184.216.99", 40001, 445, T0 + 3600)
    r = replay(pkts)
    assert [c["ConnState"] for c in r.connections] == ["S0", "SF"]
    assert r.pipe.flows.stats.expired == 1


def test_max_flows_bound_evicts_and_counts(replay):
    pkts = []
    for i in range(50):
        c = Tcp(DEV, SRV, 30000 + i, 445, T0 + i * 0.01)
        c._emit(True, "S")
        pkts += c.pkts
    r = replay(pkts, config={"limits": {"max_flows": 10}, "attempt_records": "each"})
    st = r.pipe.flows.stats
    assert st.active_max == 10
    assert st.evicted == 40
    assert len(r.connections) == 50  # evicted flows are still reported
    # aggregated (the default): those that ended unanswered in emergency mode are counted by originator and port
    r = replay(pkts, config={"limits": {"max_flows": 10}})
    (g,) = [w for w in r.weird if w["Name"] == "connection_attempts"]
    assert r.pipe.flows.stats.evicted == 40 and len(r.connections) + g["Attempts"] == 50
    assert (g["OriginatorIP"], g["ResponderPort"], g["LastResponderIP"]) == (DEV, 445, SRV)


def test_non_target_traffic_is_not_tracked(replay):
    pkts = tcp_session(DEV, SRV, 40000, 443, T0, c2s=b"x" * 100)
    pkts += udp_exchange(DEV, "8.8.8.8", 5353, 53, T0, [(True, b"q"), (False, b"r")])
    r = replay(pkts)  # the capture filter drops them in libpcap
    assert r.connections == [] and r.pipe.decode_stats.packets == 0
    r = replay(pkts, capture_filter=False)  # without it, the decoder's inline check does
    assert r.connections == [] and r.pipe.decode_stats.target == 0
    assert r.pipe.decode_stats.packets == len(pkts)


def test_decoder_never_raises_on_garbage():
    import random

    rnd = random.Random(7)
    weird = []
    for lt in (0, 1, 12, 101, 108, 113, 228, 229, 276, 9999):
        d = Decoder(lt, {21, 445}, on_weird=lambda ts, n, det: weird.append(n))
        base = bytes(tcp_session(DEV, SRV, 40000, 21, T0)[0])
        for i in range(3000):
            b = bytearray(base[: rnd.randrange(0, len(base) + 1)])
            for _ in range(rnd.randrange(0, 4)):
                if b:
                    b[rnd.randrange(len(b))] = rnd.randrange(256)
            d.decode(i, bytes(b))
        assert d.stats.packets == 3000
    assert weird  # malformed frames were reported, by name


def test_ftp_on_a_non_standard_port_is_recognised_by_its_banner(replay):
    from tests.support.craft import Tcp

    c = Tcp(DEV, SRV, 40000, 2121, T0).handshake()
    c.s2c(b"220 (vsFTPd 3.0.3)\r\n").c2s(b"USER exfil\r\n").s2c(b"331 Please specify the password.\r\n")
    c.c2s(b"PASS x\r\n").s2c(b"230 Login successful.\r\n").c2s(b"QUIT\r\n").s2c(b"221 Goodbye.\r\n")
    other = Tcp(DEV, SRV, 40001, 2122, T0).handshake().s2c(b"HTTP/1.1 200 OK\r\n").fin().pkts
    r = replay(c.fin().pkts + other)
    assert len(r.connections) == 1
    rec = r.connections[0]
    assert (rec["AppProtocol"], rec["AppUser"], rec["RemotePort"]) == ("ftp", "exfil", 2121)
    assert rec["AdditionalFields"]["NonStandardPort"] is True
    assert rec["ActionType"] == "ConnectionFound"  # picked up at the banner, the handshake was filtered
    assert rec["ReceivedBytes"] == sum(
        len(x)
        for x in (
            b"220 (vsFTPd 3.0.3)\r\n",
            b"331 Please specify the password.\r\n",
            b"230 Login successful.\r\n",
            b"221 Goodbye.\r\n",
        )
    )
    assert not r.weird


def test_ftp_banner_on_a_low_port_is_followed_past_the_capture_filter(replay):
    # FTP on 443: the filter admits the banner; the port then joins the filter
    from tests.support.craft import Tcp

    c = Tcp(DEV, SRV, 40000, 443, T0).handshake()
    c.s2c(b"220 ready\r\n").c2s(b"USER exfil\r\n").s2c(b"331 Password required\r\n")
    c.c2s(b"PASS x\r\n").s2c(b"230 Logged in\r\n").c2s(b"STOR loot.7z\r\n").s2c(b"150 Ok\r\n")
    r = replay(c.fin().pkts)
    (rec,) = r.connections
    assert (rec["AppProtocol"], rec["AppUser"], rec["RemotePort"]) == ("ftp", "exfil", 443)
    assert rec["SentBytes"] == len(b"USER exfil\r\nPASS x\r\nSTOR loot.7z\r\n")
    assert "F" in rec["History"] and "f" in rec["History"]  # the FINs after the banner were seen


def test_emergency_mode_shortens_timeouts_when_the_table_is_nearly_full(replay):
    # 95 half-open attempts in a 100-flow table, spread over 20 s: the table
    # reaches 90 %, emergency timeouts (5 s for attempts) expire the old ones
    pkts = []
    for i in range(95):
        c = Tcp(DEV, SRV, 30000 + i, 445, T0 + i * 0.2)
        c._emit(True, "S")
        pkts += c.pkts
    r = replay(pkts, config={"limits": {"max_flows": 100}, "attempt_records": "each"})
    st = r.pipe.flows.stats
    assert st.emergency_entered == 1
    assert st.expired > 0 and st.evicted == 0
    assert len(r.connections) == 95
    r = replay(pkts, config={"limits": {"max_flows": 1000}})  # far from full: no emergency
    assert r.pipe.flows.stats.emergency_entered == 0 and r.pipe.flows.stats.expired == 0


def test_reused_tcp_port_starts_a_new_connection(replay):
    """A client port that comes round again while the old connection waits for
    its tcp_closed timeout: a SYN with a new ISN after FIN both ways (or RST)
    is a new connection (two records), as in Zeek; a SYN of the same ISN is not."""
    a = tcp_session(DEV, SRV, 40000, 21, T0, s2c=b"220 a\r\n", c2s=b"USER a\r\n", isn_c=1000)
    b = tcp_session(DEV, SRV, 40000, 21, T0 + 0.3, s2c=b"220 b\r\n", c2s=b"USER bb\r\n", isn_c=900000)
    r = replay(a + b)
    recs = sorted(r.connections, key=lambda c: c["FirstSeen"])
    assert len(recs) == 2, recs
    assert [c["ConnState"] for c in recs] == ["SF", "SF"]
    assert [c["SentBytes"] for c in recs] == [8, 9] and [c["AppUser"] for c in recs] == ["a", "bb"]
    assert recs[0]["Uid"] != recs[1]["Uid"]
    assert r.pipe.flows.stats.reused == 1
    c = Tcp(DEV, SRV, 40001, 21, T0)
    c._emit(True, "S")
    c._emit(False, "RA", seq=0)
    c._emit(True, "S")  # the same attempt's SYN again: not a new connection
    assert len(replay(c.pkts).connections) == 1


def test_reused_tftp_client_port_starts_a_new_request(replay):
    """Two TFTP requests from one client port (two tftp runs whose ports
    collided): each its own request record with its own transfer; a request
    retransmitted before any answer stays one."""
    rrq = b"\x00\x01a.txt\x00octet\x00"
    wrq = b"\x00\x02b.txt\x00octet\x00"
    pk = (
        udp_exchange(DEV, SRV, 40000, 69, T0, [(True, rrq)])
        + udp_exchange(
            DEV, SRV, 40000, 50000, T0 + 0.01, [(False, b"\x00\x03\x00\x01" + b"x" * 10), (True, b"\x00\x04\x00\x01")]
        )
        + udp_exchange(DEV, SRV, 40000, 69, T0 + 0.3, [(True, wrq)])
        + udp_exchange(
            DEV,
            SRV,
            40000,
            50001,
            T0 + 0.31,
            [(False, b"\x00\x04\x00\x00"), (True, b"\x00\x03\x00\x01" + b"y" * 7), (False, b"\x00\x04\x00\x01")],
        )
    )
    r = replay(pk)
    req = sorted((c for c in r.connections if c["RemotePort"] == 69), key=lambda c: c["FirstSeen"])
    assert len(req) == 2, r.connections
    assert [c["AdditionalFields"]["TftpFilename"] for c in req] == ["a.txt", "b.txt"]
    assert [c["ActionType"] for c in req] == ["ConnectionSuccess"] * 2
    xfer = {c["RemotePort"]: c for c in r.connections if c["RemotePort"] in (50000, 50001)}
    assert xfer[50000]["ParentUid"] == req[0]["Uid"] and xfer[50001]["ParentUid"] == req[1]["Uid"]
    assert sorted((t["Filename"], t["Bytes"]) for t in r.transfers) == [("a.txt", 10), ("b.txt", 7)]
    again = udp_exchange(DEV, SRV, 40002, 69, T0, [(True, rrq), (True, rrq)], step=1.0)
    assert len(replay(again).connections) == 1


def _syn(src: bytes, sport: int, ts: int, dport: int = 21) -> Packet:
    return Packet(ts, src, bytes([93, 184, 216, 34]), 6, sport, dport, 0x02, 1000, 0, 0, b"", 0, False)


def _udp(src: bytes, sport: int, ts: int) -> Packet:
    return Packet(ts, src, bytes([93, 184, 216, 34]), 17, sport, 69, 0, 0, 0, 4, b"\x00\x01x\x00", 0, False)


def test_expiry_finds_every_idle_flow_behind_a_requeued_one():
    # A (UDP, timeout 60 s) starts at 0 s and is active once more at 2 s; C
    # starts at 30 s. The scan at 60 s requeues A with its last activity
    # (2 s). In a queue kept in insertion order A then sat behind C and waited
    # for C's own expiry (90 s); the heap ends A at the first scan at or past
    # 62 s, and C at 90 s.
    cfg = config_from_dict({"timeouts": {"udp": 60}})
    ended = {}
    ft = FlowTable(cfg, lambda f: ended.setdefault(f.uid, ft.now))
    a, c, d = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
    fa = ft.process(_udp(a, 1000, 0))
    ft.process(_udp(a, 1000, 2_000_000))
    fc = ft.process(_udp(c, 2000, 30_000_000))
    for t in range(60, 130):  # another flow keeps the clock (and the scans) going
        ft.process(_udp(d, 3000, t * 1_000_000))
    assert ended[fa.uid] == 62_000_000
    assert ended[fc.uid] == 90_000_000


def test_a_flows_uid_does_not_depend_on_other_flows():
    cfg = config_from_dict({})
    alone = FlowTable(cfg, lambda f: None)
    crowd = FlowTable(cfg, lambda f: None)
    for i in range(100):
        crowd.process(_syn(bytes([10, 0, 1, i]), 5000 + i, 1_000 + i))
    p = _syn(bytes([10, 0, 0, 7]), 40000, 5_000)
    assert alone.process(p).uid == crowd.process(p).uid
    # the same 5-tuple again in the same microsecond (the port reused after a
    # RST): a new flow, and a uid of its own
    first = alone.flows[next(iter(alone.flows))]
    alone.process(Packet(5_000, p.dst, p.src, 6, 21, 40000, 0x04, 0, 0, 0, b"", 0, False))
    again = alone.process(Packet(5_000, p.src, p.dst, 6, 40000, 21, 0x02, 7777, 0, 0, b"", 0, False))
    assert again is not first and again.first_ts == first.first_ts and again.uid != first.uid


def test_timeout_queues_hold_at_most_twice_the_live_flows():
    # 20,000 short connections: each leaves dead entries (created as an
    # attempt, established, closed) that must not pile up in the heaps
    cfg = config_from_dict({})
    ft = FlowTable(cfg, lambda f: None)
    src, dst = bytes([10, 0, 0, 1]), bytes([93, 184, 216, 34])
    worst = 0
    for i in range(20_000):
        ts = i * 2_000
        sp = 1024 + i % 60000
        for flags, fwd in ((0x02, True), (0x12, False), (0x10, True), (0x11, True), (0x11, False), (0x10, True)):
            s, d, a, b = (src, dst, sp, 445) if fwd else (dst, src, 445, sp)
            ft.process(Packet(ts, s, d, 6, a, b, flags, 1000 if fwd else 5000, 0, 0, b"", 0, False))
            ts += 10
        live = len(ft.flows)
        heap = sum(len(q) for q in ft.queues)
        worst = max(worst, heap - 2 * live)
        assert heap <= 2 * live + 4 * 65, (i, heap, live)
    assert ft.queued() == len(ft.flows) == sum(ft.qlive)
