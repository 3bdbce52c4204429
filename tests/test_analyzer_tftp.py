"""TFTP analyzer tests: real datagrams, both flows, malformed input, fuzzing.

Datagrams are the exact bytes the Debian clients and server send:
- tftp-hpa (``tftp -m binary host -c get file.bin``): ``RRQ file.bin octet``
  with no options; tftpd-hpa answers from a new port with DATA 1.
- curl (``curl tftp://host/file.bin``): ``RRQ file.bin octet tsize 0
  blksize 512 timeout 6`` (curl's defaults; ``--tftp-blksize 1024`` changes
  the blksize value, an upload sends ``tsize <file size>``); tftpd-hpa
  answers with an OACK echoing the options it accepted, tsize = file size.
- tftpd-hpa's refusal: ``ERROR 1 "File not found"``; curl's own ERROR is a
  bare 4-byte packet (opcode, code) with no message and no NUL.

Each transfer script is fed three ways (TFTP datagrams are atomic, so the
h11 "byte by byte" split does not apply):
- ``whole``: as captured;
- ``duplicated``: every datagram delivered twice (retransmissions, duplicate
  ACKs, sorcerer's apprentice): same bytes/blocks/outcome, no Weird;
- ``garbage``: ``b"\\xffJUNK"`` appended to every non-DATA datagram (a DATA
  payload is by definition the rest of the datagram, so garbage there would
  be file content): same bytes/blocks/outcome, only the named Weirds
  ``tftp_trailing_data`` / ``tftp_unterminated_string``.
and with both assignments of the transfer flow's sides (server as originator,
as the pipeline does, and swapped).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.analyzers.base import ConnInfo
from sensor.analyzers.tftp import (
    DEFAULT_LIMITS,
    WEIRD_NAMES,
    AckPacket,
    DataPacket,
    ErrorPacket,
    OackPacket,
    RequestPacket,
    TftpLimits,
    TftpOptions,
    TftpRequest,
    TftpRequestAnalyzer,
    TftpTransferAnalyzer,
    TftpTransferContext,
    TftpTransferDone,
    parse_packet,
)
from sensor.core.events import Event, ExpectConnection, Weird

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
CLIENT_PORT, SERVER_TID = 40312, 51123
REQ_CONN = ConnInfo("CReq1", "udp", CLIENT, CLIENT_PORT, SERVER, 69)
# the transfer flow: the server sends first, so it is the originator
XFER_CONN = ConnInfo("CXfer1", "udp", SERVER, SERVER_TID, CLIENT, CLIENT_PORT)
T0 = 1_700_000_000_000_000
GARBAGE = b"\xffJUNK"

# --- exact datagrams -------------------------------------------------------
TFTP_HPA_RRQ = b"\x00\x01file.bin\x00octet\x00"
TFTP_HPA_WRQ = b"\x00\x02upload.bin\x00octet\x00"
CURL_RRQ = b"\x00\x01file.bin\x00octet\x00tsize\x000\x00blksize\x00512\x00timeout\x006\x00"
CURL_RRQ_1024 = b"\x00\x01file.bin\x00octet\x00tsize\x000\x00blksize\x001024\x00timeout\x006\x00"
CURL_WRQ_3000 = b"\x00\x02upload.bin\x00octet\x00tsize\x003000\x00blksize\x00512\x00timeout\x006\x00"
HPA_ERROR_NOT_FOUND = b"\x00\x05\x00\x01File not found\x00"
CURL_BARE_ERROR = b"\x00\x05\x00\x00"


def data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", 3, block) + payload


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block)


def oack(*pairs: tuple[bytes, bytes]) -> bytes:
    return b"\x00\x06" + b"".join(k + b"\0" + v + b"\0" for k, v in pairs)


def content(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def wire(n: int, base: int) -> int:
    """Independent model of the block number of absolute block n."""
    return n % 65536 if base == 0 else (n - 1) % 65535 + 1


def download(payload: bytes, blksize: int = 512, oack_dgram: bytes | None = None, base: int = 0):
    """Lock-step read: [OACK, ACK 0,] DATA k, ACK k ... (S = server, C = client)."""
    script = []
    if oack_dgram is not None:
        script += [("S", oack_dgram), ("C", ack(0))]
    n = 1
    for off in range(0, len(payload) + 1, blksize):
        script += [("S", data(wire(n, base), payload[off : off + blksize])), ("C", ack(wire(n, base)))]
        n += 1
    return script


def upload(payload: bytes, blksize: int = 512, oack_dgram: bytes | None = None):
    """Lock-step write: ACK 0 (or OACK), DATA k, ACK k ..."""
    script = [("S", oack_dgram if oack_dgram is not None else ack(0))]
    n = 1
    for off in range(0, len(payload) + 1, blksize):
        script += [("C", data(n, payload[off : off + blksize])), ("S", ack(n))]
        n += 1
    return script


def feed(analyzer, script, *, server_is_orig: bool = True, variant: str = "whole", close: bool = True):
    events: list[Event] = []
    ts = T0
    for side, dgram in script:
        if variant == "duplicated":
            copies = [dgram, dgram]
        elif variant == "garbage" and dgram[:2] != b"\x00\x03":
            copies = [dgram + GARBAGE]
        else:
            copies = [dgram]
        for d in copies:
            ts += 100
            from_orig = (side == "S") == server_is_orig
            out = (analyzer.receive_ts if from_orig else analyzer.receive_tc)(d, ts)
            assert isinstance(out, list)
            events += out
    if close:
        events += analyzer.close(ts + 1_000)
    return events


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def weird_names(events):
    return [e.name for e in events if isinstance(e, Weird)]


def only_done(events) -> TftpTransferDone:
    done = of(events, TftpTransferDone)
    assert len(done) == 1, events
    return done[0]


def request_context(raw: bytes, uid: str = "CReq1") -> TftpTransferContext:
    """The context the request analyzer really produces for ``raw``."""
    events = TftpRequestAnalyzer(REQ_CONN).receive_ts(raw, T0)
    (expect,) = of(events, ExpectConnection)
    assert isinstance(expect.context, TftpTransferContext)
    return expect.context


def test_helpers_build_the_wire_format():
    assert data(1, b"ab") == b"\x00\x03\x00\x01ab"
    assert ack(0) == b"\x00\x04\x00\x00"
    assert oack((b"blksize", b"1024")) == b"\x00\x06blksize\x001024\x00"
    assert [wire(n, 0) for n in (65535, 65536, 65537)] == [65535, 0, 1]
    assert [wire(n, 1) for n in (65535, 65536, 65537)] == [65535, 1, 2]


# --- parse layer -------------------------------------------------------------


def test_parse_tftp_hpa_rrq():
    pkt = parse_packet(TFTP_HPA_RRQ)
    assert isinstance(pkt, RequestPacket)
    assert (pkt.op, pkt.filename, pkt.mode, pkt.options) == ("read", "file.bin", "octet", ())
    assert pkt.anomalies == () and pkt.filename_truncated is False


def test_parse_curl_rrq_options():
    pkt = parse_packet(CURL_RRQ)
    assert isinstance(pkt, RequestPacket)
    assert pkt.options == (("tsize", "0"), ("blksize", "512"), ("timeout", "6"))
    assert pkt.known == TftpOptions(blksize=512, tsize=0, timeout=6)
    assert pkt.anomalies == ()


def test_parse_curl_wrq_declares_size():
    pkt = parse_packet(CURL_WRQ_3000)
    assert isinstance(pkt, RequestPacket)
    assert pkt.op == "write" and pkt.filename == "upload.bin" and pkt.known.tsize == 3000


def test_parse_option_names_case_insensitive_and_unknown_kept():
    pkt = parse_packet(b"\x00\x01f\x00OCTET\x00BlkSize\x001468\x00windowsize\x004\x00x-vendor\x00abc\x00")
    assert isinstance(pkt, RequestPacket)
    assert pkt.mode == "octet"
    assert pkt.options == (("blksize", "1468"), ("windowsize", "4"), ("x-vendor", "abc"))
    assert pkt.known.blksize == 1468 and pkt.known.windowsize == 4


def test_parse_data_ack_error_oack():
    assert parse_packet(data(7, b"xyz")) == DataPacket(7, b"xyz")
    assert parse_packet(data(9, b"")) == DataPacket(9, b"")
    assert parse_packet(ack(65535)) == AckPacket(65535)
    assert parse_packet(HPA_ERROR_NOT_FOUND) == ErrorPacket(1, "File not found")
    pkt = parse_packet(oack((b"tsize", b"1300"), (b"blksize", b"1024")))
    assert isinstance(pkt, OackPacket)
    assert pkt.known == TftpOptions(blksize=1024, tsize=1300) and pkt.anomalies == ()


def test_parse_curl_bare_error_is_tolerated():
    assert parse_packet(CURL_BARE_ERROR) == ErrorPacket(0, "")


def test_parse_request_nul_padding_is_not_an_option():
    pkt = parse_packet(TFTP_HPA_RRQ + b"\0" * 20)
    assert isinstance(pkt, RequestPacket)
    assert pkt.options == () and pkt.anomalies == ()


def test_parse_error_message_nul_padding_is_tolerated():
    assert parse_packet(HPA_ERROR_NOT_FOUND + b"\0\0\0") == ErrorPacket(1, "File not found")


def test_parse_accepts_bytearray_and_memoryview():
    assert parse_packet(bytearray(ack(3))) == AckPacket(3)
    assert parse_packet(memoryview(data(1, b"a"))) == DataPacket(1, b"a")


# --- request analyzer (port 69) ---------------------------------------------


def test_request_tftp_hpa_rrq_emits_request_and_expectation():
    events = TftpRequestAnalyzer(REQ_CONN).receive_ts(TFTP_HPA_RRQ, T0)
    assert [type(e) for e in events] == [TftpRequest, ExpectConnection]
    req, exp = events
    assert req == TftpRequest(T0, "read", "file.bin", "octet", (), False)
    assert req.event_type == "tftp_request"
    assert exp == ExpectConnection(
        ts=T0,
        proto="udp",
        orig_h=SERVER,
        orig_p=None,
        resp_h=CLIENT,
        resp_p=CLIENT_PORT,
        analyzer="tftp-transfer",
        expires_us=T0 + DEFAULT_LIMITS.expect_timeout_us,
    )
    ctx = exp.context
    assert isinstance(ctx, TftpTransferContext)
    assert (ctx.op, ctx.filename, ctx.mode, ctx.blksize, ctx.request_uid) == ("read", "file.bin", "octet", 512, "CReq1")
    assert (ctx.client_h, ctx.client_p, ctx.server_h) == (CLIENT, CLIENT_PORT, SERVER)


def test_request_curl_wrq_options_in_event_and_context():
    events = TftpRequestAnalyzer(REQ_CONN).receive_ts(CURL_WRQ_3000, T0)
    (req,) = of(events, TftpRequest)
    assert req.op == "write" and req.filename == "upload.bin"
    assert req.options == (("tsize", "3000"), ("blksize", "512"), ("timeout", "6"))
    (exp,) = of(events, ExpectConnection)
    assert exp.context.requested == TftpOptions(blksize=512, tsize=3000, timeout=6)
    assert weird_names(events) == []


def test_request_on_flipped_flow_still_finds_client():
    flipped = ConnInfo("CReq2", "udp", SERVER, 69, CLIENT, CLIENT_PORT)
    events = TftpRequestAnalyzer(flipped).receive_tc(TFTP_HPA_RRQ, T0)
    (exp,) = of(events, ExpectConnection)
    assert (exp.orig_h, exp.resp_h, exp.resp_p) == (SERVER, CLIENT, CLIENT_PORT)


@pytest.mark.parametrize("variant", ["whole", "duplicated", "garbage"])
def test_request_three_ways(variant):
    a = TftpRequestAnalyzer(REQ_CONN)
    events = feed(a, [("C", CURL_RRQ)], variant=variant)
    (req,) = of(events, TftpRequest)
    assert req.options == (("tsize", "0"), ("blksize", "512"), ("timeout", "6"))
    assert req.filename == "file.bin" and req.mode == "octet"
    expects = of(events, ExpectConnection)
    assert len(expects) == (2 if variant == "duplicated" else 1)
    assert all(e.context.requested.blksize == 512 for e in expects)
    if variant == "garbage":
        assert weird_names(events) == ["tftp_unterminated_string"]
    else:
        assert weird_names(events) == []
    assert of(events, TftpTransferDone) == []  # nothing came back on port 69


def test_request_retransmission_counted_new_request_emitted():
    a = TftpRequestAnalyzer(REQ_CONN)
    ev = a.receive_ts(TFTP_HPA_RRQ, T0) + a.receive_ts(TFTP_HPA_RRQ, T0 + 5_000_000)
    ev += a.receive_ts(b"\x00\x01other.bin\x00octet\x00", T0 + 6_000_000)
    # same bytes again, but long after the expectation expired: a new request
    ev += a.receive_ts(TFTP_HPA_RRQ, T0 + 100_000_000)
    assert [r.filename for r in of(ev, TftpRequest)] == ["file.bin", "other.bin", "file.bin"]
    assert len(of(ev, ExpectConnection)) == 4
    assert (a.requests, a.retransmitted_requests) == (3, 1)


def test_request_error_straight_back_on_port_69():
    a = TftpRequestAnalyzer(REQ_CONN)
    events = a.receive_ts(TFTP_HPA_RRQ, T0) + a.receive_tc(HPA_ERROR_NOT_FOUND, T0 + 300)
    done = only_done(events)
    assert (done.op, done.filename, done.direction) == ("read", "file.bin", "download")
    assert (done.complete, done.error_code, done.error_msg, done.bytes) == (False, 1, "File not found", 0)
    assert done.request_uid == "CReq1" and done.ts == T0 + 300
    assert weird_names(events) == []
    assert a.close(T0 + 1_000) == []  # already reported


def test_request_whole_transfer_on_port_69():
    a = TftpRequestAnalyzer(REQ_CONN)
    script = [("C", TFTP_HPA_RRQ)] + download(content(700))
    # the request flow's originator is the client: server_is_orig=False
    events = feed(a, script, server_is_orig=False)
    done = only_done(events)
    assert (done.bytes, done.blocks, done.complete, done.direction) == (700, 2, True, "download")
    assert weird_names(events) == ["tftp_transfer_on_request_port"]


def test_request_in_flow_transfer_flushed_on_close():
    a = TftpRequestAnalyzer(REQ_CONN)
    events = feed(a, [("C", TFTP_HPA_WRQ), ("S", ack(0)), ("C", data(1, content(512)))], server_is_orig=False)
    done = only_done(events)
    assert (done.op, done.direction, done.bytes, done.complete) == ("write", "upload", 512, False)


def test_request_in_flow_transfer_flushed_by_next_request():
    a = TftpRequestAnalyzer(REQ_CONN)
    ev = a.receive_ts(TFTP_HPA_RRQ, T0) + a.receive_tc(data(1, content(512)), T0 + 1)
    ev += a.receive_ts(b"\x00\x01next.bin\x00octet\x00", T0 + 2)
    done = only_done(ev)
    assert (done.filename, done.bytes, done.complete) == ("file.bin", 512, False)
    assert a.close(T0 + 3) == []  # the next request saw nothing on this flow


# --- transfer analyzer: the scenarios, three ways, both side assignments ------

VARIANTS = ["whole", "duplicated", "garbage"]
SIDES = [True, False]  # server is the flow originator (pipeline) / swapped


def check_variant_weirds(events, variant):
    names = weird_names(events)
    if variant == "garbage":
        assert names and set(names) <= {"tftp_trailing_data", "tftp_unterminated_string"}
    else:
        assert names == []


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("server_is_orig", SIDES)
def test_transfer_tftp_hpa_read(variant, server_is_orig):
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, download(content(1300)), server_is_orig=server_is_orig, variant=variant)
    done = only_done(events)
    assert (done.op, done.filename, done.direction) == ("read", "file.bin", "download")
    assert (done.bytes, done.blocks, done.complete, done.blksize) == (1300, 3, True, 512)
    assert (done.error_code, done.tsize, done.missing_blocks, done.request_uid) == (None, None, 0, "CReq1")
    assert done.retransmitted_blocks == (3 if variant == "duplicated" else 0)
    # emitted at the final ACK, not at close
    assert done.ts < T0 + 100 * 20
    check_variant_weirds(events, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("server_is_orig", SIDES)
def test_transfer_size_multiple_of_blksize_ends_with_empty_block(variant, server_is_orig):
    script = download(content(1024))
    assert script[-2] == ("S", data(3, b""))  # the empty last DATA block
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    done = only_done(feed(a, script, server_is_orig=server_is_orig, variant=variant))
    assert (done.bytes, done.blocks, done.complete, done.last_block_seen) == (1024, 3, True, True)


def test_transfer_multiple_of_blksize_without_empty_block_is_not_complete():
    script = download(content(1024))[:-2]  # DATA 1, ACK 1, DATA 2, ACK 2 only
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    done = only_done(feed(a, script))
    assert (done.bytes, done.blocks, done.complete, done.last_block_seen) == (1024, 2, False, False)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("server_is_orig", SIDES)
def test_transfer_tftp_hpa_write(variant, server_is_orig):
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_WRQ))
    script = upload(content(2000))
    assert script[0] == ("S", b"\x00\x04\x00\x00")  # the server's ACK 0 opens the flow
    done = only_done(feed(a, script, server_is_orig=server_is_orig, variant=variant))
    assert (done.op, done.filename, done.direction) == ("write", "upload.bin", "upload")
    assert (done.bytes, done.blocks, done.complete) == (2000, 4, True)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("server_is_orig", SIDES)
def test_transfer_curl_read_oack_blksize_1024(variant, server_is_orig):
    ctx = request_context(CURL_RRQ_1024)
    assert ctx.requested.blksize == 1024 and ctx.blksize == 512
    server_oack = oack((b"tsize", b"2500"), (b"blksize", b"1024"), (b"timeout", b"6"))
    script = download(content(2500), blksize=1024, oack_dgram=server_oack)
    a = TftpTransferAnalyzer(XFER_CONN, ctx)
    events = feed(a, script, server_is_orig=server_is_orig, variant=variant)
    done = only_done(events)
    assert (done.bytes, done.blocks, done.complete, done.blksize, done.tsize) == (2500, 3, True, 1024, 2500)
    assert done.direction == "download"
    check_variant_weirds(events, variant)


def test_transfer_oack_blksize_changes_completion_rule():
    # a 700-byte block is the last one at blksize 512, but not at 1024
    ctx = request_context(CURL_RRQ_1024)
    a = TftpTransferAnalyzer(XFER_CONN, ctx)
    feed(a, [("S", oack((b"blksize", b"1024"))), ("C", ack(0)), ("S", data(1, content(1024)))], close=False)
    assert a.blksize == 1024 and a.done is None
    ev = a.receive_ts(data(2, content(700)), T0 + 9_000) + a.receive_tc(ack(2), T0 + 9_100)
    assert only_done(ev).bytes == 1724 and only_done(ev).complete


@pytest.mark.parametrize("variant", VARIANTS)
def test_transfer_curl_write_with_oack(variant):
    ctx = request_context(CURL_WRQ_3000)
    server_oack = oack((b"tsize", b"3000"), (b"blksize", b"512"), (b"timeout", b"6"))
    a = TftpTransferAnalyzer(XFER_CONN, ctx)
    events = feed(a, upload(content(3000), oack_dgram=server_oack), variant=variant)
    done = only_done(events)
    assert (done.op, done.direction, done.bytes, done.blocks, done.complete, done.tsize) == (
        "write",
        "upload",
        3000,
        6,
        True,
        3000,
    )
    check_variant_weirds(events, variant)


def test_transfer_write_tsize_from_request_without_oack():
    ctx = request_context(CURL_WRQ_3000)
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, ctx), upload(content(3000))))
    assert done.tsize == 3000 and done.complete


def test_transfer_read_request_tsize_zero_is_not_the_file_size():
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ)), download(content(10))))
    assert done.tsize is None and done.bytes == 10


@pytest.mark.parametrize("server_is_orig", SIDES)
def test_transfer_error_file_not_found(server_is_orig):
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, [("S", HPA_ERROR_NOT_FOUND)], server_is_orig=server_is_orig)
    done = only_done(events)
    assert (done.complete, done.error_code, done.error_msg, done.bytes, done.blocks) == (
        False,
        1,
        "File not found",
        0,
        0,
    )
    assert done.ts == T0 + 100  # at the ERROR, not at close
    assert weird_names(events) == []


def test_transfer_error_mid_transfer_keeps_bytes():
    script = download(content(2000))[:4] + [("C", CURL_BARE_ERROR)]
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ)), script))
    assert (done.bytes, done.complete, done.error_code, done.error_msg) == (1024, False, 0, "")


def test_transfer_retransmitted_data_and_duplicate_acks_count_once():
    p = content(1100)
    script = [
        ("S", data(1, p[:512])),
        ("S", data(1, p[:512])),  # server timed out, resent
        ("C", ack(1)),
        ("C", ack(1)),  # duplicate ACK
        ("S", data(2, p[512:1024])),
        ("C", ack(1)),  # late duplicate of ACK 1
        ("S", data(2, p[512:1024])),
        ("C", ack(2)),
        ("S", data(3, p[1024:])),
        ("C", ack(3)),
    ]
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ)), script))
    assert (done.bytes, done.blocks, done.retransmitted_blocks, done.complete) == (1100, 3, 2, True)


def test_transfer_never_completed_reports_on_close_once():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, download(content(5000))[:6], close=False)  # blocks 1-3, all full
    assert of(events, TftpTransferDone) == [] and a.done is None and a.bytes_seen == 1536
    done = only_done(a.close(T0 + 50_000))
    assert (done.bytes, done.blocks, done.complete, done.last_block_seen) == (1536, 3, False, False)
    assert done.ts == T0 + 50_000 and a.done == done
    assert a.close(T0 + 60_000) == []


def test_transfer_last_block_seen_but_final_ack_missing():
    script = download(content(700))[:-1]  # no final ACK (one-sided capture)
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ)), script))
    assert (done.bytes, done.complete, done.last_block_seen) == (700, False, True)


def test_transfer_stale_ack_after_last_block_does_not_complete():
    p = content(700)
    script = [("S", data(1, p[:512])), ("S", data(2, p[512:])), ("C", ack(1))]  # ACK 2 never seen
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ)), script))
    assert (done.bytes, done.complete, done.last_block_seen) == (700, False, True)


def test_transfer_windowsize_rfc7440():
    """windowsize 4: the sender sends four blocks per ACK."""
    ctx = request_context(b"\x00\x01f\x00octet\x00windowsize\x004\x00")
    p = content(512 * 5 + 100)
    blocks = [data(n, p[(n - 1) * 512 : n * 512]) for n in range(1, 7)]
    script = [("S", oack((b"windowsize", b"4"))), ("C", ack(0))]
    script += [("S", b) for b in blocks[:4]] + [("C", ack(4))]
    script += [("S", blocks[4]), ("S", blocks[5]), ("C", ack(6))]
    events = feed(TftpTransferAnalyzer(XFER_CONN, ctx), script)
    done = only_done(events)
    assert (done.bytes, done.blocks, done.complete) == (len(p), 6, True)
    assert weird_names(events) == []


def test_transfer_empty_flow_closes_incomplete():
    done = only_done(TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ)).close(T0))
    assert (done.bytes, done.blocks, done.complete, done.op) == (0, 0, False, "read")


def test_transfer_without_context_infers_op_from_data_side():
    read = only_done(feed(TftpTransferAnalyzer(XFER_CONN), download(content(600))))
    assert (read.op, read.direction, read.filename, read.bytes, read.complete) == ("read", "download", "", 600, True)
    write = only_done(feed(TftpTransferAnalyzer(XFER_CONN), upload(content(600))))
    assert (write.op, write.direction, write.bytes, write.complete) == ("write", "upload", 600, True)


def test_transfer_without_context_oack_tells_server_side_even_when_swapped():
    script = upload(content(100), oack_dgram=oack((b"blksize", b"512")))
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN), script, server_is_orig=False))
    assert (done.op, done.bytes, done.complete) == ("write", 100, True)


# --- block-number rollover ----------------------------------------------------


@pytest.mark.parametrize("base", [0, 1])
def test_transfer_block_number_rollover(base):
    """65 540 full 8-byte blocks + a 3-byte block: the numbers wrap once."""
    size = 65540 * 8 + 3
    ctx = request_context(b"\x00\x01big.bin\x00octet\x00blksize\x008\x00")
    script = download(content(size), blksize=8, oack_dgram=oack((b"blksize", b"8")), base=base)
    assert ("S", data(0 if base == 0 else 1, content(size)[65535 * 8 : 65536 * 8])) in script
    events = feed(TftpTransferAnalyzer(XFER_CONN, ctx), script)
    done = only_done(events)
    assert (done.bytes, done.blocks, done.complete, done.blksize) == (size, 65541, True, 8)
    assert done.retransmitted_blocks == 0 and done.missing_blocks == 0
    assert weird_names(events) == []


def test_rollover_retransmission_across_the_wrap_is_a_duplicate():
    ctx = request_context(b"\x00\x01big.bin\x00octet\x00blksize\x008\x00")
    a = TftpTransferAnalyzer(XFER_CONN, ctx)
    block = content(8)
    a.receive_ts(oack((b"blksize", b"8")), T0)
    for n in range(1, 65538):  # up to wire 1 after the wrap (base 0)
        a.receive_ts(data(n & 0xFFFF, block), T0 + n)
    ev = a.receive_ts(data(65535, block), T0 + 70_000)  # stale block from before the wrap
    ev += a.receive_ts(data(2, b"xy"), T0 + 70_001) + a.receive_tc(ack(2), T0 + 70_002)
    done = only_done(ev)
    assert (done.blocks, done.retransmitted_blocks, done.bytes) == (65538, 1, 65537 * 8 + 2)
    assert done.complete and weird_names(ev) == []


def test_rollover_option_in_oack_fixes_the_base():
    ctx = request_context(b"\x00\x01big.bin\x00octet\x00blksize\x008\x00rollover\x001\x00")
    a = TftpTransferAnalyzer(XFER_CONN, ctx)
    a.receive_ts(oack((b"blksize", b"8"), (b"rollover", b"1")), T0)
    for n in range(1, 65536):
        a.receive_ts(data(n, content(8)), T0 + n)
    # with rollover=1 a block numbered 0 can never be the next one
    ev = a.receive_ts(data(0, content(8)), T0 + 70_000)
    assert weird_names(ev) == ["tftp_block_out_of_window"]
    ev = a.receive_ts(data(1, b"z"), T0 + 70_001) + a.receive_tc(ack(1), T0 + 70_002)
    assert only_done(ev).blocks == 65536 and only_done(ev).complete


# --- capture loss ---------------------------------------------------------------


def test_missing_block_then_late_arrival_fills_the_gap():
    p = content(1300)
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    ev = a.receive_ts(data(1, p[:512]), T0) + a.receive_ts(data(3, p[1024:]), T0 + 1)
    assert weird_names(ev) == ["tftp_missing_blocks"]
    ev = a.receive_ts(data(2, p[512:1024]), T0 + 2) + a.receive_tc(ack(3), T0 + 3)
    done = only_done(ev)
    assert (done.bytes, done.blocks, done.missing_blocks, done.complete) == (1300, 3, 0, True)


def test_missing_block_never_seen_is_reported():
    p = content(1300)
    script = [("S", data(1, p[:512])), ("S", data(3, p[1024:])), ("C", ack(3))]
    done = only_done(feed(TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ)), script))
    assert (done.bytes, done.blocks, done.missing_blocks, done.complete) == (788, 2, 1, True)


def test_blksize_inferred_when_oack_was_not_captured():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ_1024))
    events = feed(a, [("S", data(1, content(1024))), ("C", ack(1)), ("S", data(2, content(10))), ("C", ack(2))])
    assert weird_names(events) == ["tftp_blksize_inferred"]
    done = only_done(events)
    assert (done.bytes, done.blksize, done.complete) == (1034, 1024, True)


# --- named malformed cases -------------------------------------------------------


def req_events(raw: bytes):
    return TftpRequestAnalyzer(REQ_CONN).receive_ts(raw, T0)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x03\x00", b"\x00\x04\x00", b"\x00\x05\x00"])
def test_weird_packet_too_short(raw):
    assert weird_names(req_events(raw)) == ["tftp_packet_too_short"]
    a = TftpTransferAnalyzer(XFER_CONN)
    assert weird_names(a.receive_ts(raw, T0)) == ["tftp_packet_too_short"]
    assert only_done(a.close(T0)).blocks == 0


@pytest.mark.parametrize("raw", [b"\x00\x00file\x00octet\x00", b"\x00\x07abc", b"\x01\x01file\x00octet\x00"])
def test_weird_bad_opcode(raw):
    events = req_events(raw)
    assert weird_names(events) == ["tftp_bad_opcode"] and of(events, ExpectConnection) == []


def test_weird_unterminated_filename():
    events = req_events(b"\x00\x01file.bin")
    assert weird_names(events) == ["tftp_unterminated_string"]
    assert of(events, TftpRequest) == [] and of(events, ExpectConnection) == []


def test_weird_unterminated_mode():
    events = req_events(b"\x00\x02file.bin\x00octet")
    assert weird_names(events) == ["tftp_unterminated_string"] and of(events, TftpRequest) == []


def test_weird_malformed_request_without_mode():
    events = req_events(b"\x00\x01file.bin\x00")
    assert weird_names(events) == ["tftp_malformed_request"] and of(events, TftpRequest) == []


def test_weird_too_many_options():
    opts = b"".join(b"opt%d\x00v\x00" % i for i in range(20))
    events = req_events(b"\x00\x01f\x00octet\x00" + opts)
    (req,) = of(events, TftpRequest)
    assert len(req.options) == DEFAULT_LIMITS.max_options == 16
    assert req.options[0] == ("opt0", "v") and req.options[-1] == ("opt15", "v")
    assert weird_names(events) == ["tftp_too_many_options"]


def test_weird_option_without_value():
    events = req_events(b"\x00\x01file.bin\x00octet\x00tsize\x000\x00blksize\x00")
    (req,) = of(events, TftpRequest)
    assert req.options == (("tsize", "0"),)
    assert weird_names(events) == ["tftp_option_without_value"]


def test_weird_option_value_unterminated():
    events = req_events(b"\x00\x01file.bin\x00octet\x00blksize\x001024")
    assert of(events, TftpRequest)[0].options == ()
    assert weird_names(events) == ["tftp_unterminated_string"]


@pytest.mark.parametrize("value", [b"7", b"65465", b"0", b"abc", b"", b"-512", b"\xd9\xa1"])
def test_weird_blksize_out_of_range_in_request(value):
    events = req_events(b"\x00\x01file.bin\x00octet\x00blksize\x00" + value + b"\x00")
    assert weird_names(events) == ["tftp_blksize_out_of_range"]
    (req,) = of(events, TftpRequest)
    assert req.options[0][0] == "blksize"  # kept as sent, for the log
    assert of(events, ExpectConnection)[0].context.requested.blksize is None


@pytest.mark.parametrize("value", [b"8", b"65464"])
def test_blksize_range_boundaries_accepted(value):
    events = req_events(b"\x00\x01file.bin\x00octet\x00blksize\x00" + value + b"\x00")
    assert weird_names(events) == []
    assert of(events, ExpectConnection)[0].context.requested.blksize == int(value)


def test_weird_blksize_out_of_range_in_oack_is_ignored():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ))
    ev = a.receive_ts(oack((b"blksize", b"70000")), T0)
    assert weird_names(ev) == ["tftp_blksize_out_of_range"] and a.blksize == 512


@pytest.mark.parametrize(
    "opt", [b"timeout\x000", b"timeout\x00256", b"windowsize\x000", b"tsize\x00-1", b"rollover\x002"]
)
def test_weird_bad_option_value(opt):
    assert weird_names(req_events(b"\x00\x01f\x00octet\x00" + opt + b"\x00")) == ["tftp_bad_option_value"]


def test_weird_duplicate_option_keeps_first():
    events = req_events(b"\x00\x01f\x00octet\x00blksize\x001024\x00BLKSIZE\x008\x00")
    assert of(events, TftpRequest)[0].options == (("blksize", "1024"),)
    assert weird_names(events) == ["tftp_duplicate_option"]


def test_weird_filename_too_long_truncated():
    events = req_events(b"\x00\x01" + b"A" * 2000 + b"\x00octet\x00")
    (req,) = of(events, TftpRequest)
    assert req.filename == "A" * DEFAULT_LIMITS.max_filename_bytes and req.filename_truncated is True
    assert weird_names(events) == ["tftp_filename_too_long"]
    assert of(events, ExpectConnection)[0].context.filename_truncated is True


def test_weird_long_option_value_truncated():
    events = req_events(b"\x00\x01f\x00octet\x00x-note\x00" + b"v" * 1000 + b"\x00")
    assert of(events, TftpRequest)[0].options == (("x-note", "v" * DEFAULT_LIMITS.max_option_value_bytes),)
    assert weird_names(events) == ["tftp_string_too_long"]


def test_weird_unknown_mode_and_empty_filename():
    assert weird_names(req_events(b"\x00\x01file\x00binary\x00")) == ["tftp_unknown_mode"]
    assert weird_names(req_events(b"\x00\x01\x00octet\x00")) == ["tftp_empty_filename"]


def test_weird_malformed_options():
    events = req_events(b"\x00\x01f\x00octet\x00\x00blksize\x00512\x00")
    assert weird_names(events) == ["tftp_malformed_options"] and of(events, TftpRequest)[0].options == ()


def test_weird_non_utf8_filename_is_kept_escaped():
    (req,) = of(req_events(b"\x00\x01f\xffx\x00octet\x00"), TftpRequest)
    assert req.filename == "f\\xffx"


def test_weird_trailing_data_on_ack_and_error():
    assert parse_packet(ack(1) + b"xx") == AckPacket(1, parse_packet(ack(1) + b"xx").anomalies)
    assert [a.name for a in parse_packet(ack(1) + b"xx").anomalies] == ["tftp_trailing_data"]
    err = parse_packet(HPA_ERROR_NOT_FOUND + b"xx")
    assert isinstance(err, ErrorPacket) and err.code == 1 and err.msg == "File not found"
    assert [a.name for a in err.anomalies] == ["tftp_trailing_data"]


def test_weird_data_larger_than_blksize():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, [("S", data(1, content(600))), ("C", ack(1)), ("S", data(2, b"end")), ("C", ack(2))])
    assert weird_names(events) == ["tftp_data_too_large"]
    done = only_done(events)
    assert (done.bytes, done.blocks, done.complete) == (603, 2, True)  # a too-large block is not the last


def test_weird_block_out_of_window():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, [("S", data(1, content(512))), ("S", data(40000, content(512))), ("S", data(0, b"x"))])
    assert weird_names(events) == ["tftp_block_out_of_window", "tftp_block_out_of_window"]
    assert only_done(events).bytes == 512


def test_weird_data_after_completion():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, download(content(700)), close=False)
    done = only_done(events)
    # the sender missed the final ACK and resends the last block: tolerated
    assert a.receive_ts(data(2, content(700)[512:]), T0 + 10_000) == []
    late = a.receive_ts(data(3, b"more"), T0 + 10_001)
    assert weird_names(late) == ["tftp_data_after_completion"]
    assert a.close(T0 + 20_000) == [] and a.done == done and done.bytes == 700


def test_weird_data_after_last_block_before_ack():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, [("S", data(1, b"short")), ("S", data(2, content(512)))])
    assert weird_names(events) == ["tftp_data_after_completion"]
    assert only_done(events).bytes == 5


def test_weird_data_after_error():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(
        a, [("S", data(1, content(512))), ("C", b"\x00\x05\x00\x03Disk full\x00"), ("S", data(2, content(512)))]
    )
    assert weird_names(events) == ["tftp_data_after_completion"]
    done = only_done(events)
    assert (done.bytes, done.error_code, done.error_msg) == (512, 3, "Disk full")


def test_weird_unexpected_direction():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(TFTP_HPA_RRQ))
    events = feed(a, [("S", data(1, content(512))), ("C", data(2, content(512))), ("S", ack(1))])
    assert weird_names(events) == ["tftp_unexpected_direction", "tftp_unexpected_direction"]
    assert only_done(events).bytes == 512


def test_weird_unexpected_opcode_in_transfer():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ))
    events = feed(a, [("C", CURL_RRQ), ("S", data(1, content(512))), ("S", oack((b"blksize", b"512")))])
    assert weird_names(events) == ["tftp_unexpected_opcode", "tftp_unexpected_opcode"]


def test_weird_reply_on_port_69_without_request():
    assert weird_names(TftpRequestAnalyzer(REQ_CONN).receive_tc(data(1, b"x"), T0)) == ["tftp_unexpected_opcode"]


def test_weird_unrequested_option_and_oack_blksize_too_large():
    a = TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ))  # asked for blksize 512
    ev = a.receive_ts(oack((b"blksize", b"1024"), (b"windowsize", b"4")), T0)
    assert weird_names(ev) == ["tftp_unrequested_option", "tftp_oack_blksize_too_large"]
    assert a.blksize == 1024  # the server will send what it announced


def test_weird_tsize_mismatch():
    ctx = request_context(CURL_RRQ)
    script = download(content(100), oack_dgram=oack((b"tsize", b"5000")))
    events = feed(TftpTransferAnalyzer(XFER_CONN, ctx), script)
    assert weird_names(events) == ["tftp_tsize_mismatch"]
    assert only_done(events).tsize == 5000 and only_done(events).bytes == 100


def test_weird_events_are_bounded():
    limits = TftpLimits(max_weirds=10)
    a = TftpTransferAnalyzer(XFER_CONN, limits=limits)
    events = [e for i in range(500) for e in a.receive_ts(b"\x00", T0 + i)]
    assert len(events) == 11
    assert weird_names(events)[-1] == "tftp_weird_limit_reached"
    assert all(e.analyzer == "tftp-transfer" for e in events)


def test_every_weird_name_used_is_declared():
    # the names the tests above key on are the declared, stable set
    for name in [
        "tftp_packet_too_short",
        "tftp_bad_opcode",
        "tftp_unterminated_string",
        "tftp_malformed_request",
        "tftp_data_too_large",
        "tftp_block_out_of_window",
        "tftp_data_after_completion",
        "tftp_blksize_out_of_range",
    ]:
        assert name in WEIRD_NAMES


# --- properties ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 3000),
    blksize=st.sampled_from([8, 512, 1024]),
    dup=st.lists(st.booleans(), min_size=1, max_size=400),
    server_is_orig=st.booleans(),
    op=st.sampled_from(["read", "write"]),
)
def test_property_unique_bytes_equal_file_size(size, blksize, dup, server_is_orig, op):
    """Any pattern of repeated datagrams still counts the file exactly once."""
    payload = content(size)
    server_oack = oack((b"blksize", str(blksize).encode()))
    raw = b"\x00\x01f\x00octet\x00" if op == "read" else b"\x00\x02f\x00octet\x00"
    ctx = request_context(raw + b"blksize\x00" + str(blksize).encode() + b"\x00")
    script = (download if op == "read" else upload)(payload, blksize=blksize, oack_dgram=server_oack)
    script = [s for i, s in enumerate(script) for _ in range(2 if dup[i % len(dup)] else 1)]
    events = feed(TftpTransferAnalyzer(XFER_CONN, ctx), script, server_is_orig=server_is_orig)
    done = only_done(events)
    assert (done.bytes, done.blocks, done.complete) == (size, size // blksize + 1, True)
    assert weird_names(events) == []


def _check_events(events):
    assert isinstance(events, list)
    for e in events:
        assert isinstance(e, Event)
        if isinstance(e, Weird):
            assert e.name in WEIRD_NAMES
            assert len(e.detail) <= DEFAULT_LIMITS.max_weird_detail


_pairs = st.lists(
    st.tuples(
        st.sampled_from([b"blksize", b"tsize", b"timeout", b"windowsize", b"rollover", b"x"]),
        st.sampled_from([b"0", b"1", b"8", b"512", b"65464", b"65535", b"", b"zz"]),
    ),
    max_size=4,
)
tftpish = st.one_of(
    st.binary(max_size=40),
    st.builds(data, st.integers(0, 65535), st.binary(max_size=20)),
    st.builds(data, st.integers(0, 4), st.binary(min_size=8, max_size=8)),
    st.builds(ack, st.integers(0, 6)),
    st.builds(lambda c, m: struct.pack("!HH", 5, c) + m, st.integers(0, 65535), st.binary(max_size=10)),
    st.builds(lambda p: oack(*p), _pairs),
    st.builds(
        lambda op, f, p: struct.pack("!H", op) + f + b"\0octet\0" + b"".join(k + b"\0" + v + b"\0" for k, v in p),
        st.sampled_from([1, 2]),
        st.binary(max_size=8),
        _pairs,
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(), max_size=20), st.lists(st.booleans(), min_size=1, max_size=20))
def test_fuzz_arbitrary_datagrams_never_raise(datagrams, directions):
    for analyzer in (
        TftpRequestAnalyzer(REQ_CONN),
        TftpTransferAnalyzer(XFER_CONN),
        TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ)),
    ):
        for i, d in enumerate(datagrams):
            recv = analyzer.receive_ts if directions[i % len(directions)] else analyzer.receive_tc
            _check_events(recv(d, T0 + i))
        _check_events(analyzer.close(T0 + 10_000))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), tftpish), max_size=30))
def test_fuzz_tftp_shaped_datagrams_keep_the_invariants(script):
    req = TftpRequestAnalyzer(REQ_CONN, limits=TftpLimits(max_weirds=1000))
    xfer = TftpTransferAnalyzer(XFER_CONN, request_context(CURL_RRQ_1024), limits=TftpLimits(max_weirds=1000))
    req_events: list[Event] = []
    xfer_events: list[Event] = []
    for i, (to_server, d) in enumerate(script):
        for a, sink in ((req, req_events), (xfer, xfer_events)):
            out = (a.receive_ts if to_server else a.receive_tc)(d, T0 + i)
            _check_events(out)
            sink += out
    req_events += req.close(T0 + 10_000)
    xfer_events += xfer.close(T0 + 10_000)
    _check_events(req_events)
    _check_events(xfer_events)
    # exactly one outcome per transfer flow; bytes never exceed what was sent as DATA
    done = only_done(xfer_events)
    sent = sum(len(d) - 4 for _, d in script if d[:2] == b"\x00\x03" and len(d) >= 4)
    assert 0 <= done.bytes <= sent
    # every request announces its transfer
    kinds = [type(e) for e in req_events if not isinstance(e, Weird)]
    for i, k in enumerate(kinds):
        if k is TftpRequest:
            assert kinds[i + 1] is ExpectConnection


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), tftpish), max_size=40), st.sampled_from([None, CURL_RRQ, CURL_WRQ_3000]))
def test_data_and_ack_shortcut_equals_the_general_way(script, raw_request):
    """The transfer analyzer's shortcut for well-formed DATA and ACK gives
    the events and the state the general parse gives, on any datagrams."""
    ctx = request_context(raw_request) if raw_request else None
    fast = TftpTransferAnalyzer(XFER_CONN, ctx, limits=TftpLimits(max_weirds=1000))
    slow = TftpTransferAnalyzer(XFER_CONN, ctx, limits=TftpLimits(max_weirds=1000))
    for i, (from_orig, d) in enumerate(script):
        assert fast._session.on_datagram(d, from_orig, T0 + i) == slow._session.on_datagram_parsed(d, from_orig, T0 + i)
    assert fast.close(T0 + 10_000) == slow.close(T0 + 10_000)
    state = ("bytes", "blocks", "retransmitted", "packets", "final_block", "blksize", "data_from_orig")
    assert [getattr(fast._session, k) for k in state] == [getattr(slow._session, k) for k in state]
