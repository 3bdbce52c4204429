"""The set of ports the decoder and the capture filter admit.

Tracked ports are permanent; expected connections and the flows they became
(FTP data channels, TFTP transfers on ephemeral ports) add their ports while
they live. ``ports`` is the live set object the decoder consults;
``version`` changes whenever it does, so the capture can install a new filter.
"""
from __future__ import annotations

from typing import Iterable


class PortSet:
    __slots__ = ("ports", "fixed", "refs", "version")

    def __init__(self, fixed: Iterable[int]) -> None:
        self.fixed = frozenset(fixed)
        self.ports: set[int] = set(self.fixed)
        self.refs: dict[int, int] = {}
        self.version = 0

    def ref(self, port: int, delta: int) -> None:
        n = self.refs.get(port, 0) + delta
        if n > 0:
            self.refs[port] = n
            if port not in self.ports:
                self.ports.add(port)
                self.version += 1
        else:
            self.refs.pop(port, None)
            if port not in self.fixed and port in self.ports:
                self.ports.discard(port)
                self.version += 1
