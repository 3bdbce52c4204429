"""Analyzer interface (sans-IO).

One analyzer instance per analyzed connection. The pipeline hands it
reassembled, in-order payload bytes per direction with the packet time, and
collects the events it returns. Nothing here touches a socket, a file or a
clock: bytes and timestamps in, events out.

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

from dataclasses import dataclass

from sensor.core.events import Event


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
    """Base class. Subclasses set ``name`` and implement the receive methods."""

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
