"""`run --workers N`: the share of host pairs each worker's capture filter keeps
(sensor/engine/bpf.py), checked on libpcap's own compiled filters, and the
supervisor's plain-data parts (sensor/workers.py): its message framing and
the merged metrics. The live behaviour: tests/test_workers_live.py."""

from __future__ import annotations

import os
import random
import socket

import pcapy
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from sensor.core.config import ConfigError, Output, config_from_dict, parse_workers
from sensor.engine.bpf import capture_filters, share_expr, share_of
from sensor.io import metrics
from sensor.io.live import IfaceStats
from sensor.workers import (
    RECORDS,
    Channel,
    ChannelClosed,
    merge_snapshots,
    pack_records,
    resolve_workers,
    unpack_records,
)

PORTS = [20, 21, 69, 139, 445, 989, 990]
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"  # set: scapy would look the destination up


def compiled(n: int, alternative: int) -> list:
    """Each worker's capture filter (one of the alternatives capture_filters offers) for Ethernet."""
    return [
        pcapy.compile(pcapy.DLT_EN10MB, 65535, capture_filters(PORTS, share_expr(k, n))[alternative], 1, 0xFFFFFFFF)
        for k in range(n)
    ]


def shares(progs: list, frame: bytes) -> list[int]:
    return [k for k, p in enumerate(progs) if p.filter(frame) > 0]


def packed(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)


def ip_layer(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def random_pairs(rng: random.Random, count: int) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        if i % 3 == 2:
            a = str(socket.inet_ntop(socket.AF_INET6, rng.randbytes(16)))
            b = str(socket.inet_ntop(socket.AF_INET6, rng.randbytes(16)))
        else:
            a = socket.inet_ntoa(rng.randbytes(4))
            b = socket.inet_ntoa(rng.randbytes(4))
        out.append((a, b))
    # the sums' corner cases: equal addresses, 32-bit overflow, all zero
    out += [("10.0.0.1", "10.0.0.1"), ("255.255.255.255", "255.255.255.254"), ("0.0.0.0", "0.0.0.0")]
    out += [("ffff:ffff::ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), ("::", "::1")]
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 7])
@pytest.mark.parametrize("alternative", [0, 1, 2])  # with VLAN alternatives, without, the share alone
def test_every_host_pair_lands_in_exactly_one_share_both_directions(n, alternative):
    progs = compiled(n, alternative)
    rng = random.Random(n * 10 + alternative)
    seen = set()
    for a, b in random_pairs(rng, 300):
        want = share_of(packed(a), packed(b), n)
        assert want == share_of(packed(b), packed(a), n)
        for src, dst, sport, dport in ((a, b, 40000, 445), (b, a, 445, 40000)):
            frame = bytes(Ether(src=MAC_A, dst=MAC_B) / ip_layer(src, dst) / TCP(sport=sport, dport=dport, flags="S"))
            assert shares(progs, frame) == [want], (a, b, src, dst, n)
        seen.add(want)
    assert seen == set(range(n))  # every worker gets some of 300 random pairs


@pytest.mark.parametrize("n", [2, 3])
def test_vlan_tagged_frames_land_in_their_pairs_share(n):
    """802.1Q and QinQ: the share is computed on the inner IP header."""
    progs = compiled(n, 0)
    for a, b in random_pairs(random.Random(5), 60):
        want = share_of(packed(a), packed(b), n)
        for tags in ([Dot1Q(vlan=10)], [Dot1Q(vlan=10), Dot1Q(vlan=20)]):
            pkt = Ether(src=MAC_A, dst=MAC_B)
            for t in tags:
                pkt = pkt / t
            for src, dst in ((a, b), (b, a)):
                frame = bytes(pkt / ip_layer(src, dst) / TCP(sport=445, dport=50000, flags="A"))
                assert shares(progs, frame) == [want], (a, b, len(tags))


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize(("client", "server"), [("192.0.2.10", "198.51.100.7"), ("2001:db8::10", "2001:db8:1::7")])
def test_data_channels_and_tftp_transfers_stay_with_their_session(n, client, server):
    """An FTP control connection, its active (server port 20) and passive
    (two ephemeral ports) data channels, a TFTP request and its transfer from
    the server's new port: one host pair, so one worker takes them all -- and
    its filter does take each of them."""
    progs = compiled(n, 0)
    want = share_of(packed(client), packed(server), n)
    c, s = client, server
    packets = [
        ip_layer(c, s) / TCP(sport=51000, dport=21, flags="S"),  # control
        ip_layer(s, c) / TCP(sport=21, dport=51000, flags="SA"),
        ip_layer(s, c) / TCP(sport=20, dport=52000, flags="S"),  # active data (PORT)
        ip_layer(c, s) / TCP(sport=52000, dport=20, flags="SA"),
        ip_layer(c, s) / TCP(sport=53000, dport=40123, flags="S"),  # passive data (PASV)
        ip_layer(s, c) / TCP(sport=40123, dport=53000, flags="SA"),
        ip_layer(c, s) / UDP(sport=54000, dport=69) / b"\x00\x01f\x00octet\x00",  # TFTP RRQ
        ip_layer(s, c) / UDP(sport=41000, dport=54000) / b"\x00\x03\x00\x01data",  # the transfer
        ip_layer(c, s) / UDP(sport=54000, dport=41000) / b"\x00\x04\x00\x01",
    ]
    for p in packets:
        assert shares(progs, bytes(Ether(src=MAC_A, dst=MAC_B) / p)) == [want], p.summary()


def test_frames_of_no_ip_version_go_to_no_worker():
    for alternative in (0, 1, 2):
        progs = compiled(2, alternative)
        assert shares(progs, bytes(Ether(src=MAC_A, dst=MAC_B) / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))) == []


def test_share_expr_refuses_a_share_outside_the_workers():
    with pytest.raises(ValueError):
        share_expr(2, 2)


def test_the_workers_option():
    assert config_from_dict({"workers": 3}).workers == 3
    assert config_from_dict({"workers": "auto"}).workers == "auto"
    assert config_from_dict({}).workers == 1
    for bad in (0, 65, "two", 1.5, True):
        with pytest.raises(ConfigError, match="workers"):
            config_from_dict({"workers": bad})
    assert parse_workers("command line", "--workers", "2") == 2
    assert resolve_workers(3) == 3
    assert resolve_workers("auto") == max(1, min(4, len(os.sched_getaffinity(0))))


def test_records_cross_the_channel_whole_and_in_order():
    entries = [
        (("connections", "2026-12-06T07:00:00.000000Z", 6), b'{"a":1}\n'),
        (("alerts", None, 3), b'{"b":"' + b"x" * 70000 + b'"}\n'),
        (("weird", "", 5), b"{}\n"),
    ]
    got = unpack_records(pack_records(entries))
    assert got == [(entries[0][0], entries[0][1]), (("alerts", None, 3), entries[1][1]), (("weird", None, 5), b"{}\n")]
    with pytest.raises(ChannelClosed):
        unpack_records(pack_records(entries)[:-1])


def test_channel_moves_messages_and_bounds_what_waits():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ca, cb = Channel(a, max_pending=1000), Channel(b)
    assert ca.send(RECORDS, b"x" * 600)
    assert not ca.send(RECORDS, b"y" * 600)  # over the bound: refused, the caller counts it
    assert ca.flush(5)
    msgs = []
    while not msgs:
        msgs = cb.read_some()
    assert msgs == [(RECORDS, b"x" * 600)]
    a.close()
    assert cb.read_some() == [] and cb.closed


def _worker_snapshot(received: int, conns: int, alerts: int, emergency: int) -> dict:
    return metrics.collect(
        pipe_stats={
            "decoder": {"packets": received},
            "flows": {"created": conns, "emergency": emergency},
            "connections": {"ConnectionSuccess": conns},
            "detect": {"alerts": alerts},
            "attribution": {"by_source": {"socket": conns}},
        },
        capture_stats={"lo": IfaceStats("lo", received=received, kernel_dropped=1)},
        flows_active=2,
        outputs={"records": {"connections": conns}, "truncated": 1, "sinks": {"worker-pipe": {"dropped_overflow": 3}}},
    )


def test_merged_metrics_are_the_workers_sums():
    outs = {"records": {"connections": 7}, "truncated": 0, "sinks": {"files:/x": {"dropped_overflow": 0}}}
    snap = merge_snapshots(
        [_worker_snapshot(100, 3, 1, 0), _worker_snapshot(50, 4, 0, 1)], outs, start_time=123.0, helper=None
    )
    text = metrics.render(snap)
    assert 'xfer_sensor_packets_received_total{interface="lo"} 150' in text
    assert 'xfer_sensor_packets_dropped_total{interface="lo",by="kernel"} 2' in text
    assert 'xfer_sensor_connections_total{action_type="ConnectionSuccess"} 7' in text
    assert "xfer_sensor_alerts_total 1" in text
    assert "xfer_sensor_flows_active 4" in text
    assert "xfer_sensor_flows_emergency 1" in text  # a gauge: the most, not the sum
    assert 'xfer_sensor_attributions_total{source="socket"} 7' in text
    assert 'xfer_sensor_output_dropped_total{sink="worker-pipe",reason="overflow"} 6' in text
    assert 'xfer_sensor_output_dropped_total{sink="files:/x",reason="overflow"} 0' in text
    assert "xfer_sensor_start_time_seconds 123" in text
    assert metrics.summary(snap).startswith("packets 150 ")
    # no worker has reported yet: a valid, empty page
    assert "xfer_sensor_packets_decoded_total 0" in metrics.render(merge_snapshots([], outs, 1.0, None))


# -- the supervisor with stand-in workers (no capture: what the processes do with each other) --------


class _Stub:
    """What WorkerLink.ready needs of a daemon: its signal flags."""

    def __init__(self) -> None:
        self.stop = self.hup = False

    def _on_hup(self, signum, frame) -> None:
        self.hup = True

    def _on_term(self, signum, frame) -> None:
        self.stop = True


def _supervise(tmp_path, worker_main, stop_after: float | None):
    import signal
    import threading

    from sensor.core.config import Config
    from sensor.io.sinks import build_outputs
    from sensor.workers import Supervisor

    cfg = Config()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        sup = Supervisor(
            2,
            worker_main,
            make_outputs=lambda: build_outputs(cfg.output, config=cfg, outdir=tmp_path, block=False),
            start_helper=None,
            metrics_listen=None,
            status_interval=300.0,
            interfaces=["stand-in"],
        )
        if stop_after is not None:
            threading.Timer(stop_after, lambda: setattr(sup, "stop", True)).start()
        return sup.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _worker_writes_at_stop(link) -> int:
    import time

    d = _Stub()
    out = link.outputs(Output(), None, None)
    link.ready({"stand-in": "filter"}, d)
    out.emit("connections", {"Timestamp": "2026-12-06T00:00:00.000000Z", "Worker": link.k, "When": "running"})
    while not d.stop:  # the supervisor's SIGTERM
        link.pump()
        time.sleep(0.01)
    for i in range(2000):  # written at SIGTERM, as a daemon's last flows are
        out.emit("connections", {"Timestamp": "2026-12-06T00:00:01.000000Z", "Worker": link.k, "N": i})
    out.close()
    link.bye()
    return 0


def test_supervisor_writes_every_workers_records_whole_at_stop(tmp_path):
    import json

    assert _supervise(tmp_path, _worker_writes_at_stop, stop_after=1.0) == 0
    recs = [json.loads(x) for x in (tmp_path / "connections.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * 2001
    for k in (0, 1):
        assert [r["N"] for r in recs if r["Worker"] == k and "N" in r] == list(range(2000))  # in order, none lost


def _worker_sends_garbage(link) -> int:
    import time

    d = _Stub()
    link.ready({"stand-in": "filter"}, d)
    if link.k == 1:
        link.chan.send(RECORDS, b"\xff\xff\xff", force=True)  # a message no worker makes
        link.chan.flush(5)
    while not d.stop:
        link.pump()
        time.sleep(0.01)
    link.bye()
    return 0


def _worker_exits(link) -> int:
    d = _Stub()
    link.ready({"stand-in": "filter"}, d)
    return 0 if link.k == 0 else 3  # worker 1 ends at once, as if it crashed


def test_a_worker_that_breaks_or_ends_stops_the_supervisor_with_status_1(tmp_path):
    assert _supervise(tmp_path / "a", _worker_sends_garbage, stop_after=None) == 1
    assert _supervise(tmp_path / "b", _worker_exits, stop_after=None) == 1


def test_workers_refuse_a_ring_of_fewer_files_than_workers_and_bad_counts(tmp_path, capsys):
    from sensor.daemon import main

    base = ["-i", "lo", "--allow-root", "--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "st")]
    cfg = tmp_path / "config.yaml"
    cfg.write_text("pcap_ring: {max_files: 2}\n")
    assert main([*base, "--config", str(cfg), "--workers", "3", "--pcap-dir", str(tmp_path / "ring")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pcap_ring.max_files" in err and "workers (3)" in err, err
    assert not (tmp_path / "ring").exists()  # refused before any worker starts
    assert main([*base, "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workers" in err and "from 1 to 64" in err, err


def test_each_worker_records_its_share_of_the_ring_in_a_folder_of_its_own(tmp_path):
    from sensor.core.config import PcapRing
    from sensor.workers import WorkerLink, ring_share

    opts = PcapRing(max_bytes=1000, max_files=7, file_bytes=600)
    a, b = socket.socketpair()
    try:
        folder, share = WorkerLink(1, 3, a).ring(tmp_path, opts)
    finally:
        a.close()
        b.close()
    assert folder == tmp_path / "worker-1-of-3"
    assert (share.max_bytes, share.max_files, share.file_bytes) == (333, 2, 333)
    assert share.hold_seconds == opts.hold_seconds and share.queue_bytes == opts.queue_bytes
    assert ring_share(opts, 1) == opts
