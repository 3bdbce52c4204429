"""The protocol analyzers end to end, on the real captures in pcaps/real.

Every ``pcaps/real/<name>.pcap`` (real vsftpd / tftpd-hpa / smbd with curl /
lftp / tftp-hpa / smbclient, recorded by ``pcaps/record_real.py``) is
replayed with ``xfer-sensor replay PCAP --out DIR --config CFG`` (the
server's /32 typed Public, ``home_net`` the client's /32, as in
``tests/test_real_tshark_oracle.py``) and its application-layer output is
judged three ways:

1. ``test_sidecar_truth`` -- against the sidecar ``<name>.json`` (what the
   clients really did): every file moved is a transfer record with the name
   on the wire, the direction and the EXACT size, ``Complete``; users, SMB
   dialect / share, FTP data channels linked to their command (parent Uid,
   bytes), TFTP request records, FTPS (explicit: the upgrade and nothing
   parsed after; implicit: SNI only when the client sent one), SMB
   encryption; nothing invented (no extra transfer, no weird).
2. ``test_tshark_*`` -- against tshark's own dissectors (``tests/lab/tshark_app.py``,
   pyshark): FTP commands, users, replies, data conversations and their
   bytes; TFTP requests, options, blocks and bytes; SMB2 dialect, NTLMSSP
   user, trees, creates and READ/WRITE byte totals; TLS ClientHello SNI.
3. ``test_replay_is_deterministic`` -- a second replay writes byte-identical
   transfers.jsonl and connections.jsonl.

Every failed check of a test is collected and reported together.

Needs tshark (and pyshark) for the tshark tests; without it they FAIL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.lab.tools import sensor_cmd

HERE = Path(__file__).resolve().parent

REPO = HERE.parent
REAL = REPO / "pcaps" / "real"
CAPTURES = sorted(p.stem for p in REAL.glob("*.pcap"))
LOSSY = {"ftp_lossy", "smb_lossy"}


class Verdict:
    """Collects every failed check of one test, then fails with all of them."""

    def __init__(self, capture: str) -> None:
        self.capture = capture
        self.failures: list[str] = []

    def check(self, ok: bool, msg: str) -> bool:
        if not ok:
            self.failures.append(msg)
        return bool(ok)

    def eq(self, got, want, what: str) -> bool:
        return self.check(got == want, f"{what}: sensor {got!r}, expected {want!r}")

    def finish(self) -> None:
        if self.failures:
            pytest.fail(f"{self.capture}:\n  " + "\n  ".join(self.failures), pytrace=False)


# ---------------------------------------------------------------------------
# running the sensor (module cache: one replay per capture)


@dataclass
class Run:
    out: Path
    side: dict
    connections: list
    transfers: list
    weird: list
    alerts: list

    def raw(self, name: str) -> bytes:
        p = self.out / name
        return p.read_bytes() if p.exists() else b""

    def by_uid(self) -> dict:
        return {r["Uid"]: r for r in self.connections}


def run_sensor(name: str, out: Path) -> Run:
    side = json.loads((REAL / f"{name}.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "config.yaml"
    cfg.write_text(
        json.dumps(
            {  # JSON is YAML
                "ip_type_overrides": {f"{side['server_ip']}/32": "Public"},
                "home_net": [f"{side['client_ip']}/32"],
                # a veth capture: the lab server's checksums are offloaded too (docs/engine.md)
                "checksum_offload_nets": [f"{side['server_ip']}/32"],
            }
        )
    )
    cp = subprocess.run(
        [*sensor_cmd(), "replay", str(REAL / f"{name}.pcap"), "--out", str(out), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, f"xfer-sensor replay {name} exited {cp.returncode}\n{cp.stderr}"

    def load(f):
        p = out / f
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    return Run(out, side, load("connections.jsonl"), load("transfers.jsonl"), load("weird.jsonl"), load("alerts.jsonl"))


@pytest.fixture(scope="module")
def sensor(tmp_path_factory):
    cache: dict[str, Run] = {}
    base = tmp_path_factory.mktemp("transfers")

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = run_sensor(name, base / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def tshark():
    """tshark's application view per capture, computed once per module."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (apt-get install tshark); the oracle tests need it")
    from tests.lab import tshark_app

    cache: dict[tuple[str, str], object] = {}

    def get(kind: str, name: str):
        key = (kind, name)
        if key not in cache:
            pcap = REAL / f"{name}.pcap"
            cache[key] = {
                "ftp": tshark_app.ftp_view,
                "tftp": tshark_app.tftp_view,
                "smb": tshark_app.smb_view,
                "tls": lambda p: tshark_app.client_hellos(p, (21, 990)),
            }[kind](pcap)
        return cache[key]

    return get


# ---------------------------------------------------------------------------
# helpers


def family(side: dict) -> str:
    protos = {s["protocol"].split("-")[0] for s in side["sessions"]}
    assert len(protos) == 1, protos
    return protos.pop()  # ftp | ftps | tftp | smb


def wire_name(t: dict) -> str:
    """The name the client put on the wire: curl CWDs into the directories
    of the URL path and sends the last component; lftp -o, smbclient and
    tftp send the remote name as given."""
    return PurePosixPath(t["remote_path"].replace("\\", "/")).name


def session_record(run: Run, s: dict, port: int, proto: str = "Tcp") -> dict:
    """The one record of session *s* on *port*: first seen while the client ran."""
    rs = [
        r
        for r in run.connections
        if r["RemotePort"] == port
        and r["Protocol"] == proto
        and r["RemoteIP"] == s["server_ip"]
        and s["started"] <= r["FirstSeen"] <= s["ended"]
    ]
    assert len(rs) == 1, f"session {s['command_line'][:3]}...: {len(rs)} records on {port}: {rs}"
    return rs[0]


def client_listed(s: dict) -> bool:
    """Did the client run a directory listing (LIST/NLST/MLSD, SMB ls)?"""
    words = " ".join(s["command_line"])
    if s["tool"] == "curl":
        return (
            "--list-only" in s["command_line"]
            or "-l" in s["command_line"]
            or any(a.startswith(("ftp://", "ftps://")) and a.endswith("/") for a in s["command_line"])
        )
    return bool(re.search(r"(^|[;\s])(ls|dir|nlist|cls|mls|find)(\s|;|$)", words))


def smb_tree(s: dict) -> str:
    m = re.match(r"^//([^/]+)/([^/]+)$", s["command_line"][1])
    assert m, s["command_line"]
    return f"\\\\{m.group(1)}\\{m.group(2)}"


# smbclient -N (guest) still names a user in its NTLMSSP AUTHENTICATE: the
# local login, root in the lab; smbd maps it to guest (the sidecar's user)
# and says so with the Guest session flag (asserted against tshark below).
WIRE_USER = {"smb139": "root"}


# ---------------------------------------------------------------------------
# 1. the sidecar's ground truth


@pytest.mark.parametrize("name", CAPTURES)
def test_sidecar_truth(name, sensor):
    run = sensor(name)
    side = run.side
    v = Verdict(name)
    fam = family(side)
    uids = run.by_uid()

    # nothing odd on these captures: the lossy ones lost packets only past
    # the capture point, so every byte is in the capture as well
    v.eq([(w["Name"], w["Source"], w["Detail"]) for w in run.weird], [], "weird records")

    owned: Counter = Counter()  # transfer records accounted for
    if fam == "ftp":
        _sidecar_ftp(run, v, owned)
    elif fam == "ftps":
        _sidecar_ftps(run, v)
    elif fam == "tftp":
        _sidecar_tftp(run, v, owned)
    elif fam == "smb":
        _sidecar_smb(name, run, v, owned)

    # nothing invented: every transfer record is one the clients made
    # (a listing only where a client listed)
    listed = any(client_listed(s) for s in side["sessions"])
    for i, t in enumerate(run.transfers):
        if owned[i]:
            continue
        if t["Direction"] == "listing" and listed:
            continue
        v.check(False, f"transfer record the clients did not make: {t}")
    # Files on the owning record lists exactly its transfers' names, in order
    per_owner: dict[str, list] = {}
    for t in run.transfers:
        per_owner.setdefault(t["ControlUid"], []).append(t["Filename"])
    for uid, names in per_owner.items():
        r = uids.get(uid)
        if v.check(r is not None, f"transfer ControlUid {uid} is no connection record"):
            v.eq(r["AdditionalFields"].get("Files"), names, f"{uid} AdditionalFields.Files")
    v.finish()


def _sidecar_ftp(run: Run, v: Verdict, owned: Counter) -> None:
    uids = run.by_uid()
    claimed: set[str] = set()
    for s in run.side["sessions"]:
        ctrl = session_record(run, s, s["server_port"])
        cu = ctrl["Uid"]
        v.eq(ctrl["ActionType"], "ConnectionSuccess", f"{cu} ActionType")
        v.eq(ctrl["AppProtocol"], "ftp", f"{cu} AppProtocol")
        v.eq(ctrl["AppUser"], s["user"], f"{cu} AppUser")
        v.eq(ctrl["AdditionalFields"].get("FtpLoginSuccess"), True, f"{cu} FtpLoginSuccess")
        mode = "passive" if s["mode"].startswith("passive") else "active"
        sent = recv = 0
        for f in s["transfers"]:
            if f["direction"] == "download":
                recv += f["size"]
            else:
                sent += f["size"]
            want = (wire_name(f), f["direction"])
            what = f"{s['tool']} {f['direction']} {want[0]}"
            cands = [
                i
                for i, t in enumerate(run.transfers)
                if not owned[i] and t["ControlUid"] == cu and (t["Filename"], t["Direction"]) == want
            ]
            if not v.check(len(cands) == 1, f"{what}: {len(cands)} transfer records on control {cu}"):
                continue
            i = cands[0]
            owned[i] += 1
            t = run.transfers[i]
            v.eq(t["Protocol"], "ftp", f"{what} Protocol")
            v.eq(t["User"], s["user"], f"{what} User")
            v.eq(t["Command"], "RETR" if f["direction"] == "download" else "STOR", f"{what} Command")
            v.eq(t["Mode"], mode, f"{what} Mode")
            v.eq(t["ReplyCode"], 226, f"{what} ReplyCode")
            v.eq(t["FilenameTruncated"], False, f"{what} FilenameTruncated")
            v.eq(t["Bytes"], f["size"], f"{what} Bytes")
            v.eq(t["Complete"], True, f"{what} Complete")
            if f["direction"] == "download":
                v.eq(t.get("AnnouncedSize"), f["size"], f"{what} AnnouncedSize (vsftpd's 150 reply)")
            if not v.eq(len(t["DataUids"]), 1, f"{what} number of DataUids"):
                continue
            du = t["DataUids"][0]
            v.eq(t["Uid"], du, f"{what} Uid")
            d = uids.get(du)
            if not v.check(d is not None, f"{what}: DataUid {du} is no connection record"):
                continue
            claimed.add(du)
            v.eq(d["AppProtocol"], "ftp-data", f"{what} data {du} AppProtocol")
            v.eq(d["ParentUid"], cu, f"{what} data {du} ParentUid")
            # the device is the client: download bytes arrive, upload bytes leave
            got = (
                (d["ReceivedBytes"], d["SentBytes"])
                if f["direction"] == "download"
                else (d["SentBytes"], d["ReceivedBytes"])
            )
            v.eq(got, (f["size"], 0), f"{what} data {du} bytes (command direction, other)")
            if f["data_connection"] == 20:
                v.eq(d["RemotePort"], 20, f"{what} data {du} RemotePort")
        v.eq((ctrl["DataSentBytes"], ctrl["DataReceivedBytes"]), (sent, recv), f"{cu} DataSentBytes/DataReceivedBytes")
    # every data connection belongs to a transfer of its control session
    for r in run.connections:
        if r["AppProtocol"] == "ftp-data" and r["Uid"] not in claimed:
            v.check(
                False,
                f"ftp-data record {r['Uid']} ({r['RemoteIP']}:{r['RemotePort']}, parent "
                f"{r['ParentUid']!r}) belongs to no transfer",
            )
    want_data = sum(len(s["transfers"]) for s in run.side["sessions"])
    v.eq(sum(r["AppProtocol"] == "ftp-data" for r in run.connections), want_data, "ftp-data records")


def _sidecar_ftps(run: Run, v: Verdict) -> None:
    for s in run.side["sessions"]:
        ctrl = session_record(run, s, s["server_port"])
        cu = ctrl["Uid"]
        fields = ctrl["AdditionalFields"]
        v.eq(ctrl["ActionType"], "ConnectionSuccess", f"{cu} ActionType")
        v.eq(ctrl["AppProtocol"], "ftps", f"{cu} AppProtocol")
        # both clients upgrade before USER (tshark test: no USER in the clear)
        v.eq(ctrl["AppUser"], "", f"{cu} AppUser (USER is inside TLS)")
        if s["protocol"] == "ftps-explicit":
            method = "AUTH SSL" if "AUTH SSL" in s["mode"] else "AUTH TLS"
            v.eq(method, {"curl": "AUTH SSL", "lftp": "AUTH TLS"}[s["tool"]], "sidecar mode")
            v.eq(fields.get("TlsUpgrade"), method, f"{cu} TlsUpgrade")
            # nothing parsed after the upgrade: no login, no files
            v.eq(sorted(set(fields) - {"TlsSni"}), ["TlsUpgrade"], f"{cu} AdditionalFields keys")
        else:
            v.check("TlsUpgrade" not in fields, f"{cu}: TlsUpgrade on implicit FTPS: {fields}")
            # RFC 6066 s3: no IP literal in SNI.  curl (OpenSSL) obeys and sends
            # none for ftps://10.77.0.2; lftp (GnuTLS) sends the IP literal
            # (tshark confirms both in test_tshark_tls_sni).
            want = {"curl": None, "lftp": s["server_ip"]}[s["tool"]]
            v.eq(fields.get("TlsSni"), want, f"{cu} TlsSni ({s['tool']})")
            v.eq(sorted(set(fields) - {"TlsSni"}), [], f"{cu} AdditionalFields keys")
    # the PASV/EPSV replies and the file names are encrypted: no transfer can
    # be named. The data connections are still followed (any new connection
    # between the two hosts while the session lives): each is an ftps-data
    # record under its control session, which carries their bytes -- at
    # least the files' sizes (TLS adds its overhead).
    v.eq(run.transfers, [], "transfer records on FTPS")
    data = [r for r in run.connections if r["AppProtocol"] in ("ftp-data", "ftps-data")]
    v.eq(len(data), sum(len(s["transfers"]) for s in run.side["sessions"]), "ftps-data records (one per file)")
    ctrl_uids = {r["Uid"] for r in run.connections if r["AppProtocol"] == "ftps"}
    for r in data:
        v.eq(r["AppProtocol"], "ftps-data", f"{r['Uid']} AppProtocol")
        v.check(r["ParentUid"] in ctrl_uids, f"{r['Uid']}: ParentUid {r['ParentUid']!r} is no FTPS session")
    ctrls = sorted((r for r in run.connections if r["AppProtocol"] == "ftps"), key=lambda r: r["FirstSeen"])
    v.eq(len(ctrls), len(run.side["sessions"]), "FTPS control sessions")
    for s, c in zip(run.side["sessions"], ctrls):  # both in the order the sessions ran
        moved = sum(f["size"] for f in s["transfers"])
        children = [r for r in data if r["ParentUid"] == c["Uid"]]
        v.eq(
            (c["DataSentBytes"], c["DataReceivedBytes"]),
            (sum(r["SentBytes"] for r in children), sum(r["ReceivedBytes"] for r in children)),
            f"{c['Uid']} data bytes = its channels'",
        )
        v.check(
            c["DataSentBytes"] + c["DataReceivedBytes"] >= moved,
            f"{c['Uid']}: data bytes {c['DataSentBytes']}+{c['DataReceivedBytes']} < files {moved}",
        )


def _sidecar_tftp(run: Run, v: Verdict, owned: Counter) -> None:
    uids = run.by_uid()
    for s in run.side["sessions"]:
        req = session_record(run, s, 69, "Udp")
        ru = req["Uid"]
        (f,) = s["transfers"]
        name, size = wire_name(f), f["size"]
        fields = req["AdditionalFields"]
        v.eq(req["ActionType"], "ConnectionSuccess", f"{ru} ActionType (the server answered from a new port)")
        v.eq(req["AppProtocol"], "tftp", f"{ru} AppProtocol")
        v.eq(fields.get("TftpOp"), "read" if f["direction"] == "download" else "write", f"{ru} TftpOp")
        v.eq(fields.get("TftpFilename"), name, f"{ru} TftpFilename")
        v.eq(fields.get("TftpMode"), "octet", f"{ru} TftpMode (tftp -m binary, curl)")
        blksize = 512
        if s["tool"] == "curl":
            blksize = int(re.search(r"--tftp-blksize\s+(\d+)", " ".join(s["command_line"])).group(1))
            # curl sends tsize (0 on a read, the file's size on a write), blksize, timeout
            opts = fields.get("TftpOptions") or {}
            v.eq(opts.get("blksize"), str(blksize), f"{ru} TftpOptions.blksize")
            v.eq(opts.get("tsize"), "0" if f["direction"] == "download" else str(size), f"{ru} TftpOptions.tsize")
        else:
            v.check("TftpOptions" not in fields, f"{ru}: tftp-hpa sent no options, sensor has {fields}")
        what = f"{s['tool']} {f['direction']} {name}"
        cands = [i for i, t in enumerate(run.transfers) if t["ControlUid"] == ru]
        if not v.check(len(cands) == 1, f"{what}: {len(cands)} transfer records for request {ru}"):
            continue
        i = cands[0]
        owned[i] += 1
        t = run.transfers[i]
        v.eq(
            (t["Protocol"], t["Command"]),
            ("tftp", "RRQ" if f["direction"] == "download" else "WRQ"),
            f"{what} Protocol/Command",
        )
        v.eq(t["Filename"], name, f"{what} Filename")
        v.eq(t["Direction"], f["direction"], f"{what} Direction")
        v.eq(t["Bytes"], size, f"{what} Bytes")
        v.eq(t["Complete"], True, f"{what} Complete")
        v.eq(t["BlockSize"], blksize, f"{what} BlockSize")
        # the last block is short -- empty when the size is a multiple of it
        v.eq(t["Blocks"], size // blksize + 1, f"{what} Blocks")
        v.eq(
            (t["ServerIP"], t["ServerPort"], t["ClientIP"]),
            (s["server_ip"], 69, run.side["client_ip"]),
            f"{what} endpoints",
        )
        x = uids.get(t["Uid"])
        if not v.check(x is not None, f"{what}: transfer Uid {t['Uid']} is no connection record"):
            continue
        v.eq(
            (x["AppProtocol"], x["ParentUid"], x["LocalPort"]),
            ("tftp", ru, req["LocalPort"]),
            f"{what} transfer flow AppProtocol/ParentUid/LocalPort",
        )
        # the request record carries the transfer flow's bytes (client's view)
        v.eq(
            (req["DataSentBytes"], req["DataReceivedBytes"]),
            (x["SentBytes"], x["ReceivedBytes"]),
            f"{ru} DataSentBytes/DataReceivedBytes",
        )
        file_side = req["DataReceivedBytes"] if f["direction"] == "download" else req["DataSentBytes"]
        v.eq(
            file_side - size,
            4 * t["Blocks"] + (0 if f["direction"] == "upload" or s["tool"] != "curl" else _oack_len(fields, size)),
            f"{ru} file-side data bytes minus the file (4-byte DATA headers, OACK)",
        )


def _oack_len(fields: dict, size: int) -> int:
    """Length of the OACK tftpd-hpa answers a curl read with: opcode, then
    each option the client sent, tsize filled in with the file's size."""
    n = 2
    for k, val in (fields.get("TftpOptions") or {}).items():
        n += len(k) + 1 + len(str(size) if k == "tsize" else val) + 1
    return n


def _sidecar_smb(name: str, run: Run, v: Verdict, owned: Counter) -> None:
    (s,) = run.side["sessions"]
    r = session_record(run, s, s["server_port"])
    u = r["Uid"]
    f = r["AdditionalFields"]
    user = WIRE_USER.get(name, s["user"])
    v.eq(r["ActionType"], "ConnectionSuccess", f"{u} ActionType")
    v.eq(r["AppProtocol"], "smb", f"{u} AppProtocol")
    v.eq(r["AppUser"], user, f"{u} AppUser")
    v.eq(f.get("SmbDialect"), "SMB 3.1.1", f"{u} SmbDialect (smbclient 4.17 and smbd 4.17: SMB3)")
    if s["server_port"] == 139:
        v.eq(f.get("NetbiosCalledName"), f"{s['server_ip']}<20>", f"{u} NetbiosCalledName")
    if name == "smb_encrypted":
        # the session setup is in the clear, everything after it encrypted:
        # user and dialect visible, no tree, no file name
        v.eq(f.get("SmbEncrypted"), True, f"{u} SmbEncrypted")
        v.check("SmbTrees" not in f, f"{u}: SmbTrees from an encrypted session: {f.get('SmbTrees')}")
        v.eq(run.transfers, [], "transfer records from an encrypted session")
        return
    v.check("SmbEncrypted" not in f, f"{u}: SmbEncrypted on a clear session")
    tree = smb_tree(s)
    v.check(tree in (f.get("SmbTrees") or []), f"{u} SmbTrees {f.get('SmbTrees')} lack {tree}")
    for x in s["transfers"]:
        want = (wire_name(x), x["direction"])
        what = f"{x['direction']} {want[0]}"
        cands = [i for i, t in enumerate(run.transfers) if not owned[i] and (t["Filename"], t["Direction"]) == want]
        if not v.check(len(cands) == 1, f"{what}: {len(cands)} transfer records"):
            continue
        i = cands[0]
        owned[i] += 1
        t = run.transfers[i]
        v.eq(
            (t["Protocol"], t["Command"]),
            ("smb", "READ" if x["direction"] == "download" else "WRITE"),
            f"{what} Protocol/Command",
        )
        v.eq(t["Bytes"], x["size"], f"{what} Bytes")
        v.eq(t["Complete"], True, f"{what} Complete")
        v.eq(t["Share"], tree, f"{what} Share")
        v.eq(t["User"], user, f"{what} User")
        v.eq((t["Uid"], t["ControlUid"]), (u, u), f"{what} Uid/ControlUid")
        v.eq(t["ServerPort"], s["server_port"], f"{what} ServerPort")


# ---------------------------------------------------------------------------
# 2. tshark as the independent oracle


def _by_endpoints(run: Run, a: tuple, b: tuple, proto: str = "Tcp") -> dict | None:
    key = frozenset((a, b))
    rs = [
        r
        for r in run.connections
        if r["Protocol"] == proto
        and frozenset(((r["LocalIP"], r["LocalPort"]), (r["RemoteIP"], r["RemotePort"]))) == key
    ]
    assert len(rs) <= 1, rs
    return rs[0] if rs else None


FTP_CAPTURES = [n for n in CAPTURES if n.startswith("ftp")]
SMB_CAPTURES = [n for n in CAPTURES if n.startswith("smb")]


@pytest.mark.lab
@pytest.mark.parametrize("name", FTP_CAPTURES)
def test_tshark_ftp(name, sensor, tshark):
    from tests.lab.tshark_app import DATA_COMMANDS

    run = sensor(name)
    view = tshark("ftp", name)
    v = Verdict(name)
    uids = run.by_uid()
    assert view.controls or name == "ftps_implicit", f"{name}: tshark sees no FTP control connection"
    seen_transfers: set[int] = set()
    for ctl in view.controls.values():
        r = _by_endpoints(run, ctl.client, ctl.server)
        if not v.check(r is not None, f"tshark control {ctl.client}->{ctl.server}: no sensor record"):
            continue
        cu = r["Uid"]
        users = ctl.users
        v.eq(r["AppUser"], users[-1] if users else "", f"{cu} AppUser (tshark USER args {users})")
        v.eq(r["AppProtocol"], "ftps" if ctl.tls_upgrade else "ftp", f"{cu} AppProtocol")
        v.eq(r["AdditionalFields"].get("TlsUpgrade"), ctl.tls_upgrade, f"{cu} TlsUpgrade")
        login = [c.reply for c in ctl.commands if c.command in ("USER", "PASS") and c.reply and c.reply >= 200]
        v.eq(
            r["AdditionalFields"].get("FtpLoginSuccess"),
            (login[-1] == 230) if login else None,
            f"{cu} FtpLoginSuccess (tshark final USER/PASS reply {login})",
        )
        data_cmds = [c for c in ctl.commands if c.command in DATA_COMMANDS]
        mine = [i for i, t in enumerate(run.transfers) if t["ControlUid"] == cu]
        v.eq(
            len(mine),
            len(data_cmds),
            f"{cu} transfer records vs tshark data commands {[(c.command, c.arg) for c in data_cmds]}",
        )
        for c in data_cmds:
            hits = [
                i for i in mine if (run.transfers[i]["Command"], run.transfers[i]["Filename"]) == (c.command, c.arg)
            ]
            if not v.check(len(hits) == 1, f"{cu}: tshark {c.command} {c.arg}: {len(hits)} transfer records"):
                continue
            seen_transfers.add(hits[0])
            t = run.transfers[hits[0]]
            v.eq(t["ReplyCode"], c.reply, f"{c.command} {c.arg} ReplyCode")
            v.eq(t["Direction"], DATA_COMMANDS[c.command], f"{c.command} {c.arg} Direction")
    # data conversations: tshark's bytes, the derived command, the sensor's link
    for d in view.data:
        what = f"tshark data stream {d.stream} {d.a}<->{d.b}"
        if not v.check(
            d.control is not None and d.command is not None,
            f"{what}: no PORT/EPRT/PASV/EPSV announcement and data command found",
        ):
            continue
        server_ip = d.control.server[0]
        kind = d.announcement[1]
        cmdline = f"{d.command.command} {d.command.arg}"
        # tshark's own link, with its two known differences (module docstring
        # of tests/lab/tshark_app.py): EPRT sets up no data channel at all,
        # and a channel opened before the data command is named after the
        # command sent last -- curl's TYPE I
        if kind == "EPRT":
            v.eq((d.setup_method, d.tshark_command), ("", ""), f"{what}: tshark's EPRT channel (none)")
        elif d.tshark_command != cmdline:
            v.eq(d.tshark_command, "TYPE I", f"{what}: tshark's ftp-data.command for {cmdline}")
        ctrl_rec = _by_endpoints(run, d.control.client, d.control.server)
        rec = _by_endpoints(run, d.a, d.b)
        if not v.check(rec is not None and ctrl_rec is not None, f"{what}: no sensor record"):
            continue
        direction = DATA_COMMANDS[d.command.command]
        nbytes = d.bytes_from(server_ip) if direction in ("download", "listing") else d.bytes_from(d.control.client[0])
        other = d.bytes_from(d.control.client[0]) if direction in ("download", "listing") else d.bytes_from(server_ip)
        v.eq(other, 0, f"{what}: tshark bytes against the command's direction")
        v.eq(rec["AppProtocol"], "ftp-data", f"{what} AppProtocol")
        v.eq(rec["ParentUid"], ctrl_rec["Uid"], f"{what} ParentUid")
        ts = [
            t
            for t in run.transfers
            if t["ControlUid"] == ctrl_rec["Uid"]
            and (t["Command"], t["Filename"]) == (d.command.command, d.command.arg)
        ]
        if not v.check(len(ts) == 1, f"{what}: {len(ts)} transfers for {cmdline}"):
            continue
        t = ts[0]
        v.eq(t["DataUids"], [rec["Uid"]], f"{cmdline} DataUids")
        v.eq(t["Bytes"], nbytes, f"{cmdline} Bytes (tshark: data stream {d.stream})")
        v.eq(t["Mode"], "active" if kind in ("PORT", "EPRT") else "passive", f"{cmdline} Mode")
        v.check(uids.get(rec["Uid"]) is not None, f"{what}: record lost")
    # nothing on the sensor's side that tshark does not see
    for i, t in enumerate(run.transfers):
        v.check(i in seen_transfers, f"transfer with no tshark data command: {t}")
    v.finish()


@pytest.mark.lab
@pytest.mark.parametrize("name", [n for n in CAPTURES if n.startswith("ftps")])
def test_tshark_tls_sni(name, sensor, tshark):
    """TlsSni on the FTPS control connections == the SNI tshark reads in the
    client's ClientHello.  What the clients send to ``ftps://10.77.0.2``:
    curl (OpenSSL) no SNI, as RFC 6066 s3 requires for an IP literal; lftp
    (GnuTLS) the IP literal "10.77.0.2" itself."""
    run = sensor(name)
    hellos = tshark("tls", name)
    v = Verdict(name)
    tools = {}
    for s in run.side["sessions"]:
        tools[session_record(run, s, s["server_port"])["Uid"]] = s["tool"]
    ctrl = [r for r in run.connections if r["RemotePort"] in (21, 990)]
    v.eq(len(ctrl), len(run.side["sessions"]), "control records")
    for r in ctrl:
        key = ((r["LocalIP"], r["LocalPort"]), (r["RemoteIP"], r["RemotePort"]))
        if not v.check(key in hellos, f"{r['Uid']}: tshark sees no ClientHello on {key}"):
            continue
        names = hellos[key]
        v.check(len(names) <= 1, f"{key}: several SNI names {names}")
        want = next(iter(names)) if names else None
        v.eq(
            want,
            {"curl": None, "lftp": r["RemoteIP"]}[tools[r["Uid"]]],
            f"tshark's SNI from {tools[r['Uid']]} (what the client sends to an IP address)",
        )
        v.eq(r["AdditionalFields"].get("TlsSni"), want, f"{r['Uid']} TlsSni ({tools[r['Uid']]})")
    v.finish()


@pytest.mark.lab
def test_tshark_tftp(sensor, tshark):
    name = "tftp"
    run = sensor(name)
    reqs = tshark("tftp", name)
    v = Verdict(name)
    assert reqs, "tshark sees no TFTP request"
    v.eq(len(run.transfers), len(reqs), "transfer records vs tshark requests")
    for q in reqs:
        what = f"tshark {q.op} {q.filename}"
        r = _by_endpoints(run, q.client, q.server, "Udp")
        if not v.check(r is not None, f"{what}: no port-69 record"):
            continue
        f = r["AdditionalFields"]
        v.eq(
            (f.get("TftpOp"), f.get("TftpFilename"), f.get("TftpMode")),
            (q.op, q.filename, q.mode),
            f"{what} TftpOp/TftpFilename/TftpMode",
        )
        v.eq(f.get("TftpOptions"), q.options or None, f"{what} TftpOptions")
        v.check(q.error is None, f"{what}: tshark saw an ERROR {q.error}")
        x = _by_endpoints(run, q.transfer_from, q.client, "Udp") if q.transfer_from else None
        if not v.check(x is not None, f"{what}: no transfer-flow record from {q.transfer_from}"):
            continue
        v.eq(x["ParentUid"], r["Uid"], f"{what} transfer flow ParentUid")
        # the port-69 record carries the transfer's UDP payload bytes, client's view
        v.eq(
            (r["DataSentBytes"], r["DataReceivedBytes"]),
            (q.payload.get(q.client, 0), q.payload.get(q.transfer_from, 0)),
            f"{what} DataSentBytes/DataReceivedBytes (tshark UDP payload per side)",
        )
        ts = [t for t in run.transfers if t["ControlUid"] == r["Uid"]]
        if not v.check(len(ts) == 1, f"{what}: {len(ts)} transfer records"):
            continue
        t = ts[0]
        v.eq(t["Uid"], x["Uid"], f"{what} transfer Uid")
        v.eq((t["Filename"], t["Direction"]), (q.filename, q.direction), f"{what} Filename/Direction")
        v.eq(t["Bytes"], q.bytes, f"{what} Bytes (tshark data.len per block)")
        v.eq(t["Blocks"], len(q.blocks), f"{what} Blocks")
        v.eq(t["BlockSize"], int((q.oack or {}).get("blksize", 512)), f"{what} BlockSize (OACK {q.oack})")
        # no DATA block was sent twice on this clean capture
        v.eq(q.data_packets, len(q.blocks), f"{what}: tshark DATA packets vs blocks")
    v.finish()


@pytest.mark.lab
@pytest.mark.parametrize("name", SMB_CAPTURES)
def test_tshark_smb(name, sensor, tshark):
    run = sensor(name)
    sessions = tshark("smb", name)
    v = Verdict(name)
    assert sessions, f"{name}: tshark sees no SMB"
    all_files = []
    for s in sessions.values():
        what = f"tshark SMB stream {s.stream}"
        r = _by_endpoints(run, s.client, s.server)
        if not v.check(r is not None, f"{what}: no sensor record"):
            continue
        u = r["Uid"]
        f = r["AdditionalFields"]
        v.eq(len(s.users), 1, f"{what}: tshark NTLMSSP AUTHENTICATE user names {s.users}")
        v.eq(r["AppUser"], s.users[-1] if s.users else "", f"{u} AppUser (ntlmssp.auth.username)")
        v.eq(f.get("SmbDomain"), s.domains[-1] if s.domains else None, f"{u} SmbDomain")
        v.eq(f.get("SmbWorkstation"), s.hosts[-1] if s.hosts else None, f"{u} SmbWorkstation")
        v.eq(f.get("SmbDialect"), s.dialect, f"{u} SmbDialect (negotiate response)")
        v.eq(f.get("SmbTrees"), s.trees or None, f"{u} SmbTrees (tree connects answered STATUS_SUCCESS)")
        v.eq(
            f.get("SmbEncrypted"),
            True if s.transform_frames else None,
            f"{u} SmbEncrypted (tshark: {s.transform_frames} transform messages)",
        )
        if s.server[1] == 139:
            v.eq(s.netbios_called, [f"{s.server[0]}<20>"], f"{what}: tshark NetBIOS called name")
            v.eq(
                f.get("NetbiosCalledName"), s.netbios_called[-1] if s.netbios_called else None, f"{u} NetbiosCalledName"
            )
        # Known difference with the sidecar, not with tshark: smb139's guest
        # session names "root" in NTLMSSP and smbd flags the session Guest;
        # the sensor reports the name sent, like tshark's Account.
        v.eq(s.guest, name == "smb139", f"{what}: tshark Guest session flag")
        if s.transform_frames:
            v.eq(s.creates_seen, 0, f"{what}: CREATE requests in the clear on an encrypted session")
        for x in s.files:
            all_files.append((u, x))
    for u, x in all_files:
        for direction, n in (("download", x.bytes_read), ("upload", x.bytes_written)):
            ts = [t for t in run.transfers if t["Uid"] == u and (t["Filename"], t["Direction"]) == (x.name, direction)]
            if not n:
                v.eq(ts, [], f"{x.name} {direction}: tshark counts no byte")
                continue
            if not v.check(len(ts) == 1, f"{x.name} {direction}: {len(ts)} transfer records"):
                continue
            t = ts[0]
            v.eq(
                t["Bytes"],
                n,
                f"{x.name} {direction} Bytes (tshark: {x.reads} READ responses / {x.writes} WRITE requests)",
            )
            v.eq(t["Share"], x.tree, f"{x.name} Share")
    # nothing the sensor names that tshark does not
    named = {
        (u, x.name, d) for u, x in all_files for d, n in (("download", x.bytes_read), ("upload", x.bytes_written)) if n
    }
    for t in run.transfers:
        v.check((t["Uid"], t["Filename"], t["Direction"]) in named, f"transfer tshark does not see: {t}")
    v.finish()


# ---------------------------------------------------------------------------
# 3. determinism


@pytest.mark.parametrize("name", CAPTURES)
def test_replay_is_deterministic(name, sensor, tmp_path):
    first = sensor(name)
    second = run_sensor(name, tmp_path / "again")
    for f in ("transfers.jsonl", "connections.jsonl", "weird.jsonl"):
        a, b = first.raw(f), second.raw(f)
        assert a == b, f"{name}: {f} differs between two replays of the same capture"
    assert first.raw("connections.jsonl"), f"{name}: no connection record at all"
    if family(first.side) not in ("ftps",) and name != "smb_encrypted":
        assert first.raw("transfers.jsonl"), f"{name}: no transfer record to compare"
