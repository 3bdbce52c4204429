"""Issue #15, "record semantics fixed and documented" (docs/outputs.md):

- the device of a data channel or TFTP transfer is its control session's
  device (one session never names two devices, even with both ends in
  ``home_net``: an active-mode data channel is the client's, inbound);
- a TFTP transfer's ActionType (and Direction) follow its request's;
- ``AdditionalFields.Files`` never holds an empty name (a bare ``LIST``);
- SMB named pipes (``IPC$``) are named in ``SmbPipes``, never file transfers;
- an FTP transfer's ``Outcome`` is ``complete`` only when it is ``Complete``;
- every record names its kind (``RecordKind`` in mde, ``event.dataset`` in
  ecs), so a shared stream (``--stdout``) can be split again;
- an SMB file opened and neither read nor written is a file event
  (``files.jsonl``), with its share and name, not a transfer.

Real captures (pcaps/real) where they show the case, crafted packets through
the whole pipeline where they do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sensor.analyzers.smb import SmbFileSummary
from sensor.analyzers.smb.plugin import is_pipe
from sensor.records.encode import KINDS
from tests.support.craft import Tcp, udp_exchange
from tests.test_analyzer_smb import (
    FID,
    FID2,
    close_req,
    close_resp,
    create_req,
    create_resp,
    login,
    read_req,
    read_resp,
    tree_req,
    tree_resp,
    write_req,
    write_resp,
)

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "pcaps" / "real"
DEMO, DEMO_CFG = REPO / "pcaps" / "demo.pcap", REPO / "pcaps" / "demo.yaml"
T0 = 1_800_000_000.0
CLIENT, SERVER = "10.77.0.1", "10.77.0.2"  # the real captures' lab addresses
# the real captures were taken on a veth pair: both lab hosts' checksums are offloaded (docs/engine.md)
VETH = {"checksum_offload_nets": [f"{CLIENT}/32", f"{SERVER}/32"]}
DEV, PUB = "192.168.56.10", "198.51.100.20"
PIPE_TREE = 0x9D5C0002
CONNECTION_ACTIONS = {"ConnectionSuccess", "ConnectionFailed", "InboundConnectionAccepted", "ConnectionFound"}


def by_uid(recs: list[dict]) -> dict[str, dict]:
    return {r["Uid"]: r for r in recs}


def cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "sensor", *args, "--progress", "never"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return p


# -- the device of a data channel is its control session's ---------------------------------
def test_active_ftp_data_channel_is_the_control_sessions_device(replay):
    """Both lab addresses are in the default home_net: the data connections
    the server opens from port 20 used to take the server as their device."""
    r = replay(REAL / "ftp_active_local.pcap")
    conns = by_uid(r.connections)
    data = [c for c in r.connections if c["ParentUid"]]
    assert len(data) == 4 and all(c["AppProtocol"] == "ftp-data" for c in data)
    for c in data:
        parent = conns[c["ParentUid"]]
        assert parent["DeviceName"] == parent["LocalIP"] == CLIENT
        assert c["DeviceName"] == c["LocalIP"] == CLIENT, c
        # the server connected to the client: inbound, from the server's port 20
        assert (c["RemoteIP"], c["RemotePort"]) == (SERVER, 20)
        assert c["ActionType"] == "InboundConnectionAccepted" and c["Direction"] == "inbound"
    # the bytes are the device's view: what the client sent is SentBytes
    stor = [t for t in r.transfers if t["Command"] == "STOR"]
    assert stor and all(conns[t["Uid"]]["SentBytes"] == t["Bytes"] > 0 for t in stor)
    # one device for the whole session, whatever the order of home_net's check
    assert {c["DeviceName"] for c in r.connections} == {CLIENT}


def test_ftps_data_channel_between_followed_hosts_is_the_control_sessions_device(replay):
    r = replay(REAL / "ftps_implicit.pcap")
    conns = by_uid(r.connections)
    data = [c for c in r.connections if c["AppProtocol"] == "ftps-data"]
    assert data
    for c in data:
        assert c["DeviceName"] == conns[c["ParentUid"]]["DeviceName"] == CLIENT, c


def test_home_server_keeps_its_own_device(replay):
    """Only the server in home_net: the server is the device of the session
    and of its data channels (nothing changes for the one-sided case)."""
    r = replay(REAL / "ftp_active_local.pcap", config={"home_net": [f"{SERVER}/32"], **VETH})
    assert {c["DeviceName"] for c in r.connections} == {SERVER}
    data = [c for c in r.connections if c["ParentUid"]]
    assert data and all(c["ActionType"] == "ConnectionSuccess" and c["LocalPort"] == 20 for c in data)


# -- a TFTP transfer's ActionType follows its request ---------------------------------------
def test_tftp_transfer_from_a_public_server_is_outbound_like_its_request(replay):
    cfg = {"home_net": [f"{CLIENT}/32"], "ip_type_overrides": {f"{SERVER}/32": "Public"}, **VETH}
    r = replay(REAL / "tftp.pcap", config=cfg)
    conns = by_uid(r.connections)
    transfers = [c for c in r.connections if c["ParentUid"]]
    assert len(transfers) == 4
    for c in transfers:
        req = conns[c["ParentUid"]]
        assert req["RemotePort"] == 69 and req["ActionType"] == "ConnectionSuccess"
        assert c["ActionType"] == req["ActionType"] and c["Direction"] == req["Direction"] == "outbound", c
        assert c["DeviceName"] == c["LocalIP"] == CLIENT and c["RemoteIPType"] == "Public"
    # the hunt's key for port 69 is unchanged: four requests, nothing more
    assert sorted(c["RemotePort"] for c in r.connections if c["RemotePort"] in (20, 21, 69)) == [69] * 4


def test_tftp_transfer_of_a_home_server_is_inbound_like_its_request(replay):
    r = replay(REAL / "tftp.pcap", config={"home_net": [f"{SERVER}/32"], **VETH})
    conns = by_uid(r.connections)
    transfers = [c for c in r.connections if c["ParentUid"]]
    assert len(transfers) == 4
    for c in transfers:
        req = conns[c["ParentUid"]]
        assert req["ActionType"] == c["ActionType"] == "InboundConnectionAccepted", c
        assert c["Direction"] == req["Direction"] == "inbound" and c["DeviceName"] == SERVER


def test_tftp_transfer_the_server_never_answered_is_failed(replay):
    """Only the client's datagram on the new port (the server's DATA lost):
    the transfer is not a success for lack of an answer."""
    rrq = b"\x00\x01cfg.bin\x00octet\x00"
    pkts = udp_exchange(DEV, PUB, 44000, 69, T0, [(True, rrq)])
    # the client's ACK to a DATA the capture lost, from the client's port to the server's new one
    pkts += udp_exchange(DEV, PUB, 44000, 45000, T0 + 0.01, [(True, b"\x00\x04\x00\x01")])
    r = replay(pkts, config={"home_net": ["192.168.0.0/16"]})
    (req,) = [c for c in r.connections if c["RemotePort"] == 69]
    (child,) = [c for c in r.connections if c["ParentUid"]]
    assert child["ParentUid"] == req["Uid"] and child["DeviceName"] == DEV
    assert child["ActionType"] == "ConnectionFailed", child  # never a success without the server's datagram


# -- no empty Files names; Outcome consistent with Complete ------------------------------------
def ftp_session(cport: int, t: float, steps: list[tuple[str, int | None, bytes]]) -> list:
    """An FTP control session DEV -> PUB:21; ``steps``: (command, passive data
    port or None, server's data bytes) -- each data command gets PASV (when a
    port is given), 150 and 226, its data connection only when bytes are given."""
    c = Tcp(DEV, PUB, cport, 21, t, isn_c=cport * 7, isn_s=cport * 13)
    c.handshake()
    c.s2c(b"220 (vsFTPd 3.0.3)\r\n")
    c.c2s(b"USER backup\r\n").s2c(b"331 Please specify the password.\r\n")
    c.c2s(b"PASS x\r\n").s2c(b"230 Login successful.\r\n")
    pkts: list = []
    for i, (cmd, dport, data) in enumerate(steps):
        if dport is not None:
            p1, p2 = divmod(dport, 256)
            c.c2s(b"PASV\r\n").s2c(f"227 Entering Passive Mode (198,51,100,20,{p1},{p2}).\r\n".encode())
        c.c2s(cmd.encode() + b"\r\n")
        if data and dport is not None:
            d = Tcp(DEV, PUB, cport + 100 + i, dport, c.t, isn_c=cport * 3 + i, isn_s=cport * 5 + i)
            d.handshake()
            c.t = d.t
            c.s2c(b"150 Here comes the data.\r\n")
            d.t = c.t
            d.s2c(data).fin()
            c.t = d.t
            pkts += d.pkts
        else:
            c.s2c(b"150 Here comes the data.\r\n")
        c.s2c(b"226 Transfer complete.\r\n")
    c.c2s(b"QUIT\r\n").s2c(b"221 Goodbye.\r\n").fin()
    return c.pkts + pkts


def test_listing_without_a_path_names_no_file_and_unseen_data_is_not_complete(replay):
    pkts = ftp_session(
        40100,
        T0,
        [
            ("LIST", 30001, b"-rw-r--r-- 1 ftp ftp 5 Jan 1 00:00 a.txt\r\n"),
            ("RETR a.txt", 30002, b"hello"),
            ("RETR b.txt", 30003, b""),  # 226 without a data connection in the capture
        ],
    )
    r = replay(pkts, config={"home_net": ["192.168.0.0/16"]})
    ctrl = next(c for c in r.connections if c["RemotePort"] == 21)
    assert sorted(ctrl["AdditionalFields"]["Files"]) == ["a.txt", "b.txt"]  # no "" for the LIST
    t = {x["Command"] + " " + x["Filename"]: x for x in r.transfers}
    assert set(t) == {"LIST ", "RETR a.txt", "RETR b.txt"}
    assert t["LIST "]["Direction"] == "listing" and t["LIST "]["Complete"] is True
    assert t["RETR a.txt"]["Outcome"] == "complete" and t["RETR a.txt"]["Complete"] is True
    missing = t["RETR b.txt"]
    assert missing["Complete"] is False and missing["ReplyCode"] == 226
    assert missing["Outcome"] == "no_data_connection" and "Note" in missing
    for x in r.transfers:  # the invariant
        assert (x["Outcome"] == "complete") == x["Complete"], x


def test_claim_beyond_the_data_is_short_not_complete(replay):
    """pcaps/adversary/ftp_claims.pcap: 226 after less than the announced size."""
    cfg = yaml.safe_load((REPO / "pcaps" / "adversary" / "bytes.yaml").read_text())
    r = replay(REPO / "pcaps" / "adversary" / "ftp_claims.pcap", config=cfg)
    ftp = [x for x in r.transfers if x["Protocol"] == "ftp"]
    assert ftp and all("ClaimedBytes" in x for x in ftp)
    for x in ftp:
        assert x["ReplyCode"] == 226 and x["Complete"] is False and x["Outcome"] == "short", x


# -- SMB: pipes are pipes, opens without I/O are file events ----------------------------------
RPC = b"\x05\x00\x0b\x03\x10\x00\x00\x00" + b"\x00" * 64  # a DCE/RPC bind's first bytes


def smb_session(cport: int, t: float) -> list:
    """smbclient-like: srvsvc on IPC$ (bind written, answer read), then on a disk
    share a file opened and closed untouched and a file downloaded."""
    msgs = login(user="svc_backup", domain="CORP", ws="WS-FIN-07")
    pipe_fid, open_fid = FID, b"\x07" * 16
    msgs += [
        (True, tree_req(3, f"\\\\{PUB}\\IPC$")),
        (False, tree_resp(3, tree=PIPE_TREE, share_type=2)),
        (True, create_req(4, "srvsvc", disposition=1, access=0x0012019F, tree=PIPE_TREE)),
        (False, create_resp(4, pipe_fid, tree=PIPE_TREE)),
        (True, write_req(5, pipe_fid, 0, RPC, tree=PIPE_TREE)),
        (False, write_resp(5, len(RPC), tree=PIPE_TREE)),
        (True, read_req(6, pipe_fid, 0, 1024, tree=PIPE_TREE)),
        (False, read_resp(6, RPC, tree=PIPE_TREE)),
        (True, close_req(7, pipe_fid, tree=PIPE_TREE)),
        (False, close_resp(7, tree=PIPE_TREE)),
        (True, tree_req(8, f"\\\\{PUB}\\drop")),
        (False, tree_resp(8)),
        (True, create_req(9, "hr\\salaries.xlsx", disposition=1, access=0x00120089)),
        (False, create_resp(9, open_fid, eof=4096)),
        (True, close_req(10, open_fid)),
        (False, close_resp(10)),
        (True, create_req(11, "payroll.xlsx", disposition=1, access=0x00120089)),
        (False, create_resp(11, FID2, eof=700)),
        (True, read_req(12, FID2, 0, 65536)),
        (False, read_resp(12, b"p" * 700)),
        (True, close_req(13, FID2)),
        (False, close_resp(13)),
    ]
    c = Tcp(DEV, PUB, cport, 445, t, isn_c=cport * 11, isn_s=cport * 17)
    c.handshake()
    for to_server, m in msgs:
        c.send(to_server, m)
    return c.fin().pkts


def test_smb_pipes_are_named_not_transferred_and_untouched_opens_are_file_events(replay):
    r = replay(smb_session(42000, T0), config={"home_net": ["192.168.0.0/16"]})
    (conn,) = r.connections
    af = conn["AdditionalFields"]
    assert af["SmbPipes"] == ["srvsvc"]
    assert af["Files"] == ["payroll.xlsx"]  # neither the pipe nor the untouched file moved
    assert [(t["Filename"], t["Direction"], t["Bytes"]) for t in r.transfers] == [("payroll.xlsx", "download", 700)]
    files = r.pipe.sink.records["files"]
    assert files == [
        {
            "Timestamp": files[0]["Timestamp"],
            "Protocol": "smb",
            "Uid": conn["Uid"],
            "ClientIP": DEV,
            "ServerIP": PUB,
            "ServerPort": 445,
            "User": "svc_backup",
            "Action": "open",
            "Filename": "hr\\salaries.xlsx",
            "FilenameTruncated": False,
            "Share": f"\\\\{PUB}\\drop",
            "Disposition": "FILE_OPEN",
            "Access": ["read"],
            "Closed": True,
        }
    ]
    # the hunt sees one SMB connection, as before
    assert conn["ActionType"] == "ConnectionSuccess" and conn["RemotePort"] == 445


def test_pipe_by_share_type_else_by_ipc_name():
    def summary(tree: str, share_type: str) -> SmbFileSummary:
        return SmbFileSummary(
            0, name="svcctl", file_id="", tree=tree, bytes_read=1, bytes_written=1, share_type=share_type
        )

    assert is_pipe(summary("\\\\srv\\IPC$", "pipe"))
    assert is_pipe(summary("\\\\srv\\ipc$", ""))  # the tree connect was not seen
    assert not is_pipe(summary("\\\\srv\\IPC$x", ""))
    assert not is_pipe(summary("\\\\srv\\drop", "disk"))
    assert not is_pipe(summary("", ""))


# -- every record names its kind ----------------------------------------------------------
def test_mde_stdout_names_every_records_kind(tmp_path):
    """One stream of connections, transfers, alerts and weird: each line says which."""
    out = cli("replay", str(DEMO), "--config", str(DEMO_CFG), "--stdout", "--out", str(tmp_path / "o"))
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    kinds = [d["RecordKind"] for d in lines]
    assert set(kinds) == {"connections", "transfers", "alerts"}
    by_kind = {k: [d for d in lines if d["RecordKind"] == k] for k in set(kinds)}
    assert all(d["ActionType"] in CONNECTION_ACTIONS for d in by_kind["connections"])
    assert all("Command" in d and "ActionType" not in d for d in by_kind["transfers"])
    assert all("RuleId" in d for d in by_kind["alerts"])
    # the files carry the same lines: the field is there too, and names the file's kind
    for k in KINDS:
        for line in (tmp_path / "o" / f"{k}.jsonl").read_text().splitlines():
            assert json.loads(line)["RecordKind"] == k


def test_ecs_stdout_names_every_records_kind():
    out = cli("replay", str(DEMO), "--config", str(DEMO_CFG), "--stdout", "--profile", "ecs")
    docs = [json.loads(x) for x in out.stdout.splitlines()]
    datasets = {d["event"]["dataset"] for d in docs}
    assert datasets == {"xfer_sensor.connections", "xfer_sensor.transfers", "xfer_sensor.alerts"}
    for d in docs:
        kind = d["event"]["dataset"].split(".", 1)[1]
        assert d["event"]["kind"] == ("alert" if kind == "alerts" else "event")


def test_file_events_written_to_files_jsonl_in_both_profiles(tmp_path):
    from tests.support.craft import write_pcap

    pcap = write_pcap(tmp_path / "smb.pcap", smb_session(42000, T0))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("home_net: [192.168.0.0/16]\n")
    for profile in ("mde", "ecs"):
        o = tmp_path / profile
        cli("replay", str(pcap), "--config", str(cfg), "--out", str(o), "--profile", profile)
        (line,) = (o / "files.jsonl").read_text().splitlines()
        d = json.loads(line)
        if profile == "mde":
            assert d["RecordKind"] == "files" and d["Action"] == "open" and d["Share"].endswith("\\drop")
        else:
            assert d["event"]["dataset"] == "xfer_sensor.files" and d["event"]["action"] == "file-open"
            assert d["file"] == {"path": "hr\\salaries.xlsx", "name": "salaries.xlsx"}
            assert d["xfer"]["file"]["share"].endswith("\\drop") and d["host"]["ip"] == [DEV]
        transfers = (o / "transfers.jsonl").read_text().splitlines()
        assert len(transfers) == 1 and "srvsvc" not in (o / "transfers.jsonl").read_text()


def test_file_events_carry_the_connections_process_in_endpoint_mode(tmp_path):
    """Endpoint mode: a file event waits for its connection's lookup like a
    transfer does, and names the process; ecs maps it to valid ECS."""
    from sensor.attribution.book import AttributionBook
    from sensor.records.ecs import EcsProfile
    from tests.support.craft import write_pcap
    from tests.test_endpoint_records import feed, pipeline, proc
    from tests.test_outputs_profiles import ecs_problems

    cfg = {"home_net": ["192.168.0.0/16"]}
    book = AttributionBook()
    pipe, sink = pipeline(book, cfg)
    feed(pipe, write_pcap(tmp_path / "smb.pcap", smb_session(42000, T0)))
    assert sink.records["files"] == [] and sink.records["transfers"] == []  # held for the lookup
    book.add((6, DEV, 42000, PUB, 445), proc(700, "smbclient", "dave"), int(T0 * 1e6))
    pipe.attributions_arrived()
    pipe.finish()
    (f,) = sink.records["files"]
    assert (f["Filename"], f["InitiatingProcessFileName"], f["InitiatingProcessId"]) == (
        "hr\\salaries.xlsx",
        "smbclient",
        700,
    )
    assert f["AttributionSource"] == "socket"
    (t,) = sink.records["transfers"]
    assert t["Filename"] == "payroll.xlsx" and t["InitiatingProcessId"] == 700
    doc = EcsProfile(pipe.cfg, observer_hostname="s").transform("files", f)
    assert ecs_problems(doc) == [], doc
    assert doc["process"] == {"name": "smbclient", "pid": 700, "user": {"name": "dave"}}
    assert doc["xfer"]["file"]["attribution_source"] == "socket"
