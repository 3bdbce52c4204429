"""The set of ports the decoder and the capture filter admit.

Tracked ports are permanent; expected connections and the flows they became
(FTP data channels, TFTP transfers on ephemeral ports) add their ports while
they live. ``ports`` is the live set object the decoder consults (the
capture filter admits every ephemeral-to-ephemeral packet, see sensor/bpf.py,
so it never needs to change with this set).
"""
from __future__ import annotations

from typing import Iterable


class PortSet:
    __slots__ = ("ports", "fixed", "refs")

    def __init__(self, fixed: Iterable[int]) -> None:
        self.fixed = frozenset(fixed)
        self.ports: set[int] = set(self.fixed)
        self.refs: dict[int, int] = {}

    def ref(self, port: int, delta: int) -> None:
        n = self.refs.get(port, 0) + delta
        if n > 0:
            self.refs[port] = n
            self.ports.add(port)
        else:
            self.refs.pop(port, None)
            if port not in self.fixed:
                self.ports.discard(port)
