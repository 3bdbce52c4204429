"""Address typing (Defender's LocalIPType/RemoteIPType) with the standard
library ``ipaddress``, plus configured CIDR overrides.

Types: Public, Private, Reserved, Loopback, LinkLocal, Multicast, Broadcast,
Teredo, FourToSixMapping. "Private" is RFC 1918 and IPv6 unique-local
(fc00::/7) only; every other non-global range (CGNAT 100.64/10, the
documentation and benchmarking ranges, 0/8, 240/4, ...) is "Reserved", so a
lab or VPN range must be named explicitly with ``ip_type_overrides``.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable, Mapping

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

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
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
        return ipaddress.ip_address(ip)   # what inet_pton refuses: ipaddress's own error (or reading)


def _first_octets(nets: Iterable[Network]) -> frozenset[str]:
    """The first octets, as text, of the IPv4 addresses in ``nets``."""
    out: set[str] = set()
    for n in nets:
        if n.version == 4:
            lo, hi = int(n.network_address) >> 24, int(n.broadcast_address) >> 24
            out.update(str(o) for o in range(lo, hi + 1))
    return frozenset(out)


def _special_v4_networks() -> list[Network]:
    """Every IPv4 network ``builtin_type`` consults: ours and the ones the
    ``ipaddress`` properties it reads test against (is_loopback,
    is_multicast, is_link_local, is_global: its constants). Where these
    cannot be read (another Python), every network: no fast path."""
    nets: list[Network] = [n for n in _PRIVATE if n.version == 4]
    nets.append(ipaddress.ip_network(f"{_BROADCAST}/32"))
    consts = getattr(ipaddress.IPv4Address, "_constants", None)
    values = list(vars(consts).values()) if consts is not None else []
    found = [v for v in values if isinstance(v, ipaddress.IPv4Network)]
    for v in values:
        if isinstance(v, (list, tuple)):
            found += [n for n in v if isinstance(n, ipaddress.IPv4Network)]
    if len(found) < 5:    # not the layout this was written against
        return [ipaddress.ip_network("0.0.0.0/0")]
    return nets + found


# IPv4 addresses whose first octet is outside every special network are
# "Public" without further work (the common case for remote peers; a cache
# miss costs ~12 us the long way). tests/test_iptype_fast.py checks the two
# ways agree, every network boundary included.
_SPECIAL_V4_OCTETS = _first_octets(_special_v4_networks())


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

    __slots__ = ("_overrides", "_cache", "_cache_max", "_special")

    def __init__(self, overrides: Mapping[Network, str] | None = None, cache_max: int = 65536) -> None:
        items = sorted((overrides or {}).items(), key=lambda kv: kv[0].prefixlen, reverse=True)
        self._overrides: tuple[tuple[Network, str], ...] = tuple(items)
        self._cache: dict[str, str] = {}
        self._cache_max = cache_max
        # first octets (text) that need the full test: a special network's or an override's
        self._special = _SPECIAL_V4_OCTETS | _first_octets(n for n, _ in items)

    def type_of(self, ip: str) -> str:
        t = self._cache.get(ip)
        if t is not None:
            return t
        if ip.partition(".")[0] not in self._special and ":" not in ip:
            return "Public"
        addr = parse_address(ip)
        t = None
        for net, typ in self._overrides:
            if addr.version == net.version and addr in net:
                t = typ
                break
        if t is None:
            t = builtin_type(addr)
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[ip] = t
        return t


class NetSet:
    """A set of networks with a cached membership test (home_net)."""

    __slots__ = ("_nets", "_cache", "_octets")

    def __init__(self, nets: Iterable[Network]) -> None:
        self._nets = tuple(nets)
        self._cache: dict[str, bool] = {}
        self._octets = _first_octets(self._nets)   # of the IPv4 networks: others are outside

    def __contains__(self, ip: str) -> bool:
        r = self._cache.get(ip)
        if r is None:
            if ":" not in ip and ip.partition(".")[0] not in self._octets:
                return False
            addr = parse_address(ip)
            r = any(addr.version == n.version and addr in n for n in self._nets)
            if len(self._cache) >= 65536:
                self._cache.clear()
            self._cache[ip] = r
        return r

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._nets
