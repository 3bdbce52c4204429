"""The set of ports the decoder and the capture filter admit.

Tracked ports are permanent; expected connections and the flows they became
add their ports while they live. ``version`` changes only when a port below
1024 joins or leaves, the one case the capture filter must change for.
Design: docs/engine.md.
"""

from __future__ import annotations

from collections.abc import Iterable

# admitted by the decoder and the capture filter although not tracked: a flow
# there is only followed when it is expected (implicit FTPS active data, 989)
ALWAYS_ADMITTED = frozenset({989})


class PortSet:
    __slots__ = ("ports", "fixed", "refs", "hosts", "version")

    def __init__(self, fixed: Iterable[int]) -> None:
        self.fixed = frozenset(fixed) | ALWAYS_ADMITTED
        self.ports: set[int] = set(self.fixed)
        self.refs: dict[int, int] = {}
        # (src, dst) packed address pairs whose traffic on any port is admitted
        self.hosts: set[tuple[bytes, bytes]] = set()
        # bumped when a port below 1024 joins or leaves: the capture filter
        # admits ephemeral ports anyway, but a low port (FTP on port 443, say)
        # must be added to it -- a rare event, so recompiling is affordable
        self.version = 0

    @property
    def filter_ports(self) -> set[int]:
        return {p for p in self.ports if p < 1024} | set(self.fixed)

    def ref(self, port: int, delta: int) -> None:
        n = self.refs.get(port, 0) + delta
        if n > 0:
            self.refs[port] = n
            if port not in self.ports:
                self.ports.add(port)
                if port < 1024:
                    self.version += 1
        else:
            self.refs.pop(port, None)
            if port not in self.fixed and port in self.ports:
                self.ports.discard(port)
                if port < 1024:
                    self.version += 1
