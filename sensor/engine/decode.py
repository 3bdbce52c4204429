"""Packet decoding with ``struct``: link layer -> IPv4/IPv6 -> TCP/UDP.

Sans-IO and allocation-light: a packet that is not target traffic is
rejected after the cheapest checks (link type, ethertype, IP protocol, the two
ports; for TCP on other ports, whether the payload starts an FTP banner
"220") without building any object. Only target packets become a
:class:`Packet`. Malformed headers never raise: they are counted in
:class:`DecodeStats` and reported through ``on_weird(ts, name, detail)``.

Link types (pcap LINKTYPE values): Ethernet (1) with 802.1Q/802.1ad/QinQ
tags, BSD loopback (0 NULL, 108 LOOP), raw IP (101, and DLT_RAW 12/14),
IPv4 (228), IPv6 (229), Linux cooked SLL (113) and SLL2 (276).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sensor.core.counters import Counters

log = logging.getLogger("xfer-sensor")

_TCP = struct.Struct("!HHIIBB").unpack_from  # sport dport seq ack off flags

# TCP flag bits
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

_M32 = 0xFFFFFFFF
_HALF = 1 << 31
_WRAP = 1 << 32
_HI = ~_M32


def seq_unwrap(seq: int, base: int, ref: int) -> int:
    """The offset of TCP sequence number ``seq`` from ``base`` (both 32-bit),
    as the 64-bit value nearest ``ref`` (an offset from ``base`` already
    seen): the one place the 2^32 wrap is undone -- the flow table's byte
    counts, the fused path's and reassembly's."""
    cand = ((seq - base) & _M32) + (ref & _HI)
    if cand - ref > _HALF:
        return cand - _WRAP
    if ref - cand > _HALF:
        return cand + _WRAP
    return cand


LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
DLT_RAW_ALIASES = (12, 14)

VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140))  # hop, routing, dstopts, mobility, HIP, shim6
_AF_INET6_BSD = frozenset((10, 24, 28, 30))
MAX_VLAN_TAGS = 4
MAX_IPV6_EXT_HEADERS = 8
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD

_IP4L = struct.Struct("!BxHxxHxB2x4s4s").unpack_from  # ver/ihl, total length, frag, proto, src, dst
_IP6L = struct.Struct("!BxxxHB").unpack_from  # ver/tc, payload length, next header

# what ``locate`` stops at without a transport header, besides a weird:
# only counted (``DecodeStats``), never reported
NOT_IP, OTHER_PROTO, LATER_FRAGMENT = "non_ip", "other_ip_proto", "fragment"
# weirds that are also counted as ``truncated``
_TRUNCATED_WEIRDS = frozenset(("ipv4_truncated", "ipv6_truncated", "ipv6_ext_truncated"))

# what ``locate`` returns: (why, tags, vlan, version, proto, l4, end, src, dst, frags).
# ``src`` is the packed source address (bytes) when ``why`` is "", else the
# weird's detail (str): one slot whose type follows another slot's value,
# which mypy cannot narrow, hence Any (the callers read it only after checking ``why``)
Located = tuple[str, int, int, int, int, int, int, Any, bytes, int]


def locate(data: bytes, off: int, et: int) -> Located:
    """Where the transport header of ``data`` is: the one header walk that
    the decoder, the fused per-packet path (sensor/engine/fastpath.py) and
    the attribution tap share.

    ``et`` is the ethertype whose payload starts at ``off`` -- Ethernet: the
    bytes 12-13 and 14; Linux SLL: 14-15 and 16; SLL2: 0-1 and 20; an
    AF_PACKET datagram: the socket's protocol and 0; raw IP:
    ``ETHERTYPE_IPV4``/``ETHERTYPE_IPV6`` and the IP header's offset. Up to
    ``MAX_VLAN_TAGS`` 802.1Q/802.1ad tags, then IPv4 or IPv6 with its
    extension headers (up to ``MAX_IPV6_EXT_HEADERS``).

    Returns ``(why, tags, vlan, version, proto, l4, end, src, dst, frags)``:
    ``why`` is "" when a TCP or UDP header starts at ``l4`` (not checked to
    be there: ``l4`` may be past the captured bytes); ``end``: where the IP
    payload ends by the IP header's length; ``src``/``dst``: the packed
    addresses. Otherwise ``why`` names what stopped the walk: ``NOT_IP``,
    ``OTHER_PROTO``, ``LATER_FRAGMENT`` (a fragment without the transport
    header), or a weird's name with its detail in ``src``. ``tags``: VLAN
    tags passed (``vlan``: the first one's id); ``version``: 4 or 6 once an
    IP header was reached, else 0; ``frags``: fragment headers passed (a
    first fragment has its transport header and is located)."""
    n = len(data)
    tags = vlan = 0
    while et in VLAN_TPIDS:
        if tags >= MAX_VLAN_TAGS:
            return "vlan_too_many_tags", tags, vlan, 0, 0, 0, 0, str(tags + 1), b"", 0
        if off + 4 > n:
            return "vlan_truncated", tags, vlan, 0, 0, 0, 0, f"{n} bytes", b"", 0
        if not tags:
            vlan = ((data[off] & 0x0F) << 8) | data[off + 1]
        tags += 1
        et = (data[off + 2] << 8) | data[off + 3]
        off += 4
    if et == ETHERTYPE_IPV4:
        if off + 20 > n:
            return "ipv4_truncated", tags, vlan, 4, 0, 0, 0, f"{n - off} bytes of header", b"", 0
        b0, tot, frag, proto, src, dst = _IP4L(data, off)
        ihl = (b0 & 0x0F) << 2
        if b0 >> 4 != 4 or ihl < 20:
            return "ipv4_bad_header", tags, vlan, 4, 0, 0, 0, f"byte0={b0:#x}", b"", 0
        if proto != 6 and proto != 17:
            return OTHER_PROTO, tags, vlan, 4, proto, 0, 0, "", b"", 0
        if tot < ihl:
            return "ipv4_bad_length", tags, vlan, 4, proto, 0, 0, f"total={tot} ihl={ihl}", b"", 0
        if frag & 0x3FFF:
            if frag & 0x1FFF:
                return LATER_FRAGMENT, tags, vlan, 4, proto, 0, 0, "", b"", 1
            return "", tags, vlan, 4, proto, off + ihl, off + tot, src, dst, 1
        return "", tags, vlan, 4, proto, off + ihl, off + tot, src, dst, 0
    if et == ETHERTYPE_IPV6:
        if off + 40 > n:
            return "ipv6_truncated", tags, vlan, 6, 0, 0, 0, f"{n - off} bytes of header", b"", 0
        b0, paylen, nh = _IP6L(data, off)
        if b0 >> 4 != 6:
            return "ipv6_bad_version", tags, vlan, 6, 0, 0, 0, f"byte0={b0:#x}", b"", 0
        l4 = off + 40
        hops = frags = 0
        while nh != 6 and nh != 17:
            if nh in _IPV6_EXT or nh == 44 or nh == 51:
                hops += 1
                if hops > MAX_IPV6_EXT_HEADERS:
                    return "ipv6_too_many_ext_headers", tags, vlan, 6, nh, 0, 0, str(hops), b"", frags
                if l4 + 8 > n:
                    return "ipv6_ext_truncated", tags, vlan, 6, nh, 0, 0, f"next header {nh}", b"", frags
                if nh == 44:
                    frags += 1
                    if ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8:
                        return LATER_FRAGMENT, tags, vlan, 6, nh, 0, 0, "", b"", frags
                    nxt, hl = data[l4], 8
                elif nh == 51:
                    nxt, hl = data[l4], (data[l4 + 1] + 2) << 2
                else:
                    nxt, hl = data[l4], (data[l4 + 1] + 1) << 3
                nh = nxt
                l4 += hl
            else:
                return OTHER_PROTO, tags, vlan, 6, nh, 0, 0, "", b"", frags
        return "", tags, vlan, 6, nh, l4, off + 40 + paylen, data[off + 8 : off + 24], data[off + 24 : off + 40], frags
    return NOT_IP, tags, vlan, 0, 0, 0, 0, "", b"", 0


# -- checksums -------------------------------------------------------------------
CHECKSUM_MODES = ("auto", "yes", "no")
# weird names of a packet dropped for its checksum (Zeek's names)
BAD_IP_CHECKSUM, BAD_TCP_CHECKSUM, BAD_UDP_CHECKSUM = "bad_IP_checksum", "bad_TCP_checksum", "bad_UDP_checksum"
_from_bytes = int.from_bytes


def ones_sum(data: bytes) -> int:
    """The ones'-complement sum of ``data`` as 16-bit words, modulo 0xFFFF
    (2^16 = 1 mod 0xFFFF, so the big integer's remainder is the folded sum;
    an odd length is padded with a zero byte). 0 stands for both 0 and 0xFFFF."""
    v = _from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    return v % 0xFFFF


def transport_sum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    """``ones_sum`` of the TCP/UDP pseudo-header (IPv4 or IPv6: the length
    is folded the same way) and ``seg``: 0 when its checksum is right."""
    v = _from_bytes(seg, "big")
    if len(seg) & 1:
        v <<= 8
    return (_from_bytes(src + dst, "big") + proto + len(seg) + v) % 0xFFFF


class Checksums:
    """Checksum validation (``checksum_validation``; docs/engine.md).

    ``no``: nothing is verified. ``yes``: a packet whose IPv4 header, TCP or
    UDP checksum is wrong is dropped before the flow table (counted in
    ``DecodeStats`` and reported as ``bad_IP_checksum``/``bad_TCP_checksum``/
    ``bad_UDP_checksum``). ``auto``: as ``yes``, except checksum offload: a
    host capturing its own outgoing packets sees, on Linux and Windows, the
    pseudo-header's partial sum in the TCP/UDP checksum field (the NIC
    completes it after the capture point). Such a packet is accepted only
    when its sender is in ``home_net`` or a loopback address (the capturing side's),
    its field is exactly that partial value, and its sender address was
    judged an offloading sender: by its first SYN (or SYN-ACK) seen -- a
    partial value there makes it one, a right checksum makes it a
    full-checksum sender for good -- or, without a handshake seen, by its
    first packet with the partial value. Each decision is logged once. At
    most ``max_senders`` decisions are kept; beyond, an undecided sender is
    a full-checksum one (strict). The fast test of a valid packet is
    inline in the per-packet paths; ``judge`` runs only when it fails."""

    __slots__ = ("mode", "verify", "auto", "stats", "on_weird", "senders", "max_senders", "_nets4", "_nets6", "full")

    def __init__(
        self,
        mode: str = "auto",
        home_net: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        max_senders: int = 4096,
    ) -> None:
        if mode not in CHECKSUM_MODES:
            raise ValueError(f"checksum_validation must be one of {', '.join(CHECKSUM_MODES)}")
        self.mode = mode
        self.verify = mode != "no"
        self.auto = mode == "auto"
        self.max_senders = max_senders
        self.senders: dict[bytes, bool] = {}  # packed sender address -> offloading
        self.full = 0  # decisions refused because ``senders`` was full
        self._nets4 = [(int(n.network_address), int(n.netmask)) for n in home_net if n.version == 4]
        self._nets6 = [n for n in home_net if n.version == 6]
        self.stats: DecodeStats | None = None  # the decoder's, set by the Decoder
        self.on_weird: WeirdCallback = lambda ts, name, detail: None

    def _home(self, src: bytes) -> bool:
        """``src`` is the capturing side's: in home_net, or a loopback address."""
        if len(src) == 4:
            if src[0] == 127:
                return True
            a = _from_bytes(src, "big")
            for n, m in self._nets4:  # (a loop: a SYN scan asks once per new sender)
                if a & m == n:
                    return True
            return False
        a6 = ipaddress.IPv6Address(src)
        return a6.is_loopback or any(a6 in n for n in self._nets6)

    def _decide(self, src: bytes, offloading: bool) -> bool:
        """Record the decision for home_net sender ``src`` (once); its outcome."""
        got = self.senders.get(src)
        if got is not None:
            return got
        if len(self.senders) >= self.max_senders:  # first: under a SYN scan, every new sender asks
            self.full += 1
            return False
        if not self._home(src):
            return False
        self.senders[src] = offloading
        if offloading:
            log.warning(
                "checksum offload recognised on packets sent by %s: their partial checksums are accepted "
                "(checksum_validation: auto; 'yes' verifies them all)",
                _addr(src),
            )
        else:
            log.info("packets sent by %s carry full checksums: a partial checksum from it is dropped", _addr(src))
        return offloading

    def syn(self, src: bytes) -> None:
        """A TCP SYN from ``src`` with a right checksum (``auto`` only): a full-checksum sender."""
        if src not in self.senders:
            self._decide(src, False)

    def judge(
        self,
        ts: int,
        data: bytes,
        ipoff: int,
        version: int,
        proto: int,
        l4: int,
        end: int,
        src: bytes,
        dst: bytes,
        flags: int,
        whole: bool = True,
    ) -> bool:
        """The packet's checksums, exactly: True when it is accepted (right,
        UDP without a checksum on IPv4, or offloaded), else counted and
        reported. ``whole``: False for an IPv4 first fragment (its
        transport checksum covers the whole datagram: not verified)."""
        st = self.stats
        if version == 4:
            ihl = (data[ipoff] & 0x0F) << 2
            if ones_sum(data[ipoff : ipoff + ihl]):
                field = (data[ipoff + 10] << 8) | data[ipoff + 11]
                if st is not None:
                    st.bad_ip_checksum += 1
                self.on_weird(ts, BAD_IP_CHECKSUM, f"{_addr(src)} > {_addr(dst)}: checksum {field:#06x}")
                return False
        if not whole:
            return True
        seg = data[l4:end]
        at = 16 if proto == 6 else 6
        field = (seg[at] << 8) | seg[at + 1]
        if proto == 17 and field == 0:
            if version == 4:
                return True  # no checksum (IPv4 only)
            if st is not None:
                st.bad_udp_checksum += 1
            self.on_weird(ts, BAD_UDP_CHECKSUM, f"{_addr(src)} > {_addr(dst)}: zero UDP checksum on IPv6")
            return False
        total = transport_sum(src, dst, proto, seg)
        if not total:
            if flags & SYN and self.auto and src not in self.senders:
                self._decide(src, False)
            return True
        partial = (_from_bytes(src + dst, "big") + proto + len(seg)) % 0xFFFF
        if self.auto and field % 0xFFFF == partial:
            known = self.senders.get(src)
            if known is None:
                known = self._decide(src, True)
            if known:
                if st is not None:
                    st.checksum_offloaded += 1
                return True
        rest = (total - field) % 0xFFFF  # the sum without the field
        want = 0xFFFF - rest if rest else 0xFFFF
        sport, dport = (seg[0] << 8) | seg[1], (seg[2] << 8) | seg[3]
        detail = f"{_addr(src)}:{sport} > {_addr(dst)}:{dport}: checksum {field:#06x}, expected {want:#06x}"
        if proto == 6:
            if st is not None:
                st.bad_tcp_checksum += 1
            self.on_weird(ts, BAD_TCP_CHECKSUM, detail)
        else:
            if st is not None:
                st.bad_udp_checksum += 1
            self.on_weird(ts, BAD_UDP_CHECKSUM, detail)
        return False


def _addr(b: bytes) -> str:
    return str(ipaddress.ip_address(b)) if len(b) in (4, 16) else b.hex()


class Packet:
    """A decoded target packet. Addresses are packed bytes (4 or 16)."""

    __slots__ = (
        "ts",
        "src",
        "dst",
        "proto",
        "sport",
        "dport",
        "flags",
        "seq",
        "ack",
        "plen",
        "payload",
        "vlan",
        "truncated",
    )

    def __init__(
        self,
        ts: int,
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int,
        dport: int,
        flags: int,
        seq: int,
        ack: int,
        plen: int,
        payload: bytes,
        vlan: int,
        truncated: bool,
    ) -> None:
        self.ts = ts
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.seq = seq
        self.ack = ack
        self.plen = plen  # payload length from the headers (not the capture)
        self.payload = payload  # captured payload (may be shorter: snaplen)
        self.vlan = vlan
        self.truncated = truncated

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"Packet(ts={self.ts}, {self.src.hex()}:{self.sport} > {self.dst.hex()}:{self.dport} "
            f"proto={self.proto} flags={self.flags:#x} seq={self.seq} plen={self.plen})"
        )


class DecodeStats(Counters):
    """Counters (Suricata's decoder.*). ``packets`` counts every frame."""

    __slots__ = (
        "packets",
        "ipv4",
        "ipv6",
        "tcp",
        "udp",
        "vlan",
        "target",
        "non_ip",
        "other_ip_proto",
        "fragments",
        "truncated",
        "malformed",
        "unknown_linktype",
        "bad_ip_checksum",
        "bad_tcp_checksum",
        "bad_udp_checksum",
        "checksum_offloaded",
    )

    packets: int
    ipv4: int
    ipv6: int
    tcp: int
    udp: int
    vlan: int
    target: int
    non_ip: int
    other_ip_proto: int
    fragments: int
    truncated: int
    malformed: int
    unknown_linktype: int
    bad_ip_checksum: int
    bad_tcp_checksum: int
    bad_udp_checksum: int
    checksum_offloaded: int


WeirdCallback = Callable[[int, str, str], None]


class Decoder:
    """Decodes frames of one link type; ``ports`` is consulted live (it may be
    a set the pipeline grows with expected data-channel ports)."""

    __slots__ = ("linktype", "ports", "hosts", "stats", "on_weird", "decode", "checksums")

    def __init__(
        self,
        linktype: int,
        ports: Collection[int],
        stats: DecodeStats | None = None,
        on_weird: WeirdCallback | None = None,
        hosts: Collection[tuple[bytes, bytes]] = frozenset(),
        checksums: Checksums | None = None,
    ) -> None:
        self.linktype = linktype
        self.ports = ports
        # (src, dst) packed address pairs whose traffic on any port is wanted:
        # FTPS sessions, whose data channels cannot be announced in clear text
        self.hosts = hosts
        self.stats = stats if stats is not None else DecodeStats()
        self.on_weird = on_weird or (lambda ts, name, detail: None)
        # checksum validation (None or mode "no": none); its counts are this decoder's
        self.checksums = checksums if checksums is not None and checksums.verify else None
        if self.checksums is not None:
            self.checksums.stats = self.stats
            self.checksums.on_weird = self.on_weird
        fn = _LINK_DECODERS.get(linktype)
        if fn is None and linktype in DLT_RAW_ALIASES:
            fn = Decoder._raw
        if fn is None:
            self.decode = self._unknown_link
        else:
            self.decode = fn.__get__(self)

    def handler(self, process: Callable[[Packet], object]) -> Callable[[int, bytes], None]:
        """A function ``(ts, frame)`` that decodes and hands target packets to
        ``process``. (For Ethernet the pipeline has a faster one of its own:
        sensor/engine/fastpath.py, which this decoder is the reference of.)"""
        decode = self.decode

        def handle(ts: int, data: bytes) -> None:
            p = decode(ts, data)
            if p is not None:
                process(p)

        return handle

    @property
    def packets(self) -> int:
        return self.stats.packets

    # -- helpers --------------------------------------------------------------
    def _weird(self, ts: int, name: str, detail: str = "") -> None:
        self.stats.malformed += 1
        self.on_weird(ts, name, detail)

    def _unknown_link(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        self.stats.unknown_linktype += 1
        return None

    # -- link layers ----------------------------------------------------------
    def _ethernet(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if len(data) < 14:
            self._weird(ts, "ethernet_truncated", f"{len(data)} bytes")
            return None
        return self._located(ts, data, locate(data, 14, (data[12] << 8) | data[13]), 14)

    def _sll(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if len(data) < 16:
            self._weird(ts, "sll_truncated", f"{len(data)} bytes")
            return None
        return self._located(ts, data, locate(data, 16, (data[14] << 8) | data[15]), 16)

    def _sll2(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if len(data) < 20:
            self._weird(ts, "sll2_truncated", f"{len(data)} bytes")
            return None
        return self._located(ts, data, locate(data, 20, (data[0] << 8) | data[1]), 20)

    def _null(self, ts: int, data: bytes) -> Packet | None:
        # DLT_NULL: address family in the *capturing host's* byte order
        self.stats.packets += 1
        if len(data) < 4:
            self._weird(ts, "loopback_truncated", f"{len(data)} bytes")
            return None
        fam = data[0] | (data[1] << 8) if data[0] or data[1] else (data[2] << 8) | data[3]
        return self._family(ts, data, fam)

    def _loop(self, ts: int, data: bytes) -> Packet | None:
        # DLT_LOOP (OpenBSD): network byte order
        self.stats.packets += 1
        if len(data) < 4:
            self._weird(ts, "loopback_truncated", f"{len(data)} bytes")
            return None
        return self._family(ts, data, (data[2] << 8) | data[3])

    def _family(self, ts: int, data: bytes, fam: int) -> Packet | None:
        if fam == 2:
            return self._located(ts, data, locate(data, 4, ETHERTYPE_IPV4), 4)
        if fam in _AF_INET6_BSD:
            return self._located(ts, data, locate(data, 4, ETHERTYPE_IPV6), 4)
        self.stats.non_ip += 1
        return None

    def _raw(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if not data:
            self._weird(ts, "ip_truncated", "empty")
            return None
        v = data[0] >> 4
        if v == 4:
            return self._located(ts, data, locate(data, 0, ETHERTYPE_IPV4), 0)
        if v == 6:
            return self._located(ts, data, locate(data, 0, ETHERTYPE_IPV6), 0)
        self._weird(ts, "ip_bad_version", str(v))
        return None

    def _raw4(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        return self._located(ts, data, locate(data, 0, ETHERTYPE_IPV4), 0)

    def _raw6(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        return self._located(ts, data, locate(data, 0, ETHERTYPE_IPV6), 0)

    # -- VLAN and IP: ``locate``, counted and reported ---------------------------
    def _located(self, ts: int, data: bytes, where: Located, off: int) -> Packet | None:
        """``off``: where the link layer's payload (a VLAN tag or the IP header) starts."""
        why, tags, vlan, version, proto, l4, end, src, dst, frags = where
        st = self.stats
        if tags:
            st.vlan += 1
        if version == 4:
            st.ipv4 += 1
        elif version == 6:
            st.ipv6 += 1
        if frags:
            st.fragments += frags
        if not why:
            return self._transport(ts, data, l4, end, proto, src, dst, vlan, off + 4 * tags, version, frags)
        if why == NOT_IP:
            st.non_ip += 1
        elif why == OTHER_PROTO:
            st.other_ip_proto += 1
        elif why != LATER_FRAGMENT:
            if why in _TRUNCATED_WEIRDS:
                st.truncated += 1
            self._weird(ts, why, src)
        return None

    # -- transport ------------------------------------------------------------
    def _transport(
        self,
        ts: int,
        data: bytes,
        l4: int,
        end: int,
        proto: int,
        src: bytes,
        dst: bytes,
        vlan: int,
        ipoff: int = 0,
        version: int = 4,
        frags: int = 0,
    ) -> Packet | None:
        st = self.stats
        n = len(data)
        if l4 + 8 > n:
            st.truncated += 1
            self._weird(ts, "transport_truncated", f"proto {proto}")
            return None
        sport = (data[l4] << 8) | data[l4 + 1]
        dport = (data[l4 + 2] << 8) | data[l4 + 3]
        ports = self.ports
        if sport not in ports and dport not in ports and not (self.hosts and (src, dst) in self.hosts):
            # an FTP banner ("220") on any other port may start FTP on a non-standard port
            if proto != 6 or l4 + 20 > n or data[l4 + ((data[l4 + 12] >> 4) << 2) :][:3] != b"220":
                return None
        st.target += 1
        truncated = end > n
        if proto == 6:
            st.tcp += 1
            if l4 + 14 > n:  # ports, seq, ack, offset, flags: all the sensor reads
                st.truncated += 1
                self._weird(ts, "tcp_truncated", f"{n - l4} bytes of header")
                return None
            _, _, seq, ack, doff, flags = _TCP(data, l4)
            hl = (doff >> 4) << 2
            if hl < 20:
                self._weird(ts, "tcp_bad_header_length", str(hl))
                return None
            plen = end - l4 - hl
            if plen < 0:
                self._weird(ts, "tcp_bad_length", f"ip payload {end - l4} < tcp header {hl}")
                return None
            if truncated:
                st.truncated += 1
            else:
                ck = self.checksums
                if ck is not None:
                    # the fast test (sensor/engine/fastpath.py inlines the same), then the exact one
                    if transport_sum(src, dst, 6, data[l4:end]) or (version == 4 and ones_sum(data[ipoff:l4])):
                        if not ck.judge(ts, data, ipoff, version, 6, l4, end, src, dst, flags, not frags):
                            return None
                    elif flags & SYN and ck.auto and src not in ck.senders:
                        ck.syn(src)
            return Packet(ts, src, dst, 6, sport, dport, flags, seq, ack, plen, data[l4 + hl : end], vlan, truncated)
        st.udp += 1
        ulen = (data[l4 + 4] << 8) | data[l4 + 5]
        if ulen < 8 or l4 + ulen > end:
            self._weird(ts, "udp_bad_length", f"udp length {ulen}, ip payload {end - l4}")
            ulen = end - l4  # trust the IP length, the smaller of the two
            if ulen < 8:
                return None
        if truncated:
            st.truncated += 1
        else:
            ck = self.checksums
            if ck is not None and (
                transport_sum(src, dst, 17, data[l4 : l4 + ulen]) or (version == 4 and ones_sum(data[ipoff:l4]))
            ):
                if not ck.judge(ts, data, ipoff, version, 17, l4, l4 + ulen, src, dst, 0, not frags):
                    return None
        return Packet(ts, src, dst, 17, sport, dport, 0, 0, 0, ulen - 8, data[l4 + 8 : l4 + ulen], vlan, truncated)


_LINK_DECODERS: dict[int, Callable[[Decoder, int, bytes], Packet | None]] = {
    LINKTYPE_ETHERNET: Decoder._ethernet,
    LINKTYPE_NULL: Decoder._null,
    LINKTYPE_LOOP: Decoder._loop,
    LINKTYPE_RAW: Decoder._raw,
    LINKTYPE_IPV4: Decoder._raw4,
    LINKTYPE_IPV6: Decoder._raw6,
    LINKTYPE_LINUX_SLL: Decoder._sll,
    LINKTYPE_LINUX_SLL2: Decoder._sll2,
}

SUPPORTED_LINKTYPES = frozenset(_LINK_DECODERS) | frozenset(DLT_RAW_ALIASES)
