"""Issue #13, "reported bytes never exceed what moved": protocol messages that
claim more than the connection carries (SMB2/SMB1 READ/WRITE lengths, FTP
``150 ... (N bytes)`` and ``SIZE``, TFTP ``tsize``).

The captures are pcaps/adversary/{smb,ftp,tftp}_claims.pcap, made by
pcaps/adversary/make_bytes.py (its docstring says what is in them). Through
the whole pipeline: every transfer's ``Bytes`` is what moved (counted here
from the capture's TCP/UDP payloads with scapy, independently of the sensor),
the claim is in ``ClaimedBytes``, the transfer is not ``Complete``, a named
weird says so, and the alert volumes and the replay summary add up only what
moved. The SMB analyzer is also fed crafted messages directly: compounds,
AndX chains, several reads/writes in one session, a connection ending inside
the data, and its frame-start probes with no catch-all left.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import TCP, UDP
from scapy.utils import rdpcap

import sensor.analyzers.smb.analyzer as smb_mod
from sensor.analyzers.smb import SmbAnalyzer, SmbFileSummary, find_frame_start
from tests.test_analyzer_smb import (
    ANDX_NONE,
    CONN445,
    FID,
    SID,
    TREE_ID,
    close_req,
    close_resp,
    compound,
    create_req,
    create_resp,
    feed,
    h2,
    login,
    nbss,
    of,
    smb1_bytes,
    smb1_hdr,
    smb1_session,
    smb1_words,
    tree_req,
    tree_resp,
    upload_session,
    weird_names,
    write_req,
    write_resp,
)

REPO = Path(__file__).resolve().parents[1]
ADV = REPO / "pcaps" / "adversary"
CONFIG = ADV / "bytes.yaml"
CLAIM = 0xFFFFFFFF
FTP_CLAIM = 9_999_999_999
REAL = 10


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def payload_bytes(pcap: Path, server_ports: set[int]) -> tuple[int, int]:
    """(client -> server, server -> client) payload bytes of every TCP/UDP
    connection in ``pcap`` whose server side uses one of ``server_ports`` (or,
    with an empty set, every connection), each (seq, payload) counted once."""
    seen: dict[tuple, set] = defaultdict(set)
    sent = recv = 0
    for p in rdpcap(str(pcap)):
        l4 = p[TCP] if TCP in p else p[UDP] if UDP in p else None
        if l4 is None or not bytes(l4.payload):
            continue
        n = len(bytes(l4.payload))
        to_server = l4.dport in server_ports or (not server_ports and p["IP"].src == "192.168.56.10")
        if server_ports and not to_server and l4.sport not in server_ports:
            continue
        key = (p["IP"].src, p["IP"].dst, l4.sport, l4.dport)
        mark = (getattr(l4, "seq", None), n, bytes(l4.payload) if UDP in p else b"")
        if mark in seen[key]:
            continue
        seen[key].add(mark)
        if to_server:
            sent += n
        else:
            recv += n
    return sent, recv


# ---------------------------------------------------------------------------
# The crafted captures through the pipeline
# ---------------------------------------------------------------------------


def test_capture_generator_is_deterministic(tmp_path):
    """The committed captures are exactly what make_bytes.py writes."""
    subprocess.run(
        [sys.executable, str(ADV / "make_bytes.py"), str(tmp_path)], cwd=REPO, check=True, capture_output=True
    )
    for name in ("smb_claims.pcap", "ftp_claims.pcap", "tftp_claims.pcap"):
        assert (tmp_path / name).read_bytes() == (ADV / name).read_bytes(), name


def test_smb2_claims_of_4_gib_with_10_real_bytes(replay):
    pcap = ADV / "smb_claims.pcap"
    r = replay(pcap, config=config())
    assert len(r.connections) == 10
    assert all(c["ActionType"] == "ConnectionSuccess" and c["RemoteIPType"] == "Public" for c in r.connections)
    by_uid = {c["Uid"]: c for c in r.connections}
    # one download and one upload per session, each exactly the 10 bytes it carried
    assert sorted((t["Uid"], t["Direction"]) for t in r.transfers) == sorted(
        (u, d) for u in by_uid for d in ("download", "upload")
    )
    for t in r.transfers:
        assert t["Bytes"] == REAL, t
        assert t["ClaimedBytes"] == CLAIM, t
        assert t["Complete"] is False, t
        conn = by_uid[t["Uid"]]
        assert t["Bytes"] <= (conn["SentBytes"] if t["Direction"] == "upload" else conn["ReceivedBytes"])
    # sessions 0-4 closed both files; without the claims they would be complete
    closed = [t for t in r.transfers if int(t["Filename"].split("-")[1].split(".")[0]) < 5]
    assert len(closed) == 10
    # flagged, by name, on every session
    flagged = {w["Uid"] for w in r.weird if w["Name"] == "smb_claim_exceeds_data"}
    assert flagged == set(by_uid)
    # the hunt's volumes are what moved on the wire, nothing claimed
    sent, recv = payload_bytes(pcap, {445})
    (row,) = r.hunt
    assert row["ConnectionCount"] == 10
    assert (row["BytesSent"], row["BytesReceived"]) == (sent, recv)
    assert sent + recv < 40_000
    for a in r.alerts:
        assert a["BytesSent"] <= sent and a["BytesReceived"] <= recv


def test_smb2_claims_replay_summary(tmp_path):
    """The CLI's summary: "20 file(s) moved, 200 B", not 40.0 GiB."""
    args = ["replay", str(ADV / "smb_claims.pcap"), "--config", str(CONFIG), "--out", str(tmp_path)]
    p = subprocess.run([sys.executable, "-m", "sensor", *args], cwd=REPO, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert b"20 file(s) moved, 200 B" in p.stdout, p.stdout
    assert b"GiB" not in p.stdout and b"MiB" not in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "sensor", *args, "--format", "json"], cwd=REPO, capture_output=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    (alert,) = json.loads(p.stdout)["alerts"]
    assert alert["FileBytes"] == 20 * REAL
    transfers = [json.loads(line) for line in (tmp_path / "transfers.jsonl").read_text().splitlines()]
    assert sum(t["Bytes"] for t in transfers) == 20 * REAL


def test_smb2_claims_ecs_profile(replay, tmp_path):
    """The ecs shape keeps the claim in xfer.transfer.claimed_bytes, never in file.size."""
    args = ["replay", str(ADV / "smb_claims.pcap"), "--config", str(CONFIG), "--stdout", "--profile", "ecs"]
    p = subprocess.run([sys.executable, "-m", "sensor", *args], cwd=REPO, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    docs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith(b"{")]
    tr = [d["xfer"]["transfer"] for d in docs if "transfer" in d.get("xfer", {})]
    assert len(tr) == 20
    assert all(x["bytes"] == REAL and x["claimed_bytes"] == CLAIM and x["complete"] is False for x in tr)
    assert all(d.get("file", {}).get("size", 0) <= REAL for d in docs if "transfer" in d.get("xfer", {}))


def test_ftp_150_and_size_claims_with_a_10_byte_data_channel(replay):
    pcap = ADV / "ftp_claims.pcap"
    r = replay(pcap, config=config())
    assert len(r.transfers) == 4
    for t in r.transfers:
        assert (t["Bytes"], t["ClaimedBytes"], t["Complete"], t["ReplyCode"]) == (REAL, FTP_CLAIM, False, 226), t
    assert [t.get("AnnouncedSize") for t in r.transfers] == [FTP_CLAIM, FTP_CLAIM, None, None]
    controls = {c["Uid"] for c in r.connections if c["RemotePort"] == 21}
    assert {w["Uid"] for w in r.weird if w["Name"] == "ftp_claim_exceeds_data"} == controls
    sent, recv = payload_bytes(pcap, set())
    (row,) = r.hunt
    assert row["ConnectionCount"] == 4
    assert (row["BytesSent"], row["BytesReceived"]) == (sent, recv)  # control + data channels, as carried


def test_tftp_tsize_claim(replay):
    r = replay(ADV / "tftp_claims.pcap", config=config())
    (t,) = r.transfers
    assert (t["Bytes"], t["ClaimedBytes"], t["Complete"]) == (REAL, FTP_CLAIM, False)
    assert "tftp_tsize_mismatch" in [w["Name"] for w in r.weird]


def test_ftp_claim_after_rest_is_not_a_claim(replay):
    """A resumed RETR (REST 1000) moves less than the file the 150 reply
    announces; that is no claim above what moved."""
    from tests.support.craft import Tcp

    c = Tcp("192.168.56.10", "203.0.113.10", 41100, 21, 1_795_737_600.0, isn_c=1, isn_s=2).handshake()
    c.s2c(b"220 ok\r\n").c2s(b"USER u\r\n").s2c(b"331 p\r\n").c2s(b"PASS p\r\n").s2c(b"230 in\r\n")
    c.c2s(b"EPSV\r\n").s2c(b"229 Entering Extended Passive Mode (|||30100|)\r\n")
    c.c2s(b"REST 1000\r\n").s2c(b"350 Restart position accepted (1000).\r\n")
    c.c2s(b"RETR f.bin\r\n")
    d = Tcp("192.168.56.10", "203.0.113.10", 41101, 30100, c.t, isn_c=3, isn_s=4).handshake()
    c.t = d.t
    c.s2c(b"150 Opening BINARY mode data connection for f.bin (1500 bytes).\r\n")
    d.t = c.t
    d.s2c(b"x" * 500).fin()
    c.t = d.t
    c.s2c(b"226 Transfer complete.\r\n").fin()
    r = replay(c.pkts + d.pkts, config=config())
    (t,) = r.transfers
    assert (t["Bytes"], t["Complete"], t["AnnouncedSize"]) == (500, True, 1500)
    assert "ClaimedBytes" not in t
    assert "ftp_claim_exceeds_data" not in [w["Name"] for w in r.weird]


# ---------------------------------------------------------------------------
# The SMB analyzer, crafted messages
# ---------------------------------------------------------------------------


def write_claim(mid: int, data: bytes, claim: int = CLAIM, doff: int = 112, flags: int = 0) -> bytes:
    body = struct.pack("<HHIQ16sIIHHI", 49, doff, claim, 0, FID, 0, 0, 0, 0, 0)
    return h2(9, mid, tree=TREE_ID, sid=SID, flags=flags) + body + data


def opened(*extra) -> list:
    msgs = login()
    msgs += [(True, tree_req(3, r"\\10.77.0.2\public")), (False, tree_resp(3))]
    msgs += [(True, create_req(4, "x.bin", disposition=5, access=0x0012019F)), (False, create_resp(4, FID, action=2))]
    return msgs + list(extra)


def summary(events) -> SmbFileSummary:
    (s,) = [x for x in of(events, SmbFileSummary) if x.bytes_written or x.bytes_read]
    return s


@pytest.mark.parametrize("mode", ["whole", "bytes", "chunks"])
def test_smb2_several_writes_honest_and_lying(mode):
    honest = bytes(range(256)) * 4
    msgs = opened(
        (True, write_req(5, FID, 0, honest)),
        (False, write_resp(5, len(honest))),
        (True, nbss(write_claim(6, b"L" * REAL))),
        (False, write_resp(6, REAL)),
        (True, nbss(write_claim(7, b"M" * REAL, claim=3))),  # claims less than it holds: 3 moved as data
        (False, write_resp(7, 3)),
        (True, close_req(8, FID)),
        (False, close_resp(8)),
    )
    ev = feed(msgs, mode)
    s = summary(ev)
    assert (s.bytes_written, s.claimed_written, s.writes) == (len(honest) + REAL + 3, len(honest) + CLAIM + 3, 3)
    assert weird_names(ev) == ["smb_claim_exceeds_data"]


def test_smb2_compound_writes_count_their_own_slices():
    """Two WRITEs in one compound each claiming 4 GiB over 10 bytes: each
    counts the bytes of its own slice (the first one's alignment padding
    included: it moved), 16 + 10."""
    first = write_claim(5, b"A" * REAL)
    second = write_claim(6, b"B" * REAL, flags=4)  # related: same file
    ev = feed(opened((True, compound(first, second))))
    s = summary(ev)
    assert (s.bytes_written, s.claimed_written, s.writes) == (16 + REAL, 2 * CLAIM, 2)
    # a DataOffset past its own slice (into the next command) counts nothing of it
    ev = feed(opened((True, compound(write_claim(5, b"", claim=64, doff=200), write_claim(6, b"B" * REAL, flags=4)))))
    s = summary(ev)
    assert (s.bytes_written, s.claimed_written) == (REAL, 64 + CLAIM)


def test_smb2_read_data_length_bounded_by_its_message():
    from tests.test_analyzer_smb import read_req

    resp = h2(8, 5, resp=True, tree=TREE_ID, sid=SID) + struct.pack("<HBBIII", 17, 80, 0, CLAIM, 0, 0) + b"r" * REAL
    ev = feed(opened((True, read_req(5, FID, 0, 65536)), (False, nbss(resp))))
    s = summary(ev)
    assert (s.bytes_read, s.claimed_read, s.reads) == (REAL, CLAIM, 1)


@pytest.mark.parametrize("mode", ["whole", "bytes", "chunks"])
def test_smb2_connection_ends_inside_a_streamed_write(mode):
    """A WRITE of 100,000 bytes, framed honestly, cut after 5,000 data bytes."""
    full = write_req(5, FID, 0, bytes(100_000))
    cut = full[: 4 + 112 + 5000]
    ev = feed(opened((True, cut)), mode)
    s = summary(ev)
    assert (s.bytes_written, s.claimed_written) == (5000, 100_000)
    assert "smb_claim_exceeds_data" in weird_names(ev) and "smb_truncated_pdu" in weird_names(ev)


def test_smb2_streamed_write_cut_inside_its_head():
    """16 MiB announced, a WRITE header and 10 bytes, then the end."""
    msg = struct.pack(">I", 0xFFFFFF) + write_claim(5, b"z" * REAL)
    ev = feed(opened((True, msg)))
    s = summary(ev)
    assert (s.bytes_written, s.claimed_written) == (REAL, CLAIM)


def test_smb2_gap_inside_streamed_data_is_sequence_space():
    """Bytes lost in the capture inside a WRITE moved (sequence space says so)."""
    full = write_req(5, FID, 0, bytes(100_000))
    a = SmbAnalyzer(CONN445)
    for to_server, m in opened():
        (a.receive_ts if to_server else a.receive_tc)(m, 0)
    a.receive_ts(full[:20_000], 1)
    a.gap(True, 30_000, 2)
    a.receive_ts(full[50_000:], 3)
    ev = a.close(4)
    assert summary(ev).bytes_written == 100_000


def smb1_write_chain(data: bytes, claim_hi: int) -> bytes:
    """WRITE_ANDX chained to a second WRITE_ANDX, both pointing at the same data."""
    hdr = smb1_hdr(0x2F, 9, tid=7, uid=0x64)
    first_len = 1 + 28 + 2 + len(data)
    second_off = len(hdr) + first_len
    data_off = len(hdr) + 1 + 28 + 2

    def words(andx: bytes, hi: int) -> bytes:
        return andx + struct.pack("<HIIHHHHHI", 0x4001, 0, 0, 0, 0, hi, len(data), data_off, 0)

    first = smb1_words(words(bytes([0x2F, 0]) + struct.pack("<H", second_off), claim_hi)) + smb1_bytes(data)
    second = smb1_words(words(ANDX_NONE, claim_hi)) + smb1_bytes(b"")
    return nbss(hdr + first + second)


def test_smb1_write_andx_chain_counts_shared_data_once():
    msgs = smb1_session()
    cut = next(i for i, (ts, m) in enumerate(msgs) if ts and m[8] == 0x2F)  # the first WRITE_ANDX
    head = msgs[:cut]
    ev = feed(head + [(True, smb1_write_chain(b"D" * REAL, 0xFFFF))])
    (s,) = [x for x in of(ev, SmbFileSummary) if x.bytes_written]
    claim = (0xFFFF << 16) | REAL
    assert (s.bytes_written, s.claimed_written, s.writes) == (REAL, 2 * claim, 2)
    assert "smb_claim_exceeds_data" in weird_names(ev)


def test_smb1_read_andx_claim_bounded():
    from tests.test_analyzer_smb import s1_read_req

    msgs = smb1_session()
    cut = next(i for i, (ts, m) in enumerate(msgs) if ts and m[8] == 0x2F)
    hdr = smb1_hdr(0x2E, 20, reply=True, tid=7, uid=0x64)
    w = ANDX_NONE + struct.pack("<HHHHHH8s", 0xFFFF, 0, 0, 0xFFFF, len(hdr) + 1 + 24 + 2, 0xFFFF, b"\x00" * 8)
    resp = nbss(hdr + smb1_words(w) + smb1_bytes(b"r" * REAL))
    ev = feed(msgs[:cut] + [(True, s1_read_req(20, 0x4001, 0, 60000)), (False, resp)])
    (s,) = [x for x in of(ev, SmbFileSummary) if x.bytes_read]
    assert (s.bytes_read, s.claimed_read) == (REAL, 0xFFFFFFFF)


def test_honest_sessions_claim_what_moved():
    for msgs in (upload_session(), smb1_session()):
        ev = feed(msgs)
        for s in of(ev, SmbFileSummary):
            assert (s.claimed_read, s.claimed_written) == (s.bytes_read, s.bytes_written)
        assert "smb_claim_exceeds_data" not in weird_names(ev)


# ---------------------------------------------------------------------------
# find_frame_start / probes: bounds-checked, no catch-all
# ---------------------------------------------------------------------------


def test_frame_start_probes_never_raise_on_mutated_bytes():
    base = b"".join(m for _, m in upload_session()[:12])
    rnd = random.Random(13)
    for _ in range(3000):
        b = bytearray(base[: rnd.randrange(1, 600)])
        for _ in range(rnd.randrange(1, 8)):
            b[rnd.randrange(len(b))] = rnd.choice((0, 0xFF, 0xFE, 0x81, 0x82, 0x20, rnd.randrange(256)))
        data = bytes(b[rnd.randrange(len(b)) :])
        for to_server in (True, False):
            assert -1 <= find_frame_start(data, to_server) < max(1, len(data))
            assert SmbAnalyzer.probe_ts(data) in (True, False, None)
            assert SmbAnalyzer.probe_tc(data, midstream=True) in (True, None)


def test_a_bug_in_the_frame_scan_is_an_internal_error_not_silence(monkeypatch):
    """With the catch-all gone, an exception in the scan reaches the caller of
    find_frame_start, and inside the analyzer it becomes smb_analyzer_error
    (which the fuzzer counts as a crash)."""

    def broken(buf, start=0):
        raise RuntimeError("bug in the scan")

    monkeypatch.setattr(smb_mod, "_scan", broken)
    with pytest.raises(RuntimeError):
        find_frame_start(b"\x00\x00\x00\x50\xfeSMB" + b"\x00" * 80, True)
    a = SmbAnalyzer(CONN445, midstream=True)
    ev = a.receive_ts(b"junk" * 10, 0)
    assert weird_names(ev) == ["smb_analyzer_error"]
