"""Expected connections (Zeek's ``ftp_data_expected``, sans-IO).

Analyzers announce connections that will belong to theirs (FTP data
channels, TFTP transfers) with ``ExpectConnection``; a new flow consumes the
oldest live expectation it fits. Expire on packet time; bounded
(``max_expectations``, oldest dropped, counted). Design: docs/engine.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from sensor.core.counters import Counters
from sensor.core.events import ExpectConnection
from sensor.engine.flows import Flow

MAX_EXPECTATIONS = 10_000


class ExpectStats(Counters):
    __slots__ = ("added", "matched", "expired", "dropped", "peak")

    added: int
    matched: int
    expired: int
    dropped: int
    peak: int


# (proto, responder address, responder port or None: any)
ExpectKey = tuple[str, str, int | None]


class Expectations:
    def __init__(
        self, max_expectations: int = MAX_EXPECTATIONS, on_port: Callable[[int, int], None] | None = None
    ) -> None:
        self.max = max_expectations
        # key -> list of (expectation, parent flow); insertion order = time order.
        # A list, not a deque: most keys hold one expectation (a TFTP request's
        # client port), and an empty deque alone is ~600 bytes
        self.by_key: OrderedDict[ExpectKey, list[tuple[ExpectConnection, Flow]]] = OrderedDict()
        self.count = 0
        # responder ports (None: any) of the live TCP expectations -> how many:
        # whether a bare SYN could be one (``could_take_syn``) without a lookup by address
        self.tcp_ports: dict[int | None, int] = {}
        self.stats = ExpectStats()
        # told (port, +1/-1) as expectations for a responder port come and go,
        # so the capture filter can admit them
        self.on_port = on_port or (lambda port, delta: None)

    def _key(self, proto: str, resp_h: str, resp_p: int | None) -> ExpectKey:
        return (proto, resp_h, resp_p)

    def _ref(self, port: int | None, d: int) -> None:
        if port is not None:
            self.on_port(port, d)

    def _tcp_ref(self, e: ExpectConnection, d: int) -> None:
        if e.proto == "tcp":
            n = self.tcp_ports.get(e.resp_p, 0) + d
            if n:
                self.tcp_ports[e.resp_p] = n
            else:
                del self.tcp_ports[e.resp_p]

    def could_take(self, resp_p: int) -> bool:
        """A new TCP connection to ``resp_p`` might fulfil a live expectation."""
        tp = self.tcp_ports
        return bool(tp) and (resp_p in tp or None in tp)

    def add(self, e: ExpectConnection, parent: Flow) -> None:
        while self.count >= self.max > 0:  # room first: the table never holds more than max
            self._drop_oldest()
        k = self._key(e.proto, e.resp_h, e.resp_p)
        q = self.by_key.get(k)
        if q is None:
            q = self.by_key[k] = []
        q.append((e, parent))
        self.count += 1
        self.stats.added += 1
        if self.count > self.stats.peak:
            self.stats.peak = self.count
        self._ref(e.resp_p, +1)
        self._tcp_ref(e, +1)
        while self.count > self.max:  # max 0: nothing is kept
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        k, q = next(iter(self.by_key.items()))
        e, _ = q.pop(0)
        self.count -= 1
        self.stats.dropped += 1
        self._ref(e.resp_p, -1)
        self._tcp_ref(e, -1)
        if not q:
            del self.by_key[k]

    def expire(self, now: int) -> None:
        dead = []
        for k, q in self.by_key.items():
            while q and q[0][0].expires_us < now:
                e, _ = q.pop(0)
                self.count -= 1
                self.stats.expired += 1
                self._ref(e.resp_p, -1)
                self._tcp_ref(e, -1)
            if not q:
                dead.append(k)
        for k in dead:
            del self.by_key[k]

    def match(
        self, proto: str, orig_h: str, orig_p: int, resp_h: str, resp_p: int, now: int
    ) -> tuple[ExpectConnection, Flow] | None:
        """Consume the oldest live expectation the new flow fits, if any."""
        k: ExpectKey
        for k in ((proto, resp_h, resp_p), (proto, resp_h, None)):
            q = self.by_key.get(k)
            if not q:
                continue
            for i, (e, parent) in enumerate(q):
                if e.expires_us < now:
                    continue
                if e.orig_h is not None and e.orig_h != orig_h:
                    continue
                if e.orig_p is not None and e.orig_p != orig_p:
                    continue
                del q[i]
                if not q:
                    del self.by_key[k]
                self.count -= 1
                self.stats.matched += 1
                self._ref(e.resp_p, -1)
                self._tcp_ref(e, -1)
                return e, parent
        return None
