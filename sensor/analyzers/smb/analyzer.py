"""SMB analyzer (sans-IO): NetBIOS session service, SMB1 and SMB2/3 on TCP 445/139.

Bytes and packet time in, events out; no sockets, files or clocks. Layers:
the per-direction NetBIOS framer (:class:`NbssFramer`, h11 style, with
``find_frame_start`` to resynchronise), the SMB1/SMB2 command parsers, and
the session :class:`SmbAnalyzer` (``receive_ts``/``receive_tc``, ``gap``,
``close``, ``probe_ts``/``probe_tc``). Bounds: :class:`SmbLimits` (PDU
size -- READ/WRITE data is counted from headers, never buffered -- open
files, pending requests, trees, sessions, name lengths, dialects).
Malformed input is a named Weird; nothing raises.

Specification -- API, limits, events, weird names, framing, what is not
done: docs/analyzers/smb.md.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from sensor.analyzers.base import Analyzer, ConnInfo
from sensor.core.events import NEED_DATA, Event, Weird
from sensor.core.frozen import frozen

__all__ = [
    "FramerNotice",
    "NbssFramer",
    "NbssMessage",
    "NtlmInfo",
    "SmbAnalyzer",
    "SmbCompressed",
    "SmbEncrypted",
    "SmbEncryptedSummary",
    "SmbFileOpen",
    "SmbFileSummary",
    "SmbLimits",
    "SmbNegotiate",
    "SmbNetbiosSession",
    "SmbParseError",
    "SmbSessionSetup",
    "SmbStats",
    "SmbTreeConnect",
    "SmbTreeSummary",
    "decode_netbios_name",
    "dialect_name",
    "find_frame_start",
    "parse_ntlmssp",
    "status_name",
]

# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@frozen
class SmbNetbiosSession(Event):
    called_name: str
    calling_name: str
    accepted: bool | None
    error: str = ""


@frozen
class SmbNegotiate(Event):
    dialects_offered: tuple[str, ...]
    dialect: str
    cipher: str = ""
    netname: str = ""
    status: str = ""
    truncated: bool = False


@frozen
class SmbSessionSetup(Event):
    user: str
    domain: str
    workstation: str
    status: str
    session_id: str = ""
    auth: str = "unknown"
    anonymous: bool = False
    guest: bool = False
    encrypt_data: bool = False
    truncated: bool = False


@frozen
class SmbTreeConnect(Event):
    path: str
    tree_id: int
    share_type: str
    status: str
    user: str = ""
    truncated: bool = False


@frozen
class SmbFileOpen(Event):
    name: str
    file_id: str
    tree: str
    status: str
    disposition: str = ""
    access: tuple[str, ...] = ()
    create_action: str = ""
    size: int = 0
    is_dir: bool = False
    user: str = ""
    truncated: bool = False


@frozen
class SmbFileSummary(Event):
    name: str
    file_id: str
    tree: str
    bytes_read: int
    bytes_written: int
    reads: int = 0
    writes: int = 0
    direction: str = "none"
    closed: bool = True
    is_dir: bool = False
    error: str = ""
    user: str = ""
    truncated: bool = False
    claimed_read: int = 0  # the READ responses' DataLength fields, summed (bytes_read: what moved)
    claimed_written: int = 0  # the WRITE requests' Length fields, summed (bytes_written: what moved)
    share_type: str = ""  # the tree's: disk, pipe, print ("" when its connect was not seen)
    opened: bool = False  # its successful CREATE / NT_CREATE_ANDX response was seen
    disposition: str = ""  # the create request's CreateDisposition
    access: tuple[str, ...] = ()  # the create request's DesiredAccess, as hints (read, write, ...)


@frozen
class SmbTreeSummary(Event):
    path: str
    tree_id: int
    bytes_read: int
    bytes_written: int
    files_opened: int
    disconnected: bool


@frozen
class SmbEncrypted(Event):
    session_id: str
    cipher: str = ""


@frozen
class SmbCompressed(Event):
    algorithm: str
    chained: bool


@frozen
class SmbEncryptedSummary(Event):
    frames_ts: int
    frames_tc: int
    bytes_ts: int
    bytes_tc: int


# --------------------------------------------------------------------------
# Limits and counters
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmbLimits:
    max_pdu_size: int = 256 * 1024
    max_open_files: int = 1024
    max_pending_requests: int = 512
    max_trees: int = 256
    max_sessions: int = 64
    max_name_length: int = 1024
    max_dialects: int = 64


@dataclass(slots=True)
class SmbStats:
    frames_ts: int = 0
    frames_tc: int = 0
    bytes_skipped_ts: int = 0  # not analysed: resync scans
    bytes_skipped_tc: int = 0
    encrypted_frames_ts: int = 0
    encrypted_frames_tc: int = 0
    encrypted_bytes_ts: int = 0
    encrypted_bytes_tc: int = 0
    compressed_frames: int = 0
    unmatched_responses: int = 0
    gaps: int = 0


# --------------------------------------------------------------------------
# Protocol tables
# --------------------------------------------------------------------------

_SMB2: Final = b"\xfeSMB"
_SMB1: Final = b"\xffSMB"
_TRANSFORM: Final = b"\xfdSMB"
_COMPRESSED: Final = b"\xfcSMB"

_DIALECTS: Final = {
    0x0202: "SMB 2.0.2",
    0x0210: "SMB 2.1",
    0x0222: "SMB 2.2.2",
    0x0224: "SMB 2.2.4",
    0x0300: "SMB 3.0",
    0x0302: "SMB 3.0.2",
    0x0310: "SMB 3.1.0",
    0x0311: "SMB 3.1.1",
    0x02FF: "SMB 2.???",
}

_CIPHERS: Final = {1: "AES-128-CCM", 2: "AES-128-GCM", 3: "AES-256-CCM", 4: "AES-256-GCM"}
_COMPRESSION: Final = {0: "NONE", 1: "LZNT1", 2: "LZ77", 3: "LZ77+Huffman", 4: "Pattern_V1", 5: "LZ4"}

_STATUS: Final = {
    0x00000000: "STATUS_SUCCESS",
    0x00000103: "STATUS_PENDING",
    0x0000010C: "STATUS_NOTIFY_ENUM_DIR",
    0x80000005: "STATUS_BUFFER_OVERFLOW",
    0x80000006: "STATUS_NO_MORE_FILES",
    0x8000002D: "STATUS_STOPPED_ON_SYMLINK",
    0xC0000003: "STATUS_INVALID_INFO_CLASS",
    0xC0000008: "STATUS_INVALID_HANDLE",
    0xC000000D: "STATUS_INVALID_PARAMETER",
    0xC000000F: "STATUS_NO_SUCH_FILE",
    0xC0000010: "STATUS_INVALID_DEVICE_REQUEST",
    0xC0000011: "STATUS_END_OF_FILE",
    0xC0000016: "STATUS_MORE_PROCESSING_REQUIRED",
    0xC0000022: "STATUS_ACCESS_DENIED",
    0xC0000023: "STATUS_BUFFER_TOO_SMALL",
    0xC0000033: "STATUS_OBJECT_NAME_INVALID",
    0xC0000034: "STATUS_OBJECT_NAME_NOT_FOUND",
    0xC0000035: "STATUS_OBJECT_NAME_COLLISION",
    0xC000003A: "STATUS_OBJECT_PATH_NOT_FOUND",
    0xC0000043: "STATUS_SHARING_VIOLATION",
    0xC0000056: "STATUS_DELETE_PENDING",
    0xC0000061: "STATUS_PRIVILEGE_NOT_HELD",
    0xC0000064: "STATUS_NO_SUCH_USER",
    0xC000006A: "STATUS_WRONG_PASSWORD",
    0xC000006D: "STATUS_LOGON_FAILURE",
    0xC000006E: "STATUS_ACCOUNT_RESTRICTION",
    0xC000006F: "STATUS_INVALID_LOGON_HOURS",
    0xC0000070: "STATUS_INVALID_WORKSTATION",
    0xC0000071: "STATUS_PASSWORD_EXPIRED",
    0xC0000072: "STATUS_ACCOUNT_DISABLED",
    0xC000007F: "STATUS_DISK_FULL",
    0xC000009A: "STATUS_INSUFFICIENT_RESOURCES",
    0xC00000A2: "STATUS_MEDIA_WRITE_PROTECTED",
    0xC00000B5: "STATUS_IO_TIMEOUT",
    0xC00000BA: "STATUS_FILE_IS_A_DIRECTORY",
    0xC00000BB: "STATUS_NOT_SUPPORTED",
    0xC00000BE: "STATUS_BAD_NETWORK_PATH",
    0xC00000C9: "STATUS_NETWORK_NAME_DELETED",
    0xC00000CC: "STATUS_BAD_NETWORK_NAME",
    0xC0000101: "STATUS_DIRECTORY_NOT_EMPTY",
    0xC0000103: "STATUS_NOT_A_DIRECTORY",
    0xC0000120: "STATUS_CANCELLED",
    0xC0000128: "STATUS_FILE_CLOSED",
    0xC000015B: "STATUS_LOGON_TYPE_NOT_GRANTED",
    0xC000019C: "STATUS_FS_DRIVER_REQUIRED",
    0xC0000203: "STATUS_USER_SESSION_DELETED",
    0xC0000224: "STATUS_PASSWORD_MUST_CHANGE",
    0xC0000225: "STATUS_NOT_FOUND",
    0xC0000234: "STATUS_ACCOUNT_LOCKED_OUT",
    0xC000035C: "STATUS_NETWORK_SESSION_EXPIRED",
    0xC0000388: "STATUS_DOWNGRADE_DETECTED",
}

_ST_SUCCESS: Final = 0
_ST_PENDING: Final = 0x00000103
_ST_BUFFER_OVERFLOW: Final = 0x80000005
_ST_MORE_PROCESSING: Final = 0xC0000016

_DISPOSITIONS: Final = {
    0: "FILE_SUPERSEDE",
    1: "FILE_OPEN",
    2: "FILE_CREATE",
    3: "FILE_OPEN_IF",
    4: "FILE_OVERWRITE",
    5: "FILE_OVERWRITE_IF",
}
_CREATE_ACTIONS: Final = {0: "superseded", 1: "opened", 2: "created", 3: "overwritten"}
_SHARE_TYPES: Final = {1: "disk", 2: "pipe", 3: "print"}
_NETBIOS_ERRORS: Final = {
    0x80: "not listening on called name",
    0x81: "not listening for calling name",
    0x82: "called name not present",
    0x83: "insufficient resources",
    0x8F: "unspecified error",
}

_SMB2_COMMANDS: Final = (
    "NEGOTIATE",
    "SESSION_SETUP",
    "LOGOFF",
    "TREE_CONNECT",
    "TREE_DISCONNECT",
    "CREATE",
    "CLOSE",
    "FLUSH",
    "READ",
    "WRITE",
    "LOCK",
    "IOCTL",
    "CANCEL",
    "ECHO",
    "QUERY_DIRECTORY",
    "CHANGE_NOTIFY",
    "QUERY_INFO",
    "SET_INFO",
    "OPLOCK_BREAK",
)
_C2_NEGOTIATE: Final = 0
_C2_SESSION_SETUP: Final = 1
_C2_TREE_CONNECT: Final = 3
_C2_TREE_DISCONNECT: Final = 4
_C2_CREATE: Final = 5
_C2_CLOSE: Final = 6
_C2_READ: Final = 8
_C2_WRITE: Final = 9

_F2_RESPONSE: Final = 0x00000001
_F2_ASYNC: Final = 0x00000002
_F2_RELATED: Final = 0x00000004
_RELATED_FID: Final = b"\xff" * 16

_C1_CLOSE: Final = 0x04
_C1_READ_ANDX: Final = 0x2E
_C1_WRITE_ANDX: Final = 0x2F
_C1_TREE_DISCONNECT: Final = 0x71
_C1_NEGOTIATE: Final = 0x72
_C1_SESSION_SETUP_ANDX: Final = 0x73
_C1_LOGOFF_ANDX: Final = 0x74
_C1_TREE_CONNECT_ANDX: Final = 0x75
_C1_NT_CREATE_ANDX: Final = 0xA2
_C1_ANDX: Final = frozenset(
    {
        0x24,
        _C1_READ_ANDX,
        _C1_WRITE_ANDX,
        0x2D,
        _C1_SESSION_SETUP_ANDX,
        _C1_LOGOFF_ANDX,
        _C1_TREE_CONNECT_ANDX,
        _C1_NT_CREATE_ANDX,
    }
)
_F1_REPLY: Final = 0x80
_F1_2_UNICODE: Final = 0x8000
_F1_2_NT_STATUS: Final = 0x4000
_F1_2_EXT_SEC: Final = 0x0800

_NTLMSSP_SIG: Final = b"NTLMSSP\x00"
_NTLM_UNICODE: Final = 0x00000001
_KRB5_OIDS: Final = (
    bytes.fromhex("06092a864886f712010202"),  # 1.2.840.113554.1.2.2
    bytes.fromhex("06092a864882f712010202"),  # 1.2.840.48018.1.2.2 (MS)
)

_KIND_CMD2: Final = {
    "tree": _C2_TREE_CONNECT,
    "tdis": _C2_TREE_DISCONNECT,
    "create": _C2_CREATE,
    "close": _C2_CLOSE,
    "read": _C2_READ,
    "write": _C2_WRITE,
}

_HEAD_BYTES: Final = 128  # covers every fixed part read from a streamed PDU
_MAX_SMB1_ANDX: Final = 8
_DETAIL_MAX: Final = 200


def dialect_name(revision: int) -> str:
    """SMB2 DialectRevision → "SMB 3.1.1" style name (unknown: "0x....")."""
    return _DIALECTS.get(revision, f"0x{revision:04x}")


def status_name(code: int) -> str:
    """NT status → "STATUS_ACCESS_DENIED" style name (unknown: "0xC0000123")."""
    return _STATUS.get(code, f"0x{code:08X}")


def _direction(read: int, written: int) -> str:
    if read and written:
        return "both"
    if read:
        return "download"
    if written:
        return "upload"
    return "none"


def _access_hints(mask: int) -> tuple[str, ...]:
    hints = set()
    if mask & (0x1 | 0x80000000):
        hints.add("read")
    if mask & (0x2 | 0x40000000):
        hints.add("write")
    if mask & 0x4:
        hints.add("append")
    if mask & 0x10000:
        hints.add("delete")
    if mask & (0x20 | 0x20000000):
        hints.add("execute")
    if mask & 0x10000000:
        hints.add("all")
    if mask & 0x02000000:
        hints.add("maximum")
    return tuple(sorted(hints))


# --------------------------------------------------------------------------
# Pure parsers
# --------------------------------------------------------------------------


class SmbParseError(ValueError):
    """Raised by the pure parsers; the analyzer turns it into a named Weird."""


_Malformed = SmbParseError


def _u8(b: bytes, off: int) -> int:
    if off < 0 or off >= len(b):
        raise _Malformed(f"byte at {off} beyond {len(b)}")
    return b[off]


def _u16(b: bytes, off: int) -> int:
    if off < 0:
        raise _Malformed("negative offset")
    v: int = struct.unpack_from("<H", b, off)[0]
    return v


def _u32(b: bytes, off: int) -> int:
    if off < 0:
        raise _Malformed("negative offset")
    v: int = struct.unpack_from("<I", b, off)[0]
    return v


def _u64(b: bytes, off: int) -> int:
    if off < 0:
        raise _Malformed("negative offset")
    v: int = struct.unpack_from("<Q", b, off)[0]
    return v


def _slice(b: bytes, off: int, length: int, what: str) -> bytes:
    if off < 0 or length < 0 or off + length > len(b):
        raise _Malformed(f"{what}: {length} bytes at {off} beyond {len(b)}")
    return b[off : off + length]


def _decode(raw: bytes, unicode: bool, limit: int) -> tuple[str, bool]:
    """Decode a wire string (UTF-16LE or OEM), strip NULs, cap to ``limit`` chars."""
    unit = 2 if unicode else 1
    truncated = len(raw) > (limit + 1) * unit
    if truncated:
        raw = raw[: (limit + 1) * unit]
    if unicode:
        if len(raw) % 2:
            raw = raw[:-1]
        text = raw.decode("utf-16-le", "replace")
    else:
        text = raw.decode("latin-1")
    text = text.rstrip("\x00")
    if len(text) > limit:
        text, truncated = text[:limit], True
    return text, truncated


def _cstring(b: bytes, off: int, unicode: bool, limit: int) -> tuple[str, bool, int]:
    """NUL-terminated string at ``off`` → (text, truncated, offset after)."""
    if unicode:
        end = off
        while end + 1 < len(b) and (b[end] or b[end + 1]):
            end += 2
        text, trunc = _decode(b[off:end], True, limit)
        return text, trunc, end + 2
    end = b.find(b"\x00", off)
    if end < 0:
        end = len(b)
    text, trunc = _decode(b[off:end], False, limit)
    return text, trunc, end + 1


def decode_netbios_name(data: bytes, off: int = 0, limit: int = 1024) -> tuple[str, int]:
    """First-level decode (RFC 1001 14.1) of one encoded name at ``off``.

    Returns (``"NAME<xx>"`` plus ``.scope`` when present, offset after it).
    Raises :class:`SmbParseError` on a bad length byte or a character outside
    'A'..'P' (``struct.error``/IndexError cannot escape: lengths are checked)."""
    if _u8(data, off) != 32:
        raise _Malformed(f"name length byte {data[off]} != 32")
    enc = _slice(data, off + 1, 32, "netbios name")
    raw = bytearray(16)
    for k in range(16):
        hi, lo = enc[2 * k] - 0x41, enc[2 * k + 1] - 0x41
        if not (0 <= hi < 16 and 0 <= lo < 16):
            raise _Malformed("netbios name character outside A..P")
        raw[k] = (hi << 4) | lo
    name = raw[:15].decode("latin-1").rstrip(" ")
    text = f"{name}<{raw[15]:02x}>"
    pos = off + 33
    labels: list[str] = []
    while True:
        n = _u8(data, pos)
        pos += 1
        if n == 0:
            break
        if n > 63:
            raise _Malformed("netbios scope label too long")
        labels.append(_slice(data, pos, n, "scope label").decode("latin-1"))
        pos += n
    if labels:
        text += "." + ".".join(labels)
    return text[:limit], pos


@frozen
class NtlmInfo:
    """What is kept from an NTLMSSP message (never responses or keys)."""

    msg_type: int
    user: str = ""
    domain: str = ""
    workstation: str = ""
    anonymous: bool = False
    truncated: bool = False


def parse_ntlmssp(blob: bytes, limit: int = 1024) -> NtlmInfo | None:
    """Find ``NTLMSSP\\0`` in a (SPNEGO/GSS) blob and parse the message.

    Returns None when there is no NTLMSSP message; raises :class:`SmbParseError`
    when the message is cut short or an AUTHENTICATE field points outside it."""
    i = blob.find(_NTLMSSP_SIG)
    if i < 0:
        return None
    try:
        return _parse_ntlm_message(blob[i:], limit)
    except struct.error as exc:
        raise SmbParseError(f"NTLMSSP message cut short: {exc}") from None


def _parse_ntlm_message(m: bytes, limit: int) -> NtlmInfo:
    mtype = _u32(m, 8)
    if mtype != 3:
        return NtlmInfo(msg_type=mtype)
    flags = _u32(m, 60)
    unicode = bool(flags & _NTLM_UNICODE)
    trunc = False
    values = []
    for field_off in (28, 36, 44):  # DomainName, UserName, Workstation
        ln, _maxlen, off = struct.unpack_from("<HHI", m, field_off)
        raw = _slice(m, off, ln, "ntlm field") if ln else b""
        text, t = _decode(raw, unicode, limit)
        trunc |= t
        values.append(text)
    nt_len = _u16(m, 20)
    lm_len = _u16(m, 12)
    anonymous = not values[1] and nt_len == 0 and lm_len <= 1
    return NtlmInfo(3, user=values[1], domain=values[0], workstation=values[2], anonymous=anonymous, truncated=trunc)


def _auth_kind(blob: bytes) -> str:
    if _NTLMSSP_SIG in blob:
        return "ntlmssp"
    if any(oid in blob for oid in _KRB5_OIDS):
        return "kerberos"
    return "unknown"


# --------------------------------------------------------------------------
# NetBIOS session service framing (per direction, h11 style)
# --------------------------------------------------------------------------


@frozen
class NbssMessage:
    """One NetBIOS session message. ``data`` is the whole payload when
    ``complete``, else its first bytes (streamed or oversize: the rest was
    counted, not kept). ``length`` is the payload length from the header."""

    msg_type: int
    data: bytes
    length: int
    complete: bool


@frozen
class FramerNotice:
    """A framing anomaly; the analyzer reports it as ``Weird(name, detail)``."""

    name: str
    detail: str


_HEADER, _HEAD, _BODY, _SKIP, _SCAN = range(5)
_CONTROL_TS: Final = {0x81, 0x85}
_CONTROL_TC: Final = {0x82, 0x83, 0x84, 0x85}
_CONTROL_LEN: Final = {0x82: 0, 0x83: 1, 0x84: 6, 0x85: 0}
_MIN_PAYLOAD: Final = {_SMB2: 64, _SMB1: 35, _TRANSFORM: 52, _COMPRESSED: 16}


def _plausible(buf: bytes | bytearray, i: int) -> int:
    """Strict check of a session-message frame start at ``i``:
    1 plausible, 0 not, -1 need more bytes to decide."""
    if len(buf) < i + 8:
        return -1
    if buf[i] != 0:
        return 0
    length = (buf[i + 1] << 16) | (buf[i + 2] << 8) | buf[i + 3]
    p = i + 4
    magic = bytes(buf[p : p + 4])
    minimum = _MIN_PAYLOAD.get(magic)
    if minimum is None or length < minimum:
        return 0
    if magic == _SMB2:
        if len(buf) < p + 24:
            return -1
        size, _cc, _st, cmd = struct.unpack_from("<HHIH", buf, p + 4)
        nxt = struct.unpack_from("<I", buf, p + 20)[0]
        if size != 64 or cmd > 0x12:
            return 0
        if nxt and (nxt < 64 or nxt % 8 or nxt > length):
            return 0
        return 1
    if magic == _SMB1:
        if len(buf) < p + 33:
            return -1
        wc = buf[p + 32]
        return 1 if 32 + 1 + 2 * wc + 2 <= length else 0
    if magic == _TRANSFORM:
        if len(buf) < p + 44:
            return -1
        orig = struct.unpack_from("<I", buf, p + 36)[0]
        flags = struct.unpack_from("<H", buf, p + 42)[0]
        return 1 if flags == 1 and orig + 52 == length else 0
    # compression transform
    if len(buf) < p + 12:
        return -1
    alg, flags = struct.unpack_from("<HH", buf, p + 8)
    return 1 if alg in _COMPRESSION and flags <= 1 else 0


def _scan(buf: bytes | bytearray, start: int = 0) -> tuple[int, bool]:
    """Find the first plausible session-message frame start at or after ``start``.

    Returns (offset, True) when found; otherwise (offset, False) where the
    bytes before ``offset`` can be discarded (the rest may begin a frame)."""
    pos = start
    while True:
        j = buf.find(b"SMB", pos + 5)
        if j < 0:
            break
        i = j - 5
        r = _plausible(buf, i)
        if r == 1:
            return i, True
        if r == -1:
            return i, False
        pos = i + 1
    return max(start, len(buf) - 7), False


def _plausible_control(data: bytes, to_server: bool) -> bool:
    if len(data) < 4:
        return False
    t, flags = data[0], data[1]
    length = ((flags & 1) << 16) | (data[2] << 8) | data[3]
    if flags & 0xFE:
        return False
    if to_server and t == 0x81:
        try:
            _n, pos = decode_netbios_name(data, 4)
            decode_netbios_name(data, pos)
        except _Malformed:  # the only error it raises: every length is checked
            return False
        return True
    if not to_server and t in (0x82, 0x83):
        return length == _CONTROL_LEN[t]
    return False


def find_frame_start(data: bytes, to_server: bool) -> int:
    """Offset of the first plausible frame start in one direction's bytes, or -1.

    Session messages anywhere (NetBIOS header + SMB magic + consistent SMB
    header); NetBIOS control messages only at offset 0. Every read is
    bounds-checked first, so nothing raises and nothing needs catching."""
    if _plausible_control(bytes(data[:1028]), to_server):
        return 0
    off, found = _scan(data)
    return off if found else -1


def _probe(data: bytes, to_server: bool, midstream: bool) -> bool | None:
    """``probe_ts``/``probe_tc``: every index is checked against ``len(data)``
    before it is read (no catch-all: a bug here raises where tests see it)."""
    if midstream:
        return True if find_frame_start(data, to_server) >= 0 else None
    if len(data) < 4:
        return None if not data or data[0] in (0x00, 0x81, 0x82, 0x83, 0x84) else False
    t = data[0]
    if t == 0x00:
        r = _plausible(data, 0)
        return None if r == -1 else r == 1
    length = ((data[1] & 1) << 16) | (data[2] << 8) | data[3]
    if to_server and t == 0x81 and data[1] == 0 and 68 <= length <= 1024:
        if len(data) < 4 + length:
            return None
        return _plausible_control(bytes(data[: 4 + length]), True)
    if not to_server and t in (0x82, 0x83, 0x84):
        return _plausible_control(bytes(data[:4]), False) or (t == 0x84 and length == 6)
    return False


def _streamable(head: bytes) -> bool:
    """PDUs whose data is counted from header fields, never buffered."""
    magic = head[:4]
    if magic in (_TRANSFORM, _COMPRESSED):
        return True
    if magic == _SMB2 and len(head) >= 64:
        cmd = struct.unpack_from("<H", head, 12)[0]
        flags, nxt = struct.unpack_from("<II", head, 16)
        if nxt:
            return False
        resp = flags & _F2_RESPONSE
        return (cmd == _C2_WRITE and not resp) or (cmd == _C2_READ and bool(resp))
    if magic == _SMB1 and len(head) >= 34:
        cmd, resp, andx = head[4], head[9] & _F1_REPLY, head[33]
        if andx != 0xFF:
            return False
        return (cmd == _C1_WRITE_ANDX and not resp) or (cmd == _C1_READ_ANDX and bool(resp))
    return False


class NbssFramer:
    """Per-direction NetBIOS session service parser (h11 style).

    ``receive_data()`` appends bytes; ``next_event()`` returns the next
    :class:`NbssMessage`, a :class:`FramerNotice`, or ``NEED_DATA``. The
    buffer never holds more than one message of at most ``max_pdu_size``
    (plus the chunk being processed); bytes of streamed/oversize messages
    and of resync scans are dropped as they arrive."""

    __slots__ = (
        "to_server",
        "max_pdu_size",
        "_buf",
        "_state",
        "_length",
        "_type",
        "_skip",
        "_at_start",
        "_ready",
        "bytes_skipped",
    )

    def __init__(self, to_server: bool, max_pdu_size: int = SmbLimits().max_pdu_size) -> None:
        self.to_server = to_server
        self.max_pdu_size = max_pdu_size
        self._buf = bytearray()
        self._state = _HEADER
        self._length = 0
        self._type = 0
        self._skip = 0
        self._at_start = True
        self._ready: deque[NbssMessage | FramerNotice] = deque()
        self.bytes_skipped = 0  # bytes dropped while scanning for a frame start

    # -- input ------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if not data:
            return
        if self._state == _SKIP and not self._buf:
            n = min(self._skip, len(data))
            self._skip -= n
            if not self._skip:
                self._state = _HEADER
            if n == len(data):
                return
            data = data[n:]
        self._buf += data

    def gap(self, nbytes: int) -> bool:
        """``nbytes`` are missing. True when framing stays in sync (the gap
        lies inside a message of known length), False when it rescans."""
        self._at_start = False
        if nbytes <= 0:
            return True
        st = self._state
        if st == _SKIP and not self._buf and nbytes <= self._skip:
            self._skip -= nbytes
            if not self._skip:
                self._state = _HEADER
            return True
        if st in (_HEAD, _BODY):
            remaining = self._length - len(self._buf)
            if 0 <= nbytes <= remaining:
                if st == _BODY and self._type == 0:
                    self._ready.append(NbssMessage(0, bytes(self._buf[:_HEAD_BYTES]), self._length, False))
                self._buf.clear()
                self._skip = remaining - nbytes
                self._state = _SKIP if self._skip else _HEADER
                return True
        self._buf.clear()
        self._skip = 0
        self._state = _SCAN
        return False

    def take_partial(self) -> NbssMessage | None:
        """End of stream before the first bytes of a message that would be
        streamed (a READ response or WRITE request) were all in: hand them over
        as its head, as if the rest were being skipped, so the data they carry
        is counted and what never came is known (``_skip``)."""
        if self._state != _HEAD or self._type != 0 or not self._buf or not _streamable(bytes(self._buf)):
            return None
        head = bytes(self._buf)
        self._buf.clear()
        self._skip = self._length - len(head)
        self._state = _SKIP
        return NbssMessage(0, head, self._length, False)

    def close(self) -> FramerNotice | None:
        """End of stream: report a message cut short."""
        st, have = self._state, len(self._buf)
        notice = None
        if st == _HEADER and have:
            notice = FramerNotice("smb_truncated_pdu", f"{have} bytes of a NetBIOS header")
        elif st in (_HEAD, _BODY):
            notice = FramerNotice("smb_truncated_pdu", f"{have} of {self._length} payload bytes")
        elif st == _SKIP and self._skip:
            notice = FramerNotice("smb_truncated_pdu", f"last {self._skip} payload bytes missing")
        self._buf.clear()
        self._skip = 0
        self._state = _SCAN
        return notice

    def resync(self) -> None:
        """Drop everything buffered and scan for the next frame start."""
        self._buf.clear()
        self._ready.clear()
        self._skip = 0
        self._state = _SCAN

    # -- output -----------------------------------------------------------
    def next_event(self) -> NbssMessage | FramerNotice | object:
        if self._ready:
            return self._ready.popleft()
        buf = self._buf
        while True:
            st = self._state
            if st == _SKIP:
                n = min(self._skip, len(buf))
                if n:
                    del buf[:n]
                    self._skip -= n
                if self._skip:
                    return NEED_DATA
                self._state = _HEADER
            elif st == _HEADER:
                r = self._header()
                if r is not None:
                    return r
            elif st == _HEAD:
                want = min(self._length, _HEAD_BYTES)
                if len(buf) < want:
                    return NEED_DATA
                if self._length <= want:
                    return self._take(self._length)
                head = bytes(buf[:want])
                if _streamable(head) or self._length > self.max_pdu_size:
                    del buf[:want]
                    self._skip = self._length - want
                    self._state = _SKIP
                    return NbssMessage(0, head, self._length, False)
                self._state = _BODY
            elif st == _BODY:
                if len(buf) < self._length:
                    return NEED_DATA
                return self._take(self._length)
            else:  # _SCAN
                off, found = _scan(buf)
                if off:
                    del buf[:off]
                    self.bytes_skipped += off
                if not found:
                    return NEED_DATA
                self._state = _HEADER

    def _strict_start(self) -> bool | object:
        buf = self._buf
        t = buf[0]
        if t == 0x00:
            r = _plausible(buf, 0)
            return NEED_DATA if r == -1 else r == 1
        if t == 0x81 and self.to_server:  # two encoded names: 68 bytes, more with scopes
            length = (buf[2] << 8) | buf[3]
            if len(buf) < 5:
                return NEED_DATA
            return buf[1] == 0 and 68 <= length <= 1024 and buf[4] == 0x20
        return not self.to_server and t in (0x82, 0x83, 0x84)

    def _take(self, n: int) -> NbssMessage:
        msg = NbssMessage(self._type, bytes(self._buf[:n]), n, True)
        del self._buf[:n]
        self._state = _HEADER
        return msg

    def _header(self) -> FramerNotice | object | None:
        """Parse a NetBIOS header at the buffer start. None: state advanced."""
        buf = self._buf
        if len(buf) < 4:
            return NEED_DATA
        t = buf[0]
        why = ""
        if self._at_start:  # the first bytes must pass the strict probe
            r = self._strict_start()
            if r is NEED_DATA:
                return NEED_DATA
            if not r:
                why = "first bytes are not a NetBIOS/SMB frame start"
                t = -1
        if t == -1:
            pass
        elif t == 0x00:
            length = (buf[1] << 16) | (buf[2] << 8) | buf[3]
            if length == 0:  # empty session message: legal, nothing in it
                del buf[:4]
                self._at_start = False
                return None
            if length >= 4 and len(buf) < 8:
                return NEED_DATA
            magic = bytes(buf[4:8])
            minimum = _MIN_PAYLOAD.get(magic)
            if minimum is None:
                why = f"unknown protocol id {magic.hex()}"
            elif length < minimum:
                why = f"session message of {length} bytes too short for {magic[1:].decode()}"
            else:
                del buf[:4]
                self._type, self._length, self._state = 0, length, _HEAD
                self._at_start = False
                return None
        elif t in (_CONTROL_TS if self.to_server else _CONTROL_TC):
            flags = buf[1]
            length = ((flags & 1) << 16) | (buf[2] << 8) | buf[3]
            expected = _CONTROL_LEN.get(t)
            if flags & 0xFE:
                why = f"reserved flag bits 0x{flags:02x}"
            elif expected is not None and length != expected:
                why = f"type 0x{t:02x} with length {length}"
            elif t == 0x81 and not 2 <= length <= min(self.max_pdu_size, 1024):
                why = f"session request of {length} bytes"
            else:
                del buf[:4]
                self._type, self._length, self._state = t, length, _BODY
                self._at_start = False
                return None
        else:
            why = f"type 0x{t:02x} not valid {'to server' if self.to_server else 'to client'}"
        name = "smb_midstream_pickup" if self._at_start else "smb_malformed_header"
        self._at_start = False
        del buf[:1]  # never re-find this spot
        self.bytes_skipped += 1
        self._state = _SCAN
        return FramerNotice(name, why)


# --------------------------------------------------------------------------
# Session state
# --------------------------------------------------------------------------


class _Tree:
    __slots__ = ("tree_id", "path", "share_type", "bytes_read", "bytes_written", "files_opened", "truncated")

    def __init__(self, tree_id: int, path: str = "", share_type: str = "", truncated: bool = False) -> None:
        self.tree_id = tree_id
        self.path = path
        self.share_type = share_type
        self.bytes_read = 0
        self.bytes_written = 0
        self.files_opened = 0
        self.truncated = truncated


class _File:
    __slots__ = (
        "key",
        "file_id",
        "name",
        "tree",
        "is_dir",
        "user",
        "bytes_read",
        "bytes_written",
        "claimed_read",
        "claimed_written",
        "reads",
        "writes",
        "error",
        "close_requested",
        "truncated",
        "disposition",
        "access",
        "opened",
    )

    def __init__(self, name: str, tree: _Tree, user: str = "", truncated: bool = False) -> None:
        self.key: bytes | None = None
        self.file_id = ""
        self.name = name
        self.tree = tree
        self.is_dir = False
        self.user = user
        self.bytes_read = 0  # data bytes the READ responses carried
        self.bytes_written = 0  # data bytes the WRITE requests carried
        self.claimed_read = 0  # what their length fields claimed
        self.claimed_written = 0
        self.reads = 0
        self.writes = 0
        self.error = ""
        self.close_requested = False
        self.truncated = truncated
        self.disposition = ""
        self.access: tuple[str, ...] = ()
        self.opened = False  # the successful create response was seen


class _NegReq:
    __slots__ = ("dialects", "netname", "truncated")

    def __init__(self, dialects: tuple[str, ...], netname: str, truncated: bool) -> None:
        self.dialects = dialects
        self.netname = netname
        self.truncated = truncated


class _Chain:
    """Context of an SMB2 compound: related requests inherit these."""

    __slots__ = ("session_id", "tree_id", "file")

    def __init__(self) -> None:
        self.session_id = 0
        self.tree_id = 0
        self.file: _File | None = None


class _H2:
    __slots__ = ("status", "command", "flags", "next_command", "message_id", "tree_id", "session_id")

    def __init__(self, m: bytes) -> None:
        (self.status, self.command, _credit, self.flags, self.next_command, self.message_id) = struct.unpack_from(
            "<IHHIIQ", m, 8
        )
        self.tree_id = struct.unpack_from("<I", m, 36)[0] if not self.flags & _F2_ASYNC else 0
        self.session_id = struct.unpack_from("<Q", m, 40)[0]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _F2_RESPONSE)

    @property
    def command_name(self) -> str:
        c = self.command
        return _SMB2_COMMANDS[c] if c < len(_SMB2_COMMANDS) else f"0x{c:04x}"


class _H1:
    __slots__ = ("command", "status", "flags", "flags2", "tid", "pid", "uid", "mid")

    def __init__(self, m: bytes) -> None:
        self.command = m[4]
        (self.status, self.flags, self.flags2) = struct.unpack_from("<IBH", m, 5)
        pid_high = struct.unpack_from("<H", m, 12)[0]
        self.tid, pid_low, self.uid, self.mid = struct.unpack_from("<HHHH", m, 24)
        self.pid = (pid_high << 16) | pid_low

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _F1_REPLY)

    @property
    def unicode(self) -> bool:
        return bool(self.flags2 & _F1_2_UNICODE)

    def status_text(self, m: bytes) -> str:
        if self.flags2 & _F1_2_NT_STATUS:
            return status_name(self.status)
        cls, code = m[5], struct.unpack_from("<H", m, 7)[0]
        if cls == 0 and code == 0:
            return "STATUS_SUCCESS"
        return f"DOS_ERROR({cls},{code})"


# A request awaiting its response: a tuple tagged by its kind (mypy narrows on ``t[0] == kind``).
# SMB2 pends them one per message id; SMB1 one "andx" per (pid, mid), holding a request per command.
_Setup: TypeAlias = tuple[Literal["setup"], NtlmInfo | None, str]  # NTLM AUTHENTICATE, auth kind
_Req: TypeAlias = (
    _Setup
    | tuple[Literal["tree"], str, bool]  # path, truncated
    | tuple[Literal["tdis"], int]  # tree id
    | tuple[Literal["create", "close", "read", "write"], _File]
)
_Pending: TypeAlias = _Req | tuple[Literal["andx"], dict[int, _Req]]


class SmbAnalyzer(Analyzer):
    """SMB over TCP 445/139. See the module docstring for the API."""

    name = "smb"

    def __init__(self, conn: ConnInfo, limits: SmbLimits | None = None, *, midstream: bool = False) -> None:
        super().__init__(conn)
        self.limits = limits or SmbLimits()
        self.stats = SmbStats()
        self._framers = {
            True: NbssFramer(True, self.limits.max_pdu_size),
            False: NbssFramer(False, self.limits.max_pdu_size),
        }
        if midstream:  # the pipeline knows it joined late: scan quietly
            for framer in self._framers.values():
                framer.resync()
        self._pending: dict[tuple[int, ...], _Pending] = {}
        self._files: dict[bytes, _File] = {}
        self._trees: dict[tuple[int, int], _Tree] = {}
        self._users: dict[tuple[int, int], str] = {}
        self._nb_request: tuple[str, str] | None = None
        self._neg_req: _NegReq | None = None
        self._cipher = ""
        self._encrypted_seen = False
        self._compressed_seen = False
        self._weird_once: set[str] = set()
        self._closed = False
        # READ/WRITE data is counted as moved only as far as its message carries it:
        self._extent = 0  # bytes of the command being parsed, from its SMB header (streamed: to the message end)
        self._data_end = 0  # end of the data counted last in it (an AndX chain's data never counts twice)
        self._streamed = False  # that message is streamed: its data arrives (or not) after it is parsed
        # per direction, the streamed message whose data is arriving: (file, read, counted, data offset, extent)
        self._inflight: dict[bool, tuple[_File, bool, int, int, int]] = {}

    # -- protocol detection -------------------------------------------------
    @staticmethod
    def probe_ts(data: bytes, *, midstream: bool = False) -> bool | None:
        """Do client→server bytes look like SMB? True / False / None (need data)."""
        return _probe(data, True, midstream)

    @staticmethod
    def probe_tc(data: bytes, *, midstream: bool = False) -> bool | None:
        """Do server→client bytes look like SMB? True / False / None (need data)."""
        return _probe(data, False, midstream)

    # -- Analyzer interface ---------------------------------------------------
    def receive_ts(self, data: bytes, ts: int) -> list[Event]:
        framer = self._framers[True]
        if framer._state == _SKIP and not framer._buf and len(data) < framer._skip and data and not self._closed:
            framer._skip -= len(data)  # inside a READ/WRITE body (the common case, as in _receive)
            return []
        return self._receive(True, data, ts)

    def receive_tc(self, data: bytes, ts: int) -> list[Event]:
        framer = self._framers[False]
        if framer._state == _SKIP and not framer._buf and len(data) < framer._skip and data and not self._closed:
            framer._skip -= len(data)
            return []
        return self._receive(False, data, ts)

    def gap(self, to_server: bool, nbytes: int, ts: int) -> list[Event]:
        out: list[Event] = []
        if self._closed or nbytes <= 0:
            return out
        try:
            self.stats.gaps += 1
            in_sync = self._framers[to_server].gap(nbytes)
            where = "to server" if to_server else "to client"
            how = "inside a message, framing kept" if in_sync else "resynchronising"
            out.append(self._weird(ts, "smb_content_gap", f"{nbytes} bytes {where}; {how}"))
            self._drain(to_server, ts, out)
        except Exception as exc:  # contract: never raise
            self._framers[to_server].resync()
            out.append(self._weird(ts, "smb_analyzer_error", f"gap: {exc!r}"))
        return out

    def close(self, ts: int) -> list[Event]:
        out: list[Event] = []
        if self._closed:
            return out
        self._closed = True
        try:
            for to_server in (True, False):
                head = self._framers[to_server].take_partial()
                if head is not None:
                    self._inflight.pop(to_server, None)
                    self._on_message(to_server, head, ts, out)
            self._cut_short(ts, out)
            for to_server in (True, False):
                notice = self._framers[to_server].close()
                if notice is not None:
                    out.append(self._weird(ts, notice.name, notice.detail))
            self._flush(ts, out)
        except Exception as exc:  # contract: never raise
            out.append(self._weird(ts, "smb_analyzer_error", f"close: {exc!r}"))
        return out

    # -- plumbing -------------------------------------------------------------
    def _weird(self, ts: int, name: str, detail: str = "") -> Weird:
        return Weird(ts, name, detail[:_DETAIL_MAX], analyzer=self.name)

    def _weird_first(self, ts: int, name: str, detail: str, out: list[Event]) -> None:
        if name not in self._weird_once:
            self._weird_once.add(name)
            out.append(self._weird(ts, name, detail))

    def _receive(self, to_server: bool, data: bytes, ts: int) -> list[Event]:
        out: list[Event] = []
        if self._closed or not data:
            return out
        framer = self._framers[to_server]
        if framer._state == _SKIP and not framer._buf and len(data) < framer._skip:
            framer._skip -= len(data)  # inside a READ/WRITE body: nothing to parse
            return out
        try:
            before = framer.bytes_skipped
            framer.receive_data(data)
            self._drain(to_server, ts, out)
            skipped = framer.bytes_skipped - before
            if to_server:
                self.stats.bytes_skipped_ts += skipped
            else:
                self.stats.bytes_skipped_tc += skipped
        except Exception as exc:  # contract: never raise; tests assert this never fires
            framer.resync()
            out.append(self._weird(ts, "smb_analyzer_error", repr(exc)))
        return out

    def _drain(self, to_server: bool, ts: int, out: list[Event]) -> None:
        framer = self._framers[to_server]
        while True:
            ev = framer.next_event()
            if ev is NEED_DATA:
                return
            if isinstance(ev, FramerNotice):
                out.append(self._weird(ts, ev.name, ev.detail))
            elif isinstance(ev, NbssMessage):
                if to_server:
                    self.stats.frames_ts += 1
                else:
                    self.stats.frames_tc += 1
                if self._inflight:
                    self._inflight.pop(to_server, None)  # the previous message of this direction ended
                self._on_message(to_server, ev, ts, out)

    def _on_message(self, to_server: bool, msg: NbssMessage, ts: int, out: list[Event]) -> None:
        t = msg.msg_type
        if t == 0x00:
            magic = msg.data[:4]
            self._extent, self._data_end = msg.length, 0
            self._streamed = not msg.complete
            if magic == _SMB2:
                self._smb2(msg, ts, out)
            elif magic == _SMB1:
                self._smb1(msg, ts, out)
            elif magic == _TRANSFORM:
                self._transform(to_server, msg, ts, out)
            elif magic == _COMPRESSED:
                self._compressed(msg, ts, out)
        elif t == 0x81:
            self._nb_session_request(msg.data, ts, out)
        elif t in (0x82, 0x83, 0x84):
            self._nb_session_response(t, msg.data, ts, out)
        # 0x85 keepalive: nothing to report

    # -- NetBIOS session ------------------------------------------------------
    def _nb_session_request(self, data: bytes, ts: int, out: list[Event]) -> None:
        lim = self.limits.max_name_length
        try:
            called, pos = decode_netbios_name(data, 0, lim)
            calling, _pos = decode_netbios_name(data, pos, lim)
        except (_Malformed, struct.error) as exc:
            out.append(self._weird(ts, "netbios_malformed_session_request", str(exc)))
            return
        if self._nb_request is not None:  # a previous request got no answer
            out.append(SmbNetbiosSession(ts, *self._nb_request, accepted=None))
        self._nb_request = (called, calling)

    def _nb_session_response(self, t: int, data: bytes, ts: int, out: list[Event]) -> None:
        called, calling = self._nb_request or ("", "")
        self._nb_request = None
        if t == 0x82:
            out.append(SmbNetbiosSession(ts, called, calling, accepted=True))
        elif t == 0x83:
            code = data[0] if data else 0
            err = _NETBIOS_ERRORS.get(code, f"error 0x{code:02x}")
            out.append(SmbNetbiosSession(ts, called, calling, accepted=False, error=err))
        else:
            ip = ".".join(str(b) for b in data[:4])
            port = struct.unpack_from(">H", data, 4)[0] if len(data) >= 6 else 0
            out.append(SmbNetbiosSession(ts, called, calling, accepted=False, error=f"retarget to {ip}:{port}"))

    # -- transforms -----------------------------------------------------------
    def _transform(self, to_server: bool, msg: NbssMessage, ts: int, out: list[Event]) -> None:
        size = msg.length + 4
        if to_server:
            self.stats.encrypted_frames_ts += 1
            self.stats.encrypted_bytes_ts += size
        else:
            self.stats.encrypted_frames_tc += 1
            self.stats.encrypted_bytes_tc += size
        if not self._encrypted_seen:
            self._encrypted_seen = True
            sid = msg.data[44:52]
            session = f"{struct.unpack('<Q', sid)[0]:016x}" if len(sid) == 8 else ""
            out.append(SmbEncrypted(ts, session_id=session, cipher=self._cipher))

    def _compressed(self, msg: NbssMessage, ts: int, out: list[Event]) -> None:
        self.stats.compressed_frames += 1
        if not self._compressed_seen:
            self._compressed_seen = True
            alg, flags = struct.unpack_from("<HH", msg.data, 8)
            out.append(SmbCompressed(ts, algorithm=_COMPRESSION.get(alg, f"0x{alg:04x}"), chained=bool(flags & 1)))

    # -- bounded tables -------------------------------------------------------
    def _pend(self, key: tuple[int, ...], value: _Pending, ts: int, out: list[Event]) -> None:
        if key not in self._pending and len(self._pending) >= self.limits.max_pending_requests:
            old = next(iter(self._pending))
            del self._pending[old]
            self._weird_first(
                ts,
                "smb_too_many_pending_requests",
                f"more than {self.limits.max_pending_requests} requests awaiting a response",
                out,
            )
        self._pending[key] = value

    def _tree(self, version: int, tree_id: int, ts: int, out: list[Event]) -> _Tree:
        key = (version, tree_id)
        tree = self._trees.get(key)
        if tree is None:  # connected before the capture started
            tree = _Tree(tree_id)
            self._put_tree(key, tree, ts, out)
        return tree

    def _put_tree(self, key: tuple[int, int], tree: _Tree, ts: int, out: list[Event]) -> None:
        if key not in self._trees and len(self._trees) >= self.limits.max_trees:
            old = self._trees.pop(next(iter(self._trees)))
            out.append(self._tree_summary(old, ts, disconnected=False))
            self._weird_first(ts, "smb_too_many_trees", f"more than {self.limits.max_trees} trees", out)
        self._trees[key] = tree

    def _file(self, key: bytes, version: int, tree_id: int, session: int, ts: int, out: list[Event]) -> _File:
        f = self._files.get(key)
        if f is None:  # opened before the capture started
            f = _File("", self._tree(version, tree_id, ts, out), self._user(version, session))
            f.file_id = key[4:].hex() if version == 1 else key.hex()
            self._put_file(key, f, ts, out)
        return f

    def _put_file(self, key: bytes, f: _File, ts: int, out: list[Event]) -> None:
        old = self._files.pop(key, None)
        if old is not None:
            out.append(self._file_summary(old, ts))
        elif len(self._files) >= self.limits.max_open_files:
            evicted = self._files.pop(next(iter(self._files)))
            evicted.key = None
            out.append(self._file_summary(evicted, ts))
            self._weird_first(ts, "smb_too_many_open_files", f"more than {self.limits.max_open_files} open files", out)
        f.key = key
        self._files[key] = f

    def _user(self, version: int, session: int) -> str:
        return self._users.get((version, session), "")

    def _set_user(self, version: int, session: int, user: str, ts: int, out: list[Event]) -> None:
        key = (version, session)
        if key not in self._users and len(self._users) >= self.limits.max_sessions:
            del self._users[next(iter(self._users))]
            self._weird_first(ts, "smb_too_many_sessions", f"more than {self.limits.max_sessions} sessions", out)
        self._users[key] = user

    # -- data counted as moved ---------------------------------------------------
    def _count(self, f: _File, read: bool, claim: int, doff: int, ts: int, out: list[Event]) -> None:
        """A READ response's or WRITE request's data: ``claim`` (its length field)
        is what it claims; what moved is what its command carries from
        ``doff`` (relative to its SMB header), and never bytes an earlier
        command of the same message already counted."""
        start = max(doff, self._data_end)
        n = min(claim, max(0, self._extent - start))
        self._data_end = start + n
        if read:
            f.bytes_read += n
            f.claimed_read += claim
            f.reads += 1
            f.tree.bytes_read += n
        else:
            f.bytes_written += n
            f.claimed_written += claim
            f.writes += 1
            f.tree.bytes_written += n
        if n < claim:
            what = "READ DataLength" if read else "WRITE Length"
            self._weird_first(
                ts, "smb_claim_exceeds_data", f"{what} {claim}: its message holds at most {n} bytes of data", out
            )
        if self._streamed and n:
            self._inflight[not read] = (f, read, n, start, self._extent)

    def _cut_short(self, ts: int, out: list[Event]) -> None:
        """Connection end inside a streamed READ/WRITE: its missing data never moved."""
        for to_server, (f, read, n, doff, extent) in self._inflight.items():
            framer = self._framers[to_server]
            if framer._state != _SKIP or framer._skip <= 0:
                continue
            arrived = max(0, min(n, extent - framer._skip - doff))
            missing = n - arrived
            if not missing:
                continue
            if read:
                f.bytes_read -= missing
                f.tree.bytes_read -= missing
            else:
                f.bytes_written -= missing
                f.tree.bytes_written -= missing
            what = "READ response" if read else "WRITE request"
            self._weird_first(
                ts, "smb_claim_exceeds_data", f"connection ended {missing} bytes into the data of a {what}", out
            )
        self._inflight.clear()

    # -- summaries -------------------------------------------------------------
    def _file_summary(self, f: _File, ts: int) -> SmbFileSummary:
        return SmbFileSummary(
            ts,
            name=f.name,
            file_id=f.file_id,
            tree=f.tree.path,
            bytes_read=f.bytes_read,
            bytes_written=f.bytes_written,
            reads=f.reads,
            writes=f.writes,
            direction=_direction(f.bytes_read, f.bytes_written),
            closed=f.close_requested,
            is_dir=f.is_dir,
            error=f.error,
            user=f.user,
            truncated=f.truncated or f.tree.truncated,
            claimed_read=f.claimed_read,
            claimed_written=f.claimed_written,
            share_type=f.tree.share_type,
            opened=f.opened,
            disposition=f.disposition,
            access=f.access,
        )

    @staticmethod
    def _tree_summary(t: _Tree, ts: int, disconnected: bool) -> SmbTreeSummary:
        return SmbTreeSummary(
            ts,
            path=t.path,
            tree_id=t.tree_id,
            bytes_read=t.bytes_read,
            bytes_written=t.bytes_written,
            files_opened=t.files_opened,
            disconnected=disconnected,
        )

    def _flush(self, ts: int, out: list[Event]) -> None:
        """Connection end: report what never got its answer, then summaries."""
        if self._nb_request is not None:
            out.append(SmbNetbiosSession(ts, *self._nb_request, accepted=None))
            self._nb_request = None
        if self._neg_req is not None:
            n = self._neg_req
            out.append(SmbNegotiate(ts, n.dialects, "", netname=n.netname, truncated=n.truncated))
            self._neg_req = None
        seen: set[int] = set()
        for value in list(self._pending.values()):
            if value[0] == "setup" and value[1] is not None:
                out.append(self._setup_event(ts, value, "", 0, 0))
            elif value[0] == "create":
                f = value[1]
                out.append(
                    SmbFileOpen(
                        ts,
                        name=f.name,
                        file_id="",
                        tree=f.tree.path,
                        status="",
                        disposition=f.disposition,
                        access=f.access,
                        user=f.user,
                        truncated=f.truncated or f.tree.truncated,
                    )
                )
                if f.key is None and id(f) not in seen and (f.bytes_read or f.bytes_written):
                    seen.add(id(f))
                    out.append(self._file_summary(f, ts))
            elif value[0] == "andx":
                for info in value[1].values():
                    if info[0] == "setup" and info[1] is not None:
                        out.append(self._setup_event(ts, info, "", 0, 0))
        self._pending.clear()
        for f in self._files.values():
            out.append(self._file_summary(f, ts))
        self._files.clear()
        for tree in self._trees.values():
            out.append(self._tree_summary(tree, ts, disconnected=False))
        self._trees.clear()
        s = self.stats
        if self._encrypted_seen:
            out.append(
                SmbEncryptedSummary(
                    ts, s.encrypted_frames_ts, s.encrypted_frames_tc, s.encrypted_bytes_ts, s.encrypted_bytes_tc
                )
            )

    # -- SMB2/3 ----------------------------------------------------------------
    def _smb2(self, msg: NbssMessage, ts: int, out: list[Event]) -> None:
        data = msg.data
        if not msg.complete:
            if len(data) >= 64:
                h = _H2(data)
                data_cmd = (h.command == _C2_WRITE and not h.is_response) or (h.command == _C2_READ and h.is_response)
                if not h.next_command and data_cmd:
                    self._smb2_command(data, h, _Chain(), ts, out)
                    return
                if msg.length > self.limits.max_pdu_size:
                    out.append(
                        self._weird(ts, "smb_pdu_too_large", f"SMB2 {h.command_name} of {msg.length} bytes skipped")
                    )
            return
        off = 0
        chain = _Chain()
        while True:
            m = data[off:]
            if len(m) < 64 or m[:4] != _SMB2 or _u16(m, 4) != 64:
                out.append(
                    self._weird(
                        ts, "smb_malformed_header", f"bad SMB2 header at offset {off} of a {len(data)}-byte message"
                    )
                )
                return
            h = _H2(m)
            nxt = h.next_command
            if nxt and (nxt < 64 or nxt % 8 or nxt > len(m)):
                out.append(
                    self._weird(ts, "smb_malformed_header", f"SMB2 NextCommand {nxt} in a {len(m)}-byte message")
                )
                nxt = 0
            if nxt:
                m = m[:nxt]
            self._extent, self._data_end = len(m), 0  # offsets are from this command's header
            self._smb2_command(m, h, chain, ts, out)
            if not nxt:
                return
            off += nxt

    def _smb2_command(self, m: bytes, h: _H2, chain: _Chain, ts: int, out: list[Event]) -> None:
        if h.flags & _F2_RELATED:
            h.session_id = chain.session_id or h.session_id
            h.tree_id = chain.tree_id or h.tree_id
        try:
            if h.is_response:
                self._smb2_response(m, h, chain, ts, out)
            else:
                self._smb2_request(m, h, chain, ts, out)
        except (_Malformed, struct.error, IndexError, ValueError) as exc:
            kind = "response" if h.is_response else "request"
            out.append(self._weird(ts, "smb_malformed_command", f"SMB2 {h.command_name} {kind}: {exc}"))
        chain.session_id = h.session_id
        chain.tree_id = h.tree_id

    def _smb2_request(self, m: bytes, h: _H2, chain: _Chain, ts: int, out: list[Event]) -> None:
        cmd = h.command
        lim = self.limits.max_name_length
        key = (2, h.message_id)
        if cmd == _C2_NEGOTIATE:
            count = _u16(m, 66)
            trunc = count > self.limits.max_dialects
            revs = [_u16(m, 100 + 2 * k) for k in range(min(count, self.limits.max_dialects))]
            netname = ""
            if 0x0311 in revs:
                ctx_off, ctx_count = _u32(m, 92), _u16(m, 96)
                for ctype, cdata in self._contexts(m, ctx_off, ctx_count):
                    if ctype == 5:  # SMB2_NETNAME_NEGOTIATE_CONTEXT_ID
                        netname, t = _decode(cdata, True, lim)
                        trunc |= t
            self._neg_req = _NegReq(tuple(dialect_name(r) for r in revs), netname, trunc)
        elif cmd == _C2_SESSION_SETUP:
            off, ln = _u16(m, 76), _u16(m, 78)
            blob = _slice(m, off, ln, "security buffer")
            self._pend(key, self._setup_info(blob, ts, out), ts, out)
        elif cmd == _C2_TREE_CONNECT:
            flags, off, ln = _u16(m, 66), _u16(m, 68), _u16(m, 70)
            raw = _slice(m, off, ln, "tree path") if ln else b""
            if flags & 0x0004 and raw[:4] != b"\\\x00\\\x00":  # extension present
                raw = _slice(m, 72 + off, ln, "tree path (extension)")
            path, trunc = _decode(raw, True, lim)
            self._pend(key, ("tree", path, trunc), ts, out)
        elif cmd == _C2_TREE_DISCONNECT:
            self._pend(key, ("tdis", h.tree_id), ts, out)
        elif cmd == _C2_CREATE:
            access, disp, options = _u32(m, 88), _u32(m, 100), _u32(m, 104)
            off, ln = _u16(m, 108), _u16(m, 110)
            raw = _slice(m, off, ln, "file name") if ln else b""
            name, trunc = _decode(raw, True, lim)
            f = _File(name, self._tree(2, h.tree_id, ts, out), self._user(2, h.session_id), trunc)
            f.disposition = _DISPOSITIONS.get(disp, f"0x{disp:x}")
            f.access = _access_hints(access)
            f.is_dir = bool(options & 0x1)
            chain.file = f
            self._pend(key, ("create", f), ts, out)
        elif cmd == _C2_CLOSE:
            f = self._smb2_file(m[72:88], h, chain, ts, out)
            f.close_requested = True
            self._pend(key, ("close", f), ts, out)
        elif cmd == _C2_READ:
            f = self._smb2_file(_slice(m, 80, 16, "FileId"), h, chain, ts, out)
            self._pend(key, ("read", f), ts, out)
        elif cmd == _C2_WRITE:
            doff, length = _u16(m, 66), _u32(m, 68)
            f = self._smb2_file(_slice(m, 80, 16, "FileId"), h, chain, ts, out)
            self._count(f, False, length, doff, ts, out)
            self._pend(key, ("write", f), ts, out)

    def _smb2_file(self, fid: bytes, h: _H2, chain: _Chain, ts: int, out: list[Event]) -> _File:
        if len(fid) != 16:
            raise _Malformed("short FileId")
        if fid == _RELATED_FID and chain.file is not None:
            return chain.file
        f = self._file(fid, 2, h.tree_id, h.session_id, ts, out)
        chain.file = f
        return f

    def _contexts(self, m: bytes, off: int, count: int) -> list[tuple[int, bytes]]:
        found = []
        for _ in range(min(count, self.limits.max_dialects)):
            ctype, dlen = struct.unpack_from("<HH", m, off)
            found.append((ctype, _slice(m, off + 8, dlen, "negotiate context")))
            off = (off + 8 + dlen + 7) & ~7
        return found

    def _setup_info(self, blob: bytes, ts: int, out: list[Event]) -> _Setup:
        """("setup", NtlmInfo | None, auth kind) for a session setup request."""
        auth = _auth_kind(blob)
        try:
            info = parse_ntlmssp(blob, self.limits.max_name_length)
        except (_Malformed, struct.error) as exc:
            out.append(self._weird(ts, "smb_malformed_ntlmssp", str(exc)))
            info = None
        if info is not None and info.msg_type != 3:
            info = None
        return ("setup", info, auth)

    def _setup_event(
        self, ts: int, pend: _Setup, status: str, session: int, session_flags: int, version: int = 2
    ) -> SmbSessionSetup:
        info: NtlmInfo | None = pend[1]
        return SmbSessionSetup(
            ts,
            user=info.user if info else "",
            domain=info.domain if info else "",
            workstation=info.workstation if info else "",
            status=status,
            session_id=f"{session:016x}" if version == 2 else f"{session:04x}",
            auth=pend[2],
            anonymous=bool(info and info.anonymous),
            guest=bool(session_flags & 0x1),
            encrypt_data=bool(session_flags & 0x4),
            truncated=bool(info and info.truncated),
        )

    def _smb2_response(self, m: bytes, h: _H2, chain: _Chain, ts: int, out: list[Event]) -> None:
        cmd, status = h.command, h.status
        if status == _ST_PENDING and h.flags & _F2_ASYNC:
            return  # interim response; the final one follows
        st = status_name(status)
        if cmd == _C2_NEGOTIATE:
            n = self._neg_req
            self._neg_req = None
            dialect, cipher = "", ""
            if status == _ST_SUCCESS:
                rev = _u16(m, 68)
                dialect = dialect_name(rev)
                if rev == 0x0311:
                    for ctype, cdata in self._contexts(m, _u32(m, 124), _u16(m, 70)):
                        if ctype == 2 and len(cdata) >= 4:  # ENCRYPTION_CAPABILITIES
                            c = _u16(cdata, 2)
                            cipher = _CIPHERS.get(c, "" if c == 0 else f"0x{c:04x}")
                self._cipher = cipher
            out.append(
                SmbNegotiate(
                    ts,
                    n.dialects if n else (),
                    dialect,
                    cipher=cipher,
                    netname=n.netname if n else "",
                    status=st,
                    truncated=bool(n and n.truncated),
                )
            )
            return
        pend = self._pending.pop((2, h.message_id), None)
        if cmd == _C2_SESSION_SETUP:
            if status == _ST_MORE_PROCESSING:
                return
            pend = pend if pend and pend[0] == "setup" else ("setup", None, "unknown")
            flags = _u16(m, 66) if status == _ST_SUCCESS else 0
            ev = self._setup_event(ts, pend, st, h.session_id, flags)
            if status == _ST_SUCCESS:
                self._set_user(2, h.session_id, ev.user, ts, out)
            out.append(ev)
            return
        if pend is None or _KIND_CMD2.get(pend[0]) != cmd:
            self.stats.unmatched_responses += 1
            return
        if pend[0] == "tree":
            share = ""
            if status == _ST_SUCCESS:
                share = _SHARE_TYPES.get(_u8(m, 66), "")
                self._put_tree((2, h.tree_id), _Tree(h.tree_id, pend[1], share, pend[2]), ts, out)
            out.append(
                SmbTreeConnect(
                    ts,
                    path=pend[1],
                    tree_id=h.tree_id if status == 0 else 0,
                    share_type=share,
                    status=st,
                    user=self._user(2, h.session_id),
                    truncated=pend[2],
                )
            )
        elif pend[0] == "tdis":
            tree = self._trees.pop((2, pend[1]), None)
            if tree is not None:
                out.append(self._tree_summary(tree, ts, disconnected=True))
        elif pend[0] == "create":
            f: _File = pend[1]
            action, size = "", 0
            if status == _ST_SUCCESS:
                action = _CREATE_ACTIONS.get(_u32(m, 68), "")
                size = _u64(m, 112)
                f.is_dir = f.is_dir or bool(_u32(m, 120) & 0x10)
                fid = _slice(m, 128, 16, "FileId")
                f.file_id = fid.hex()
                f.opened = True
                f.tree.files_opened += 1
                self._put_file(fid, f, ts, out)
            out.append(
                SmbFileOpen(
                    ts,
                    name=f.name,
                    file_id=f.file_id,
                    tree=f.tree.path,
                    status=st,
                    disposition=f.disposition,
                    access=f.access,
                    create_action=action,
                    size=size,
                    is_dir=f.is_dir,
                    user=f.user,
                    truncated=f.truncated or f.tree.truncated,
                )
            )
            if status != _ST_SUCCESS and (f.bytes_read or f.bytes_written):
                out.append(self._file_summary(f, ts))
        elif pend[0] == "close":
            f = pend[1]
            if f.key is not None and self._files.get(f.key) is f:
                del self._files[f.key]
            if f.file_id or f.bytes_read or f.bytes_written:  # not a failed compound open
                out.append(self._file_summary(f, ts))
        elif pend[0] == "read":
            f = pend[1]
            if status in (_ST_SUCCESS, _ST_BUFFER_OVERFLOW):
                self._count(f, True, _u32(m, 68), _u8(m, 66), ts, out)
            elif not f.error and status != 0xC0000011:  # END_OF_FILE is normal
                f.error = st
        elif pend[0] == "write":
            f = pend[1]
            if status != _ST_SUCCESS and not f.error:
                f.error = st

    # -- SMB1 -------------------------------------------------------------------
    def _smb1(self, msg: NbssMessage, ts: int, out: list[Event]) -> None:
        m = msg.data
        if len(m) < 35:
            out.append(self._weird(ts, "smb_malformed_header", "short SMB1 header"))
            return
        h = _H1(m)
        if not msg.complete and not _streamable(m):
            if msg.length > self.limits.max_pdu_size:
                out.append(
                    self._weird(
                        ts, "smb_pdu_too_large", f"SMB1 command 0x{h.command:02x} of {msg.length} bytes skipped"
                    )
                )
            return
        key = (1, h.pid, h.mid)
        pend = self._pending.pop(key, None) if h.is_response else None
        new: dict[int, _Req] = {}
        reqs = pend[1] if pend is not None and pend[0] == "andx" else None
        cmd, off = h.command, 32
        for _ in range(_MAX_SMB1_ANDX):
            try:
                wc = _u8(m, off)
                words = _slice(m, off + 1, 2 * wc, "parameter words")
                if msg.complete:
                    bc = _u16(m, off + 1 + 2 * wc)
                    boff = off + 3 + 2 * wc
                    data = _slice(m, boff, bc, "data bytes")
                else:
                    boff, data = off + 3 + 2 * wc, b""
                # a command's data lies in its own bytes (a streamed one's run to the message end)
                self._extent = boff + len(data) if msg.complete else msg.length
                self._data_end = max(self._data_end, boff)
                if h.is_response:
                    info = reqs.get(cmd) if reqs is not None else None
                    self._smb1_response(m, h, cmd, words, data, boff, info, ts, out)
                else:
                    info = self._smb1_request(m, h, cmd, words, data, boff, ts, out)
                    if info is not None:
                        new[cmd] = info
            except (_Malformed, struct.error, IndexError, ValueError) as exc:
                kind = "response" if h.is_response else "request"
                out.append(self._weird(ts, "smb_malformed_command", f"SMB1 0x{cmd:02x} {kind}: {exc}"))
                break
            if cmd not in _C1_ANDX or wc < 2:
                break
            nxt_cmd, nxt_off = words[0], _u16(words, 2)
            if nxt_cmd == 0xFF:
                break
            if nxt_off <= off or nxt_off >= len(m):
                out.append(self._weird(ts, "smb_malformed_header", f"SMB1 AndX offset {nxt_off} after {off}"))
                break
            cmd, off = nxt_cmd, nxt_off
        if h.is_response and pend is None and h.command not in (_C1_NEGOTIATE,):
            self.stats.unmatched_responses += 1
        if new:
            self._pend(key, ("andx", new), ts, out)

    def _smb1_request(
        self, m: bytes, h: _H1, cmd: int, w: bytes, data: bytes, boff: int, ts: int, out: list[Event]
    ) -> _Req | None:
        lim = self.limits.max_name_length
        uni = h.unicode
        if cmd == _C1_NEGOTIATE:
            dialects: list[str] = []
            pos, trunc = 0, False
            while pos < len(data) and data[pos] == 0x02:
                if len(dialects) >= self.limits.max_dialects:
                    trunc = True
                    break
                text, t, pos = _cstring(data, pos + 1, False, lim)
                trunc |= t
                dialects.append(text)
            self._neg_req = _NegReq(tuple(dialects), "", trunc)
            return None
        if cmd == _C1_SESSION_SETUP_ANDX:
            if len(w) == 24:  # extended security: SecurityBlobLength at word 7
                blob = _slice(data, 0, _u16(w, 14), "security blob")
                return self._setup_info(blob, ts, out)
            if len(w) == 26:  # NT LM 0.12 without extended security
                oem_len, uni_len = _u16(w, 14), _u16(w, 16)
                pos = boff + oem_len + uni_len
                if uni and pos % 2:
                    pos += 1
                user, t1, pos = _cstring(m, pos, uni, lim)
                domain, t2, pos = _cstring(m, pos, uni, lim)
                info = NtlmInfo(3, user=user, domain=domain, anonymous=not user, truncated=t1 or t2)
                return ("setup", info, "plaintext")
            return ("setup", None, "unknown")
        if cmd == _C1_TREE_CONNECT_ANDX:
            pw_len = _u16(w, 6)
            pos = boff + pw_len
            if uni and pos % 2:
                pos += 1
            path, trunc, _pos = _cstring(m, pos, uni, lim)
            return ("tree", path, trunc)
        if cmd == _C1_TREE_DISCONNECT:
            return ("tdis", h.tid)
        if cmd == _C1_NT_CREATE_ANDX:
            name_len = _u16(w, 5)
            access, disp, options = _u32(w, 15), _u32(w, 35), _u32(w, 39)
            pos = boff + (1 if uni and boff % 2 else 0)
            name, trunc = _decode(_slice(m, pos, name_len, "file name"), uni, lim)
            f = _File(name, self._tree(1, h.tid, ts, out), self._user(1, h.uid), trunc)
            f.disposition = _DISPOSITIONS.get(disp, f"0x{disp:x}")
            f.access = _access_hints(access)
            f.is_dir = bool(options & 0x1)
            return ("create", f)
        if cmd == _C1_CLOSE:
            f = self._file(b"smb1" + _slice(w, 0, 2, "FID"), 1, h.tid, h.uid, ts, out)
            f.close_requested = True
            return ("close", f)
        if cmd == _C1_READ_ANDX:
            f = self._file(b"smb1" + _slice(w, 4, 2, "FID"), 1, h.tid, h.uid, ts, out)
            return ("read", f)
        if cmd == _C1_WRITE_ANDX:
            f = self._file(b"smb1" + _slice(w, 4, 2, "FID"), 1, h.tid, h.uid, ts, out)
            length = _u16(w, 20) | (_u16(w, 18) << 16)
            self._count(f, False, length, _u16(w, 22), ts, out)
            return ("write", f)
        return None

    def _smb1_response(
        self, m: bytes, h: _H1, cmd: int, w: bytes, data: bytes, boff: int, info: _Req | None, ts: int, out: list[Event]
    ) -> None:
        st = h.status_text(m)
        ok = st == "STATUS_SUCCESS"
        if cmd == _C1_NEGOTIATE:
            n = self._neg_req
            self._neg_req = None
            offered = n.dialects if n else ()
            dialect = ""
            if ok and len(w) >= 2:
                idx = _u16(w, 0)
                if idx == 0xFFFF:
                    dialect = "none"
                elif idx < len(offered):
                    dialect = offered[idx]
                else:
                    dialect = f"index {idx}"
            out.append(SmbNegotiate(ts, offered, dialect, status=st, truncated=bool(n and n.truncated)))
            return
        if cmd == _C1_SESSION_SETUP_ANDX:
            if h.status == _ST_MORE_PROCESSING and h.flags2 & _F1_2_NT_STATUS:
                return
            pend = info if info and info[0] == "setup" else ("setup", None, "unknown")
            setup_action = _u16(w, 4) if ok and len(w) >= 6 else 0
            ev = self._setup_event(ts, pend, st, h.uid, setup_action & 0x1, version=1)
            if ok:
                self._set_user(1, h.uid, ev.user, ts, out)
            out.append(ev)
            return
        if info is None:
            return
        if info[0] == "tree":
            share = ""
            if ok:
                service, _t, _p = _cstring(data, 0, False, 16)
                share = {"A:": "disk", "IPC": "pipe", "LPT1:": "print"}.get(service, service)
                self._put_tree((1, h.tid), _Tree(h.tid, info[1], share, info[2]), ts, out)
            out.append(
                SmbTreeConnect(
                    ts,
                    path=info[1],
                    tree_id=h.tid if ok else 0,
                    share_type=share,
                    status=st,
                    user=self._user(1, h.uid),
                    truncated=info[2],
                )
            )
        elif info[0] == "tdis":
            tree = self._trees.pop((1, info[1]), None)
            if tree is not None:
                out.append(self._tree_summary(tree, ts, disconnected=True))
        elif info[0] == "create":
            f: _File = info[1]
            action, size = "", 0
            if ok:
                fid = _slice(w, 5, 2, "FID")
                action = _CREATE_ACTIONS.get(_u32(w, 7), "")
                size = _u64(w, 55)
                f.is_dir = f.is_dir or bool(_u8(w, 67))
                f.file_id = fid.hex()
                f.opened = True
                f.tree.files_opened += 1
                self._put_file(b"smb1" + fid, f, ts, out)
            out.append(
                SmbFileOpen(
                    ts,
                    name=f.name,
                    file_id=f.file_id,
                    tree=f.tree.path,
                    status=st,
                    disposition=f.disposition,
                    access=f.access,
                    create_action=action,
                    size=size,
                    is_dir=f.is_dir,
                    user=f.user,
                    truncated=f.truncated or f.tree.truncated,
                )
            )
        elif info[0] == "close":
            f = info[1]
            if f.key is not None and self._files.get(f.key) is f:
                del self._files[f.key]
            out.append(self._file_summary(f, ts))
        elif info[0] == "read":
            f = info[1]
            if ok:
                self._count(f, True, _u16(w, 10) | (_u16(w, 14) << 16), _u16(w, 12), ts, out)
            elif not f.error:
                f.error = st
        elif info[0] == "write":
            f = info[1]
            if not ok and not f.error:
                f.error = st
