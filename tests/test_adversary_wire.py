"""The TCP/IP layer against an adversary (issue #13): checksums, conflicting
overlaps, ACK-confirmed sequence jumps. Each attack is a crafted capture in
pcaps/adversary/ (made by pcaps/adversary/make.py), replayed through the
whole pipeline, layered and fused."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import pytest
import yaml

from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.engine.decode import Checksums, ones_sum, transport_sum
from sensor.io.capture import read_file
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import Tcp, write_pcap, write_raw_pcap

REPO = Path(__file__).resolve().parent.parent
ADV = REPO / "pcaps" / "adversary"
_spec = importlib.util.spec_from_file_location("adversary_make", ADV / "make.py")
assert _spec is not None and _spec.loader is not None
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
RULES = load_rules(REPO / "rules", RECORD_FIELDS)
CONFIG = yaml.safe_load((ADV / "adversary.yaml").read_text())


def replay(path: Path, fused: bool = True, **over):
    sink = MemorySink()
    pipe = Pipeline(config_from_dict({**CONFIG, **over}, "<test>"), RULES, sink)
    pipe.fused = fused
    res = read_file(path, pipe.handler_for, None)
    assert not res.error
    pipe.finish()
    return pipe, sink.records


def control(recs) -> list[dict]:
    return [r for r in recs["connections"] if r["RemotePort"] == 21]


def weirds(recs, name: str) -> list[dict]:
    return [w for w in recs["weird"] if w["Name"] == name]


def test_captures_are_what_make_py_writes(tmp_path):
    make.main(tmp_path)
    for name in make.CAPTURES:
        assert (tmp_path / name).read_bytes() == (ADV / name).read_bytes(), name


# -- checksums ------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_insertion_with_bad_checksums_changes_neither_user_nor_file_nor_alert(fused):
    pipe, recs = replay(ADV / "insertion.pcap", fused)
    ctl = control(recs)
    assert len(ctl) == 5
    assert {r["AccountName"] for r in ctl} == {"backup"}
    stored = sorted(t["Filename"] for t in recs["transfers"])
    assert stored == [f"q{i + 1}-finance.7z" for i in range(5)]
    # one alert, raised by the 4th connection of the key (count > 3); the 5th joins its window
    assert len(recs["alerts"]) == 1 and recs["alerts"][0]["AccountName"] == "backup"
    # ten decoys (USER and STOR per session), two of each kind imitate offload: all dropped
    assert len(weirds(recs, "bad_TCP_checksum")) == 10
    assert pipe.decode_stats.bad_tcp_checksum == 10 and pipe.decode_stats.checksum_offloaded == 0
    assert not weirds(recs, "tcp_overlap_conflict")


def test_insertion_is_an_attack_without_validation():
    """The same capture with checksum_validation: no -- the decoys win (what the issue reported)."""
    _, recs = replay(ADV / "insertion.pcap", checksum_validation="no")
    ctl = control(recs)
    assert {r["AccountName"] for r in ctl} == {f"ghost{i}" for i in range(5)}
    assert not recs["alerts"]
    # the real copies, arriving second, are caught as conflicting overlaps
    assert all(r["AdditionalFields"].get("ConflictingOverlaps") == 2 for r in ctl)


@pytest.mark.parametrize("fused", [True, False])
def test_checksum_offload_on_an_endpoint_capture_is_recognised_and_nothing_dropped(fused, caplog):
    pipe, recs = replay(ADV / "offload.pcap", fused)
    _, strict = replay(ADV / "offload.pcap", fused, checksum_validation="yes")
    st = pipe.decode_stats
    assert st.checksum_offloaded == 30 and st.bad_tcp_checksum == 0
    assert not recs["weird"]
    (c,) = control(recs)
    assert c["AccountName"] == "backup" and c["ActionType"] == "ConnectionSuccess"
    assert [t["Filename"] for t in recs["transfers"]] == ["q1-finance.7z"]
    # logged once, naming the sender
    notes = [r.getMessage() for r in caplog.records if "checksum offload recognised" in r.getMessage()]
    assert len(notes) == 1 and "192.168.56.10" in notes[0]
    # 'yes' drops every offloaded packet: nothing from the device is left
    assert len(weirds(strict, "bad_TCP_checksum")) == 30
    assert not control(strict) or control(strict)[0]["SentBytes"] == 0


def test_offload_value_from_a_remote_sender_is_dropped(tmp_path):
    """A public server imitating the offload's partial value is not its own host: dropped."""
    pkts = make.ftp_upload(make.T0, 0)
    for p in pkts:
        if p["IP"].src == make.SERVER:
            make.with_checksum(p, make.partial_sum(p))
    path = write_pcap(tmp_path / "remote.pcap", pkts)
    pipe, recs = replay(path)
    # the control connection's: with its EPSV answer dropped, no data channel is tracked (nor verified)
    n = sum(1 for p in pkts if p["IP"].src == make.SERVER and p["TCP"].sport == 21)
    assert pipe.decode_stats.bad_tcp_checksum == n and pipe.decode_stats.checksum_offloaded == 0


def test_real_captures_under_auto_need_offload_and_drop_nothing():
    pipe, _ = replay(REPO / "pcaps/real/ftp_passive_anon.pcap", home_net=["10.77.0.0/16"])
    st = pipe.decode_stats
    assert st.checksum_offloaded > 800 and st.bad_tcp_checksum == st.bad_ip_checksum == 0


def _udp_frame(src: str, dst: str, payload: bytes, ck: int | None) -> bytes:
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    u = UDP(sport=40000, dport=69)
    if ck is not None:
        u.chksum = ck
    return bytes(Ether() / IPv6(src=src, dst=dst) / u / payload)


def test_udp_zero_checksum_is_none_on_ipv4_and_invalid_on_ipv6(tmp_path):
    rrq = b"\x00\x01a.txt\x00octet\x00"
    good6 = _udp_frame("fd00::1", "2001:db8::2", rrq, None)
    zero6 = _udp_frame("fd00::1", "2001:db8::3", rrq, 0)
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    zero4 = bytes(Ether() / IP(src="192.168.56.10", dst="203.0.113.9") / UDP(sport=40001, dport=69, chksum=0) / rrq)
    path = write_raw_pcap(tmp_path / "u.pcap", [(make.T0 + i, f, len(f)) for i, f in enumerate((good6, zero6, zero4))])
    for fused in (True, False):
        pipe, recs = replay(path, fused)
        assert pipe.decode_stats.bad_udp_checksum == 1
        (w,) = weirds(recs, "bad_UDP_checksum")
        assert "zero UDP checksum on IPv6" in w["Detail"]
        remote = sorted(r["RemoteIP"] for r in recs["connections"])
        assert remote == ["2001:db8::2", "203.0.113.9"]


def test_bad_ipv4_header_checksum_is_dropped(tmp_path):
    pkts = Tcp(make.DEV, make.SERVER, 41000, 21, make.T0).handshake().c2s(b"USER x\r\n").fin().pkts
    frames = [(float(p.time), bytes(p), len(bytes(p))) for p in pkts]
    t, f, n = frames[3]  # the USER segment
    b = bytearray(f)
    b[24] ^= 0xFF  # the IPv4 header checksum
    frames[3] = (t, bytes(b), n)
    pipe, recs = replay(write_raw_pcap(tmp_path / "ip.pcap", frames))
    assert pipe.decode_stats.bad_ip_checksum == 1 and len(weirds(recs, "bad_IP_checksum")) == 1
    assert control(recs)[0]["AccountName"] == ""


def test_ones_complement_sum_identity():
    """The big-integer remainder is the RFC 1071 folded sum, odd lengths and 0/0xFFFF included."""
    import random

    rng = random.Random(7)

    def rfc1071(b: bytes) -> int:
        if len(b) & 1:
            b += b"\0"
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        while s > 0xFFFF:
            s = (s >> 16) + (s & 0xFFFF)
        return s % 0xFFFF

    for n in list(range(0, 40)) + [1499, 1500]:
        b = bytes(rng.randrange(256) for _ in range(n))
        assert ones_sum(b) == rfc1071(b)
    assert ones_sum(b"\xff\xff") == ones_sum(b"\x00\x00") == 0
    assert transport_sum(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 6, b"") == (0x0102 + 0x0304 + 0x0506 + 0x0708 + 6)


def test_offload_decisions_are_bounded():
    import ipaddress

    ck = Checksums("auto", (ipaddress.ip_network("10.0.0.0/8"),), max_senders=2)
    for i in range(5):
        ck.syn(bytes([10, 0, 0, i]))
    assert len(ck.senders) == 2 and ck.full == 3
    with pytest.raises(ValueError):
        Checksums("maybe")


# -- conflicting overlaps ---------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_conflicting_overlap_raises_the_weird_and_marks_the_record(fused):
    pipe, recs = replay(ADV / "overlap.pcap", fused)
    (w,) = weirds(recs, "tcp_overlap_conflict")
    assert "originator" in w["Detail"] and "first copy" in w["Detail"]
    (c,) = control(recs)
    assert c["AccountName"] == "backup"  # the first copy is what the analyzer saw
    assert c["AdditionalFields"]["ConflictingOverlaps"] == 1
    assert w["Uid"] == c["Uid"]
    assert pipe.app.stats["overlap_conflicts"] == 1


def test_a_rule_can_select_the_contested_connections(tmp_path):
    """A detection engineer can alert on sessions whose parsed fields are
    contested: AdditionalFields.ConflictingOverlaps is a field rules may name."""
    rule = tmp_path / "contested.yml"
    rule.write_text(
        "title: Contested FTP session\n"
        "id: 3f0c9a52-6d1e-4b7a-9c2f-1a2b3c4d5e6f\n"
        "status: experimental\n"
        "level: medium\n"
        "logsource: {product: xfer-sensor, category: network_connection}\n"
        "detection:\n"
        "  selection:\n"
        "    AdditionalFields.ConflictingOverlaps: 1\n"
        "  condition: selection\n"
    )
    sink = MemorySink()
    pipe = Pipeline(config_from_dict(CONFIG, "<test>"), load_rules(rule, RECORD_FIELDS), sink)
    res = read_file(ADV / "overlap.pcap", pipe.handler_for, None)
    assert not res.error
    pipe.finish()
    (c,) = control(sink.records)
    assert c["AdditionalFields"]["ConflictingOverlaps"] == 1
    alerts = sink.records["alerts"]
    assert [a["RuleId"] for a in alerts] == ["3f0c9a52-6d1e-4b7a-9c2f-1a2b3c4d5e6f"]


def test_documented_additional_fields_are_the_ones_rules_may_name():
    """docs/outputs.md's AdditionalFields row and the rule loader's list agree."""
    from sensor.detect.rules import ADDITIONAL_FIELDS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text()
    row = next(ln for ln in doc.splitlines() if ln.startswith("| `AdditionalFields` | Defender"))
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", row.split("|", 4)[4])) - {"AdditionalFields", "AUTH"}
    assert named == set(ADDITIONAL_FIELDS)


def test_identical_retransmission_is_no_conflict(tmp_path):
    c = Tcp(make.DEV, make.SERVER, 41000, 21, make.T0).handshake()
    c.s2c(b"220 hi\r\n").c2s(b"USER backup\r\n").retransmit_last(True, b"USER backup\r\n").fin()
    _, recs = replay(write_pcap(tmp_path / "r.pcap", c.pkts))
    assert not weirds(recs, "tcp_overlap_conflict")
    assert "ConflictingOverlaps" not in control(recs)[0]["AdditionalFields"]


def test_conflict_between_out_of_order_copies_keeps_the_first():
    from sensor.engine.reassembly import Stream

    s = Stream()
    s.start(100)
    assert s.segment(110, b"AAAA") == []
    s.segment(110, b"BBBBCC")  # differs from the waiting copy; its tail is new
    out = s.segment(100, b"0123456789")
    assert b"".join(c.data for c in out) == b"0123456789AAAACC"
    assert s.conflicts == 1


def test_overlap_kept_bytes_are_bounded():
    from sensor.engine.reassembly import ReassemblyLimits, Stream

    s = Stream(ReassemblyLimits(retain=100))
    s.start(0)
    for i in range(50):
        s.segment(i * 10, bytes([i]) * 10)
    assert s.keep_bytes <= 110 and len(s.keep) <= 11
    s.segment(0, b"X" * 10)  # older than what is kept: not compared
    assert s.conflicts == 0
    s.segment(495, b"XXXXX")  # overlaps the newest kept chunk with other bytes
    assert s.conflicts == 1


# -- ACK-confirmed jumps ------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_gapped_transfer_over_4gib_counts_its_full_size_when_acked(fused):
    pipe, recs = replay(ADV / "jumps_acked.pcap", fused)
    (c,) = [r for r in recs["connections"] if r["RemotePort"] == 445]
    assert c["SentBytes"] == make.SENT_ACKED > 1 << 32
    assert not weirds(recs, "tcp_seq_jump")
    assert pipe.flows.stats.seq_jumps_acked == make.JUMPS and pipe.flows.stats.seq_jumps == 0


@pytest.mark.parametrize("fused", [True, False])
def test_unacknowledged_jumps_stay_weirds_and_are_not_counted(fused):
    pipe, recs = replay(ADV / "jumps_unacked.pcap", fused)
    (c,) = [r for r in recs["connections"] if r["RemotePort"] == 445]
    assert c["SentBytes"] == make.SENT_UNACKED
    ws = weirds(recs, "tcp_seq_jump")
    assert len(ws) == make.JUMPS and all("never acknowledged" in w["Detail"] for w in ws)
    assert pipe.flows.stats.seq_jumps_acked == 0 and pipe.flows.stats.seq_jumps == make.JUMPS


# -- fuzzing keeps traffic valid, and a share bad ---------------------------------------------


def test_fuzzer_recomputes_checksums_and_leaves_a_share_bad():
    import random

    from fuzz import mutate
    from sensor.engine.decode import locate

    corpus = mutate.load_corpus([REPO / "pcaps" / "demo.pcap"])
    rng = random.Random(3)
    mutator = mutate.Mutator(rng, (), False)
    good = bad = 0
    for _ in range(20):
        kind, _, lt, frames, _ = mutate.make_batch(rng, corpus, 1.0, mutator)
        if kind != "eth":
            continue
        for _, f in frames:
            if len(f) < 14:
                continue
            why, tags, _, ver, proto, l4, end, src, dst, frags = locate(f, 14, (f[12] << 8) | f[13])
            if why or frags or end > len(f) or l4 + 8 > end:
                continue
            ok = not transport_sum(src, dst, proto, f[l4:end]) and (ver == 6 or not ones_sum(f[14 + 4 * tags : l4]))
            good += ok
            bad += not ok
    assert good and bad
    assert 0.05 < bad / (good + bad) < 0.4, (good, bad)
