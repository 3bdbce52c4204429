"""Configuration: one YAML file, validated at load time.

Every bound is a named option with a default. A bad file is refused before
anything runs, naming the file and the field (``ConfigError``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from .iptype import IP_TYPES, Network

DEFAULT_PORTS = (20, 21, 69, 139, 445, 990)
DEFAULT_HOME_NET = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


class ConfigError(ValueError):
    """A configuration problem, with where it is."""

    def __init__(self, source: str, fieldname: str, message: str) -> None:
        self.source = source
        self.field = fieldname
        super().__init__(f"{source}: field '{fieldname}': {message}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Flow timeouts in seconds of packet time (Zeek/Suricata defaults)."""

    tcp_attempt: float = 60.0       # SYN seen, handshake not finished
    tcp_established: float = 3600.0  # idle established TCP (FTP/SMB sessions idle long)
    tcp_closed: float = 5.0          # after FIN both ways or RST (trailing ACKs)
    udp: float = 60.0                # idle UDP


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds; each is a named option."""

    max_flows: int = 100_000          # tracked flows; LRU eviction beyond
    flow_scan_budget: int = 1_000     # flows examined per idle-scan tick
    flow_scan_interval: float = 1.0   # seconds of packet time between scans
    max_seq_jump: int = 1 << 30       # a segment further ahead is a weird, not bytes
    max_window_keys: int = 100_000    # rule-window group keys; LRU eviction beyond
    max_window_events: int = 10_000   # events kept per key inside one window


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<defaults>"
    tracked_ports: frozenset[int] = frozenset(DEFAULT_PORTS)
    home_net: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_HOME_NET)
    ip_type_overrides: Mapping[Network, str] = field(default_factory=dict)
    inventory: Mapping[str, str] = field(default_factory=dict)
    device_name: str | None = None
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()


_TOP_KEYS = {"tracked_ports", "home_net", "ip_type_overrides", "inventory", "device_name", "timeouts", "limits"}


def _net(src: str, fname: str, value: Any) -> Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as e:
        raise ConfigError(src, fname, f"not an address or CIDR: {value!r} ({e})") from None


def _section(src: str, name: str, raw: Any, cls: type) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(src, name, "must be a mapping")
    known = {f.name: f for f in fields(cls)}
    out = {}
    for k, v in raw.items():
        if k not in known:
            raise ConfigError(src, f"{name}.{k}", f"unknown option (known: {', '.join(sorted(known))})")
        default = known[k].default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(src, f"{name}.{k}", f"must be a positive number, got {v!r}")
        if isinstance(default, int) and not isinstance(v, int):
            raise ConfigError(src, f"{name}.{k}", f"must be a whole number, got {v!r}")
        out[k] = type(default)(v)
    return cls(**out)


def config_from_dict(raw: Any, source: str = "<dict>") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "<top>", "the file must hold a mapping of options")
    for k in raw:
        if k not in _TOP_KEYS:
            raise ConfigError(source, str(k), f"unknown option (known: {', '.join(sorted(_TOP_KEYS))})")
    kw: dict[str, Any] = {"source": source}
    if "tracked_ports" in raw:
        ports = raw["tracked_ports"]
        if not isinstance(ports, list) or not ports:
            raise ConfigError(source, "tracked_ports", "must be a non-empty list of ports")
        for p in ports:
            if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
                raise ConfigError(source, "tracked_ports", f"not a port number: {p!r}")
        kw["tracked_ports"] = frozenset(ports)
    if "home_net" in raw:
        hn = raw["home_net"]
        if isinstance(hn, str):
            hn = [hn]
        if not isinstance(hn, list):
            raise ConfigError(source, "home_net", "must be a list of CIDRs")
        kw["home_net"] = tuple(_net(source, "home_net", n) for n in hn)
    if "ip_type_overrides" in raw:
        ov = raw["ip_type_overrides"] or {}
        if not isinstance(ov, dict):
            raise ConfigError(source, "ip_type_overrides", "must map CIDR to type")
        out = {}
        for cidr, typ in ov.items():
            if typ not in IP_TYPES:
                raise ConfigError(source, f"ip_type_overrides.{cidr}", f"unknown type {typ!r} (one of {', '.join(IP_TYPES)})")
            out[_net(source, f"ip_type_overrides.{cidr}", cidr)] = typ
        kw["ip_type_overrides"] = out
    if "inventory" in raw:
        inv = raw["inventory"] or {}
        if not isinstance(inv, dict):
            raise ConfigError(source, "inventory", "must map IP address to device name")
        out_inv = {}
        for ip, name in inv.items():
            try:
                key = str(ipaddress.ip_address(str(ip)))
            except ValueError:
                raise ConfigError(source, f"inventory.{ip}", "not an IP address") from None
            if not isinstance(name, str) or not name:
                raise ConfigError(source, f"inventory.{ip}", "device name must be a non-empty string")
            out_inv[key] = name
        kw["inventory"] = out_inv
    if raw.get("device_name") is not None:
        if not isinstance(raw["device_name"], str):
            raise ConfigError(source, "device_name", "must be a string")
        kw["device_name"] = raw["device_name"]
    kw["timeouts"] = _section(source, "timeouts", raw.get("timeouts"), Timeouts)
    kw["limits"] = _section(source, "limits", raw.get("limits"), Limits)
    return Config(**kw)


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    p = Path(path)
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(src, "<file>", f"cannot read: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(src, "<yaml>", f"not valid YAML: {e}") from None
    return config_from_dict(raw, src)
