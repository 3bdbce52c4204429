"""End to end in span mode: the real daemon on a mirror port, watching other
hosts' FTP, TFTP and SMB with real servers and real clients.

The lab (tests/lab/netns.py, ``Lab(middle=True)`` plus ``add_host`` /
``add_span`` / ``mirror``), subnet 10.84.0.0/24, no route anywhere else::

    xss-cli 10.84.0.1 (host A) --+
    xss-h2  10.84.0.5 (host B) --+-- br0 in xss-mid --+-- xss-srv 10.84.0.2: vsftpd :21,
                                                      |   tftpd-hpa :69, smbd :445
                          tc mirred (ingress of       |
                          every bridge port) ---------+--> xss-msp ==veth==> xss-sp in xss-sen:
                                                           xfer-sensor run --mode span -i xss-sp

**Each packet is seen once.** The switch (a bridge in its own namespace)
copies what *enters* it on each host's port (``tc filter add dev P ingress
matchall action mirred egress mirror dev xss-msp``): every frame enters the
switch exactly once, through its sender's port, so the span port sees it
once -- as a real SPAN session of "ingress on all access ports" does.
Mirroring both directions of a port, or the ingress of both ends of a
conversation, would show every packet twice; the test proves it does not
happen here by comparing the span capture with a capture on the server's own
interface, packet for packet per conversation.

The sensor runs in the span namespace (it shares no socket table with any
client), config: ``inventory`` naming host A ``WS-SPAN-A`` (host B is not
named), ``ip_type_overrides`` marking the server Public,
``checksum_offload_nets`` the lab /24 (veth leaves the checksums to a NIC that
does not exist; a real mirror port carries complete ones). The clients run
in their own namespaces, one after another, as root: host A five anonymous
curl FTP sessions (EPSV, PASV, active EPRT; gets and puts), tftp-hpa, and
smbclient as a Samba user; host B three anonymous curl FTP sessions, an lftp
session in active mode, curl tftp:// and smbclient as guest. tcpdump records
the span interface (tshark's view: tests/lab/oracle.py) and the server's
interface.

Checks: DeviceName is the inventory's name for host A and host B's address;
nothing is attributed (no attribution helper process, the
``InitiatingProcess*`` columns empty, no ``AttributionSource`` column -- it
belongs to endpoint mode; AccountName is the protocol login); one record per
conversation on the mirror, each with the client as LocalIP and its bytes
and packets equal to tshark's; every file the clients moved, by name and
size; exactly one alert, for host A's FTP key (five sessions to the Public
server), keyed by ``WS-SPAN-A``, none for host B's three.

Needs root, iproute2 (tc), tcpdump, tshark and the servers and clients
(scripts/deps.sh); without them the tests FAIL, never skip.

Run: ``sudo .venv/bin/python -m pytest -q -s tests/test_e2e_span.py`` (about 10 s);
``XSS_KEEP=DIR`` keeps the records and both captures.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import psutil
import pytest

from sensor.records.mde import ENDPOINT_FIELDS  # the columns only endpoint mode writes
from tests.lab.netns import Capture, Lab, LabError, require_tools
from tests.lab.oracle import by_conversation, bytes_vs_tshark, conversations, record_ts
from tests.lab.scenarios import CLIENT_TOOLS, Recorder, Session
from tests.lab.sensor import SensorDaemon
from tests.lab.servers import FILES, Smbd, Tftpd, Vsftpd
from tests.lab.tools import keep_copies

pytestmark = [pytest.mark.lab, pytest.mark.root]

LAB_PREFIX = "xss"
LAB_SUBNET = "10.84.0"
HOST_B_IP = f"{LAB_SUBNET}.5"
HOST_A_NAME = "WS-SPAN-A"  # the inventory's name for host A (the lab's client, .1)
METRICS_PORT = 9784  # the daemon's /metrics, on the span namespace's loopback
CORRELATION_ID = "0b7f5a8e-9d4c-4c1b-8f6a-1e2d3c4b5a69"  # rules/t1071_002_file_transfer_protocols.yml
HUNT_PORTS = (20, 21, 990, 445, 139, 69)


@dataclass
class Run:
    host: str  # "A" | "B"
    ip: str
    session: Session
    rport: int
    transport: str  # Tcp | Udp
    data_channels: int  # FTP data connections / TFTP transfer flows expected
    primaries: list = field(default_factory=list)
    primary: dict | None = None
    data: list = field(default_factory=list)

    def what(self) -> str:
        return f"host {self.host} {' '.join(self.session.argv)}"


@dataclass
class SpanResult:
    runs: list[Run] = field(default_factory=list)
    connections: list[dict] = field(default_factory=list)
    transfers: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    weird: list[dict] = field(default_factory=list)
    span_convs: list = field(default_factory=list)  # tshark on the span interface
    server_convs: list = field(default_factory=list)  # tshark on the server's interface
    span_capture: dict = field(default_factory=dict)
    sensor_rc: int | None = None
    sensor_stderr: str = ""
    sensor_children: list[str] = field(default_factory=list)  # command lines, while it ran
    metrics: str = ""
    srv_ip: str = ""
    ips: dict = field(default_factory=dict)  # "A"/"B" -> address


def _data_channels(s: Session) -> int:
    if s.protocol == "tftp":
        return len(s.transfers)
    return sum(1 for t in s.transfers if t.data_port in (20, "passive"))


def _anon_ftp(r: Recorder, v: Vsftpd, host: str, n: int) -> list:
    """The first *n* of five anonymous curl FTP sessions (gets and puts; EPSV,
    PASV and active EPRT): each one session of the same hunt key."""
    runs = [
        lambda: r.curl_ftp(r.dl("a512k.bin", "pub/a512k.bin", v.pub, "passive", f"{host}1_"), mode="passive-epsv"),
        lambda: r.curl_ftp(
            r.ul("odd.bin", f"upload/span_{host}_pasv.bin", v.upload, "passive"),
            mode="passive-pasv",
            extra=["--disable-epsv"],
        ),
        lambda: r.curl_ftp(
            r.dl("tiny.txt", "pub/tiny.txt", v.pub, 20, f"{host}3_"), mode="active-eprt", extra=["-P", "-"]
        ),
        lambda: r.curl_ftp(r.dl("odd.bin", "pub/odd.bin", v.pub, "passive", f"{host}4_"), mode="passive-epsv"),
        lambda: r.curl_ftp(r.ul("tiny.txt", f"upload/span_{host}_epsv.txt", v.upload, "passive"), mode="passive-epsv"),
    ]
    return runs[:n]


def _plan(a: Recorder, b: Recorder, servers: dict) -> list:
    """(host, thunk) in run order, hosts alternating."""
    v, tf, smb = servers["ftp21"], servers["tftp"], servers["smb"]
    host_a = [
        *_anon_ftp(a, v, "a", 5),
        lambda: a.tftp_hpa(a.dl("blk1536.bin", "blk1536.bin", tf.dir, None, "a6_")),
        lambda: a.smbclient(
            "private",
            [
                a.dl("a512k.bin", "a512k.bin", smb.shares["private"], None, "a7_"),
                a.ul("odd.bin", "span_a.bin", smb.shares["private"]),
            ],
            port=445,
            user="xsuser1",
            mode="SMB3, NTLMSSP user",
        ),
    ]
    host_b = [
        *_anon_ftp(b, v, "b", 3),
        lambda: b.lftp_active(
            [
                b.dl("odd.bin", "odd.bin", v.local_root, 20, "b4_"),
                b.ul("blk1536.bin", "span_b_lftp.bin", v.local_root, 20),
            ],
            user="xsuser2",
        ),
        lambda: b.curl_tftp(b.ul("blk4096.bin", "span_b_tftp.bin", tf.dir)),
        lambda: b.smbclient(
            "public",
            [
                b.dl("tiny.txt", "tiny.txt", smb.shares["public"], None, "b6_"),
                b.ul("odd.bin", "span_b.bin", smb.shares["public"]),
            ],
            port=445,
            user=None,
            mode="guest",
        ),
    ]
    plan = []
    for i in range(max(len(host_a), len(host_b))):
        plan += [("A", host_a[i])] if i < len(host_a) else []
        plan += [("B", host_b[i])] if i < len(host_b) else []
    return plan


def _span_lab(workdir: Path) -> SpanResult:
    res = SpanResult()
    with Lab(prefix=LAB_PREFIX, subnet=LAB_SUBNET, workdir=workdir / "lab", middle=True) as lab:
        host_b_ns, _ = lab.add_host("h2", HOST_B_IP)
        span_ns, span_if = lab.add_span("sen")
        lab.mirror(lab.bridge_ports, "ingress")  # every frame enters the switch once: see the docstring
        res.srv_ip, res.ips = lab.srv_ip, {"A": lab.cli_ip, "B": HOST_B_IP}
        servers = {"ftp21": Vsftpd(lab).start(), "tftp": Tftpd(lab).start(), "smb": Smbd(lab, ports="445").start()}
        recs = {
            "A": Recorder(lab, "span-a", servers, "span mode, host A"),
            "B": Recorder(lab, "span-b", servers, "span mode, host B", ns=host_b_ns),
        }
        config = {
            "inventory": {lab.cli_ip: HOST_A_NAME},
            "ip_type_overrides": {f"{lab.srv_ip}/32": "Public"},
            "checksum_offload_nets": [f"{LAB_SUBNET}.0/24"],
        }
        sensor = SensorDaemon(
            lab,
            workdir / "sensor",
            config,
            ns=span_ns,
            interfaces=[span_if],
            extra=["--mode", "span", "--metrics-listen", f"127.0.0.1:{METRICS_PORT}"],
        )
        span_cap = Capture(lab, workdir / "span.pcap", iface=span_if, ns=span_ns)
        srv_cap = Capture(lab, workdir / "server.pcap", iface=lab.srv_if, ns=lab.srv_ns)
        span_cap.start()
        srv_cap.start()
        sensor.start()
        try:
            for host, thunk in _plan(recs["A"], recs["B"], servers):
                s = thunk()
                transport = "Udp" if s.transport == "udp" else "Tcp"
                res.runs.append(Run(host, res.ips[host], s, s.server_port, transport, _data_channels(s)))
            time.sleep(1.3)  # one more /metrics snapshot (published every second)
            res.metrics = sensor.scrape(METRICS_PORT)
            assert sensor.proc is not None
            res.sensor_children = [
                " ".join(c.cmdline()) for c in psutil.Process(sensor.proc.pid).children(recursive=True)
            ]
        finally:
            res.sensor_rc = sensor.stop()
            res.sensor_stderr = sensor.stderr()
            span_cap.stop()
            srv_cap.stop()
            res.span_capture = {"captured": span_cap.captured, "dropped": span_cap.dropped}
        res.connections, res.transfers, res.alerts, res.weird = (
            sensor.records(kind) for kind in ("connections", "transfers", "alerts", "weird")
        )
        for srv in servers.values():
            srv.stop()
    res.span_convs = conversations(workdir / "span.pcap", ports=None)
    res.server_convs = conversations(workdir / "server.pcap", ports=None)
    _assign(res)
    return res


def _assign(res: SpanResult) -> None:
    """Each run's record (its host's connection to the service port whose
    first packet lies within the run: runs never overlap) and the records
    linked to it (ParentUid)."""
    for run in res.runs:
        run.primaries = run.session.records(res.connections, run.ip)
        if len(run.primaries) == 1:
            run.primary = run.primaries[0]
            run.data = [c for c in res.connections if c.get("ParentUid") == run.primary["Uid"]]


@pytest.fixture(scope="module")
def span() -> SpanResult:
    if os.geteuid() != 0:
        pytest.fail("the span-mode end-to-end test must run as root (namespaces, servers, tc)")
    workdir = Path(tempfile.mkdtemp(prefix="xss-"))
    os.chmod(workdir, 0o755)
    try:
        require_tools(CLIENT_TOOLS)
        return _span_lab(workdir)
    except LabError as ex:
        pytest.fail(f"lab: {ex}")
    finally:
        keep_copies(
            "XSS_KEEP", (workdir / "sensor", workdir / "span.pcap", workdir / "server.pcap")
        )  # a folder: keep the records and captures
        shutil.rmtree(workdir, ignore_errors=True)


def _device(res: SpanResult, ip: str) -> str:
    return HOST_A_NAME if ip == res.ips["A"] else ip


# ---------------------------------------------------------------------------


def test_span_mirror_shows_each_packet_once_and_stays_in_the_lab(span: SpanResult):
    """The span capture holds every conversation the server's own interface
    saw, with the same packets per direction: nothing twice, nothing missing;
    every address is the lab's."""
    assert span.span_capture["dropped"] == 0, span.span_capture
    lab_net = ipaddress.ip_network(f"{LAB_SUBNET}.0/24")
    outside = [
        c.summary() for c in span.span_convs if not all(ipaddress.ip_address(ip) in lab_net for ip, _ in (c.a, c.b))
    ]
    assert span.span_convs and not outside, outside[:5]

    def per_dir(convs) -> Counter:
        return Counter({(c.proto, src, dst): c.packets(src) for c in convs for src, dst in ((c.a, c.b), (c.b, c.a))})

    mirrored, at_server = per_dir(span.span_convs), per_dir(span.server_convs)
    diff = {k: (mirrored[k], at_server[k]) for k in set(mirrored) | set(at_server) if mirrored[k] != at_server[k]}
    assert not diff, f"packets per direction, span vs server interface: {sorted(diff.items())[:10]}"
    assert sum(mirrored.values()) > 1000  # the transfers were there


def test_span_daemon_attempts_no_attribution(span: SpanResult):
    """Span mode starts no attribution helper, and no record names a process:
    InitiatingProcess* empty, the endpoint-only columns (AttributionSource
    among them) absent; AccountName is the protocol's login."""
    assert span.sensor_rc == 0, span.sensor_stderr[-3000:]
    assert not any("attribution" in c for c in span.sensor_children), span.sensor_children
    assert "attribution helper" not in span.sensor_stderr, span.sensor_stderr[-2000:]
    assert [ln for ln in span.metrics.splitlines() if ln.startswith("xfer_sensor_packets_received_total")], (
        "no /metrics from the daemon"
    )
    counted = [
        ln
        for ln in span.metrics.splitlines()
        if ln.startswith("xfer_sensor_attributions_total") and not ln.endswith(" 0")
    ]
    assert not counted, counted
    assert span.connections and span.transfers
    problems = []
    for c in span.connections:
        who = (c["InitiatingProcessFileName"], c["InitiatingProcessId"], c["InitiatingProcessAccountName"])
        if who != ("", 0, ""):
            problems.append(f"{c['Uid']}: process {who}")
        if any(k in c for k in ENDPOINT_FIELDS):
            problems.append(f"{c['Uid']}: endpoint columns {[k for k in ENDPOINT_FIELDS if k in c]}")
        if c["AccountName"] != c["AppUser"]:
            problems.append(f"{c['Uid']}: AccountName {c['AccountName']!r} != login {c['AppUser']!r}")
    for t in span.transfers:
        if t.get("InitiatingProcessFileName") or "AttributionSource" in t:
            problems.append(
                f"transfer {t['Filename']}: {t.get('InitiatingProcessFileName')} {t.get('AttributionSource')}"
            )
    assert not problems, "\n".join(problems[:20])


def test_span_one_record_per_conversation_with_tshark_bytes(span: SpanResult):
    """Every TCP/UDP conversation on the mirror has exactly one record and
    every record a conversation; bytes and packets per direction equal
    tshark's; the client is LocalIP (also for the active FTP data channels
    the server opened) and DeviceName its inventory name, else its address."""
    recs, convs = by_conversation(span.connections, span.span_convs)
    missing = [cv.summary() for k, cvs in convs.items() if len(recs.get(k, ())) != len(cvs) for cv in cvs]
    extra = [c["Uid"] for k, rs in recs.items() if k not in convs for c in rs]
    assert not missing and not extra, (missing[:10], extra[:10])
    problems = []
    for c in span.connections:
        where = f"{c['Protocol']} {c['LocalIP']}:{c['LocalPort']} -> {c['RemoteIP']}:{c['RemotePort']}"
        got, oracle = bytes_vs_tshark(c, recs, convs)
        if got != oracle:
            problems.append(f"{where}: bytes/packets sent, received {got} != tshark {oracle}")
        if c["LocalIP"] not in span.ips.values() or c["RemoteIP"] != span.srv_ip:
            problems.append(f"{where}: the client is not LocalIP")
        if c["DeviceName"] != _device(span, c["LocalIP"]):
            problems.append(f"{where}: DeviceName {c['DeviceName']!r}")
        if c["RemoteIPType"] != "Public":
            problems.append(f"{where}: RemoteIPType {c['RemoteIPType']}")
    assert not problems, "\n".join(problems[:30])
    assert not span.weird, span.weird[:5]
    assert {c["DeviceName"] for c in span.connections} == {HOST_A_NAME, HOST_B_IP}


def test_span_every_run_has_its_connections_and_files(span: SpanResult):
    """Each client run: exactly one control connection / request / SMB
    session record (outbound, ConnectionSuccess), its data channels / TFTP
    transfer flows linked to it (inbound when the server opened them: active
    FTP), and in transfers.jsonl every file it moved -- name, direction and
    size, complete."""
    problems = []
    for run in span.runs:
        if run.primary is None:
            problems.append(f"{run.what()}: {len(run.primaries)} records on port {run.rport}")
            continue
        p = run.primary
        if p["ActionType"] != "ConnectionSuccess" or p["Direction"] != "outbound":
            problems.append(f"{run.what()}: {p['ActionType']} {p['Direction']}")
        if len(run.data) != run.data_channels:
            problems.append(f"{run.what()}: {len(run.data)} linked records, {run.data_channels} expected")
        for d in run.data:  # active FTP data: the server opened it (from port 20); the rest the client
            want = "inbound" if d["RemotePort"] == 20 else "outbound"
            if d["Direction"] != want or d["ActionType"] not in ("ConnectionSuccess", "InboundConnectionAccepted"):
                problems.append(f"{run.what()}: data {d['RemotePort']}: {d['Direction']} {d['ActionType']}")
        uids = {p["Uid"], *(d["Uid"] for d in run.data)}
        tr = [t for t in span.transfers if t.get("ControlUid") in uids or t.get("Uid") in uids]
        got = sorted(
            (t["Direction"], PurePosixPath(t["Filename"].replace("\\", "/")).name, t["Bytes"], t["Complete"])
            for t in tr
            if t["Direction"] != "listing"
        )
        want = sorted(
            (t.direction, PurePosixPath(t.remote_path).name, FILES[t.file][0], True) for t in run.session.transfers
        )
        if got != want:
            problems.append(f"{run.what()}: transfers {got} != files moved {want}")
        if any(t["ClientIP"] != run.ip or t["ServerIP"] != span.srv_ip for t in tr):
            problems.append(f"{run.what()}: transfer endpoints {[(t['ClientIP'], t['ServerIP']) for t in tr]}")
    assert len(span.runs) == 13
    assert not problems, "\n".join(problems)


def test_span_alert_for_more_than_three_ftp_sessions_keyed_by_device_name(span: SpanResult):
    """Host A's five anonymous FTP sessions to the Public server raise exactly
    one T1071.002 alert, at the fourth, keyed by DeviceName WS-SPAN-A (the
    inventory's); host B's three raise none; no key with <= 3 connections
    alerts."""
    alerts = [a for a in span.alerts if a.get("RuleId") == CORRELATION_ID and "ConnectionCount" in a]

    def key(r: dict) -> tuple:
        return (r["DeviceName"], r["InitiatingProcessFileName"], r["RemoteIP"], r["RemotePort"], r["AccountName"])

    counted = Counter(
        key(c)
        for c in span.connections
        if c["RemotePort"] in HUNT_PORTS and c["RemoteIPType"] == "Public" and c["ActionType"] == "ConnectionSuccess"
    )
    ftp_a = (HOST_A_NAME, "", span.srv_ip, 21, "anonymous")
    ftp_b = (HOST_B_IP, "", span.srv_ip, 21, "anonymous")
    print(f"\nkeys: {dict(counted)}\nalerts: {[key(a) for a in alerts]}")
    assert counted[ftp_a] == 5 and counted[ftp_b] == 3, counted
    got = Counter(key(a) for a in alerts)
    assert got == Counter({k: 1 for k, n in counted.items() if n > 3}) == Counter({ftp_a: 1}), got
    (a,) = alerts
    firsts = sorted((c for c in span.connections if key(c) == ftp_a), key=lambda c: record_ts(c["FirstSeen"]))[:4]
    assert a["ConnectionCount"] == 4 and a["Uids"] == [c["Uid"] for c in firsts], a
    assert a["Timestamp"] == firsts[3]["FirstSeen"], a
