"""The pipeline's per-packet path for Ethernet frames, fused into one function.

The layered path (``Decoder`` -> ``Pipeline.packet`` -> ``FlowTable.process``
-> ``FlowTable._tcp`` -> ``Dispatcher.packet``) costs half a dozen Python calls
and a :class:`~sensor.engine.decode.Packet` per packet. Most packets are ordinary
segments of a flow already known, and need far less. This handler does, in
one function:

- decoding, inline, of Ethernet with up to two VLAN tags, IPv4 without
  fragmentation or IPv6 with TCP/UDP right after the fixed header, whole
  headers and nothing cut by the snaplen -- everything else goes to the
  ``Decoder``'s general path, which counts and reports it;
- the same choice of target packets (tracked or expected ports, FTPS host
  pairs, an FTP banner) and the same decoder counters as the layered path;
- for a packet of a known flow that is an ordinary segment -- TCP without
  SYN, FIN or RST from a side past its handshake (PARTIAL or ESTABLISHED), of
  a flow out of the attempt timeout class; or UDP -- the flow accounting
  inline (packets, history, sequence space; in-order data without a call),
  and the application layer only when it has work for the packet (an
  analyzer, a TLS ClientHello to find, a banner to probe; never for a bare
  TCP ACK). The payload is not even copied out of the frame otherwise;
- for the other segments of a known flow (handshake, teardown) the flow
  table's ``tcp_segment`` and the pipeline's application step, without a
  :class:`Packet` -- but a SYN on a closed flow and a TFTP request from the
  client of an answered request go the layered way: they may start a new
  connection on a reused 5-tuple (``FlowTable._starts_anew``).

Before any of that, an untagged IPv4 TCP segment without SYN, FIN or RST is
looked up by the 12 bytes from its source address to its destination port,
as the frame carries them, in the flow table's wire-order index
(``FlowTable.fast``: two entries per live IPv4 TCP flow, one per direction,
added and removed with the flow). A hit skips the VLAN logic, the general
header unpacking and the flow key's construction -- ~0.5 us of ~2 us for an
ACK; every check and counter of the general way still applies, and a packet
that fails one goes the general way.

The first packet of a flow builds the :class:`Packet` and takes the layered
path from where the fused code left it (``PacketSink.packet_at``: the flow
table's clock has moved), as does anything the inline decoding does not take
(the ``Decoder`` then counts and reports it, and hands a target packet to
``PacketSink.packet``). The pipeline is the sink; this module knows it only
by the :class:`PacketSink` protocol. The results are the same by
construction; ``tests/test_fastpath.py`` replays captures both ways and
compares every record and counter.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from sensor.engine.decode import LINKTYPE_ETHERNET, Checksums, Decoder, DecodeStats, Packet, locate, seq_unwrap
from sensor.engine.dispatch import AppState, Dispatcher
from sensor.engine.flows import ESTABLISHED, PARTIAL, T_ATTEMPT, T_CLOSED, UDP_ACTIVE, FlowTable
from sensor.engine.ports import PortSet

_TCP = struct.Struct("!HHIIBB").unpack_from  # sport dport seq ack off flags
_UDP = struct.Struct("!HHH").unpack_from  # sport dport length
# an untagged IPv4 header without options and its TCP header, from the total length on:
# total length, fragment field, ports, seq, ack, data offset, flags
_HDR4 = struct.Struct("!H2xH12xHHIIBB").unpack_from

_M32 = 0xFFFFFFFF
_ET_IP4 = b"\x08\x00"


class PacketSink(Protocol):
    """Where the fused path hands what it does not finish itself (the pipeline)."""

    def packet(self, p: Packet) -> None:
        """A target packet the ``Decoder`` built: the layered path, clock included."""

    def packet_at(self, p: Packet, now: int) -> None:
        """``packet`` once the flow table's clock is at ``now``."""

    def decode_weird(self, ts: int, name: str, detail: str) -> None:
        """A malformed frame the ``Decoder`` reports."""


def ethernet_handler(
    sink: PacketSink,
    flows: FlowTable,
    app: Dispatcher,
    portset: PortSet,
    stats: DecodeStats,
    checksums: Checksums | None = None,
) -> Callable[[int, bytes], None]:
    """The ``(ts_us, frame)`` handler for Ethernet: ``flows``, ``app``,
    ``portset``, ``stats`` and ``checksums`` are the ones ``sink`` uses on the layered path."""
    ports = portset.ports
    hosts = portset.hosts
    dec = Decoder(LINKTYPE_ETHERNET, ports, stats, sink.decode_weird, hosts, checksums)
    # checksum validation: the decoder's fast test inline, its judge when that fails
    ck = dec.checksums if dec.checksums is not None else Checksums("no")
    ck_on = dec.checksums is not None
    ck_auto = ck_on and ck.auto
    judge = ck.judge
    from_bytes = int.from_bytes
    decode = dec.decode  # the general path (Decoder._ethernet)
    packet = sink.packet
    packet_at = sink.packet_at  # the layered path after the clock moved
    app_packet = app.packet
    app_segment = app.segment
    app_events = app.events
    ft = flows
    flows_get = ft.flows.get
    advance = ft.advance
    seq_at = ft.seq_at
    tcp_segment = ft.tcp_segment
    jumps = ft.jumps  # sequence jumps waiting for an ACK (FlowTable.acked)
    acked = ft.acked
    reused = ft.reused
    hdr4 = _HDR4
    ft.fast = {}
    fast_get = ft.fast.get
    tcp = _TCP
    udp = _UDP

    def general(ts: int, data: bytes) -> None:
        """What the inline decoding does not take: the Decoder counts and reports it."""
        p = decode(ts, data)
        if p is not None:
            packet(p)

    def handle(ts: int, data: bytes) -> None:
        # -- packet time: every packet moves the clock ------------------------------
        now = ft.now
        if ts > now:
            ft.now = now = ts
        if now >= ft.next_scan:
            now = advance(ts)
        # -- the wire-order index: an untagged IPv4 (no options) TCP segment
        # without SYN/FIN/RST of a known flow, found by its addresses and
        # ports as they stand in the frame (FlowTable.fast); the same checks
        # and counters as below, whatever fails takes the general way
        flow = None
        et = data[12:14]
        if et == _ET_IP4 and len(data) >= 54 and data[14] == 0x45 and data[23] == 6:
            e = fast_get(data[26:38])
            if e is not None:
                tot, frag, sport, dport, seq, ack, doff, flags = hdr4(data, 16)
                hl = (doff >> 4) << 2
                end = 14 + tot
                plen = end - 34 - hl
                if (
                    not (frag & 0x3FFF or flags & 7)
                    and hl >= 20
                    and plen >= 0
                    and end <= len(data)
                    and (sport in ports or dport in ports)
                ):
                    flow, from_orig = e
                    proto = 6
                    l4 = 34
                    stats.tcp += 1
                    stats.packets += 1
                    stats.target += 1
                    stats.ipv4 += 1
                    if ck_on:
                        # TCP checksum over the addresses (the pseudo-header's), the
                        # segment and proto + length; IPv4 header checksum
                        v = from_bytes(data[26:end], "big")
                        if plen & 1:
                            v <<= 8
                        if ((v + end - 28) % 0xFFFF or from_bytes(data[14:34], "big") % 0xFFFF) and not judge(
                            ts, data, 14, 4, 6, 34, end, data[26:30], data[30:34], flags
                        ):
                            return
        if flow is None:
            # -- VLAN tags and IP: the decoder's own walk (decode.locate) ----------------
            n = len(data)
            if n < 14:
                general(ts, data)
                return
            why, tags, vlan, ipv, proto, l4, end, src, dst, frags = locate(data, 14, (data[12] << 8) | data[13])
            if why or frags or n < l4 + (20 if proto == 6 else 8):
                general(ts, data)  # the general path counts and reports it
                return
            # -- transport header: which packets are wanted, as Decoder._transport --
            if proto == 6:
                sport, dport, seq, ack, doff, flags = tcp(data, l4)
                hl = (doff >> 4) << 2
                wanted = sport in ports or dport in ports or data[l4 + hl : l4 + hl + 3] == b"220"
            else:
                sport, dport, ulen = udp(data, l4)
                wanted = sport in ports or dport in ports
            if not wanted and hosts and (src, dst) in hosts:
                wanted = True  # an FTPS session's host pair: any port
            if wanted:
                if proto == 6:
                    plen = end - l4 - hl
                    if hl < 20 or plen < 0 or end > n:
                        general(ts, data)
                        return
                    stats.tcp += 1
                else:
                    if ulen < 8 or l4 + ulen > end or end > n:
                        general(ts, data)
                        return
                    stats.udp += 1
                    plen = ulen - 8
                    flags = seq = ack = 0
                    hl = 8
                    end = l4 + ulen
                stats.target += 1
            # counted as Decoder._ethernet and Decoder._located count
            stats.packets += 1
            if tags:
                stats.vlan += 1
            if ipv == 4:
                stats.ipv4 += 1
            else:
                stats.ipv6 += 1
            if not wanted:
                return
            if ck_on:
                v = from_bytes(data[l4:end], "big")
                if (end - l4) & 1:
                    v <<= 8
                if (from_bytes(src + dst, "big") + proto + end - l4 + v) % 0xFFFF or (
                    ipv == 4 and from_bytes(data[14 + 4 * tags : l4], "big") % 0xFFFF
                ):
                    if not judge(ts, data, 14 + 4 * tags, ipv, proto, l4, end, src, dst, flags):
                        return
                elif flags & 2 and ck_auto and src not in ck.senders:
                    ck.syn(src)
            # -- flow table ---------------------------------------------------------
            if src < dst or (src == dst and sport <= dport):
                flow = flows_get((proto, src, sport, dst, dport))
            else:
                flow = flows_get((proto, dst, dport, src, sport))
            if flow is None:
                packet_at(
                    Packet(ts, src, dst, proto, sport, dport, flags, seq, ack, plen, data[l4 + hl : end], vlan, False),
                    now,
                )
                return
            from_orig = src == flow.orig_b and sport == flow.orig_p
        if proto == 6:
            s = flow.o if from_orig else flow.r
            state = s.state
            if not flags & 7 and (state == ESTABLISHED or state == PARTIAL) and flow.tclass != T_ATTEMPT and s.seen_seq:
                # an ordinary segment (FlowTable._tcp without SYN/FIN/RST
                # from a side past its handshake)
                if now > flow.last_ts:
                    flow.last_ts = now
                s.pkts += 1
                if jumps and flags & 0x10:
                    acked(flow, from_orig, ack)
                if plen:
                    h = flow.history
                    c = "D" if from_orig else "d"
                    if c not in h:
                        flow.history = h + c
                    hi = s.hi
                    if ((seq - s.base) & _M32) == (hi & _M32):  # in order: seq_unwrap would give hi
                        s.hi = hi + plen
                    else:
                        seq_at(flow, s, seq_unwrap(seq, s.base, hi), plen, ts)
                    ctx: AppState | None = flow.ctx  # (Flow.ctx is Any: flows cannot name dispatch)
                    if ctx is not None:
                        a = ctx.analyzer
                        if ctx.tap is not None:
                            app_packet(flow, from_orig, ts, 6, flags, seq, ack, plen, data[l4 + hl : end])
                        elif a is not None and ctx.streams is not None and not ctx.stopped:
                            # Dispatcher.segment for in-order data (Stream.in_order inline);
                            # without an analyzer (a data channel) there is nothing to do
                            st = ctx.streams[0] if from_orig else ctx.streams[1]
                            nxt = st.next
                            if (
                                st.started
                                and not st.ooo
                                and ((seq - st.base) & _M32) == (nxt & _M32)
                                and st.delivered + plen <= st.limits.depth
                            ):
                                pay = data[l4 + hl : end]
                                st.remember(nxt, pay)  # kept to compare overlaps with
                                st.next = nxt + plen
                                st.delivered += plen
                                evs = (a.receive_ts if from_orig else a.receive_tc)(pay, ts)
                                if evs:
                                    app_events(flow, evs)
                            else:
                                app_segment(flow, from_orig, ts, flags, seq, ack, plen, data[l4 + hl : end])
                    elif flow.analyzer is not None:
                        app_packet(flow, from_orig, ts, 6, flags, seq, ack, plen, data[l4 + hl : end])
                elif flags & 0x10:
                    h = flow.history
                    c = "A" if from_orig else "a"
                    if c not in h:
                        flow.history = h + c
                return
            if flags & 0x12 == 0x02 and flow.tclass == T_CLOSED:
                # a SYN on a closed flow may start a new connection on
                # the same 5-tuple (FlowTable._starts_anew decides)
                packet_at(
                    Packet(ts, src, dst, proto, sport, dport, flags, seq, ack, plen, data[l4 + hl : end], vlan, False),
                    now,
                )
                return
            # a handshake or teardown segment of a known flow: the flow
            # table's own accounting, still without a Packet
            if now > flow.last_ts:
                flow.last_ts = now
            tcp_segment(flow, from_orig, flags, seq, plen, ts, ack)
            if flow.ctx is not None or flow.analyzer is not None:
                app_packet(flow, from_orig, ts, 6, flags, seq, ack, plen, data[l4 + hl : end])
            return
        else:
            if reused is not None and reused(flow, from_orig, data[l4 + 8 : l4 + 10]):
                # a new connection on this 5-tuple (a TFTP client's port
                # reused): FlowTable ends the old one on the layered path
                packet_at(
                    Packet(ts, src, dst, proto, sport, dport, 0, 0, 0, plen, data[l4 + 8 : end], vlan, False), now
                )
                return
            if now > flow.last_ts:
                flow.last_ts = now
            s = flow.o if from_orig else flow.r
            s.pkts += 1
            s.udp_bytes += plen
            s.state = UDP_ACTIVE
            h = flow.history
            c = "D" if from_orig else "d"
            if c not in h:
                flow.history = h + c
            ctx = flow.ctx
            if ctx is not None:
                a = ctx.analyzer
                if ctx.tap is not None:
                    app_packet(flow, from_orig, ts, 17, 0, 0, 0, plen, data[l4 + 8 : end])
                elif a is not None and not ctx.stopped:
                    # Dispatcher.segment for a datagram
                    evs = (a.receive_ts if from_orig else a.receive_tc)(data[l4 + 8 : end], ts)
                    if evs:
                        app_events(flow, evs)
            elif flow.analyzer is not None:
                app_packet(flow, from_orig, ts, 17, 0, 0, 0, plen, data[l4 + 8 : end])
            return

    return handle
