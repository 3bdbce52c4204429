"""The T1071.002 hunt on crafted captures: the threshold, its window, what counts."""

from tests.support.craft import Link, tcp_midstream, tcp_refused, tcp_session, tcp_unanswered, udp_exchange

DEV = "10.1.1.5"
FTP_SRV = "93.184.216.34"
T0 = 1_700_000_000.0
DAY = 86400.0


def ftp(t: float, cport: int, server: str = FTP_SRV, port: int = 21, client: str = DEV, link=None):
    return tcp_session(client, server, cport, port, t, c2s=b"USER anonymous\r\n", s2c=b"220 hi\r\n", link=link)


def test_three_connections_raise_no_alert(replay):
    r = replay(ftp(T0, 40000) + ftp(T0 + 60, 40001) + ftp(T0 + 120, 40002))
    assert [c["ActionType"] for c in r.connections] == ["ConnectionSuccess"] * 3
    assert r.alerts == []


def test_fourth_within_24h_raises_exactly_one_alert(replay):
    pkts = ftp(T0, 40000) + ftp(T0 + 60, 40001) + ftp(T0 + 120, 40002) + ftp(T0 + DAY - 1, 40003)
    r = replay(pkts)
    assert len(r.alerts) == 1
    a = r.alerts[0]
    assert a["ConnectionCount"] == 4
    assert a["RemoteIP"] == FTP_SRV and a["RemotePort"] == 21 and a["DeviceName"] == DEV
    assert a["Protocol"] == "FTP/FTPS"
    assert a["BytesSent"] == 4 * len(b"USER anonymous\r\n")
    assert a["BytesReceived"] == 4 * len(b"220 hi\r\n")
    assert a["FirstSeen"] == "2023-11-14T22:13:20.000000Z"
    assert a["LastSeen"] == "2023-11-15T22:13:19.000000Z"
    assert len(a["Uids"]) == 4 and set(a["Uids"]) == {c["Uid"] for c in r.connections}


def test_fifth_connection_does_not_alert_again_but_joins_the_hunt_row(replay):
    pkts = sum((ftp(T0 + i * 60, 40000 + i) for i in range(5)), [])
    r = replay(pkts)
    assert len(r.alerts) == 1 and r.alerts[0]["ConnectionCount"] == 4
    assert len(r.hunt) == 1 and r.hunt[0]["ConnectionCount"] == 5
    assert r.pipe.detector.stats.suppressed == 1


def test_fourth_at_24h_plus_1s_is_outside_the_window(replay):
    pkts = ftp(T0, 40000) + ftp(T0 + 60, 40001) + ftp(T0 + 120, 40002) + ftp(T0 + DAY + 1, 40003)
    r = replay(pkts)
    assert len(r.connections) == 4
    assert r.alerts == []


def test_fourth_exactly_at_the_window_edge_counts(replay):
    # window is [t-24h, t]: the first event at exactly t-24h is inside
    pkts = ftp(T0, 40000) + ftp(T0 + 1, 40001) + ftp(T0 + 2, 40002) + ftp(T0 + DAY, 40003)
    assert len(replay(pkts).alerts) == 1


def test_failed_and_midstream_connections_never_count(replay):
    pkts = []
    for i in range(5):
        pkts += tcp_refused(DEV, FTP_SRV, 41000 + i, 21, T0 + i * 10)
        pkts += tcp_unanswered(DEV, FTP_SRV, 42000 + i, 21, T0 + i * 10 + 3)
        pkts += tcp_midstream(DEV, FTP_SRV, 43000 + i, 21, T0 + i * 10 + 7)
    r = replay(pkts)
    acts = sorted(c["ActionType"] for c in r.connections)
    assert acts == ["ConnectionFailed"] * 10 + ["ConnectionFound"] * 5
    states = sorted(c["ConnState"] for c in r.connections)
    assert states == ["OTH"] * 5 + ["REJ"] * 5 + ["S0"] * 5
    assert r.alerts == []
    # ... and three successes on top of them still do not alert
    r2 = replay(pkts + ftp(T0 + 100, 40000) + ftp(T0 + 101, 40001) + ftp(T0 + 102, 40002))
    assert r2.alerts == []


def test_keys_never_mix(replay):
    pkts = []
    # 3 each to two servers, 3 each on two ports, 3 each from two devices: no key has 4
    for i in range(3):
        pkts += ftp(T0 + i, 40000 + i, server="93.184.216.34")
        pkts += ftp(T0 + i, 40100 + i, server="93.184.216.35")
        pkts += ftp(T0 + i, 40200 + i, server="93.184.216.36", port=21)
        pkts += ftp(T0 + i, 40300 + i, server="93.184.216.36", port=990)
        pkts += ftp(T0 + i, 40400 + i, server="93.184.216.37", client="10.1.1.6")
        pkts += ftp(T0 + i, 40500 + i, server="93.184.216.37", client="10.1.1.7")
    r = replay(pkts)
    assert len(r.connections) == 18
    assert r.alerts == []
    # one more to one key alerts for that key only
    r = replay(pkts + ftp(T0 + 10, 40010, server="93.184.216.35"))
    assert [(a["RemoteIP"], a["RemotePort"], a["ConnectionCount"]) for a in r.alerts] == [("93.184.216.35", 21, 4)]


def test_private_and_inbound_connections_do_not_count(replay):
    pkts = []
    for i in range(5):
        pkts += ftp(T0 + i, 40000 + i, server="10.9.9.9")  # private remote
        pkts += tcp_session("93.184.216.40", DEV, 50000 + i, 21, T0 + 10 + i)  # inbound
    r = replay(pkts)
    acts = sorted(c["ActionType"] for c in r.connections)
    assert acts == ["ConnectionSuccess"] * 5 + ["InboundConnectionAccepted"] * 5
    inbound = [c for c in r.connections if c["ActionType"] == "InboundConnectionAccepted"]
    assert all(c["LocalIP"] == DEV and c["LocalPort"] == 21 and c["RemoteIP"] == "93.184.216.40" for c in inbound)
    assert r.alerts == []


def test_udp_tftp_answered_counts_unanswered_fails(replay):
    rrq = b"\x00\x01file.bin\x00octet\x00"
    pkts = []
    for i in range(4):
        pkts += udp_exchange(
            DEV, "93.184.216.50", 50000 + i, 69, T0 + i, [(True, rrq), (False, b"\x00\x05\x00\x01not found\x00")]
        )
        pkts += udp_exchange(DEV, "93.184.216.51", 51000 + i, 69, T0 + i, [(True, rrq)])
    r = replay(pkts)
    by_ip = {}
    for c in r.connections:
        by_ip.setdefault(c["RemoteIP"], []).append(c["ActionType"])
    assert by_ip == {"93.184.216.50": ["ConnectionSuccess"] * 4, "93.184.216.51": ["ConnectionFailed"] * 4}
    assert [(a["RemoteIP"], a["Protocol"], a["ConnectionCount"]) for a in r.alerts] == [("93.184.216.50", "TFTP", 4)]


def test_vlan_qinq_ipv6_counted_like_untagged_ipv4(replay):
    base = replay(sum((ftp(T0 + i, 40000 + i) for i in range(4)), []))
    for link in (Link(vlan=100), Link(vlan=200, outer_vlan=300)):
        r = replay(sum((ftp(T0 + i, 40000 + i, link=link) for i in range(4)), []))
        assert len(r.alerts) == 1

        def strip(c):
            return {k: v for k, v in c.items() if k not in ("Uid", "Vlan")}

        assert [strip(c) for c in r.connections] == [strip(c) for c in base.connections]
        assert {c["Vlan"] for c in r.connections} == {link.vlan if link.outer_vlan is None else link.outer_vlan}
    v6 = replay(sum((ftp(T0 + i, 40000 + i, server="2606:2800:220:1::1", client="fd00::5") for i in range(4)), []))
    assert len(v6.alerts) == 1
    for a, b in zip(v6.connections, base.connections):
        for k in (
            "ActionType",
            "SentBytes",
            "ReceivedBytes",
            "SentPackets",
            "ReceivedPackets",
            "ConnState",
            "History",
            "RemoteIPType",
            "LocalIPType",
            "RemotePort",
        ):
            assert a[k] == b[k], k
    assert v6.alerts[0]["RemoteIP"] == "2606:2800:220:1::1"
