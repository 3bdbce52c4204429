#!/usr/bin/env python3
"""Make the "inflated volume" captures of pcaps/adversary/ (issue #13): servers
and clients whose protocol messages claim far more bytes than the connection
carries. Deterministic: fixed times, addresses, ports, sequence numbers and
contents, so the same script always writes the same bytes.

    python pcaps/adversary/make_bytes.py [OUTDIR]

- ``smb_claims.pcap``: ten SMB2 sessions from 192.168.56.10 to the "public"
  198.51.100.20:445 (public with ``bytes.yaml``), each opening one file,
  reading it (READ response DataLength 0xFFFFFFFF, 10 real bytes) and writing
  another (WRITE Length 0xFFFFFFFF, 10 real bytes). Sessions 0-4 frame each
  claim in a NetBIOS message that holds just those 10 bytes and close both
  files (the server answers every request with success); sessions 5-9 announce
  a 16 MiB NetBIOS message, send 10 bytes of it and end the connection.
- ``ftp_claims.pcap``: four FTP downloads from 203.0.113.10:21, each data
  channel carrying 10 bytes: two announced as ``150 ... (9999999999 bytes)``,
  two after ``SIZE`` answered ``213 9999999999``; every one answered ``226``.
- ``tftp_claims.pcap``: a TFTP read from 198.51.100.40:69 whose OACK says
  ``tsize 9999999999``; one 10-byte block, acknowledged.

tests/test_adversary_bytes.py replays them and checks that no record, alert or
summary reports more than the connections carried.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root: tests.support is the crafting helper

from tests.support.craft import Tcp, udp_exchange, write_pcap  # noqa: E402
from tests.test_analyzer_smb import (  # noqa: E402
    FID,
    FID2,
    SID,
    TREE_ID,
    close_req,
    close_resp,
    create_req,
    create_resp,
    h2,
    login,
    read_req,
    tree_req,
    tree_resp,
    write_resp,
)

DEV = "192.168.56.10"
SMB_SERVER = "198.51.100.20"
FTP_SERVER = "203.0.113.10"
TFTP_SERVER = "198.51.100.40"
T0 = 1_795_737_600.0  # 2026-11-27T00:00:00Z
CLAIM = 0xFFFFFFFF  # what the SMB length fields say
FTP_CLAIM = 9_999_999_999  # what the FTP replies and the TFTP tsize say
REAL = 10  # bytes each claim really carries
BIG_NBSS = 0xFFFFFF  # a NetBIOS length announcing 16 MiB


def nbss_len(payload: bytes, length: int) -> bytes:
    """A NetBIOS session message header announcing ``length``, then ``payload``."""
    return struct.pack(">I", length) + payload


def smb_write(mid: int, fid: bytes, data: bytes) -> bytes:
    """An SMB2 WRITE request claiming CLAIM bytes, carrying ``data``."""
    body = struct.pack("<HHIQ16sIIHHI", 49, 112, CLAIM, 0, fid, 0, 0, 0, 0, 0)
    return h2(9, mid, tree=TREE_ID, sid=SID) + body + data


def smb_read_resp(mid: int, data: bytes) -> bytes:
    """An SMB2 READ response claiming CLAIM bytes, carrying ``data``."""
    return h2(8, mid, resp=True, tree=TREE_ID, sid=SID) + struct.pack("<HBBIII", 17, 80, 0, CLAIM, 0, 0) + data


def smb_session(i: int) -> list:
    framed = i < 5  # else: 16 MiB announced, 10 bytes sent, connection ends
    got, put = f"{i}".encode() * REAL, bytes([0x41 + i]) * REAL
    msgs = login(user="svc_backup", domain="CORP", ws="WS-FIN-07")
    msgs += [(True, tree_req(3, f"\\\\{SMB_SERVER}\\drop")), (False, tree_resp(3))]
    msgs += [
        (True, create_req(4, f"payroll-{i}.xlsx", disposition=1, access=0x00120089)),
        (False, create_resp(4, FID2, action=1, eof=CLAIM)),
        (True, create_req(5, f"loot-{i}.7z", disposition=5, access=0x0012019F)),
        (False, create_resp(5, FID, action=2)),
        (True, read_req(6, FID2, 0, 65536)),
    ]
    if framed:
        rd, wr = smb_read_resp(6, got), smb_write(7, FID, put)
        msgs += [
            (False, nbss_len(rd, len(rd))),
            (True, nbss_len(wr, len(wr))),
            (False, write_resp(7, REAL)),
            (True, close_req(8, FID2)),
            (False, close_resp(8)),
            (True, close_req(9, FID)),
            (False, close_resp(9)),
        ]
    else:
        msgs += [
            (False, nbss_len(smb_read_resp(6, got), BIG_NBSS)),
            (True, nbss_len(smb_write(7, FID, put), BIG_NBSS)),
        ]
    c = Tcp(DEV, SMB_SERVER, 42000 + i, 445, T0 + 3600 + i * 600, isn_c=4200 + i * 13, isn_s=4200 + i * 17)
    c.handshake()
    for to_server, msg in msgs:
        c.send(to_server, msg)
    return c.fin().pkts


def ftp_session(i: int) -> list:
    cport, dport = 41000 + 2 * i, 30000 + i
    name = f"backup-{i}.tar"
    c = Tcp(DEV, FTP_SERVER, cport, 21, T0 + 7200 + i * 900, isn_c=cport * 1000, isn_s=cport * 3000)
    c.handshake()
    c.s2c(b"220 (vsFTPd 3.0.3)\r\n")
    c.c2s(b"USER backup\r\n").s2c(b"331 Please specify the password.\r\n")
    c.c2s(b"PASS hunter2\r\n").s2c(b"230 Login successful.\r\n")
    c.c2s(b"TYPE I\r\n").s2c(b"200 Switching to Binary mode.\r\n")
    by_size = i >= 2
    if by_size:
        c.c2s(f"SIZE {name}\r\n".encode()).s2c(f"213 {FTP_CLAIM}\r\n".encode())
    c.c2s(b"EPSV\r\n").s2c(f"229 Entering Extended Passive Mode (|||{dport}|)\r\n".encode())
    c.c2s(f"RETR {name}\r\n".encode())
    data = Tcp(DEV, FTP_SERVER, cport + 1, dport, c.t, isn_c=cport * 7, isn_s=cport * 11)
    data.handshake()
    c.t = data.t
    if by_size:
        c.s2c(f"150 Opening BINARY mode data connection for {name}.\r\n".encode())
    else:
        c.s2c(f"150 Opening BINARY mode data connection for {name} ({FTP_CLAIM} bytes).\r\n".encode())
    data.t = c.t
    data.s2c(f"{i}".encode() * REAL).fin()
    c.t = data.t
    c.s2c(b"226 Transfer complete.\r\n")
    c.c2s(b"QUIT\r\n").s2c(b"221 Goodbye.\r\n").fin()
    return c.pkts + data.pkts


def tftp_read() -> list:
    rrq = b"\x00\x01cfg.bin\x00octet\x00tsize\x000\x00"
    t = T0 + 10800
    pkts = udp_exchange(DEV, TFTP_SERVER, 44000, 69, t, [(True, rrq)])
    oack = b"\x00\x06tsize\x00" + str(FTP_CLAIM).encode() + b"\x00"
    dg = [
        (False, oack),
        (True, b"\x00\x04\x00\x00"),
        (False, b"\x00\x03\x00\x01" + b"c" * REAL),
        (True, b"\x00\x04\x00\x01"),
    ]
    return pkts + udp_exchange(DEV, TFTP_SERVER, 44000, 45000, t + 0.002, dg)


def build() -> dict[str, list]:
    smb: list = []
    for i in range(10):
        smb += smb_session(i)
    ftp: list = []
    for i in range(4):
        ftp += ftp_session(i)
    return {"smb_claims.pcap": smb, "ftp_claims.pcap": ftp, "tftp_claims.pcap": tftp_read()}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for name, pkts in build().items():
        write_pcap(out / name, pkts)
        print(f"wrote {out / name}: {len(pkts)} packets")
