#!/usr/bin/env python3
"""Deterministic generator of a large mixed capture for benchmarking xfer-sensor.

Writes a classic pcap (LINKTYPE_ETHERNET, microsecond timestamps) with
``struct`` directly -- no scapy in the hot path -- so that one million packets
take seconds, not minutes.

Content (shares are of packets and are held by small feedback controllers):

* ~85 % background: TLS-like TCP sessions on 443 (handshake, ClientHello with
  SNI, encrypted records, FIN teardown), DNS over UDP 53 (query/response,
  some NXDOMAIN), QUIC-like UDP 443 (Initial, Handshake, short-header data).
* ~15 % file transfer: FTP control on 21 with real command/reply text
  (USER/PASS/SYST/FEAT/PWD/TYPE/SIZE/EPSV|PASV|PORT|EPRT/RETR|STOR|LIST/QUIT)
  plus the passive (ephemeral server port) or active (server port 20) data
  connections carrying the file bytes; implicit FTPS on 990 and explicit
  AUTH TLS on 21; SMB2 over 445 and over NetBIOS 139 (negotiate, session
  setup, tree connect, create, read/write in 64 KiB or 1 MiB chunks, close,
  logoff); TFTP RRQ/WRQ to 69 with the transfer from a new server port in
  512-byte DATA blocks and ACKs, TFTP errors; failed connections to the target
  ports (SYN->RST, SYN retransmitted with no answer, TFTP RRQ with no answer).
* ~20 % of packets 802.1Q tagged (a few QinQ 0x88a8 + 0x8100), ~10 % IPv6.
* clients in 10.0.0.0/8 and fd00::/8, remotes drawn from pools of thousands of
  public (``is_global``) IPv4/IPv6 addresses.  A small set of
  (client, server, port) keys is reused many times (several keys with more
  than 3 successful connections), the rest are mostly one-off.

TCP sequence/acknowledgement numbers, IP/TCP/UDP lengths and IPv4/TCP/UDP
checksums are correct.  Timestamps are monotonic, start at a fixed base
(2023-11-14T22:13:20Z) and span about two hours; nothing depends on the wall
clock, so the same --seed and --packets give a byte-identical file (for a given
CPython minor version).

Usage::

    python bench/gen_mixed.py                       # 1,000,000 packets -> bench/data/mixed-1m.pcap
    python bench/gen_mixed.py --packets 50000 --out /tmp/small.pcap --seed 7
    python bench/gen_mixed.py --self-test           # determinism + scapy cross-check
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import ipaddress
import json
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "mixed-1m.pcap"
DEFAULT_PACKETS = 1_000_000
DEFAULT_SEED = 20231114

BASE_TS_US = 1_700_000_000 * 1_000_000  # fixed base: 2023-11-14T22:13:20Z
SPAN_US = 7_200 * 1_000_000  # ~2 h of simulated time

TARGET_XFER = 0.15
TARGET_V6 = 0.10
TARGET_VLAN = 0.20

# TCP flags
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_pack_ip4 = struct.Struct("!BBHHHBBH4s4s").pack
_pack_ip6 = struct.Struct("!IHBB16s16s").pack
_pack_tcp = struct.Struct("!HHIIHHHH").pack
_pack_udp = struct.Struct("!HHHH").pack
_pack_rec = struct.Struct("<IIII").pack

# SYN options: MSS 1460, NOP, WS 7, SACK permitted, NOP, NOP  (12 bytes)
SYN_OPTS = b"\x02\x04\x05\xb4\x01\x03\x03\x07\x04\x02\x01\x01"
SYNACK_OPTS = b"\x02\x04\x05\xb4\x01\x03\x03\x08\x04\x02\x01\x01"


def _osum(b: bytes) -> int:
    """One's-complement sum of 16-bit big-endian words, reduced mod 0xFFFF."""
    if len(b) & 1:
        b += b"\0"
    return int.from_bytes(b, "big") % 0xFFFF


SYN_OPTS_SUM = _osum(SYN_OPTS)
SYNACK_OPTS_SUM = _osum(SYNACK_OPTS)


def _csum(s: int) -> int:
    """Checksum field from an (unreduced) one's-complement sum of non-zero data."""
    s %= 0xFFFF
    return 0xFFFF - s if s else 0


# ---------------------------------------------------------------------------
# hosts and paths


class Host:
    __slots__ = ("ip", "b", "i", "mac", "v6")

    def __init__(self, ip, mac: bytes):
        self.ip = ip
        self.b = ip.packed
        self.i = int(ip)
        self.mac = mac
        self.v6 = ip.version == 6


class Dir:
    """One direction of a conversation: link header, addresses, IP state."""

    __slots__ = ("eth", "src", "dst", "asum", "v6", "ttl", "ipid", "flow")

    def __init__(self, eth: bytes, src: Host, dst: Host, ttl: int, ipid: int, flow: int):
        self.eth = eth
        self.src = src.b
        self.dst = dst.b
        self.asum = (src.i + dst.i) % 0xFFFF
        self.v6 = src.v6
        self.ttl = ttl
        self.ipid = ipid
        self.flow = flow


def ip_frame(d: Dir, proto: int, l4: bytes) -> bytes:
    n = len(l4)
    if d.v6:
        return d.eth + _pack_ip6(0x60000000 | d.flow, n, proto, d.ttl, d.src, d.dst) + l4
    tl = 20 + n
    ipid = d.ipid
    d.ipid = (ipid + 1) & 0xFFFF
    c = _csum(0x4500 + tl + ipid + 0x4000 + ((d.ttl << 8) | proto) + d.asum)
    return d.eth + _pack_ip4(0x45, 0, tl, ipid, 0x4000, d.ttl, proto, c, d.src, d.dst) + l4


class Gen:
    """All generator state; one instance per output file."""

    def __init__(self, seed: int, xfer_share: float = TARGET_XFER):
        self.xfer_target = xfer_share
        self.rng = rng = random.Random(seed)
        self.pool = rng.randbytes(1 << 23)  # 8 MiB of payload bytes
        self.gw_mac = bytes.fromhex("001b21a0c0de")
        self.clients4 = [self._client(4) for _ in range(420)]
        self.clients6 = [self._client(6) for _ in range(160)]
        self.web4 = [self._public(4) for _ in range(6000)]
        self.web6 = [self._public(6) for _ in range(2000)]
        self.xfer4 = [self._public(4) for _ in range(3000)]
        self.xfer6 = [self._public(6) for _ in range(600)]
        self.dns4 = [
            Host(ipaddress.ip_address(a), self.gw_mac) for a in ("8.8.8.8", "1.1.1.1", "9.9.9.9", "208.67.222.222")
        ]
        self.dns6 = [
            Host(ipaddress.ip_address(a), self.gw_mac) for a in ("2001:4860:4860::8888", "2606:4700:4700::1111")
        ]
        # popular remotes: Zipf-ish head of each web pool
        self.web4_cw = self._zipf_cw(200)
        self.web6_cw = self._zipf_cw(80)
        words = (
            "cdn static api img media edge assets login mail news shop video cloud "
            "data update files portal app sync docs store stream telemetry"
        ).split()
        tlds = ("com", "net", "org", "io", "de", "fr", "co.uk", "nl", "info", "cloud")
        self.domains = [
            f"{rng.choice(words)}{rng.randrange(1, 999)}.{rng.choice(words)}{rng.randrange(1, 99)}.{rng.choice(tlds)}"
            for _ in range(1500)
        ]
        self.repeat_keys = self._repeat_keys()
        self.repeat_cw = self._zipf_cw(len(self.repeat_keys), 0.6)
        # accounting for the share controllers
        self.total = 0
        self.xfer = 0
        self.v6 = 0
        self.vlan = 0
        self.sessions = 0
        self.kind_pk: dict[str, int] = {}
        self.kind_n: dict[str, int] = {}
        self.remotes: set = set()
        self.succ: dict[tuple, int] = {}
        self.cur_key = None
        self.info: dict = {}
        self.truth: list | None = None

    # -- pools ---------------------------------------------------------------

    def _client(self, ver: int) -> Host:
        rng = self.rng
        mac = bytes([0x02]) + rng.randbytes(5)
        if ver == 4:
            ip = ipaddress.IPv4Address((10 << 24) | rng.randrange(1, 1 << 24))
        else:
            ip = ipaddress.IPv6Address((0xFD << 120) | rng.getrandbits(120))
        return Host(ip, mac)

    def _public(self, ver: int) -> Host:
        rng = self.rng
        while True:
            if ver == 4:
                a = rng.getrandbits(32)
                if not (1 << 24) <= a < (224 << 24):
                    continue
                ip = ipaddress.IPv4Address(a)
            else:
                ip = ipaddress.IPv6Address((0x2 << 125) | rng.getrandbits(125))
            if ip.is_global and not ip.is_multicast:
                return Host(ip, self.gw_mac)

    @staticmethod
    def _zipf_cw(n: int, s: float = 1.0) -> list[float]:
        acc, cw = 0.0, []
        for i in range(n):
            acc += 1.0 / (i + 1) ** s
            cw.append(acc)
        return cw

    def _repeat_keys(self) -> list[tuple]:
        """(client, server, kind, account) keys reused across many sessions."""
        rng = self.rng
        kinds = (
            ["ftp"] * 8
            + ["ftp_active"] * 2
            + ["ftps"] * 2
            + ["ftp_authtls"]
            + ["smb445"] * 7
            + ["smb139"] * 2
            + ["tftp"] * 5
            + ["tftp_wrq"]
        )
        keys = []
        for i, kind in enumerate(kinds):
            v6 = i % 7 == 3
            cli = rng.choice(self.clients6 if v6 else self.clients4)
            srv = rng.choice(self.xfer6 if v6 else self.xfer4)
            # a job or implant that reconnects uses the same credentials every time
            if kind.startswith("smb"):
                acct = rng.choice(SMB_USERS)
            elif kind.startswith("ftp"):
                acct = "anonymous" if rng.random() < 0.4 else rng.choice(FTP_USERS)
            else:
                acct = ""
            keys.append((cli, srv, kind, acct))
        return keys

    # -- helpers -------------------------------------------------------------

    def blob(self, n: int, head: bytes = b"") -> bytes:
        """n pseudo-random bytes (optionally starting with head) from the pool."""
        n -= len(head)
        if n <= 0:
            return head[: n + len(head)]
        pool = self.pool
        if n <= len(pool):
            off = self.rng.randrange(len(pool) - n + 1)
            return head + pool[off : off + n]
        reps = n // len(pool) + 1
        return head + (pool * reps)[:n]

    def encap(self, v6: bool, force=None):
        """Pick link encapsulation (VLAN tags) for a session.  Returns tag bytes."""
        rng = self.rng
        if force is not None:
            want = force
        else:
            share = self.vlan / self.total if self.total else 0.0
            want = rng.random() < (0.40 if share < TARGET_VLAN else 0.06)
        if not want:
            return b""
        vid = rng.choice((10, 20, 30, 100, 101, 200, 310, 999))
        if rng.random() < 0.08:  # QinQ: service tag 0x88a8 then customer tag 0x8100
            outer = rng.choice((1000, 2001, 3000))
            return struct.pack("!HHHH", 0x88A8, outer, 0x8100, vid)
        return struct.pack("!HH", 0x8100, vid)

    def want_v6(self) -> bool:
        share = self.v6 / self.total if self.total else 0.0
        return self.rng.random() < (0.22 if share < TARGET_V6 else 0.03)

    def dirs(self, cli: Host, srv: Host, tags: bytes, cli_ttl=64, srv_ttl=None):
        rng = self.rng
        et = b"\x86\xdd" if cli.v6 else b"\x08\x00"
        if srv_ttl is None:
            srv_ttl = rng.choice((64, 128, 255)) - rng.randrange(5, 25)
        flow = rng.getrandbits(20) if cli.v6 else 0
        c2s = Dir(srv.mac + cli.mac + tags + et, cli, srv, cli_ttl, rng.getrandbits(16), flow)
        s2c = Dir(
            cli.mac + srv.mac + tags + et, srv, cli, srv_ttl, rng.getrandbits(16), rng.getrandbits(20) if cli.v6 else 0
        )
        return c2s, s2c

    def eport(self) -> int:
        return self.rng.randrange(32768, 61000)

    def rtt(self) -> int:
        return int(self.rng.uniform(4_000, 160_000))

    def gap(self, mss: int) -> int:
        bw = self.rng.choice((10, 20, 50, 100, 200, 500))  # Mbit/s
        return max(12, (mss + 54) * 8 // bw)


# ---------------------------------------------------------------------------
# transports


class Tcp:
    """One TCP connection; appends (ts_us, frame) to ``out``.  Side 0 = initiator."""

    def __init__(
        self,
        g: Gen,
        out: list,
        t: int,
        a: Host,
        b: Host,
        aport: int,
        bport: int,
        tags: bytes,
        rtt: int,
        gap: int,
        a_ttl=64,
        b_ttl=None,
        mss=1460,
    ):
        self.g = g
        self.out = out
        self.d = g.dirs(a, b, tags, a_ttl, b_ttl)
        self.ports = ((aport, bport), (bport, aport))
        rng = g.rng
        self.nxt = [rng.getrandbits(32), rng.getrandbits(32)]
        self.win = [rng.choice((502, 513, 1026, 2052, 8212)), rng.choice((235, 501, 1024, 4106, 65535))]
        self.t = t
        self.rtt = rtt
        self.gap = gap
        self.mss = mss
        # reaction delay seen at the sensor (next to the initiator by default):
        # the near side answers within tens of µs, the far side after one RTT
        self.react = [60, rtt]
        self.last = [t, t]  # latest timestamp scheduled per side (sends never precede it)

    def emit(
        self, side: int, t: int, flags: int, payload: bytes = b"", seq=None, ack=None, opts: bytes = b"", osum: int = 0
    ):
        sp, dp = self.ports[side]
        if seq is None:
            seq = self.nxt[side]
        if ack is None:
            ack = self.nxt[1 - side] if flags & ACK else 0
        win = self.win[side]
        hl = 20 + len(opts)
        offflags = ((hl >> 2) << 12) | flags
        n = hl + len(payload)
        d = self.d[side]
        if payload:
            if n & 1:
                f = int.from_bytes(payload + b"\0", "big")
            else:
                f = int.from_bytes(payload, "big")
        else:
            f = 0
        c = _csum(d.asum + 6 + n + sp + dp + seq + ack + offflags + win + osum + f)
        seg = _pack_tcp(sp, dp, seq, ack, offflags, win, c, 0)
        if opts:
            seg += opts
        if payload:
            seg += payload
        if t > self.last[side]:
            self.last[side] = t
        self.out.append((t, ip_frame(d, 6, seg)))

    def handshake(self, delay: int = 0) -> None:
        t = self.t + delay
        self.emit(0, t, SYN, opts=SYN_OPTS, osum=SYN_OPTS_SUM)
        self.nxt[0] = (self.nxt[0] + 1) & 0xFFFFFFFF
        t += self.react[1]
        self.emit(1, t, SYN | ACK, opts=SYNACK_OPTS, osum=SYNACK_OPTS_SUM)
        self.nxt[1] = (self.nxt[1] + 1) & 0xFFFFFFFF
        t += self.react[0]
        self.emit(0, t, ACK)
        self.t = t

    def send(self, side: int, data: bytes, delay: int) -> int:
        """Send ``data`` from ``side`` starting ``delay`` µs after the cursor."""
        t = max(self.t + delay, self.last[side])
        mss, gap, n = self.mss, self.gap, len(data)
        other = 1 - side
        ackd = self.react[other]
        k = 0
        off = 0
        nxt = self.nxt
        while off < n:
            chunk = data[off : off + mss]
            off += len(chunk)
            last = off >= n
            self.emit(side, t, ACK | PSH if last else ACK, chunk)
            nxt[side] = (nxt[side] + len(chunk)) & 0xFFFFFFFF
            k += 1
            if last or not k & 1:
                self.emit(other, t + ackd, ACK, ack=nxt[side])
            if not last:
                t += gap
        self.t = t
        return t

    # request from the initiator / response from the responder
    def req(self, data: bytes, think: int = 2_000) -> int:
        return self.send(0, data, think)

    def resp(self, data: bytes, proc: int = 300) -> int:
        return self.send(1, data, self.rtt + proc)

    def close(self, side: int = 0, delay: int = 1_000) -> None:
        """FIN from ``side``, FIN-ACK from the peer, final ACK."""
        t = max(self.t + delay, self.last[side])
        other = 1 - side
        self.emit(side, t, FIN | ACK)
        self.nxt[side] = (self.nxt[side] + 1) & 0xFFFFFFFF
        t = max(t + self.react[other] + 60, self.last[other])
        self.emit(other, t, FIN | ACK)
        self.nxt[other] = (self.nxt[other] + 1) & 0xFFFFFFFF
        t += self.react[side]
        self.emit(side, t, ACK)
        self.t = t

    def rst_reply(self) -> None:
        """Initiator SYN answered by RST-ACK (closed port)."""
        t = self.t
        self.emit(0, t, SYN, opts=SYN_OPTS, osum=SYN_OPTS_SUM)
        t += self.react[1]
        self.emit(1, t, RST | ACK, seq=0, ack=(self.nxt[0] + 1) & 0xFFFFFFFF)
        self.t = t

    def syn_timeout(self, tries: int) -> None:
        """SYN retransmitted with exponential backoff, never answered."""
        t = self.t
        back = 1_000_000
        for _ in range(tries):
            self.emit(0, t, SYN, opts=SYN_OPTS, osum=SYN_OPTS_SUM)
            t += back
            back *= 2
        self.t = t - back // 2


class Udp:
    """A UDP conversation between two hosts (ports may change per datagram)."""

    def __init__(self, g: Gen, out: list, a: Host, b: Host, tags: bytes, a_ttl=64, b_ttl=None):
        self.d = g.dirs(a, b, tags, a_ttl, b_ttl)
        self.out = out

    def emit(self, side: int, t: int, sp: int, dp: int, payload: bytes) -> None:
        d = self.d[side]
        n = 8 + len(payload)
        if len(payload) & 1:
            f = int.from_bytes(payload + b"\0", "big")
        else:
            f = int.from_bytes(payload, "big")
        c = _csum(d.asum + 17 + n + sp + dp + n + f) or 0xFFFF
        self.out.append((t, ip_frame(d, 17, _pack_udp(sp, dp, n, c) + payload)))


# ---------------------------------------------------------------------------
# application payload builders


def tls_records(g: Gen, n: int, ctype: int = 0x17) -> bytes:
    parts = []
    while n > 0:
        k = min(n, 16384 + 22)
        parts.append(struct.pack("!BHH", ctype, 0x0303, k))
        parts.append(g.blob(k))
        n -= k
    return b"".join(parts)


def client_hello(g: Gen, sni: str) -> bytes:
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    ks = struct.pack("!HHHHH", 51, 38, 36, 0x001D, 32) + g.blob(32)
    sv = struct.pack("!HHB", 43, 5, 4) + b"\x03\x04\x03\x03"
    alpn = struct.pack("!HHH", 16, 14, 12) + b"\x02h2\x08http/1.1"
    sg = struct.pack("!HHH", 10, 8, 6) + b"\x00\x1d\x00\x17\x00\x18"
    exts = sni_ext + sg + alpn + sv + ks
    pad = max(0, 512 - 4 - 2 - 32 - 33 - 2 - 32 - 2 - 2 - len(exts) - 4)
    exts += struct.pack("!HH", 21, pad) + b"\0" * pad
    suites = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    body = (
        b"\x03\x03"
        + g.blob(32)
        + b"\x20"
        + g.blob(32)
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 0x16, 0x0301, len(hs)) + hs


def server_flight(g: Gen) -> bytes:
    sh_body = (
        b"\x03\x03"
        + g.blob(32)
        + b"\x20"
        + g.blob(32)
        + b"\x13\x01\x00"
        + b"\x00\x2e"
        + struct.pack("!HHH", 43, 2, 0x0304)
        + struct.pack("!HHHH", 51, 36, 0x001D, 32)
        + g.blob(32)
    )
    sh = b"\x02" + len(sh_body).to_bytes(3, "big") + sh_body
    rec = struct.pack("!BHH", 0x16, 0x0303, len(sh)) + sh
    rec += b"\x14\x03\x03\x00\x01\x01"
    return rec + tls_records(g, g.rng.randrange(2400, 5200))


def client_finish(g: Gen) -> bytes:
    return b"\x14\x03\x03\x00\x01\x01" + tls_records(g, 53)


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def nb_name(name: str, suffix: int) -> bytes:
    raw = name.upper().ljust(15)[:15].encode() + bytes([suffix])
    enc = bytes(c for b in raw for c in (0x41 + (b >> 4), 0x41 + (b & 0xF)))
    return b"\x20" + enc + b"\x00"


FILE_MAGIC = {
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
    "gz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
    "tar.gz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
    "bin": b"\x7fELF\x02\x01\x01\x00",
    "iso": b"\x00" * 16,
    "7z": b"7z\xbc\xaf\x27\x1c\x00\x04",
    "docx": b"PK\x03\x04\x14\x00\x06\x00\x08\x00",
    "xlsx": b"PK\x03\x04\x14\x00\x06\x00\x08\x00",
    "bak": b"TAPE\x00\x00\x00\x00",
    "sql": b"-- MySQL dump 10.13\n",
    "csv": b"id,name,email,created\n",
}
FILE_STEMS = (
    "backup",
    "report_q3",
    "payroll",
    "db_dump",
    "export",
    "firmware",
    "update",
    "customers",
    "invoice_2023",
    "archive",
    "logs",
    "config",
    "setup",
    "image",
    "release-2.4.1",
    "data",
    "finance",
    "projects",
    "mail_export",
    "scan",
)


def file_name(g: Gen) -> tuple[str, bytes]:
    ext = g.rng.choice(tuple(FILE_MAGIC))
    return f"{g.rng.choice(FILE_STEMS)}{g.rng.randrange(0, 500)}.{ext}", FILE_MAGIC[ext]


def file_size(g: Gen, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, int(g.rng.lognormvariate(0.0, sigma) * median)))


# ---------------------------------------------------------------------------
# sessions (each returns a time-sorted list of (ts_us, frame))


def sess_tls(g: Gen, t0: int, v6: bool, tags: bytes) -> list:
    rng = g.rng
    out: list = []
    cli = rng.choice(g.clients6 if v6 else g.clients4)
    pool, cw = (g.web6, g.web6_cw) if v6 else (g.web4, g.web4_cw)
    srv = rng.choices(pool[: len(cw)], cum_weights=cw)[0] if rng.random() < 0.5 else rng.choice(pool)
    g.remotes.add(srv.i)
    c = Tcp(g, out, t0, cli, srv, g.eport(), 443, tags, g.rtt(), g.gap(1460))
    c.handshake()
    c.req(client_hello(g, rng.choice(g.domains)), 200)
    c.resp(server_flight(g), 2_000)
    c.req(client_finish(g), 300)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 6))):
        c.req(tls_records(g, rng.randrange(90, 900)), rng.randrange(1_000, 1_500_000))
        c.resp(tls_records(g, file_size(g, 9_000, 1.5, 1_500_000)), rng.randrange(500, 80_000))
    if rng.random() < 0.7:  # close_notify
        c.req(b"\x15\x03\x03\x00\x1a" + g.blob(26), rng.randrange(1_000, 3_000_000))
    c.close(0 if rng.random() < 0.7 else 1)
    return out


def sess_dns(g: Gen, t0: int, v6: bool, tags: bytes) -> list:
    rng = g.rng
    out: list = []
    cli = rng.choice(g.clients6 if v6 else g.clients4)
    srv = rng.choice(g.dns6 if v6 else g.dns4)
    g.remotes.add(srv.i)
    u = Udp(g, out, cli, srv, tags)
    name = rng.choice(g.domains)
    if rng.random() < 0.3:
        name = f"{rng.choice(('www', 'm', 'api', 'x' + str(rng.randrange(1000))))}.{name}"
    q = dns_name(name)
    t = t0
    rtt = int(rng.uniform(800, 40_000))
    qtypes = (28, 1) if v6 and rng.random() < 0.6 else ((1,) if rng.random() < 0.7 else (1, 65))
    for qt in qtypes:
        txid = rng.getrandbits(16)
        sp = g.eport()
        query = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 1) + q + struct.pack("!HH", qt, 1)
        # EDNS0 OPT
        query = query[:10] + b"\x00\x01" + query[12:] + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
        u.emit(0, t, sp, 53, query)
        t += rtt
        if rng.random() < 0.04:
            ans = struct.pack("!HHHHHH", txid, 0x8183, 1, 0, 0, 0) + q + struct.pack("!HH", qt, 1)
        else:
            na = rng.randrange(1, 4) if qt in (1, 28) else 0
            rr = b""
            for _ in range(na):
                if qt == 1:
                    rr += struct.pack("!HHHIH", 0xC00C, 1, 1, rng.randrange(30, 3600), 4) + g.blob(4)
                else:
                    rr += struct.pack("!HHHIH", 0xC00C, 28, 1, rng.randrange(30, 3600), 16) + g.blob(16)
            ans = struct.pack("!HHHHHH", txid, 0x8180, 1, na, 0, 0) + q + struct.pack("!HH", qt, 1) + rr
        u.emit(1, t, 53, sp, ans)
        t += rng.randrange(50, 2_000)
    return out


def sess_quic(g: Gen, t0: int, v6: bool, tags: bytes) -> list:
    rng = g.rng
    out: list = []
    cli = rng.choice(g.clients6 if v6 else g.clients4)
    pool, cw = (g.web6, g.web6_cw) if v6 else (g.web4, g.web4_cw)
    srv = rng.choices(pool[: len(cw)], cum_weights=cw)[0] if rng.random() < 0.6 else rng.choice(pool)
    g.remotes.add(srv.i)
    u = Udp(g, out, cli, srv, tags)
    sp = g.eport()
    dcid, scid = g.blob(8), g.blob(8)
    rtt = g.rtt()
    gap = g.gap(1252)
    t = t0
    u.emit(0, t, sp, 443, quic_long(g, 0xC3, dcid, scid, 1200, initial=True))
    t += rtt
    server_cid = g.blob(8)
    for i in range(rng.randrange(2, 5)):
        u.emit(
            1,
            t,
            443,
            sp,
            quic_long(g, 0xC1 if i == 0 else 0xE1, scid, server_cid, rng.randrange(1150, 1230), initial=i == 0),
        )
        t += gap
    t += 200
    u.emit(0, t, sp, 443, quic_long(g, 0xE1, server_cid, scid, rng.randrange(80, 140)))
    dcid = server_cid
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        t += rng.randrange(1_000, 800_000)
        u.emit(0, t, sp, 443, b"\x41" + dcid + g.blob(rng.randrange(40, 400)))
        t += rtt
        nresp = min(900, max(1, int(rng.lognormvariate(0, 1.4) * 10)))
        for j in range(nresp):
            u.emit(1, t, 443, sp, b"\x41" + scid + g.blob(1252 - 9 if j < nresp - 1 else rng.randrange(30, 1243)))
            if j % 4 == 3 or j == nresp - 1:
                u.emit(0, t + 80, sp, 443, b"\x41" + dcid + g.blob(rng.randrange(25, 45)))
            t += gap
    t += rng.randrange(1_000, 2_000_000)
    u.emit(0, t, sp, 443, b"\x41" + dcid + g.blob(rng.randrange(25, 45)))
    return out


def quic_long(g: Gen, first: int, dcid: bytes, scid: bytes, size: int, initial: bool = False) -> bytes:
    """QUIC v1 long-header packet of ``size`` bytes with a consistent Length field."""
    hdr = bytes([first]) + b"\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if initial:
        hdr += b"\x00"  # no token
    rest = size - len(hdr) - 2
    return hdr + struct.pack("!H", 0x4000 | rest) + g.blob(rest)


# ---- FTP ----------------------------------------------------------------------

FTP_USERS = ("backup", "admin", "ftpuser", "svc_sync", "deploy", "jsmith")
SMB_USERS = ("Administrator", "backup_svc", "jsmith", "mdupont", "svc_sql", "operator")

FTP_BANNERS = (
    "220 (vsFTPd 3.0.3)\r\n",
    "220 ProFTPD Server (ProFTPD) [{ip}]\r\n",
    "220 Microsoft FTP Service\r\n",
    "220-Welcome to the file archive.\r\n220-All transfers are logged.\r\n220 \r\n",
    "220 FileZilla Server 1.7.3\r\n",
    "220 Pure-FTPd [privsep] [TLS]\r\n",
)


def _ftp_cmd(ctl: Tcp, line: str, reply: str, think=None, tls=False):
    g = ctl.g
    if tls:
        ctl.req(tls_records(g, len(line) + 2 + 17), think if think is not None else g.rng.randrange(500, 60_000))
        ctl.resp(tls_records(g, len(reply) + 17), g.rng.randrange(100, 3_000))
    else:
        ctl.req((line + "\r\n").encode(), think if think is not None else g.rng.randrange(500, 60_000))
        ctl.resp(reply.encode(), g.rng.randrange(100, 3_000))


def sess_ftp(g: Gen, t0: int, v6: bool, tags: bytes, key=None, mode="ftp") -> list:
    """FTP (plain, implicit FTPS on 990, or explicit AUTH TLS) with data connections."""
    rng = g.rng
    out: list = []
    if key is not None:
        cli, srv = key[0], key[1]
    else:
        cli = rng.choice(g.clients6 if v6 else g.clients4)
        srv = rng.choice(g.xfer6 if v6 else g.xfer4)
    v6 = cli.v6
    g.remotes.add(srv.i)
    port = 990 if mode == "ftps" else 21
    g.cur_key = (str(cli.ip), str(srv.ip), port)
    info = g.info
    info.update(client=str(cli.ip), server=str(srv.ip), port=port, outcome="success", transfers=[])
    active = mode == "ftp_active"
    rtt, gap = g.rtt(), g.gap(1460)
    ctl = Tcp(g, out, t0, cli, srv, g.eport(), port, tags, rtt, gap)
    ctl.handshake()
    tls = False
    if mode == "ftps":
        ctl.req(client_hello(g, f"ftp.{rng.choice(g.domains)}"), 200)
        ctl.resp(server_flight(g), 1_000)
        ctl.req(client_finish(g), 300)
        tls = True
        ctl.resp(tls_records(g, 40), 200)
    else:
        banner = rng.choice(FTP_BANNERS).format(ip=srv.ip)
        ctl.resp(banner.encode(), 500)
    if mode == "ftp_authtls":
        _ftp_cmd(ctl, "AUTH TLS", "234 AUTH TLS successful\r\n", 5_000)
        ctl.req(client_hello(g, f"ftp.{rng.choice(g.domains)}"), 200)
        ctl.resp(server_flight(g), 1_000)
        ctl.req(client_finish(g), 300)
        tls = True
    if key is not None:
        user = key[3]
    else:
        user = "anonymous" if rng.random() < 0.4 else rng.choice(FTP_USERS)
    anon = user == "anonymous"
    info["account"] = user
    # what a passive observer can read: USER travels inside TLS on 990 and after AUTH TLS
    info["account_visible"] = "" if mode in ("ftps", "ftp_authtls") else user
    _ftp_cmd(ctl, f"USER {user}", "331 Please specify the password.\r\n", 20_000, tls)
    if rng.random() < 0.06:  # failed login
        info["outcome"] = "success_login_failed"
        _ftp_cmd(
            ctl,
            "PASS " + ("guest@" if anon else "Winter2023!"),
            "530 Login incorrect.\r\n",
            rng.randrange(50_000, 2_000_000),
            tls,
        )
        _ftp_cmd(ctl, "QUIT", "221 Goodbye.\r\n", 300_000, tls)
        ctl.close(1)
        return out
    _ftp_cmd(
        ctl,
        "PASS " + ("anonymous@" if anon else "S3cr3t-" + str(rng.randrange(1000))),
        "230 Login successful.\r\n",
        rng.randrange(20_000, 2_000_000),
        tls,
    )
    if tls:
        _ftp_cmd(ctl, "PBSZ 0", "200 PBSZ=0\r\n", None, True)
        _ftp_cmd(ctl, "PROT P", "200 Protection level set to P\r\n", None, True)
    _ftp_cmd(ctl, "SYST", "215 UNIX Type: L8\r\n", None, tls)
    if rng.random() < 0.6:
        _ftp_cmd(
            ctl,
            "FEAT",
            "211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n"
            " SIZE\r\n TVFS\r\n UTF8\r\n211 End\r\n",
            None,
            tls,
        )
    _ftp_cmd(ctl, "PWD", '257 "/" is the current directory\r\n', None, tls)
    if rng.random() < 0.5:
        d = rng.choice(("pub", "upload", "incoming", "backups", "outgoing/2023"))
        _ftp_cmd(ctl, f"CWD /{d}", "250 Directory successfully changed.\r\n", None, tls)
    _ftp_cmd(ctl, "TYPE I", "200 Switching to Binary mode.\r\n", None, tls)
    ops = []
    if rng.random() < 0.4:
        ops.append("LIST")
    upload_bias = 0.45 if not anon else 0.1
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        ops.append("STOR" if rng.random() < upload_bias else "RETR")
    for op in ops:
        name, magic = file_name(g)
        if op == "LIST":
            lines = "".join(
                f"-rw-r--r--    1 ftp      ftp      {rng.randrange(100, 10**8):>10} Nov {rng.randrange(1, 29):2d} "
                f"{rng.randrange(0, 24):02d}:{rng.randrange(0, 60):02d} {file_name(g)[0]}\r\n"
                for _ in range(rng.randrange(3, 60))
            )
            data = lines.encode()
        else:
            size = file_size(g, 40_000, 1.3, 6_000_000)
            data = g.blob(size, magic)
            if op == "RETR" and rng.random() < 0.5:
                _ftp_cmd(ctl, f"SIZE {name}", f"213 {size}\r\n", None, tls)
        # set up the data connection
        dport = rng.randrange(30000, 65000)
        if active:
            cport = g.eport()
            if v6:
                _ftp_cmd(ctl, f"EPRT |2|{cli.ip}|{cport}|", "200 EPRT command successful. Consider using EPSV.\r\n")
            else:
                h = str(cli.ip).replace(".", ",")
                _ftp_cmd(
                    ctl,
                    f"PORT {h},{cport >> 8},{cport & 0xFF}",
                    "200 PORT command successful. Consider using PASV.\r\n",
                )
        elif v6 or rng.random() < 0.6:
            _ftp_cmd(ctl, "EPSV", f"229 Entering Extended Passive Mode (|||{dport}|)\r\n", None, tls)
        else:
            h = str(srv.ip).replace(".", ",")
            _ftp_cmd(ctl, "PASV", f"227 Entering Passive Mode ({h},{dport >> 8},{dport & 0xFF}).\r\n", None, tls)
        arg = "" if op == "LIST" else f" {name}"
        xfer_rec = {
            "op": op,
            "name": None if op == "LIST" else name,
            "bytes": len(data),
            "data_mode": "active" if active else "passive",
        }
        info["transfers"].append(xfer_rec)
        if active:
            # command first, then the server connects from port 20 to the client's port
            ctl.req((op + arg + "\r\n").encode(), rng.randrange(500, 20_000))
            xfer_rec["data_conn"] = [str(srv.ip), 20, str(cli.ip), cport]
            dc = Tcp(g, out, ctl.t + rtt + 500, srv, cli, 20, cport, tags, rtt, gap, a_ttl=ctl.d[1].ttl, b_ttl=64)
            dc.react = [rtt, 60]  # the initiator (server) is the far side here
            dc.handshake()
            ctl.t = dc.t
            mode_txt = "ASCII" if op == "LIST" else "BINARY"
            ctl.resp(
                f"150 Opening {mode_txt} mode data connection for {'file list' if op == 'LIST' else name}.\r\n".encode(),
                100,
            )
            dc.t = ctl.t
            sender, far = (0 if op != "STOR" else 1), 0
        else:
            dc = Tcp(g, out, ctl.t + rng.randrange(200, 3_000), cli, srv, g.eport(), dport, tags, rtt, gap)
            xfer_rec["data_conn"] = [str(cli.ip), dc.ports[0][0], str(srv.ip), dport]
            dc.handshake()
            ctl.t = dc.t
            if tls:
                ctl.req(tls_records(g, len(op + arg) + 19), 300)
                ctl.resp(tls_records(g, 60), 200)
            else:
                ctl.req((op + arg + "\r\n").encode(), 300)
                if op == "LIST":
                    ctl.resp(b"150 Here comes the directory listing.\r\n", 200)
                elif op == "RETR":
                    ctl.resp(
                        f"150 Opening BINARY mode data connection for {name} ({len(data)} bytes).\r\n".encode(), 200
                    )
                else:
                    ctl.resp(b"150 Ok to send data.\r\n", 200)
            dc.t = ctl.t
            sender, far = (1 if op != "STOR" else 0), 1
        if tls:
            init = 0
            dc.send(init, client_hello(g, f"ftp.{rng.choice(g.domains)}"), 200)
            dc.send(1 - init, server_flight(g), dc.rtt + 500)
            dc.send(init, client_finish(g), 300)
            data = tls_records(g, len(data) + 17 * (len(data) // 16384 + 1))
        dc.send(sender, data, 100 if sender == far else 300)
        dc.close(sender, 200)
        ctl.t = max(ctl.t, dc.t)
        if tls:
            ctl.resp(tls_records(g, 40), 300)
        elif op == "LIST":
            ctl.resp(b"226 Directory send OK.\r\n", 300)
        else:
            ctl.resp(b"226 Transfer complete.\r\n", 300)
    _ftp_cmd(ctl, "QUIT", "221 Goodbye.\r\n", rng.randrange(5_000, 3_000_000), tls)
    ctl.close(1, 500)
    return out


# ---- SMB ----------------------------------------------------------------------

_smb2_hdr = struct.Struct("<4sHHIHHIIQIIQ16s").pack
SMB2_NEGOTIATE, SMB2_SESSION_SETUP, SMB2_LOGOFF, SMB2_TREE_CONNECT, SMB2_TREE_DISCONNECT = 0, 1, 2, 3, 4
SMB2_CREATE, SMB2_CLOSE, SMB2_READ, SMB2_WRITE = 5, 6, 8, 9


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes([tag, n]) + body
    return bytes([tag, 0x82]) + n.to_bytes(2, "big") + body


# SPNEGO negTokenInit offering NTLMSSP (as in a NEGOTIATE response)
SPNEGO_INIT = _der(
    0x60,
    bytes.fromhex("06062b0601050502")
    + _der(0xA0, _der(0x30, _der(0xA0, _der(0x30, bytes.fromhex("060a2b06010401823702020a"))))),
)
NTLM_FLAGS = 0xE2088297


def ntlm_negotiate() -> bytes:
    return (
        b"NTLMSSP\x00"
        + struct.pack("<II8s8s", 1, NTLM_FLAGS, b"\0" * 8, b"\0" * 8)
        + b"\x0a\x00\x63\x45\x00\x00\x00\x0f"
    )


def ntlm_challenge(g: Gen, host: str) -> bytes:
    target = "CORP".encode("utf-16-le")
    h = host.encode("utf-16-le")
    info = (
        struct.pack("<HH", 2, len(target))
        + target
        + struct.pack("<HH", 1, len(h))
        + h
        + struct.pack("<HH", 7, 8)
        + struct.pack("<Q", 133440000000000000)
        + b"\0\0\0\0"
    )
    off = 56
    return (
        b"NTLMSSP\x00"
        + struct.pack(
            "<IHHIIQ8sHHI",
            2,
            len(target),
            len(target),
            off,
            NTLM_FLAGS,
            int.from_bytes(g.blob(8), "little"),
            b"\0" * 8,
            len(info),
            len(info),
            off + len(target),
        )
        + b"\x0a\x00\x63\x45\x00\x00\x00\x0f"
        + target
        + info
    )


def ntlm_auth(g: Gen, domain: str, user: str, ws: str) -> bytes:
    d, u, w = (x.encode("utf-16-le") for x in (domain, user, ws))
    lm = b"\0" * 24
    nt = (
        g.blob(16)
        + b"\x01\x01\x00\x00\x00\x00\x00\x00"
        + struct.pack("<Q", 133440000000000000)
        + g.blob(8)
        + b"\0" * 4
        + b"\0" * 4
    )
    key = g.blob(16)
    off = 88
    fields = []
    payload = b""
    for blob in (lm, nt, d, u, w, key):
        fields.append((len(blob), len(blob), off + len(payload)))
        payload += blob
    sec = b"".join(struct.pack("<HHI", *f) for f in fields)
    return (
        b"NTLMSSP\x00"
        + struct.pack("<I", 3)
        + sec
        + struct.pack("<I", NTLM_FLAGS)
        + b"\x0a\x00\x63\x45\x00\x00\x00\x0f"
        + g.blob(16)
        + payload
    )


class Smb:
    def __init__(self, g: Gen, conn: Tcp):
        self.g = g
        self.c = conn
        self.mid = 0
        self.sid = 0
        self.tid = 0
        self.signed = False

    def hdr(self, cmd: int, resp: bool, status: int = 0, credits: int = 1) -> bytes:
        flags = (1 if resp else 0) | (8 if self.signed else 0)
        sig = self.g.blob(16) if self.signed else b"\0" * 16
        return _smb2_hdr(
            b"\xfeSMB", 64, credits, status, cmd, credits, flags, 0, self.mid, 0xFEFF, self.tid, self.sid, sig
        )

    def exchange(
        self,
        cmd: int,
        req_body: bytes,
        resp_body: bytes,
        status: int = 0,
        think: int | None = None,
        proc: int | None = None,
        credits: int = 1,
    ) -> None:
        rng = self.g.rng
        req = self.hdr(cmd, False, 0, credits) + req_body
        self.c.req(struct.pack("!I", len(req)) + req, think if think is not None else rng.randrange(100, 20_000))
        rsp = self.hdr(cmd, True, status, credits) + resp_body
        self.c.resp(struct.pack("!I", len(rsp)) + rsp, proc if proc is not None else rng.randrange(100, 5_000))
        self.mid += credits


def sess_smb(g: Gen, t0: int, v6: bool, tags: bytes, key=None, port=445) -> list:
    rng = g.rng
    out: list = []
    if key is not None:
        cli, srv = key[0], key[1]
    else:
        cli = rng.choice(g.clients6 if v6 else g.clients4)
        srv = rng.choice(g.xfer6 if v6 else g.xfer4)
    g.remotes.add(srv.i)
    g.cur_key = (str(cli.ip), str(srv.ip), port)
    info = g.info
    info.update(client=str(cli.ip), server=str(srv.ip), port=port, outcome="success", transfers=[])
    c = Tcp(g, out, t0, cli, srv, g.eport(), port, tags, g.rtt(), g.gap(1460))
    c.handshake()
    host = f"FS{rng.randrange(1, 99):02d}"
    if port == 139:
        req = struct.pack("!BBH", 0x81, 0, 68) + nb_name(host, 0x20) + nb_name(f"WS{rng.randrange(1000)}", 0x00)
        c.req(req, 300)
        c.resp(b"\x82\x00\x00\x00", 300)
    s = Smb(g, c)
    dialects = (0x0202, 0x0210, 0x0300, 0x0302, 0x0311)
    neg_req = struct.pack("<HHHHI16sIHH", 36, len(dialects), 1, 0, 0x7F, g.blob(16), 0, 0, 0) + b"".join(
        struct.pack("<H", d) for d in dialects
    )
    blob = SPNEGO_INIT
    neg_rsp = (
        struct.pack(
            "<HHHH16sIIIIQQHHI",
            65,
            1,
            0x0311,
            0,
            g.blob(16),
            0x2F,
            8388608,
            8388608,
            8388608,
            133440000000000000,
            0,
            128,
            len(blob),
            0,
        )
        + blob
    )
    s.exchange(SMB2_NEGOTIATE, neg_req, neg_rsp, think=500)
    t1 = ntlm_negotiate()
    t2 = ntlm_challenge(g, host)
    s.exchange(
        SMB2_SESSION_SETUP,
        struct.pack("<HBBIIHHQ", 25, 0, 1, 1, 0, 88, len(t1), 0) + t1,
        struct.pack("<HHHH", 9, 0, 72, len(t2)) + t2,
        status=0xC0000016,
        think=800,
    )
    s.sid = rng.getrandbits(63) | 1
    user = key[3] if key is not None else rng.choice(SMB_USERS)
    t3 = ntlm_auth(g, "CORP", user, f"WS{rng.randrange(1000):03d}")
    info["account"] = user
    info["domain"] = "CORP"
    info["account_visible"] = user
    s.exchange(
        SMB2_SESSION_SETUP,
        struct.pack("<HBBIIHHQ", 25, 0, 1, 1, 0, 88, len(t3), 0) + t3,
        struct.pack("<HHHH", 9, 0, 0, 0),
        think=800,
    )
    s.signed = rng.random() < 0.7
    share = rng.choice(("C$", "ADMIN$", "share", "backup", "public", "data", "transfer", "IPC$"))
    path = f"\\\\{srv.ip}\\{share}".encode("utf-16-le")
    s.exchange(
        SMB2_TREE_CONNECT,
        struct.pack("<HHHH", 9, 0, 72, len(path)) + path,
        struct.pack("<HBBIII", 16, 1, 0, 0x800, 0, 0x1F01FF),
    )
    s.tid = rng.randrange(1, 1 << 16)
    chunk = rng.choice((65536, 65536, 1048576))
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        name, magic = file_name(g)
        fname = (rng.choice(("", "Documents\\", "Temp\\", "Users\\Public\\")) + name).encode("utf-16-le")
        write = rng.random() < 0.45
        create_req = (
            struct.pack(
                "<HBBIQQIIIIIHHII",
                57,
                0,
                0,
                2,
                0,
                0,
                0x12019F if write else 0x120089,
                0x80,
                7,
                5 if write else 1,
                0x40,
                120,
                len(fname),
                0,
                0,
            )
            + fname
        )
        fid = g.blob(16)
        size = file_size(g, 50_000, 1.4, 8_000_000)
        info["transfers"].append(
            {"op": "write" if write else "read", "name": fname.decode("utf-16-le"), "bytes": size, "share": share}
        )
        create_rsp = struct.pack(
            "<HBBIQQQQQQI4s16sII",
            89,
            0,
            0,
            1,
            133440000000000000,
            133440000000000000,
            133440000000000000,
            133440000000000000,
            size,
            size,
            0x80,
            b"\0" * 4,
            fid,
            0,
            0,
        )
        s.exchange(SMB2_CREATE, create_req, create_rsp)
        off = 0
        data = g.blob(size, magic)
        while off < size:
            n = min(chunk, size - off)
            cr = max(1, n // 65536)
            if write:
                wreq = struct.pack("<HHIQ16sIIHHI", 49, 112, n, off, fid, 0, 0, 0, 0, 0) + data[off : off + n]
                s.exchange(
                    SMB2_WRITE,
                    wreq,
                    struct.pack("<HHIIHH", 17, 0, n, 0, 0, 0),
                    think=rng.randrange(50, 800),
                    credits=cr,
                )
            else:
                rreq = struct.pack("<HBBIQ16sIIIHHB", 49, 0x50, 0, n, off, fid, 1, 0, 0, 0, 0, 0)
                s.exchange(
                    SMB2_READ,
                    rreq,
                    struct.pack("<HBBII4x", 17, 80, 0, n, 0) + data[off : off + n],
                    think=rng.randrange(50, 800),
                    credits=cr,
                )
            off += n
        s.exchange(SMB2_CLOSE, struct.pack("<HHI16s", 24, 0, 0, fid), struct.pack("<HHI", 60, 0, 0) + b"\0" * 52)
    s.exchange(
        SMB2_TREE_DISCONNECT, struct.pack("<HH", 4, 0), struct.pack("<HH", 4, 0), think=rng.randrange(1_000, 500_000)
    )
    s.exchange(SMB2_LOGOFF, struct.pack("<HH", 4, 0), struct.pack("<HH", 4, 0))
    c.close(0, rng.randrange(1_000, 200_000))
    return out


# ---- TFTP ---------------------------------------------------------------------

TFTP_FILES = (
    "pxelinux.0",
    "pxelinux.cfg/default",
    "router-confg",
    "startup-config.bak",
    "firmware.bin",
    "boot/grub/grubx64.efi",
    "backup/switch01.cfg",
    "update.img",
    "payload.bin",
    "config.tar.gz",
)


def sess_tftp(g: Gen, t0: int, v6: bool, tags: bytes, key=None, wrq=False, fail=None) -> list:
    rng = g.rng
    out: list = []
    if key is not None:
        cli, srv = key[0], key[1]
    else:
        cli = rng.choice(g.clients6 if v6 else g.clients4)
        srv = rng.choice(g.xfer6 if v6 else g.xfer4)
    g.remotes.add(srv.i)
    u = Udp(g, out, cli, srv, tags)
    cport = g.eport()
    stid = rng.randrange(1024, 65536)
    while stid == 69:
        stid = rng.randrange(1024, 65536)
    rtt = g.rtt()
    fname = rng.choice(TFTP_FILES) if not wrq else f"backup-{rng.randrange(10000)}.cfg"
    req = struct.pack("!H", 2 if wrq else 1) + fname.encode() + b"\0octet\0"
    t = t0
    info = g.info
    info.update(
        client=str(cli.ip),
        server=str(srv.ip),
        port=69,
        client_port=cport,
        server_tid=stid,
        outcome="success",
        transfers=[],
        account_visible="",
    )
    if fail == "noanswer":
        info["outcome"] = "no_answer"
        for _i in range(rng.randrange(3, 6)):
            u.emit(0, t, cport, 69, req)
            t += 5_000_000
        return out
    u.emit(0, t, cport, 69, req)
    t += rtt
    if fail == "error":
        info["outcome"] = "tftp_error"
        u.emit(1, t, stid, cport, struct.pack("!HH", 5, 1) + b"File not found\0")
        return out
    g.cur_key = (str(cli.ip), str(srv.ip), 69)
    size = file_size(g, 20_000, 1.2, 2_000_000)
    data = g.blob(size)
    info["transfers"].append({"op": "WRQ" if wrq else "RRQ", "name": fname, "bytes": size})
    nblocks = size // 512 + 1  # last block < 512 bytes (possibly empty)
    if wrq:
        u.emit(1, t, stid, cport, b"\x00\x04\x00\x00")
        t += 150
        for b in range(1, nblocks + 1):
            u.emit(0, t, cport, stid, struct.pack("!HH", 3, b & 0xFFFF) + data[(b - 1) * 512 : b * 512])
            t += rtt
            u.emit(1, t, stid, cport, struct.pack("!HH", 4, b & 0xFFFF))
            t += 120
    else:
        for b in range(1, nblocks + 1):
            u.emit(1, t, stid, cport, struct.pack("!HH", 3, b & 0xFFFF) + data[(b - 1) * 512 : b * 512])
            t += 90
            u.emit(0, t, cport, stid, struct.pack("!HH", 4, b & 0xFFFF))
            t += rtt
    return out


# ---- failures -----------------------------------------------------------------


def sess_fail(g: Gen, t0: int, v6: bool, tags: bytes) -> list:
    rng = g.rng
    out: list = []
    port = rng.choice((21, 21, 445, 445, 445, 139, 990, 69))
    if port == 69:
        return sess_tftp(g, t0, v6, tags, fail=rng.choice(("noanswer", "error")))
    cli = rng.choice(g.clients6 if v6 else g.clients4)
    srv = rng.choice(g.xfer6 if v6 else g.xfer4)
    g.remotes.add(srv.i)
    c = Tcp(g, out, t0, cli, srv, g.eport(), port, tags, g.rtt(), 100)
    g.info.update(client=str(cli.ip), server=str(srv.ip), port=port, account_visible="")
    if rng.random() < 0.55:
        tries = rng.choice((1, 1, 2, 3))
        g.info.update(outcome="refused", attempts=tries)
        for _i in range(tries):
            c.rst_reply()
            c.t += rng.randrange(300_000, 600_000)
            c.nxt[0] = rng.getrandbits(32)
    else:
        tries = rng.choice((2, 3, 4))
        g.info.update(outcome="no_answer", syn_retransmissions=tries - 1)
        c.syn_timeout(tries)
    return out


def _ts(x):
    return x[0]


# ---------------------------------------------------------------------------
# driver

BG_KINDS = ("dns", "tls", "quic")
BG_W = (45, 40, 15)
XF_KINDS = ("ftp", "ftp_active", "ftps", "ftp_authtls", "smb445", "smb139", "tftp", "tftp_wrq", "fail")
XF_W = (26, 5, 5, 3, 24, 5, 10, 3, 19)


def make_session(g: Gen, t0: int):
    rng = g.rng
    share = g.xfer / g.total if g.total else 0.0
    target = g.xfer_target
    if target == TARGET_XFER:
        p_hi, p_lo = 0.09, 0.01
    else:  # scaled for other shares (bang-bang controller on the packet share)
        k = target / TARGET_XFER
        p_hi, p_lo = (1.0 if target > 0.5 else min(1.0, 0.09 * k)), min(0.5, 0.01 * k)
    xfer = rng.random() < (p_hi if share < target else p_lo)
    key = None
    if xfer:
        if rng.random() < 0.4:
            key = rng.choices(g.repeat_keys, cum_weights=g.repeat_cw)[0]
            kind = key[2]
            v6 = key[0].v6
        else:
            kind = rng.choices(XF_KINDS, weights=XF_W)[0]
            v6 = g.want_v6()
    else:
        kind = rng.choices(BG_KINDS, weights=BG_W)[0]
        v6 = g.want_v6()
    tags = g.encap(v6)
    g.cur_key = None
    g.info = {}
    if kind == "dns":
        pk = sess_dns(g, t0, v6, tags)
    elif kind == "tls":
        pk = sess_tls(g, t0, v6, tags)
    elif kind == "quic":
        pk = sess_quic(g, t0, v6, tags)
    elif kind in ("ftp", "ftp_active", "ftps", "ftp_authtls"):
        pk = sess_ftp(g, t0, v6, tags, key, kind)
    elif kind in ("smb445", "smb139"):
        pk = sess_smb(g, t0, v6, tags, key, 139 if kind == "smb139" else 445)
    elif kind in ("tftp", "tftp_wrq"):
        pk = sess_tftp(g, t0, v6, tags, key, wrq=kind == "tftp_wrq")
    else:
        pk = sess_fail(g, t0, v6, tags)
    pk.sort(key=_ts)  # stable: equal timestamps keep their causal order
    if g.cur_key is not None:  # a successful transfer-protocol connection
        g.succ[g.cur_key] = g.succ.get(g.cur_key, 0) + 1
    if xfer and pk and g.truth is not None:
        rec = {
            "kind": kind,
            "first_ts_us": pk[0][0],
            "last_ts_us": pk[-1][0],
            "packets": len(pk),
            "ipv6": v6,
            "vlan_tags": len(tags) // 4,
            "repeat_key": key is not None,
        }
        rec.update(g.info)
        g.truth.append(rec)
    return kind, xfer, v6, bool(tags), pk


def generate(
    out_path: Path,
    n_packets: int,
    seed: int,
    quiet: bool = False,
    truth_path: Path | None = None,
    xfer_share: float = TARGET_XFER,
) -> dict:
    t_start = time.perf_counter()
    g = Gen(seed, xfer_share)
    if truth_path is not None:
        g.truth = []
    rng = g.rng
    heap: list = []
    cnt = 0
    emitted = 0
    planned = 0
    next_start = BASE_TS_US
    creating = n_packets > 0
    nbytes = 0
    first_ts = last_ts = None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    kind_emit: dict[str, int] = {}
    emit_v6 = emit_vlan = emit_xfer = 0
    with open(out_path, "wb", buffering=1 << 20) as f:
        # classic pcap, little-endian, µs, snaplen 65535, LINKTYPE_ETHERNET
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        buf: list = []
        while emitted < n_packets:
            while creating and (not heap or next_start <= heap[0][0]):
                kind, xfer, v6, vlan, pk = make_session(g, next_start)
                if pk:
                    n = len(pk)
                    g.total += n
                    g.sessions += 1
                    g.kind_pk[kind] = g.kind_pk.get(kind, 0) + n
                    g.kind_n[kind] = g.kind_n.get(kind, 0) + 1
                    if xfer:
                        g.xfer += n
                    if v6:
                        g.v6 += n
                    if vlan:
                        g.vlan += n
                    planned += n
                    it = iter(pk)
                    ts, fr = next(it)
                    heapq.heappush(heap, (ts, cnt, fr, it, (kind, xfer, v6, vlan)))
                    cnt += 1
                    if planned >= n_packets:
                        creating = False
                # adaptive arrival rate so that n_packets span ~SPAN_US
                mean_gap = SPAN_US * (g.total / max(1, g.sessions)) / n_packets
                next_start += max(1, int(rng.expovariate(1.0 / mean_gap)))
            if not heap:
                break
            ts, _, fr, it, info = heap[0]
            ln = len(fr)
            buf.append(_pack_rec(ts // 1_000_000, ts % 1_000_000, ln, ln))
            buf.append(fr)
            nbytes += ln
            if first_ts is None:
                first_ts = ts
            last_ts = ts
            emitted += 1
            kind_emit[info[0]] = kind_emit.get(info[0], 0) + 1
            if info[1]:
                emit_xfer += 1
            if info[2]:
                emit_v6 += 1
            if info[3]:
                emit_vlan += 1
            nx = next(it, None)
            if nx is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (nx[0], cnt, nx[1], it, info))
                cnt += 1
            if len(buf) >= 16384:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    if g.truth is not None:
        with open(truth_path, "w") as tf:
            for rec in g.truth:
                if last_ts is None or rec["first_ts_us"] > last_ts:
                    continue  # never reached the capture
                rec["truncated"] = rec["last_ts_us"] > last_ts
                tf.write(json.dumps(rec) + "\n")
    elapsed = time.perf_counter() - t_start
    many = sorted(v for v in g.succ.values())
    stats = {
        "out": str(out_path),
        "packets": emitted,
        "seed": seed,
        "bytes_frames": nbytes,
        "file_bytes": out_path.stat().st_size,
        "first_ts": (first_ts or 0) / 1e6,
        "last_ts": (last_ts or 0) / 1e6,
        "span_s": ((last_ts or 0) - (first_ts or 0)) / 1e6,
        "sessions_started": g.sessions,
        "share_xfer": emit_xfer / max(1, emitted),
        "share_ipv6": emit_v6 / max(1, emitted),
        "share_vlan": emit_vlan / max(1, emitted),
        "packets_by_kind": dict(sorted(kind_emit.items())),
        "sessions_by_kind": dict(sorted(g.kind_n.items())),
        "distinct_remote_addresses": len(g.remotes),
        "xfer_keys_client_server_port": len(many),
        "xfer_keys_gt3_successful_conns": sum(1 for v in many if v > 3),
        "xfer_keys_le3_successful_conns": sum(1 for v in many if v <= 3),
        "xfer_keys_max_successful_conns": max(many, default=0),
        "elapsed_s": round(elapsed, 2),
    }
    if not quiet:
        print(json.dumps(stats, indent=2), file=sys.stderr)
    return stats


# ---------------------------------------------------------------------------
# self-test


def _iter_pcap(path: Path):
    with open(path, "rb") as f:
        data = f.read()
    off = 24
    n = len(data)
    unpack = struct.Struct("<IIII").unpack_from
    while off + 16 <= n:
        s, us, il, ol = unpack(data, off)
        off += 16
        yield s * 1_000_000 + us, data[off : off + il]
        off += il


def _l3(fr: bytes):
    off = 12
    et = int.from_bytes(fr[off : off + 2], "big")
    tags = 0
    while et in (0x8100, 0x88A8):
        off += 4
        tags += 1
        et = int.from_bytes(fr[off : off + 2], "big")
    return et, off + 2, tags


def self_test() -> int:
    try:
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether
    except ImportError:  # pragma: no cover
        print("self-test needs scapy", file=sys.stderr)
        return 2
    ok = True

    def check(cond, msg):
        nonlocal ok
        if not cond:
            ok = False
            print("FAIL:", msg, file=sys.stderr)

    with tempfile.TemporaryDirectory() as td:
        a, b, c = Path(td, "a.pcap"), Path(td, "b.pcap"), Path(td, "c.pcap")
        n = 60_000
        st = generate(a, n, 7, quiet=True)
        generate(b, n, 7, quiet=True)
        generate(c, n, 8, quiet=True)
        ha, hb, hc = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c))
        check(ha == hb, "same seed must give identical bytes")
        check(ha != hc, "different seed must give different bytes")
        check(st["packets"] == n, f"packet count {st['packets']} != {n}")
        print(json.dumps(st, indent=2), file=sys.stderr)
        check(0.10 <= st["share_xfer"] <= 0.22, f"xfer share {st['share_xfer']:.3f}")
        check(0.05 <= st["share_ipv6"] <= 0.16, f"ipv6 share {st['share_ipv6']:.3f}")
        check(0.14 <= st["share_vlan"] <= 0.27, f"vlan share {st['share_vlan']:.3f}")

        # own parse: monotonic timestamps, lengths, TCP sequence continuity, public remotes
        last = 0
        nxt: dict = {}
        peer_max: dict = {}
        seen_qinq = 0
        bad_seq = 0
        priv_remote = 0
        frames = []
        for i, (ts, fr) in enumerate(_iter_pcap(a)):
            check(ts >= last, f"timestamp went backwards at packet {i}")
            last = ts
            if i < 3000 or i % 97 == 0:
                frames.append(fr)
            et, off, tags = _l3(fr)
            if tags == 2:
                seen_qinq += 1
            if et == 0x0800:
                tl = int.from_bytes(fr[off + 2 : off + 4], "big")
                check(tl == len(fr) - off, f"IPv4 total length wrong at {i}")
                proto = fr[off + 9]
                src, dst = fr[off + 12 : off + 16], fr[off + 16 : off + 20]
                l4 = off + 20
                srcip, dstip = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
            else:
                check(et == 0x86DD, f"unexpected ethertype {et:#x} at {i}")
                pl = int.from_bytes(fr[off + 4 : off + 6], "big")
                check(pl == len(fr) - off - 40, f"IPv6 payload length wrong at {i}")
                proto = fr[off + 6]
                src, dst = fr[off + 8 : off + 24], fr[off + 24 : off + 40]
                l4 = off + 40
                srcip, dstip = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
            local = [ip for ip in (srcip, dstip) if not ip.is_global]
            check(len(local) == 1, f"expected exactly one local endpoint at {i}: {srcip} {dstip}")
            remote = dstip if srcip in local else srcip
            if not remote.is_global:
                priv_remote += 1
            if proto == 6:
                sp, dp, seq, ack = struct.unpack_from("!HHII", fr, l4)
                hl = (fr[l4 + 12] >> 4) * 4
                flags = fr[l4 + 13]
                plen = len(fr) - l4 - hl
                k = (src, sp, dst, dp)
                if flags & SYN:
                    nxt[k] = (seq + 1) & 0xFFFFFFFF
                    continue
                if flags & RST:
                    continue
                if k in nxt:
                    if seq != nxt[k]:
                        bad_seq += 1
                        if bad_seq <= 5:
                            print(
                                f"  seq gap at packet {i}: port {sp}->{dp} seq {seq} expected {nxt[k]}", file=sys.stderr
                            )
                    nxt[k] = (seq + plen + (1 if flags & FIN else 0)) & 0xFFFFFFFF
                rk = (dst, dp, src, sp)
                if flags & ACK and rk in nxt:
                    # never acknowledge bytes the peer has not sent yet
                    if ((nxt[rk] - ack) & 0xFFFFFFFF) > 0x7FFFFFFF:
                        bad_seq += 1
                        if bad_seq <= 5:
                            print(
                                f"  ack ahead at packet {i}: port {sp}->{dp} ack {ack} peer next {nxt[rk]}",
                                file=sys.stderr,
                            )
                peer_max[k] = 1
            elif proto == 17:
                ul = int.from_bytes(fr[l4 + 4 : l4 + 6], "big")
                check(ul == len(fr) - l4, f"UDP length wrong at {i}")
        check(bad_seq == 0, f"{bad_seq} TCP sequence/ack inconsistencies")
        check(priv_remote == 0, f"{priv_remote} packets with a non-public remote")
        check(seen_qinq > 0, "no QinQ packets")

        # scapy cross-check of checksums and lengths on a sample
        checked = 0
        for fr in frames:
            p = Ether(fr)
            ipl = p.getlayer(IP) or p.getlayer(IPv6)
            check(ipl is not None, "scapy found no IP layer")
            l4 = p.getlayer(TCP) or p.getlayer(UDP)
            if l4 is None:
                continue
            orig = (ipl.chksum if ipl.version == 4 else None, l4.chksum)
            q = p.copy()
            qi = q.getlayer(IP) or q.getlayer(IPv6)
            ql4 = q.getlayer(TCP) or q.getlayer(UDP)
            if qi.version == 4:
                del qi.chksum
                del qi.len
            else:
                del qi.plen
            del ql4.chksum
            if isinstance(ql4, UDP):
                del ql4.len
            r = Ether(bytes(q))
            ri = r.getlayer(IP) or r.getlayer(IPv6)
            rl4 = r.getlayer(TCP) or r.getlayer(UDP)
            check(bytes(r) == fr, "scapy rebuild differs from generated frame")
            if ri.version == 4:
                check(ri.chksum == orig[0], "IPv4 checksum mismatch")
            check(rl4.chksum == orig[1], f"L4 checksum mismatch {rl4.chksum:#x} != {orig[1]:#x}")
            checked += 1
        print(f"scapy cross-checked {checked} frames; QinQ frames {seen_qinq}", file=sys.stderr)
    print("self-test:", "OK" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=DEFAULT_PACKETS, help="number of packets (default 1,000,000)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output pcap (default {DEFAULT_OUT})")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="RNG seed (default %(default)s)")
    ap.add_argument(
        "--xfer-share",
        type=float,
        default=TARGET_XFER,
        help="target share of packets in file-transfer sessions (default 0.15; e.g. 0.9 for a "
        "capture dominated by tracked ports)",
    )
    ap.add_argument("--stats-json", type=Path, help="also write the generation stats to this file")
    ap.add_argument(
        "--truth",
        type=Path,
        help="also write one JSON line per file-transfer session (ground truth: endpoints, "
        "port, outcome, account, transfers, timestamps, truncated at the capture's end)",
    )
    ap.add_argument("--self-test", action="store_true", help="check determinism and cross-check with scapy")
    a = ap.parse_args(argv)
    if a.self_test:
        return self_test()
    if a.packets < 1:
        ap.error("--packets must be >= 1")
    if not 0.0 < a.xfer_share < 1.0:
        ap.error("--xfer-share must be between 0 and 1")
    tmp = a.out.with_name(a.out.name + ".part")
    st = generate(tmp, a.packets, a.seed, truth_path=a.truth, xfer_share=a.xfer_share)
    os.replace(tmp, a.out)
    st["out"] = str(a.out)
    if a.stats_json:
        a.stats_json.write_text(json.dumps(st, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
