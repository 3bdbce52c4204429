"""SMB analyzer tests: real protocol bytes for smbclient-like sessions against
Samba (SMB 3.1.1 with negotiate contexts, SPNEGO/NTLMSSP, tree connect,
create/write/read/close), NetBIOS on 139, encryption, mid-stream pickup, gaps,
malformed input and bounds.

Builders use struct and follow MS-SMB2 / MS-NLMP / RFC 1002 field by field;
``test_builders_agree_with_scapy`` checks them against scapy's independent
dissectors and ``test_scapy_built_session`` feeds scapy-built packets, so a
misread offset cannot hide in both the builder and the analyzer.

Every scenario is fed whole, one byte at a time, in random chunks, and with
trailing garbage; all must give the same events (apart from the garbage's
Weird).
"""

from __future__ import annotations

import importlib
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.analyzers.base import ConnInfo
from sensor.analyzers.smb import (
    NbssFramer,
    NbssMessage,
    SmbAnalyzer,
    SmbCompressed,
    SmbEncrypted,
    SmbEncryptedSummary,
    SmbFileOpen,
    SmbFileSummary,
    SmbLimits,
    SmbNegotiate,
    SmbNetbiosSession,
    SmbParseError,
    SmbSessionSetup,
    SmbTreeConnect,
    SmbTreeSummary,
    decode_netbios_name,
    find_frame_start,
    parse_ntlmssp,
)
from sensor.core.events import NEED_DATA, Event, Weird

T0 = 1_700_000_000_000_000
CONN445 = ConnInfo("C445", "tcp", "10.77.0.1", 40000, "10.77.0.2", 445)
CONN139 = ConnInfo("C139", "tcp", "10.77.0.1", 40001, "10.77.0.2", 139)
SID = 0x0000A1B2C3D40001
FID = struct.pack("<QQ", 0x5F3A, 0x8C0E0001)  # persistent, volatile
FID2 = struct.pack("<QQ", 0x5F3B, 0x8C0E0002)
ROOT_FID = struct.pack("<QQ", 0x5F39, 0x8C0E0000)
TREE_ID = 0x9D5C0001

STATUS_SUCCESS = 0
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_LOGON_FAILURE = 0xC000006D
STATUS_END_OF_FILE = 0xC0000011
STATUS_PENDING = 0x00000103

# --------------------------------------------------------------------------
# Builders: NetBIOS, SPNEGO/NTLMSSP, SMB2, SMB1
# --------------------------------------------------------------------------


def nbss(payload: bytes) -> bytes:
    """Session message (type 0) with the 24-bit length of direct TCP."""
    return struct.pack(">I", len(payload)) + payload


def nb_name(name: str, suffix: int) -> bytes:
    raw = name.encode().ljust(15, b" ")[:15] + bytes([suffix])
    enc = bytearray()
    for b in raw:
        enc += bytes([0x41 + (b >> 4), 0x41 + (b & 0xF)])
    return b"\x20" + bytes(enc) + b"\x00"


def nb_session_request(called: str, calling: str) -> bytes:
    body = nb_name(called, 0x20) + nb_name(calling, 0x00)
    return struct.pack(">BBH", 0x81, 0, len(body)) + body


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        ln = bytes([n])
    elif n < 0x100:
        ln = b"\x81" + bytes([n])
    else:
        ln = b"\x82" + struct.pack(">H", n)
    return bytes([tag]) + ln + content


OID_SPNEGO = bytes.fromhex("06062b0601050502")
OID_NTLMSSP = bytes.fromhex("060a2b0601040182370202 0a".replace(" ", ""))


def spnego_init(ntlm: bytes) -> bytes:
    mechs = der(0xA0, der(0x30, OID_NTLMSSP))
    token = der(0xA2, der(0x04, ntlm))
    return der(0x60, OID_SPNEGO + der(0xA0, der(0x30, mechs + token)))


def spnego_resp(ntlm: bytes, accept: int | None = None) -> bytes:
    parts = b""
    if accept is not None:
        parts += der(0xA0, der(0x0A, bytes([accept])))
        parts += der(0xA1, OID_NTLMSSP)
    parts += der(0xA2, der(0x04, ntlm))
    return der(0xA1, der(0x30, parts))


NTLM_FLAGS = 0xE2088297  # UNICODE | REQUEST_TARGET | SIGN | SEAL | NTLM | ALWAYS_SIGN | ESS | 128 | KEY_EXCH | 56 ...


def ntlm_negotiate() -> bytes:
    return (
        b"NTLMSSP\x00"
        + struct.pack("<II", 1, NTLM_FLAGS)
        + struct.pack("<HHI", 0, 0, 0) * 2
        + bytes.fromhex("0601b11d0000000f")
    )


def ntlm_challenge(target: str = "XFERLAB") -> bytes:
    name = target.encode("utf-16-le")
    info = struct.pack("<HH", 2, len(name)) + name + struct.pack("<HH", 0, 0)
    off = 56
    return (
        b"NTLMSSP\x00"
        + struct.pack("<I", 2)
        + struct.pack("<HHI", len(name), len(name), off)
        + struct.pack("<I", NTLM_FLAGS)
        + b"\x11" * 8
        + b"\x00" * 8
        + struct.pack("<HHI", len(info), len(info), off + len(name))
        + bytes.fromhex("0601b11d0000000f")
        + name
        + info
    )


def ntlm_authenticate(
    user: str, domain: str, workstation: str, *, unicode: bool = True, nt_len: int = 300, lm_len: int = 24
) -> bytes:
    enc = (lambda s: s.encode("utf-16-le")) if unicode else (lambda s: s.encode("latin-1"))
    d, u, w = enc(domain), enc(user), enc(workstation)
    lm, nt, key = b"\x00" * lm_len, bytes(range(256)) * (nt_len // 256) + b"\x07" * (nt_len % 256), b"\x5a" * 16
    off = 88  # 64 fixed + 8 version + 16 MIC
    fields, payload = [], b""
    for blob in (lm, nt, d, u, w, key):
        fields.append(struct.pack("<HHI", len(blob), len(blob), off + len(payload)))
        payload += blob
    flags = NTLM_FLAGS if unicode else NTLM_FLAGS & ~1
    return (
        b"NTLMSSP\x00"
        + struct.pack("<I", 3)
        + b"".join(fields)
        + struct.pack("<I", flags)
        + bytes.fromhex("0601b11d0000000f")
        + b"\x33" * 16
        + payload
    )


def h2(
    cmd: int,
    mid: int,
    *,
    resp: bool = False,
    status: int = 0,
    tree: int = 0,
    sid: int = 0,
    flags: int = 0,
    next_cmd: int = 0,
    async_id: int | None = None,
) -> bytes:
    f = flags | (1 if resp else 0)
    if async_id is not None:
        f |= 2
        return struct.pack(
            "<4sHHIHHIIQQQ16s", b"\xfeSMB", 64, 1, status, cmd, 1, f, next_cmd, mid, async_id, sid, b"\x00" * 16
        )
    return struct.pack(
        "<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 1, status, cmd, 1, f, next_cmd, mid, 0xFEFF, tree, sid, b"\x00" * 16
    )


def pad8(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 8)


def neg_context(ctype: int, data: bytes) -> bytes:
    return struct.pack("<HHI", ctype, len(data), 0) + data


SMBCLIENT_DIALECTS = (0x0202, 0x0210, 0x0300, 0x0302, 0x0311)


def negotiate_req(mid: int = 0, dialects=SMBCLIENT_DIALECTS, netname: str = "10.77.0.2") -> bytes:
    contexts = [
        neg_context(1, struct.pack("<HHH", 1, 32, 1) + b"\xab" * 32),  # preauth SHA-512
        neg_context(2, struct.pack("<H4H", 4, 2, 1, 4, 3)),  # ciphers
        neg_context(8, struct.pack("<H3H", 3, 2, 1, 0)),  # signing
        neg_context(5, netname.encode("utf-16-le")),  # netname
    ]
    fixed_len = 64 + 36 + 2 * len(dialects)
    ctx_off = fixed_len + (-fixed_len % 8)
    body = struct.pack(
        "<HHHHI16sIHH",
        36,
        len(dialects),
        1,
        0,
        0x7F,
        b"\x42" * 16,
        ctx_off if 0x0311 in dialects else 0,
        len(contexts) if 0x0311 in dialects else 0,
        0,
    )
    body += struct.pack(f"<{len(dialects)}H", *dialects)
    msg = h2(0, mid) + body
    if 0x0311 in dialects:
        msg = pad8(msg)
        for i, c in enumerate(contexts):
            msg += pad8(c) if i < len(contexts) - 1 else c
    return nbss(msg)


def negotiate_resp(mid: int = 0, dialect: int = 0x0311, cipher: int = 2, status: int = 0) -> bytes:
    if status:
        return nbss(h2(0, mid, resp=True, status=status) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00")
    blob = spnego_init(b"")[:20]  # server's negTokenInit hint (content irrelevant here)
    contexts = (
        [
            neg_context(1, struct.pack("<HHH", 1, 32, 1) + b"\xcd" * 32),
            neg_context(2, struct.pack("<HH", 1, cipher)),
            neg_context(8, struct.pack("<HH", 1, 2)),
        ]
        if dialect == 0x0311
        else []
    )
    sec_off = 64 + 64
    ctx_off = (sec_off + len(blob) + 7) & ~7 if contexts else 0
    body = struct.pack(
        "<HHHH16sIIIIQQHHI",
        65,
        1,
        dialect,
        len(contexts),
        b"\x24" * 16,
        0x2F,
        8 << 20,
        8 << 20,
        8 << 20,
        0,
        0,
        sec_off,
        len(blob),
        ctx_off,
    )
    msg = h2(0, mid, resp=True) + body + blob
    if contexts:
        msg = pad8(msg)
        for i, c in enumerate(contexts):
            msg += pad8(c) if i < len(contexts) - 1 else c
    return nbss(msg)


def setup_req(mid: int, blob: bytes, sid: int = 0) -> bytes:
    body = struct.pack("<HBBIIHHQ", 25, 0, 1, 1, 0, 64 + 24, len(blob), 0)
    return nbss(h2(1, mid, sid=sid) + body + blob)


def setup_resp(mid: int, blob: bytes, status: int, sid: int = SID, session_flags: int = 0) -> bytes:
    if status not in (STATUS_SUCCESS, STATUS_MORE_PROCESSING_REQUIRED):
        return nbss(h2(1, mid, resp=True, status=status, sid=sid) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00")
    body = struct.pack("<HHHH", 9, session_flags, 64 + 8, len(blob))
    return nbss(h2(1, mid, resp=True, status=status, sid=sid) + body + blob)


def tree_req(mid: int, path: str, sid: int = SID) -> bytes:
    p = path.encode("utf-16-le")
    return nbss(h2(3, mid, sid=sid) + struct.pack("<HHHH", 9, 0, 72, len(p)) + p)


def tree_resp(mid: int, tree: int = TREE_ID, share_type: int = 1, status: int = 0, sid: int = SID) -> bytes:
    if status:
        return nbss(h2(3, mid, resp=True, status=status, sid=sid) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00")
    return nbss(
        h2(3, mid, resp=True, tree=tree, sid=sid) + struct.pack("<HBBIII", 16, share_type, 0, 0x800, 0, 0x1F01FF)
    )


def create_body(name: str, disposition: int, access: int, options: int = 0x40) -> bytes:
    n = name.encode("utf-16-le")
    body = struct.pack("<HBBIQQIIIIIHHII", 57, 0, 0, 2, 0, 0, access, 0x80, 7, disposition, options, 120, len(n), 0, 0)
    return body + (n or b"\x00")


def create_req(
    mid: int,
    name: str,
    disposition: int = 1,
    access: int = 0x00120089,
    options: int = 0x40,
    tree: int = TREE_ID,
    sid: int = SID,
) -> bytes:
    return nbss(h2(5, mid, tree=tree, sid=sid) + create_body(name, disposition, access, options))


def create_resp_body(fid: bytes, action: int = 1, eof: int = 0, attrs: int = 0x20) -> bytes:
    return struct.pack("<HBBIQQQQQQII16sII", 89, 0, 0, action, 1, 2, 3, 4, eof, eof, attrs, 0, fid, 0, 0)


def create_resp(
    mid: int,
    fid: bytes = FID,
    action: int = 1,
    eof: int = 0,
    attrs: int = 0x20,
    status: int = 0,
    tree: int = TREE_ID,
    sid: int = SID,
) -> bytes:
    if status:
        return nbss(
            h2(5, mid, resp=True, status=status, tree=tree, sid=sid) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00"
        )
    return nbss(h2(5, mid, resp=True, tree=tree, sid=sid) + create_resp_body(fid, action, eof, attrs))


def write_req(mid: int, fid: bytes, offset: int, data: bytes, tree: int = TREE_ID, sid: int = SID) -> bytes:
    body = struct.pack("<HHIQ16sIIHHI", 49, 112, len(data), offset, fid, 0, 0, 0, 0, 0)
    return nbss(h2(9, mid, tree=tree, sid=sid) + body + data)


def write_resp(mid: int, count: int, status: int = 0, tree: int = TREE_ID, sid: int = SID) -> bytes:
    if status:
        return nbss(
            h2(9, mid, resp=True, status=status, tree=tree, sid=sid) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00"
        )
    return nbss(h2(9, mid, resp=True, tree=tree, sid=sid) + struct.pack("<HHIIHH", 17, 0, count, 0, 0, 0))


def read_req(mid: int, fid: bytes, offset: int, length: int, tree: int = TREE_ID, sid: int = SID) -> bytes:
    body = struct.pack("<HBBIQ16sIIIHH", 49, 0x50, 0, length, offset, fid, 0, 0, 0, 0, 0) + b"\x00"
    return nbss(h2(8, mid, tree=tree, sid=sid) + body)


def read_resp(mid: int, data: bytes, status: int = 0, tree: int = TREE_ID, sid: int = SID) -> bytes:
    if status:
        return nbss(
            h2(8, mid, resp=True, status=status, tree=tree, sid=sid) + struct.pack("<HBBI", 9, 0, 0, 0) + b"\x00"
        )
    return nbss(h2(8, mid, resp=True, tree=tree, sid=sid) + struct.pack("<HBBIII", 17, 80, 0, len(data), 0, 0) + data)


def close_req(mid: int, fid: bytes, tree: int = TREE_ID, sid: int = SID) -> bytes:
    return nbss(h2(6, mid, tree=tree, sid=sid) + struct.pack("<HHI16s", 24, 0, 0, fid))


def close_resp_body() -> bytes:
    return struct.pack("<HHIQQQQQQI", 60, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def close_resp(mid: int, tree: int = TREE_ID, sid: int = SID) -> bytes:
    return nbss(h2(6, mid, resp=True, tree=tree, sid=sid) + close_resp_body())


def simple_req(cmd: int, mid: int, tree: int = TREE_ID, sid: int = SID) -> bytes:
    return nbss(h2(cmd, mid, tree=tree, sid=sid) + struct.pack("<HH", 4, 0))


def simple_resp(cmd: int, mid: int, tree: int = TREE_ID, sid: int = SID) -> bytes:
    return nbss(h2(cmd, mid, resp=True, tree=tree, sid=sid) + struct.pack("<HH", 4, 0))


def query_info_body() -> bytes:
    return struct.pack("<HBBIHHIII16s", 41, 1, 18, 4096, 0, 0, 0, 0, 0, b"\xff" * 16)


def compound(*parts: bytes) -> bytes:
    """Chain SMB2 messages (without NetBIOS headers) setting NextCommand."""
    out = b""
    for i, p in enumerate(parts):
        if i < len(parts) - 1:
            p = pad8(p)
            p = p[:20] + struct.pack("<I", len(p)) + p[24:]
        out += p
    return nbss(out)


def transform(payload_len: int, sid: int = SID) -> bytes:
    hdr = struct.pack("<4s16s16sIHHQ", b"\xfdSMB", b"\x99" * 16, b"\x11" * 16, payload_len, 0, 1, sid)
    return nbss(hdr + bytes((i * 7 + 3) & 0xFF for i in range(payload_len)))


def file_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- the scenarios -----------------------------------------------------------

Msg = tuple[bool, bytes]  # (to_server, bytes)


def login(
    user: str = "xsuser1",
    domain: str = "WORKGROUP",
    ws: str = "XS-CLIENT",
    final_status: int = STATUS_SUCCESS,
    session_flags: int = 0,
) -> list[Msg]:
    return [
        (True, negotiate_req(0)),
        (False, negotiate_resp(0)),
        (True, setup_req(1, spnego_init(ntlm_negotiate()))),
        (False, setup_resp(1, spnego_resp(ntlm_challenge(), accept=1), STATUS_MORE_PROCESSING_REQUIRED)),
        (True, setup_req(2, spnego_resp(ntlm_authenticate(user, domain, ws)), sid=SID)),
        (
            False,
            setup_resp(
                2, spnego_resp(b"", accept=0) if final_status == 0 else b"", final_status, session_flags=session_flags
            ),
        ),
    ]


UPLOAD = file_bytes(3 * 65536 + 1234, 1)


def upload_session() -> list[Msg]:
    """smbclient //10.77.0.2/public -U xsuser1 -c 'put secret.zip'."""
    msgs = login()
    msgs += [(True, tree_req(3, r"\\10.77.0.2\public")), (False, tree_resp(3))]
    # smbclient checks the share root with a related CREATE + QUERY_INFO + CLOSE compound
    msgs.append(
        (
            True,
            compound(
                h2(5, 4, tree=TREE_ID, sid=SID) + create_body("", 1, 0x00100081, 0x1),
                h2(16, 5, tree=TREE_ID, sid=SID, flags=4) + query_info_body(),
                h2(6, 6, tree=TREE_ID, sid=SID, flags=4) + struct.pack("<HHI16s", 24, 0, 0, b"\xff" * 16),
            ),
        )
    )
    msgs.append(
        (
            False,
            compound(
                h2(5, 4, resp=True, tree=TREE_ID, sid=SID) + create_resp_body(ROOT_FID, 1, 0, 0x10),
                h2(16, 5, resp=True, tree=TREE_ID, sid=SID, flags=4) + struct.pack("<HHI", 9, 72, 8) + b"\x00" * 8,
                h2(6, 6, resp=True, tree=TREE_ID, sid=SID, flags=4) + close_resp_body(),
            ),
        )
    )
    msgs += [
        (True, create_req(7, "secret.zip", disposition=5, access=0x0012019F)),
        (False, create_resp(7, FID, action=2)),
    ]
    mid, off = 8, 0
    for chunk in (UPLOAD[i : i + 65536] for i in range(0, len(UPLOAD), 65536)):
        msgs += [(True, write_req(mid, FID, off, chunk)), (False, write_resp(mid, len(chunk)))]
        mid, off = mid + 1, off + len(chunk)
    msgs += [
        (True, close_req(mid, FID)),
        (False, close_resp(mid)),
        (True, simple_req(4, mid + 1)),
        (False, simple_resp(4, mid + 1)),
        (True, simple_req(2, mid + 2, tree=0)),
        (False, simple_resp(2, mid + 2, tree=0)),
    ]
    return msgs


DOWNLOAD = file_bytes(2 * 65536 + 777, 2)


def download_session() -> list[Msg]:
    """smbclient ... -c 'get report.pdf' (reads of 64 KiB, the last one short, then EOF)."""
    msgs = login()
    msgs += [
        (True, tree_req(3, r"\\10.77.0.2\public")),
        (False, tree_resp(3)),
        (True, create_req(4, "docs\\report.pdf", disposition=1, access=0x00120089)),
        (False, create_resp(4, FID2, action=1, eof=len(DOWNLOAD))),
    ]
    mid, off = 5, 0
    while off < len(DOWNLOAD):
        chunk = DOWNLOAD[off : off + 65536]
        msgs += [(True, read_req(mid, FID2, off, 65536)), (False, read_resp(mid, chunk))]
        mid, off = mid + 1, off + len(chunk)
    msgs += [
        (True, read_req(mid, FID2, off, 65536)),
        (False, read_resp(mid, b"", status=STATUS_END_OF_FILE)),
        (True, close_req(mid + 1, FID2)),
        (False, close_resp(mid + 1)),
    ]
    return msgs


def netbios_session() -> list[Msg]:
    """smbclient -p 139: NetBIOS session request, then the same SMB 3.1.1."""
    return [(True, nb_session_request("10.77.0.2", "XS-CLIENT")), (False, b"\x82\x00\x00\x00")] + [
        m for m in upload_session()
    ]


def encrypted_session() -> list[Msg]:
    """--client-protection=encrypt: everything after session setup is in transforms."""
    msgs = login(user="xsuser2", session_flags=0x4)
    for i, n in enumerate((120, 200, 65600, 160, 65600, 90)):
        msgs.append((i % 2 == 0, transform(n)))
    return msgs


# --------------------------------------------------------------------------
# Feeding helpers
# --------------------------------------------------------------------------

GARBAGE = b"GARBAGE\r\nnot smb at all \x01\x02\x03"


def feed(
    msgs: list[Msg],
    mode: str = "whole",
    *,
    conn: ConnInfo = CONN445,
    limits: SmbLimits | None = None,
    analyzer: SmbAnalyzer | None = None,
    close: bool = True,
) -> list[Event]:
    a = analyzer or SmbAnalyzer(conn, limits)
    events: list[Event] = []
    rnd = random.Random(7)
    items = list(msgs)
    if mode == "garbage":
        last_ts = max(i for i, (d, _) in enumerate(items) if d)
        last_tc = max(i for i, (d, _) in enumerate(items) if not d)
        items[last_ts] = (True, items[last_ts][1] + GARBAGE)
        items[last_tc] = (False, items[last_tc][1] + GARBAGE)
    for to_server, data in items:
        recv = a.receive_ts if to_server else a.receive_tc
        if mode == "bytes":
            for i in range(len(data)):
                events += recv(data[i : i + 1], T0)
        elif mode == "chunks":
            i = 0
            while i < len(data):
                n = rnd.choice((1, 2, 3, 5, 13, 64, 100, 1500, 4000))
                events += recv(data[i : i + n], T0)
                i += n
        else:
            events += recv(data, T0)
    if close:
        events += a.close(T0 + 1)
    return events


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def weird_names(events) -> list[str]:
    return [e.name for e in events if isinstance(e, Weird)]


def no_weird(events) -> list[Event]:
    return [e for e in events if not isinstance(e, Weird)]


MODES = ["whole", "bytes", "chunks", "garbage"]


def check_modes(msgs: list[Msg], **kw) -> list[Event]:
    """Feed ``msgs`` every way; all must agree. Returns the whole-feed events."""
    base = feed(msgs, "whole", **kw)
    assert "smb_analyzer_error" not in weird_names(base)
    for mode in MODES[1:]:
        ev = feed(msgs, mode, **kw)
        if mode == "garbage":
            extra = [e for e in ev if isinstance(e, Weird) and e.name == "smb_malformed_header"]
            assert len(extra) == 2, weird_names(ev)  # one per direction
            ev = [e for e in ev if e not in extra]
        assert ev == base, mode
    return base


# --------------------------------------------------------------------------
# Scenario tests
# --------------------------------------------------------------------------


def test_upload_session_smbclient_like():
    ev = check_modes(upload_session())
    assert weird_names(ev) == []
    (neg,) = of(ev, SmbNegotiate)
    assert neg.dialects_offered == ("SMB 2.0.2", "SMB 2.1", "SMB 3.0", "SMB 3.0.2", "SMB 3.1.1")
    assert neg.dialect == "SMB 3.1.1"
    assert neg.cipher == "AES-128-GCM"
    assert neg.netname == "10.77.0.2"
    assert neg.status == "STATUS_SUCCESS"

    (setup,) = of(ev, SmbSessionSetup)
    assert (setup.user, setup.domain, setup.workstation) == ("xsuser1", "WORKGROUP", "XS-CLIENT")
    assert setup.status == "STATUS_SUCCESS"
    assert setup.auth == "ntlmssp"
    assert setup.session_id == f"{SID:016x}"
    assert not setup.anonymous and not setup.encrypt_data
    # nothing of the NTLM response/hash leaks into the event
    assert all(len(str(v)) < 64 for v in (setup.user, setup.domain, setup.workstation))

    (tree,) = of(ev, SmbTreeConnect)
    assert (tree.path, tree.tree_id, tree.share_type, tree.status, tree.user) == (
        r"\\10.77.0.2\public",
        TREE_ID,
        "disk",
        "STATUS_SUCCESS",
        "xsuser1",
    )

    root, secret = of(ev, SmbFileOpen)
    assert root.name == "" and root.is_dir and root.file_id == ROOT_FID.hex()
    assert secret.name == "secret.zip"
    assert secret.file_id == FID.hex()
    assert secret.tree == r"\\10.77.0.2\public"
    assert secret.disposition == "FILE_OVERWRITE_IF"
    assert "write" in secret.access and "read" in secret.access
    assert secret.create_action == "created"
    assert secret.user == "xsuser1"

    root_sum, secret_sum = of(ev, SmbFileSummary)
    assert root_sum.name == "" and root_sum.closed and root_sum.direction == "none"
    assert secret_sum.name == "secret.zip"
    assert secret_sum.bytes_written == len(UPLOAD) == 3 * 65536 + 1234
    assert secret_sum.bytes_read == 0
    assert secret_sum.writes == 4
    assert secret_sum.direction == "upload"
    assert secret_sum.closed and secret_sum.error == ""

    (tsum,) = of(ev, SmbTreeSummary)
    assert tsum.disconnected and tsum.bytes_written == len(UPLOAD) and tsum.files_opened == 2

    # order: what a log reader expects
    kinds = [type(e).__name__ for e in ev]
    assert kinds == [
        "SmbNegotiate",
        "SmbSessionSetup",
        "SmbTreeConnect",
        "SmbFileOpen",
        "SmbFileSummary",
        "SmbFileOpen",
        "SmbFileSummary",
        "SmbTreeSummary",
    ]


def test_download_session_counts_bytes_received():
    ev = check_modes(download_session())
    assert weird_names(ev) == []
    (op,) = of(ev, SmbFileOpen)
    assert op.name == "docs\\report.pdf" and op.size == len(DOWNLOAD)
    assert op.disposition == "FILE_OPEN" and op.access == ("read",)
    (s,) = of(ev, SmbFileSummary)
    assert s.bytes_read == len(DOWNLOAD) and s.bytes_written == 0
    assert s.reads == 3  # the EOF answer carries no data
    assert s.direction == "download" and s.error == ""
    (t,) = of(ev, SmbTreeSummary)
    assert t.bytes_read == len(DOWNLOAD) and not t.disconnected  # flushed at close


def test_netbios_139_session_request():
    ev = check_modes(netbios_session(), conn=CONN139)
    (nb,) = of(ev, SmbNetbiosSession)
    assert nb == SmbNetbiosSession(T0, "10.77.0.2<20>", "XS-CLIENT<00>", True, "")
    assert of(ev, SmbSessionSetup)[0].user == "xsuser1"
    assert of(ev, SmbFileSummary)[-1].bytes_written == len(UPLOAD)


def test_netbios_negative_session_response():
    msgs = [(True, nb_session_request("*SMBSERVER", "XS-CLIENT")), (False, b"\x83\x00\x00\x01\x82")]
    ev = check_modes(msgs, conn=CONN139)
    assert of(ev, SmbNetbiosSession) == [
        SmbNetbiosSession(T0, "*SMBSERVER<20>", "XS-CLIENT<00>", False, "called name not present")
    ]


def test_netbios_request_without_answer_flushed_at_close():
    ev = feed([(True, nb_session_request("10.77.0.2", "XS-CLIENT"))], conn=CONN139)
    (nb,) = of(ev, SmbNetbiosSession)
    assert nb.accepted is None


def test_netbios_retarget_response():
    msgs = [
        (True, nb_session_request("FILESRV", "XS-CLIENT")),
        (False, b"\x84\x00\x00\x06" + bytes([10, 77, 0, 9]) + struct.pack(">H", 139)),
    ]
    ev = check_modes(msgs, conn=CONN139)
    (nb,) = of(ev, SmbNetbiosSession)
    assert nb.accepted is False and nb.error == "retarget to 10.77.0.9:139"


def test_netbios_keepalive_ignored():
    msgs = upload_session()[:2] + [(True, b"\x85\x00\x00\x00"), (False, b"\x85\x00\x00\x00")]
    ev = check_modes(msgs)
    assert weird_names(ev) == [] and len(of(ev, SmbNegotiate)) == 1


def test_encrypted_session_keeps_user_hides_commands():
    msgs = encrypted_session()
    ev = check_modes(msgs)
    assert weird_names(ev) == []
    (setup,) = of(ev, SmbSessionSetup)
    assert setup.user == "xsuser2" and setup.encrypt_data
    (enc,) = of(ev, SmbEncrypted)
    assert enc.session_id == f"{SID:016x}" and enc.cipher == "AES-128-GCM"
    (tot,) = of(ev, SmbEncryptedSummary)
    sizes = [len(b) for d, b in msgs if b[4:8] == b"\xfdSMB"]
    dirs = [d for d, b in msgs if b[4:8] == b"\xfdSMB"]
    assert tot.frames_ts == 3 and tot.frames_tc == 3
    assert tot.bytes_ts == sum(s for s, d in zip(sizes, dirs) if d)
    assert tot.bytes_tc == sum(s for s, d in zip(sizes, dirs) if not d)
    assert not of(ev, SmbTreeConnect) and not of(ev, SmbFileOpen)


def test_encrypted_frames_are_not_buffered():
    a = SmbAnalyzer(CONN445)
    feed(login(session_flags=4), analyzer=a, close=False)
    big = transform(1_000_000)
    peak = 0
    for i in range(0, len(big), 1000):
        a.receive_tc(big[i : i + 1000], T0)
        peak = max(peak, len(a._framers[False]._buf))
    assert peak <= 1000 + 128
    assert a.stats.encrypted_bytes_tc == len(big)


def test_compression_transform_noted_once():
    comp = nbss(struct.pack("<4sIHHI", b"\xfcSMB", 5000, 1, 0, 0) + b"\x00" * 300)
    ev = check_modes(login() + [(True, comp), (True, comp)])
    assert of(ev, SmbCompressed) == [SmbCompressed(T0, "LZNT1", False)]


def test_logon_failure_status_recorded():
    ev = check_modes(login(user="mallory", final_status=STATUS_LOGON_FAILURE))
    (setup,) = of(ev, SmbSessionSetup)
    assert setup.user == "mallory" and setup.status == "STATUS_LOGON_FAILURE"


def test_kerberos_session_setup():
    krb_oid = bytes.fromhex("06092a864882f712010202")
    blob = der(
        0x60,
        OID_SPNEGO
        + der(0xA0, der(0x30, der(0xA0, der(0x30, krb_oid)) + der(0xA2, der(0x04, b"\x60\x82" + b"AP-REQ" * 20)))),
    )
    msgs = upload_session()[:2] + [(True, setup_req(1, blob)), (False, setup_resp(1, b"", 0))]
    (setup,) = of(check_modes(msgs), SmbSessionSetup)
    assert (setup.auth, setup.user, setup.status) == ("kerberos", "", "STATUS_SUCCESS")


def test_unanswered_session_setup_flushed_at_close():
    ev = check_modes(login()[:-1])
    (setup,) = of(ev, SmbSessionSetup)
    assert setup.user == "xsuser1" and setup.status == ""


def test_unanswered_negotiate_and_create_flushed_at_close():
    msgs = login() + [
        (True, tree_req(3, r"\\srv\s")),
        (False, tree_resp(3)),
        (True, create_req(4, "never-answered.bin", disposition=2)),
    ]
    ev = check_modes([(True, negotiate_req(9))] + msgs[2:])
    assert of(ev, SmbNegotiate)[0].dialect == ""
    (op,) = of(ev, SmbFileOpen)
    assert op.name == "never-answered.bin" and op.status == "" and op.disposition == "FILE_CREATE"


def test_read_and_write_errors_recorded():
    msgs = login() + [
        (True, tree_req(3, r"\\srv\s")),
        (False, tree_resp(3)),
        (True, create_req(4, "f", disposition=3, access=0x3)),
        (False, create_resp(4, FID)),
        (True, write_req(5, FID, 0, b"w" * 10)),
        (False, write_resp(5, 0, status=0xC000007F)),
        (True, read_req(6, FID, 0, 10)),
        (False, read_resp(6, b"", status=STATUS_ACCESS_DENIED)),
        (True, close_req(7, FID)),
        (False, close_resp(7)),
    ]
    (s,) = of(check_modes(msgs), SmbFileSummary)
    assert s.error == "STATUS_DISK_FULL" and s.bytes_written == 10 and s.bytes_read == 0


def test_max_trees_bounded():
    limits = SmbLimits(max_trees=2)
    msgs = login()
    for i in range(3):
        msgs += [(True, tree_req(10 + i, f"\\\\srv\\s{i}")), (False, tree_resp(10 + i, tree=100 + i))]
    ev = feed(msgs, limits=limits)
    assert weird_names(ev) == ["smb_too_many_trees"]
    assert [t.path for t in of(ev, SmbTreeSummary)] == ["\\\\srv\\s0", "\\\\srv\\s1", "\\\\srv\\s2"]


def test_access_denied_create_and_bad_share():
    msgs = login() + [
        (True, tree_req(3, r"\\10.77.0.2\nosuch")),
        (False, tree_resp(3, status=0xC00000CC)),
        (True, tree_req(4, r"\\10.77.0.2\public")),
        (False, tree_resp(4)),
        (True, create_req(5, "etc\\shadow", disposition=1)),
        (False, create_resp(5, status=STATUS_ACCESS_DENIED)),
    ]
    ev = check_modes(msgs)
    bad, good = of(ev, SmbTreeConnect)
    assert bad.status == "STATUS_BAD_NETWORK_NAME" and bad.tree_id == 0 and bad.share_type == ""
    assert good.status == "STATUS_SUCCESS"
    (op,) = of(ev, SmbFileOpen)
    assert op.name == "etc\\shadow" and op.status == "STATUS_ACCESS_DENIED" and op.file_id == ""
    assert not of(ev, SmbFileSummary)


def test_async_pending_interim_response():
    msgs = login() + [
        (True, tree_req(3, r"\\10.77.0.2\public")),
        (False, tree_resp(3)),
        (True, create_req(4, "slow.bin")),
        (
            False,
            nbss(
                h2(5, 4, resp=True, status=STATUS_PENDING, async_id=9, sid=SID)
                + struct.pack("<HBBI", 9, 0, 0, 0)
                + b"\x00"
            ),
        ),
        (False, create_resp(4, FID)),
    ]
    ev = check_modes(msgs)
    (op,) = of(ev, SmbFileOpen)
    assert op.status == "STATUS_SUCCESS" and op.file_id == FID.hex()


def test_smb1_negotiate_answered_by_smb2_wildcard():
    smb1_neg = nbss(
        smb1_hdr(0x72, 1)
        + b"\x00"
        + smb1_bytes(b"".join(b"\x02" + d + b"\x00" for d in (b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???")))
    )
    msgs = [(True, smb1_neg), (False, negotiate_resp(0, dialect=0x02FF))] + upload_session()[:2]
    ev = check_modes(msgs)
    first, second = of(ev, SmbNegotiate)
    assert first.dialects_offered == ("NT LM 0.12", "SMB 2.002", "SMB 2.???")
    assert first.dialect == "SMB 2.???"
    assert second.dialect == "SMB 3.1.1"


# --- SMB1 ----------------------------------------------------------------------

SMB1_FLAGS2 = 0xC807  # UNICODE | NT_STATUS | EXT_SEC | LONG_NAMES ...


def smb1_hdr(
    cmd: int,
    mid: int,
    *,
    reply: bool = False,
    status: int = 0,
    tid: int = 0,
    uid: int = 0,
    pid: int = 4242,
    flags2: int = SMB1_FLAGS2,
) -> bytes:
    return struct.pack(
        "<4sBIBHH8sHHHHH",
        b"\xffSMB",
        cmd,
        status,
        0x98 if reply else 0x18,
        flags2,
        pid >> 16,
        b"\x00" * 8,
        0,
        tid,
        pid & 0xFFFF,
        uid,
        mid,
    )


def smb1_words(*words_bytes: bytes) -> bytes:
    w = b"".join(words_bytes)
    return bytes([len(w) // 2]) + w


def smb1_bytes(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


ANDX_NONE = b"\xff\x00\x00\x00"


def s1_neg_req():
    d = b"".join(b"\x02" + x + b"\x00" for x in (b"PC NETWORK PROGRAM 1.0", b"LANMAN1.0", b"NT LM 0.12"))
    return nbss(smb1_hdr(0x72, 1) + b"\x00" + smb1_bytes(d))


def s1_neg_resp():
    words = struct.pack("<HBHHIIIIQhB", 2, 3, 50, 1, 0x10000, 0x10000, 0, 0x8000F3FD, 0, 0, 0)
    return nbss(smb1_hdr(0x72, 1, reply=True) + smb1_words(words) + smb1_bytes(b"\x24" * 16))


def s1_ss_req(mid, blob, uid=0):
    w = ANDX_NONE + struct.pack("<HHHIHII", 0xFFFF, 2, 0, 0, len(blob), 0, 0x800000D4)
    hdr = smb1_hdr(0x73, mid, uid=uid)
    tail = (
        blob + (b"\x00" if (len(hdr) + 1 + len(w) + 2 + len(blob)) % 2 else b"") + "Unix\0Samba\0".encode("utf-16-le")
    )
    return nbss(hdr + smb1_words(w) + smb1_bytes(tail))


def s1_ss_resp(mid, blob, status, uid=0x64):
    w = ANDX_NONE + struct.pack("<HH", 0, len(blob))
    return nbss(smb1_hdr(0x73, mid, reply=True, status=status, uid=uid) + smb1_words(w) + smb1_bytes(blob))


def s1_tc_req(mid):
    hdr = smb1_hdr(0x75, mid, uid=0x64)
    w = ANDX_NONE + struct.pack("<HH", 0x8, 1)
    pw = b"\x00"
    start = len(hdr) + 1 + len(w) + 2 + len(pw)
    pad = b"\x00" if start % 2 else b""
    return nbss(
        hdr + smb1_words(w) + smb1_bytes(pw + pad + "\\\\10.77.0.2\\PUBLIC\0".encode("utf-16-le") + b"?????\x00")
    )


def s1_tc_resp(mid):
    w = ANDX_NONE + struct.pack("<H", 1)
    return nbss(
        smb1_hdr(0x75, mid, reply=True, tid=0x7, uid=0x64) + smb1_words(w) + smb1_bytes(b"A:\x00N\x00T\x00\x00\x00")
    )


def s1_create_req(mid, name):
    n = name.encode("utf-16-le")
    w = ANDX_NONE + struct.pack("<BHIIIQIIIIIB", 0, len(n), 0x16, 0, 0x2019F, 0, 0x80, 7, 5, 0x44, 2, 3)
    hdr = smb1_hdr(0xA2, mid, tid=7, uid=0x64)
    pad = b"\x00" if (len(hdr) + 1 + len(w) + 2) % 2 else b""
    return nbss(hdr + smb1_words(w) + smb1_bytes(pad + n))


def s1_create_resp(mid, fid):
    w = ANDX_NONE + struct.pack("<BHIQQQQIQQHHB", 0, fid, 2, 1, 2, 3, 4, 0x20, 0, 0, 0, 0, 0)
    return nbss(smb1_hdr(0xA2, mid, reply=True, tid=7, uid=0x64) + smb1_words(w) + smb1_bytes(b""))


def s1_write_req(mid, fid, off, data):
    hdr = smb1_hdr(0x2F, mid, tid=7, uid=0x64)
    data_off = len(hdr) + 1 + 28 + 2
    w = ANDX_NONE + struct.pack("<HIIHHHHHI", fid, off, 0, 0, 0, len(data) >> 16, len(data) & 0xFFFF, data_off, 0)
    return nbss(
        hdr + smb1_words(w) + smb1_bytes(data)
        if len(data) < 0x10000
        else hdr + smb1_words(w) + struct.pack("<H", 0) + data
    )


def s1_write_resp(mid, n):
    w = ANDX_NONE + struct.pack("<HHHH", n & 0xFFFF, 0, n >> 16, 0)
    return nbss(smb1_hdr(0x2F, mid, reply=True, tid=7, uid=0x64) + smb1_words(w) + smb1_bytes(b""))


def s1_read_req(mid, fid, off, n):
    w = ANDX_NONE + struct.pack("<HIHHIHI", fid, off, n, n, 0, 0, 0)
    return nbss(smb1_hdr(0x2E, mid, tid=7, uid=0x64) + smb1_words(w) + smb1_bytes(b""))


def s1_read_resp(mid, data):
    hdr = smb1_hdr(0x2E, mid, reply=True, tid=7, uid=0x64)
    w = ANDX_NONE + struct.pack(
        "<HHHHHH8s", 0xFFFF, 0, 0, len(data) & 0xFFFF, len(hdr) + 1 + 24 + 2, len(data) >> 16, b"\x00" * 8
    )
    return nbss(hdr + smb1_words(w) + smb1_bytes(data))


def s1_close(mid, fid, reply=False):
    if reply:
        return nbss(smb1_hdr(0x04, mid, reply=True, tid=7, uid=0x64) + b"\x00" + smb1_bytes(b""))
    return nbss(smb1_hdr(0x04, mid, tid=7, uid=0x64) + smb1_words(struct.pack("<HI", fid, 0)) + smb1_bytes(b""))


def smb1_session() -> list[Msg]:
    data = file_bytes(40000, 3)
    return [
        (True, s1_neg_req()),
        (False, s1_neg_resp()),
        (True, s1_ss_req(2, spnego_init(ntlm_negotiate()))),
        (False, s1_ss_resp(2, spnego_resp(ntlm_challenge(), 1), STATUS_MORE_PROCESSING_REQUIRED)),
        (True, s1_ss_req(3, spnego_resp(ntlm_authenticate("olduser", "LEGACY", "WINXP")), uid=0x64)),
        (False, s1_ss_resp(3, spnego_resp(b"", 0), 0)),
        (True, s1_tc_req(4)),
        (False, s1_tc_resp(4)),
        (True, s1_create_req(5, "\\loot.7z")),
        (False, s1_create_resp(5, 0x4001)),
        (True, s1_write_req(6, 0x4001, 0, data)),
        (False, s1_write_resp(6, len(data))),
        (True, s1_read_req(7, 0x4001, 0, 1000)),
        (False, s1_read_resp(7, data[:1000])),
        (True, s1_close(8, 0x4001)),
        (False, s1_close(8, 0x4001, reply=True)),
    ]


def test_smb1_session():
    ev = check_modes(smb1_session())
    assert weird_names(ev) == []
    (neg,) = of(ev, SmbNegotiate)
    assert neg.dialects_offered == ("PC NETWORK PROGRAM 1.0", "LANMAN1.0", "NT LM 0.12")
    assert neg.dialect == "NT LM 0.12"
    (setup,) = of(ev, SmbSessionSetup)
    assert (setup.user, setup.domain, setup.workstation, setup.status) == (
        "olduser",
        "LEGACY",
        "WINXP",
        "STATUS_SUCCESS",
    )
    (tree,) = of(ev, SmbTreeConnect)
    assert (tree.path, tree.tree_id, tree.share_type) == ("\\\\10.77.0.2\\PUBLIC", 7, "disk")
    (op,) = of(ev, SmbFileOpen)
    assert (op.name, op.file_id, op.create_action, op.disposition) == (
        "\\loot.7z",
        "0140",
        "created",
        "FILE_OVERWRITE_IF",
    )
    (s,) = of(ev, SmbFileSummary)
    assert (s.bytes_written, s.bytes_read, s.direction) == (40000, 1000, "both")
    assert s.tree == "\\\\10.77.0.2\\PUBLIC" and s.user == "olduser"


def test_smb1_andx_chain_plaintext_setup_and_tree_connect():
    """Old clients chain SESSION_SETUP_ANDX (no extended security) + TREE_CONNECT_ANDX."""
    u = lambda x: x.encode("utf-16-le")  # noqa: E731
    hdr = smb1_hdr(0x73, 2)
    ss_bytes = b"\x00" * 24 + b"\x00" + u("bob\0") + u("CORP\0") + u("Unix\0") + u("Samba\0")
    tc_off = 32 + 1 + 26 + 2 + len(ss_bytes)
    ss_words = struct.pack("<BBHHHHIHHII", 0x75, 0, tc_off, 0xFFFF, 2, 0, 0, 0, 24, 0, 0xD4)
    tc_block = smb1_words(ANDX_NONE + struct.pack("<HH", 0x8, 1))
    pad = b"\x00" if (tc_off + len(tc_block) + 2 + 1) % 2 else b""
    tc_block += smb1_bytes(b"\x00" + pad + u("\\\\srv\\loot\0") + b"?????\x00")
    req = nbss(hdr + smb1_words(ss_words) + smb1_bytes(ss_bytes) + tc_block)

    rhdr = smb1_hdr(0x73, 2, reply=True, uid=0x99, tid=0x11)
    r_ss_bytes = u("Unix\0")
    r_tc_off = 32 + 1 + 6 + 2 + len(r_ss_bytes)
    r_ss = smb1_words(struct.pack("<BBHH", 0x75, 0, r_tc_off, 0)) + smb1_bytes(r_ss_bytes)
    r_tc = smb1_words(ANDX_NONE + struct.pack("<H", 1)) + smb1_bytes(b"A:\x00")
    resp = nbss(rhdr + r_ss + r_tc)
    ev = check_modes([(True, s1_neg_req()), (False, s1_neg_resp()), (True, req), (False, resp)])
    assert weird_names(ev) == []
    (setup,) = of(ev, SmbSessionSetup)
    assert (setup.user, setup.domain, setup.auth, setup.session_id) == ("bob", "CORP", "plaintext", "0099")
    (tree,) = of(ev, SmbTreeConnect)
    assert (tree.path, tree.tree_id, tree.share_type, tree.user) == ("\\\\srv\\loot", 0x11, "disk", "bob")


def test_smb1_bad_andx_offset():
    msg = bytearray(s1_tc_req(4))
    struct.pack_into("<BBH", msg, 4 + 33, 0xA2, 0, 10)  # AndX pointing backwards
    ev = feed([(True, s1_neg_req()), (True, bytes(msg))])
    assert weird_names(ev) == ["smb_malformed_header"]


def test_smb1_dos_error_and_tree_disconnect():
    dos = 0x00020001  # class 1 (ERRDOS), code 2 (ERRbadfile)
    flags2 = SMB1_FLAGS2 & ~0x4000  # DOS error codes, not NT status
    fail = nbss(smb1_hdr(0xA2, 5, reply=True, status=dos, tid=7, uid=0x64, flags2=flags2) + b"\x00" + smb1_bytes(b""))
    msgs = smb1_session()[:8] + [
        (True, s1_create_req(5, "\\missing")),
        (False, fail),
        (True, nbss(smb1_hdr(0x71, 6, tid=7, uid=0x64) + b"\x00" + smb1_bytes(b""))),
        (False, nbss(smb1_hdr(0x71, 6, reply=True, tid=7, uid=0x64) + b"\x00" + smb1_bytes(b""))),
    ]
    ev = check_modes(msgs)
    (op,) = of(ev, SmbFileOpen)
    assert op.status == "DOS_ERROR(1,2)" and op.file_id == ""
    (t,) = of(ev, SmbTreeSummary)
    assert t.disconnected and t.path == "\\\\10.77.0.2\\PUBLIC"


# --------------------------------------------------------------------------
# Mid-stream pickup, gaps, resync
# --------------------------------------------------------------------------


def split_dirs(msgs: list[Msg]) -> tuple[bytes, bytes]:
    return b"".join(b for d, b in msgs if d), b"".join(b for d, b in msgs if not d)


@pytest.mark.parametrize("cut", [1, 3, 4, 7, 100, 5000, 70_000, 140_000])
def test_midstream_pickup_resyncs(cut):
    """Capture starts ``cut`` bytes into the client stream of an upload (server
    side from its first response after that point)."""
    msgs = upload_session()
    ts_all, _ = split_dirs(msgs)
    # the client messages that begin at or after the cut are fully visible
    pos, visible_writes, tc_from = 0, 0, None
    for i, (d, b) in enumerate(msgs):
        if not d:
            continue
        if pos >= cut and b[4:8] == b"\xfeSMB" and b[16] == 9:
            visible_writes += struct.unpack_from("<I", b, 4 + 68)[0]
        if pos >= cut and tc_from is None:
            tc_from = i + 1
        pos += len(b)
    a = SmbAnalyzer(CONN445)
    ev: list[Event] = []
    sent = 0
    for i, (d, b) in enumerate(msgs):
        if d:
            start = max(0, cut - sent)
            sent += len(b)
            if start < len(b):
                ev += a.receive_ts(b[start:], T0)
        elif tc_from is not None and i >= tc_from:
            ev += a.receive_tc(b, T0)
    ev += a.close(T0)
    names = weird_names(ev)
    assert "smb_analyzer_error" not in names
    assert names.count("smb_midstream_pickup") == 1
    written = sum(s.bytes_written for s in of(ev, SmbFileSummary))
    assert written == visible_writes
    if cut == 140_000:  # mid third write: the rest of the upload lands on secret.zip's FileId
        s = [x for x in of(ev, SmbFileSummary) if x.bytes_written][0]
        assert s.file_id == FID.hex() and s.name == "" and s.closed


@pytest.mark.parametrize("cut", [5, 500, 1500, 2100])
def test_midstream_pickup_into_encrypted_session(cut):
    """Client stream picked up ``cut`` bytes in, server stream 5 bytes in."""
    msgs = encrypted_session()
    ts_all, tc_all = split_dirs(msgs)
    pos, visible = 0, 0
    for d, b in msgs:
        if d:
            visible += pos >= cut and b[4:8] == b"\xfdSMB"
            pos += len(b)
    a = SmbAnalyzer(CONN445)
    ev = a.receive_ts(ts_all[cut:], T0) + a.receive_tc(tc_all[5:], T0) + a.close(T0)
    assert weird_names(ev) == ["smb_midstream_pickup"] * 2
    (enc,) = of(ev, SmbEncrypted)
    assert enc.session_id == f"{SID:016x}"
    (tot,) = of(ev, SmbEncryptedSummary)
    assert (tot.frames_ts, tot.frames_tc) == (visible, 3)


def drop_prefix(msgs: list[Msg], ts_cut: int, tc_cut: int) -> list[Msg]:
    """The same conversation, interleaving kept, minus the first bytes of each direction."""
    left = {True: ts_cut, False: tc_cut}
    out = []
    for d, b in msgs:
        n = min(left[d], len(b))
        left[d] -= n
        if b[n:]:
            out.append((d, b[n:]))
    return out


def test_midstream_pickup_smb1():
    ev = feed(drop_prefix(smb1_session(), 200, 150))
    assert weird_names(ev) == ["smb_midstream_pickup", "smb_midstream_pickup"]
    (s,) = of(ev, SmbFileSummary)
    assert s.bytes_written == 40000 and s.bytes_read == 1000 and s.name == "\\loot.7z"


def test_probe_and_find_frame_start():
    msgs = upload_session()
    ts_all, tc_all = split_dirs(msgs)
    probe_ts, probe_tc = SmbAnalyzer.probe_ts, SmbAnalyzer.probe_tc
    assert probe_ts(ts_all) is True and probe_tc(tc_all) is True
    assert probe_ts(ts_all[:10]) is None  # an SMB2 header needs more bytes to judge
    assert probe_ts(b"") is None
    assert probe_ts(nb_session_request("10.77.0.2", "X")) is True
    assert probe_ts(nb_session_request("10.77.0.2", "X")[:30]) is None
    assert probe_tc(b"\x82\x00\x00\x00") is True
    assert probe_ts(b"\x82\x00\x00\x00") is False
    assert probe_ts(b"GET / HTTP/1.1\r\n\r\n") is False
    assert probe_ts(b"\x00\x00\x00\x10\xfeSMB" + b"\x00" * 20) is False  # too short for SMB2
    assert probe_ts(b"\x16\x03\x01\x02\x00") is False  # TLS
    # mid-stream: a frame start anywhere, else undecided
    assert probe_ts(b"xx" + ts_all, midstream=True) is True
    assert probe_ts(b"\x00" * 5000, midstream=True) is None
    assert find_frame_start(b"xx" + ts_all, True) == 2
    assert find_frame_start(ts_all[10:], True) == len(msgs[0][1]) - 10
    assert find_frame_start(b"\x82\x00\x00\x00", False) == 0
    assert find_frame_start(b"no smb here", True) == -1


def test_midstream_flag_scans_quietly():
    msgs = drop_prefix(upload_session(), 70_000, 0)
    ev = feed(msgs, analyzer=SmbAnalyzer(CONN445, midstream=True))
    assert weird_names(ev) == []
    (s,) = [x for x in of(ev, SmbFileSummary) if x.bytes_written]
    # the writes whose headers follow the cut, on secret.zip's FileId (its name was in the lost request)
    assert (s.file_id, s.name, s.bytes_written, s.closed) == (FID.hex(), "", 65536 + 1234, True)


def test_gap_inside_write_payload_keeps_framing():
    msgs = upload_session()
    a = SmbAnalyzer(CONN445)
    ev: list[Event] = []
    first_write = True
    for d, b in msgs:
        if d and b[4:8] == b"\xfeSMB" and b[16] == 9 and first_write:
            first_write = False
            ev += a.receive_ts(b[:500], T0)
            ev += a.gap(True, 30_000, T0)
            ev += a.receive_ts(b[30_500:], T0)
        else:
            ev += (a.receive_ts if d else a.receive_tc)(b, T0)
    ev += a.close(T0)
    gaps = [e for e in ev if isinstance(e, Weird)]
    assert [g.name for g in gaps] == ["smb_content_gap"] and "framing kept" in gaps[0].detail
    s = [x for x in of(ev, SmbFileSummary) if x.name == "secret.zip"][0]
    assert s.bytes_written == len(UPLOAD)  # counted from the header, not the missing bytes


def test_gap_inside_buffered_message_then_next_parses():
    msgs = download_session()
    a = SmbAnalyzer(CONN445)
    ev: list[Event] = []
    for d, b in msgs:
        if not d and b[4:8] == b"\xfeSMB" and b[16] == 3:  # tree connect response, buffered whole
            ev += a.receive_tc(b[:30], T0)
            ev += a.gap(False, 20, T0)
            ev += a.receive_tc(b[50:], T0)
        else:
            ev += (a.receive_ts if d else a.receive_tc)(b, T0)
    ev += a.close(T0)
    assert weird_names(ev) == ["smb_content_gap"]
    assert not of(ev, SmbTreeConnect)  # that response is lost ...
    assert of(ev, SmbFileSummary)[0].bytes_read == len(DOWNLOAD)  # ... the rest is not


def test_gap_across_message_boundary_rescans():
    msgs = download_session()
    a = SmbAnalyzer(CONN445)
    ev: list[Event] = []
    reads_seen = 0
    for d, b in msgs:
        if not d and b[4:8] == b"\xfeSMB" and b[16] == 8:
            reads_seen += 1
            if reads_seen == 1:  # first read response: its head arrives, then the gap
                ev += a.receive_tc(b[:200], T0)
                ev += a.gap(False, len(b) - 200 + 10, T0)  # rest of it and 10 bytes of the next
                continue
            if reads_seen == 2:
                b = b[10:]
        ev += (a.receive_ts if d else a.receive_tc)(b, T0)
    ev += a.close(T0)
    g = [e for e in ev if isinstance(e, Weird)]
    assert [x.name for x in g] == ["smb_content_gap"] and "resynchronising" in g[0].detail
    # the first read's size was in its (received) header; the second answer was cut, the third counts
    (s,) = of(ev, SmbFileSummary)
    assert s.bytes_read == 65536 + (len(DOWNLOAD) - 2 * 65536)


# --------------------------------------------------------------------------
# Malformed input: named Weirds, never exceptions
# --------------------------------------------------------------------------


def test_not_a_frame_start_is_midstream_pickup():
    ev = feed([(True, b"\x47ARBAGE" + negotiate_req(0)[0:0] + b"\x00" * 20)])
    assert weird_names(ev)[0] == "smb_midstream_pickup"


def test_malformed_header_after_sync():
    ev = feed(
        [
            (True, negotiate_req(0)),
            (True, b"\x00\x00\x00\x40NOTSMB" + b"\x00" * 60),
            (True, negotiate_req(1)),
            (False, negotiate_resp(1)),
        ]
    )
    assert weird_names(ev) == ["smb_malformed_header"]
    assert of(ev, SmbNegotiate)[-1].dialect == "SMB 3.1.1"  # resynchronised on the next message


def test_bad_netbios_flags_and_lengths():
    for bad in (b"\x85\x00\x00\x05abcde", b"\x81\x02\x00\x44", b"\x82\x00\x00\x01\x00"):
        to_server = bad[0] in (0x81, 0x85)
        ev = feed(
            [(True, negotiate_req(0)), (to_server, bad)] if to_server else [(False, negotiate_resp(0)), (False, bad)]
        )
        assert "smb_malformed_header" in weird_names(ev), bad


def test_control_message_in_wrong_direction():
    ev = feed([(False, nb_session_request("A", "B"))])
    assert weird_names(ev) == ["smb_midstream_pickup"]


def test_smb2_header_too_short_for_length():
    ev = feed([(True, nbss(b"\xfeSMB" + b"\x00" * 20))])
    assert weird_names(ev) == ["smb_midstream_pickup"]


def test_pdu_too_large_is_skipped_streaming():
    limits = SmbLimits(max_pdu_size=2048)
    big_qdir = nbss(h2(14, 9, resp=True, tree=TREE_ID, sid=SID) + struct.pack("<HHI", 9, 72, 20000) + b"\x41" * 20000)
    a = SmbAnalyzer(CONN445, limits)
    ev = feed(upload_session()[:8], analyzer=a, close=False)
    peak = 0
    for i in range(0, len(big_qdir), 333):
        ev += a.receive_tc(big_qdir[i : i + 333], T0)
        peak = max(peak, len(a._framers[False]._buf))
    ev += feed([(True, create_req(20, "after.txt")), (False, create_resp(20, FID))], analyzer=a)
    assert weird_names(ev) == ["smb_pdu_too_large"]
    assert peak <= 333 + 128
    assert [o.name for o in of(ev, SmbFileOpen)][-1] == "after.txt"


def test_large_write_streamed_without_weird_or_buffering():
    data = file_bytes(1_000_000, 9)
    a = SmbAnalyzer(CONN445)
    ev = feed(upload_session()[:10], analyzer=a, close=False)
    w = write_req(50, FID, 0, data)
    peak = 0
    for i in range(0, len(w), 1448):
        ev += a.receive_ts(w[i : i + 1448], T0)
        peak = max(peak, len(a._framers[True]._buf))
    ev += feed([(False, write_resp(50, len(data))), (True, close_req(51, FID)), (False, close_resp(51))], analyzer=a)
    assert weird_names(ev) == []
    assert peak <= 1448 + 128
    assert of(ev, SmbFileSummary)[-1].bytes_written == len(data)


def test_bad_next_command():
    bad = bytearray(
        compound(
            h2(5, 4, tree=TREE_ID, sid=SID) + create_body("a", 1, 1),
            h2(6, 5, tree=TREE_ID, sid=SID, flags=4) + struct.pack("<HHI16s", 24, 0, 0, b"\xff" * 16),
        )
    )
    struct.pack_into("<I", bad, 4 + 20, 0x7D)  # not 8-aligned
    ev = feed(login() + [(True, bytes(bad))])
    assert "smb_malformed_header" in weird_names(ev)
    assert "smb_analyzer_error" not in weird_names(ev)


def test_create_name_beyond_message():
    msg = bytearray(create_req(4, "abc"))
    struct.pack_into("<H", msg, 4 + 64 + 46, 5000)  # NameLength
    ev = feed(login() + [(True, bytes(msg))])
    assert weird_names(ev) == ["smb_malformed_command"]


def test_ntlm_field_out_of_bounds():
    auth = bytearray(ntlm_authenticate("x", "y", "z"))
    struct.pack_into("<HHI", auth, 36, 40, 40, 9999)  # UserName points past the end
    ev = feed([(True, setup_req(2, spnego_resp(bytes(auth)), sid=SID)), (False, setup_resp(2, b"", 0))])
    assert weird_names(ev) == ["smb_malformed_ntlmssp"]
    (s,) = of(ev, SmbSessionSetup)
    assert s.user == "" and s.status == "STATUS_SUCCESS"


def test_ntlm_oem_strings_and_anonymous():
    info = parse_ntlmssp(b"junk" + ntlm_authenticate("Bob", "DOM", "PC", unicode=False))
    assert (info.user, info.domain, info.workstation) == ("Bob", "DOM", "PC")
    anon = parse_ntlmssp(ntlm_authenticate("", "", "", nt_len=0, lm_len=1))
    assert anon.anonymous and anon.user == ""
    assert parse_ntlmssp(b"no ntlm here") is None
    assert parse_ntlmssp(ntlm_negotiate()).msg_type == 1


def test_session_request_bad_encoding():
    req = bytearray(nb_session_request("10.77.0.2", "X"))
    req[10] = ord("Z")  # outside A..P
    ev = feed([(True, bytes(req))], conn=CONN139)
    assert weird_names(ev) == ["netbios_malformed_session_request"]


def test_decode_netbios_name_with_scope():
    enc = nb_name("FILESRV", 0x20)[:-1] + b"\x04corp\x03lan\x00"
    assert decode_netbios_name(enc) == ("FILESRV<20>.corp.lan", len(enc))


def test_truncated_at_close():
    w = write_req(5, FID, 0, b"x" * 100)
    ev = feed([(True, w[:50])])
    assert weird_names(ev) == ["smb_truncated_pdu"]
    ev = feed([(True, b"\x00\x00")])
    assert weird_names(ev) == ["smb_truncated_pdu"]


def test_name_too_long_is_capped_with_flag():
    limits = SmbLimits(max_name_length=8)
    msgs = login() + [
        (True, tree_req(3, r"\\10.77.0.2\public")),
        (False, tree_resp(3)),
        (True, create_req(4, "a-very-long-file-name.zip")),
        (False, create_resp(4, FID)),
    ]
    ev = feed(msgs, limits=limits)
    (op,) = of(ev, SmbFileOpen)
    assert op.name == "a-very-l" and op.truncated
    assert of(ev, SmbTreeConnect)[0].truncated
    (setup,) = of(ev, SmbSessionSetup)
    assert setup.user == "xsuser1" and setup.domain == "WORKGROU" and setup.truncated


def test_max_open_files_evicts_and_summarises():
    limits = SmbLimits(max_open_files=2)
    msgs = login() + [(True, tree_req(3, r"\\srv\s")), (False, tree_resp(3))]
    for i in range(3):
        fid = struct.pack("<QQ", 100 + i, 200 + i)
        msgs += [
            (True, create_req(10 + i, f"f{i}")),
            (False, create_resp(10 + i, fid)),
            (True, write_req(20 + i, fid, 0, b"z" * (10 + i))),
        ]
    ev = feed(msgs, limits=limits)
    assert weird_names(ev) == ["smb_too_many_open_files"]
    sums = of(ev, SmbFileSummary)
    assert [(s.name, s.bytes_written, s.closed) for s in sums] == [
        ("f0", 10, False),
        ("f1", 11, False),
        ("f2", 12, False),
    ]


def test_max_pending_requests_bounded():
    limits = SmbLimits(max_pending_requests=4)
    a = SmbAnalyzer(CONN445, limits)
    msgs = login() + [
        (True, tree_req(3, r"\\srv\s")),
        (False, tree_resp(3)),
        (True, create_req(4, "f")),
        (False, create_resp(4, FID)),
    ]
    msgs += [(True, read_req(100 + i, FID, 0, 10)) for i in range(20)]
    ev = feed(msgs, analyzer=a, close=False)
    assert weird_names(ev) == ["smb_too_many_pending_requests"]
    assert len(a._pending) == 4


def test_unmatched_responses_are_counted_not_reported():
    a = SmbAnalyzer(CONN445)
    ev = feed([(False, read_resp(77, b"abc")), (False, close_resp(78))], analyzer=a)
    assert weird_names(ev) == [] and not of(ev, SmbFileSummary)
    assert a.stats.unmatched_responses == 2


def test_close_is_idempotent_and_later_input_ignored():
    a = SmbAnalyzer(CONN445)
    feed(upload_session()[:8], analyzer=a)
    assert a.close(T0) == []
    assert a.receive_ts(negotiate_req(0), T0) == []


def test_framer_need_data_and_message():
    f = NbssFramer(True, 1024)
    msg = negotiate_req(0)
    f.receive_data(msg[:3])
    assert f.next_event() is NEED_DATA
    f.receive_data(msg[3:])
    ev = f.next_event()
    assert isinstance(ev, NbssMessage) and ev.complete and ev.data == msg[4:]
    assert f.next_event() is NEED_DATA
    assert f.close() is None


# --------------------------------------------------------------------------
# Independent oracle: scapy's SMB2/NTLM dissectors and builders
# --------------------------------------------------------------------------


def test_builders_agree_with_scapy():
    pytest.importorskip("scapy.layers.smb")  # binds NBTSession -> SMB/SMB2 headers
    importlib.import_module("scapy.layers.spnego")  # binds the GSS-API OID -> SPNEGO
    import scapy.layers.smb2 as scapy_smb2
    from scapy.layers.netbios import NBTSession
    from scapy.layers.ntlm import NTLM_AUTHENTICATE

    def dissect(b):
        return NBTSession(b)

    neg = dissect(negotiate_req(0))
    req = neg[scapy_smb2.SMB2_Negotiate_Protocol_Request]
    assert list(req.Dialects) == list(SMBCLIENT_DIALECTS)
    ctx = {c.ContextType: c for c in req.NegotiateContexts}
    assert ctx[5].payload.NetName == "10.77.0.2"

    resp = dissect(negotiate_resp(0))[scapy_smb2.SMB2_Negotiate_Protocol_Response]
    assert resp.DialectRevision == 0x0311

    auth = ntlm_authenticate("xsuser1", "WORKGROUP", "XS-CLIENT")
    n = NTLM_AUTHENTICATE(auth)
    assert (n.UserName, n.DomainName, n.Workstation) == ("xsuser1", "WORKGROUP", "XS-CLIENT")

    # scapy's own SPNEGO parser finds the NTLM message inside our DER wrapping
    ss = dissect(setup_req(2, spnego_resp(auth), sid=SID))[scapy_smb2.SMB2_Session_Setup_Request]
    ((name, spnego),) = ss.Buffer
    token = spnego.token.responseToken.value
    assert (token.UserName, token.DomainName, token.Workstation) == ("xsuser1", "WORKGROUP", "XS-CLIENT")
    init = dissect(setup_req(1, spnego_init(ntlm_negotiate())))[scapy_smb2.SMB2_Session_Setup_Request]
    neg_token = init.Buffer[0][1].innerToken.token
    assert neg_token.mechTypes[0].oid.val == "1.3.6.1.4.1.311.2.2.10"
    assert neg_token.mechToken.value.MessageType == 1
    chal = dissect(setup_resp(1, spnego_resp(ntlm_challenge(), accept=1), STATUS_MORE_PROCESSING_REQUIRED))
    assert chal[scapy_smb2.SMB2_Header].SessionId == SID
    assert chal[scapy_smb2.SMB2_Session_Setup_Response].Buffer[0][1].token.responseToken.value.TargetName == "XFERLAB"

    tc = dissect(tree_req(3, r"\\10.77.0.2\public"))[scapy_smb2.SMB2_Tree_Connect_Request]
    assert tc.Path == r"\\10.77.0.2\public"
    assert dissect(tree_resp(3))[scapy_smb2.SMB2_Header].TID == TREE_ID

    cr = dissect(create_req(7, "secret.zip", disposition=5))[scapy_smb2.SMB2_Create_Request]
    assert cr.Name == "secret.zip" and cr.CreateDisposition == 5
    co = dissect(create_resp(7, FID, action=2, eof=99))[scapy_smb2.SMB2_Create_Response]
    assert bytes(co.FileId) == FID and co.EndOfFile == 99 and co.CreateAction == 2

    wr = dissect(write_req(8, FID, 65536, b"q" * 100))[scapy_smb2.SMB2_Write_Request]
    assert wr.Offset == 65536 and bytes(wr.FileId) == FID and wr.Data == b"q" * 100
    rr = dissect(read_req(9, FID, 0, 4096))[scapy_smb2.SMB2_Read_Request]
    assert rr.Length == 4096 and bytes(rr.FileId) == FID
    rs = dissect(read_resp(9, b"r" * 50))[scapy_smb2.SMB2_Read_Response]
    assert rs.Data == b"r" * 50
    cl = dissect(close_req(10, FID))[scapy_smb2.SMB2_Close_Request]
    assert bytes(cl.FileId) == FID

    tr = scapy_smb2.SMB2_Transform_Header(transform(100)[4:])
    assert tr.SessionId == SID and tr.OriginalMessageSize == 100 and tr.Flags == 1


def test_scapy_built_session():
    """Bytes built by scapy (not by our helpers) give the same fields."""
    smb2 = pytest.importorskip("scapy.layers.smb2")
    from scapy.layers.netbios import NBTSession

    def pkt(hdr_kw, payload):
        return bytes(NBTSession() / smb2.SMB2_Header(**hdr_kw) / payload)

    resp = {"Flags": "SMB2_FLAGS_SERVER_TO_REDIR"}
    msgs = [
        (
            True,
            pkt({"Command": 3, "MID": 3, "SessionId": SID}, smb2.SMB2_Tree_Connect_Request(Path=r"\\10.77.0.2\public")),
        ),
        (
            False,
            pkt(
                {"Command": 3, "MID": 3, "TID": 5, "SessionId": SID, **resp},
                smb2.SMB2_Tree_Connect_Response(ShareType=1),
            ),
        ),
        (
            True,
            pkt(
                {"Command": 5, "MID": 4, "TID": 5, "SessionId": SID},
                smb2.SMB2_Create_Request(Name="exfil.tar", CreateDisposition=5, DesiredAccess=0x12019F),
            ),
        ),
        (
            False,
            pkt(
                {"Command": 5, "MID": 4, "TID": 5, "SessionId": SID, **resp},
                smb2.SMB2_Create_Response(FileId=smb2.SMB2_FILEID(Persistent=1, Volatile=2), CreateAction=2),
            ),
        ),
        (
            True,
            pkt(
                {"Command": 9, "MID": 5, "TID": 5, "SessionId": SID},
                smb2.SMB2_Write_Request(FileId=smb2.SMB2_FILEID(Persistent=1, Volatile=2), Data=b"E" * 3000),
            ),
        ),
        (
            False,
            pkt({"Command": 9, "MID": 5, "TID": 5, "SessionId": SID, **resp}, smb2.SMB2_Write_Response(Count=3000)),
        ),
        (
            True,
            pkt(
                {"Command": 8, "MID": 6, "TID": 5, "SessionId": SID},
                smb2.SMB2_Read_Request(FileId=smb2.SMB2_FILEID(Persistent=1, Volatile=2), Length=500),
            ),
        ),
        (
            False,
            pkt({"Command": 8, "MID": 6, "TID": 5, "SessionId": SID, **resp}, smb2.SMB2_Read_Response(Data=b"R" * 500)),
        ),
        (
            True,
            pkt(
                {"Command": 6, "MID": 7, "TID": 5, "SessionId": SID},
                smb2.SMB2_Close_Request(FileId=smb2.SMB2_FILEID(Persistent=1, Volatile=2)),
            ),
        ),
        (False, pkt({"Command": 6, "MID": 7, "TID": 5, "SessionId": SID, **resp}, smb2.SMB2_Close_Response())),
    ]
    ev = check_modes(msgs)
    assert weird_names(ev) == []
    (tree,) = of(ev, SmbTreeConnect)
    assert tree.path == r"\\10.77.0.2\public" and tree.tree_id == 5 and tree.share_type == "disk"
    (op,) = of(ev, SmbFileOpen)
    assert op.name == "exfil.tar" and op.file_id == struct.pack("<QQ", 1, 2).hex()
    (s,) = of(ev, SmbFileSummary)
    assert (s.name, s.tree, s.bytes_written, s.bytes_read) == ("exfil.tar", r"\\10.77.0.2\public", 3000, 500)


# --------------------------------------------------------------------------
# Hypothesis: never raise, whatever the bytes and chunking
# --------------------------------------------------------------------------

_SAMPLE_TS, _SAMPLE_TC = split_dirs(netbios_session()[:14] + smb1_session()[:6] + encrypted_session()[6:8])


def _run_chunks(a: SmbAnalyzer, to_server: bool, data: bytes, cuts: list[int]) -> list[Event]:
    out: list[Event] = []
    pos = 0
    for c in sorted(set(cuts)) + [len(data)]:
        if c > pos:
            out += (a.receive_ts if to_server else a.receive_tc)(data[pos:c], T0)
            pos = c
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ts=st.binary(max_size=600),
    tc=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=12),
    gap_at=st.none() | st.integers(1, 5000),
)
def test_arbitrary_bytes_never_raise(ts, tc, cuts, gap_at):
    limit = 512
    a = SmbAnalyzer(CONN445, SmbLimits(max_pdu_size=limit, max_pending_requests=8, max_open_files=4))
    ev: list[Event] = []
    for to_server, data in ((True, ts), (False, tc)):
        pos = 0
        for c in sorted(set(cuts)) + [len(data)]:
            if c > pos:
                ev += (a.receive_ts if to_server else a.receive_tc)(data[pos:c], T0)
                # the buffer holds at most one bounded message plus the last chunk
                assert len(a._framers[to_server]._buf) <= limit + 4 + (c - pos)
                pos = c
    if gap_at:
        ev += a.gap(True, gap_at, T0)
        ev += a.receive_ts(ts, T0)
    ev += a.close(T0)
    assert "smb_analyzer_error" not in weird_names(ev)


_CHUNK_SCENARIO = netbios_session()[:16] + [(d, b) for d, b in download_session()[6:] if len(b) < 5000]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_events(sizes):
    """Cutting each message at arbitrary points never changes the events."""
    expected = feed(_CHUNK_SCENARIO, conn=CONN139)
    a = SmbAnalyzer(CONN139)
    ev: list[Event] = []
    k = 0
    for to_server, data in _CHUNK_SCENARIO:
        i = 0
        while i < len(data):
            n = sizes[k % len(sizes)]
            k += 1
            ev += (a.receive_ts if to_server else a.receive_tc)(data[i : i + n], T0)
            i += n
    ev += a.close(T0 + 1)
    assert ev == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_protocol_bytes_never_raise(data):
    """Valid sessions with random byte flips reach the deep parsers."""
    ts, tc = bytearray(_SAMPLE_TS), bytearray(_SAMPLE_TC)
    for buf in (ts, tc):
        for _ in range(data.draw(st.integers(1, 12))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, len(ts)), max_size=20))
    a = SmbAnalyzer(CONN139, SmbLimits(max_pdu_size=4096, max_name_length=16))
    ev = _run_chunks(a, True, bytes(ts), cuts) + _run_chunks(a, False, bytes(tc), cuts)
    ev += a.close(T0)
    assert "smb_analyzer_error" not in weird_names(ev)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=200), cut=st.integers(0, 300))
def test_pure_parsers_raise_only_their_error(blob, cut):
    """Public helpers either answer or raise SmbParseError, on any input."""
    for data in (blob, b"NTLMSSP\x00" + blob, ntlm_authenticate("u", "d", "w")[:cut]):
        try:
            parse_ntlmssp(data)
        except SmbParseError:
            pass
    for data in (blob, b"\x20" + blob, nb_name("SRV", 0x20)[:cut]):
        try:
            decode_netbios_name(data)
        except SmbParseError:
            pass


# --------------------------------------------------------------------------
# Real smbclient <-> Samba captures (recorded by pcaps/record_real.py), if present
# --------------------------------------------------------------------------

REAL = Path(__file__).resolve().parent.parent / "pcaps" / "real"
REAL_SMB = sorted(p for p in REAL.glob("smb*.pcap") if p.with_suffix(".json").exists()) if REAL.is_dir() else []


def _tcp_segments(pcap: Path):
    """(ts_us, src, sport, dst, dport, seq, flags, payload) for IPv4/TCP frames.

    Uses scapy's raw pcap reader and struct (dissecting every frame with scapy
    would cost seconds on the 3 MB capture)."""
    from scapy.utils import RawPcapReader

    with RawPcapReader(str(pcap)) as rd:
        link = rd.linktype
        for frame, meta in rd:
            if link == 1:  # Ethernet, VLAN tags skipped
                off, etype = 14, struct.unpack_from(">H", frame, 12)[0]
                while etype in (0x8100, 0x88A8):
                    etype, off = struct.unpack_from(">H", frame, off + 2)[0], off + 4
            elif link == 113:  # Linux cooked
                off, etype = 16, struct.unpack_from(">H", frame, 14)[0]
            elif link == 276:  # Linux cooked v2
                off, etype = 20, struct.unpack_from(">H", frame, 0)[0]
            else:  # raw IP
                off, etype = 0, 0x0800
            if etype != 0x0800 or frame[off + 9] != 6:
                continue
            ihl = (frame[off] & 0xF) * 4
            total = struct.unpack_from(">H", frame, off + 2)[0]
            src, dst = frame[off + 12 : off + 16], frame[off + 16 : off + 20]
            t = off + ihl
            sport, dport, seq = struct.unpack_from(">HHI", frame, t)
            doff, flags = frame[t + 12] >> 4, frame[t + 13]
            payload = frame[t + doff * 4 : off + total]
            ts_us = meta.sec * 1_000_000 + meta.usec if hasattr(meta, "sec") else int(meta.tshigh << 32 | meta.tslow)
            yield ts_us, ".".join(map(str, src)), sport, ".".join(map(str, dst)), dport, seq, flags, payload


def tcp_streams(pcap: Path, ports=(139, 445)) -> dict[tuple, list[tuple[int, bool, bytes]]]:
    """Per TCP connection, payload in time order per direction, each direction
    reassembled in sequence order (retransmissions and overlaps trimmed)."""
    conns: dict[tuple, dict] = {}
    for ts_us, src, sport, dst, dport, seq, flags, payload in _tcp_segments(pcap):
        if dport in ports:
            key, to_server = (src, sport, dst, dport), True
        elif sport in ports:
            key, to_server = (dst, dport, src, sport), False
        else:
            continue
        c = conns.setdefault(key, {"out": [], True: None, False: None, "held": {True: {}, False: {}}})
        if flags & 0x02:  # SYN
            c[to_server] = (seq + 1) & 0xFFFFFFFF
            continue
        if not payload or c[to_server] is None:
            continue
        c["held"][to_server][seq] = payload
        while True:  # deliver whatever is now in order
            nxt, progressed = c[to_server], False
            for hseq in list(c["held"][to_server]):
                data = c["held"][to_server][hseq]
                rel = (nxt - hseq) & 0xFFFFFFFF
                if rel < len(data):  # starts at or before nxt and reaches past it
                    del c["held"][to_server][hseq]
                    c["out"].append((ts_us, to_server, data[rel:]))
                    c[to_server] = (nxt + len(data) - rel) & 0xFFFFFFFF
                    progressed = True
                    break
                if rel < 0x80000000:  # entirely old: a retransmission
                    del c["held"][to_server][hseq]
            if not progressed:
                break
    return {k: v["out"] for k, v in conns.items()}


@pytest.mark.skipif(not REAL_SMB, reason="no real SMB captures in pcaps/real/ (pcaps/record_real.py)")
@pytest.mark.parametrize("pcap", REAL_SMB, ids=lambda p: p.name)
def test_real_capture_matches_sidecar(pcap):
    side = json.loads(pcap.with_suffix(".json").read_text())
    streams = tcp_streams(pcap)
    assert streams, "no SMB connection in the capture"
    events: list[Event] = []
    for key, chunks in streams.items():
        conn = ConnInfo(str(key), "tcp", key[0], key[1], key[2], key[3])
        a = SmbAnalyzer(conn)
        for ts, to_server, data in chunks:
            events += (a.receive_ts if to_server else a.receive_tc)(data, ts)
        events += a.close(chunks[-1][0] if chunks else T0)
    names = weird_names(events)
    assert "smb_analyzer_error" not in names
    assert not {"smb_malformed_header", "smb_malformed_command", "smb_midstream_pickup"} & set(names), names
    for sess in side["sessions"]:
        if sess["protocol"] != "smb" or sess.get("expect", "success") != "success":
            continue
        share = next(a for a in sess["command_line"] if a.startswith("//")).split("/")[-1]
        assert "SMB 3.1.1" in [n.dialect for n in of(events, SmbNegotiate)]
        setups = [s for s in of(events, SmbSessionSetup) if s.status == "STATUS_SUCCESS"]
        user = sess["user"]
        if user == "guest":
            assert any(s.anonymous or s.guest or s.user in ("", "guest") for s in setups), setups
        else:
            assert user in [s.user for s in setups], setups
        if sess["server_port"] == 139:
            nbs = of(events, SmbNetbiosSession)
            assert any(n.called_name.startswith(sess["server_ip"]) and n.accepted for n in nbs), nbs
        encrypted = "encrypt" in (sess.get("mode") or "").lower()
        if encrypted:
            assert of(events, SmbEncrypted)
            continue
        trees = [t.path for t in of(events, SmbTreeConnect) if t.status == "STATUS_SUCCESS"]
        assert any(t.lower().endswith("\\" + share.lower()) for t in trees), trees
        sums = of(events, SmbFileSummary)
        for t in sess["transfers"]:
            name = t["remote_path"].replace("/", "\\").lstrip("\\")
            match = [s for s in sums if s.name.lstrip("\\") == name]
            assert match, (name, [s.name for s in sums])
            if t["direction"] == "download":
                assert max(s.bytes_read for s in match) == t["size"]
            else:
                assert max(s.bytes_written for s in match) == t["size"]
