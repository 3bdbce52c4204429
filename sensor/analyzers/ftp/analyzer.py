"""FTP / explicit-FTPS control-channel analyzer (RFC 959, 2228, 2389, 2428,
3659, 4217), sans-IO: bytes and packet time in, frozen events out.

Three layers: pure helpers (PORT/EPRT/PASV/EPSV address parsing, probes);
two per-direction wire parsers in the h11 style that never raise
(:class:`FtpCommandParser`, :class:`FtpReplyParser`); the session,
:class:`FtpAnalyzer` (``receive_ts``/``receive_tc``, ``gap``, ``close``,
``probe_ts``/``probe_tc``), whose state machine is the :data:`TRANSITIONS`
table. Bounds: every buffer and queue is a field of :class:`FtpLimits`
(line, argument and reply-text lengths, pending commands, weirds per
connection). Malformed input is a named Weird (:data:`WEIRD_NAMES`); a
PASS/ACCT argument is never kept.

Specification -- events, linking data connections to commands,
data-channel rules (NAT, bounce), the state machine, reply pairing, lines
and text, gaps, probes, weird names: docs/analyzers/ftp.md.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections import deque
from dataclasses import dataclass
from typing import Final

from sensor.analyzers.base import Analyzer, ConnInfo
from sensor.core.events import NEED_DATA, Event, ExpectConnection, NeedData, Weird
from sensor.core.frozen import frozen
from sensor.core.iptype import parse_address

__all__ = [
    "FtpLimits",
    "DEFAULT_LIMITS",
    "FtpState",
    "Trigger",
    "TRANSITIONS",
    "WEIRD_NAMES",
    "DATA_DIRECTIONS",
    "FtpRequest",
    "FtpReply",
    "FtpLogin",
    "FtpSize",
    "FtpTlsUpgrade",
    "FtpDataCommand",
    "FtpDataResult",
    "FtpDataChannel",
    "CommandLine",
    "ReplyMessage",
    "ParseIssue",
    "TlsStart",
    "FtpCommandParser",
    "FtpReplyParser",
    "HostPort",
    "FtpAddressError",
    "parse_port_arg",
    "parse_eprt_arg",
    "parse_pasv_reply",
    "parse_epsv_reply",
    "probe_ts",
    "probe_tc",
    "FtpAnalyzer",
]

# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FtpLimits:
    """Every bound the FTP analyzer keeps (named tunables)."""

    max_line_length: int = 4096  # bytes of one control line (CRLF excluded)
    max_command_length: int = 16  # characters of a command verb
    max_arg_length: int = 1024  # characters of a command argument kept
    max_text_length: int = 1024  # characters of a (multi-line) reply text kept
    max_pending_commands: int = 20  # commands awaiting a reply (Zeek's default)
    max_weirds: int = 64  # Weird events per connection
    max_weird_detail: int = 200  # characters of Weird.detail
    data_channel_timeout_us: int = 300_000_000  # expectation lifetime (5 min)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"FtpLimits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS: Final = FtpLimits()

# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


@frozen
class FtpRequest(Event):
    """A command line from the client (PASS/ACCT arguments are blanked)."""

    seq: int
    command: str
    arg: str
    arg_truncated: bool = False


@frozen
class FtpReply(Event):
    """A complete (possibly multi-line) reply; seq/for_command: what it answers."""

    seq: int
    code: int
    text: str
    text_truncated: bool = False
    for_command: str = ""


@frozen
class FtpLogin(Event):
    """Outcome of a USER or PASS command. The password is never kept."""

    seq: int
    user: str
    user_truncated: bool
    password_sent: bool
    success: bool
    code: int


@frozen
class FtpSize(Event):
    """SIZE <path> answered ``213 <size>``."""

    seq: int
    path: str
    path_truncated: bool
    size: int


@frozen
class FtpTlsUpgrade(Event):
    """AUTH answered 234: the control channel is TLS from here on."""

    seq: int
    method: str  # "AUTH TLS", "AUTH SSL", ...
    code: int = 234


@frozen
class FtpDataCommand(Event):
    """A transfer command was sent (see module docstring for linking)."""

    seq: int
    command: str
    arg: str
    arg_truncated: bool
    direction: str  # 'download' (server -> client) | 'upload' (client -> server)
    mode: str  # 'passive' | 'active' | '' (no known channel)
    channel_seq: int  # seq of the PORT/EPRT/PASV/EPSV announcing it, 0 = none


@frozen
class FtpDataResult(Event):
    """The final reply (or the end of tracking) of a transfer command."""

    seq: int
    command: str
    arg: str
    arg_truncated: bool
    direction: str
    mode: str
    channel_seq: int
    code: int  # 0 when there was no final reply
    outcome: str  # complete | failed | unexpected | unanswered | gap | untracked
    announced_size: int | None = None


@frozen
class FtpDataChannel:
    """``ExpectConnection.context`` for an FTP data connection."""

    uid: str  # the control connection's uid
    channel_seq: int  # equals FtpDataCommand.channel_seq of the command using it
    mode: str  # 'passive' | 'active'


DATA_DIRECTIONS: Final[dict[str, str]] = {
    "RETR": "download",
    "LIST": "download",
    "NLST": "download",
    "MLSD": "download",
    "STOR": "upload",
    "STOU": "upload",
    "APPE": "upload",
}
_SECRET_COMMANDS: Final = frozenset({"PASS", "ACCT"})

# ---------------------------------------------------------------------------
# State machine: the only place transitions live
# ---------------------------------------------------------------------------


class FtpState(enum.Enum):
    AWAIT_BANNER = "await_banner"
    AWAIT_USER = "await_user"
    AWAIT_PASS = "await_pass"
    LOGGED_IN = "logged_in"
    TLS = "tls"
    CLOSED = "closed"
    UNKNOWN = "unknown"


class Trigger(enum.Enum):
    GREETING = "greeting"  # 2xx as first reply
    GREETING_DELAY = "greeting_delay"  # 1xx as first reply (120)
    GREETING_REFUSED = "greeting_refused"  # 4xx/5xx as first reply (421)
    BAD_GREETING = "bad_greeting"  # 3xx as first reply
    USER_OK = "user_ok"  # USER -> 2xx (no password needed)
    NEED_PASS = "need_pass"  # USER -> 3xx
    LOGIN_OK = "login_ok"  # PASS -> 2xx
    LOGIN_FAILED = "login_failed"  # USER/PASS -> 4xx/5xx
    TLS_OK = "tls_ok"  # 234
    CLOSING = "closing"  # QUIT -> 2xx, or any 421
    REINIT = "reinit"  # REIN -> 220
    GAP = "gap"  # content gap in either direction


_S, _T = FtpState, Trigger
TRANSITIONS: Final[dict[FtpState, dict[Trigger, FtpState]]] = {
    _S.AWAIT_BANNER: {
        _T.GREETING: _S.AWAIT_USER,
        _T.GREETING_DELAY: _S.AWAIT_BANNER,
        _T.GREETING_REFUSED: _S.CLOSED,
        _T.TLS_OK: _S.TLS,
        _T.GAP: _S.UNKNOWN,
    },
    _S.AWAIT_USER: {
        _T.USER_OK: _S.LOGGED_IN,
        _T.NEED_PASS: _S.AWAIT_PASS,
        _T.LOGIN_FAILED: _S.AWAIT_USER,
        _T.TLS_OK: _S.TLS,
        _T.CLOSING: _S.CLOSED,
        _T.REINIT: _S.AWAIT_USER,
        _T.GAP: _S.UNKNOWN,
    },
    _S.AWAIT_PASS: {
        _T.USER_OK: _S.LOGGED_IN,
        _T.NEED_PASS: _S.AWAIT_PASS,
        _T.LOGIN_OK: _S.LOGGED_IN,
        _T.LOGIN_FAILED: _S.AWAIT_USER,
        _T.TLS_OK: _S.TLS,
        _T.CLOSING: _S.CLOSED,
        _T.REINIT: _S.AWAIT_USER,
        _T.GAP: _S.UNKNOWN,
    },
    _S.LOGGED_IN: {
        _T.USER_OK: _S.LOGGED_IN,
        _T.NEED_PASS: _S.AWAIT_PASS,  # USER again: RFC 959 allows a change of user
        _T.LOGIN_OK: _S.LOGGED_IN,  # "230 Already logged in."
        _T.LOGIN_FAILED: _S.LOGGED_IN,  # vsftpd: "530 Can't change to another user."
        _T.TLS_OK: _S.TLS,
        _T.CLOSING: _S.CLOSED,
        _T.REINIT: _S.AWAIT_USER,
        _T.GAP: _S.UNKNOWN,
    },
    _S.UNKNOWN: {
        _T.GREETING: _S.AWAIT_USER,
        _T.USER_OK: _S.LOGGED_IN,
        _T.NEED_PASS: _S.AWAIT_PASS,
        _T.LOGIN_OK: _S.LOGGED_IN,
        _T.LOGIN_FAILED: _S.UNKNOWN,  # may still be logged in as someone
        _T.TLS_OK: _S.TLS,
        _T.CLOSING: _S.CLOSED,
        _T.REINIT: _S.AWAIT_USER,
        _T.GAP: _S.UNKNOWN,
    },
    _S.CLOSED: {
        _T.TLS_OK: _S.TLS,
        _T.CLOSING: _S.CLOSED,
        _T.GAP: _S.CLOSED,
    },
    _S.TLS: {},  # terminal: the analyzer stops before any further trigger
}
del _S, _T

WEIRD_NAMES: Final = frozenset(
    {
        "ftp_line_too_long",
        "ftp_malformed_command",
        "ftp_malformed_reply",
        "ftp_nul_in_line",
        "ftp_unterminated_reply",
        "ftp_too_many_pending_commands",
        "ftp_reply_without_command",
        "ftp_bad_port",
        "ftp_bad_eprt",
        "ftp_bad_pasv_reply",
        "ftp_bad_epsv_reply",
        "ftp_bad_size_reply",
        "ftp_bounce",
        "ftp_pasv_address_mismatch",
        "ftp_content_gap",
        "ftp_weird_limit_reached",
        *(f"ftp_unexpected_{t.value}" for t in Trigger),
    }
)

# ---------------------------------------------------------------------------
# Pure helpers: text, addresses, probes
# ---------------------------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _cap(s: str, limit: int) -> tuple[str, bool]:
    return (s[:limit], True) if len(s) > limit else (s, False)


class FtpAddressError(ValueError):
    """A PORT/EPRT argument or 227/229 reply without a usable address."""


@frozen
class HostPort:
    host: str | None  # normalised address text; None for EPSV
    port: int


_PORT_ARG = re.compile(r"\s*" + r"\s*,\s*".join([r"([0-9]{1,3})"] * 6) + r"\s*", re.ASCII)
_PASV_TUPLE = re.compile(r"(?<![0-9])" + r"\s*,\s*".join([r"([0-9]{1,3})"] * 6) + r"(?![0-9])", re.ASCII)
_EPSV_PORT = re.compile(r"\(([!-/:-@\[-`{-~])\1\1([0-9]{1,5})\1\)", re.ASCII)


def _host_port_from_six(nums: tuple[str, ...], what: str) -> HostPort:
    values = [int(n) for n in nums]
    if any(v > 255 for v in values):
        raise FtpAddressError(f"{what}: number out of range 0-255 in {','.join(nums)}")
    port = values[4] * 256 + values[5]
    if port == 0:
        raise FtpAddressError(f"{what}: port 0")
    return HostPort(".".join(map(str, values[:4])), port)


def parse_port_arg(arg: str) -> HostPort:
    """``PORT h1,h2,h3,h4,p1,p2`` -> HostPort('h1.h2.h3.h4', p1*256+p2)."""
    m = _PORT_ARG.fullmatch(arg)
    if m is None:
        raise FtpAddressError(f"PORT: not six comma-separated numbers: {arg[:64]}")
    return _host_port_from_six(m.groups(), "PORT")


def _port_number(text: str, what: str) -> int:
    if not (1 <= len(text) <= 5 and text.isascii() and text.isdigit()):
        raise FtpAddressError(f"{what}: bad port {text[:16]!r}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise FtpAddressError(f"{what}: port {port} out of range")
    return port


def parse_eprt_arg(arg: str) -> HostPort:
    """``EPRT |1|192.0.2.7|6275|`` or ``EPRT |2|2001:db8::7|5282|`` (RFC 2428)."""
    arg = arg.strip()
    if len(arg) < 2 or not "!" <= arg[0] <= "~":
        raise FtpAddressError(f"EPRT: no delimiter: {arg[:64]}")
    parts = arg.split(arg[0])
    if len(parts) != 5 or parts[0] or parts[4]:
        raise FtpAddressError(f"EPRT: expected |af|addr|port|: {arg[:64]}")
    af, addr, port_text = parts[1:4]
    try:
        if af == "1":
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(addr)
        elif af == "2":
            ip = ipaddress.IPv6Address(addr)
        else:
            raise FtpAddressError(f"EPRT: unknown address family {af[:8]!r}")
    except ipaddress.AddressValueError as e:
        raise FtpAddressError(f"EPRT: bad address for family {af}: {addr[:64]}") from e
    if ip.version == 6 and ip.scope_id is not None:
        raise FtpAddressError(f"EPRT: scoped address {addr[:64]}")
    return HostPort(str(ip), _port_number(port_text, "EPRT"))


def parse_pasv_reply(text: str) -> HostPort:
    """The six numbers of a 227 reply, wherever they stand in the text."""
    m = _PASV_TUPLE.search(text)
    if m is None:
        raise FtpAddressError(f"227 without h1,h2,h3,h4,p1,p2: {text[:64]}")
    return _host_port_from_six(m.groups(), "227")


def parse_epsv_reply(text: str) -> HostPort:
    """The port of a 229 reply: ``(|||port|)`` with any delimiter (RFC 2428)."""
    m = _EPSV_PORT.search(text)
    if m is None:
        raise FtpAddressError(f"229 without (|||port|): {text[:64]}")
    return HostPort(None, _port_number(m.group(2), "229"))


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str | None) -> _IPAddress | None:
    if text is None:
        return None
    try:
        ip = parse_address(text.split("%", 1)[0])  # inet_pton, else ipaddress's own parse
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# Command verbs of RFC 959/2228/2389/2428/2640/3659/7151 and common extensions.
_KNOWN_COMMANDS: Final = frozenset(
    b"ABOR ACCT ADAT ALLO APPE AUTH AVBL CCC CDUP CLNT CONF CSID CWD DELE DSIZ "
    b"ENC EPRT EPSV FEAT HELP HOST LANG LIST LPRT LPSV MDTM MFCT MFF MFMT MIC "
    b"MKD MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD QUIT REIN "
    b"REST RETR RMD RMDA RNFR RNTO SITE SIZE SMNT SPSV STAT STOR STOU STRU SYST "
    b"TYPE USER XCUP XCWD XMKD XPWD XRMD".split()
)
_OPENING_COMMANDS: Final = frozenset(b"USER AUTH FEAT SYST HOST OPTS CLNT".split())
_REPLY_START = re.compile(rb"([1-5][0-9][0-9])(?:([ -])|\Z)")
_REPLY_PREFIX = re.compile(rb"[1-5](?:[0-9][0-9]?)?\Z")
_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9]*\Z")
_IAC_PREFIX = re.compile(rb"\A(?:\xff[\xfb-\xfe][\x00-\xff]|\xff[\xf0-\xfa])+")
_PROBE_LOOKAHEAD: Final = 512  # decide on a partial banner line after this many bytes


def _first_line(data: bytes) -> tuple[bytes, bool]:
    i = data.find(b"\n")
    if i < 0:
        return data, False
    return data[:i].rstrip(b"\r"), True


def probe_ts(data: bytes, *, midstream: bool = False) -> bool | None:
    """Does the client's first line look like FTP? True / False / None (need data)."""
    allowed = _KNOWN_COMMANDS if midstream else _OPENING_COMMANDS
    line, complete = _first_line(bytes(data[:_PROBE_LOOKAHEAD]))
    verb, sep, _ = line.partition(b" ")
    if not complete and not sep and b"\r" not in verb:
        if not verb:
            return None
        v = verb.upper()
        return None if any(c.startswith(v) for c in allowed) else False
    return verb.rstrip(b"\r").upper() in allowed


def probe_tc(data: bytes, *, midstream: bool = False) -> bool | None:
    """Does the server's first line look like FTP? True / False / None (need data)."""
    line, complete = _first_line(bytes(data[:_PROBE_LOOKAHEAD]))
    if not complete and len(line) < 4:
        if not line:
            return None
        if midstream:
            return None if _REPLY_PREFIX.match(line) else False
        return None if b"220".startswith(line) else False
    m = _REPLY_START.match(line)
    if m is None:
        return False
    if midstream:
        return True
    if m.group(1) != b"220":
        return False
    if not complete and len(data) < _PROBE_LOOKAHEAD:
        return None  # need the whole banner to rule out SMTP
    return b"SMTP" not in line.upper()


def _plausible_command(line: bytes) -> bool:
    return line.partition(b" ")[0].upper() in _KNOWN_COMMANDS


# ---------------------------------------------------------------------------
# Per-direction wire parsers (h11 style, no time, never raise)
# ---------------------------------------------------------------------------


@frozen
class CommandLine:
    command: str  # upper-cased verb
    arg: str
    arg_truncated: bool  # cut at max_arg_length or with the line


@frozen
class ReplyMessage:
    code: int
    text: str
    text_truncated: bool
    lines: int  # 1 for a single-line reply


@frozen
class ParseIssue:
    name: str  # a WEIRD_NAMES entry
    detail: str = ""


@frozen
class TlsStart:
    """A line would start with a TLS handshake record while ``expect_tls``."""


class _LineReader:
    """Bounded LF-terminated line splitter; drops one CR before the LF."""

    __slots__ = ("_buf", "_scan", "_discard", "_max")

    def __init__(self, max_line: int) -> None:
        self._buf = bytearray()
        self._scan = 0  # bytes already searched for LF
        self._discard = False  # inside an over-long line: drop up to next LF
        self._max = max_line

    def next_byte(self) -> int | None:
        """First byte of the next line, if it is buffered."""
        return None if self._discard or not self._buf else self._buf[0]

    def feed(self, data: bytes) -> None:
        if self._discard:
            i = data.find(b"\n")
            if i < 0:
                return
            data = data[i + 1 :]
            self._discard = False
        buf = self._buf
        if len(buf) > self._max + 1 and buf.find(b"\n", self._scan) < 0:
            # The unfinished line is already too long and will be cut at
            # _max: keep none of its further bytes (bounded even if the
            # caller feeds without draining).
            self._scan = len(buf)
            i = data.find(b"\n")
            if i < 0:
                return
            data = data[i:]
        buf += data

    def next_line(self) -> tuple[bytes, bool] | None:
        """(line without terminator, was_cut) or None if no complete line."""
        buf = self._buf
        i = buf.find(b"\n", self._scan)
        if i >= 0:
            end = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
            cut = end > self._max
            line = bytes(buf[: min(end, self._max)])
            del buf[: i + 1]
            self._scan = 0
            return line, cut
        if len(buf) > self._max + 1:  # +1: a CR may still be followed by LF
            line = bytes(buf[: self._max])
            buf.clear()
            self._scan = 0
            self._discard = True
            return line, True
        self._scan = len(buf)
        return None

    def take_rest(self) -> tuple[bytes, bool] | None:
        """The unterminated tail as a last line (end of stream)."""
        rest = bytes(self._buf).rstrip(b"\r")
        self.reset()
        if not rest:
            return None
        return rest[: self._max], len(rest) > self._max

    def reset(self) -> None:
        self._buf.clear()
        self._scan = 0
        self._discard = False


class _ParserBase:
    __slots__ = ("_limits", "_lines", "_out", "_resync", "expect_tls")

    def __init__(self, limits: FtpLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._lines = _LineReader(limits.max_line_length)
        self._out: deque[CommandLine | ReplyMessage | ParseIssue] = deque()
        self._resync = False
        self.expect_tls = False
        """When set, a line starting with 0x16 (a TLS handshake record) is not
        parsed: ``next_event`` drops all buffered input and returns TlsStart."""

    def receive_data(self, data: bytes) -> None:
        self._lines.feed(data)

    def next_event(self) -> CommandLine | ReplyMessage | ParseIssue | TlsStart | NeedData:
        while not self._out:
            if self.expect_tls and self._lines.next_byte() == 0x16:
                self._lines.reset()
                return TlsStart()
            got = self._lines.next_line()
            if got is None:
                return NEED_DATA
            self._line(*got)
        return self._out.popleft()

    def receive_eof(self) -> None:
        rest = self._lines.take_rest()
        if rest is not None:
            self._line(*rest)

    def resync(self) -> None:
        """Drop buffered input; skip lines until one looks like FTP."""
        self._lines.reset()
        self._resync = True

    def _line(self, raw: bytes, cut: bool) -> None:
        raise NotImplementedError


class FtpCommandParser(_ParserBase):
    """Client -> server: command lines."""

    __slots__ = ()

    def _line(self, raw: bytes, cut: bool) -> None:
        raw = _IAC_PREFIX.sub(b"", raw, count=1)
        if not raw.strip(b" \t\r"):
            return
        if self._resync:
            if not _plausible_command(raw):
                return
            self._resync = False
        lim = self._limits
        verb_raw, _, arg_raw = raw.partition(b" ")
        verb = _text(verb_raw[: lim.max_command_length]).upper()
        if cut:
            self._out.append(
                ParseIssue("ftp_line_too_long", f"client line over {lim.max_line_length} bytes, command {verb}")
            )
        if len(verb_raw) > lim.max_command_length or not _VERB.match(verb_raw):
            self._out.append(ParseIssue("ftp_malformed_command", f"verb {verb!r}"))
        if b"\x00" in raw:
            self._out.append(ParseIssue("ftp_nul_in_line", f"command {verb}"))
        arg, arg_cut = _cap(_text(arg_raw), lim.max_arg_length)
        self._out.append(CommandLine(verb, arg, arg_cut or cut))


class FtpReplyParser(_ParserBase):
    """Server -> client: single and multi-line replies."""

    __slots__ = ("_code", "_text", "_text_cut", "_nlines")

    def __init__(self, limits: FtpLimits = DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._code: bytes | None = None  # code of the multi-line reply in progress
        self._text = ""
        self._text_cut = False
        self._nlines = 0

    def receive_eof(self) -> None:
        super().receive_eof()
        if self._code is not None:
            self._out.append(
                ParseIssue("ftp_unterminated_reply", f"multi-line {self._code.decode()} reply never ended")
            )
            self._code = None

    def resync(self) -> None:
        super().resync()
        self._code = None

    def _line(self, raw: bytes, cut: bool) -> None:
        if self._resync:
            if not _REPLY_START.match(raw):
                return
            self._resync = False
        lim = self._limits
        if cut:
            self._out.append(ParseIssue("ftp_line_too_long", f"server line over {lim.max_line_length} bytes"))
        if b"\x00" in raw:
            self._out.append(ParseIssue("ftp_nul_in_line", "server reply"))
        code = self._code
        if code is not None:  # inside a multi-line reply
            if raw[:3] == code and (len(raw) == 3 or raw[3] == 0x20):
                self._add(raw[4:], cut)
                self._finish()
            elif raw[:3] == code and raw[3] == 0x2D:  # "230-" repeated on every line
                self._add(raw[4:], cut)
            else:
                self._add(raw, cut)
            return
        m = _REPLY_START.match(raw)
        if m is None:
            self._out.append(ParseIssue("ftp_malformed_reply", _text(raw[:64])))
            return
        self._code, self._text, self._text_cut, self._nlines = m.group(1), "", False, 0
        self._add(raw[4:], cut)
        if m.group(2) != b"-":
            self._finish()

    def _add(self, raw: bytes, cut: bool) -> None:
        """Append one line's text, keeping at most max_text_length characters."""
        self._nlines += 1
        piece = _text(raw) if self._nlines == 1 else "\n" + _text(raw)
        room = self._limits.max_text_length - len(self._text)
        if len(piece) > room:
            piece = piece[: max(room, 0)]
            cut = True
        self._text += piece
        self._text_cut = self._text_cut or cut

    def _finish(self) -> None:
        assert self._code is not None
        self._out.append(ReplyMessage(int(self._code), self._text, self._text_cut, self._nlines))
        self._code = None
        self._text = ""


# ---------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    seq: int
    command: str
    arg: str
    arg_truncated: bool
    data: FtpDataCommand | None = None  # set for transfer commands
    announced_size: int | None = None


@frozen
class _Channel:
    seq: int
    mode: str


_ANNOUNCED_SIZE = re.compile(r"\(([0-9]{1,20}) bytes\)", re.ASCII)
_SIZE_REPLY = re.compile(r"\s*([0-9]{1,20})\s*", re.ASCII)


def _outcome(code: int) -> str:
    if 200 <= code < 300:
        return "complete"
    if code >= 400:
        return "failed"
    return "unexpected"


def _data_result(cmd: FtpDataCommand, ts: int, code: int, outcome: str, size: int | None) -> FtpDataResult:
    return FtpDataResult(
        ts,
        cmd.seq,
        cmd.command,
        cmd.arg,
        cmd.arg_truncated,
        cmd.direction,
        cmd.mode,
        cmd.channel_seq,
        code,
        outcome,
        size,
    )


class FtpAnalyzer(Analyzer):
    """One FTP control connection (see the module docstring)."""

    name = "ftp"
    probe_ts = staticmethod(probe_ts)
    probe_tc = staticmethod(probe_tc)

    def __init__(self, conn: ConnInfo, limits: FtpLimits = DEFAULT_LIMITS, *, midstream: bool = False) -> None:
        super().__init__(conn)
        self.limits = limits
        self.state = FtpState.UNKNOWN if midstream else FtpState.AWAIT_BANNER
        self._requests = FtpCommandParser(limits)
        self._replies = FtpReplyParser(limits)
        self._pending: deque[_Pending] = deque()
        self._seq = 0
        self._overflow = False  # the pending queue is full (weird already given)
        self._pairing_lost = midstream  # unpaired replies are expected until one pairs
        self._user = ""
        self._user_cut = False
        self._auth_method = ""
        self._channel: _Channel | None = None  # announced, not yet taken by a data command
        self._client_tls = False  # client sent TLS while AUTH awaited its reply
        self._done = False  # TLS upgrade or close(): ignore everything
        self._weirds = 0
        self._client_ip = _ip(conn.orig_h)
        self._server_ip = _ip(conn.resp_h)
        if midstream:
            self._requests.resync()
            self._replies.resync()

    # -- Analyzer interface -------------------------------------------------

    def receive_ts(self, data: bytes, ts: int) -> list[Event]:
        if self._done or self._client_tls or not data:
            return []
        out: list[Event] = []
        self._requests.receive_data(data)
        self._drain_requests(ts, out)
        return out

    def receive_tc(self, data: bytes, ts: int) -> list[Event]:
        if self._done or not data:
            return []
        out: list[Event] = []
        self._replies.receive_data(data)
        self._drain_replies(ts, out)
        return out

    def gap(self, to_server: bool, nbytes: int, ts: int) -> list[Event]:
        if self._done:
            return []
        out: list[Event] = []
        where = "to server" if to_server else "to client"
        self._weird(out, ts, "ftp_content_gap", f"{nbytes} bytes missing {where}")
        (self._requests if to_server else self._replies).resync()
        self._forget_pending(ts, out, "gap")
        self._pairing_lost = True
        self._fire(Trigger.GAP, ts, out)
        return out

    def close(self, ts: int) -> list[Event]:
        if self._done:
            return []
        out: list[Event] = []
        if not self._client_tls:
            self._requests.receive_eof()
            self._drain_requests(ts, out)
        self._replies.receive_eof()
        self._drain_replies(ts, out)
        if not self._done:
            self._forget_pending(ts, out, "unanswered")
        self._stop()
        return out

    # -- plumbing -----------------------------------------------------------

    def _drain_requests(self, ts: int, out: list[Event]) -> None:
        parser = self._requests
        while not self._done:
            pending = self._pending
            parser.expect_tls = bool(pending) and any(p.command == "AUTH" for p in pending)
            ev = parser.next_event()
            if ev is NEED_DATA:
                return
            if isinstance(ev, CommandLine):
                self._on_command(ev, ts, out)
            elif isinstance(ev, ParseIssue):
                self._weird(out, ts, ev.name, ev.detail)
            elif isinstance(ev, TlsStart):
                # A TLS record (ClientHello) where a line should start, with
                # AUTH awaiting its reply: the client did not wait for the 234
                # (or the capture order crossed). Never parse the rest of this
                # direction; a 234 still reports the upgrade.
                self._client_tls = True
                return

    def _drain_replies(self, ts: int, out: list[Event]) -> None:
        parser = self._replies
        while not self._done:
            ev = parser.next_event()
            if ev is NEED_DATA:
                return
            if isinstance(ev, ReplyMessage):
                self._on_reply(ev, ts, out)
            elif isinstance(ev, ParseIssue):
                self._weird(out, ts, ev.name, ev.detail)

    def _stop(self) -> None:
        self._done = True
        self._pending.clear()
        self._requests.resync()  # frees buffered bytes
        self._replies.resync()

    def _weird(self, out: list[Event], ts: int, name: str, detail: str = "") -> None:
        limit = self.limits.max_weirds
        if self._weirds < limit:
            out.append(Weird(ts, name, detail[: self.limits.max_weird_detail], self.name))
        elif self._weirds == limit:
            out.append(Weird(ts, "ftp_weird_limit_reached", f"{limit} weirds", self.name))
        self._weirds += 1

    def _fire(self, trigger: Trigger, ts: int, out: list[Event], detail: str = "") -> None:
        nxt = TRANSITIONS[self.state].get(trigger)
        if nxt is None:
            where = f"in state {self.state.value}" + (f", {detail}" if detail else "")
            self._weird(out, ts, f"ftp_unexpected_{trigger.value}", where)
            nxt = FtpState.UNKNOWN
        self.state = nxt

    def _forget_pending(self, ts: int, out: list[Event], outcome: str) -> None:
        for p in self._pending:
            if p.data is not None:
                out.append(_data_result(p.data, ts, 0, outcome, p.announced_size))
        self._pending.clear()
        self._overflow = False

    def _expect(self, ts: int, out: list[Event], seq: int, mode: str, orig_h: str, resp_h: str, port: int) -> None:
        self._channel = _Channel(seq, mode)
        out.append(
            ExpectConnection(
                ts,
                "tcp",
                orig_h,
                None,
                resp_h,
                port,
                "ftp-data",
                ts + self.limits.data_channel_timeout_us,
                FtpDataChannel(self.conn.uid, seq, mode),
            )
        )

    # -- client side --------------------------------------------------------

    def _on_command(self, line: CommandLine, ts: int, out: list[Event]) -> None:
        self._seq += 1
        seq, cmd = self._seq, line.command
        arg, arg_cut = ("", False) if cmd in _SECRET_COMMANDS else (line.arg, line.arg_truncated)
        out.append(FtpRequest(ts, seq, cmd, arg, arg_cut))
        pending = _Pending(seq, cmd, arg, arg_cut)
        queued = len(self._pending) < self.limits.max_pending_commands
        if queued:
            self._pending.append(pending)
        elif not self._overflow:
            self._overflow = True
            self._weird(
                out,
                ts,
                "ftp_too_many_pending_commands",
                f"{len(self._pending)} commands await a reply; {cmd} not tracked",
            )
        if cmd == "USER":
            self._user, self._user_cut = arg, arg_cut
        elif cmd == "AUTH":
            self._auth_method = "AUTH " + arg.strip().upper()[:16]
        elif cmd == "PORT" or cmd == "EPRT":
            self._on_port(pending, ts, out)
        elif cmd in DATA_DIRECTIONS:
            channel, self._channel = self._channel, None
            ev = FtpDataCommand(
                ts,
                seq,
                cmd,
                arg,
                arg_cut,
                DATA_DIRECTIONS[cmd],
                channel.mode if channel else "",
                channel.seq if channel else 0,
            )
            out.append(ev)
            if queued:
                pending.data = ev
            else:
                out.append(_data_result(ev, ts, 0, "untracked", None))

    def _on_port(self, p: _Pending, ts: int, out: list[Event]) -> None:
        self._channel = None  # a new announcement replaces the previous one
        try:
            hp = parse_port_arg(p.arg) if p.command == "PORT" else parse_eprt_arg(p.arg)
        except FtpAddressError as e:
            self._weird(out, ts, "ftp_bad_port" if p.command == "PORT" else "ftp_bad_eprt", str(e))
            return
        if self._client_ip is None or _ip(hp.host) != self._client_ip:
            self._weird(
                out, ts, "ftp_bounce", f"{p.command} to {hp.host} port {hp.port}; control client is {self.conn.orig_h}"
            )
            return
        self._expect(ts, out, p.seq, "active", self.conn.resp_h, self.conn.orig_h, hp.port)

    # -- server side --------------------------------------------------------

    def _on_reply(self, msg: ReplyMessage, ts: int, out: list[Event]) -> None:
        code = msg.code
        if self.state is FtpState.AWAIT_BANNER or (
            self.state is FtpState.UNKNOWN and code == 220 and not self._pending
        ):
            out.append(FtpReply(ts, 0, code, msg.text, msg.text_truncated, ""))
            if code < 200:
                greeting = Trigger.GREETING_DELAY
            elif code < 300:
                greeting = Trigger.GREETING
            elif code < 400:
                greeting = Trigger.BAD_GREETING
            else:
                greeting = Trigger.GREETING_REFUSED
            self._fire(greeting, ts, out, f"reply {code}")
            return

        p = self._pending[0] if self._pending else None
        final = code >= 200
        if p is None:
            if code != 421 and not self._pairing_lost:
                self._weird(out, ts, "ftp_reply_without_command", f"reply {code}")
            out.append(FtpReply(ts, 0, code, msg.text, msg.text_truncated, ""))
        else:
            out.append(FtpReply(ts, p.seq, code, msg.text, msg.text_truncated, p.command))
            if final:
                self._pending.popleft()
                self._pairing_lost = False
                self._overflow = False  # room again: a new overflow gets a new weird
            elif p.data is not None and p.announced_size is None:
                m = _ANNOUNCED_SIZE.search(msg.text)
                if m is not None:
                    p.announced_size = int(m.group(1))

        # Announcements by code, whatever they pair with (robust to misalignment).
        if code == 227:
            self._on_pasv(msg.text, p, ts, out)
        elif code == 229:
            self._on_epsv(msg.text, p, ts, out)
        elif code == 234:
            method = p.arg.strip().upper()[:16] if p is not None and p.command == "AUTH" else ""
            out.append(FtpTlsUpgrade(ts, p.seq if p else 0, f"AUTH {method}" if method else self._auth_method, code))
            self._fire(Trigger.TLS_OK, ts, out)  # every live state maps it to TLS
            self._stop()
            return

        trigger = self._exchange(p, msg, ts, out) if p is not None and final else None
        if code == 421:
            trigger = Trigger.CLOSING
        if trigger is not None:
            self._fire(trigger, ts, out, f"{p.command if p else 'no command'} -> {code}")

    def _exchange(self, p: _Pending, msg: ReplyMessage, ts: int, out: list[Event]) -> Trigger | None:
        """A command got its final reply: per-command events and trigger."""
        code, cmd = msg.code, p.command
        trigger: Trigger | None = None
        if cmd == "USER":
            if code < 300:
                trigger = Trigger.USER_OK
            elif code < 400:
                trigger = Trigger.NEED_PASS
            else:
                trigger = Trigger.LOGIN_FAILED
            if trigger is not Trigger.NEED_PASS:
                out.append(FtpLogin(ts, p.seq, self._user, self._user_cut, False, code < 300, code))
        elif cmd == "PASS":
            if code < 300 or code >= 400:
                trigger = Trigger.LOGIN_OK if code < 300 else Trigger.LOGIN_FAILED
                out.append(FtpLogin(ts, p.seq, self._user, self._user_cut, True, code < 300, code))
        elif cmd == "QUIT":
            if code < 300:
                trigger = Trigger.CLOSING
        elif cmd == "REIN":
            if code == 220:
                trigger = Trigger.REINIT
        elif cmd == "SIZE":
            if code == 213:
                m = _SIZE_REPLY.fullmatch(msg.text)
                if m is None:
                    self._weird(out, ts, "ftp_bad_size_reply", msg.text[:64])
                else:
                    out.append(FtpSize(ts, p.seq, p.arg, p.arg_truncated, int(m.group(1))))
        elif cmd == "PORT" or cmd == "EPRT":
            if code >= 300 and self._channel is not None and self._channel.seq == p.seq:
                self._channel = None  # refused: the next data command has no channel
        if p.data is not None:
            out.append(_data_result(p.data, ts, code, _outcome(code), p.announced_size))
        return trigger

    def _channel_seq(self, p: _Pending | None) -> int:
        if p is not None:
            return p.seq
        self._seq += 1  # an announcement with no command gets its own number
        return self._seq

    def _on_pasv(self, text: str, p: _Pending | None, ts: int, out: list[Event]) -> None:
        try:
            hp = parse_pasv_reply(text)
        except FtpAddressError as e:
            self._weird(out, ts, "ftp_bad_pasv_reply", str(e))
            return
        if self._server_ip is None or _ip(hp.host) != self._server_ip:
            self._weird(
                out,
                ts,
                "ftp_pasv_address_mismatch",
                f"227 advertises {hp.host}, control server is {self.conn.resp_h}: expecting the latter",
            )
        self._expect(ts, out, self._channel_seq(p), "passive", self.conn.orig_h, self.conn.resp_h, hp.port)

    def _on_epsv(self, text: str, p: _Pending | None, ts: int, out: list[Event]) -> None:
        try:
            hp = parse_epsv_reply(text)
        except FtpAddressError as e:
            self._weird(out, ts, "ftp_bad_epsv_reply", str(e))
            return
        self._expect(ts, out, self._channel_seq(p), "passive", self.conn.orig_h, self.conn.resp_h, hp.port)
