"""tshark's independent view of a capture's TCP/UDP conversations (via pyshark).

For every conversation (tshark's ``tcp.stream`` / ``udp.stream``) this
collects who originated it, whether SYN / SYN-ACK / RST / FIN were seen,
payload bytes per direction counted in sequence space (tshark's *relative*
``tcp.seq`` plus ``tcp.len``: the highest byte reached, so retransmissions
count once and SYN/FIN are not counted), packets per direction and first and
last frame times.  It knows nothing about the sensor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyshark

from .tools import record_ts, union_length

__all__ = [
    "TRACKED_PORTS",
    "Conversation",
    "conversations",
    "port_filter",
    "record_ts",
    "record_key",
    "by_conversation",
    "bytes_vs_tshark",
]

# the sensor's tracked ports in this version (TCP and UDP)
TRACKED_PORTS = (20, 21, 69, 139, 445, 990)


def port_filter(ports: Iterable[int] = TRACKED_PORTS) -> str:
    s = ", ".join(str(p) for p in ports)
    return f"tcp.port in {{{s}}} or udp.port in {{{s}}}"


FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def _opt(layer, name: str):
    """An optional field of a pyshark JSON layer (None when absent)."""
    try:
        return layer.get_field(name)
    except AttributeError:
        return None


@dataclass
class _Dir:
    packets: int = 0
    wire_payload: int = 0  # sum of tcp.len / UDP payload, retransmissions included
    hi: int = 0  # highest relative seq reached by payload (TCP)
    segments: list = field(default_factory=list)  # (start, end) of payload in relative seq
    syn: bool = False
    fin: bool = False
    rst: bool = False
    nxtseq_mismatch: int = 0

    def seq_bytes(self) -> int:
        if not self.segments:
            return 0
        if self.syn:  # relative seq: SYN is 0, the first payload byte is 1
            return self.hi - 1
        # no SYN seen in this direction (mid-stream): span of what was seen
        return self.hi - min(s for s, _ in self.segments)

    def union_bytes(self) -> int:
        return union_length(self.segments)


@dataclass
class Conversation:
    proto: str  # "tcp" | "udp"
    stream: int
    a: tuple[str, int]  # first packet's source
    b: tuple[str, int]
    first_ts: str = ""  # frame.time_epoch of the first / last frame
    last_ts: str = ""
    frames: list = field(default_factory=list)
    dirs: dict = field(default_factory=dict)  # (src ip, src port) -> _Dir
    synack_from: tuple[str, int] | None = None
    syn_from: tuple[str, int] | None = None

    @property
    def originator(self) -> tuple[str, int]:
        """The SYN's sender (TCP); else the first packet's sender."""
        if self.syn_from is not None:
            return self.syn_from
        if self.synack_from is not None:
            return self.b if self.synack_from == self.a else self.a
        return self.a

    @property
    def responder(self) -> tuple[str, int]:
        o = self.originator
        return self.b if o == self.a else self.a

    def d(self, src: tuple[str, int]) -> _Dir:
        return self.dirs.setdefault(src, _Dir())

    @property
    def handshake(self) -> bool:
        """SYN from the originator and SYN-ACK from the responder both seen."""
        return self.syn_from is not None and self.synack_from == self.responder

    @property
    def rst(self) -> bool:
        return any(d.rst for d in self.dirs.values())

    def key(self) -> tuple:
        """Unordered endpoint pair plus protocol: how records are matched."""
        return (self.proto, frozenset((self.a, self.b)))

    def ports(self) -> set[int]:
        return {self.a[1], self.b[1]}

    def payload_bytes(self, src: tuple[str, int]) -> int:
        """Payload bytes sent by *src*: seq space for TCP, sum for UDP."""
        d = self.dirs.get(src)
        if d is None:
            return 0
        return d.seq_bytes() if self.proto == "tcp" else d.wire_payload

    def packets(self, src: tuple[str, int]) -> int:
        d = self.dirs.get(src)
        return d.packets if d else 0

    def summary(self) -> str:
        o, r = self.originator, self.responder
        return (
            f"{self.proto} #{self.stream} {o[0]}:{o[1]} -> {r[0]}:{r[1]} "
            f"syn={self.syn_from is not None} synack={self.synack_from is not None} "
            f"rst={self.rst} bytes {self.payload_bytes(o)}/{self.payload_bytes(r)} "
            f"pkts {self.packets(o)}/{self.packets(r)}"
        )


def conversations(
    pcap: str | Path,
    ports: Iterable[int] | None = TRACKED_PORTS,
) -> list[Conversation]:
    """All TCP/UDP conversations in *pcap* with a side on one of *ports*
    (every conversation if *ports* is None), in order of first frame."""
    flt = port_filter(ports) if ports is not None else "tcp or udp"
    # Disable the application dissectors: only TCP/UDP fields are read, and
    # without them tshark is faster and no reassembly hides a frame.
    params = []
    for proto in ("ftp", "ftp-data", "tls", "smb", "smb2", "nbss", "netbios", "tftp", "dcerpc"):
        params += ["--disable-protocol", proto]
    # JSON output: PDML carries every payload as hex and parses ~10x slower
    cap = pyshark.FileCapture(
        str(pcap),
        display_filter=flt,
        keep_packets=False,
        custom_parameters=params,
        use_json=True,
        override_prefs={"tcp.relative_sequence_numbers": "TRUE", "tcp.analyze_sequence_numbers": "TRUE"},
    )
    convs: dict[tuple[str, int], Conversation] = {}
    try:
        for pkt in cap:
            if "IP" not in pkt:
                continue
            ip = pkt.ip
            src_ip, dst_ip = ip.src, ip.dst
            ts = pkt.frame_info.time_epoch
            if "TCP" in pkt:
                t = pkt.tcp
                proto = "tcp"
                stream = int(t.stream)
                sport, dport = int(t.srcport), int(t.dstport)
            elif "UDP" in pkt:
                t = pkt.udp
                proto = "udp"
                stream = int(t.stream)
                sport, dport = int(t.srcport), int(t.dstport)
            else:
                continue
            src, dst = (src_ip, sport), (dst_ip, dport)
            c = convs.get((proto, stream))
            if c is None:
                c = convs[(proto, stream)] = Conversation(proto, stream, src, dst, first_ts=ts)
            c.last_ts = ts
            c.frames.append(int(pkt.frame_info.number))
            d = c.d(src)
            d.packets += 1
            if proto == "udp":
                d.wire_payload += int(t.length) - 8
                continue
            flags = int(str(t.flags), 16)
            syn, ack = bool(flags & SYN), bool(flags & ACK)
            fin, rst = bool(flags & FIN), bool(flags & RST)
            if syn and not ack and c.syn_from is None:
                c.syn_from = src
            if syn and ack and c.synack_from is None:
                c.synack_from = src
            d.syn |= syn
            d.fin |= fin
            d.rst |= rst
            length = int(t.len)
            seq = int(t.seq)
            d.wire_payload += length
            if length > 0:
                d.segments.append((seq, seq + length))
                d.hi = max(d.hi, seq + length)
            nxt = _opt(t, "nxtseq")
            if nxt is not None and (length or syn or fin):
                if int(nxt) != seq + length + int(syn) + int(fin):
                    d.nxtseq_mismatch += 1
    finally:
        cap.close()
    return sorted(convs.values(), key=lambda c: (c.first_ts, c.proto, c.stream))


def truncated_frames(pcap: str | Path) -> int:
    """Frames cut short by the capture's snaplen (a lab capture has none)."""
    cap = pyshark.FileCapture(str(pcap), display_filter="frame.cap_len < frame.len", use_json=True, keep_packets=False)
    try:
        return sum(1 for _ in cap)
    finally:
        cap.close()


# -- the sensor's connection records against tshark's conversations ---------------------------------


def record_key(c: dict) -> tuple:
    """A connection record's endpoint pair, as ``Conversation.key()``."""
    return (c["Protocol"].lower(), frozenset({(c["LocalIP"], c["LocalPort"]), (c["RemoteIP"], c["RemotePort"])}))


def by_conversation(records: Iterable[dict], convs: Iterable[Conversation]) -> tuple[dict, dict]:
    """(endpoint pair -> its records, endpoint pair -> its conversations), each in time order."""
    recs: dict = defaultdict(list)
    cvs: dict = defaultdict(list)
    for c in sorted(records, key=lambda c: record_ts(c["FirstSeen"])):
        recs[record_key(c)].append(c)
    for cv in sorted(convs, key=lambda v: float(v.first_ts)):
        cvs[cv.key()].append(cv)
    return recs, cvs


def bytes_vs_tshark(c: dict, recs: dict, convs: dict) -> tuple:
    """(sent, received bytes, sent, received packets) of record ``c`` and of
    tshark's conversation (``by_conversation``'s maps): the n-th record of an
    endpoint pair is its n-th conversation; when tshark has one UDP
    conversation for several records (a reused client port), the records' sums
    are compared with it."""
    k = record_key(c)
    rs, cvs = recs[k], convs.get(k, [])
    local, remote = (c["LocalIP"], c["LocalPort"]), (c["RemoteIP"], c["RemotePort"])
    if len(rs) == len(cvs):
        cv, mine = cvs[rs.index(c)], [c]
    elif k[0] == "udp" and len(cvs) == 1:
        cv, mine = cvs[0], rs
    else:
        return ("records", len(rs)), ("conversations", len(cvs))
    got = tuple(sum(r[f] for r in mine) for f in ("SentBytes", "ReceivedBytes", "SentPackets", "ReceivedPackets"))
    return got, (cv.payload_bytes(local), cv.payload_bytes(remote), cv.packets(local), cv.packets(remote))
