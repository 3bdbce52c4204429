"""Live capture through the same libpcap binding as replay (``pcapy-ng``).

One non-blocking, promiscuous handle per interface with the replay's capture
filter; ``poll()`` dispatches what is ready to the pipeline's handler, drop
counters come from ``pcap_stats``. Design: docs/engine.md, "Capture".
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pcapy

from sensor.io.capture import CaptureError, set_filter

Handler = Callable[[int, bytes], None]

log = logging.getLogger("xfer-sensor.capture")

DEFAULT_BUFFER_BYTES = 64 << 20  # kernel ring for bursts
DEFAULT_SNAPLEN = 262_144
DEFAULT_TIMEOUT_MS = 100  # libpcap read timeout (batching)
DISPATCH_BUDGET = 10_000  # packets taken from one handle per poll round

# pcap_activate()'s results (pcap/pcap.h): pcapy returns them rather than raising
ACTIVATE_ERRORS = {
    -1: "error",  # PCAP_ERROR (the text is in pcap_geterr, which pcapy does not expose)
    -4: "handle already activated",
    -5: "no such device",
    -6: "monitor mode not supported",
    -7: "interface not in monitor mode",
    -8: "permission denied (needs CAP_NET_RAW)",
    -9: "interface is not up",
    -10: "cannot set the time stamp type",
    -11: "permission denied for promiscuous mode",
    -12: "time stamp precision not supported",
    -13: "capture not supported on this device",
}
ACTIVATE_WARNINGS = {
    1: "warning",  # PCAP_WARNING
    2: "promiscuous mode not supported",
    3: "time stamp type not supported",
}


def activate_result(rc: int) -> str:
    """What a non-zero result of ``pcap_activate()`` means."""
    text = (ACTIVATE_ERRORS if rc < 0 else ACTIVATE_WARNINGS).get(rc)
    return f"{text} (libpcap {rc})" if text else f"libpcap {'error' if rc < 0 else 'warning'} {rc}"


@dataclass(slots=True)
class IfaceStats:
    interface: str
    received: int = 0  # delivered to us
    kernel_received: int = 0
    kernel_dropped: int = 0
    interface_dropped: int = 0


class LiveCapture:
    def __init__(
        self,
        interfaces: Sequence[str],
        *,
        promisc: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        if not interfaces:
            raise CaptureError("no interface to capture on")
        self.handles: list[tuple[str, Any, int]] = []  # (interface, pcapy reader, link type)
        self.stats = {i: IfaceStats(i) for i in interfaces}
        for iface in interfaces:
            try:
                h = pcapy.create(iface)
                h.set_snaplen(snaplen)
                h.set_promisc(1 if promisc else 0)
                h.set_timeout(timeout_ms)
                h.set_buffer_size(buffer_bytes)
                rc = h.activate()
                if rc >= 0:
                    h.setnonblock(1)
            except pcapy.PcapError as e:
                self.close()
                raise CaptureError(f"{iface}: cannot capture: {e}") from None
            if rc < 0:  # left unchecked, the first read fails later with a misleading error
                h.close()
                self.close()
                raise CaptureError(f"{iface}: cannot capture: {activate_result(rc)}")
            if rc > 0:
                log.warning("%s: capturing despite: %s", iface, activate_result(rc))
            self.handles.append((iface, h, h.datalink()))
        self.filters: dict[str, str | None] = {}

    def install_filters(self, filters: Sequence[str | None]) -> None:
        for iface, h, _ in self.handles:
            self.filters[iface] = set_filter(h, filters)

    def poll(self, handler_for: Callable[[int], Handler], timeout_s: float, wake: Sequence[int] = ()) -> int:
        """Wait up to ``timeout_s`` for packets and hand them over; returns how many.
        ``wake``: other descriptors that end the wait when readable (a worker's channel)."""
        fds = {h.getfd(): (iface, h, lt) for iface, h, lt in self.handles}
        try:
            ready, _, _ = select.select([*fds, *wake], [], [], timeout_s)
        except InterruptedError:  # a signal: let the caller look at its flags
            return 0
        n = 0
        for fd in ready:
            if fd not in fds:
                continue
            iface, h, lt = fds[fd]
            handle = handler_for(lt)

            def cb(hdr, data: bytes, handle=handle) -> None:
                s, us = hdr.getts()
                handle(s * 1_000_000 + us, data)

            got = h.dispatch(DISPATCH_BUDGET, cb)
            if got > 0:
                n += got
                self.stats[iface].received += got
        return n

    def read_stats(self) -> dict[str, IfaceStats]:
        for iface, h, _ in self.handles:
            try:
                recv, drop, ifdrop = h.stats()
            except pcapy.PcapError:
                continue
            st = self.stats[iface]
            st.kernel_received, st.kernel_dropped, st.interface_dropped = recv, drop, ifdrop
        return self.stats

    def close(self) -> None:
        for _, h, _ in self.handles:
            try:
                h.close()
            except Exception:  # pragma: no cover - closing never matters for correctness
                pass
        self.handles = []
