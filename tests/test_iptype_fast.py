"""The IPv4 shortcuts of ``IpTyper`` (one long-way lookup per stretch
between network boundaries) and ``NetSet`` (integer masks) give what the
long way (``ipaddress``) gives: on random addresses, and on both sides of
every network boundary that could matter."""

from __future__ import annotations

import ipaddress
import random

import pytest

from sensor.core.iptype import IpTyper, NetSet, _special_v4_networks, builtin_type, parse_address


def long_way(ip: str, overrides: dict) -> str:
    addr = parse_address(ip)
    for net, typ in sorted(overrides.items(), key=lambda kv: kv[0].prefixlen, reverse=True):
        if addr.version == net.version and addr in net:
            return typ
    return builtin_type(addr)


def edges(nets) -> list[str]:
    out = []
    for n in nets:
        if n.version != 4:
            continue
        lo, hi = int(n.network_address), int(n.broadcast_address)
        for v in (lo - 1, lo, lo + 1, hi - 1, hi, hi + 1):
            if 0 <= v < 1 << 32:
                out.append(str(ipaddress.IPv4Address(v)))
    return out


OVERRIDES = [
    {},
    {ipaddress.ip_network("44.0.0.0/8"): "Private", ipaddress.ip_network("100.64.0.0/10"): "Private"},
    {ipaddress.ip_network("203.0.113.7/32"): "Public", ipaddress.ip_network("2001:db8::/32"): "Private"},
]


@pytest.mark.parametrize("overrides", OVERRIDES, ids=["none", "octet-wide", "host-and-v6"])
def test_type_of_agrees_with_the_long_way(overrides: dict, monkeypatch) -> None:
    rng = random.Random(7)
    ips = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(20000)]
    ips += edges(_special_v4_networks()) + edges(overrides)
    ips += ["::1", "fe80::1", "2001::1", "::ffff:10.0.0.1", "2a00:1450::1", "fd00::5", "ff02::1"]
    fast = IpTyper(overrides)
    calls = []
    real = IpTyper._long_way
    monkeypatch.setattr(IpTyper, "_long_way", lambda self, ip: calls.append(ip) or real(self, ip))
    wrong = [
        (ip, fast.type_of(ip), long_way(ip, overrides)) for ip in ips if fast.type_of(ip) != long_way(ip, overrides)
    ]
    assert wrong == []
    # and the long way ran once per stretch between boundaries, not per address
    # (else this tests nothing new)
    v4 = [ip for ip in ips if ":" not in ip]
    assert len(set(v4)) > 20000 and len([ip for ip in calls if ":" not in ip]) <= len(fast._bounds) + 1


@pytest.mark.parametrize(
    "nets", [["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"], ["0.0.0.0/0"], ["44.1.2.0/24", "fd00::/8"], []]
)
def test_netset_agrees_with_the_long_way(nets: list[str]) -> None:
    networks = [ipaddress.ip_network(n) for n in nets]
    home = NetSet(networks)
    rng = random.Random(11)
    ips = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(20000)] + edges(networks)
    ips += ["fd00::1", "2001:db8::1"]
    for ip in ips:
        addr = parse_address(ip)
        assert (ip in home) == any(addr.version == n.version and addr in n for n in networks), ip
