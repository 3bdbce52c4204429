"""Capture filters (BPF) that keep everything the sensor needs.

Tracked ports (untagged, 802.1Q, QinQ; IPv4, IPv6 behind extension headers),
every packet between two ephemeral ports (data channels and TFTP transfers,
so the filter never waits for their ports) and an FTP banner on any port.
Why this shape: docs/engine.md.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_FILTER_PORTS = 2000  # beyond this the filter is not worth compiling: decode in Python
EPHEMERAL_MIN = 1024


def port_expr(ports: Iterable[int]) -> str:
    return " or ".join(f"port {p}" for p in sorted(set(ports)))


def build_filter(ports: Iterable[int], vlan: bool = True) -> str | None:
    ps = sorted(set(ports))
    if not ps or len(ps) > MAX_FILTER_PORTS:
        return None
    p = port_expr(ps)
    ext6 = "(ip6 and not ip6 proto 6 and not ip6 proto 17)"
    lo = EPHEMERAL_MIN - 1
    eph4 = f"(tcp[0:2] > {lo} and tcp[2:2] > {lo}) or (udp[0:2] > {lo} and udp[2:2] > {lo})"
    eph6 = f"((ip6 proto 6 or ip6 proto 17) and ip6[40:2] > {lo} and ip6[42:2] > {lo})"
    # an FTP banner ("220 " / "220-") on any port: FTP on a non-standard port
    pay = "tcp[((tcp[12:1] & 0xf0) >> 2):4]"
    banner = f"({pay} = 0x32323020 or {pay} = 0x3232302d)"
    inner = f"({p}) or {ext6} or {eph4} or {eph6} or {banner}"
    if not vlan:
        return inner
    return f"{inner} or (vlan and ({inner})) or (vlan and ({inner}))"


def capture_filters(ports: Iterable[int]) -> list[str | None]:
    """Filters to try, best first: with VLAN alternatives, without (``vlan``
    does not compile on every link type), none."""
    ports = list(ports)
    return [build_filter(ports), build_filter(ports, vlan=False), None]
