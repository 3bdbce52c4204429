"""Configuration: one YAML file, validated at load time.

Every bound is a named option with a default. A bad file is refused before
anything runs, naming the file and the field (``ConfigError``). Every key is
described in docs/usage.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sensor.core.iptype import IP_TYPES, Network

DEFAULT_PORTS = (20, 21, 69, 139, 445, 990)
DEFAULT_HOME_NET = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


MAX_FILE_BYTES = 4 << 20  # a config or rules file larger than this is refused unread
MAX_YAML_DEPTH = 32  # nesting of a YAML file's mappings and lists
MAX_YAML_NODES = 1_000_000  # values in one file, aliases counted each time they are used
MAX_SECONDS = 366 * 86400  # the longest timeout or interval an option may give (one year)
MAX_COUNT = 1 << 31  # the largest count a limit may give
MAX_MESSAGE_CHARS = 300  # of a value quoted in an error message


def one_line(message: str) -> str:
    """An error message as one line of bounded length: YAML errors span
    lines, and a file's values may be long."""
    text = " ".join(str(message).split())
    return text if len(text) <= 4 * MAX_MESSAGE_CHARS else text[: 4 * MAX_MESSAGE_CHARS] + "..."


def quote(v: Any) -> str:
    """``repr(v)`` cut to ``MAX_MESSAGE_CHARS`` (the value's depth is bounded
    by ``MAX_YAML_DEPTH``, so the repr cannot recurse too deep)."""
    text = repr(v)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


class ConfigError(ValueError):
    """A configuration problem, with where it is."""

    def __init__(self, source: str, fieldname: str, message: str) -> None:
        self.source = source
        self.field = fieldname
        super().__init__(one_line(f"{source}: field '{fieldname}': {message}"))


class YamlFileError(ValueError):
    """A file that is not a usable YAML file: ``field`` is ``<file>`` (cannot
    read, too large, not UTF-8) or ``<yaml>`` (syntax, nesting, size)."""

    def __init__(self, fieldname: str, message: str) -> None:
        self.field, self.message = fieldname, message
        super().__init__(message)


def _str_timestamps(cls: type) -> type:
    # dates stay strings: `2026-13-45` would raise ValueError inside the
    # loader; the field that wants a date checks it and names itself
    sub = type(cls.__name__ + "NoDates", (cls,), {})
    sub.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)  # type: ignore[attr-defined]
    return sub


_PY_LOADER = _str_timestamps(yaml.SafeLoader)
_C_LOADER = _str_timestamps(yaml.CSafeLoader) if hasattr(yaml, "CSafeLoader") else None


def _check_shape(docs: list[Any]) -> None:
    """Nesting depth and value count, aliases expanded: an alias bomb ("billion
    laughs") costs nothing to load but everything to walk. Iterative."""
    stack: list[tuple[Any, int]] = [(d, 1) for d in docs]
    nodes = 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_YAML_NODES:
            raise YamlFileError("<yaml>", f"more than {MAX_YAML_NODES} values (aliases expanded)")
        if isinstance(v, dict):
            items: list[Any] = [*v.keys(), *v.values()]
        elif isinstance(v, list):
            items = v
        else:
            continue
        if depth >= MAX_YAML_DEPTH and items:
            raise YamlFileError("<yaml>", f"nested deeper than {MAX_YAML_DEPTH} levels")
        stack.extend((x, depth + 1) for x in items)


def _yaml_reason(e: yaml.YAMLError) -> str:
    """PyYAML's message on one line: where, what, and in what."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return str(e)
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = e.problem or e.context or "error"
    ctx = ""
    if e.context and e.problem:
        cm = e.context_mark
        ctx = f" ({e.context}" + (f" at line {cm.line + 1}, column {cm.column + 1})" if cm is not None else ")")
    return f"{where}{what}{ctx}"


def yaml_documents(text: str) -> list[Any]:
    """The documents of ``text``, parsed by libyaml when PyYAML has it (faster
    at every start: bench/README.md). On an error the pure Python loader
    parses it again, so the message is always its own. Raises
    ``YamlFileError`` only."""
    if _C_LOADER is not None:
        try:
            docs = list(yaml.load_all(text, Loader=_C_LOADER))
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
            pass
        else:
            _check_shape(docs)
            return docs
    try:
        docs = list(yaml.load_all(text, Loader=_PY_LOADER))
    except RecursionError:
        raise YamlFileError("<yaml>", f"nested deeper than {MAX_YAML_DEPTH} levels") from None
    except yaml.YAMLError as e:
        raise YamlFileError("<yaml>", f"not valid YAML: {_yaml_reason(e)}") from None
    except (ValueError, TypeError, OverflowError) as e:  # a tagged value its constructor refuses (!!int x)
        raise YamlFileError("<yaml>", f"not valid YAML: {e}") from None
    _check_shape(docs)
    return docs


def read_yaml_file(path: str | Path) -> list[Any]:
    """The YAML documents of a file of at most ``MAX_FILE_BYTES`` of UTF-8.
    Raises ``YamlFileError`` only."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise YamlFileError("<file>", f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlFileError("<file>", f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlFileError("<file>", f"not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})") from None
    return yaml_documents(text)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Flow timeouts in seconds of packet time (Zeek/Suricata defaults)."""

    tcp_attempt: float = 60.0  # SYN seen, handshake not finished
    tcp_established: float = 3600.0  # idle established TCP (FTP/SMB sessions idle long)
    tcp_closed: float = 5.0  # after FIN both ways or RST (trailing ACKs)
    udp: float = 60.0  # idle UDP


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds; each is a named option."""

    max_flows: int = 100_000  # tracked flows; LRU eviction beyond
    flow_scan_budget: int = 1_000  # flows examined per idle-scan tick
    flow_scan_interval: float = 1.0  # seconds of packet time between scans
    max_seq_jump: int = 1 << 30  # a segment further ahead is a weird, not bytes (unless the peer ACKs it)
    max_checksum_senders: int = 4096  # checksum_validation auto: senders whose offload is decided
    overlap_check_bytes: int = 16384  # bytes delivered per TCP direction kept to compare overlaps with
    max_window_keys: int = 100_000  # rule-window group keys; LRU eviction beyond
    max_window_events: int = 10_000  # events kept per key inside one window
    max_match_chars: int = 4096  # characters of a field a rule's |re or wildcard pattern reads
    max_summary_keys: int = 100_000  # hunt keys the replay summary tabulates per correlation rule
    max_attempt_groups: int = 100_000  # attempt_records aggregate: groups of unanswered attempts held at once
    max_comment_chars: int = 1024  # characters of each text field of a recording's packet comment


@dataclass(frozen=True, slots=True)
class PcapRing:
    """The flight recorder's bounds (``run --pcap-dir``; docs/endpoint.md, "The flight recorder")."""

    max_bytes: int = 1 << 30  # every ring file together; the oldest go first
    max_files: int = 256  # ring files kept, the open one included
    file_bytes: int = 64 << 20  # a file is closed before it grows past this
    file_seconds: float = 3600.0  # ... or when it holds this much packet time
    hold_seconds: float = 1.0  # a packet waits this long (wall clock) for its connection's process
    hold_bytes: int = 16 << 20  # packets waiting at most (and queue_packets of them); beyond, the oldest go at once
    queue_packets: int = 50_000  # packets queued for the writer thread; more are not recorded (counted)
    queue_bytes: int = 32 << 20  # ... and bytes
    max_annotations: int = 65_536  # connections whose process the recorder remembers (oldest forgotten)


PROFILES = ("mde", "ecs")
ATTEMPT_RECORDS = ("aggregate", "each")
RECORD_KINDS = ("connections", "alerts", "transfers", "weird", "files")
SYSLOG_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}


@dataclass(frozen=True, slots=True)
class SyslogOutput:
    """RFC 5424 syslog to one collector: UDP, TCP with RFC 6587 octet counting, or
    TLS (RFC 5425: octet counting over TLS, the collector's certificate verified)."""

    host: str = "127.0.0.1"
    port: int = 514  # 6514 when protocol is tls and no port is given
    protocol: str = "udp"  # udp | tcp | tls
    facility: int = 16  # local0; names or numbers 0..23 in YAML
    app_name: str = "xfer-sensor"
    hostname: str | None = None  # default: this machine's name
    kinds: tuple[str, ...] = RECORD_KINDS  # which record kinds are sent
    timeout: float = 5.0  # seconds a send/connect may block the writer thread
    retry_interval: float = 1.0  # seconds between reconnect attempts after an error
    # tls only: the CA file (PEM) the collector's certificate must chain to (None: the system's CAs),
    # the name it must carry (None: host), and an optional client certificate and its key (PEM)
    ca: str | None = None
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """Where records go and in which shape (see docs/outputs.md)."""

    profile: str = "mde"  # mde | ecs
    max_line_bytes: int = 16384  # a longer record is shrunk and flagged as truncated
    queue_max: int = 10000  # records buffered per sink before overflow
    error_log_interval: float = 60.0  # seconds between two error logs of one sink
    files: bool = True  # OUT/<kind>.jsonl when an output folder is given
    stdout: bool = False  # records as NDJSON on stdout
    syslog: SyslogOutput | None = None


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
    hostnames: Mapping[str, str] = field(default_factory=dict)  # IP -> name (RemoteUrl)
    output: Output = Output()
    home_net_given: bool = False  # the file set home_net (endpoint mode keeps it then)
    metrics_listen: tuple[str, int] | None = None  # (loopback address, port) of /metrics; None: off
    status_interval: float = 300.0  # seconds between two status lines in the journal
    state_dir: str | None = None  # the daemon's state folder (rule windows); None: /var/lib/xfer-sensor
    state_flush_interval: float = 2.0  # wall-clock seconds between two writes of the window state
    checksum_validation: str = "auto"  # auto | yes | no (docs/engine.md, "Checksums")
    # aggregate | each: unanswered attempts evicted from a flow table in emergency
    # mode, one record per group or one each (docs/engine.md, "Flood of unanswered attempts")
    attempt_records: str = "aggregate"
    # auto: senders besides home_net and loopback whose partial (offloaded) checksums are accepted
    checksum_offload_nets: tuple[Network, ...] = ()
    # allow filters (Sigma filter files or folders) applied beside --rules; relative paths
    # are the config file's folder's (docs/detection.md, "False-positive controls")
    filters: tuple[str, ...] = ()
    pcap_dir: str | None = None  # the flight recorder's folder (run --pcap-dir); None: off
    pcap_ring: PcapRing = PcapRing()
    workers: int | str = 1  # live capture processes (run --workers): a number or "auto" (docs/daemon.md)


_TOP_KEYS = {
    "tracked_ports",
    "home_net",
    "ip_type_overrides",
    "inventory",
    "device_name",
    "timeouts",
    "limits",
    "hostnames",
    "output",
    "metrics_listen",
    "status_interval",
    "checksum_validation",
    "checksum_offload_nets",
    "attempt_records",
    "state_dir",
    "state_flush_interval",
    "filters",
    "pcap_dir",
    "pcap_ring",
    "workers",
}
_OUTPUT_KEYS = {"profile", "max_line_bytes", "queue_max", "error_log_interval", "files", "stdout", "syslog"}
_SYSLOG_KEYS = {
    "host",
    "port",
    "protocol",
    "facility",
    "app_name",
    "hostname",
    "kinds",
    "timeout",
    "retry_interval",
    "ca",
    "server_name",
    "cert",
    "key",
}
SYSLOG_PROTOCOLS = ("udp", "tcp", "tls")
SYSLOG_TLS_PORT = 6514  # RFC 5425
MIN_LINE_BYTES = 1024  # max_line_bytes below this could not hold a record's identity


def _ip_map(src: str, name: str, raw: Any, what: str) -> dict[str, str]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(src, name, f"must map IP address to {what}")
    out = {}
    for ip, value in raw.items():
        try:
            key = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            raise ConfigError(src, f"{name}.{ip}", "not an IP address") from None
        if not isinstance(value, str) or not value:
            raise ConfigError(src, f"{name}.{ip}", f"{what} must be a non-empty string")
        out[key] = value
    return out


def _number(src: str, name: str, v: Any, whole: bool, lo: float, hi: float | None = None) -> Any:
    """A number in [lo, hi] (hi: ``MAX_COUNT`` for whole numbers, ``MAX_SECONDS``
    for others); NaN and infinities are refused."""
    if hi is None:
        hi = MAX_COUNT if whole else MAX_SECONDS
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (whole and not isinstance(v, int))
        or (isinstance(v, float) and not math.isfinite(v))
        or not lo <= v <= hi
    ):
        span = f"a whole number from {int(lo)} to {int(hi)}" if whole else f"a number from {lo:g} to {int(hi)}"
        raise ConfigError(src, name, f"must be {span}, got {quote(v)}")
    return v


def _syslog(src: str, raw: Any) -> SyslogOutput:
    name = "output.syslog"
    if not isinstance(raw, dict):
        raise ConfigError(src, name, "must be a mapping (host, port, protocol, ...)")
    for k in raw:
        if k not in _SYSLOG_KEYS:
            raise ConfigError(src, f"{name}.{k}", f"unknown option (known: {', '.join(sorted(_SYSLOG_KEYS))})")
    kw: dict[str, Any] = {}
    if "host" in raw:
        if not isinstance(raw["host"], str) or not raw["host"]:
            raise ConfigError(src, f"{name}.host", "must be a host name or address")
        kw["host"] = raw["host"]
    if "port" in raw:
        p = raw["port"]
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise ConfigError(src, f"{name}.port", f"not a port number: {p!r}")
        kw["port"] = p
    if "protocol" in raw:
        if raw["protocol"] not in SYSLOG_PROTOCOLS:
            raise ConfigError(src, f"{name}.protocol", f"udp, tcp or tls, got {raw['protocol']!r}")
        kw["protocol"] = raw["protocol"]
        if raw["protocol"] == "tls" and "port" not in raw:
            kw["port"] = SYSLOG_TLS_PORT
    for k in ("ca", "server_name", "cert", "key"):
        if raw.get(k) is not None:
            v = raw[k]
            if not isinstance(v, str) or not v or len(v) > 4096 or "\0" in v:
                raise ConfigError(src, f"{name}.{k}", "must be a file name" if k != "server_name" else "a host name")
            kw[k] = v
    if "facility" in raw:
        f = raw["facility"]
        if isinstance(f, str) and f in SYSLOG_FACILITIES:
            f = SYSLOG_FACILITIES[f]
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= 23:
            raise ConfigError(
                src,
                f"{name}.facility",
                f"a number 0..23 or one of {', '.join(SYSLOG_FACILITIES)}, got {raw['facility']!r}",
            )
        kw["facility"] = f
    for k, limit in (("app_name", 48), ("hostname", 255)):
        if raw.get(k) is not None:
            v = raw[k]
            if not isinstance(v, str) or not v or len(v) > limit or not all(33 <= ord(c) <= 126 for c in v):
                raise ConfigError(
                    src, f"{name}.{k}", f"1..{limit} printable ASCII characters without spaces (RFC 5424)"
                )
            kw[k] = v
    if "kinds" in raw:
        kinds = raw["kinds"]
        if not isinstance(kinds, list) or not kinds or any(k not in RECORD_KINDS for k in kinds):
            raise ConfigError(src, f"{name}.kinds", f"a non-empty list of {', '.join(RECORD_KINDS)}")
        kw["kinds"] = tuple(kinds)
    for k in ("timeout", "retry_interval"):
        if k in raw:
            kw[k] = float(_number(src, f"{name}.{k}", raw[k], False, 0.001))
    return check_syslog(src, SyslogOutput(**kw))


def check_syslog(src: str, s: SyslogOutput) -> SyslogOutput:
    """The TLS options only with ``protocol: tls``, and a key only with a certificate."""
    name = "output.syslog"
    if s.protocol != "tls":
        for k in ("ca", "server_name", "cert", "key"):
            if getattr(s, k) is not None:
                raise ConfigError(src, f"{name}.{k}", f"only with protocol tls (the protocol is {s.protocol})")
    if s.key is not None and s.cert is None:
        raise ConfigError(src, f"{name}.key", "a client key needs its certificate (cert)")
    return s


def output_from_dict(src: str, raw: Any) -> Output:
    if raw is None:
        return Output()
    if not isinstance(raw, dict):
        raise ConfigError(src, "output", "must be a mapping")
    for k in raw:
        if k not in _OUTPUT_KEYS:
            raise ConfigError(src, f"output.{k}", f"unknown option (known: {', '.join(sorted(_OUTPUT_KEYS))})")
    kw: dict[str, Any] = {}
    if "profile" in raw:
        if raw["profile"] not in PROFILES:
            raise ConfigError(src, "output.profile", f"one of {', '.join(PROFILES)}, got {raw['profile']!r}")
        kw["profile"] = raw["profile"]
    if "max_line_bytes" in raw:
        kw["max_line_bytes"] = _number(src, "output.max_line_bytes", raw["max_line_bytes"], True, MIN_LINE_BYTES)
    if "queue_max" in raw:
        kw["queue_max"] = _number(src, "output.queue_max", raw["queue_max"], True, 1)
    if "error_log_interval" in raw:
        kw["error_log_interval"] = float(_number(src, "output.error_log_interval", raw["error_log_interval"], False, 0))
    for k in ("files", "stdout"):
        if k in raw:
            if not isinstance(raw[k], bool):
                raise ConfigError(src, f"output.{k}", "must be true or false")
            kw[k] = raw[k]
    if raw.get("syslog") is not None:
        kw["syslog"] = _syslog(src, raw["syslog"])
    return Output(**kw)


WORKERS_MAX = 64  # live capture processes a deployment may ask for (each runs every packet through its filter)


def parse_workers(src: str, name: str, value: Any) -> int | str:
    """``auto`` or a whole number from 1 to ``WORKERS_MAX`` (the config's
    ``workers``, ``run --workers``)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= WORKERS_MAX:
        raise ConfigError(src, name, f"must be auto or a whole number from 1 to {WORKERS_MAX}, got {quote(value)}")
    return value


def parse_listen(src: str, fname: str, value: Any) -> tuple[str, int] | None:
    """``"127.0.0.1:9617"``, ``"[::1]:9617"``, ``"localhost:9617"`` -> (address, port);
    ``"off"``/None -> None. Only loopback addresses: the endpoint has no
    authentication, so it is never exposed beyond the host."""
    if value is None or value is False or value == "off":
        return None
    if not isinstance(value, str):
        raise ConfigError(src, fname, f"must be 'ADDRESS:PORT' on loopback or 'off', got {value!r}")
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(
            src, fname, f"must be 'ADDRESS:PORT' on loopback (e.g. 127.0.0.1:9617) or 'off', got {value!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            src, fname, f"the address must be a loopback IP literal (127.0.0.0/8 or ::1), got {host!r}"
        ) from None
    if not addr.is_loopback:
        raise ConfigError(
            src,
            fname,
            f"refusing to serve metrics on non-loopback address {host} "
            f"(only 127.0.0.0/8 or ::1: the endpoint has no authentication)",
        )
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigError(src, fname, f"not a port number: {port_s!r}")
    return str(addr), int(port_s)


def _net(src: str, fname: str, value: Any) -> Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as e:
        raise ConfigError(src, fname, f"not an address or CIDR: {value!r} ({e})") from None


# upper bounds of section options other than MAX_COUNT / MAX_SECONDS
_SECTION_MAX: dict[str, float] = {
    "limits.max_seq_jump": 1 << 31,  # half the sequence space
    "limits.flow_scan_interval": 86400,
    "pcap_ring.max_bytes": 1 << 50,
    "pcap_ring.file_bytes": 1 << 40,
}


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
        default: Any = known[k].default
        whole = isinstance(default, int)
        hi = _SECTION_MAX.get(f"{name}.{k}", MAX_COUNT if whole else MAX_SECONDS)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v <= 0:
            raise ConfigError(src, f"{name}.{k}", f"must be a positive number, got {quote(v)}")
        if whole and not isinstance(v, int):
            raise ConfigError(src, f"{name}.{k}", f"must be a whole number, got {quote(v)}")
        out[k] = type(default)(_number(src, f"{name}.{k}", v, whole, 1 if whole else 0, hi))
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
        kw["home_net_given"] = True
    if "ip_type_overrides" in raw:
        ov = raw["ip_type_overrides"] or {}
        if not isinstance(ov, dict):
            raise ConfigError(source, "ip_type_overrides", "must map CIDR to type")
        out = {}
        for cidr, typ in ov.items():
            if typ not in IP_TYPES:
                raise ConfigError(
                    source, f"ip_type_overrides.{cidr}", f"unknown type {typ!r} (one of {', '.join(IP_TYPES)})"
                )
            out[_net(source, f"ip_type_overrides.{cidr}", cidr)] = typ
        kw["ip_type_overrides"] = out
    if "inventory" in raw:
        kw["inventory"] = _ip_map(source, "inventory", raw["inventory"], "device name")
    if "hostnames" in raw:
        kw["hostnames"] = {
            ip: name.lower().rstrip(".")
            for ip, name in _ip_map(source, "hostnames", raw["hostnames"], "host name").items()
        }
    kw["output"] = output_from_dict(source, raw.get("output"))
    if raw.get("device_name") is not None:
        if not isinstance(raw["device_name"], str):
            raise ConfigError(source, "device_name", "must be a string")
        kw["device_name"] = raw["device_name"]
    if "metrics_listen" in raw:
        kw["metrics_listen"] = parse_listen(source, "metrics_listen", raw["metrics_listen"])
    if "checksum_validation" in raw:
        cv = raw["checksum_validation"]
        if isinstance(cv, bool):  # YAML 1.1 reads a bare yes/no as a boolean
            cv = "yes" if cv else "no"
        if cv not in ("auto", "yes", "no"):  # sensor.engine.decode.CHECKSUM_MODES
            raise ConfigError(source, "checksum_validation", f"must be auto, yes or no, got {cv!r}")
        kw["checksum_validation"] = cv
    if "attempt_records" in raw:
        ar = raw["attempt_records"]
        if ar not in ATTEMPT_RECORDS:
            raise ConfigError(source, "attempt_records", f"must be aggregate or each, got {quote(ar)}")
        kw["attempt_records"] = ar
    if "checksum_offload_nets" in raw:
        on = raw["checksum_offload_nets"] or []
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, list):
            raise ConfigError(source, "checksum_offload_nets", "must be a list of CIDRs")
        kw["checksum_offload_nets"] = tuple(_net(source, "checksum_offload_nets", n) for n in on)
    if "status_interval" in raw:
        kw["status_interval"] = float(_number(source, "status_interval", raw["status_interval"], False, 1))
    if raw.get("filters") is not None:
        fl = raw["filters"]
        if isinstance(fl, str):
            fl = [fl]
        if not isinstance(fl, list) or not all(isinstance(x, str) and x.strip() for x in fl):
            raise ConfigError(source, "filters", "must be a list of filter file or folder paths")
        here = Path(source).parent if not source.startswith("<") else None
        kw["filters"] = tuple(str(here / x) if here is not None and not Path(x).is_absolute() else x for x in fl)
    if raw.get("state_dir") is not None:
        if not isinstance(raw["state_dir"], str) or not raw["state_dir"].strip():
            raise ConfigError(source, "state_dir", "must be a folder path")
        kw["state_dir"] = raw["state_dir"]
    if "state_flush_interval" in raw:
        kw["state_flush_interval"] = float(
            _number(source, "state_flush_interval", raw["state_flush_interval"], False, 0.01)
        )
    if "workers" in raw:
        kw["workers"] = parse_workers(source, "workers", raw["workers"])
    kw["timeouts"] = _section(source, "timeouts", raw.get("timeouts"), Timeouts)
    kw["limits"] = _section(source, "limits", raw.get("limits"), Limits)
    if raw.get("pcap_dir") is not None:
        if not isinstance(raw["pcap_dir"], str) or not raw["pcap_dir"].strip():
            raise ConfigError(source, "pcap_dir", "must be a folder path")
        kw["pcap_dir"] = raw["pcap_dir"]
    ring = kw["pcap_ring"] = _section(source, "pcap_ring", raw.get("pcap_ring"), PcapRing)
    if ring.file_bytes > ring.max_bytes and "file_bytes" not in (raw.get("pcap_ring") or {}):
        # only max_bytes given, below the default file size: four files' worth
        ring = kw["pcap_ring"] = dataclasses.replace(ring, file_bytes=max(1, ring.max_bytes // 4))
    if ring.file_bytes > ring.max_bytes:
        raise ConfigError(source, "pcap_ring.file_bytes", f"must not exceed pcap_ring.max_bytes ({ring.max_bytes})")
    return Config(**kw)


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    src = str(path)
    try:
        docs = read_yaml_file(path)
    except YamlFileError as e:
        raise ConfigError(src, e.field, e.message) from None
    if len(docs) > 1:
        raise ConfigError(src, "<yaml>", f"one YAML document expected, found {len(docs)}")
    return config_from_dict(docs[0] if docs else None, src)
