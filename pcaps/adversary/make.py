#!/usr/bin/env python3
"""Make the crafted attack captures of pcaps/adversary/ (issue #13, the TCP/IP layer).

Deterministic: fixed times, addresses, ports, sequence numbers and contents.
The device is 192.168.56.10 (home_net in pcaps/adversary/adversary.yaml), the
"public" server 203.0.113.10 (ip_type_overrides), as in pcaps/demo.pcap.

- insertion.pcap: five FTP sessions of account ``backup`` uploading a file
  each. Before the real ``USER`` and ``STOR`` segments the client sends a
  decoy at the same sequence number with a bad TCP checksum (Ptacek &
  Newsham insertion): the server drops it, a sensor that takes it records
  the decoy user and file name. Sessions 2 and 4 give the decoys the
  checksum offload's partial value (the attack on ``checksum_validation:
  auto``); the others a plain wrong one.
- offload.pcap: one FTP upload captured on the device itself: every packet
  it sends carries the partial pseudo-header sum (checksum offload), the
  server's packets full checksums.
- overlap.pcap: one FTP session whose ``USER`` segment is sent again with
  other bytes at the same sequence numbers, right checksums on both copies.
- jumps_acked.pcap / jumps_unacked.pcap: one connection to port 445 moving
  5 GiB + 8,000 bytes from the client, captured with four gaps of 1.25 GiB
  (a sampled capture: the sequence numbers wrap 2^32 once). In the first the
  server's ACKs cover every gap; in the second no ACK does (and the client
  ends with a RST).

Run: ``python pcaps/adversary/make.py [OUT_DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root: tests.support is the crafting helper

from scapy.layers.inet import IP, TCP  # noqa: E402

from tests.support.craft import Tcp, write_pcap  # noqa: E402

DEV = "192.168.56.10"
SERVER = "203.0.113.10"
T0 = 1_795_737_600.0  # 2026-11-27T00:00:00Z
USER = "backup"
JUMP = 5 << 28  # 1.25 GiB: beyond limits.max_seq_jump (1 GiB), within 2^31
JUMPS = 4
CHUNK = 2000  # bytes captured around each gap


def partial_sum(pkt) -> int:
    """What checksum offload leaves in the TCP checksum field: the pseudo-header's
    ones'-complement sum (not complemented), as Linux and Windows write it."""
    ipl = pkt[IP]
    tcp_len = len(bytes(ipl[TCP]))
    words = sum(int.from_bytes(bytes(map(int, a.split("."))), "big") for a in (ipl.src, ipl.dst))
    s = (words >> 16) + (words & 0xFFFF) + 6 + tcp_len
    while s > 0xFFFF:
        s = (s >> 16) + (s & 0xFFFF)
    return s


def with_checksum(pkt, value: int):
    """``pkt`` with its TCP checksum set to ``value`` (scapy keeps a set field)."""
    pkt[TCP].chksum = value
    return pkt


def decoy(c: Tcp, data: bytes, partial: bool) -> None:
    """A client segment at the current sequence number with a bad checksum."""
    p = c._emit(True, "PA", data)
    good = TCP(bytes(p[TCP])).chksum  # scapy computed the right one
    bad = partial_sum(p) if partial else (good ^ 0x5A5A) or 1
    with_checksum(p, bad)


def ftp_upload(t: float, i: int, *, decoys: bool = False, partial: bool = False, overlap: bool = False) -> list:
    cport = 41000 + 2 * i
    dport = 30000 + i
    fname = f"q{i + 1}-finance.7z"
    c = Tcp(DEV, SERVER, cport, 21, t, isn_c=cport * 1000, isn_s=cport * 3000)
    c.handshake()
    c.s2c(b"220 (vsFTPd 3.0.3)\r\n")
    user = f"USER {USER}\r\n".encode()
    if decoys:
        decoy(c, f"USER ghost{i}\r\n".encode(), partial)  # same length as the real one
    c.c2s(user)
    if overlap:
        c.retransmit_last(True, f"USER ghost{i}\r\n".encode())  # right checksum, other bytes
    c.s2c(b"331 Please specify the password.\r\n")
    c.c2s(b"PASS hunter2\r\n").s2c(b"230 Login successful.\r\n")
    c.c2s(b"EPSV\r\n").s2c(f"229 Entering Extended Passive Mode (|||{dport}|)\r\n".encode())
    c.c2s(b"TYPE I\r\n").s2c(b"200 Switching to Binary mode.\r\n")
    if decoys:
        decoy(c, f"STOR decoy-{i}.txt\r\n".encode(), partial)
    c.c2s(f"STOR {fname}\r\n".encode())
    data = Tcp(DEV, SERVER, cport + 1, dport, c.t, isn_c=cport * 7, isn_s=cport * 11)
    data.handshake()
    c.t = data.t
    c.s2c(b"150 Ok to send data.\r\n")
    data.t = c.t
    data.c2s(bytes(range(256)) * (40 + i)).fin()
    c.t = data.t
    c.s2c(b"226 Transfer complete.\r\n")
    c.c2s(b"QUIT\r\n").s2c(b"221 Goodbye.\r\n").fin()
    return c.pkts + data.pkts


def insertion() -> list:
    pkts: list = []
    for i in range(5):
        pkts += ftp_upload(T0 + 3600 + i * 900, i, decoys=True, partial=i % 2 == 1)
    return pkts


def offload() -> list:
    pkts = ftp_upload(T0 + 3600, 0)
    for p in pkts:
        if p[IP].src == DEV:
            with_checksum(p, partial_sum(p))
    return pkts


def overlap() -> list:
    return ftp_upload(T0 + 3600, 0, overlap=True)


def jumps(acked: bool) -> list:
    c = Tcp(DEV, SERVER, 42000, 445, T0 + 7200, isn_c=0xF0000000, isn_s=7000)
    c.handshake()
    c.c2s(b"\x00" * CHUNK)
    for _ in range(JUMPS):
        c.cseq += JUMP  # the capture lost these bytes
        if acked:
            c.c2s(b"\x00" * CHUNK)  # each segment and the server's ACK of it (covering the gap)
        else:
            c._emit(True, "PA", b"\x00" * CHUNK)
            c.cseq += CHUNK
    if acked:
        c.fin()
    else:
        c.rst_from_client()
    return c.pkts


SENT_ACKED = CHUNK * (JUMPS + 1) + JUMP * JUMPS  # what jumps_acked.pcap's client sent
SENT_UNACKED = CHUNK  # what jumps_unacked.pcap proves the client sent

CAPTURES = {
    "insertion.pcap": insertion,
    "offload.pcap": offload,
    "overlap.pcap": overlap,
    "jumps_acked.pcap": lambda: jumps(True),
    "jumps_unacked.pcap": lambda: jumps(False),
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in CAPTURES.items():
        pkts = build()
        write_pcap(out / name, pkts)
        print(f"wrote {out / name}: {len(pkts)} packets")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
