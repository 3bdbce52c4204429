"""The pipeline, wiring only: decode -> flows -> records -> detection -> sink.

Sans-IO: ``handler_for(linktype)`` returns the function that takes
``(ts_us, frame_bytes)``; ``finish()`` ends every flow. Whatever feeds it
(a pcap file, a live interface, a test) and wherever the sink writes, the
logic between is the same. The life of a packet and of a flow:
docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sensor.attribution.book import AttributionBook
from sensor.core.config import Config
from sensor.detect.detector import Detector
from sensor.detect.rules import RuleSet
from sensor.engine.attempts import AttemptGroups, AttemptStats
from sensor.engine.bpf import capture_filters
from sensor.engine.decode import (
    DLT_RAW_ALIASES,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    SUPPORTED_LINKTYPES,
    Checksums,
    Decoder,
    DecodeStats,
    Packet,
)
from sensor.engine.dispatch import Dispatcher
from sensor.engine.fastpath import ethernet_handler
from sensor.engine.flows import EMERGENCY_ENTER, EMERGENCY_EXIT, EMERGENCY_TIMEOUTS_S, Flow, FlowTable
from sensor.engine.ports import PortSet
from sensor.records.mde import ATTEMPTS_WEIRD, RecordBuilder, iso_us

# weird records written per name before only counting (Zeek samples weirds too)
WEIRD_LOG_PER_NAME = 1000
HELD_TRANSFERS_MAX = 4096  # transfer records waiting for their connection's lookup


# bytes before the IP header, per link type the decoder knows
LINK_HEADER_BYTES = {
    LINKTYPE_ETHERNET: 14,
    LINKTYPE_LINUX_SLL: 16,
    LINKTYPE_LINUX_SLL2: 20,
    LINKTYPE_NULL: 4,
    LINKTYPE_LOOP: 4,
    LINKTYPE_RAW: 0,
    LINKTYPE_IPV4: 0,
    LINKTYPE_IPV6: 0,
    **{lt: 0 for lt in DLT_RAW_ALIASES},
}
MIN_IP_TRANSPORT_BYTES = 20 + 8  # the smallest IP header and the ports: what any packet needs
# decoder weirds of a frame cut before the sensor could read its IP and TCP/UDP headers
HEADER_TRUNCATED_WEIRDS = frozenset(
    (
        "ethernet_truncated",
        "sll_truncated",
        "sll2_truncated",
        "loopback_truncated",
        "vlan_truncated",
        "ip_truncated",
        "ipv4_truncated",
        "ipv6_truncated",
        "ipv6_ext_truncated",
        "transport_truncated",
        "tcp_truncated",
    )
)


def min_frame_bytes(linktype: int) -> int | None:
    """The fewest bytes a frame of this link type needs for the sensor to read
    its addresses and ports; None: a link type the decoder does not know."""
    if linktype not in SUPPORTED_LINKTYPES:
        return None
    return LINK_HEADER_BYTES.get(linktype, 0) + MIN_IP_TRANSPORT_BYTES


def decodable(linktype: int, snaplen: int) -> bool:
    """Can a capture of this link type and snaplen (0: no limit) hold a packet
    the sensor decodes? (When not, replay installs no capture filter, so the
    decoder sees, and counts, every frame.)"""
    need = min_frame_bytes(linktype)
    return need is not None and (snaplen == 0 or snaplen >= need)


def _clocked(advance: Callable[[int], int], inner: Callable[[int, bytes], None]) -> Callable[[int, bytes], None]:
    """Every packet moves the clock, target or not (as the fused path does)."""

    def handle(ts: int, data: bytes) -> None:
        advance(ts)
        inner(ts, data)

    return handle


class RecordSink(Protocol):
    """Where the records go (``sensor.io.sinks``' outputs, a test's memory sink):
    ``kind`` is connections, transfers, weird or alerts."""

    def emit(self, kind: str, rec: dict[str, Any]) -> None: ...


class Pipeline:
    """``attribution``: an ``AttributionBook`` (endpoint mode) -- the records
    then carry the process that made each connection (see sensor/attribution/book.py)."""

    def __init__(
        self, config: Config, rules: RuleSet, sink: RecordSink, attribution: AttributionBook | None = None
    ) -> None:
        self.cfg = config
        self.sink = sink
        self.portset = PortSet(config.tracked_ports)
        self.ports: set[int] = self.portset.ports
        self.decode_stats = DecodeStats()
        self.checksums = Checksums(
            config.checksum_validation,
            config.home_net + config.checksum_offload_nets,
            config.limits.max_checksum_senders,
        )
        self.flows = FlowTable(config, self._flow_ended, self._flow_weird)
        self.app = Dispatcher(frozenset(config.tracked_ports), self.portset, sink.emit, self._weird)
        self.app.retain = config.limits.overlap_check_bytes
        self.flows.admit = self.app.admit
        self.flows.on_new = self._flow_started
        self.flows.on_tick = self.app.expire
        self.flows.reused = self.app.reused
        self.flows.quiet_syn = self.app.quiet_syn
        self.book = attribution
        self.records = RecordBuilder(config, endpoint=attribution is not None)
        self._resolved: dict[Flow, Any] = {}  # flows whose attribution children inherit
        self._own: dict[Flow, Any] = {}  # each flow's own lookup result, once taken from the book
        # transfer records waiting for their owner's lookup (endpoint mode)
        self._held: list[tuple[Flow, str, dict[str, Any]]] = []
        self.attribution_counts: dict[str, int] = {}
        if attribution is not None:
            self.app.emit_transfer = self._emit_transfer
        else:  # an unanswered SYN kept as an embryo ends without a Flow (_attempt_ended)
            self.flows.attempt_ended = self._attempt_ended
        self.detector = Detector(rules, config.limits)
        self.attempt_stats = AttemptStats()
        self.attempts_kept_by: str | None = None
        self.attempt_policy(config, rules)
        self.weird_counts: dict[str, int] = {}
        self.action_counts: dict[str, int] = {}
        self._decoders: dict[int, Callable[[int, bytes], None]] = {}
        self._filter_version = 0
        # bound_news: (evicted, expectations dropped, emergency) at the last check,
        # and whether that check saw no new evictions / drops (a burst starts after one)
        self._news: tuple[int, int, bool] = (0, 0, False)
        self._quiet = (True, True)
        # Ethernet frames take the fused per-packet path (sensor/engine/fastpath.py);
        # False: the layered one (the tests compare the two)
        self.fused = True

    # -- input ----------------------------------------------------------------
    def handler_for(self, linktype: int) -> Callable[[int, bytes], None]:
        h = self._decoders.get(linktype)
        if h is None:
            if linktype == LINKTYPE_ETHERNET and self.fused:
                h = ethernet_handler(self, self.flows, self.app, self.portset, self.decode_stats, self.checksums)
            else:
                dec = Decoder(
                    linktype, self.ports, self.decode_stats, self.decode_weird, self.portset.hosts, self.checksums
                )
                h = _clocked(self.flows.advance, dec.handler(self.packet))
            self._decoders[linktype] = h
        return h

    def packet(self, p: Packet) -> None:
        """A decoded target packet: the layered path (flow table, then the application layer)."""
        self.packet_at(p, self.flows.advance(p.ts))

    def packet_at(self, p: Packet, now: int) -> None:
        """``packet`` once the flow table's clock is at ``now``."""
        f = self.flows.account(p, now)
        if f is not None:
            self.app.packet(
                f, p.src == f.orig_b and p.sport == f.orig_p, p.ts, p.proto, p.flags, p.seq, p.ack, p.plen, p.payload
            )

    def capture_filters(self) -> list[str | None]:
        """BPF filters to try, best first (see sensor/engine/bpf.py)."""
        return capture_filters(self.portset.filter_ports)

    def refilter(self) -> list[str | None] | None:
        """New capture filters when the ports they must admit changed, else None."""
        if self.portset.version != self._filter_version:
            self._filter_version = self.portset.version
            return self.capture_filters()
        return None

    def finish(self) -> None:
        self.flows.flush()
        if self._held:  # owners whose records were all written: nothing more to wait for
            self._release(lambda owner: True, None)

    # -- events ---------------------------------------------------------------
    def _flow_started(self, flow: Flow, match: object) -> None:
        self.app.flow_started(flow, match)

    def _flow_ended(self, flow: Flow) -> None:
        held = self.app.flow_ending(flow)
        if not held:  # else its record waits for its data channels / transfer
            self._emit_connection(flow)
        parent = self.app.child_ended(flow)
        if parent is not None:  # its last child ended: its record is complete
            self._emit_connection(parent)
            self.app.release(parent)
        if not held:
            self.app.release(flow)

    def _attempt_ended(
        self, orig_b: bytes, resp_b: bytes, orig_p: int, resp_p: int, ts: int, vlan: int, uid: str
    ) -> None:
        """An embryo (a bare SYN, unanswered) ends: what ``_flow_ended`` does
        for the flow it would have hatched into -- no application state, no
        children, no attribution -- for a fraction of the cost (a SYN scan
        ends one per SYN)."""
        rec = self.records.attempt(orig_b, resp_b, orig_p, resp_p, ts, vlan, uid, self.app.tcp_app(orig_p, resp_p))
        ac = self.action_counts
        ac["ConnectionFailed"] = ac.get("ConnectionFailed", 0) + 1
        self.sink.emit("connections", rec)
        for alert in self.detector.observe(rec, ts):
            self.sink.emit("alerts", alert)

    def attempt_policy(self, config: Config, rules: RuleSet) -> None:
        """Whether unanswered attempts of a flood are aggregated (sensor/engine/attempts.py):
        ``attempt_records: aggregate``, no attribution (a record names its process) and no
        detection rule that could match such an attempt's record (``attempts_kept_by``: the
        first that could). Again when the daemon reloads config and rules: the groups held are
        written first when it turns off."""
        wanted = config.attempt_records == "aggregate" and self.book is None
        alike = self.records.attempt_constants()
        self.attempts_kept_by = (
            next((d.ref for d in rules.detections if d.could_match(alike)), None) if wanted else None
        )
        ft = self.flows
        if wanted and self.attempts_kept_by is None:
            if ft.attempt_groups is None:
                ft.attempt_groups = AttemptGroups(config.limits.max_attempt_groups, self._attempts, self.attempt_stats)
        elif ft.attempt_groups is not None:
            ft.attempt_groups.flush()
            ft.attempt_groups = None

    def _attempts(self, orig_b: bytes, resp_p: int, n: int, first: int, last: int, resp_b: bytes) -> None:
        """A group of unanswered attempts is written (one record, never capped as other weirds are)."""
        self.weird_counts[ATTEMPTS_WEIRD] = self.weird_counts.get(ATTEMPTS_WEIRD, 0) + 1
        self.sink.emit("weird", self.records.attempts(orig_b, resp_p, n, first, last, resp_b))

    def _emit_connection(self, flow: Flow) -> None:
        att = None
        if self.book is not None:
            att = self._attribution(flow)
            self._resolved.pop(flow, None)
            self._own.pop(flow, None)
            src = att.AttributionSource if att is not None else "none"
            if att is None:
                self.book.missed(self.records.local_key(flow))
            self.attribution_counts[src] = self.attribution_counts.get(src, 0) + 1
            if self._held:
                self._release(lambda owner: owner is flow, att)
        rec = self.records.build(flow, att)
        at = rec["ActionType"]
        self.action_counts[at] = self.action_counts.get(at, 0) + 1
        self.sink.emit("connections", rec)
        for alert in self.detector.observe(rec, flow.first_ts):
            self.sink.emit("alerts", alert)

    # -- attribution (endpoint mode) -------------------------------------------
    def _attribution(self, flow: Flow) -> Any:
        """The process of a connection: an FTP data connection or a TFTP
        transfer inherits its control connection's / request's (when that
        is known), anything else has its own lookup's, if any."""
        a = self._resolved.get(flow)
        if a is not None:
            return a
        own = self._own.get(flow)
        if own is None and self.book is not None:  # (the book: endpoint mode, where the callers run)
            # taken once: a child asking first (a TFTP transfer) must not use up
            # its parent's result -- a "none" one is not kept in _resolved
            own = self.book.take(self.records.local_key(flow), flow.first_ts)
            if own is not None:
                self._own[flow] = own
        parent = self.app.parent_of(flow)
        a = own
        if parent is not None:
            pa = self._attribution(parent)
            if pa is not None and pa.AttributionSource != "none":
                a = pa.linked()
        if a is not None and a.AttributionSource != "none":
            self._resolved[flow] = a
        return a

    def _emit_transfer(self, owner: Flow, rec: dict[str, Any], kind: str = "transfers") -> None:
        """A transfer (or a file event: ``kind`` files) with its owner's process."""
        a = self._attribution(owner)
        if a is not None:
            self._fill_transfer(rec, a)
            self.sink.emit(kind, rec)
            return
        # the owner's lookup is not in yet: a TFTP or SMB transfer often ends
        # in the same capture batch as its connection's first packet, before
        # the daemon collected the helper's result.  The record waits until it
        # is (attributions_arrived) or until the owner's own record is written
        if len(self._held) >= HELD_TRANSFERS_MAX:  # bounded: the oldest goes as it is
            _old_owner, old_kind, old = self._held.pop(0)
            self._fill_transfer(old, None)
            self.sink.emit(old_kind, old)
        self._held.append((owner, kind, rec))

    def attributions_arrived(self) -> None:
        """New lookups are in the book: write the held transfers whose owner is now known."""
        if self._held:
            self._release(lambda owner: self._attribution(owner) is not None)

    def _release(self, ready: Callable[[Flow], bool], att: Any = ...) -> None:
        keep = []
        for owner, kind, rec in self._held:
            if not ready(owner):
                keep.append((owner, kind, rec))
                continue
            self._fill_transfer(rec, self._attribution(owner) if att is ... else att)
            self.sink.emit(kind, rec)
        self._held = keep

    def _fill_transfer(self, rec: dict[str, Any], a: Any) -> None:
        if a is not None and a.AttributionSource != "none":
            rec["InitiatingProcessFileName"] = a.InitiatingProcessFileName
            rec["InitiatingProcessId"] = a.InitiatingProcessId
            rec["InitiatingProcessAccountName"] = a.InitiatingProcessAccountName
        rec["AttributionSource"] = a.AttributionSource if a is not None else "none"

    def _weird(self, ts: int, name: str, detail: str, uid: str, source: str) -> None:
        n = self.weird_counts.get(name, 0) + 1
        self.weird_counts[name] = n
        if n <= WEIRD_LOG_PER_NAME:
            self.sink.emit(
                "weird", {"Timestamp": iso_us(ts), "Name": name, "Detail": detail[:512], "Uid": uid, "Source": source}
            )

    def decode_weird(self, ts: int, name: str, detail: str) -> None:
        self._weird(ts, name, detail, "", "decoder")

    def _flow_weird(self, ts: int, flow: Flow | None, name: str, detail: str) -> None:
        self._weird(ts, name, detail, flow.uid if flow else "", "flow")

    # -- reporting -------------------------------------------------------------
    def bound_report(self) -> list[str]:
        """One line per state bound the traffic reached, with counts (replay's
        stderr and ``--format json``; empty when none was)."""
        fl, ft = self.flows.stats, self.flows
        ex = self.app.expect
        ag = self.attempt_stats
        out = []
        if fl.evicted:
            out.append(
                f"flow table full: {fl.evicted} flow(s) evicted at limits.max_flows {ft.max_flows} "
                f"({fl.created} created, at most {fl.active_max} at once); each still has its record"
                + (f" (or is counted in a {ATTEMPTS_WEIRD} record)" if ag.aggregated else "")
            )
        if ag.aggregated:
            out.append(
                f"unanswered attempts aggregated: {ag.aggregated} bare SYN(s) that ended unanswered while the flow "
                f"table was nearly full are counted in {ag.groups} {ATTEMPTS_WEIRD} weird record(s) by originator "
                "and port, not a connection record each (attempt_records: aggregate)"
            )
        if fl.evicted and self.attempts_kept_by is not None:
            out.append(f"unanswered attempts not aggregated: rule {self.attempts_kept_by} could match one's record")
        if fl.emergency_entered:
            a, e, c, u = EMERGENCY_TIMEOUTS_S
            out.append(
                f"flow table emergency mode: entered {fl.emergency_entered} time(s) at "
                f"{EMERGENCY_ENTER:.0%} of limits.max_flows {ft.max_flows}, left {fl.emergency_exited} "
                f"time(s) under {EMERGENCY_EXIT:.0%} (timeouts shortened to attempt {a:g} s, established {e:g} s, "
                f"closed {c:g} s, udp {u:g} s); {fl.expired} flow(s) expired"
            )
        if ex.stats.dropped:
            out.append(
                f"expected connections full: {ex.stats.dropped} dropped at {ex.max} "
                "(FTP data channels and TFTP transfers they announced are not linked to their session)"
            )
        return out

    def bound_news(self) -> list[str]:
        """For the daemon's log, called about once a second: one line when the
        flow table starts evicting (the first evictions after a check without
        any: once per burst, with the burst's count so far and the total),
        enters or leaves emergency mode, or expectations start being dropped."""
        fl, ft, ex = self.flows.stats, self.flows, self.app.expect.stats
        out = []
        ev, dr = fl.evicted, ex.dropped
        last_ev, last_dr, was_emergency = self._news
        if ev > last_ev and self._quiet[0]:
            out.append(
                f"flow table full: evicting at limits.max_flows {ft.max_flows} "
                f"({ev - last_ev} flow(s) in the last check, {ev} since start)"
            )
        if ft.emergency != was_emergency:
            out.append(
                f"flow table emergency mode {'entered' if ft.emergency else 'left'}: {ft.active()} flow(s) "
                f"of limits.max_flows {ft.max_flows} ({fl.emergency_entered} time(s) since start)"
            )
        if dr > last_dr and self._quiet[1]:
            out.append(f"expected connections full: dropping ({dr - last_dr} in the last check, {dr} since start)")
        self._quiet = (ev == last_ev, dr == last_dr)
        self._news = (ev, dr, ft.emergency)
        return out

    def undecoded(self) -> tuple[int, int, int]:
        """(frames seen, frames of a link type the decoder does not know, frames
        cut before their ports): a replay compares them before and after a
        capture to say why nothing came out of it."""
        w = self.weird_counts
        return (
            self.decode_stats.packets,
            self.decode_stats.unknown_linktype,
            sum(w.get(n, 0) for n in HEADER_TRUNCATED_WEIRDS),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "decoder": self.decode_stats.as_dict(),
            "flows": dict(self.flows.stats.as_dict(), emergency=int(self.flows.emergency)),
            "attempts": self.attempt_stats.as_dict(),
            "app": dict(self.app.stats),
            "expectations": self.app.expect.stats.as_dict(),
            "detect": self.detector.stats.as_dict(),
            "connections": dict(sorted(self.action_counts.items())),
            "attribution": {
                "by_source": dict(sorted(self.attribution_counts.items())),
                "misses": self.attribution_counts.get("none", 0),
                "waiting": len(self.book) if self.book is not None else 0,
                "late": self.book.stats["late"] if self.book is not None else 0,
            },
            "weird": dict(sorted(self.weird_counts.items())),
        }
