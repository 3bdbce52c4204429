"""Real traffic, judged by tshark: the sensor's connection records must agree
with tshark's own view of the same capture.

Captures: every committed ``pcaps/real/*.pcap`` (recorded by
``pcaps/record_real.py`` from real vsftpd / tftpd-hpa / smbd and curl / lftp /
tftp / smbclient) and one recorded *now* in a fresh lab: curl passive (EPSV,
PASV), lftp active (PORT, data from port 20), curl EPRT, a connection refused
on 445 (no smbd), one refused on 21 at an address where nothing listens, and
unanswered SYNs (the server's replies are routed into a blackhole).

For each capture ``xfer-sensor replay PCAP --out DIR --config CFG`` runs with
``home_net`` = the lab client and the server typed ``Public``; pyshark
(tshark's dissectors) gives, per TCP/UDP conversation with a side on a
tracked port: SYN / SYN-ACK / RST / FIN seen, payload bytes per direction in
sequence space (relative ``tcp.seq`` + ``tcp.len``: retransmissions once,
SYN/FIN not counted), frames per direction, first and last frame time.
Then, exactly: one record per conversation, ActionType, Local/Remote
endpoints, Sent/Received bytes and packets, FirstSeen/LastSeen, ConnState
class, History letters and Community ID.  The sidecar's ground truth (what
the clients did) is checked too: connections per server port, and the active
FTP data connections' bytes equal the files' sizes.

This needs root and the lab tools; without them it FAILS (never skips).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import struct
import subprocess
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from tests.lab.netns import LabError, require_tools
from tests.lab.oracle import TRACKED_PORTS, Conversation, conversations
from tests.lab.scenarios import CLIENT_TOOLS, SCENARIOS, record_fast
from tests.lab.tools import sensor_cmd

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.lab

REPO = HERE.parent
REAL = REPO / "pcaps" / "real"
SUCCESS_STATES = {"S1", "SF", "S2", "S3", "RSTO", "RSTR"}


# ---------------------------------------------------------------------------
# environment: fail loudly, never skip


def _lab_or_fail() -> None:
    if os.geteuid() != 0:
        pytest.fail("the real-traffic oracle test must run as root (network namespaces, servers)")
    try:
        require_tools(CLIENT_TOOLS)
    except LabError as e:
        pytest.fail(str(e))


# ---------------------------------------------------------------------------
# independent helpers


def community_id(saddr: str, daddr: str, proto: int, sport: int, dport: int, seed: int = 0) -> str:
    """Community ID v1 (corelight/community-id-spec), written from the spec."""
    s, d = ipaddress.ip_address(saddr).packed, ipaddress.ip_address(daddr).packed
    if (s, sport) > (d, dport):
        s, d, sport, dport = d, s, dport, sport
    data = struct.pack("!H", seed) + s + d + struct.pack("!BBHH", proto, 0, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def test_community_id_helper_matches_the_spec_vectors():
    assert community_id("128.232.110.120", "66.35.250.204", 6, 34855, 80) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("66.35.250.204", "128.232.110.120", 6, 80, 34855) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("192.168.1.52", "8.8.8.8", 17, 54585, 53) == "1:d/FP5EW3wiY1vCndhwleRRKHowQ="


def iso_us(epoch: str) -> str:
    """tshark's frame.time_epoch -> the record format (UTC, µs, 'Z')."""
    us = int(Decimal(epoch) * 1_000_000)
    sec, frac = divmod(us, 1_000_000)
    t = dt.datetime.fromtimestamp(sec, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


def tftp_answered(c: Conversation, udp_convs: list[Conversation]) -> bool:
    """A TFTP server answers a request from a new port: another UDP
    conversation from the server's address to the client's address and port,
    starting after the request (how tshark's TFTP dissector links them)."""
    return any(
        u is not c
        and u.originator[0] == c.responder[0]
        and u.responder == c.originator
        and Decimal(u.first_ts) >= Decimal(c.first_ts)
        for u in udp_convs
    )


def expected_action(c: Conversation, local: tuple[str, int], udp_convs: list[Conversation] = ()) -> str:
    outbound = c.originator == local
    if c.proto == "tcp":
        if c.syn_from is None and c.synack_from is None:
            return "ConnectionFound"
        if not c.handshake:  # refused (RST) or never answered
            return "ConnectionFailed"
    else:
        # nothing came back on this 5-tuple, and (TFTP) no answer from a new port
        if c.packets(c.responder) == 0 and not (c.responder[1] == 69 and tftp_answered(c, udp_convs)):
            return "ConnectionFailed"
    return "ConnectionSuccess" if outbound else "InboundConnectionAccepted"


def expected_states(c: Conversation) -> set[str]:
    o, r = c.dirs.get(c.originator), c.dirs.get(c.responder)
    if c.proto == "udp":
        return {"SF"} if c.packets(c.responder) else {"S0"}
    if not c.handshake:
        if r is not None and r.rst:
            return {"REJ"}
        return {"S0"} if r is None else {"OTH", "S0", "REJ"}
    if c.rst:
        return ({"RSTO"} if o.rst else set()) | ({"RSTR"} if r.rst else set())
    if o.fin and r.fin:
        return {"SF"}
    return SUCCESS_STATES


def history_facts(c: Conversation) -> dict[str, bool]:
    """Zeek history letters that tshark's view decides (upper = originator)."""
    o = c.dirs.get(c.originator)
    r = c.dirs.get(c.responder)
    facts = {}
    if c.proto == "tcp":
        facts["S"] = c.syn_from is not None
        facts["h"] = c.synack_from is not None
        facts["F"] = bool(o and o.fin)
        facts["f"] = bool(r and r.fin)
        facts["R"] = bool(o and o.rst)
        facts["r"] = bool(r and r.rst)
    facts["D"] = bool(o and o.wire_payload) or (c.proto == "udp" and bool(o and o.packets))
    facts["d"] = bool(r and r.wire_payload) or (c.proto == "udp" and bool(r and r.packets))
    return facts


# ---------------------------------------------------------------------------
# the run


def run_sensor(pcap: Path, side: dict, out: Path) -> tuple[list[dict], list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    # JSON is YAML; keys are the server's /32 and the client's /32
    cfg.write_text(
        json.dumps(
            {
                "ip_type_overrides": {f"{side['server_ip']}/32": "Public"},
                "home_net": [f"{side['client_ip']}/32"],
                # a veth capture: the lab server's checksums are offloaded too (docs/engine.md)
                "checksum_offload_nets": [f"{side['server_ip']}/32"],
            }
        )
    )
    cp = subprocess.run(
        [*sensor_cmd(), "replay", str(pcap), "--out", str(out), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, f"xfer-sensor replay {pcap} exited {cp.returncode}\n{cp.stderr}"

    def load(name):
        p = out / name
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    return load("connections.jsonl"), load("alerts.jsonl")


def _rec_key(r: dict) -> tuple:
    proto = {"Tcp": "tcp", "Udp": "udp"}[r["Protocol"]]
    return (proto, frozenset({(r["LocalIP"], r["LocalPort"]), (r["RemoteIP"], r["RemotePort"])}))


def compare(pcap: Path, side: dict, records: list[dict]) -> list[tuple[Conversation, dict]]:
    """Assert the records agree with tshark; returns the matched pairs."""
    convs = [c for c in conversations(pcap) if c.ports() & set(TRACKED_PORTS)]
    assert convs, f"{pcap.name}: tshark sees no conversation on a tracked port"
    client = side["client_ip"]
    udp_convs = (
        [u for u in conversations(pcap, ports=None) if u.proto == "udp"] if any(c.proto == "udp" for c in convs) else []
    )
    # data channels and TFTP transfers on ephemeral ports are records too; the
    # comparison here is about connections on the tracked ports
    records = [r for r in records if {r["LocalPort"], r["RemotePort"]} & set(TRACKED_PORTS)]

    by_conv: dict[tuple, list[Conversation]] = defaultdict(list)
    for c in convs:
        by_conv[c.key()].append(c)
    by_rec: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_rec[_rec_key(r)].append(r)

    # records per (RemoteIP, RemotePort) == tshark's conversations per server endpoint
    def remote_of(c: Conversation):
        local = c.a if c.a[0] == client else c.b
        return c.b if local == c.a else c.a

    want = Counter(f"{remote_of(c)[0]}:{remote_of(c)[1]}/{c.proto}" for c in convs)
    got = Counter(f"{r['RemoteIP']}:{r['RemotePort']}/{r['Protocol'].lower()}" for r in records)
    assert got == want, (
        f"{pcap.name}: records per remote endpoint differ from tshark\n"
        f"  sensor: {dict(sorted(got.items()))}\n  tshark: {dict(sorted(want.items()))}"
    )
    assert set(by_rec) == set(by_conv)

    pairs = []
    problems = []
    for key, cs in by_conv.items():
        rs = sorted(by_rec[key], key=lambda r: r["FirstSeen"])
        cs = sorted(cs, key=lambda c: Decimal(c.first_ts))
        assert len(rs) == len(cs), f"{pcap.name}: {key}: {len(rs)} records, tshark {len(cs)}"
        for c, r in zip(cs, rs):
            pairs.append((c, r))
            local = c.a if c.a[0] == client else c.b
            remote = c.b if local == c.a else c.a
            o = c.dirs.get(c.originator)
            # the capture itself must be whole for the seq-space figures to be exact
            for d in c.dirs.values():
                assert d.union_bytes() == d.seq_bytes(), f"{pcap.name}: gap in {c.summary()}"
                assert d.nxtseq_mismatch == 0, c.summary()
            exp = {
                "ActionType": expected_action(c, local, udp_convs),
                "LocalIP": local[0],
                "LocalPort": local[1],
                "RemoteIP": remote[0],
                "RemotePort": remote[1],
                "Protocol": c.proto.capitalize(),
                "SentBytes": c.payload_bytes(local),
                "ReceivedBytes": c.payload_bytes(remote),
                "SentPackets": c.packets(local),
                "ReceivedPackets": c.packets(remote),
                "FirstSeen": iso_us(c.first_ts),
                "LastSeen": iso_us(c.last_ts),
                "Timestamp": iso_us(c.first_ts),
                "RemoteIPType": "Public" if remote[0] == side["server_ip"] else "Private",
                "LocalIPType": "Private",
                "CommunityId": community_id(
                    c.originator[0], c.responder[0], 6 if c.proto == "tcp" else 17, c.originator[1], c.responder[1]
                ),
            }
            diff = {k: (r.get(k), v) for k, v in exp.items() if r.get(k) != v}
            states = expected_states(c)
            if r.get("ConnState") not in states:
                diff["ConnState"] = (r.get("ConnState"), sorted(states))
            hist = r.get("History", "")
            for letter, present in history_facts(c).items():
                if (letter in hist) != present:
                    diff[f"History has {letter!r}"] = (letter in hist, present)
            if diff:
                problems.append(f"  {c.summary()}\n    (sensor, tshark): {diff}")
            assert o is not None
    assert not problems, f"{pcap.name}: sensor disagrees with tshark on:\n" + "\n".join(problems)
    return pairs


def check_ground_truth(pcap: Path, side: dict, records: list[dict]) -> None:
    """What the clients did (the sidecar) must show in the records."""
    got = Counter(f"{r['RemoteIP']}:{r['RemotePort']}/{r['Protocol'].lower()}" for r in records)
    assert dict(got) == side["expected_tracked_connections"], (
        f"{pcap.name}: records {dict(sorted(got.items()))} != ground truth {side['expected_tracked_connections']}"
    )
    # active plain-FTP data connections (server port 20) carry exactly the file
    want = Counter()
    for s in side["sessions"]:
        for t in s["transfers"]:
            if t["data_connection"] == 20:
                want[(t["direction"], t["size"])] += 1
    have = Counter()
    for r in records:
        if r["RemotePort"] == 20 and r["Protocol"] == "Tcp":
            assert r["ActionType"] == "InboundConnectionAccepted", r
            if r["ReceivedBytes"] and not r["SentBytes"]:
                have[("download", r["ReceivedBytes"])] += 1
            elif r["SentBytes"] and not r["ReceivedBytes"]:
                have[("upload", r["SentBytes"])] += 1
            else:
                have[("?", r["SentBytes"], r["ReceivedBytes"])] += 1
    assert have == want, f"{pcap.name}: active data connections {dict(have)} != files moved {dict(want)}"
    # every session the clients expected to fail shows as failed
    for s in side["sessions"]:
        if s["expect"] in ("refused", "unanswered"):
            rs = [r for r in records if r["RemoteIP"] == s["server_ip"] and r["RemotePort"] == s["server_port"]]
            assert rs and all(r["ActionType"] == "ConnectionFailed" for r in rs), (s, rs)
            assert all(r["ConnState"] == ("REJ" if s["expect"] == "refused" else "S0") for r in rs), rs


# ---------------------------------------------------------------------------
# fixtures and tests


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A capture recorded now in a fresh lab (own namespaces and subnet)."""
    _lab_or_fail()
    out = tmp_path_factory.mktemp("fresh")
    n = os.getpid() % 100
    side = record_fast(out, prefix=f"xo{os.getpid() % 100000}", subnet=f"10.77.{100 + n}")
    return out / side["pcap"], side


def _committed() -> list[str]:
    return sorted(p.stem for p in REAL.glob("*.pcap"))


def test_committed_captures_are_all_there():
    names = _committed()
    assert set(SCENARIOS) <= set(names), f"missing pcaps/real captures: {set(SCENARIOS) - set(names)}"
    total = 0
    for n in names:
        side = json.loads((REAL / f"{n}.json").read_text())
        assert side["pcap"] == f"{n}.pcap"
        assert side["sessions"], n
        total += (REAL / f"{n}.pcap").stat().st_size
    assert total < 15 * 1024 * 1024


def _case(name: str, tmp_path: Path, request):
    if name == "fresh":
        return request.getfixturevalue("fresh")
    _lab_or_fail()  # tshark and the sensor are needed here too
    return REAL / f"{name}.pcap", json.loads((REAL / f"{name}.json").read_text())


@pytest.mark.root  # the lab for "fresh"; _lab_or_fail for the committed ones too
@pytest.mark.parametrize("name", ["fresh", *_committed()])
def test_sensor_agrees_with_tshark(name, tmp_path, request):
    pcap, side = _case(name, tmp_path, request)
    records, alerts = run_sensor(pcap, side, tmp_path / "out")
    assert records, f"{pcap.name}: the sensor wrote no connection record"
    # this version tracks only the well-known ports; FTP passive data and TFTP
    # transfer flows (ephemeral ports) are compared once they are tracked
    records = [r for r in records if {r["LocalPort"], r["RemotePort"]} & set(TRACKED_PORTS)]
    pairs = compare(pcap, side, records)
    check_ground_truth(pcap, side, records)
    assert pairs
    if name == "ftp_repeated":
        # 5 successful sessions to one public address and port: the threshold (> 3) fires
        hits = [a for a in alerts if a.get("RemoteIP") == side["server_ip"] and a.get("RemotePort") == 21]
        assert hits, f"no threshold alert for 5 FTP sessions: {alerts}"
        uids = {r["Uid"] for r in records if r["RemotePort"] == 21}
        for a in hits:
            assert 3 < int(a["ConnectionCount"]) <= 5, a
            assert set(a["Uids"]) <= uids, a


@pytest.mark.root
def test_fresh_capture_has_every_case(fresh):
    """The fresh capture really holds passive, active, refused and unanswered."""
    pcap, side = fresh
    convs = [c for c in conversations(pcap) if c.ports() & set(TRACKED_PORTS)]
    kinds = Counter()
    for c in convs:
        if c.proto != "tcp":
            continue
        if c.handshake and c.originator[1] == 20:
            kinds["active-data"] += 1
        elif c.handshake:
            kinds["control"] += 1
        elif c.rst:
            kinds["refused"] += 1
        else:
            kinds["unanswered"] += 1
            syns = c.packets(c.originator)
            assert syns >= 2, f"expected SYN retransmissions: {c.summary()}"
    assert kinds == {"control": 5, "active-data": 5, "refused": 2, "unanswered": 1}, kinds
    # the lossy part really retransmitted payload on a tracked port
    resent = [c for c in convs for d in c.dirs.values() if d.wire_payload > d.seq_bytes()]
    assert any(c.originator[1] == 20 for c in resent), "no TCP retransmission in the lossy part"
