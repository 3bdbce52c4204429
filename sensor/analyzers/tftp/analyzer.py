"""TFTP analyzer (RFC 1350 + option extensions RFC 2347/2348/2349/7440), sans-IO.

A TFTP transfer is two UDP flows: the request to port 69 and the transfer,
which the server answers from a new port. Hence a pure parse layer
(``parse_packet``, ``interpret_options``; never raises) and two analyzers:
:class:`TftpRequestAnalyzer` (the port-69 flow; announces the transfer with
an ``ExpectConnection``) and :class:`TftpTransferAnalyzer` (unique blocks,
rollover, block size, exactly one :class:`TftpTransferDone`). Bounds: every
one is a field of :class:`TftpLimits`. Malformed input is a named Weird
(:data:`WEIRD_NAMES`), at most ``max_weirds`` per analyzer.

Specification -- the parse layer, both analyzers, retransmissions,
replies on port 69, the transfer's outcome: docs/analyzers/tftp.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sensor.analyzers.base import Analyzer, ConnInfo
from sensor.core.events import Event, ExpectConnection, Weird
from sensor.core.frozen import frozen

__all__ = [
    "OP_RRQ",
    "OP_WRQ",
    "OP_DATA",
    "OP_ACK",
    "OP_ERROR",
    "OP_OACK",
    "BLKSIZE_DEFAULT",
    "BLKSIZE_MIN",
    "BLKSIZE_MAX",
    "TFTP_PORT",
    "ERROR_CODES",
    "WEIRD_NAMES",
    "TftpLimits",
    "DEFAULT_LIMITS",
    "Anomaly",
    "ParseError",
    "TftpOptions",
    "RequestPacket",
    "DataPacket",
    "AckPacket",
    "ErrorPacket",
    "OackPacket",
    "TftpPacket",
    "parse_packet",
    "interpret_options",
    "TftpRequest",
    "TftpTransferDone",
    "TftpTransferContext",
    "TftpRequestAnalyzer",
    "TftpTransferAnalyzer",
]

OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6
BLKSIZE_DEFAULT = 512  # RFC 1350
BLKSIZE_MIN = 8  # RFC 2348
BLKSIZE_MAX = 65464  # RFC 2348
TFTP_PORT = 69
KNOWN_MODES = frozenset({"netascii", "octet", "mail"})
_MODES = {m: m for m in KNOWN_MODES}

ERROR_CODES = {
    0: "Not defined",
    1: "File not found",
    2: "Access violation",
    3: "Disk full or allocation exceeded",
    4: "Illegal TFTP operation",
    5: "Unknown transfer ID",
    6: "File already exists",
    7: "No such user",
    8: "Option negotiation refused",  # RFC 2347
}

WEIRD_NAMES = frozenset(
    {
        # parse layer, fatal (datagram dropped)
        "tftp_packet_too_short",  # shorter than its opcode needs
        "tftp_bad_opcode",  # opcode not 1..6
        "tftp_unterminated_string",  # filename/mode (fatal); option/error text (not)
        "tftp_malformed_request",  # RRQ/WRQ without a mode field
        # parse layer, non-fatal (packet used)
        "tftp_filename_too_long",  # truncated to max_filename_bytes
        "tftp_string_too_long",  # mode/option/error text truncated
        "tftp_empty_filename",
        "tftp_unknown_mode",  # not netascii/octet/mail
        "tftp_too_many_options",  # more than max_options pairs
        "tftp_option_without_value",  # name at the end with no value
        "tftp_duplicate_option",  # first one kept
        "tftp_malformed_options",  # empty option name before non-padding bytes
        "tftp_blksize_out_of_range",  # not 8..65464 (or not a number)
        "tftp_bad_option_value",  # tsize/timeout/windowsize/rollover invalid
        "tftp_trailing_data",  # bytes after an ACK / after an ERROR's NUL
        # session
        "tftp_unexpected_opcode",  # e.g. RRQ in a transfer, OACK after DATA
        "tftp_unexpected_direction",  # DATA from the receiver, ACK from the sender
        "tftp_transfer_on_request_port",  # DATA/ACK/OACK on the port-69 flow
        "tftp_data_too_large",  # DATA payload > negotiated blksize
        "tftp_blksize_inferred",  # OACK not seen but DATA uses the requested size
        "tftp_block_out_of_window",  # block number neither recent nor next
        "tftp_missing_blocks",  # forward jump: blocks never seen
        "tftp_data_after_completion",  # new DATA after the last block / ERROR
        "tftp_unrequested_option",  # OACK option the client did not ask for
        "tftp_oack_blksize_too_large",  # OACK blksize > requested (RFC 2348)
        "tftp_tsize_mismatch",  # octet transfer complete, bytes != tsize
        "tftp_weird_limit_reached",  # max_weirds reached; later weirds dropped
    }
)


@dataclass(frozen=True, slots=True)
class TftpLimits:
    """Every bound the TFTP analyzers keep (named tunables)."""

    max_filename_bytes: int = 1024  # longer filenames are truncated
    max_mode_bytes: int = 32
    max_options: int = 16  # option pairs parsed per RRQ/WRQ/OACK
    max_option_name_bytes: int = 64
    max_option_value_bytes: int = 256
    max_error_msg_bytes: int = 512
    max_weirds: int = 64  # Weird events per analyzer instance
    max_weird_detail: int = 200  # characters of Weird.detail
    expect_timeout_us: int = 30_000_000  # expectation lifetime; retransmit window
    max_block_skip: int = 16  # forward jump tolerated beyond windowsize
    max_missing_tracked: int = 1024  # skipped block numbers remembered


DEFAULT_LIMITS = TftpLimits()

# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@frozen
class TftpRequest(Event):
    """An RRQ (``op='read'``) or WRQ (``op='write'``) seen on port 69."""

    op: str
    filename: str
    mode: str
    options: tuple[tuple[str, str], ...] = ()
    filename_truncated: bool = False


@frozen
class TftpTransferDone(Event):
    """The outcome of one TFTP transfer (emitted exactly once per transfer)."""

    op: str  # 'read' | 'write' | 'unknown'
    filename: str
    direction: str  # 'download' (read) | 'upload' (write) | 'unknown'
    bytes: int  # unique DATA payload bytes
    blocks: int  # unique DATA blocks (an empty last block counts)
    complete: bool  # last block seen AND acknowledged, no ERROR
    error_code: int | None = None
    error_msg: str | None = None
    blksize: int = BLKSIZE_DEFAULT
    tsize: int | None = None  # OACK tsize, else the WRQ's declared tsize
    last_block_seen: bool = False
    retransmitted_blocks: int = 0
    missing_blocks: int = 0
    request_uid: str | None = None


# ---------------------------------------------------------------------------
# Pure parse layer
# ---------------------------------------------------------------------------


@frozen
class Anomaly:
    """A non-fatal problem found while parsing (becomes a Weird)."""

    name: str
    detail: str = ""


@frozen
class ParseError:
    """The datagram cannot be used (becomes a Weird; never raised)."""

    name: str
    detail: str = ""


@frozen
class TftpOptions:
    """Validated values of the options the analyzers understand."""

    blksize: int | None = None  # RFC 2348
    tsize: int | None = None  # RFC 2349
    timeout: int | None = None  # RFC 2349, seconds
    windowsize: int | None = None  # RFC 7440
    rollover: int | None = None  # tftpd-hpa extension: block after 65535


@frozen
class RequestPacket:
    op: str  # 'read' | 'write'
    filename: str
    mode: str  # lower-cased
    options: tuple[tuple[str, str], ...]
    known: TftpOptions
    filename_truncated: bool = False
    anomalies: tuple[Anomaly, ...] = ()


@frozen
class DataPacket:
    block: int
    payload: bytes
    anomalies: tuple[Anomaly, ...] = ()


@frozen
class AckPacket:
    block: int
    anomalies: tuple[Anomaly, ...] = ()


@frozen
class ErrorPacket:
    code: int
    msg: str
    anomalies: tuple[Anomaly, ...] = ()


@frozen
class OackPacket:
    options: tuple[tuple[str, str], ...]
    known: TftpOptions
    anomalies: tuple[Anomaly, ...] = ()


NO_OPTIONS = TftpOptions()

TftpPacket = RequestPacket | DataPacket | AckPacket | ErrorPacket | OackPacket

_DIGITS = re.compile(rb"[0-9]{1,20}")
_OPTION_RANGES = {  # name -> (min, max) for the integer options
    "tsize": (0, 1 << 64),
    "timeout": (1, 255),
    "windowsize": (1, 65535),
    "rollover": (0, 1),
}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _bounded(raw: bytes, limit: int, what: str, anomalies: list[Anomaly]) -> bytes:
    if len(raw) > limit:
        anomalies.append(Anomaly("tftp_string_too_long", f"{what}: {len(raw)} bytes > {limit}"))
        return raw[:limit]
    return raw


def _parse_option_pairs(buf: bytes, limits: TftpLimits, anomalies: list[Anomaly]) -> tuple[tuple[str, str], ...]:
    """``name\\0value\\0`` pairs; names lower-cased, first of duplicates kept."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    pos, n, parsed = 0, len(buf), 0
    while pos < n:
        k = buf.find(b"\0", pos)
        if k < 0:
            anomalies.append(Anomaly("tftp_unterminated_string", f"option name at offset {pos}"))
            break
        if k == pos:  # empty name: trailing NUL padding is tolerated
            if buf.count(0, pos) != n - pos:
                anomalies.append(Anomaly("tftp_malformed_options", f"empty option name at offset {pos}"))
            break
        name_raw = buf[pos:k]
        if k + 1 >= n:
            anomalies.append(Anomaly("tftp_option_without_value", _text(name_raw[: limits.max_option_name_bytes])))
            break
        m = buf.find(b"\0", k + 1)
        if m < 0:
            anomalies.append(
                Anomaly("tftp_unterminated_string", "value of " + _text(name_raw[: limits.max_option_name_bytes]))
            )
            break
        if parsed >= limits.max_options:
            anomalies.append(Anomaly("tftp_too_many_options", f"more than {limits.max_options}"))
            break
        parsed += 1
        value_raw = buf[k + 1 : m]
        pos = m + 1
        name = _text(_bounded(name_raw, limits.max_option_name_bytes, "option name", anomalies)).lower()
        value = _text(_bounded(value_raw, limits.max_option_value_bytes, "value of " + name, anomalies))
        if name in seen:
            anomalies.append(Anomaly("tftp_duplicate_option", name))
            continue
        seen.add(name)
        pairs.append((name, value))
    return tuple(pairs)


def interpret_options(
    pairs: tuple[tuple[str, str], ...],
) -> tuple[TftpOptions, tuple[Anomaly, ...]]:
    """Validate the known options; invalid ones are left out of the result."""
    values: dict[str, int] = {}
    anomalies: list[Anomaly] = []
    for name, value in pairs:
        if name != "blksize" and name not in _OPTION_RANGES:
            continue
        raw = value.encode("utf-8", "backslashreplace")
        num = int(raw) if _DIGITS.fullmatch(raw) else None
        if name == "blksize":
            if num is None or not BLKSIZE_MIN <= num <= BLKSIZE_MAX:
                anomalies.append(Anomaly("tftp_blksize_out_of_range", f"blksize {value[:32]!r}"))
                continue
        else:
            lo, hi = _OPTION_RANGES[name]
            if num is None or not lo <= num <= hi:
                anomalies.append(Anomaly("tftp_bad_option_value", f"{name} {value[:32]!r}"))
                continue
        values[name] = num
    # most requests carry no option: one shared (immutable) instance for them
    return (TftpOptions(**values) if values else NO_OPTIONS), tuple(anomalies)


def _parse_request(op: int, data: bytes, limits: TftpLimits) -> RequestPacket | ParseError:
    anomalies: list[Anomaly] = []
    i = data.find(b"\0", 2)
    if i < 0:
        return ParseError("tftp_unterminated_string", "filename")
    if i + 1 >= len(data):
        return ParseError("tftp_malformed_request", "no mode field")
    j = data.find(b"\0", i + 1)
    if j < 0:
        return ParseError("tftp_unterminated_string", "mode")
    filename_raw = data[2:i]
    truncated = len(filename_raw) > limits.max_filename_bytes
    if truncated:
        anomalies.append(Anomaly("tftp_filename_too_long", f"{len(filename_raw)} bytes > {limits.max_filename_bytes}"))
        filename_raw = filename_raw[: limits.max_filename_bytes]
    elif not filename_raw:
        anomalies.append(Anomaly("tftp_empty_filename"))
    mode = _text(_bounded(data[i + 1 : j], limits.max_mode_bytes, "mode", anomalies)).lower()
    mode = _MODES.get(mode, mode)  # the known ones shared, not one string per request
    if mode not in KNOWN_MODES:
        anomalies.append(Anomaly("tftp_unknown_mode", mode[:32]))
    options = _parse_option_pairs(data[j + 1 :], limits, anomalies)
    known, bad = interpret_options(options)
    anomalies.extend(bad)
    return RequestPacket(
        op="read" if op == OP_RRQ else "write",
        filename=_text(filename_raw),
        mode=mode,
        options=options,
        known=known,
        filename_truncated=truncated,
        anomalies=tuple(anomalies),
    )


def _parse_error(data: bytes, limits: TftpLimits) -> ErrorPacket:
    anomalies: list[Anomaly] = []
    code = (data[2] << 8) | data[3]
    rest = data[4:]
    nul = rest.find(b"\0")
    if nul < 0:
        # curl sends a bare 4-byte ERROR (no text, no NUL): tolerated silently
        if rest:
            anomalies.append(Anomaly("tftp_unterminated_string", "error message"))
        msg_raw = rest
    else:
        msg_raw = rest[:nul]
        tail = rest[nul + 1 :]
        if tail and tail.count(0) != len(tail):
            anomalies.append(Anomaly("tftp_trailing_data", f"{len(tail)} bytes after ERROR"))
    msg_raw = _bounded(msg_raw, limits.max_error_msg_bytes, "error message", anomalies)
    return ErrorPacket(code, _text(msg_raw), tuple(anomalies))


def parse_packet(datagram: bytes, limits: TftpLimits = DEFAULT_LIMITS) -> TftpPacket | ParseError:
    """Parse one TFTP datagram. Pure; returns ParseError instead of raising."""
    data = bytes(datagram)
    if len(data) < 2:
        return ParseError("tftp_packet_too_short", f"{len(data)} bytes")
    op = (data[0] << 8) | data[1]
    if op in (OP_RRQ, OP_WRQ):
        return _parse_request(op, data, limits)
    if op == OP_OACK:
        anomalies: list[Anomaly] = []
        options = _parse_option_pairs(data[2:], limits, anomalies)
        known, bad = interpret_options(options)
        return OackPacket(options, known, tuple(anomalies) + bad)
    if op not in (OP_DATA, OP_ACK, OP_ERROR):
        return ParseError("tftp_bad_opcode", f"opcode {op}")
    if len(data) < 4:
        return ParseError("tftp_packet_too_short", f"opcode {op}, {len(data)} bytes")
    if op == OP_DATA:
        return DataPacket((data[2] << 8) | data[3], data[4:])
    if op == OP_ACK:
        extra = len(data) - 4
        return AckPacket(
            (data[2] << 8) | data[3],
            (Anomaly("tftp_trailing_data", f"{extra} bytes after ACK"),) if extra else (),
        )
    return _parse_error(data, limits)


# ---------------------------------------------------------------------------
# Session state
# ---------------------------------------------------------------------------


@frozen
class TftpTransferContext:
    """What the request analyzer hands to the transfer analyzer.

    ``blksize`` is the block size in force before any OACK (RFC 2347: 512);
    ``requested`` holds the validated options the client asked for."""

    op: str  # 'read' | 'write'
    filename: str
    mode: str = "octet"
    options: tuple[tuple[str, str], ...] = ()
    blksize: int = BLKSIZE_DEFAULT
    requested: TftpOptions = NO_OPTIONS
    filename_truncated: bool = False
    request_uid: str | None = None
    client_h: str | None = None
    client_p: int | None = None
    server_h: str | None = None


class _WeirdSink:
    """Turns names into Weird events, at most ``limits.max_weirds`` of them."""

    __slots__ = ("analyzer", "limits", "count", "suppressed")

    def __init__(self, analyzer: str, limits: TftpLimits) -> None:
        self.analyzer = analyzer
        self.limits = limits
        self.count = 0
        self.suppressed = 0

    def add(self, out: list[Event], ts: int, name: str, detail: str = "") -> None:
        limit = self.limits.max_weirds
        if self.count < limit:
            out.append(Weird(ts, name, detail[: self.limits.max_weird_detail], self.analyzer))
        elif self.count == limit:
            out.append(Weird(ts, "tftp_weird_limit_reached", f"{limit} weirds", self.analyzer))
        else:
            self.suppressed += 1
            return
        self.count += 1

    def add_all(self, out: list[Event], ts: int, anomalies: tuple[Anomaly, ...]) -> None:
        for a in anomalies:
            self.add(out, ts, a.name, a.detail)


def _wire(n: int, base: int | None) -> int:
    """Wire block number of absolute block ``n`` (1, 2, ...)."""
    if base == 1:
        return (n - 1) % 65535 + 1
    return n & 0xFFFF


class _BlockTracker:
    """Maps 16-bit DATA block numbers onto absolute block numbers.

    ``highest`` is the highest absolute block accepted (0 before the first).
    After 65535 the wire number goes to 0 (``base`` 0) or to 1 (``base`` 1);
    until a transfer crosses that point both read the same, and the first
    crossing decides (unless an OACK ``rollover`` option already did)."""

    __slots__ = ("highest", "base", "missing", "untracked_missing", "limits")

    def __init__(self, limits: TftpLimits) -> None:
        self.highest = 0
        self.base: int | None = None
        self.missing: dict[int, None] = {}  # ordered set of skipped blocks
        self.untracked_missing = 0
        self.limits = limits

    @property
    def missing_count(self) -> int:
        return len(self.missing) + self.untracked_missing

    def classify(self, wire: int, window: int) -> tuple[str, int]:
        """('new'|'fill'|'dup'|'out', absolute block). Does not change state."""
        h = self.highest
        if (self.base is not None or h < 65535) and wire == _wire(h + 1, self.base):
            return "new", h + 1  # the common case: the next block
        reach = min(window + self.limits.max_block_skip, 32000)
        best: tuple[str, int] | None = None
        for base in (0, 1) if self.base is None else (self.base,):
            modulus = 65536 if base == 0 else 65535
            pos = wire if base == 0 else wire - 1
            if pos < 0:
                continue
            d = (pos - (h % 65536 if base == 0 else (h - 1) % 65535)) % modulus
            if d == 0:
                cand = ("dup", h)
            elif d <= reach:
                cand = ("new", h + d)
            elif modulus - d <= reach:
                n = h - (modulus - d)
                cand = ("fill" if n in self.missing else "dup", n)
            else:
                continue
            if cand[1] < 1:
                continue
            if best is None or abs(cand[1] - h) < abs(best[1] - h):
                best = cand
        return best if best is not None else ("out", 0)

    def commit(self, kind: str, n: int, wire: int) -> int:
        """Accept block ``n`` (seen as ``wire``); returns how many it skipped."""
        if kind == "fill":
            self.missing.pop(n, None)
            return 0
        if kind != "new":
            return 0
        if n > 65535 and self.base is None:
            # first crossing decides: block 65536 is wire 0 (base 0) or 1 (base 1)
            self.base = 0 if wire == n & 0xFFFF else 1
        skipped = n - self.highest - 1
        if skipped > 0:
            keep = min(skipped, self.limits.max_missing_tracked)
            self.untracked_missing += skipped - keep
            for b in range(n - keep, n):
                self.missing[b] = None
            while len(self.missing) > self.limits.max_missing_tracked:
                self.missing.pop(next(iter(self.missing)))
                self.untracked_missing += 1
        self.highest = n
        return max(skipped, 0)


class _TransferSession:
    """The engine behind TftpTransferAnalyzer (and in-flow transfers on 69).

    ``server_is_orig`` is the hint used only to tell a read from a write when
    neither the context nor an OACK says which side is the server."""

    def __init__(
        self,
        context: TftpTransferContext | None,
        limits: TftpLimits,
        weirds: _WeirdSink,
        server_is_orig: bool,
    ) -> None:
        self.context = context
        self.limits = limits
        self.weirds = weirds
        self.server_is_orig = server_is_orig
        self.op = context.op if context is not None else None
        self.requested = context.requested if context is not None else NO_OPTIONS
        self.blksize = context.blksize if context is not None else BLKSIZE_DEFAULT
        self.windowsize = 1
        self.tsize = self.requested.tsize if self.op == "write" else None
        self.data_from_orig: bool | None = None
        self.oack: OackPacket | None = None
        self.oack_from_orig: bool | None = None
        self.tracker = _BlockTracker(limits)
        self.final_block: int | None = None  # absolute number of the short block
        self.bytes = 0
        self.blocks = 0
        self.retransmitted = 0
        self.packets = 0
        self.error: ErrorPacket | None = None
        self.done_event: TftpTransferDone | None = None

    @property
    def done(self) -> bool:
        return self.done_event is not None

    # -- dispatch ----------------------------------------------------------
    def on_datagram(self, data: bytes, from_orig: bool, ts: int) -> list[Event]:
        n = len(data)
        if n >= 4 and data[0] == 0:
            # a well-formed DATA or ACK, the bulk of a transfer: what
            # on_datagram_parsed does for it, without the packet object
            op = data[1]
            if op == OP_DATA:
                out: list[Event] = []
                self.packets += 1
                self._on_data((data[2] << 8) | data[3], n - 4, from_orig, ts, out)
                return out
            if op == OP_ACK and n == 4:
                out = []
                self.packets += 1
                self._on_ack((data[2] << 8) | data[3], from_orig, ts, out)
                return out
        return self.on_datagram_parsed(data, from_orig, ts)

    def on_datagram_parsed(self, data: bytes, from_orig: bool, ts: int) -> list[Event]:
        """Any datagram the general way: parse_packet, then on_packet."""
        out: list[Event] = []
        pkt = parse_packet(data, self.limits)
        if isinstance(pkt, ParseError):
            self.weirds.add(out, ts, pkt.name, pkt.detail)
            return out
        self.weirds.add_all(out, ts, pkt.anomalies)
        if isinstance(pkt, RequestPacket):
            self.weirds.add(out, ts, "tftp_unexpected_opcode", f"{pkt.op} request in a transfer")
            return out
        self.on_packet(pkt, from_orig, ts, out)
        return out

    def on_packet(self, pkt: TftpPacket, from_orig: bool, ts: int, out: list[Event]) -> None:
        self.packets += 1
        if isinstance(pkt, DataPacket):
            self._on_data(pkt.block, len(pkt.payload), from_orig, ts, out)
        elif isinstance(pkt, AckPacket):
            self._on_ack(pkt.block, from_orig, ts, out)
        elif isinstance(pkt, OackPacket):
            self._on_oack(pkt, from_orig, ts, out)
        elif isinstance(pkt, ErrorPacket):
            if not self.done:
                self.error = pkt
                self._finish(ts, out, complete=False)

    # -- packets -----------------------------------------------------------
    def _on_data(self, block: int, size: int, from_orig: bool, ts: int, out: list[Event]) -> None:
        if self.data_from_orig is None:
            self.data_from_orig = from_orig
        elif from_orig != self.data_from_orig:
            self.weirds.add(out, ts, "tftp_unexpected_direction", f"DATA {block} from the receiver")
            return
        kind, n = self.tracker.classify(block, self.windowsize)
        if kind == "out":
            self.weirds.add(
                out,
                ts,
                "tftp_block_out_of_window",
                f"block {block} after {_wire(self.tracker.highest, self.tracker.base)}",
            )
            return
        if kind == "dup":
            self.retransmitted += 1
            return
        if self.done or (self.final_block is not None and n > self.final_block):
            why = "ERROR" if self.error is not None else "the last block"
            self.weirds.add(out, ts, "tftp_data_after_completion", f"block {block} after {why}")
            return
        if size > self.blksize:
            req = self.requested.blksize
            if self.blocks == 0 and self.oack is None and req is not None and size <= req:
                self.weirds.add(
                    out, ts, "tftp_blksize_inferred", f"no OACK seen; DATA of {size} bytes, requested {req}"
                )
                self.blksize = req
            else:
                self.weirds.add(out, ts, "tftp_data_too_large", f"block {block}: {size} bytes > blksize {self.blksize}")
        skipped = self.tracker.commit(kind, n, block)
        if skipped:
            self.weirds.add(out, ts, "tftp_missing_blocks", f"{skipped} blocks before block {block}")
        self.bytes += size
        self.blocks += 1
        if size < self.blksize and self.final_block is None:
            self.final_block = n

    def _on_ack(self, block: int, from_orig: bool, ts: int, out: list[Event]) -> None:
        if self.data_from_orig is None:
            self.data_from_orig = not from_orig
        elif from_orig == self.data_from_orig:
            self.weirds.add(out, ts, "tftp_unexpected_direction", f"ACK {block} from the data sender")
            return
        if self.done or self.final_block is None:
            return
        if block == _wire(self.final_block, self.tracker.base):
            self._finish(ts, out, complete=True)

    def _on_oack(self, pkt: OackPacket, from_orig: bool, ts: int, out: list[Event]) -> None:
        if self.oack is not None and pkt.options == self.oack.options and from_orig == self.oack_from_orig:
            return  # the server retransmitted its OACK
        if self.oack is not None or self.blocks or self.done:
            self.weirds.add(out, ts, "tftp_unexpected_opcode", "OACK after the transfer started")
            return
        if self.op is not None:
            data_from_orig = from_orig if self.op == "read" else not from_orig
            if self.data_from_orig is not None and self.data_from_orig != data_from_orig:
                self.weirds.add(out, ts, "tftp_unexpected_direction", f"OACK from the {self.op} client")
                return
            self.data_from_orig = data_from_orig
        self.oack, self.oack_from_orig = pkt, from_orig
        if self.context is not None:
            asked = {name for name, _ in self.context.options}
            for name, _ in pkt.options:
                if name not in asked:
                    self.weirds.add(out, ts, "tftp_unrequested_option", name)
        known = pkt.known
        if known.blksize is not None:
            if self.requested.blksize is not None and known.blksize > self.requested.blksize:
                self.weirds.add(
                    out, ts, "tftp_oack_blksize_too_large", f"{known.blksize} > requested {self.requested.blksize}"
                )
            self.blksize = known.blksize
        if known.tsize is not None:
            self.tsize = known.tsize
        if known.windowsize is not None:
            self.windowsize = known.windowsize
        if known.rollover is not None:
            self.tracker.base = known.rollover

    # -- outcome -----------------------------------------------------------
    def resolved_op(self) -> str:
        if self.op is not None:
            return self.op
        if self.data_from_orig is None:
            return "unknown"
        server_is_orig = self.oack_from_orig if self.oack_from_orig is not None else self.server_is_orig
        return "read" if self.data_from_orig == server_is_orig else "write"

    def _finish(self, ts: int, out: list[Event], complete: bool) -> None:
        if self.done:
            return
        ctx = self.context
        op = self.resolved_op()
        if (
            complete
            and self.tsize is not None
            and self.bytes != self.tsize
            and (ctx is None or ctx.mode == "octet")
            and not self.tracker.missing_count
        ):
            self.weirds.add(out, ts, "tftp_tsize_mismatch", f"{self.bytes} bytes, tsize {self.tsize}")
        err = self.error
        self.done_event = TftpTransferDone(
            ts=ts,
            op=op,
            filename=ctx.filename if ctx is not None else "",
            direction={"read": "download", "write": "upload"}.get(op, "unknown"),
            bytes=self.bytes,
            blocks=self.blocks,
            complete=complete,
            error_code=err.code if err is not None else None,
            error_msg=err.msg if err is not None else None,
            blksize=self.blksize,
            tsize=self.tsize,
            last_block_seen=self.final_block is not None,
            retransmitted_blocks=self.retransmitted,
            missing_blocks=self.tracker.missing_count,
            request_uid=ctx.request_uid if ctx is not None else None,
        )
        out.append(self.done_event)

    def finish(self, ts: int) -> list[Event]:
        out: list[Event] = []
        self._finish(ts, out, complete=False)
        return out


# ---------------------------------------------------------------------------
# Analyzers
# ---------------------------------------------------------------------------


class TftpTransferAnalyzer(Analyzer):
    """The transfer flow (server's new port <-> client's port).

    ``conn.orig_*`` is the TFTP server (it sends first): ``receive_ts`` gets
    the server's datagrams, ``receive_tc`` the client's. Either assignment
    works (see the module docstring)."""

    name = "tftp-transfer"
    __slots__ = ("limits", "_weirds", "_session")

    def __init__(
        self,
        conn: ConnInfo,
        context: TftpTransferContext | None = None,
        limits: TftpLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(conn)
        self.limits = limits
        self._weirds = _WeirdSink(self.name, limits)
        self._session = _TransferSession(context, limits, self._weirds, server_is_orig=True)

    def receive_ts(self, data: bytes, ts: int) -> list[Event]:
        return self._session.on_datagram(data, True, ts)

    def receive_tc(self, data: bytes, ts: int) -> list[Event]:
        return self._session.on_datagram(data, False, ts)

    def close(self, ts: int) -> list[Event]:
        return self._session.finish(ts)

    @property
    def done(self) -> TftpTransferDone | None:
        """The emitted outcome, or None while the transfer is running."""
        return self._session.done_event

    @property
    def bytes_seen(self) -> int:
        """Unique DATA payload bytes so far."""
        return self._session.bytes

    @property
    def blksize(self) -> int:
        """Block size in force (512 until an OACK negotiates another)."""
        return self._session.blksize


class TftpRequestAnalyzer(Analyzer):
    """The flow to port 69: RRQ/WRQ, plus replies that come back on it.

    One lives for every request flow (a flood of requests keeps up to
    ``max_flows`` of them): slotted, its weird sink made at the first weird."""

    name = "tftp"
    __slots__ = (
        "limits",
        "_sink",
        "_last_raw",
        "_last_from_orig",
        "_last_ts",
        "_session",
        "_lazy",
        "_reported_in_flow",
        "requests",
        "retransmitted_requests",
    )

    def __init__(self, conn: ConnInfo, limits: TftpLimits = DEFAULT_LIMITS) -> None:
        super().__init__(conn)
        self.limits = limits
        self._sink: _WeirdSink | None = None
        self._last_raw: bytes | None = None
        self._last_from_orig = True
        self._last_ts = 0
        self._session: _TransferSession | None = None
        # server_is_orig of the request's session until a reply on this flow
        # needs it (made lazily: most requests are answered from a new port)
        self._lazy: bool | None = None
        self._reported_in_flow = False
        self.requests = 0
        self.retransmitted_requests = 0

    @property
    def _weirds(self) -> _WeirdSink:
        sink = self._sink
        if sink is None:
            sink = self._sink = _WeirdSink(self.name, self.limits)
        return sink

    def receive_ts(self, data: bytes, ts: int) -> list[Event]:
        return self._receive(bytes(data), True, ts)

    def receive_tc(self, data: bytes, ts: int) -> list[Event]:
        return self._receive(bytes(data), False, ts)

    def close(self, ts: int) -> list[Event]:
        return self._flush_session(ts)

    def _flush_session(self, ts: int) -> list[Event]:
        self._lazy = None
        session, self._session = self._session, None
        if session is not None and session.packets:
            return session.finish(ts)
        return []

    def _receive(self, data: bytes, from_orig: bool, ts: int) -> list[Event]:
        out: list[Event] = []
        pkt = parse_packet(data, self.limits)
        if isinstance(pkt, ParseError):
            self._weirds.add(out, ts, pkt.name, pkt.detail)
            return out
        if pkt.anomalies:
            self._weirds.add_all(out, ts, pkt.anomalies)
        if isinstance(pkt, RequestPacket):
            self._on_request(pkt, data, from_orig, ts, out)
            return out
        session = self._session
        if session is None and self._lazy is not None and (context := self.context) is not None:
            session = self._session = _TransferSession(context, self.limits, self._weirds, self._lazy)
            self._lazy = None
        if session is None:
            self._weirds.add(
                out, ts, "tftp_unexpected_opcode", f"{type(pkt).__name__} on the request flow without a request"
            )
            return out
        if not isinstance(pkt, ErrorPacket) and not self._reported_in_flow:
            self._reported_in_flow = True
            self._weirds.add(out, ts, "tftp_transfer_on_request_port", type(pkt).__name__)
        session.on_packet(pkt, from_orig, ts, out)
        return out

    def _context_of(self, pkt: RequestPacket, from_orig: bool) -> TftpTransferContext:
        """What the transfer ``pkt`` asks for needs to know (``from_orig``: the client is the originator)."""
        c = self.conn
        if from_orig:
            client_h, client_p, server_h = c.orig_h, c.orig_p, c.resp_h
        else:
            client_h, client_p, server_h = c.resp_h, c.resp_p, c.orig_h
        return TftpTransferContext(
            op=pkt.op,
            filename=pkt.filename,
            mode=pkt.mode,
            options=pkt.options,
            blksize=BLKSIZE_DEFAULT,
            requested=pkt.known,
            filename_truncated=pkt.filename_truncated,
            request_uid=c.uid,
            client_h=client_h,
            client_p=client_p,
            server_h=server_h,
        )

    @property
    def context(self) -> TftpTransferContext | None:
        """The last request's transfer context (None before a request).
        Made again from the request's datagram, not kept: a request flood
        keeps one analyzer per flow, and most never need it again."""
        raw = self._last_raw
        if raw is None:
            return None
        pkt = parse_packet(raw, self.limits)  # pure: as it parsed when it came
        return self._context_of(pkt, self._last_from_orig) if isinstance(pkt, RequestPacket) else None

    def _on_request(self, pkt: RequestPacket, raw: bytes, from_orig: bool, ts: int, out: list[Event]) -> None:
        retransmit = (
            raw == self._last_raw
            and from_orig == self._last_from_orig
            and 0 <= ts - self._last_ts <= self.limits.expect_timeout_us
        )
        c = self.conn
        context = self._context_of(pkt, from_orig)  # equal to the first one's for a retransmission
        if retransmit:
            self.retransmitted_requests += 1
        else:
            out.extend(self._flush_session(ts))
            self.requests += 1
            self._lazy = not from_orig  # its _TransferSession when a reply comes on this flow
            self._reported_in_flow = False
            out.append(TftpRequest(ts, pkt.op, pkt.filename, pkt.mode, pkt.options, pkt.filename_truncated))
        self._last_raw, self._last_from_orig, self._last_ts = raw, from_orig, ts
        out.append(
            ExpectConnection(
                ts=ts,
                proto="udp",
                orig_h=c.resp_h if from_orig else c.orig_h,  # the server
                orig_p=None,
                resp_h=c.orig_h if from_orig else c.resp_h,  # the client
                resp_p=c.orig_p if from_orig else c.resp_p,
                analyzer=TftpTransferAnalyzer.name,
                expires_us=ts + self.limits.expect_timeout_us,
                context=context,
            )
        )
