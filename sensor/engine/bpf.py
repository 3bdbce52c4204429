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


def build_filter(ports: Iterable[int], vlan: bool = True, share: str | None = None) -> str | None:
    """``share``: an expression every packet must also match, tested on the
    (inner) IP header of each alternative (``share_expr``: one worker's host pairs)."""
    ps = sorted(set(ports))
    if not ps or len(ps) > MAX_FILTER_PORTS:
        if share is None:
            return None
        return f"{share} or (vlan and {share}) or (vlan and {share})" if vlan else share
    p = port_expr(ps)
    ext6 = "(ip6 and not ip6 proto 6 and not ip6 proto 17)"
    lo = EPHEMERAL_MIN - 1
    eph4 = f"(tcp[0:2] > {lo} and tcp[2:2] > {lo}) or (udp[0:2] > {lo} and udp[2:2] > {lo})"
    eph6 = f"((ip6 proto 6 or ip6 proto 17) and ip6[40:2] > {lo} and ip6[42:2] > {lo})"
    # an FTP banner ("220 " / "220-") on any port: FTP on a non-standard port
    pay = "tcp[((tcp[12:1] & 0xf0) >> 2):4]"
    banner = f"({pay} = 0x32323020 or {pay} = 0x3232302d)"
    inner = f"({p}) or {ext6} or {eph4} or {eph6} or {banner}"
    if share is not None:
        inner = f"{share} and ({inner})"
    if not vlan:
        return inner
    return f"{inner} or (vlan and ({inner})) or (vlan and ({inner}))"


def capture_filters(ports: Iterable[int], share: str | None = None) -> list[str | None]:
    """Filters to try, best first: with VLAN alternatives, without (``vlan``
    does not compile on every link type), none. With ``share`` there is no
    "none": a worker that cannot filter its share must not take every packet."""
    ports = list(ports)
    if share is not None:
        return [build_filter(ports, share=share), build_filter(ports, vlan=False, share=share), share]
    return [build_filter(ports), build_filter(ports, vlan=False), None]


# -- shares: live capture split over worker processes by host pair (sensor/workers.py) ---------------
# A symmetric function of the two addresses (a sum: both directions of a host pair
# give the same value) modulo the number of workers, written in libpcap's filter
# language (32-bit unsigned arithmetic, as BPF's) and in Python (share_of), which
# the tests hold to the compiled filter. Only the addresses count: every flow
# between two hosts (an FTP control channel and its data channels, a TFTP request
# and its transfer, every fragment) stays with one worker.
_V4_SUM = "ip[12:4] + ip[16:4]"
_V6_SUM = " + ".join(f"ip6[{o}:4]" for o in range(8, 40, 4))


def share_expr(k: int, n: int) -> str:
    """Worker ``k`` of ``n``'s share of host pairs: IPv4 and IPv6 packets only
    (a frame of no IP version carries nothing the sensor tracks: no worker takes it)."""
    if not 0 <= k < n:
        raise ValueError(f"share {k} of {n}")
    return f"((ip and ({_V4_SUM}) % {n} = {k}) or (ip6 and ({_V6_SUM}) % {n} = {k}))"


def share_of(a: bytes, b: bytes, n: int) -> int:
    """The share (``share_expr``) of the host pair of packed addresses ``a`` and ``b``."""
    s = sum(int.from_bytes(x[i : i + 4], "big") for x in (a, b) for i in range(0, len(x), 4))
    return (s & 0xFFFFFFFF) % n
