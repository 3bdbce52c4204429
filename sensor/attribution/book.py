"""Endpoint mode: the host's own identity, and the attributions the pipeline
writes into its records.

``AttributionBook`` is sans-IO: the daemon hands the helper's lookups in
(``add``), the pipeline takes one out when it writes a connection's record
(``take``). Keys are the records' 5-tuples; bounded (``max_entries``, oldest
first). Children inherit their parent's process (``Pipeline._attribution``).
Design: docs/endpoint.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections import OrderedDict
from typing import Any

from sensor.core.config import Config

BOOK_MAX_ENTRIES = 65536  # attributions waiting for their connection's record
BOOK_MAX_PER_KEY = 8  # results kept for one 5-tuple (a reused client port)
# a result belongs to the connection whose first packet is this close in time
# (µs): the helper reports the packet's kernel timestamp, the capture's own
# (equal; else the tap's wall clock, a few ms later); a reused port's next
# client comes >= TAP_SEEN_UDP_S (20 ms) and in practice >> 100 ms later
BOOK_MATCH_US = 100_000
SOURCES = ("socket", "uid-only", "linked-control-connection", "recording", "none")  # recording: replay only

# the process columns a record carries in endpoint mode, after the replay
# record's own (Defender's names; AttributionSource is ours)


class AttributionBook:
    """Attribution results waiting for the records of their connections.

    A key can hold more than one result: a client port that comes round again
    (two short-lived clients, one 5-tuple, within the old flow's timeout) gives
    two lookups for one key, and the old connection's record is written only
    when the new one's first packet ends it -- by then the new lookup is
    usually in.  Each result therefore carries its first packet's time and
    ``take(key, first_ts)`` hands a record the result of *its* first packet
    (the nearest in time); without times, the newest."""

    __slots__ = ("_entries", "_missed", "_n", "max_entries", "stats")

    def __init__(self, max_entries: int = BOOK_MAX_ENTRIES) -> None:
        # key -> [(first packet time in µs or None, attribution)], oldest first
        self._entries: OrderedDict[tuple, list[tuple[int | None, Any]]] = OrderedDict()
        self._missed: OrderedDict[tuple, None] = OrderedDict()  # records written without one
        self._n = 0
        self.max_entries = max(1, max_entries)
        # late: results that came after their connection's record was written
        self.stats = {"added": 0, "taken": 0, "evicted": 0, "late": 0}

    def add(self, key: tuple, attribution: Any, ts: int | None = None) -> None:
        """A lookup's result; ``ts``: its first packet's time (µs, the
        capture's clock), which tells results of a reused key apart."""
        if self._missed.pop(key, 1) is None:
            self.stats["late"] += 1
            return
        e = self._entries
        lst = e.get(key)
        if lst is None:
            lst = e[key] = []
        e.move_to_end(key)
        lst.append((ts, attribution))
        self._n += 1
        self.stats["added"] += 1
        if len(lst) > BOOK_MAX_PER_KEY:
            lst.pop(0)
            self._n -= 1
            self.stats["evicted"] += 1
        while self._n > self.max_entries:
            old_key, old = next(iter(e.items()))
            old.pop(0)
            self._n -= 1
            self.stats["evicted"] += 1
            if not old:
                del e[old_key]

    def take(self, key: tuple, first_ts: int | None = None) -> Any | None:
        """The result for the connection ``key`` whose first packet was at
        ``first_ts`` (µs): the nearest in time within ``BOOK_MATCH_US``, never
        one of another connection on the same key; the newest without times."""
        lst = self._entries.get(key)
        if not lst:
            return None
        i = len(lst) - 1
        if first_ts is not None:
            timed = [(abs(t - first_ts), j) for j, (t, _a) in enumerate(lst) if t is not None]
            near = [x for x in timed if x[0] <= BOOK_MATCH_US]
            if near:
                i = min(near)[1]
            else:
                # only results of other connections on this key (an earlier
                # client's, while this one's lookup is still on its way): none
                untimed = [j for j, (t, _a) in enumerate(lst) if t is None]
                if not untimed:
                    return None
                i = untimed[-1]
        _t, a = lst.pop(i)
        self._n -= 1
        if not lst:
            del self._entries[key]
        self.stats["taken"] += 1
        return a

    def missed(self, key: tuple) -> None:
        """A record was written without an attribution for ``key``: a result
        for it that comes later is only counted (``late``)."""
        m = self._missed
        m[key] = None
        if len(m) > self.max_entries:
            m.popitem(last=False)

    def __len__(self) -> int:
        return self._n


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
