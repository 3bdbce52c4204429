#!/usr/bin/env python3
"""Make pcaps/demo.pcap: one process-less device (192.168.56.10) moving files.

Deterministic: fixed times, addresses, ports, sequence numbers and contents,
so the same script always writes the same bytes. Remote "public" servers use
the documentation ranges 203.0.113.0/24 and 198.51.100.0/24; pcaps/demo.yaml
marks them Public (ip_type_overrides), as a lab range would be.

What is inside (and what the replay should say):
- 5 FTP sessions to 203.0.113.10:21, each uploading a file over an EPSV data
  channel                                              -> alert, count 5
- 4 SMB sessions to 198.51.100.20:445                 -> alert, count 4
- 3 FTP sessions to 203.0.113.30:21                   -> no alert (3 is not > 3)
- 2 TFTP reads from 198.51.100.40:69                  -> no alert
- 4 FTPS sessions to 203.0.113.50:990 over 30 hours   -> no alert (never 4 in 24 h)
- 6 refused SMB connections to 198.51.100.60:445      -> no alert (failed)
- 10 SMB sessions to the private file server 192.168.56.2 -> no alert (Private)
- HTTPS and DNS background traffic                    -> not tracked
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root: tests.support is the crafting helper

from tests.support.craft import Tcp, tcp_refused, tcp_session, udp_exchange, write_pcap  # noqa: E402

DEV = "192.168.56.10"
T0 = 1_795_737_600.0  # 2026-11-27T00:00:00Z


def blob(name: str, size: int) -> bytes:
    out = b""
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{i}".encode()).digest()
        i += 1
    return out[:size]


def ftp_upload(t: float, server: str, cport: int, dport: int, user: str, fname: str, size: int, port: int = 21):
    c = Tcp(DEV, server, cport, port, t, isn_c=cport * 1000, isn_s=cport * 3000)
    c.handshake()
    c.s2c(b"220 (vsFTPd 3.0.3)\r\n")
    c.c2s(f"USER {user}\r\n".encode()).s2c(b"331 Please specify the password.\r\n")
    c.c2s(b"PASS hunter2\r\n").s2c(b"230 Login successful.\r\n")
    c.c2s(b"EPSV\r\n").s2c(f"229 Entering Extended Passive Mode (|||{dport}|)\r\n".encode())
    c.c2s(b"TYPE I\r\n").s2c(b"200 Switching to Binary mode.\r\n")
    c.c2s(f"STOR {fname}\r\n".encode())
    data = Tcp(DEV, server, cport + 1, dport, c.t, isn_c=cport * 7, isn_s=cport * 11)
    data.handshake()
    c.t = data.t
    c.s2c(b"150 Ok to send data.\r\n")
    data.t = c.t
    data.c2s(blob(fname, size)).fin()
    c.t = data.t
    c.s2c(b"226 Transfer complete.\r\n")
    c.c2s(b"QUIT\r\n").s2c(b"221 Goodbye.\r\n").fin()
    return c.pkts + data.pkts


def smb_session(t: float, server: str, cport: int, share: str, fname: str, size: int, user: str, port: int = 445):
    """An SMB 3.1.1 session like smbclient's: negotiate, NTLM login, tree
    connect, create, 64 KiB writes, close, logoff."""
    from tests.test_analyzer_smb import (
        FID,
        close_req,
        close_resp,
        create_req,
        create_resp,
        login,
        simple_req,
        simple_resp,
        tree_req,
        tree_resp,
        write_req,
        write_resp,
    )

    msgs = login(user=user, domain="CORP", ws="WS-FIN-07")
    msgs += [(True, tree_req(3, f"\\\\{server}\\{share}")), (False, tree_resp(3))]
    msgs += [(True, create_req(4, fname, disposition=5, access=0x0012019F)), (False, create_resp(4, FID, action=2))]
    data = blob(fname, size)
    mid = 5
    for off in range(0, size, 65536):
        chunk = data[off : off + 65536]
        msgs += [(True, write_req(mid, FID, off, chunk)), (False, write_resp(mid, len(chunk)))]
        mid += 1
    msgs += [
        (True, close_req(mid, FID)),
        (False, close_resp(mid)),
        (True, simple_req(2, mid + 1, tree=0)),
        (False, simple_resp(2, mid + 1, tree=0)),
    ]
    c = Tcp(DEV, server, cport, port, t, isn_c=cport * 13, isn_s=cport * 17).handshake()
    for to_server, msg in msgs:
        c.send(to_server, msg)
    return c.fin().pkts


def tftp_read(t: float, server: str, cport: int, tport: int, fname: str, size: int):
    rrq = b"\x00\x01" + fname.encode() + b"\x00octet\x00"
    pkts = udp_exchange(DEV, server, cport, 69, t, [(True, rrq)])
    data = blob(fname, size)
    dg = []
    for i in range(0, len(data) + 1, 512):
        blk = i // 512 + 1
        dg.append((False, b"\x00\x03" + blk.to_bytes(2, "big") + data[i : i + 512]))
        dg.append((True, b"\x00\x04" + blk.to_bytes(2, "big")))
    return pkts + udp_exchange(DEV, server, cport, tport, t + 0.002, dg)


def https(t: float, server: str, cport: int):
    return tcp_session(
        DEV,
        server,
        cport,
        443,
        t,
        c2s=blob(f"tls{cport}", 517),
        s2c=blob(f"tlsr{cport}", 3000),
        isn_c=cport,
        isn_s=cport * 5,
    )


def dns(t: float, cport: int):
    return udp_exchange(
        DEV, "192.168.56.1", cport, 53, t, [(True, blob(f"q{cport}", 40)), (False, blob(f"r{cport}", 120))]
    )


def build() -> list:
    pkts = []
    h = 3600.0
    for i in range(5):
        pkts += ftp_upload(
            T0 + 1 * h + i * 900,
            "203.0.113.10",
            41000 + i * 2,
            30000 + i,
            "backup",
            f"q{i + 1}-finance.7z",
            40_000 + i * 7_000,
        )
    for i in range(4):
        pkts += smb_session(
            T0 + 2 * h + i * 1200,
            "198.51.100.20",
            42000 + i,
            "drop",
            f"payroll-2026-{i + 1}.xlsx",
            90_000 + i * 25_000,
            "svc_backup",
        )
    for i in range(3):
        pkts += ftp_upload(
            T0 + 3 * h + i * 600, "203.0.113.30", 43000 + i * 2, 31000 + i, "anonymous", f"notes-{i}.txt", 2_000
        )
    for i in range(2):
        pkts += tftp_read(T0 + 4 * h + i * 60, "198.51.100.40", 44000 + i, 45000 + i, f"cfg{i}.bin", 1536 + 100 * i)
    for i, dt in enumerate((0, 10 * h, 20 * h, 30 * h)):
        c = Tcp(DEV, "203.0.113.50", 46000 + i, 990, T0 + 5 * h + dt, isn_c=777 + i, isn_s=999 + i)
        pkts += c.handshake().c2s(blob(f"ch{i}", 517)).s2c(blob(f"sh{i}", 2400)).c2s(blob(f"up{i}", 9000)).fin().pkts
    for i in range(6):
        pkts += tcp_refused(DEV, "198.51.100.60", 47000 + i, 445, T0 + 6 * h + i * 2)
    for i in range(10):
        pkts += smb_session(T0 + 7 * h + i * 300, "192.168.56.2", 48000 + i, "home", f"notes-{i}.docx", 30_000, "jdoe")
    for i in range(120):
        pkts += https(T0 + i * 700, f"203.0.113.{100 + i % 50}", 50000 + i)
        pkts += dns(T0 + i * 700 - 0.01, 52000 + i)
    return pkts


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "demo.pcap"
    pkts = build()
    write_pcap(out, pkts)
    print(f"wrote {out}: {len(pkts)} packets")
