"""Endpoint mode: the host's own identity, and the attributions the pipeline
writes into its records.

``AttributionBook`` is sans-IO: whoever looks processes up (the
``AttributionHelper`` beside the capture, see sensor/attribution.py) hands
its results in with ``add(key, attribution)``; the pipeline takes them out
when it writes a connection's record (``take(key)``), long after the lookup
(a TCP record is written ``tcp_closed`` seconds of packet time after the
connection closed; at SIGTERM the daemon collects the helper's last results
before it flushes).  Keys are ``(proto, local_ip, local_port, remote_ip,
remote_port)`` as the records see them.  Bounded: the oldest entries go
first beyond ``max_entries``.

Children inherit: an FTP data connection takes its control connection's
process, a TFTP transfer its request's, with ``AttributionSource``
"linked-control-connection" (the pipeline does that, see
``Pipeline._attribution``).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections import OrderedDict
from typing import Any

from .config import Config

BOOK_MAX_ENTRIES = 65536     # attributions waiting for their connection's record
SOURCES = ("socket", "uid-only", "linked-control-connection", "none")

# the process columns a record carries in endpoint mode, after the replay
# record's own (Defender's names; AttributionSource is ours)
ENDPOINT_FIELDS = ("InitiatingProcessCommandLine", "InitiatingProcessFolderPath",
                   "InitiatingProcessParentFileName", "InitiatingProcessParentId",
                   "InitiatingProcessCreationTime", "AttributionSource")


class AttributionBook:
    """Attribution results waiting for the records of their connections."""

    __slots__ = ("_entries", "_missed", "max_entries", "stats")

    def __init__(self, max_entries: int = BOOK_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._missed: OrderedDict[tuple, None] = OrderedDict()   # records written without one
        self.max_entries = max(1, max_entries)
        # late: results that came after their connection's record was written
        self.stats = {"added": 0, "taken": 0, "evicted": 0, "late": 0}

    def add(self, key: tuple, attribution: Any) -> None:
        """A lookup's result; a newer one for the same key (a reused port)
        replaces the older."""
        if self._missed.pop(key, 1) is None:
            self.stats["late"] += 1
            return
        e = self._entries
        e[key] = attribution
        e.move_to_end(key)
        self.stats["added"] += 1
        if len(e) > self.max_entries:
            e.popitem(last=False)
            self.stats["evicted"] += 1

    def take(self, key: tuple) -> Any | None:
        a = self._entries.pop(key, None)
        if a is not None:
            self.stats["taken"] += 1
        return a

    def missed(self, key: tuple) -> None:
        """A record was written without an attribution for ``key``: a result
        for it that comes later is only counted (``late``)."""
        m = self._missed
        m[key] = None
        if len(m) > self.max_entries:
            m.popitem(last=False)

    def peek(self, key: tuple) -> Any | None:
        return self._entries.get(key)

    def __len__(self) -> int:
        return len(self._entries)


def host_networks() -> tuple:
    """This host's own addresses (every interface, this network namespace)
    as /32 and /128 networks: ``home_net`` in endpoint mode."""
    import psutil
    nets = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(a.address.split("%", 1)[0])
            except ValueError:
                continue
            nets.append(ipaddress.ip_network(ip))
    return tuple(sorted(set(nets), key=lambda n: (n.version, n)))


def endpoint_config(cfg: Config, hostname: str | None = None, networks: tuple | None = None) -> Config:
    """The config as endpoint mode uses it: DeviceName is the host name and
    ``home_net`` the host's own addresses, unless the file sets them."""
    changes: dict[str, Any] = {}
    if not cfg.device_name:
        changes["device_name"] = hostname or socket.gethostname()
    if not cfg.home_net_given:
        nets = host_networks() if networks is None else networks
        if nets:
            changes["home_net"] = tuple(nets)
    return dataclasses.replace(cfg, **changes) if changes else cfg
