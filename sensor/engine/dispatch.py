"""The application layer's dispatcher: protocol plugins on flows (sans-IO).

Protocol-independent; what each protocol does is its plugin's
(``sensor.analyzers.<protocol>``, listed in ``sensor.analyzers.PLUGIN_PACKAGES``;
the interface is ``sensor.analyzers.base``). The dispatcher:

- admits a new flow on no tracked port when it fulfils an expectation a
  plugin's analyzer announced (``ExpectConnection``), joins two hosts a
  plugin follows (``follow_hosts``), or a plugin's probe recognises the
  server's first bytes;
- names the other flows by the registry's port tables and gives them a
  plugin session at their first payload (``attach``), so a half-open scan
  costs no state;
- reassembles TCP per direction (``sensor.engine.reassembly``, the session's
  depth) and feeds the session's analyzer in packet order, with gap
  signals; UDP datagrams go straight in; taps see raw payloads first;
- routes events: ``Weird`` to the weird log, ``ExpectConnection`` to the
  expectation table, the rest to the session, which answers through its
  :class:`AppState` (fields, user, transfers);
- links children to their parent: a parent's record waits until its
  children have ended, then carries their bytes (DataSentBytes/
  DataReceivedBytes) and whether the server answered (TFTP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sensor.analyzers import registry
from sensor.analyzers.base import Analyzer, ConnInfo, Plugin, Session, Tap
from sensor.core.events import Event, ExpectConnection, Weird
from sensor.engine.decode import SYN, Packet
from sensor.engine.expect import Expectations
from sensor.engine.flows import Flow, address_text
from sensor.engine.ports import PortSet
from sensor.engine.reassembly import ReassemblyLimits, Stream

MAX_SUMMARY_FILES = 64  # files named per flow in AdditionalFields
MAX_HOST_PAIRS = 10_000  # host pairs followed at once (FTPS sessions)

PENDING = "pending"  # flow.analyzer until the flow's first payload attaches its session
_PAIRED = object()  # admit() marker: a connection between followed hosts
_PROBED = object()  # admit() marker: a plugin's probe recognised the server's first bytes


class _Probing(Tap):
    """The tap of a flow on a tracked port no plugin names: the server's
    first payload goes to the plugins' probes (handled by the dispatcher)."""


PROBING = _Probing()


class AppState:
    """The application layer's state of one flow (``flow.ctx``).

    For plugins it is their :class:`sensor.analyzers.base.FlowContext`. For
    the records (``sensor.records``) it has a read API: ``user``,
    ``fields``, ``files``, ``child_sent``/``child_recv`` (bytes of the
    children, as the parent's originator sent/received them),
    ``child_answered`` and ``parent_uid``. For the per-packet paths
    (``segment`` and ``sensor.engine.fastpath``): ``analyzer``, ``streams``
    (orig->resp, resp->orig), ``stopped`` and ``tap`` (not None: every
    payload must go through ``Dispatcher.segment``)."""

    __slots__ = (
        "_layer",
        "flow",
        "plugin",
        "session",
        "analyzer",
        "streams",
        "stopped",
        "tap",
        "parent",
        "children",
        "held",
        "user",
        "fields",
        "files",
        "child_sent",
        "child_recv",
        "child_answered",
        "nonstandard",
        "control",
    )

    def __init__(self, layer: Dispatcher, flow: Flow) -> None:
        self._layer = layer
        self.flow = flow
        self.plugin: Plugin | None = None
        self.session: Session | None = None
        self.analyzer: Analyzer | None = None
        self.streams: tuple[Stream, Stream] | None = None
        self.stopped = False  # feed the analyzer nothing more (TLS upgrade)
        self.tap: Tap | None = None
        self.parent: AppState | None = None
        self.children = 0  # live children
        self.held = False  # this flow's record waits for its children
        self.user = ""
        self.fields: dict[str, Any] = {}
        self.files: list[str] | tuple[()] = ()  # a list from the first file named (most flows name none)
        self.child_sent = 0
        self.child_recv = 0
        self.child_answered = False
        self.nonstandard = False  # admitted by a probe: its port is referenced while it lives
        # a child's control session (client, server), kept after the control ended: the record's device
        self.control: tuple[str, str] | None = None

    @property
    def parent_uid(self) -> str:
        return self.parent.flow.uid if self.parent is not None else ""

    # -- FlowContext: what a plugin's session may call -----------------------------------
    def conn(self) -> ConnInfo:
        f = self.flow
        return ConnInfo(f.uid, "tcp" if f.proto == 6 else "udp", f.orig_h, f.orig_p, f.resp_h, f.resp_p)

    def set_user(self, user: str) -> None:
        self.user = user

    def set_field(self, name: str, value: Any) -> None:
        self.fields[name] = value

    def set_app(self, app: str) -> None:
        self.flow.app = app

    def transfer(self, rec: dict[str, Any]) -> None:
        self._layer.transfer(self, rec)

    def file_event(self, rec: dict[str, Any]) -> None:
        self._layer.file_event(self, rec)

    def expect(self, ev: ExpectConnection) -> None:
        self._layer.expect.add(ev, self.flow)

    def weird(self, ev: Weird) -> None:
        self._layer.weird(ev.ts, ev.name, ev.detail, self.flow.uid, ev.analyzer or self.flow.app)

    def stop(self) -> None:
        self.stopped = True

    def start_tap(self, plugin: str) -> None:
        p = self._layer.by_name.get(plugin)
        self.tap = p.tap(self) if p is not None else None

    def follow_hosts(self) -> None:
        self._layer.follow_hosts(self.flow)


class Dispatcher:
    """``plugins``: default the registry's (``sensor.analyzers.registry()``)."""

    def __init__(
        self,
        tracked_ports: frozenset[int],
        ports: PortSet,
        emit: Callable[[str, dict[str, Any]], None],
        weird: Callable[[int, str, str, str, str], None],
        plugins: tuple[Plugin, ...] | None = None,
    ) -> None:
        self.tracked = tracked_ports
        self.ports = ports
        self.emit = emit  # (kind, record) for transfers
        self.weird = weird  # (ts, name, detail, uid, source)
        self.expect = Expectations(on_port=ports.ref)
        self.pairs: dict[tuple[bytes, bytes], Flow] = {}  # (client, server) -> the flow that follows them
        self.pairs_peak = 0
        self.stats = {"analyzed_flows": 0, "expected_flows": 0, "transfers": 0, "gaps": 0, "overlap_conflicts": 0}
        # (owner flow, record, kind): writes a transfer or file event instead of ``emit``
        # (endpoint mode: the record names the owner's process)
        self.emit_transfer: Callable[[Flow, dict[str, Any], str], None] | None = None
        self.plugins = registry() if plugins is None else tuple(plugins)
        self._tables(self.plugins)
        self._limits: dict[int, ReassemblyLimits] = {}
        # bytes delivered last kept per direction to compare overlaps with (limits.overlap_check_bytes)
        self.retain = ReassemblyLimits().retain

    def _tables(self, plugins: tuple[Plugin, ...]) -> None:
        """Port tables, names, expectations and probes from the plugins;
        a port, name or expectation claimed twice is a ValueError."""
        self.by_name: dict[str, Plugin] = {}
        self.by_app: dict[str, Plugin] = {}
        self.by_expect: dict[str, Plugin] = {}
        # port -> (plugin, app name, pending: the flow gets a session at its first payload)
        self.tcp_ports: dict[int, tuple[Plugin, str, bool]] = {}
        self.udp_ports: dict[int, tuple[Plugin, str, bool]] = {}
        self.tcp_orig_ports: dict[int, tuple[Plugin, str, bool]] = {}

        def claim(table: dict[Any, Any], key: Any, value: Any, what: str, pl: Plugin) -> None:
            other = table.get(key)
            if other is not None and (other[0] if isinstance(other, tuple) else other) is not pl:
                owner = other[0].name if isinstance(other, tuple) else other.name
                raise ValueError(f"{what} {key!r}: claimed by plugins {owner!r} and {pl.name!r}")
            table[key] = value

        for pl in plugins:
            claim(self.by_name, pl.name, pl, "plugin name", pl)
            for table, declared, what in (
                (self.tcp_ports, pl.tcp_ports, "TCP port"),
                (self.udp_ports, pl.udp_ports, "UDP port"),
                (self.tcp_orig_ports, pl.tcp_orig_ports, "TCP originator port"),
            ):
                for port, app in declared.items():
                    claim(table, port, (pl, app, app not in pl.name_only), what, pl)
                    claim(self.by_app, app, pl, "app name", pl)
            for name in pl.expects:
                claim(self.by_expect, name, pl, "expectation", pl)
        # ports of sessions of their own: a followed host pair's connection there is not its child
        self.service_ports = frozenset(
            port
            for table in (self.tcp_ports, self.udp_ports)
            for port, (pl, app, _) in table.items()
            if app not in pl.data_apps
        )
        self.probes = tuple(pl for pl in plugins if type(pl).probe_tc is not Plugin.probe_tc)

    # -- admission of flows on untracked ports ------------------------------------
    def admit(self, p: Packet) -> tuple[bool, Any] | None:
        """For the first packet of a new flow: (from_orig, match) when the flow
        is an expected one (an announced connection, a connection between
        followed hosts, a protocol a probe recognises on an unusual port),
        else None."""
        proto = "tcp" if p.proto == 6 else "udp"
        src, dst = address_text(p.src), address_text(p.dst)
        ts = p.ts
        if p.proto == 6 and p.flags & SYN and p.flags & 0x10:  # SYN-ACK: the receiver is the originator
            order: tuple[tuple[str, int, str, int, bool], ...] = ((dst, p.dport, src, p.sport, False),)
        elif p.proto == 6 and p.flags & SYN:
            order = ((src, p.sport, dst, p.dport, True),)
        else:
            order = ((src, p.sport, dst, p.dport, True), (dst, p.dport, src, p.sport, False))
        for oh, op, rh, rp, fwd in order:
            m = self.expect.match(proto, oh, op, rh, rp, ts)
            if m is not None:
                return fwd, m
        if p.proto == 6 and self.pairs:
            ctrl = self.pairs.get((p.src, p.dst)) or self.pairs.get((p.dst, p.src))
            if (
                ctrl is not None
                and not ctrl.end_reason
                and p.sport not in self.service_ports
                and p.dport not in self.service_ports
            ):
                # a new connection between the same two hosts while the follower lives
                fwd = not (p.flags & SYN and p.flags & 0x10)
                return fwd, (_PAIRED, ctrl)
        if p.proto == 6 and p.payload and p.sport not in self.tracked:
            for pl in self.probes:
                if pl.probe_tc(p.payload):
                    # a server's first bytes on a port that is not the protocol's: the sender is the responder
                    return False, (_PROBED, pl, p)
        return None

    def quiet_syn(self, src: bytes, dst: bytes, dport: int) -> bool:
        """A bare SYN (no payload) on a tracked port that ``admit`` would not
        take: no live TCP expectation on its port, not between followed
        hosts. The flow table may keep it as an embryo (sensor/engine/flows.py)."""
        if self.expect.could_take(dport):
            return False
        return not (self.pairs and (src, dst) in self.ports.hosts)

    def tcp_app(self, orig_p: int, resp_p: int) -> str:
        """The application protocol ``flow_started`` names a new TCP flow with
        no expectation after (the pipeline's record of an embryo that never
        became a Flow)."""
        e = self.tcp_ports.get(resp_p) or self.tcp_orig_ports.get(orig_p)
        return "" if e is None else e[1]

    def reused(self, flow: Flow, from_orig: bool, payload: bytes) -> bool:
        """A UDP datagram from the client starts a new connection on
        ``flow``'s 5-tuple (the session's ``restarts``: a TFTP client's port
        reused by a new request). The flow table then ends the old one."""
        if not from_orig:
            return False
        st: AppState | None = flow.ctx
        if st is None or st.session is None:
            return False
        restarts = st.session.restarts
        return restarts is not None and bool(restarts(payload))

    # -- flows --------------------------------------------------------------------
    def flow_started(self, flow: Flow, match: Any = None) -> None:
        """A new flow. Expected flows get their state now; a flow on a
        port the registry names only gets its name here, and its session
        with its first payload (``attach``)."""
        if match is None:
            if flow.proto == 6:
                e = self.tcp_ports.get(flow.resp_p) or self.tcp_orig_ports.get(flow.orig_p)
            else:
                e = self.udp_ports.get(flow.resp_p)
            if e is None:
                if flow.proto == 6:
                    flow.analyzer = PENDING  # to be probed
            else:
                flow.app = e[1]
                if e[2]:
                    flow.analyzer = PENDING
            return
        st = AppState(self, flow)
        flow.ctx = st
        if match[0] is _PAIRED:
            ctrl: Flow = match[1]
            pst: AppState | None = ctrl.ctx
            self.stats["expected_flows"] += 1
            if pst is None:
                return
            st.control = (ctrl.orig_h, ctrl.resp_h)
            st.plugin = pl = pst.plugin
            if not ctrl.end_reason:
                st.parent = pst
                pst.children += 1
            if pl is not None:
                self._install(flow, st, pl.paired(st))
            self._child_started(st)
            return
        if match[0] is _PROBED:
            st.nonstandard = True
            self._bind_probed(flow, st, match[1], match[2].seq, match[2].ack)
            self.ports.ref(flow.resp_p, +1)
            return
        exp, parent = match
        self.stats["expected_flows"] += 1
        if parent is not None:
            st.control = (parent.orig_h, parent.resp_h)
        if parent is not None and parent.ctx is not None and not parent.end_reason:
            st.parent = parent.ctx
            parent.ctx.children += 1
        elif parent is not None:
            st.fields["ParentUid"] = parent.uid
        flow.app = exp.analyzer
        self.ports.ref(flow.orig_p, +1)
        self.ports.ref(flow.resp_p, +1)
        pl = self.by_expect.get(exp.analyzer)
        if pl is not None:
            st.plugin = pl
            self._install(flow, st, pl.expected(st, exp, parent))
        self._child_started(st)

    def _child_started(self, st: AppState) -> None:
        if st.parent is not None and st.parent.session is not None:
            st.parent.session.child_started(st)

    def attach(self, flow: Flow) -> AppState:
        """The first payload of a flow the port tables named (or that waits
        for a probe): its session, anchoring reassembly on the SYNs the flow
        table saw."""
        flow.analyzer = None
        st = AppState(self, flow)
        flow.ctx = st
        kind = flow.app
        if not kind:
            if flow.proto == 6 and self.probes:
                st.tap = PROBING
            return st
        pl = self.by_app.get(kind)
        if pl is None:
            return st
        st.plugin = pl
        midstream = flow.proto == 6 and "S" not in flow.history and "h" not in flow.history
        self._install(flow, st, pl.attach(st, kind, midstream))
        if st.analyzer is not None:
            self.stats["analyzed_flows"] += 1
        if st.streams is not None:
            if "S" in flow.history and flow.o.seen_seq:
                st.streams[0].start(flow.o.base)
            if "h" in flow.history and flow.r.seen_seq:
                st.streams[1].start(flow.r.base)
        return st

    def _install(self, flow: Flow, st: AppState, session: Session | None) -> None:
        st.session = session
        if session is None or session.analyzer is None:
            return
        st.analyzer = session.analyzer
        if flow.proto == 6 and session.depth:
            limits = self._limits.get(session.depth)
            if limits is None:
                limits = self._limits[session.depth] = ReassemblyLimits(depth=session.depth, retain=self.retain)
            st.streams = (Stream(limits), Stream(limits))

    def _bind_probed(self, flow: Flow, st: AppState, pl: Plugin, seq: int, ack: int) -> None:
        """A plugin's probe recognised the server's payload at ``seq`` (acknowledging the client's ``ack``)."""
        st.plugin = pl
        self._install(flow, st, pl.probed(st))
        if st.streams is not None:
            # the payload is the server's first byte, and it acknowledges the client's next one
            st.streams[1].start(seq)
            st.streams[0].start(ack)
        self.stats["analyzed_flows"] += 1

    # -- packets --------------------------------------------------------------------
    def packet(
        self,
        flow: Flow,
        from_orig: bool,
        ts: int,
        proto: int,
        flags: int,
        seq: int,
        ack: int,
        plen: int,
        payload: bytes,
    ) -> None:
        """A packet the flow table accounted: attach the flow's session at
        its first payload, then ``segment`` when there is work."""
        st: AppState | None = flow.ctx
        if st is None:
            if flow.analyzer is None or not (plen or proto == 17):
                return
            st = self.attach(flow)
        if (st.analyzer is not None and not st.stopped) or st.tap is not None:
            self.segment(flow, from_orig, ts, flags, seq, ack, plen, payload)

    def segment(
        self, flow: Flow, from_orig: bool, ts: int, flags: int, seq: int, ack: int, plen: int, payload: bytes
    ) -> None:
        """One packet's payload for the flow's tap and analyzer (reassembled for TCP)."""
        st: AppState | None = flow.ctx
        if st is None:
            return
        tap = st.tap
        if tap is not None and payload:
            if tap is PROBING:
                if not from_orig:
                    st.tap = None  # the server's first data decides
                    for pl in self.probes:
                        if pl.probe_tc(payload):
                            self._bind_probed(flow, st, pl, seq, ack)
                            break
            elif not tap.on_payload(from_orig, payload):
                st.tap = None
        a = st.analyzer
        if a is None or st.stopped:
            return
        if flow.proto != 6:
            evs = a.receive_ts(payload, ts) if from_orig else a.receive_tc(payload, ts)
            if evs:
                self.events(flow, evs)
            return
        streams = st.streams
        if streams is None:
            return
        s = streams[0] if from_orig else streams[1]
        if flags & SYN:
            s.start(seq + 1)
            return
        if not plen:
            return
        if len(payload) == plen:
            data = s.in_order(seq, payload)
            if data is not None:
                evs = a.receive_ts(data, ts) if from_orig else a.receive_tc(data, ts)
                if evs:
                    self.events(flow, evs)
                return
        conflicts = s.conflicts
        chunks = s.segment(seq, payload)
        if len(payload) < plen:  # cut by the snaplen: the rest is missing
            chunks += s.skip_to(seq + plen)
        if s.conflicts != conflicts:
            self._conflict(flow, st, from_orig, ts, s)
        for c in chunks:
            if c.gap:
                self.stats["gaps"] += 1
                if c.gap > 0:  # content that never arrived (Zeek's g)
                    flow.add_history("G" if from_orig else "g")
                self.events(flow, a.gap(from_orig, max(c.gap, 0), ts))
            elif c.data:
                self.events(flow, a.receive_ts(c.data, ts) if from_orig else a.receive_tc(c.data, ts))
            if st.stopped:
                break

    def _conflict(self, flow: Flow, st: AppState, from_orig: bool, ts: int, s: Stream) -> None:
        """A segment's bytes differed from the copy already taken (an insertion
        or an evasion attempt, or a broken stack): reported, and the record
        carries the count (``ConflictingOverlaps``): its parsed fields may be contested."""
        self.stats["overlap_conflicts"] += 1
        streams = st.streams
        n = streams[0].conflicts + streams[1].conflicts if streams is not None else s.conflicts
        st.set_field("ConflictingOverlaps", n)
        side = "originator" if from_orig else "responder"
        self.weird(ts, "tcp_overlap_conflict", f"from the {side}: {s.conflict_detail}", flow.uid, "reassembly")

    def events(self, flow: Flow, events: list[Event]) -> None:
        """The analyzer's events, in order: weirds and expectations here, the rest to the session."""
        st: AppState = flow.ctx
        session = st.session
        on_event = session.on_event if session is not None else None
        for ev in events:
            t = type(ev)
            if t is Weird:
                assert isinstance(ev, Weird)
                self.weird(ev.ts, ev.name, ev.detail, flow.uid, ev.analyzer or flow.app)
            elif t is ExpectConnection:
                assert isinstance(ev, ExpectConnection)
                self.expect.add(ev, flow)
            elif on_event is not None:
                on_event(ev)

    # -- host pairs ------------------------------------------------------------------------
    def follow_hosts(self, flow: Flow) -> None:
        """New TCP connections between ``flow``'s two hosts are its children while it lives."""
        if len(self.pairs) >= MAX_HOST_PAIRS:
            key = f"{flow.app}_sessions_not_followed"
            self.stats[key] = self.stats.get(key, 0) + 1
            return
        for pair in ((flow.orig_b, flow.resp_b), (flow.resp_b, flow.orig_b)):
            self.ports.hosts.add(pair)
        self.pairs[(flow.orig_b, flow.resp_b)] = flow
        if len(self.pairs) > self.pairs_peak:
            self.pairs_peak = len(self.pairs)

    def _unfollow(self, flow: Flow) -> None:
        key = (flow.orig_b, flow.resp_b)
        if self.pairs.get(key) is flow:
            del self.pairs[key]
            if not any(k in self.pairs for k in (key, (flow.resp_b, flow.orig_b))):
                self.ports.hosts.discard(key)
                self.ports.hosts.discard((flow.resp_b, flow.orig_b))

    # -- ends ------------------------------------------------------------------------------
    def flow_ending(self, flow: Flow) -> bool:
        """Flush reassembly and the analyzer, then the session, before the
        record is built. True: the record must wait for the flow's children
        (``child_ended`` returns the flow when the last one ended)."""
        st: AppState | None = flow.ctx
        if st is None:
            return False
        self._unfollow(flow)
        a = st.analyzer
        if a is not None and not st.stopped:
            ts = flow.last_ts
            if st.streams is not None:
                for fwd, s in ((True, st.streams[0]), (False, st.streams[1])):
                    conflicts = s.conflicts
                    chunks = s.flush()
                    if s.conflicts != conflicts:
                        self._conflict(flow, st, fwd, ts, s)
                    for c in chunks:
                        if c.gap > 0:
                            flow.add_history("G" if fwd else "g")
                        if c.gap:
                            self.events(flow, a.gap(fwd, max(c.gap, 0), ts))
                        elif c.data:
                            self.events(flow, a.receive_ts(c.data, ts) if fwd else a.receive_tc(c.data, ts))
            self.events(flow, a.close(ts))
        st.analyzer = None
        st.streams = None
        if st.session is not None:
            st.session.flow_ending()
        if st.children > 0:
            st.held = True
            return True
        return False

    def child_ended(self, child: Flow) -> Flow | None:
        """A flow ended (after ``flow_ending``): add its bytes to its parent,
        release its ports. Returns the parent when its held record can now
        be emitted."""
        st: AppState | None = child.ctx
        if st is not None and st.nonstandard:
            self.ports.ref(child.resp_p, -1)
        if st is None or st.parent is None:
            return None
        self.ports.ref(child.orig_p, -1)
        self.ports.ref(child.resp_p, -1)
        pst = st.parent
        parent = pst.flow
        # child bytes seen from the parent's originator (the client)
        client = parent.orig_h
        c_side, s_side = (child.o, child.r) if child.orig_h == client else (child.r, child.o)
        pst.child_sent += c_side.bytes
        pst.child_recv += s_side.bytes
        if s_side.pkts:
            pst.child_answered = True
        if pst.session is not None:
            pst.session.child_ended(st)
        pst.children -= 1
        if pst.children <= 0 and pst.held:
            pst.held = False
            return parent
        return None

    @staticmethod
    def release(flow: Flow) -> None:
        """``flow``'s record is written and no child waits on it: drop its
        application state. The flow and its state, the state and its session
        refer to each other; left to the cyclic garbage collector (its
        thresholds are raised, sensor/core/runtime.py) an ended flow's whole
        state stayed in memory until a full collection -- ~3 KB per TFTP
        request under a flood."""
        st: AppState | None = flow.ctx
        if st is not None:
            flow.ctx = None
            st.session = None
            st.tap = None
            st.analyzer = None
            st.streams = None

    @staticmethod
    def parent_of(flow: Flow) -> Flow | None:
        """The live parent ``flow`` was linked to when it started, if any."""
        st: AppState | None = flow.ctx
        return st.parent.flow if st is not None and st.parent is not None else None

    # -- transfers ----------------------------------------------------------------------------
    def transfer(self, owner: AppState, rec: dict[str, Any]) -> None:
        self.stats["transfers"] += 1
        name = rec.get("Filename", "")
        if name and len(owner.files) < MAX_SUMMARY_FILES:  # a listing without a path names nothing
            if isinstance(owner.files, list):
                owner.files.append(name)
            else:
                owner.files = [name]
        if self.emit_transfer is not None:
            self.emit_transfer(owner.flow, rec, "transfers")
        else:
            self.emit("transfers", rec)

    def file_event(self, owner: AppState, rec: dict[str, Any]) -> None:
        """A file event that moved no data (an SMB file opened, neither read nor written)."""
        self.stats["file_events"] = self.stats.get("file_events", 0) + 1
        if self.emit_transfer is not None:
            self.emit_transfer(owner.flow, rec, "files")
        else:
            self.emit("files", rec)

    def expire(self, now: int) -> None:
        self.expect.expire(now)
