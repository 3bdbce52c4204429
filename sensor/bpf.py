"""Capture filters (BPF) that keep everything the sensor needs.

The filter runs inside libpcap (in the kernel for live capture), so packets
on no tracked port never reach Python. It must not hide what the sensor
tracks: tracked ports over IPv4 and IPv6, untagged, 802.1Q and QinQ
(libpcap's ``vlan`` keyword shifts the offsets for the rest of the
expression, so the tagged alternatives come last, the second ``vlan`` being
the inner tag), and IPv6 packets whose transport header sits behind
extension headers (BPF's ``port`` only looks right after the fixed header,
so those pass and the decoder walks the chain). Expected connections (FTP
data channels, TFTP transfers) add their ports while running; the pipeline
then installs a new filter (``Pipeline.filter_version``).
"""
from __future__ import annotations

from typing import Iterable

MAX_FILTER_PORTS = 2000  # beyond this the filter is not worth compiling: decode in Python


def port_expr(ports: Iterable[int]) -> str:
    return " or ".join(f"port {p}" for p in sorted(set(ports)))


def build_filter(ports: Iterable[int], vlan: bool = True) -> str | None:
    ps = sorted(set(ports))
    if not ps or len(ps) > MAX_FILTER_PORTS:
        return None
    p = port_expr(ps)
    ext6 = "(ip6 and not ip6 proto 6 and not ip6 proto 17)"
    inner = f"({p}) or {ext6}"
    if not vlan:
        return inner
    return f"{inner} or (vlan and ({inner})) or (vlan and ({inner}))"
