"""Crafting test traffic with scapy (tests and the demo capture only).

Every field that scapy would otherwise fill from the host (MAC addresses,
timestamps) is set explicitly, so the same call always gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Packet, Raw
from scapy.utils import PcapWriter

try:  # scapy >= 2.5
    from scapy.layers.l2 import CookedLinuxV2
except ImportError:  # pragma: no cover
    CookedLinuxV2 = None

CLIENT_MAC = "02:00:00:00:00:01"
SERVER_MAC = "02:00:00:00:00:02"
M32 = 0xFFFFFFFF


@dataclass
class Link:
    """How frames are wrapped: plain Ethernet, 802.1Q, or QinQ."""

    vlan: int | None = None
    outer_vlan: int | None = None  # QinQ (802.1ad outer tag)

    def wrap(self, l3: Packet, from_client: bool) -> Packet:
        src, dst = (CLIENT_MAC, SERVER_MAC) if from_client else (SERVER_MAC, CLIENT_MAC)
        e = Ether(src=src, dst=dst)
        if self.outer_vlan is not None:
            return e / Dot1AD(vlan=self.outer_vlan) / Dot1Q(vlan=self.vlan or 1) / l3
        if self.vlan is not None:
            return e / Dot1Q(vlan=self.vlan) / l3
        return e / l3


def ip(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst, hlim=64) if ":" in src else IP(src=src, dst=dst, ttl=64, id=1)


@dataclass
class Tcp:
    """A scripted TCP connection; methods append packets with increasing time."""

    client: str
    server: str
    cport: int
    sport: int
    t: float
    link: Link = field(default_factory=Link)
    isn_c: int = 1000
    isn_s: int = 5000
    step: float = 0.001
    pkts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cseq = self.isn_c
        self.sseq = self.isn_s

    def _emit(
        self, from_client: bool, flags: str, payload: bytes = b"", seq: int | None = None, ack: int | None = None
    ) -> Packet:
        if from_client:
            l3 = ip(self.client, self.server) / TCP(
                sport=self.cport,
                dport=self.sport,
                flags=flags,
                seq=(self.cseq if seq is None else seq) & M32,
                ack=(self.sseq if ack is None else ack) & M32 if "A" in flags else 0,
                window=65535,
            )
        else:
            l3 = ip(self.server, self.client) / TCP(
                sport=self.sport,
                dport=self.cport,
                flags=flags,
                seq=(self.sseq if seq is None else seq) & M32,
                ack=(self.cseq if ack is None else ack) & M32 if "A" in flags else 0,
                window=65535,
            )
        if payload:
            l3 = l3 / Raw(payload)
        p = self.link.wrap(l3, from_client)
        p.time = self.t
        self.t = round(self.t + self.step, 6)
        self.pkts.append(p)
        return p

    def handshake(self) -> Tcp:
        self._emit(True, "S")
        self.cseq += 1
        self._emit(False, "SA")
        self.sseq += 1
        self._emit(True, "A")
        return self

    def send(self, from_client: bool, data: bytes, mss: int = 1400) -> Tcp:
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            self._emit(from_client, "PA", chunk)
            if from_client:
                self.cseq += len(chunk)
            else:
                self.sseq += len(chunk)
            self._emit(not from_client, "A")
        return self

    def c2s(self, data: bytes) -> Tcp:
        return self.send(True, data)

    def s2c(self, data: bytes) -> Tcp:
        return self.send(False, data)

    def retransmit_last(self, from_client: bool, data: bytes) -> Tcp:
        """Send ``data`` again at the sequence it had (it ends at the current seq)."""
        seq = (self.cseq if from_client else self.sseq) - len(data)
        self._emit(from_client, "PA", data, seq=seq)
        return self

    def fin(self) -> Tcp:
        self._emit(True, "FA")
        self.cseq += 1
        self._emit(False, "FA")
        self.sseq += 1
        self._emit(True, "A")
        return self

    def rst_from_client(self) -> Tcp:
        self._emit(True, "R")
        return self


def tcp_session(
    client: str,
    server: str,
    cport: int,
    sport: int,
    t: float,
    *,
    c2s: bytes = b"",
    s2c: bytes = b"",
    link: Link | None = None,
    isn_c: int = 1000,
    isn_s: int = 5000,
) -> list[Packet]:
    """A complete connection: handshake, request, response, FIN both ways."""
    c = Tcp(client, server, cport, sport, t, link or Link(), isn_c, isn_s)
    c.handshake()
    if c2s:
        c.c2s(c2s)
    if s2c:
        c.s2c(s2c)
    return c.fin().pkts


def tcp_refused(client: str, server: str, cport: int, sport: int, t: float, link: Link | None = None) -> list[Packet]:
    c = Tcp(client, server, cport, sport, t, link or Link())
    c._emit(True, "S")
    c.cseq += 1
    c._emit(False, "RA", seq=0)
    return c.pkts


def tcp_unanswered(
    client: str, server: str, cport: int, sport: int, t: float, tries: int = 3, link: Link | None = None
) -> list[Packet]:
    c = Tcp(client, server, cport, sport, t, link or Link(), step=1.0)
    for _ in range(tries):
        c._emit(True, "S")
    return c.pkts


def tcp_midstream(
    client: str,
    server: str,
    cport: int,
    sport: int,
    t: float,
    c2s: bytes = b"x" * 100,
    s2c: bytes = b"y" * 100,
    link: Link | None = None,
) -> list[Packet]:
    c = Tcp(client, server, cport, sport, t, link or Link())
    c.cseq, c.sseq = 777777, 888888
    c.c2s(c2s).s2c(s2c)
    return c.pkts


def udp_exchange(
    client: str,
    server: str,
    cport: int,
    sport: int,
    t: float,
    dgrams: Sequence[tuple[bool, bytes]],
    link: Link | None = None,
    step: float = 0.001,
) -> list[Packet]:
    """``dgrams``: (from_client, payload) in order."""
    lk = link or Link()
    out = []
    for from_client, payload in dgrams:
        if from_client:
            l3 = ip(client, server) / UDP(sport=cport, dport=sport) / Raw(payload)
        else:
            l3 = ip(server, client) / UDP(sport=sport, dport=cport) / Raw(payload)
        p = lk.wrap(l3, from_client)
        p.time = t
        t = round(t + step, 6)
        out.append(p)
    return out


def write_pcap(path: str | Path, pkts: Iterable[Packet], linktype: int | None = None) -> Path:
    """Write packets sorted by time (stable) as classic pcap."""
    path = Path(path)
    ordered = sorted(pkts, key=lambda p: float(p.time))
    w = PcapWriter(str(path), linktype=linktype, sync=False)
    for p in ordered:
        w.write(p)
    w.close()
    return path


def relink(pkts: Iterable[Packet], kind: str) -> tuple[list[Packet], int]:
    """Re-wrap Ethernet frames as another link type: 'sll', 'sll2', 'raw', 'null'."""
    out = []
    for p in pkts:
        l3 = p.getlayer(IP) or p.getlayer(IPv6)
        l3 = l3.copy()
        proto = 0x86DD if isinstance(l3, IPv6) else 0x0800
        if kind == "sll":
            q = (
                CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\x00\x00\x00\x00\x01\x00\x00", proto=proto)
                / l3
            )
            lt = 113
        elif kind == "sll2":
            q = (
                CookedLinuxV2(
                    proto=proto,
                    ifindex=2,
                    lladdrtype=1,
                    pkttype=0,
                    lladdrlen=6,
                    src=b"\x02\x00\x00\x00\x00\x01\x00\x00",
                )
                / l3
            )
            lt = 276
        elif kind == "raw":
            q = l3
            lt = 101
        elif kind == "null":
            q = Loopback(type=2 if proto == 0x0800 else 24) / l3
            lt = 0
        else:
            raise ValueError(kind)
        q.time = p.time
        out.append(q)
    return out, lt


def write_raw_pcap(
    path: str | Path, frames: Iterable[tuple[float, bytes, int]], linktype: int = 1, snaplen: int = 262144
) -> Path:
    """Classic pcap from (time, captured bytes, original length) triples, written
    with struct (for snaplen-cut and hand-damaged captures)."""
    import struct

    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
        for t, data, wirelen in frames:
            sec = int(t)
            usec = int(round((t - sec) * 1e6))
            f.write(struct.pack("<IIII", sec, usec, len(data), wirelen))
            f.write(data)
    return path


# ---------------------------------------------------------------------------
# Captures shared by several tests


def ftp_on_port_443(path: Path) -> Path:
    """1,100 FTP exchanges on port 21, then an FTP server on port 443 (its
    banner makes the pipeline add port 443 to the capture filter halfway
    through a read-ahead batch), then more port-443 commands."""
    pkts = []
    c = Tcp("10.9.0.5", "198.51.100.7", 40001, 21, 1_700_000_000.0)
    c.handshake()
    c.s2c(b"220 ftp\r\n")
    for _i in range(280):
        c.c2s(b"NOOP\r\n")
        c.s2c(b"200 ok\r\n")
    pkts += c.fin().pkts
    d = Tcp("10.9.0.6", "198.51.100.8", 40002, 443, c.t + 1)
    d.handshake()
    d.s2c(b"220 ftp on 443\r\n")
    d.c2s(b"USER alice\r\n")
    d.s2c(b"331 password\r\n")
    for _i in range(300):
        d.c2s(b"NOOP\r\n")
        d.s2c(b"200 ok\r\n")
    pkts += d.fin().pkts
    return write_pcap(path, pkts)
