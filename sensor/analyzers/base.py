"""Analyzer interface and protocol-plugin interface (sans-IO).

Two levels, both protocol-independent:

- an **Analyzer** parses one connection: in-order payload bytes per
  direction and packet time in, events out (``receive_ts`` / ``receive_tc``,
  ``gap``, ``close``);
- a **Plugin** is one protocol's part of the application layer: the ports
  and expectations it answers to, its probe, and per flow a **Session** that
  owns the protocol's state, turns its analyzer's events into record fields
  and transfer records, and keeps track of its children (FTP data channels,
  TFTP transfers).

The dispatcher (``sensor.engine.dispatch``) drives both. A plugin sees a
flow only through :class:`FlowContext` (what it may call back) and
:class:`FlowView` (what it may read); it imports nothing above
``sensor.core``. The registry of plugins is ``sensor.analyzers.PLUGIN_PACKAGES``;
adding a protocol is described in docs/architecture.md ("Adding a protocol").

Contract every analyzer keeps:
- ``receive_ts`` / ``receive_tc`` never raise on any input: malformed input
  becomes a :class:`sensor.core.events.Weird` event (named, counted, logged).
- Every buffer and queue has a named bound (see each module's ``*Limits``).
- ``gap`` is called when bytes are missing in one direction (capture loss,
  mid-stream pickup); the analyzer resynchronises (``probe``) or gives up
  parsing, but keeps the connection's accounting.
- For datagram protocols (TFTP) each ``receive_*`` call is one datagram.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sensor.core.events import Event, ExpectConnection, Weird


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """The connection an analyzer instance belongs to (originator = client)."""

    uid: str
    proto: str  # "tcp" | "udp"
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int


class Analyzer:
    """Base class. Subclasses set ``name`` and implement the receive methods
    (and may declare ``__slots__``: a TFTP request flood keeps one per flow)."""

    __slots__ = ("conn",)
    name: str = "base"

    def __init__(self, conn: ConnInfo) -> None:
        self.conn = conn

    # data, one call per in-order chunk (TCP) or datagram (UDP)
    def receive_ts(self, data: bytes, ts: int) -> list[Event]:  # to server
        raise NotImplementedError

    def receive_tc(self, data: bytes, ts: int) -> list[Event]:  # to client
        raise NotImplementedError

    def gap(self, to_server: bool, nbytes: int, ts: int) -> list[Event]:
        """``nbytes`` bytes are missing in that direction."""
        return []

    def close(self, ts: int) -> list[Event]:
        """The connection ended (FIN/RST/timeout): flush pending state."""
        return []


# -- what a plugin sees of a flow -----------------------------------------------------------


class SideView(Protocol):
    """One direction of a flow, as its sender."""

    @property
    def bytes(self) -> int: ...  # payload bytes (TCP: sequence space, retransmissions once)

    @property
    def pkts(self) -> int: ...


class FlowView(Protocol):
    """A flow, read-only (``sensor.engine.flows.Flow`` is one). Originator
    ``orig_*`` is the client of the connection (the SYN sender)."""

    @property
    def uid(self) -> str: ...

    @property
    def proto(self) -> int: ...  # 6 TCP, 17 UDP

    @property
    def orig_h(self) -> str: ...

    @property
    def orig_p(self) -> int: ...

    @property
    def resp_h(self) -> str: ...

    @property
    def resp_p(self) -> int: ...

    @property
    def app(self) -> str: ...  # the record's AppProtocol

    @property
    def o(self) -> SideView: ...  # the originator's side

    @property
    def r(self) -> SideView: ...  # the responder's side


class FlowContext(Protocol):
    """The application layer's per-flow state, as a plugin's session sees it:
    what it may read and what it may call back. The dispatcher's ``AppState``
    implements it."""

    @property
    def flow(self) -> FlowView: ...

    @property
    def parent(self) -> FlowContext | None: ...  # the live parent flow's context (a data channel's control session)

    @property
    def session(self) -> Session | None: ...

    @property
    def user(self) -> str: ...  # the record's AppUser

    @property
    def fields(self) -> dict[str, Any]: ...  # the record's AdditionalFields (live; insertion order is output order)

    @property
    def children(self) -> int: ...  # live child flows

    @property
    def child_answered(self) -> bool: ...  # a child flow heard from the parent's server

    def conn(self) -> ConnInfo: ...  # the flow as an analyzer's ConnInfo

    def set_user(self, user: str) -> None: ...

    def set_field(self, name: str, value: Any) -> None: ...

    def set_app(self, app: str) -> None: ...  # the flow's AppProtocol from now on

    def transfer(self, rec: dict[str, Any]) -> None: ...  # emit a transfer record owned by this flow

    def file_event(self, rec: dict[str, Any]) -> None: ...  # emit a file event (no data moved) owned by this flow

    def expect(self, ev: ExpectConnection) -> None: ...  # a connection that will be this flow's child

    def weird(self, ev: Weird) -> None: ...

    def stop(self) -> None: ...  # feed the analyzer nothing more (TLS from here on)

    def start_tap(self, plugin: str) -> None: ...  # let plugin ``plugin``'s tap read this flow's raw payloads

    def follow_hosts(self) -> None: ...  # new TCP connections between these two hosts, on no

    # service port, while this flow lives, become its children (FTPS hides PORT/PASV)


# -- a plugin ----------------------------------------------------------------------------------


class Tap:
    """Reads the raw payload of every packet of a flow, in packet order
    (retransmissions included), before reassembly: the TLS ClientHello of
    an FTPS connection. Bounded by its own limits."""

    def on_payload(self, from_orig: bool, payload: bytes) -> bool:
        """``payload`` is not empty. False: remove the tap (done or gave up)."""
        return False


class Session:
    """A plugin's state for one flow. The dispatcher calls the hooks; the
    session answers through its :class:`FlowContext` (``self.ctx``).
    Subclasses may declare ``__slots__`` (one session lives per flow)."""

    __slots__ = ("ctx",)

    # the analyzer the dispatcher feeds, and its TCP reassembly depth per
    # direction (bytes; 0: datagrams, no reassembly)
    analyzer: Analyzer | None = None
    depth: int = 0

    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx

    def on_event(self, ev: Event) -> None:
        """One event of the analyzer, in order (``Weird`` and
        ``ExpectConnection`` are the dispatcher's, never passed here)."""

    def flow_ending(self) -> None:
        """The flow ends: its analyzer was flushed and closed; the record
        is built next."""

    def child_started(self, child: FlowContext) -> None:
        """A child of this flow started (it fulfilled one of its expectations)."""

    def child_ended(self, child: FlowContext) -> None:
        """A child ended; its bytes are already in this flow's totals."""

    # a datagram from the client that starts a new connection on this flow's
    # 5-tuple (a TFTP client's port reused): ``restarts(payload) -> bool``,
    # asked for every client datagram, so None when the protocol has no such case
    restarts: Any = None


class Plugin:
    """One protocol's declarations and session factories. Subclasses set the
    class attributes and override the factories they need."""

    name: str = ""
    # responder port -> AppProtocol name; ``tcp_orig_ports``: originator port
    # -> name, for flows no responder port names (active FTP data from port 20)
    tcp_ports: Mapping[int, str] = {}
    udp_ports: Mapping[int, str] = {}
    tcp_orig_ports: Mapping[int, str] = {}
    # names of connections that belong to another one (data channels): their
    # ports are no service port, so a followed host pair may use them
    data_apps: frozenset[str] = frozenset()
    # names a port gives but that get no state (only an expectation says what
    # such a flow carries)
    name_only: frozenset[str] = frozenset()
    # ExpectConnection.analyzer values whose flows this plugin takes
    expects: tuple[str, ...] = ()

    def probe_tc(self, payload: bytes) -> bool:
        """A server's first payload on a port no plugin names: is it ours?"""
        return False

    def attach(self, ctx: FlowContext, app: str, midstream: bool) -> Session | None:
        """A flow on one of our ports, at its first payload (``app``: the
        port's name; ``midstream``: its handshake was not seen)."""
        return None

    def probed(self, ctx: FlowContext) -> Session:
        """A flow ``probe_tc`` recognised (the server's bytes are next)."""
        raise NotImplementedError

    def expected(self, ctx: FlowContext, exp: ExpectConnection, parent: FlowView | None) -> Session | None:
        """A flow that fulfils one of our expectations; ``parent`` the flow
        that announced it (``ctx.parent`` is its context while it lives)."""
        return None

    def paired(self, ctx: FlowContext) -> Session | None:
        """A connection between the hosts of a flow that called ``follow_hosts``."""
        return None

    def tap(self, ctx: FlowContext) -> Tap | None:
        """A tap another plugin asked for by our name (``ctx.start_tap``)."""
        return None
