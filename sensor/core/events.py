"""Events: small frozen value classes (sensor/core/frozen.py) named for what happened.

Analyzers (sans-IO) turn bytes and packet time into these; the pipeline routes
them to the expectation table, the transfer log, the weird log and the
connection records. ``event_type`` is derived from the class name
(``FtpRequest`` -> ``ftp_request``) so every record names its own kind.
"""

from __future__ import annotations

import re
from typing import ClassVar

from sensor.core.frozen import frozen

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@frozen
class Event:
    """Base of all events. ``ts`` is packet time in integer microseconds."""

    ts: int

    event_type: ClassVar[str] = "event"

    def __init_subclass__(cls, **kw: object) -> None:
        # not zero-arg super(): @frozen rebuilds the class, and __class__ would name the old one
        super(Event, cls).__init_subclass__(**kw)  # noqa: UP008
        cls.event_type = _CAMEL.sub("_", cls.__name__).lower()


@frozen
class Weird(Event):
    """A peer did something malformed or unexpected (Zeek's weird.log).

    ``name`` is a stable identifier rules and tests can key on, e.g.
    ``ftp_line_too_long``; ``detail`` is free text (already bounded)."""

    name: str
    detail: str = ""
    analyzer: str = ""


@frozen(uncompared=("context",))
class ExpectConnection(Event):
    """An analyzer announces a connection that will belong to this one.

    FTP PORT/EPRT/PASV/EPSV and TFTP requests produce these. ``orig_h``/
    ``orig_p`` may be None (any). ``resp_p`` None means any port (TFTP: the
    server answers from a new port). ``proto`` is "tcp" or "udp".
    ``analyzer`` names what should parse the new flow (``ftp-data``,
    ``tftp-transfer``); ``context`` is opaque data handed to it."""

    proto: str
    orig_h: str | None
    orig_p: int | None
    resp_h: str
    resp_p: int | None
    analyzer: str
    expires_us: int
    context: object = None


class NeedData:
    """Marker returned by a parser's ``next_event()`` mid-message (h11 style).
    Its one instance is ``NEED_DATA``; the class is for annotations."""

    _instance: ClassVar[NeedData | None] = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()
