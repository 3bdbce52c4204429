"""Address typing (Defender's LocalIPType/RemoteIPType) with the standard
library ``ipaddress``, plus configured CIDR overrides.

"Private" is RFC 1918 and fc00::/7 only; every other non-global range is
"Reserved", so a lab or VPN range must be named with ``ip_type_overrides``.
The types: docs/outputs.md (``LocalIPType``).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterable, Mapping

IP_TYPES = (
    "Public",
    "Private",
    "Reserved",
    "Loopback",
    "LinkLocal",
    "Multicast",
    "Broadcast",
    "Teredo",
    "FourToSixMapping",
)

_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_TEREDO = ipaddress.ip_network("2001::/32")
_BROADCAST = ipaddress.ip_address("255.255.255.255")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(ip: str) -> Address:
    """``ipaddress.ip_address`` of a textual address, parsed by the C
    library (inet_pton) rather than digit by digit in Python."""
    try:
        if ":" in ip:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, ip))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, ip))
    except OSError:
        return ipaddress.ip_address(ip)  # what inet_pton refuses: ipaddress's own error (or reading)


def _v4_bounds(nets: Iterable[Network]) -> list[int]:
    """Where the IPv4 addresses of ``nets`` start and stop, sorted: between
    two neighbours every address is in the same networks."""
    out: set[int] = set()
    for n in nets:
        if n.version == 4:
            out.add(int(n.network_address))
            out.add(int(n.broadcast_address) + 1)
    return sorted(out)


def _special_v4_networks() -> list[Network] | None:
    """Every IPv4 network ``builtin_type`` consults: ours and the ones the
    ``ipaddress`` properties it reads test against (is_loopback,
    is_multicast, is_link_local, is_global: its constants). None where these
    cannot be read (another Python's layout): no shortcut then."""
    nets: list[Network] = [n for n in _PRIVATE if n.version == 4]
    nets.append(ipaddress.ip_network(f"{_BROADCAST}/32"))
    consts = getattr(ipaddress.IPv4Address, "_constants", None)
    values = list(vars(consts).values()) if consts is not None else []
    found = [v for v in values if isinstance(v, ipaddress.IPv4Network)]
    for v in values:
        if isinstance(v, (list, tuple)):
            found += [n for n in v if isinstance(n, ipaddress.IPv4Network)]
    if len(found) < 5:  # not the layout this was written against
        return None
    return nets + found


# An IPv4 address's type depends only on which of these networks hold it, so
# it is the same between two neighbouring boundaries: IpTyper works it out
# once per stretch (the long way is slow, and with many distinct peers most
# lookups missed a per-address cache). tests/test_iptype_fast.py
# checks the two ways agree, on both sides of every boundary.
_SPECIAL_V4 = _special_v4_networks()


def _v4_int(ip: str) -> int | None:
    """A dotted-quad IPv4 address as an integer; None for anything else."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except OSError:
        return None


def builtin_type(addr: Address) -> str:
    """The type of ``addr`` without overrides."""
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return "FourToSixMapping"
        if addr in _TEREDO:
            return "Teredo"
    if addr.is_loopback:
        return "Loopback"
    if addr == _BROADCAST:
        return "Broadcast"
    if addr.is_multicast:
        return "Multicast"
    if addr.is_link_local:
        return "LinkLocal"
    for net in _PRIVATE:
        if addr.version == net.version and addr in net:
            return "Private"
    if addr.is_global:
        return "Public"
    return "Reserved"


class IpTyper:
    """Classifies addresses; overrides win, the most specific prefix first.

    Results are cached per address (bounded), so the per-record cost is a
    dict lookup."""

    __slots__ = ("_overrides", "_cache", "_cache_max", "_bounds", "_stretch")

    def __init__(self, overrides: Mapping[Network, str] | None = None, cache_max: int = 65536) -> None:
        items = sorted((overrides or {}).items(), key=lambda kv: kv[0].prefixlen, reverse=True)
        self._overrides: tuple[tuple[Network, str], ...] = tuple(items)
        self._cache: dict[str, str] = {}
        self._cache_max = cache_max
        # IPv4: the boundaries of the special networks and the overrides, and
        # the type of each stretch between two of them once one was looked up
        self._bounds = _v4_bounds(_SPECIAL_V4 + [n for n, _ in items]) if _SPECIAL_V4 is not None else None
        self._stretch: dict[int, str] = {}

    def type_of(self, ip: str) -> str:
        t = self._cache.get(ip)
        if t is not None:
            return t
        bounds = self._bounds
        if bounds is not None and ":" not in ip and (x := _v4_int(ip)) is not None:
            i = bisect.bisect_right(bounds, x)
            t = self._stretch.get(i)
            if t is None:
                t = self._stretch[i] = self._long_way(ip)
        else:
            t = self._long_way(ip)
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[ip] = t
        return t

    def _long_way(self, ip: str) -> str:
        addr = parse_address(ip)
        t = None
        for net, typ in self._overrides:
            if addr.version == net.version and addr in net:
                t = typ
                break
        if t is None:
            t = builtin_type(addr)
        return t


class NetSet:
    """A set of networks with a cached membership test (home_net)."""

    __slots__ = ("_nets", "_cache", "_v4")

    def __init__(self, nets: Iterable[Network]) -> None:
        self._nets = tuple(nets)
        self._cache: dict[str, bool] = {}
        # the IPv4 networks as (address, mask) integers: a test is an AND
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self._nets if n.version == 4)

    def __contains__(self, ip: str) -> bool:
        r = self._cache.get(ip)
        if r is None:
            x = _v4_int(ip) if ":" not in ip else None
            if x is not None:
                r = any(x & m == a for a, m in self._v4)
            else:
                addr = parse_address(ip)
                r = any(addr.version == n.version and addr in n for n in self._nets)
            if len(self._cache) >= 65536:
                self._cache.clear()
            self._cache[ip] = r
        return r

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._nets
