"""Flow tracking (sans-IO; packet time is the only clock).

- Direction-independent key ``(proto, lo_addr, lo_port, hi_addr, hi_port)``.
- Originator: the SYN sender; else the SYN-ACK receiver; else the first
  sender, flipped (history ``^``) when only the first sender's port is a
  service port (mid-stream pickup of a server->client packet).
- TCP endpoint states and Zeek's ``conn_state``/``history``.
- Bytes per direction in sequence space: retransmissions count once, the
  2^32 wrap is unwrapped to 64 bits, SYN/FIN are not counted (Zeek's
  orig_bytes/resp_bytes). Packets count every packet.
- Timeouts by class (attempt, established, closed, udp), each its own queue:
  a heap ordered by the time the flow was (re)queued (``qts``), then its
  uid. A flow is not moved on every packet: the expiry scan takes the flows
  queued longer ago than the timeout and either expires one (idle past its
  timeout) or requeues it with its real last activity -- so each flow is
  requeued at most once per timeout and the per-packet cost is nil. Entries
  left behind by a requeue, a class change or an end are skipped (``qver``)
  and dropped when they outnumber the live ones (``_compact``).
  What a scan ends, and in which order, depends only on each flow's own
  packets and on the clock -- not on the other flows in the table. The scan runs at most every
  ``flow_scan_interval`` seconds of packet time and examines at most
  ``flow_scan_budget`` flows.
- A hard bound ``max_flows``: beyond it the least recently active flow is
  evicted (half-open attempts first), and counted. Near it (90 %) an
  emergency mode shortens the timeouts until the table is back under 70 %.
- Embryonic flows: once the table holds half of ``max_flows``
  (``EMBRYOS_FROM``), a bare SYN that starts no expected connection is kept as
  one small entry (``embryos``: its wire key and one packed int), not a
  :class:`Flow`, until a second packet of its connection hatches it into
  one (``_hatch``, which replays the SYN's accounting) or it ends; it ends
  as the flow it would have been (same uid, record, order: due embryos are
  hatched into the attempt queue before an expiry scan). It counts against
  ``max_flows`` and is evicted as a half-open attempt, least recently active
  first. A SYN scan thus costs ~150 bytes per unanswered SYN instead of a
  flow's ~1 KB.
"""

from __future__ import annotations

import hashlib
import heapq
import socket
import struct
from binascii import hexlify
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, cast

from sensor.core.config import Config
from sensor.core.counters import Counters
from sensor.engine.attempts import AttemptGroups
from sensor.engine.decode import ACK, FIN, RST, SYN, Packet, seq_unwrap

# endpoint states (Zeek's TCP_*)
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
UDP_INACTIVE, UDP_ACTIVE = 0, 1

# timeout classes
T_ATTEMPT, T_ESTABLISHED, T_CLOSED, T_UDP = range(4)

_M32 = 0xFFFFFFFF

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# two base-62 digits at once, least significant first (as _uid emits them)
_B62_PAIRS = tuple(_B62[i % 62] + _B62[i // 62] for i in range(62 * 62))
_B62_4 = 3844**4  # four pairs

_PORTS = struct.Struct("!HH")

# a flow's direction-independent key: (proto, lo_addr, lo_port, hi_addr, hi_port)
FlowKey = tuple[int, bytes, int, bytes, int]


# packed addresses (and their text) new UDP flows share (``FlowTable._shared``):
# a request flood from a few hosts then keeps one copy of each, not four per flow
MAX_SHARED_ADDRESSES = 1 << 10  # cleared when full


def address_text(b: bytes) -> str:
    """A packed IPv4 or IPv6 address as text."""
    return socket.inet_ntop(socket.AF_INET if len(b) == 4 else socket.AF_INET6, b)


class UdpSide:
    """One direction's accounting of a UDP flow (an endpoint, as sender):
    what a datagram changes. The sequence fields of a TCP :class:`Side` read
    as their initial values here and are never written (only TCP segments
    write them); a request flood keeps two per flow, at 56 bytes, not 96."""

    __slots__ = ("pkts", "state", "udp_bytes")
    base = 0
    lo = 0
    hi = 0
    seen_seq = False
    syn_seq = -1

    def __init__(self) -> None:
        self.pkts = 0
        self.state = UDP_INACTIVE
        self.udp_bytes = 0

    @property
    def bytes(self) -> int:
        return self.udp_bytes


class Side(UdpSide):
    """One direction's accounting of a TCP flow (an endpoint, as sender)."""

    __slots__ = ("base", "lo", "hi", "seen_seq", "syn_seq")

    def __init__(self) -> None:
        self.pkts = 0
        self.state = INACTIVE
        self.base = 0  # 32-bit sequence number of relative offset 0
        self.lo = 0  # lowest relative offset with payload (unwrapped)
        self.hi = 0  # highest relative end (unwrapped, 64-bit)
        self.seen_seq = False
        self.udp_bytes = 0
        self.syn_seq = -1

    @property
    def bytes(self) -> int:
        return (self.hi - self.lo) if self.seen_seq else self.udp_bytes


class Flow:
    """A tracked connection. ``o``/``r``: originator/responder sides."""

    __slots__ = (
        "uid",
        "key",
        "proto",
        "orig_b",
        "resp_b",
        "orig_p",
        "resp_p",
        "first_ts",
        "last_ts",
        "qts",
        "qver",
        "inq",
        "o",
        "r",
        "history",
        "tclass",
        "vlan",
        "flipped",
        "end_reason",
        "app",
        "analyzer",
        "ctx",
        "weirds",
        "uidn",
        "_orig_h",
        "_resp_h",
    )

    def __init__(
        self,
        uid: str,
        key: FlowKey,
        proto: int,
        orig_b: bytes,
        orig_p: int,
        resp_b: bytes,
        resp_p: int,
        ts: int,
        vlan: int,
    ) -> None:
        self.uid = uid
        self.key = key
        self.proto = proto
        self.orig_b = orig_b
        self.resp_b = resp_b
        self.orig_p = orig_p
        self.resp_p = resp_p
        self.first_ts = ts
        self.last_ts = ts
        self.qts = ts  # when it was last put at the back of its timeout queue
        self.qver = 0  # the version of its live queue entry (older entries are dead)
        self.inq = False  # it has a live entry in a timeout queue
        # a UDP flow's sides are UdpSides, typed as Sides: only TCP segments
        # (``FlowTable.tcp_segment``, the fused path's TCP branch) write the
        # sequence fields, and the flow key's protocol keeps them off UDP flows
        self.o: Side = Side() if proto == 6 else cast(Side, UdpSide())
        self.r: Side = Side() if proto == 6 else cast(Side, UdpSide())
        self.history = ""
        self.tclass = T_ATTEMPT if proto == 6 else T_UDP
        self.vlan = vlan
        self.flipped = False
        self.end_reason = ""
        self.app = ""  # application protocol, when known
        self.analyzer: str | None = None  # dispatch.PENDING until the first payload attaches its session
        self.ctx: Any = None  # the application layer's state (dispatch.AppState)
        self.weirds = 0
        self.uidn = 0  # flows before it on its key in its first microsecond (FlowTable._uid)
        self._orig_h: str | None = None
        self._resp_h: str | None = None

    @property
    def orig_h(self) -> str:
        if self._orig_h is None:
            self._orig_h = address_text(self.orig_b)
        return self._orig_h

    @property
    def resp_h(self) -> str:
        if self._resp_h is None:
            self._resp_h = address_text(self.resp_b)
        return self._resp_h

    def __lt__(self, other: Flow) -> bool:
        # queue entries are (qts, uid, qver, flow): flows are compared only
        # if two distinct flows had the same uid (a hash collision)
        return id(self) < id(other)

    def add_history(self, ch: str) -> None:
        if ch not in self.history:
            self.history += ch

    # -- Zeek conn_state -------------------------------------------------------
    @property
    def conn_state(self) -> str:
        os_, rs = self.o.state, self.r.state
        if self.proto != 6:
            if os_ == UDP_ACTIVE:
                return "SF" if rs == UDP_ACTIVE else "S0"
            return "SHR" if rs == UDP_ACTIVE else "OTH"
        o_inactive = os_ in (INACTIVE, PARTIAL)
        r_inactive = rs in (INACTIVE, PARTIAL)
        if rs == RESET:
            if os_ in (SYN_SENT, SYN_ACK_SENT) or (os_ == RESET and self.o.bytes == 0 and self.r.bytes == 0):
                return "REJ"
            return "RSTRH" if o_inactive else "RSTR"
        if os_ == RESET:
            if r_inactive:
                h = self.history.lstrip("^")
                if h.startswith("S") and "R" in h and not any(c in h.split("R", 1)[0] for c in "HAFGIQ"):
                    return "RSTOS0"
                return "OTH"
            return "RSTO"
        if rs == CLOSED and os_ == CLOSED:
            return "SF"
        if os_ == CLOSED:
            return "SH" if r_inactive else "S2"
        if rs == CLOSED:
            return "SHR" if o_inactive else "S3"
        if os_ == SYN_SENT and rs == INACTIVE:
            return "S0"
        if os_ == ESTABLISHED and rs == ESTABLISHED:
            return "S1"
        return "OTH"

    @property
    def handshake_seen(self) -> bool:
        """TCP: SYN from the originator and SYN-ACK from the responder."""
        return "S" in self.history and "h" in self.history

    @property
    def successful(self) -> bool:
        if self.proto == 6:
            return self.handshake_seen and self.conn_state != "REJ"
        return self.o.state == UDP_ACTIVE and self.r.state == UDP_ACTIVE


EndCallback = Callable[[Flow], None]
WeirdCallback = Callable[[int, Flow | None, str, str], None]


class FlowStats(Counters):
    __slots__ = (
        "created",
        "ended",
        "evicted",
        "active_max",
        "expired",
        "seq_jumps",
        "seq_jumps_acked",
        "untracked",
        "emergency_entered",
        "emergency_exited",
        "reused",
        "scan_max",
        "embryos",
        "hatched",
    )

    created: int
    ended: int
    evicted: int
    active_max: int
    expired: int
    seq_jumps: int
    seq_jumps_acked: int
    untracked: int
    emergency_entered: int
    emergency_exited: int
    reused: int
    scan_max: int
    embryos: int  # bare SYNs first kept as embryonic entries (counted in created too)
    hatched: int  # embryos that became full flows (a second packet, an expiry scan, the end)


# an entry of a timeout queue: (qts, uid, qver, flow); see the module docstring
QueueEntry = tuple[int, str, int, Flow]


# Emergency mode (Suricata's flow emergency): when the table is nearly full,
# shorter timeouts free it before eviction has to pick victims.
EMERGENCY_ENTER = 0.90  # share of max_flows that starts it
EMERGENCY_EXIT = 0.70  # share below which it ends
EMERGENCY_TIMEOUTS_S = (5.0, 100.0, 1.0, 10.0)  # attempt, established, closed, udp


# Embryonic flows only under pressure: from this share of max_flows on, a
# bare SYN is kept as an embryo (below it, as a full flow at once: most SYNs
# are answered, and hatching costs more than a flow made at once)
EMBRYOS_FROM = 0.5

MAX_RECENT_KEYS = 1 << 18  # keys remembered for same-microsecond uids (cleared beyond)


def _bare_syn(flow: Flow) -> bool:
    """A TCP flow of one bare SYN, nothing answered, no application state:
    what an embryo is, as a full flow (its record would be ``attempt``'s)."""
    return flow.proto == 6 and flow.history == "S" and flow.ctx is None and flow.o.pkts == 1 and flow.r.pkts == 0


def _indexable(flow: Flow) -> bool:
    """In the wire-order index (``FlowTable.fast``): IPv4 TCP."""
    return flow.proto == 6 and len(flow.orig_b) == 4


class FlowTable:
    """Tracks flows for target packets; calls ``on_end(flow)`` when one ends."""

    def __init__(
        self,
        config: Config,
        on_end: EndCallback,
        on_weird: WeirdCallback | None = None,
        service_ports: Collection[int] | None = None,
    ) -> None:
        self.cfg = config
        self.on_end = on_end
        self.on_weird = on_weird or (lambda ts, flow, name, detail: None)
        self.service_ports = frozenset(service_ports if service_ports is not None else config.tracked_ports)
        self.flows: dict[FlowKey, Flow] = {}
        # per timeout class, a heap of (qts, uid, qver, flow); see the module docstring
        self.queues: tuple[list[QueueEntry], ...] = ([], [], [], [])
        self.qlive = [0, 0, 0, 0]  # live entries per queue
        t = config.timeouts
        self.timeouts_us: tuple[int, ...] = (
            int(t.tcp_attempt * 1e6),
            int(t.tcp_established * 1e6),
            int(t.tcp_closed * 1e6),
            int(t.udp * 1e6),
        )
        lim = config.limits
        self.max_flows = lim.max_flows
        self.scan_budget = lim.flow_scan_budget
        self.scan_interval_us = int(lim.flow_scan_interval * 1e6)
        self.max_seq_jump = lim.max_seq_jump
        # forward jumps beyond max_seq_jump waiting for the peer's ACK to prove
        # them: sender side -> (start, end, ts) in its unwrapped sequence space;
        # at most two per flow (dropped with it)
        self.jumps: dict[Side, tuple[int, int, int]] = {}
        self.normal_timeouts_us = self.timeouts_us
        self.emergency_timeouts_us = tuple(min(int(e * 1e6), n) for e, n in zip(EMERGENCY_TIMEOUTS_S, self.timeouts_us))
        self.emergency = False
        self.next_scan = 0
        self.now = 0
        self.stats = FlowStats()
        # key -> (first_ts, n) of the last flow on it that ended in the
        # microsecond it started (only those: a live flow needs no entry): the
        # uid of a flow created on the same key in the same microsecond differs by n
        self._recent: dict[FlowKey, tuple[int, int]] = {}
        self._uidn = 0  # n of the last uid made (_uid)
        self.recent_peak = 0
        # application-layer hooks (sensor.engine.dispatch): ``admit(packet)`` decides
        # whether a packet on no tracked port starts an expected flow
        # (returns (from_orig, match) or None); ``on_new(flow, match)`` sees
        # every new flow; ``on_tick(now)`` runs with the expiry scan
        self.tracked = frozenset(config.tracked_ports)
        self.admit: Callable[[Packet], tuple[bool, object] | None] | None = None
        self.on_new: Callable[[Flow, object], None] | None = None
        self.on_tick: Callable[[int], None] | None = None
        # ``reused(flow, from_orig, payload)``: True when a UDP datagram starts a
        # new connection on a live flow's 5-tuple (a TFTP client's port reused)
        self.reused: Callable[[Flow, bool, bytes], bool] | None = None
        # IPv4 TCP flows by the 12 bytes from source address to destination
        # port as a packet carries them -> (flow, from the originator); kept
        # (two entries per live flow) only when the fused path asks for it
        self.fast: dict[bytes, tuple[Flow, bool]] | None = None
        # embryonic flows (module docstring): wire key (originator address,
        # responder address, their ports) -> first_ts << 48 | vlan << 32 | SYN seq;
        # kept only when ``quiet_syn(src, dst, dport)`` (the application layer: no
        # expectation or followed host pair could take this SYN) is set and true
        self.embryos: dict[bytes, int] = {}
        self._eorder: deque[Any] = deque()  # wire key, value, wire key, value... in creation order
        self.quiet_syn: Callable[[bytes, bytes, int], bool] | None = None
        self.embryo_from = int(EMBRYOS_FROM * self.max_flows)
        # ``attempt_ended(orig_b, resp_b, orig_p, resp_p, first_ts, vlan, uid)``: an
        # embryo ends (evicted, flushed) as the unanswered attempt it is, without
        # being hatched into a Flow; None: hatched and ended as one (``on_end``). Set
        # only by an owner whose record of such a flow depends on these alone
        # (the pipeline: records, no attribution; its on_new gives it no state)
        self.attempt_ended: Callable[[bytes, bytes, int, int, int, int, str], None] | None = None
        # an embryo evicted in emergency mode is counted in its group here instead
        # (sensor/engine/attempts.py); None: each ends through ``attempt_ended``
        self.attempt_groups: AttemptGroups | None = None
        self._addrs: dict[bytes, tuple[bytes, str]] = {}  # addresses UDP flows share (``_shared``)

    def active(self) -> int:
        """Flows tracked right now, embryonic ones included (bounded by ``max_flows``)."""
        return len(self.flows) + len(self.embryos)

    # -- time -----------------------------------------------------------------
    def advance(self, ts: int) -> int:
        """Move packet time forward (never backward) and run a bounded scan."""
        if ts > self.now:
            self.now = ts
        if self.now >= self.next_scan:
            self.next_scan = self.now + self.scan_interval_us
            if self.emergency and self.active() < EMERGENCY_EXIT * self.max_flows:
                self.emergency = False
                self.timeouts_us = self.normal_timeouts_us
                self.stats.emergency_exited += 1
                if self.attempt_groups is not None:
                    self.attempt_groups.flush()  # the flood's groups end with it
            self.expire(self.now, self.scan_budget)
            if self.attempt_groups is not None:
                self.attempt_groups.expire(self.now)
            if self.on_tick is not None:
                self.on_tick(self.now)
        return self.now

    def expire(self, now: int, budget: int) -> int:
        """End the flows idle past their class's timeout at ``now``, by class,
        then in (qts, uid) order; examine at most ``budget`` flows."""
        n = 0
        heappop = heapq.heappop
        for cls, q in enumerate(self.queues):
            limit = now - self.timeouts_us[cls]
            if cls == T_ATTEMPT and self.embryos:
                self._hatch_due(limit, budget)
            while q and n < budget and q[0][0] <= limit:
                _, _, ver, flow = heappop(q)
                if ver != flow.qver or not flow.inq:
                    continue  # left behind by a requeue, class change or end
                n += 1
                if flow.last_ts > limit:
                    self._queue(flow, cls, flow.last_ts)  # active since it was queued
                    continue
                self._end(flow, "timeout")
                self.stats.expired += 1
        if n > self.stats.scan_max:
            self.stats.scan_max = n
        return n

    def _queue(self, flow: Flow, cls: int, qts: int) -> None:
        """Give ``flow`` a (new) live entry in queue ``cls``."""
        if flow.inq:
            self._unqueue(flow)
        ver = flow.qver + 1
        flow.qver = ver
        flow.qts = qts
        flow.inq = True
        self.qlive[cls] += 1
        heapq.heappush(self.queues[cls], (qts, flow.uid, ver, flow))

    def _unqueue(self, flow: Flow) -> None:
        """Its live entry becomes dead (it stays in the heap until popped or
        compacted; the scan and the eviction pop it first, then requeue or end)."""
        flow.inq = False
        cls = flow.tclass
        self.qlive[cls] -= 1
        q = self.queues[cls]
        if len(q) > 64 and len(q) > 2 * self.qlive[cls]:
            self._compact(cls)

    def _compact(self, cls: int) -> None:
        """Drop the dead entries of queue ``cls`` (the order of the live ones is unchanged)."""
        q = self.queues[cls]
        q[:] = [e for e in q if e[2] == e[3].qver and e[3].inq]
        heapq.heapify(q)

    def queued(self) -> int:
        """Flows in a timeout queue (live entries)."""
        return sum(1 for q in self.queues for e in q if e[2] == e[3].qver and e[3].inq)

    def flush(self) -> None:
        """End every flow (end of capture, shutdown), oldest first."""
        self._eorder.clear()
        ended = self.attempt_ended
        if ended is None:
            for wk, v in list(self.embryos.items()):
                self._hatch(wk, v, live=False)
            for flow in sorted(self.flows.values(), key=lambda f: (f.first_ts, f.uid)):
                self._end(flow, "flush")
        else:
            # the flows and the embryos (each with its uid, made in the order
            # hatching would have made them) end together, oldest first
            last: list[tuple[int, str, Any]] = [(f.first_ts, f.uid, f) for f in self.flows.values()]
            if self.attempt_groups is not None and self.emergency:  # counted in their groups (_end_embryo)
                for wk, v in list(self.embryos.items()):
                    self._end_embryo(wk, v)
            for wk, v in self.embryos.items():
                key, src, dst, sport, dport = self._embryo_key(wk)
                ts = v >> 48
                last.append((ts, self._uid(key, ts), (src, dst, sport, dport, ts, (v >> 32) & 0xFFFF)))
            self.stats.hatched += len(self.embryos)
            self.embryos.clear()
            last.sort(key=lambda e: (e[0], e[1]))  # stable: flows before embryos, as hatching added them
            st = self.stats
            for _, uid, x in last:
                if isinstance(x, Flow):
                    self._end(x, "flush")
                else:
                    st.ended += 1
                    ended(x[0], x[1], x[2], x[3], x[4], x[5], uid)
        if self.attempt_groups is not None:
            self.attempt_groups.flush()
        for q in self.queues:
            q.clear()
        self.qlive = [0, 0, 0, 0]
        self._recent.clear()

    # -- packets --------------------------------------------------------------
    def _uid(self, key: FlowKey, ts: int) -> str:
        """A Zeek-style uid from the flow's key and first packet time (and a
        count of earlier flows on the same key in the same microsecond), so
        it does not depend on the other flows of the capture."""
        prev = self._recent.get(key)
        n = prev[1] + 1 if prev is not None and prev[0] == ts else 0
        self._uidn = n  # the flow's (Flow.uidn), for _end
        proto, a, ap, b, bp = key
        h = hashlib.blake2b(
            b"%d|%s|%d|%s|%d|%d|%d" % (proto, hexlify(a), ap, hexlify(b), bp, ts, n), digest_size=12
        ).digest()
        # 17 base-62 digits, least significant first: 8 pairs and one; the 96-bit
        # value is cut in two divisions by 3844^4, the rest is small-int arithmetic
        v, lo = divmod(int.from_bytes(h, "big"), _B62_4)
        top, mid = divmod(v, _B62_4)
        x, y = divmod(lo, 14776336)  # 3844^2
        z, w = divmod(mid, 14776336)
        p = _B62_PAIRS
        return (
            "C"
            + p[y % 3844]
            + p[y // 3844]
            + p[x % 3844]
            + p[x // 3844]
            + p[w % 3844]
            + p[w // 3844]
            + p[z % 3844]
            + p[z // 3844]
            + _B62[top % 62]
        )

    def _end(self, flow: Flow, reason: str, quiet: bool = False) -> None:
        """``quiet``: without ``on_end`` (no record: a bare SYN counted in its attempt group)."""
        if self.flows.pop(flow.key, None) is None:
            return
        if flow.inq:  # every live flow is queued; a hatched embryo ending at once is neither queued nor indexed
            fast = self.fast
            if fast is not None and _indexable(flow):
                self._unindex(fast, flow)
            self._unqueue(flow)
        if flow.first_ts >= self.now:
            # a later flow on this key may share its first microsecond: its uid counts this one
            recent = self._recent
            if len(recent) >= MAX_RECENT_KEYS:
                recent.clear()
            recent[flow.key] = (flow.first_ts, flow.uidn)
            if len(recent) > self.recent_peak:
                self.recent_peak = len(recent)
        if self.jumps:
            for s in (flow.o, flow.r):
                pend = self.jumps.pop(s, None)
                if pend is not None:
                    self._unconfirmed(flow, s, pend)
        flow.end_reason = reason
        self.stats.ended += 1
        if not quiet:
            self.on_end(flow)

    # -- the wire-order index (sensor/engine/fastpath.py) -------------------------------
    @staticmethod
    def _wire_keys(flow: Flow) -> tuple[bytes, bytes]:
        """The IPv4 addresses and ports of each direction as they follow one
        another in a packet: from the originator, from the responder."""
        po, pr = flow.orig_p.to_bytes(2, "big"), flow.resp_p.to_bytes(2, "big")
        return flow.orig_b + flow.resp_b + po + pr, flow.resp_b + flow.orig_b + pr + po

    def _index(self, fast: dict[bytes, tuple[Flow, bool]], flow: Flow) -> None:
        ko, kr = self._wire_keys(flow)
        if ko != kr:  # a connection to itself has one key for both directions: not indexed
            fast[ko] = (flow, True)
            fast[kr] = (flow, False)

    def _unindex(self, fast: dict[bytes, tuple[Flow, bool]], flow: Flow) -> None:
        for k in self._wire_keys(flow):
            e = fast.get(k)
            if e is not None and e[0] is flow:
                del fast[k]

    def _evict(self) -> None:
        """Make room: the least recently active flow of the first non-empty
        class (half-open attempts first, embryos among them: the oldest bare
        SYN unless a full attempt is older); looks past at most a few
        requeued ones so an active flow is not taken for an idle one."""
        if self.embryos:
            eo, emb = self._eorder, self.embryos
            while True:
                wk: bytes = eo[0]
                v: int = eo[1]
                if emb.get(wk) is v:
                    break
                eo.popleft()  # the entries of a hatched embryo
                eo.popleft()
            q = self.queues[T_ATTEMPT]
            while q and (q[0][2] != q[0][3].qver or not q[0][3].inq):
                heapq.heappop(q)  # a dead entry
            if not q or v >> 48 <= q[0][0]:  # no full attempt older than the oldest embryo
                eo.popleft()
                eo.popleft()
                self.stats.evicted += 1
                if self.attempt_ended is None:
                    self._end(self._hatch(wk, v, live=False), "evicted")
                else:
                    self._end_embryo(wk, v)
                return
        for cls in (T_ATTEMPT, T_UDP, T_CLOSED, T_ESTABLISHED):
            q = self.queues[cls]
            looked = 0
            while q:
                _, _, ver, flow = q[0]
                if ver != flow.qver or not flow.inq:
                    heapq.heappop(q)  # a dead entry
                    continue
                if flow.last_ts <= flow.qts or looked >= 8:
                    break
                heapq.heappop(q)
                self._queue(flow, cls, flow.last_ts)
                looked += 1
            if not q:
                continue
            self.stats.evicted += 1
            groups = self.attempt_groups
            if groups is not None and self.emergency and _bare_syn(flow):
                self._end(flow, "evicted", quiet=True)  # counted in its group, as an embryo would be
                groups.add(flow.orig_b + flow.resp_p.to_bytes(2, "big"), flow.resp_b, flow.first_ts)
                return
            self._end(flow, "evicted")
            return

    def _room(self) -> None:
        """Before a flow or embryo is added: emergency mode near ``max_flows``, eviction at it."""
        if not self.emergency and self.active() >= EMERGENCY_ENTER * self.max_flows:
            self.emergency = True
            self.timeouts_us = self.emergency_timeouts_us
            self.stats.emergency_entered += 1
            self.expire(self.now, self.scan_budget)
        if self.active() >= self.max_flows:
            self._evict()

    # -- embryonic flows (module docstring) ----------------------------------------
    def embryo(
        self, key: FlowKey, src: bytes, dst: bytes, sport: int, dport: int, ts: int, vlan: int, seq: int
    ) -> bool:
        """A bare SYN (no ACK, FIN or RST; no payload) at the clock's time,
        with no flow on ``key``: kept as an embryo (True) when it can be one
        -- on a tracked port, no embryo of its connection yet, nothing the
        application layer could take it for (``quiet_syn``)."""
        quiet = self.quiet_syn
        if quiet is None or len(self.flows) + len(self.embryos) < self.embryo_from:
            return False  # no pressure: a full flow (most SYNs are answered; hatching costs more)
        if not (sport in self.tracked or dport in self.tracked):
            return False
        if src == dst or vlan > 0xFFFF or ts >> 63:
            return False  # a connection to itself, or fields that do not pack
        emb = self.embryos
        pack = _PORTS.pack
        wk = src + dst + pack(sport, dport)
        if emb and (wk in emb or dst + src + pack(dport, sport) in emb):
            return False  # a second SYN of its connection: the layered path hatches the embryo
        if not quiet(src, dst, dport):
            return False
        r = self._recent.get(key)
        if r is not None and r[0] == ts:
            return False  # its uid counts an earlier flow of this microsecond: a full flow
        self._room()
        v = (ts << 48) | (vlan << 32) | seq
        emb[wk] = v
        eo = self._eorder
        eo.append(wk)
        eo.append(v)
        st = self.stats
        st.created += 1
        st.embryos += 1
        n = len(self.flows) + len(emb)
        if n > st.active_max:
            st.active_max = n
        return True

    @staticmethod
    def _embryo_key(wk: bytes) -> tuple[FlowKey, bytes, bytes, int, int]:
        """The flow key of the embryo ``wk``, its originator and responder addresses and ports."""
        n = (len(wk) - 4) >> 1
        src, dst = wk[:n], wk[n : 2 * n]
        sport, dport = _PORTS.unpack_from(wk, 2 * n)
        key: FlowKey = (6, src, sport, dst, dport) if (src, sport) <= (dst, dport) else (6, dst, dport, src, sport)
        return key, src, dst, sport, dport

    def _end_embryo(self, wk: bytes, v: int) -> None:
        """The embryo ``wk`` ends now (evicted) as the unanswered attempt it
        is: what ``_end(_hatch(wk, v, live=False))`` does, without the Flow
        (``attempt_ended`` writes its record)."""
        del self.embryos[wk]
        st = self.stats
        st.hatched += 1
        st.ended += 1
        eo = self._eorder
        if len(eo) > 4 * len(self.embryos) + 256:  # as _hatch
            self._reorder()
        groups = self.attempt_groups
        if groups is not None and self.emergency:  # counted in its group: no uid, no record of its own
            n = (len(wk) - 4) >> 1
            groups.add(wk[:n] + wk[-2:], wk[n : 2 * n], v >> 48)
            return
        key, src, dst, sport, dport = self._embryo_key(wk)
        ts = v >> 48
        uid = self._uid(key, ts)
        if ts >= self.now:  # as _end: a later flow on this key in this microsecond counts it
            recent = self._recent
            if len(recent) >= MAX_RECENT_KEYS:
                recent.clear()
            recent[key] = (ts, self._uidn)
            if len(recent) > self.recent_peak:
                self.recent_peak = len(recent)
        self.attempt_ended(src, dst, sport, dport, ts, (v >> 32) & 0xFFFF, uid)  # type: ignore[misc]

    def _reorder(self) -> None:
        """Rebuild ``_eorder`` from the live embryos (drops the entries of hatched ones)."""
        eo = self._eorder
        eo.clear()
        for k, x in self.embryos.items():
            eo.append(k)
            eo.append(x)

    def _hatch(self, wk: bytes, v: int, live: bool = True) -> Flow:
        """The embryo ``wk`` as the flow its SYN would have created (``live``:
        indexed and queued, else about to end)."""
        del self.embryos[wk]
        self.stats.hatched += 1
        key, src, dst, sport, dport = self._embryo_key(wk)
        ts = v >> 48
        flow = Flow(self._uid(key, ts), key, 6, src, sport, dst, dport, ts, (v >> 32) & 0xFFFF)
        flow.uidn = self._uidn
        self.flows[key] = flow
        if live:
            fast = self.fast
            if fast is not None and _indexable(flow):
                self._index(fast, flow)
            self._queue(flow, T_ATTEMPT, ts)
        self.tcp_segment(flow, True, SYN, v & _M32, 0, ts)
        if self.on_new is not None:
            self.on_new(flow, None)
        if len(self._eorder) > 4 * len(self.embryos) + 256:  # mostly entries of hatched embryos: rebuild
            self._reorder()
        return flow

    def _hatch_due(self, limit: int, budget: int) -> None:
        """Hatch the embryos whose SYN is at or before ``limit`` into the
        attempt queue, oldest first, at most ``budget`` (and those of the
        last one's microsecond): the expiry scan then ends them in
        (qts, uid) order with the other attempts."""
        eo, emb = self._eorder, self.embryos
        k = 0
        last = -1
        while eo:
            wk: bytes = eo[0]
            v: int = eo[1]
            if emb.get(wk) is not v:
                eo.popleft()
                eo.popleft()
                continue
            ts = v >> 48
            if ts > limit or (k >= budget and ts != last):
                break
            eo.popleft()
            eo.popleft()
            self._hatch(wk, v)
            k += 1
            last = ts

    def _promote(self, p: Packet) -> Flow | None:
        """A TCP packet with no flow: the embryo of its connection, hatched, if any."""
        emb = self.embryos
        v = emb.get(wk := p.src + p.dst + _PORTS.pack(p.sport, p.dport))
        if v is None:
            v = emb.get(wk := p.dst + p.src + _PORTS.pack(p.dport, p.sport))
            if v is None:
                return None
        return self._hatch(wk, v)

    def _shared(self, b: bytes) -> tuple[bytes, str]:
        """``b`` (a packed address) and its text: those other UDP flows hold, if any."""
        addrs = self._addrs
        e = addrs.get(b)
        if e is None:
            if len(addrs) >= MAX_SHARED_ADDRESSES:
                addrs.clear()
            e = addrs[b] = (b, address_text(b))
        return e

    def _create(self, p: Packet, key: FlowKey, admitted: tuple[bool, object] | None = None) -> Flow:
        self._room()
        src, sport, dst, dport = p.src, p.sport, p.dst, p.dport
        udp = p.proto != 6
        if udp:
            # UDP: its addresses and their text shared (a request flood from a
            # few hosts); a TCP flow keeps the packet's: a SYN scan's sources are many
            (src, src_h), (dst, dst_h) = self._shared(src), self._shared(dst)
            key = (key[0], src if key[1] == src else dst, key[2], dst if key[1] == src else src, key[4])
        flags = p.flags
        flip = False
        if admitted is not None:
            flip = not admitted[0]
        elif p.proto == 6:
            if flags & SYN:
                flip = bool(flags & ACK)  # a SYN-ACK's receiver is the originator
            else:
                flip = sport in self.service_ports and dport not in self.service_ports and sport != 20
        else:
            flip = sport in self.service_ports and dport not in self.service_ports and sport != 20
        if flip:
            flow = Flow(self._uid(key, p.ts), key, p.proto, dst, dport, src, sport, p.ts, p.vlan)
            if not (flags & SYN) and admitted is None:
                flow.history = "^"
                flow.flipped = True
        else:
            flow = Flow(self._uid(key, p.ts), key, p.proto, src, sport, dst, dport, p.ts, p.vlan)
        flow.uidn = self._uidn
        if udp:
            flow._orig_h, flow._resp_h = (dst_h, src_h) if flip else (src_h, dst_h)
        self.flows[key] = flow
        fast = self.fast
        if fast is not None and _indexable(flow):
            self._index(fast, flow)
        self._queue(flow, flow.tclass, flow.qts)
        self.stats.created += 1
        n = len(self.flows) + len(self.embryos)
        if n > self.stats.active_max:
            self.stats.active_max = n
        return flow

    def process(self, p: Packet) -> Flow | None:
        """Account one target packet; returns its flow (None: not tracked)."""
        return self.account(p, self.advance(p.ts))

    def account(self, p: Packet, ts: int) -> Flow | None:
        """``process`` after the clock moved to ``ts`` (``advance``)."""
        a, b = (p.src, p.sport), (p.dst, p.dport)
        key = (p.proto,) + (a + b if a <= b else b + a)
        flow = self.flows.get(key)
        if flow is None and self.embryos and p.proto == 6:
            flow = self._promote(p)
        if flow is not None and self._starts_anew(flow, p):
            # the 5-tuple was reused (the client's port came round again while
            # the old flow waited for its timeout): end the old connection,
            # this packet starts a new one
            self._end(flow, "reused")
            self.stats.reused += 1
            flow = None
        new = flow is None
        if flow is None:
            # an expected connection (FTP data, TFTP transfer) may also sit on a
            # tracked port: active-mode FTP data comes from port 20
            if (
                p.proto == 6
                and p.flags & 0x17 == SYN  # SYN without ACK, FIN or RST
                and not p.plen
                and p.ts == ts
                and self.embryo(key, p.src, p.dst, p.sport, p.dport, ts, p.vlan, p.seq)
            ):
                return None  # an embryo: no flow (yet), nothing for the application layer
            admitted = self.admit(p) if self.admit is not None else None
            if admitted is None and p.sport not in self.tracked and p.dport not in self.tracked:
                self.stats.untracked += 1
                return None
            flow = self._create(p, key, admitted)
        from_orig = p.src == flow.orig_b and p.sport == flow.orig_p
        if ts > flow.last_ts:
            flow.last_ts = ts
        if p.proto == 6:
            self._tcp(flow, p, from_orig)
        else:
            side = flow.o if from_orig else flow.r
            side.pkts += 1
            side.udp_bytes += p.plen
            side.state = UDP_ACTIVE
            flow.add_history("D" if from_orig else "d")
        if new and self.on_new is not None:
            # after the first packet is accounted, so its flags are in the history
            self.on_new(flow, admitted[1] if admitted is not None else None)
        return flow

    def _starts_anew(self, flow: Flow, p: Packet) -> bool:
        """TCP: a SYN (no ACK) with a new initial sequence number after the
        connection closed (FIN both ways or RST) -- as Zeek does; UDP: when
        the application layer says so (``reused``)."""
        if p.proto == 6:
            if p.flags & (SYN | ACK) != SYN or flow.tclass != T_CLOSED:
                return False
            s = flow.o if (p.src == flow.orig_b and p.sport == flow.orig_p) else flow.r
            return s.syn_seq != p.seq
        return self.reused is not None and self.reused(flow, p.src == flow.orig_b and p.sport == flow.orig_p, p.payload)

    def _set_class(self, flow: Flow, cls: int) -> None:
        if flow.tclass != cls:
            if flow.inq:
                self._unqueue(flow)
            flow.tclass = cls
            self._queue(flow, cls, flow.last_ts)

    def _tcp(self, flow: Flow, p: Packet, from_orig: bool) -> None:
        self.tcp_segment(flow, from_orig, p.flags, p.seq, p.plen, p.ts, p.ack)

    def tcp_segment(
        self, flow: Flow, from_orig: bool, flags: int, seq: int, plen: int, ts: int, ackno: int = 0
    ) -> None:
        """Account one TCP segment of ``flow`` (``_tcp`` with the packet's fields)."""
        s, peer = (flow.o, flow.r) if from_orig else (flow.r, flow.o)
        s.pkts += 1
        syn, ack, fin, rst = flags & SYN, flags & ACK, flags & FIN, flags & RST
        if ack and self.jumps:
            self.acked(flow, from_orig, ackno)
        up = str.upper if from_orig else str.lower
        if syn and rst:
            flow.add_history(up("i"))
        if syn:
            flow.add_history(up("h" if ack else "s"))
            if s.state in (INACTIVE, SYN_SENT, SYN_ACK_SENT) and s.hi == s.lo:
                # (re)base on the SYN unless data was already counted
                if s.syn_seq != seq:
                    s.syn_seq = seq
                    s.base = (seq + 1) & _M32
                    s.lo = s.hi = 0
                    s.seen_seq = True
                if s.state == INACTIVE:
                    s.state = SYN_ACK_SENT if ack else SYN_SENT
        if rst:
            flow.add_history(up("r"))
            s.state = RESET
            self._set_class(flow, T_CLOSED)
            if plen:
                self._seq(flow, s, seq, plen, ts)
            return
        if plen:
            flow.add_history(up("d"))
            self._seq(flow, s, seq, plen, ts)
        elif ack and not syn and not fin:
            flow.add_history(up("a"))
        if not syn:
            if s.state == INACTIVE:
                s.state = PARTIAL
                if not s.seen_seq:
                    s.base = seq
                    s.seen_seq = True
            elif s.state == SYN_SENT and ack and peer.state in (SYN_ACK_SENT, ESTABLISHED):
                s.state = ESTABLISHED
                if peer.state == SYN_ACK_SENT:
                    peer.state = ESTABLISHED
            elif s.state == SYN_ACK_SENT and (ack or plen) and peer.state == ESTABLISHED:
                s.state = ESTABLISHED
        if fin:
            flow.add_history(up("f"))
            if s.state != RESET:
                s.state = CLOSED
        if s.state in (CLOSED, RESET) and peer.state in (CLOSED, RESET):
            self._set_class(flow, T_CLOSED)
        elif flow.tclass == T_ATTEMPT and (
            s.state == ESTABLISHED or peer.state == ESTABLISHED or s.state == PARTIAL or peer.state == PARTIAL
        ):
            self._set_class(flow, T_ESTABLISHED)

    def _seq(self, flow: Flow, s: Side, seq: int, plen: int, ts: int) -> None:
        if not s.seen_seq:
            s.base = seq
            s.seen_seq = True
        self.seq_at(flow, s, seq_unwrap(seq, s.base, s.hi), plen, ts)

    def seq_at(self, flow: Flow, s: Side, cand: int, plen: int, ts: int) -> None:
        """``_seq`` once the segment's unwrapped relative offset ``cand`` is known."""
        if self.jumps:
            pend = self.jumps.get(s)
            if pend is not None:
                # near a jump still unconfirmed: unwrap against it (a gapped
                # capture may be 2^31 ahead of the bytes counted so far)
                c2 = seq_unwrap((s.base + cand) & _M32, s.base, pend[1])
                if c2 - s.hi > self.max_seq_jump:  # still a jump (else as the fused path's in-order data)
                    self._jumped(flow, s, c2, c2 + plen, ts)
                    return
        hi = s.hi
        end = cand + plen
        if cand > hi:
            jump = cand - hi
            if jump > self.max_seq_jump:
                self._jumped(flow, s, cand, end, ts)
                return
            # bytes skipped over are counted (Zeek's orig_bytes); they may still arrive out of order
            s.hi = end
        elif end > hi:
            s.hi = end
        else:
            if cand >= s.lo:
                flow.add_history("T" if s is flow.o else "t")
        if cand < s.lo:
            if s.lo - cand > self.max_seq_jump:
                flow.weirds += 1
                self.on_weird(ts, flow, "tcp_seq_jump", f"{s.lo - cand} bytes behind")
                return
            s.lo = cand

    # -- jumps the peer's ACK proves (a capture with gaps) ----------------------------
    def _jumped(self, flow: Flow, s: Side, cand: int, end: int, ts: int) -> None:
        """A segment more than ``max_seq_jump`` ahead of the side's bytes: not
        counted until the peer acknowledges past its start (``acked``);
        segments just after it join it."""
        jumps = self.jumps
        pend = jumps.get(s)
        if pend is not None:
            lo, hi, t0 = pend
            if cand <= hi + self.max_seq_jump:  # (cand is a jump from the side's bytes, so beyond them)
                jumps[s] = (min(lo, cand), max(hi, end), t0)
                return
            self._unconfirmed(flow, s, pend)
        jumps[s] = (cand, end, ts)

    def acked(self, flow: Flow, from_orig: bool, ackno: int) -> None:
        """An ACK from one side: a jump of the other side's that it covers is
        real data the capture missed, and counts."""
        s = flow.r if from_orig else flow.o
        pend = self.jumps.get(s)
        if pend is None:
            return
        lo, end, _ = pend
        if seq_unwrap(ackno, s.base, end) >= lo:
            del self.jumps[s]
            if end > s.hi:
                s.hi = end
            self.stats.seq_jumps_acked += 1

    def _unconfirmed(self, flow: Flow, s: Side, pend: tuple[int, int, int]) -> None:
        """A jump nobody acknowledged: a weird, and its bytes are not counted."""
        lo, end, ts = pend
        flow.weirds += 1
        self.stats.seq_jumps += 1
        self.on_weird(ts, flow, "tcp_seq_jump", f"{lo - s.hi} bytes ahead, never acknowledged")
