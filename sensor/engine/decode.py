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

import struct
from typing import Callable, Collection

from sensor.core.counters import Counters

_U16 = struct.Struct("!H").unpack_from
_IP4 = struct.Struct("!BBHHHBBH4s4s").unpack_from  # ver/ihl tos len id frag ttl proto csum src dst
_TCP = struct.Struct("!HHIIBB").unpack_from   # sport dport seq ack off flags
_UDP = struct.Struct("!HHH").unpack_from       # sport dport length

# TCP flag bits
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
DLT_RAW_ALIASES = (12, 14)

_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_IPV6_EXT = frozenset((0, 43, 60, 135, 139, 140))  # hop, routing, dstopts, mobility, HIP, shim6
_AF_INET6_BSD = frozenset((10, 24, 28, 30))
MAX_VLAN_TAGS = 4
MAX_IPV6_EXT_HEADERS = 8


class Packet:
    """A decoded target packet. Addresses are packed bytes (4 or 16)."""

    __slots__ = ("ts", "src", "dst", "proto", "sport", "dport", "flags", "seq", "ack",
                 "plen", "payload", "vlan", "truncated")

    def __init__(self, ts: int, src: bytes, dst: bytes, proto: int, sport: int, dport: int,
                 flags: int, seq: int, ack: int, plen: int, payload: bytes, vlan: int,
                 truncated: bool) -> None:
        self.ts = ts
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.seq = seq
        self.ack = ack
        self.plen = plen          # payload length from the headers (not the capture)
        self.payload = payload    # captured payload (may be shorter: snaplen)
        self.vlan = vlan
        self.truncated = truncated

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"Packet(ts={self.ts}, {self.src.hex()}:{self.sport} > {self.dst.hex()}:{self.dport} "
                f"proto={self.proto} flags={self.flags:#x} seq={self.seq} plen={self.plen})")


class DecodeStats(Counters):
    """Counters (Suricata's decoder.*). ``fast_rejected`` counts packets
    dropped by the inline check (IPv4 TCP/UDP on no tracked port) before full
    decoding; ``packets`` counts the rest, so all seen = packets + fast_rejected."""

    __slots__ = ("packets", "fast_rejected", "ipv4", "ipv6", "tcp", "udp", "vlan", "target",
                 "non_ip", "other_ip_proto", "fragments", "truncated", "malformed",
                 "unknown_linktype")


WeirdCallback = Callable[[int, str, str], None]


class Decoder:
    """Decodes frames of one link type; ``ports`` is consulted live (it may be
    a set the pipeline grows with expected data-channel ports)."""

    __slots__ = ("linktype", "ports", "hosts", "stats", "on_weird", "decode")

    def __init__(self, linktype: int, ports: Collection[int], stats: DecodeStats | None = None,
                 on_weird: WeirdCallback | None = None, hosts: Collection[tuple[bytes, bytes]] = frozenset()) -> None:
        self.linktype = linktype
        self.ports = ports
        # (src, dst) packed address pairs whose traffic on any port is wanted:
        # FTPS sessions, whose data channels cannot be announced in clear text
        self.hosts = hosts
        self.stats = stats if stats is not None else DecodeStats()
        self.on_weird = on_weird or (lambda ts, name, detail: None)
        fn = _LINK_DECODERS.get(linktype)
        if fn is None and linktype in DLT_RAW_ALIASES:
            fn = Decoder._raw
        if fn is None:
            self.decode = self._unknown_link
        else:
            self.decode = fn.__get__(self)

    def handler(self, process: Callable[[Packet], object]) -> Callable[[int, bytes], None]:
        """A function ``(ts, frame)`` that decodes and hands target packets to
        ``process``. For Ethernet the common case (IPv4, untagged, not a
        fragment, neither port tracked) is rejected inline, before any other
        call; everything else takes the general path."""
        decode = self.decode
        if self.linktype != LINKTYPE_ETHERNET:
            def slow(ts: int, data: bytes) -> None:
                p = decode(ts, data)
                if p is not None:
                    process(p)
            return slow
        ports = self.ports
        hosts = self.hosts
        stats = self.stats
        ip4 = _IP4
        tcp = _TCP
        udp = _UDP

        def fast(ts: int, data: bytes) -> None:
            # The common cases inline: Ethernet, at most one 802.1Q tag, IPv4
            # without fragmentation, a whole TCP or UDP header. Anything else
            # (and anything odd about these) takes the general path, which
            # counts and reports it.
            et = data[12:14]
            if et == b"\x08\x00":
                off, vlan = 14, 0
            elif et == b"\x81\x00" and data[16:18] == b"\x08\x00":
                off, vlan = 18, ((data[14] & 0x0F) << 8) | data[15]
            else:
                off = 0
            if off:
                n = len(data)
                if n >= off + 28:
                    b0, _, tot, _, frag, _, proto, _, src, dst = ip4(data, off)
                    ihl = (b0 & 0x0F) << 2
                    l4 = off + ihl
                    if (proto == 6 or proto == 17) and b0 >> 4 == 4 and ihl >= 20 and not frag & 0x3FFF \
                            and tot >= ihl and n >= l4 + 20:
                        if proto == 6:
                            sport, dport, seq, ack, doff, flags = tcp(data, l4)
                        else:
                            sport, dport, ulen = udp(data, l4)
                        if sport not in ports and dport not in ports and not (
                                proto == 6 and data[l4 + ((doff >> 4) << 2):l4 + ((doff >> 4) << 2) + 3] == b"220") \
                                and not (hosts and (src, dst) in hosts):
                            stats.fast_rejected += 1
                            return
                        end = off + tot
                        if proto == 6:
                            hl = (doff >> 4) << 2
                            plen = end - l4 - hl
                            if hl >= 20 and plen >= 0 and end <= n:
                                stats.packets += 1
                                stats.ipv4 += 1
                                stats.target += 1
                                stats.tcp += 1
                                if vlan:
                                    stats.vlan += 1
                                process(Packet(ts, src, dst, 6, sport, dport, flags, seq, ack, plen,
                                               data[l4 + hl:end], vlan, False))
                                return
                        elif 8 <= ulen and l4 + ulen <= end <= n:
                            stats.packets += 1
                            stats.ipv4 += 1
                            stats.target += 1
                            stats.udp += 1
                            if vlan:
                                stats.vlan += 1
                            process(Packet(ts, src, dst, 17, sport, dport, 0, 0, 0, ulen - 8,
                                           data[l4 + 8:l4 + ulen], vlan, False))
                            return
            p = decode(ts, data)
            if p is not None:
                process(p)
        return fast

    @property
    def packets(self) -> int:
        return self.stats.packets + self.stats.fast_rejected

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
        st = self.stats
        st.packets += 1
        n = len(data)
        if n < 14:
            self._weird(ts, "ethernet_truncated", f"{n} bytes")
            return None
        return self._ethertype(ts, data, 14, (data[12] << 8) | data[13])

    def _sll(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if len(data) < 16:
            self._weird(ts, "sll_truncated", f"{len(data)} bytes")
            return None
        return self._ethertype(ts, data, 16, (data[14] << 8) | data[15])

    def _sll2(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if len(data) < 20:
            self._weird(ts, "sll2_truncated", f"{len(data)} bytes")
            return None
        return self._ethertype(ts, data, 20, (data[0] << 8) | data[1])

    def _ethertype(self, ts: int, data: bytes, off: int, et: int) -> Packet | None:
        vlan = 0
        tags = 0
        while et in _VLAN_TPIDS:
            if tags >= MAX_VLAN_TAGS:
                self._weird(ts, "vlan_too_many_tags", str(tags + 1))
                return None
            if off + 4 > len(data):
                self._weird(ts, "vlan_truncated", f"{len(data)} bytes")
                return None
            if not tags:
                self.stats.vlan += 1
                vlan = ((data[off] & 0x0F) << 8) | data[off + 1]
            tags += 1
            et = (data[off + 2] << 8) | data[off + 3]
            off += 4
        if et == 0x0800:
            return self._ipv4(ts, data, off, vlan)
        if et == 0x86DD:
            return self._ipv6(ts, data, off, vlan)
        self.stats.non_ip += 1
        return None

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
            return self._ipv4(ts, data, 4, 0)
        if fam in _AF_INET6_BSD:
            return self._ipv6(ts, data, 4, 0)
        self.stats.non_ip += 1
        return None

    def _raw(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        if not data:
            self._weird(ts, "ip_truncated", "empty")
            return None
        v = data[0] >> 4
        if v == 4:
            return self._ipv4(ts, data, 0, 0)
        if v == 6:
            return self._ipv6(ts, data, 0, 0)
        self._weird(ts, "ip_bad_version", str(v))
        return None

    def _raw4(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        return self._ipv4(ts, data, 0, 0)

    def _raw6(self, ts: int, data: bytes) -> Packet | None:
        self.stats.packets += 1
        return self._ipv6(ts, data, 0, 0)

    # -- IP -------------------------------------------------------------------
    def _ipv4(self, ts: int, data: bytes, off: int, vlan: int) -> Packet | None:
        st = self.stats
        st.ipv4 += 1
        n = len(data)
        if off + 20 > n:
            st.truncated += 1
            self._weird(ts, "ipv4_truncated", f"{n - off} bytes of header")
            return None
        b0 = data[off]
        ihl = (b0 & 0x0F) << 2
        if b0 >> 4 != 4 or ihl < 20:
            self._weird(ts, "ipv4_bad_header", f"byte0={b0:#x}")
            return None
        proto = data[off + 9]
        if proto != 6 and proto != 17:
            st.other_ip_proto += 1
            return None
        tot = (data[off + 2] << 8) | data[off + 3]
        if tot < ihl:
            self._weird(ts, "ipv4_bad_length", f"total={tot} ihl={ihl}")
            return None
        frag = ((data[off + 6] << 8) | data[off + 7]) & 0x3FFF
        if frag:
            st.fragments += 1
            if frag & 0x1FFF:  # non-first fragment: no transport header
                return None
        l4 = off + ihl
        end = off + tot
        return self._transport(ts, data, l4, end, proto, data[off + 12:off + 16], data[off + 16:off + 20], vlan)

    def _ipv6(self, ts: int, data: bytes, off: int, vlan: int) -> Packet | None:
        st = self.stats
        st.ipv6 += 1
        n = len(data)
        if off + 40 > n:
            st.truncated += 1
            self._weird(ts, "ipv6_truncated", f"{n - off} bytes of header")
            return None
        if data[off] >> 4 != 6:
            self._weird(ts, "ipv6_bad_version", f"byte0={data[off]:#x}")
            return None
        nh = data[off + 6]
        end = off + 40 + ((data[off + 4] << 8) | data[off + 5])
        l4 = off + 40
        hops = 0
        while nh != 6 and nh != 17:
            if nh in _IPV6_EXT or nh == 44 or nh == 51:
                hops += 1
                if hops > MAX_IPV6_EXT_HEADERS:
                    self._weird(ts, "ipv6_too_many_ext_headers", str(hops))
                    return None
                if l4 + 8 > n:
                    st.truncated += 1
                    self._weird(ts, "ipv6_ext_truncated", f"next header {nh}")
                    return None
                if nh == 44:
                    st.fragments += 1
                    if ((data[l4 + 2] << 8) | data[l4 + 3]) & 0xFFF8:
                        return None  # non-first fragment
                    nxt, hl = data[l4], 8
                elif nh == 51:
                    nxt, hl = data[l4], (data[l4 + 1] + 2) << 2
                else:
                    nxt, hl = data[l4], (data[l4 + 1] + 1) << 3
                nh = nxt
                l4 += hl
            else:
                st.other_ip_proto += 1
                return None
        return self._transport(ts, data, l4, end, nh, data[off + 8:off + 24], data[off + 24:off + 40], vlan)

    # -- transport ------------------------------------------------------------
    def _transport(self, ts: int, data: bytes, l4: int, end: int, proto: int,
                   src: bytes, dst: bytes, vlan: int) -> Packet | None:
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
            if proto != 6 or l4 + 20 > n or data[l4 + ((data[l4 + 12] >> 4) << 2):][:3] != b"220":
                return None
        st.target += 1
        truncated = end > n
        if proto == 6:
            st.tcp += 1
            if l4 + 14 > n:   # ports, seq, ack, offset, flags: all the sensor reads
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
            return Packet(ts, src, dst, 6, sport, dport, flags, seq, ack, plen,
                          data[l4 + hl:end], vlan, truncated)
        st.udp += 1
        ulen = (data[l4 + 4] << 8) | data[l4 + 5]
        if ulen < 8 or l4 + ulen > end:
            self._weird(ts, "udp_bad_length", f"udp length {ulen}, ip payload {end - l4}")
            ulen = end - l4   # trust the IP length, the smaller of the two
            if ulen < 8:
                return None
        if truncated:
            st.truncated += 1
        return Packet(ts, src, dst, 17, sport, dport, 0, 0, 0, ulen - 8,
                      data[l4 + 8:l4 + ulen], vlan, truncated)


_LINK_DECODERS: dict[int, Callable] = {
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
