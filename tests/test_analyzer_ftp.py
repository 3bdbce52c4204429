"""Tests for sensor.analyzers.ftp (sans-IO FTP/FTPS control-channel analyzer).

Transcripts are byte-exact control-channel conversations of the clients and
server in /work/shared/reading/lab-notes.md (vsftpd 3.0.3 with curl and
lftp): one ``(side, bytes)`` entry per TCP segment, ``"C"`` client -> server,
``"S"`` server -> client. ``tr()`` feeds a transcript three ways (whole
segments, one byte at a time, and with trailing bytes of an unfinished line
in each direction, as h11's tests/test_io.py does) and requires the same
events every time.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.analyzers.base import ConnInfo
from sensor.analyzers.ftp import (
    DEFAULT_LIMITS,
    NEED_DATA,
    TRANSITIONS,
    WEIRD_NAMES,
    CommandLine,
    FtpAddressError,
    FtpAnalyzer,
    FtpCommandParser,
    FtpDataChannel,
    FtpDataCommand,
    FtpDataResult,
    FtpLimits,
    FtpLogin,
    FtpReply,
    FtpReplyParser,
    FtpRequest,
    FtpSize,
    FtpState,
    FtpTlsUpgrade,
    HostPort,
    ParseIssue,
    ReplyMessage,
    Trigger,
    parse_eprt_arg,
    parse_epsv_reply,
    parse_pasv_reply,
    parse_port_arg,
    probe_tc,
    probe_ts,
)
from sensor.analyzers.tls import parse_tls_client_hello_sni
from sensor.core.events import Event, ExpectConnection, Weird
from sensor.core.frozen import fields_of
from tests.support.tls import openssl_client_hello

CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
CONN = ConnInfo("CftpA1", "tcp", CLIENT, 40123, SERVER, 21)
CONN6 = ConnInfo("CftpA6", "tcp", "2001:db8::1", 40123, "2001:db8::2", 21)
FIVE_MIN_US = 300_000_000

Transcript = list[tuple[str, bytes]]

BANNER = ("S", b"220 (vsFTPd 3.0.3)\r\n")
LOGIN_ANON = [
    ("C", b"USER anonymous\r\n"),
    ("S", b"331 Please specify the password.\r\n"),
    ("C", b"PASS ftp@example.com\r\n"),
    ("S", b"230 Login successful.\r\n"),
]

# curl ftp://10.77.0.2/pub/secret.tar.gz (default: EPSV)
CURL_EPSV_DOWNLOAD: Transcript = [
    BANNER,
    *LOGIN_ANON,
    ("C", b"PWD\r\n"),
    ("S", b'257 "/" is the current directory\r\n'),
    ("C", b"CWD pub\r\n"),
    ("S", b"250 Directory successfully changed.\r\n"),
    ("C", b"EPSV\r\n"),
    ("S", b"229 Entering Extended Passive Mode (|||40001|)\r\n"),
    ("C", b"TYPE I\r\n"),
    ("S", b"200 Switching to Binary mode.\r\n"),
    ("C", b"SIZE secret.tar.gz\r\n"),
    ("S", b"213 1048576\r\n"),
    ("C", b"RETR secret.tar.gz\r\n"),
    ("S", b"150 Opening BINARY mode data connection for secret.tar.gz (1048576 bytes).\r\n"),
    ("S", b"226 Transfer complete.\r\n"),
    ("C", b"QUIT\r\n"),
    ("S", b"221 Goodbye.\r\n"),
]

VSFTPD_FEAT = (
    b"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n UTF8\r\n211 End\r\n"
)

# lftp -e 'put exfil.7z' with set ftp:passive-mode off (active: PORT)
LFTP_ACTIVE_UPLOAD: Transcript = [
    BANNER,
    ("C", b"FEAT\r\n"),
    ("S", VSFTPD_FEAT),
    ("C", b"OPTS UTF8 ON\r\n"),
    ("S", b"200 Always in UTF8 mode.\r\n"),
    ("C", b"USER alice\r\n"),
    ("S", b"331 Please specify the password.\r\n"),
    ("C", b"PASS s3cr3t-Pa55\r\n"),
    ("S", b"230 Login successful.\r\n"),
    ("C", b"PWD\r\n"),
    ("S", b'257 "/home/alice" is the current directory\r\n'),
    ("C", b"PORT 10,77,0,1,156,65\r\n"),
    ("S", b"200 PORT command successful. Consider using PASV.\r\n"),
    ("C", b"STOR exfil.7z\r\n"),
    ("S", b"150 Ok to send data.\r\n"),
    ("S", b"226 Transfer complete.\r\n"),
    ("C", b"QUIT\r\n"),
    ("S", b"221 Goodbye.\r\n"),
]

CLIENT_HELLO = openssl_client_hello("ftp.example.org")
SERVER_TLS = b"\x16\x03\x03\x00\x3a\x02\x00\x00\x36\x03\x03" + b"530 not ftp\r\n" + bytes(40)

# curl --ssl-reqd ftp://... : explicit FTPS with AUTH SSL
CURL_AUTH_SSL: Transcript = [
    BANNER,
    ("C", b"AUTH SSL\r\n"),
    ("S", b"234 Proceed with negotiation.\r\n"),
    ("C", CLIENT_HELLO),
    ("S", SERVER_TLS),
    ("C", b"\x17\x03\x03\x00\x20USER hidden\r\n" + bytes(16)),
]

# lftp upgrading a plain ftp:// session after FEAT offers AUTH TLS
LFTP_AUTH_TLS: Transcript = [
    BANNER,
    ("C", b"FEAT\r\n"),
    ("S", b"211-Features:\r\n AUTH SSL\r\n AUTH TLS\r\n EPRT\r\n EPSV\r\n PBSZ\r\n PROT\r\n211 End\r\n"),
    ("C", b"AUTH TLS\r\n"),
    ("S", b"234 Proceed with negotiation.\r\n"),
    ("C", CLIENT_HELLO),
]

# curl --disable-epsv: PASV / 227
CURL_PASV_DOWNLOAD: Transcript = [
    BANNER,
    *LOGIN_ANON,
    ("C", b"PWD\r\n"),
    ("S", b'257 "/" is the current directory\r\n'),
    ("C", b"PASV\r\n"),
    ("S", b"227 Entering Passive Mode (10,77,0,2,156,67).\r\n"),
    ("C", b"TYPE I\r\n"),
    ("S", b"200 Switching to Binary mode.\r\n"),
    ("C", b"RETR notes.txt\r\n"),
    ("S", b"150 Opening BINARY mode data connection for notes.txt (12 bytes).\r\n"),
    ("S", b"226 Transfer complete.\r\n"),
    ("C", b"QUIT\r\n"),
    ("S", b"221 Goodbye.\r\n"),
]

# curl -P - ftp://.../ (active: EPRT), directory listing
CURL_EPRT_LIST: Transcript = [
    BANNER,
    *LOGIN_ANON,
    ("C", b"PWD\r\n"),
    ("S", b'257 "/" is the current directory\r\n'),
    ("C", b"EPRT |1|10.77.0.1|40005|\r\n"),
    ("S", b"200 EPRT command successful. Consider using EPSV.\r\n"),
    ("C", b"TYPE A\r\n"),
    ("S", b"200 Switching to ASCII mode.\r\n"),
    ("C", b"LIST\r\n"),
    ("S", b"150 Here comes the directory listing.\r\n"),
    ("S", b"226 Directory send OK.\r\n"),
    ("C", b"QUIT\r\n"),
    ("S", b"221 Goodbye.\r\n"),
]

ALL_TRANSCRIPTS = {
    "curl_epsv_download": CURL_EPSV_DOWNLOAD,
    "lftp_active_upload": LFTP_ACTIVE_UPLOAD,
    "curl_auth_ssl": CURL_AUTH_SSL,
    "lftp_auth_tls": LFTP_AUTH_TLS,
    "curl_pasv_download": CURL_PASV_DOWNLOAD,
    "curl_eprt_list": CURL_EPRT_LIST,
}

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def ts_of(i: int) -> int:
    return 1_700_000_000_000_000 + i * 1000


def feed(
    transcript: Transcript,
    *,
    conn: ConnInfo = CONN,
    limits: FtpLimits = DEFAULT_LIMITS,
    bytewise: bool = False,
    trailing: bool = False,
    analyzer: FtpAnalyzer | None = None,
) -> tuple[FtpAnalyzer, list[Event]]:
    a = analyzer or FtpAnalyzer(conn, limits)
    last = {side: max((i for i, (s, _) in enumerate(transcript) if s == side), default=-1) for side in "CS"}
    out: list[Event] = []
    for i, (side, data) in enumerate(transcript):
        if trailing and i == last[side]:
            data += b"NOO" if side == "C" else b"22"  # an unfinished next line
        receive = a.receive_ts if side == "C" else a.receive_tc
        if bytewise:
            for k in range(len(data)):
                out += receive(data[k : k + 1], ts_of(i))
        else:
            out += receive(data, ts_of(i))
    return a, out


def snapshot(events: list[Event]) -> list[str]:
    """repr() also covers ExpectConnection.context (compare=False)."""
    return [repr(e) for e in events]


def tr(transcript: Transcript, **kw: object) -> list[Event]:
    """Feed whole, byte by byte, and with trailing data: same events."""
    _, whole = feed(transcript, **kw)  # type: ignore[arg-type]
    _, bytewise = feed(transcript, bytewise=True, **kw)  # type: ignore[arg-type]
    _, trailing = feed(transcript, trailing=True, **kw)  # type: ignore[arg-type]
    assert snapshot(bytewise) == snapshot(whole)
    assert snapshot(trailing) == snapshot(whole)
    return whole


def of(events: list[Event], cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def weird_names(events: list[Event]) -> list[str]:
    return [e.name for e in events if isinstance(e, Weird)]


def session(
    *lines: tuple[str, bytes], conn: ConnInfo = CONN, limits: FtpLimits = DEFAULT_LIMITS, logged_in: bool = True
) -> tuple[FtpAnalyzer, list[Event]]:
    """Run a vsftpd-greeted (and by default logged-in) session plus ``lines``."""
    prefix = [BANNER, *LOGIN_ANON] if logged_in else [BANNER]
    a, events = feed([*prefix, *lines], conn=conn, limits=limits)
    return a, events[len(feed(prefix, conn=conn)[1]) :]


# ---------------------------------------------------------------------------
# real sessions
# ---------------------------------------------------------------------------


def test_curl_epsv_download_full_event_sequence() -> None:
    events = tr(CURL_EPSV_DOWNLOAD)
    assert weird_names(events) == []
    # every command is reported in order with consecutive sequence numbers
    assert [(r.seq, r.command, r.arg) for r in of(events, FtpRequest)] == [
        (1, "USER", "anonymous"),
        (2, "PASS", ""),
        (3, "PWD", ""),
        (4, "CWD", "pub"),
        (5, "EPSV", ""),
        (6, "TYPE", "I"),
        (7, "SIZE", "secret.tar.gz"),
        (8, "RETR", "secret.tar.gz"),
        (9, "QUIT", ""),
    ]
    replies = of(events, FtpReply)
    assert replies[0] == FtpReply(ts_of(0), 0, 220, "(vsFTPd 3.0.3)", False, "")
    assert [(r.code, r.for_command, r.seq) for r in replies[1:]] == [
        (331, "USER", 1),
        (230, "PASS", 2),
        (257, "PWD", 3),
        (250, "CWD", 4),
        (229, "EPSV", 5),
        (200, "TYPE", 6),
        (213, "SIZE", 7),
        (150, "RETR", 8),
        (226, "RETR", 8),
        (221, "QUIT", 9),
    ]
    assert of(events, FtpLogin) == [FtpLogin(ts_of(4), 2, "anonymous", False, True, True, 230)]
    assert of(events, FtpSize) == [FtpSize(ts_of(14), 7, "secret.tar.gz", False, 1048576)]

    (expect,) = of(events, ExpectConnection)
    assert expect == ExpectConnection(
        ts_of(10), "tcp", CLIENT, None, SERVER, 40001, "ftp-data", ts_of(10) + FIVE_MIN_US
    )
    assert expect.context == FtpDataChannel("CftpA1", 5, "passive")

    (cmd,) = of(events, FtpDataCommand)
    assert cmd == FtpDataCommand(ts_of(15), 8, "RETR", "secret.tar.gz", False, "download", "passive", 5)
    (result,) = of(events, FtpDataResult)
    assert result == FtpDataResult(
        ts_of(17), 8, "RETR", "secret.tar.gz", False, "download", "passive", 5, 226, "complete", 1048576
    )
    # the linking contract: expectation context -> command -> result
    assert expect.context.channel_seq == cmd.channel_seq == result.channel_seq
    assert cmd.seq == result.seq


def test_curl_epsv_event_order_around_the_transfer() -> None:
    events = tr(CURL_EPSV_DOWNLOAD)
    kinds = [type(e).__name__ for e in events]
    i = kinds.index("ExpectConnection")
    assert kinds[i - 1 : i + 1] == ["FtpReply", "ExpectConnection"]  # after its 229
    j = kinds.index("FtpDataCommand")
    assert kinds[j - 1 : j + 1] == ["FtpRequest", "FtpDataCommand"]
    k = kinds.index("FtpDataResult")
    assert events[k - 1].code == 226


def test_lftp_active_upload_with_feat() -> None:
    a, events = feed(LFTP_ACTIVE_UPLOAD)
    assert snapshot(events) == snapshot(tr(LFTP_ACTIVE_UPLOAD))
    assert weird_names(events) == []
    feat = [r for r in of(events, FtpReply) if r.code == 211]
    assert feat == [
        FtpReply(
            ts_of(2),
            1,
            211,
            "Features:\n EPRT\n EPSV\n MDTM\n PASV\n REST STREAM\n SIZE\n TVFS\n UTF8\nEnd",
            False,
            "FEAT",
        )
    ]
    assert of(events, FtpLogin) == [FtpLogin(ts_of(8), 4, "alice", False, True, True, 230)]

    (expect,) = of(events, ExpectConnection)
    # active mode: the server originates (from any port), the client listens
    assert (expect.orig_h, expect.orig_p, expect.resp_h, expect.resp_p) == (SERVER, None, CLIENT, 156 * 256 + 65)
    assert expect.ts == ts_of(11)  # announced with the command, before its 200
    assert expect.context == FtpDataChannel("CftpA1", 6, "active")
    (cmd,) = of(events, FtpDataCommand)
    assert (cmd.command, cmd.arg, cmd.direction, cmd.mode, cmd.channel_seq) == (
        "STOR",
        "exfil.7z",
        "upload",
        "active",
        6,
    )
    (result,) = of(events, FtpDataResult)
    assert (result.seq, result.code, result.outcome, result.announced_size) == (7, 226, "complete", None)
    assert a.state is FtpState.CLOSED


def test_password_never_stored() -> None:
    for transcript in (LFTP_ACTIVE_UPLOAD, CURL_EPSV_DOWNLOAD):
        a, events = feed(transcript)
        events += a.close(ts_of(99))
        text = "".join(repr(e) + repr(getattr(e, "context", None)) for e in events)
        assert "s3cr3t" not in text and "ftp@example.com" not in text
        assert [r.arg for r in of(events, FtpRequest) if r.command == "PASS"] == [""]


def test_curl_auth_ssl_upgrade_stops_parsing() -> None:
    events = tr(CURL_AUTH_SSL)
    assert [type(e).__name__ for e in events] == ["FtpReply", "FtpRequest", "FtpReply", "FtpTlsUpgrade"]
    assert events[-1] == FtpTlsUpgrade(ts_of(2), 1, "AUTH SSL", 234)
    # nothing after the upgrade: not the TLS records, not the "USER hidden" inside one
    a, _ = feed(CURL_AUTH_SSL)
    assert a.state is FtpState.TLS
    assert a.receive_ts(b"USER x\r\nPASS y\r\n", ts_of(50)) == []
    assert a.receive_tc(b"500 x\r\n" * 100, ts_of(51)) == []
    assert a.gap(True, 100, ts_of(52)) == []
    assert a.close(ts_of(53)) == []
    # what the pipeline does next: the client's first TLS bytes name the server
    assert parse_tls_client_hello_sni(CURL_AUTH_SSL[3][1]) == "ftp.example.org"


def test_lftp_auth_tls_after_feat() -> None:
    events = tr(LFTP_AUTH_TLS)
    assert weird_names(events) == []
    assert of(events, FtpTlsUpgrade) == [FtpTlsUpgrade(ts_of(4), 2, "AUTH TLS", 234)]
    assert isinstance(events[-1], FtpTlsUpgrade)


def test_auth_refused_keeps_parsing() -> None:
    a, events = session(
        ("C", b"AUTH TLS\r\n"),
        ("S", b"530 Please login with USER and PASS.\r\n"),
        ("C", b"USER bob\r\n"),
        ("S", b"331 Please specify the password.\r\n"),
        logged_in=False,
    )
    assert of(events, FtpTlsUpgrade) == []
    assert a.state is FtpState.AWAIT_PASS


def test_client_hello_before_234_is_not_parsed() -> None:
    # the capture shows the ClientHello before the server's 234 (crossed order)
    transcript = [BANNER, ("C", b"AUTH TLS\r\n" + CLIENT_HELLO), ("S", b"234 Proceed with negotiation.\r\n")]
    events = tr(transcript)
    assert weird_names(events) == []
    assert [type(e).__name__ for e in events] == ["FtpReply", "FtpRequest", "FtpReply", "FtpTlsUpgrade"]


def test_tls_record_after_empty_line_is_not_parsed() -> None:
    # found by randomized chunking: an empty line must not hide the next line
    # start from the TLS check (events used to depend on segment boundaries)
    transcript = [BANNER, ("C", b"AUTH TLS\r\nQUIT\r\n\r\n" + CLIENT_HELLO)]
    events = tr(transcript)
    assert [(r.seq, r.command) for r in of(events, FtpRequest)] == [(1, "AUTH"), (2, "QUIT")]
    assert weird_names(events) == []


def test_pasv_curl_disable_epsv() -> None:
    events = tr(CURL_PASV_DOWNLOAD)
    assert weird_names(events) == []
    (expect,) = of(events, ExpectConnection)
    assert (expect.orig_h, expect.resp_h, expect.resp_p) == (CLIENT, SERVER, 156 * 256 + 67)
    (result,) = of(events, FtpDataResult)
    assert (result.mode, result.channel_seq, result.announced_size, result.outcome) == ("passive", 4, 12, "complete")


def test_pasv_behind_nat_expects_control_server_address() -> None:
    nat = replace(CONN, resp_h="203.0.113.10")
    events = tr(CURL_PASV_DOWNLOAD, conn=nat)
    assert weird_names(events) == ["ftp_pasv_address_mismatch"]
    (expect,) = of(events, ExpectConnection)
    assert (expect.resp_h, expect.resp_p) == ("203.0.113.10", 40003)
    assert "10.77.0.2" in of(events, Weird)[0].detail


def test_pasv_zero_address_expects_control_server() -> None:
    _, events = session(("C", b"PASV\r\n"), ("S", b"227 Entering Passive Mode (0,0,0,0,156,67)\r\n"))
    assert weird_names(events) == ["ftp_pasv_address_mismatch"]
    assert of(events, ExpectConnection)[0].resp_h == SERVER


def test_eprt_list_active() -> None:
    events = tr(CURL_EPRT_LIST)
    assert weird_names(events) == []
    (expect,) = of(events, ExpectConnection)
    assert (expect.orig_h, expect.resp_h, expect.resp_p) == (SERVER, CLIENT, 40005)
    (cmd,) = of(events, FtpDataCommand)
    assert (cmd.command, cmd.direction, cmd.mode, cmd.channel_seq) == ("LIST", "download", "active", 4)


def test_eprt_ipv6_uses_control_address_text() -> None:
    # the advertised address is written differently; it is the same host
    _, events = session(
        ("C", b"EPRT |2|2001:0db8:0:0::1|40007|\r\n"),
        ("S", b"200 EPRT command successful. Consider using EPSV.\r\n"),
        conn=CONN6,
    )
    assert weird_names(events) == []
    (expect,) = of(events, ExpectConnection)
    assert (expect.orig_h, expect.resp_h, expect.resp_p) == ("2001:db8::2", "2001:db8::1", 40007)


def test_epsv_over_ipv6() -> None:
    _, events = session(("C", b"EPSV\r\n"), ("S", b"229 Entering Extended Passive Mode (|||50000|)\r\n"), conn=CONN6)
    (expect,) = of(events, ExpectConnection)
    assert (expect.orig_h, expect.resp_h, expect.resp_p) == ("2001:db8::1", "2001:db8::2", 50000)


def test_expectation_lifetime_is_an_option() -> None:
    limits = FtpLimits(data_channel_timeout_us=7_000_000)
    _, events = session(("C", b"EPSV\r\n"), ("S", b"229 Entering Extended Passive Mode (|||50000|)\r\n"), limits=limits)
    (expect,) = of(events, ExpectConnection)
    assert expect.expires_us == expect.ts + 7_000_000


def test_data_channel_taken_by_first_data_command_only() -> None:
    _, events = session(
        ("C", b"EPSV\r\n"),
        ("S", b"229 Entering Extended Passive Mode (|||50000|)\r\n"),
        ("C", b"RETR a\r\n"),
        ("S", b"150 Opening.\r\n"),
        ("S", b"226 Transfer complete.\r\n"),
        ("C", b"RETR b\r\n"),
        ("S", b"425 Use PORT or PASV first.\r\n"),
    )
    results = of(events, FtpDataResult)
    assert [(r.arg, r.channel_seq, r.mode, r.outcome, r.code) for r in results] == [
        ("a", 3, "passive", "complete", 226),
        ("b", 0, "", "failed", 425),
    ]


def test_transfer_failure_outcome() -> None:
    _, events = session(
        ("C", b"PASV\r\n"),
        ("S", b"227 Entering Passive Mode (10,77,0,2,156,67).\r\n"),
        ("C", b"STOR /etc/passwd\r\n"),
        ("S", b"553 Could not create file.\r\n"),
    )
    (result,) = of(events, FtpDataResult)
    assert (result.command, result.direction, result.code, result.outcome) == ("STOR", "upload", 553, "failed")


@pytest.mark.parametrize(
    "command,direction",
    [
        ("RETR", "download"),
        ("LIST", "download"),
        ("NLST", "download"),
        ("MLSD", "download"),
        ("STOR", "upload"),
        ("STOU", "upload"),
        ("APPE", "upload"),
    ],
)
def test_data_command_directions(command: str, direction: str) -> None:
    _, events = session(("C", f"{command} x\r\n".encode()), ("S", b"226 ok\r\n"))
    (cmd,) = of(events, FtpDataCommand)
    (res,) = of(events, FtpDataResult)
    assert cmd.direction == res.direction == direction
    assert res.outcome == "complete"


# ---------------------------------------------------------------------------
# login and state machine
# ---------------------------------------------------------------------------


def test_failed_login() -> None:
    a, events = session(
        ("C", b"USER root\r\n"),
        ("S", b"331 Please specify the password.\r\n"),
        ("C", b"PASS toor\r\n"),
        ("S", b"530 Login incorrect.\r\n"),
        logged_in=False,
    )
    assert of(events, FtpLogin) == [FtpLogin(ts_of(4), 2, "root", False, True, False, 530)]
    assert a.state is FtpState.AWAIT_USER
    assert "toor" not in repr(events)


def test_user_without_password() -> None:
    a, events = session(("C", b"USER ftp\r\n"), ("S", b"230 Login successful.\r\n"), logged_in=False)
    assert of(events, FtpLogin) == [FtpLogin(ts_of(2), 1, "ftp", False, False, True, 230)]
    assert a.state is FtpState.LOGGED_IN


def test_pipelined_user_and_pass() -> None:
    transcript = [
        BANNER,
        ("C", b"USER anonymous\r\nPASS x@y\r\nPWD\r\n"),
        ("S", b"331 Please specify the password.\r\n230 Login successful.\r\n"),
        ("S", b'257 "/" is the current directory\r\n'),
    ]
    events = tr(transcript)
    assert weird_names(events) == []
    assert [(r.code, r.for_command) for r in of(events, FtpReply)] == [
        (220, ""),
        (331, "USER"),
        (230, "PASS"),
        (257, "PWD"),
    ]
    assert of(events, FtpLogin)[0].success


def test_commands_before_greeting_stay_queued() -> None:
    # a client (bot) that does not wait for the banner
    transcript = [("C", b"USER anonymous\r\n"), BANNER, ("S", b"331 Please specify the password.\r\n")]
    a, events = feed(transcript)
    assert weird_names(events) == []
    assert [(r.code, r.for_command) for r in of(events, FtpReply)] == [(220, ""), (331, "USER")]
    assert a.state is FtpState.AWAIT_PASS


def test_greeting_delay_then_ready() -> None:
    a, events = feed([("S", b"120 Service ready in 1 minute.\r\n"), BANNER])
    assert weird_names(events) == [] and a.state is FtpState.AWAIT_USER


def test_refused_greeting() -> None:
    a, events = feed([("S", b"421 There are too many connected users, please try later.\r\n")])
    assert weird_names(events) == [] and a.state is FtpState.CLOSED


def test_unexpected_transition_is_weird_not_exception() -> None:
    # PASS accepted without any USER: not in the table
    a, events = session(("C", b"PASS hunter2\r\n"), ("S", b"230 Login successful.\r\n"), logged_in=False)
    assert weird_names(events) == ["ftp_unexpected_login_ok"]
    assert "await_user" in of(events, Weird)[0].detail
    assert a.state is FtpState.UNKNOWN
    # UNKNOWN resynchronises on the next decisive exchange
    a.receive_ts(b"USER bob\r\n", 1)
    a.receive_tc(b"331 Please specify the password.\r\n", 2)
    assert a.state is FtpState.AWAIT_PASS


def test_bad_greeting_code() -> None:
    a, events = feed([("S", b"331 hello?\r\n")])
    assert weird_names(events) == ["ftp_unexpected_bad_greeting"]
    assert a.state is FtpState.UNKNOWN


def test_unsolicited_421_closes_without_weird() -> None:
    a, events = session(("S", b"421 Timeout.\r\n"))
    assert weird_names(events) == []
    assert a.state is FtpState.CLOSED


def test_rein_returns_to_await_user() -> None:
    a, _ = session(("C", b"REIN\r\n"), ("S", b"220 Service ready for new user.\r\n"))
    assert a.state is FtpState.AWAIT_USER


def test_transition_table_shape() -> None:
    assert set(TRANSITIONS) == set(FtpState)
    assert TRANSITIONS[FtpState.TLS] == {}
    for state, row in TRANSITIONS.items():
        if state is not FtpState.TLS:
            assert row[Trigger.TLS_OK] is FtpState.TLS  # a 234 always upgrades
            assert Trigger.GAP in row
        assert all(isinstance(t, Trigger) and isinstance(s, FtpState) for t, s in row.items())


# ---------------------------------------------------------------------------
# malformed input and bounds (named cases)
# ---------------------------------------------------------------------------


def test_line_too_long_is_cut_and_flagged() -> None:
    limits = FtpLimits(max_line_length=64)
    transcript = [
        BANNER,
        ("C", b"USER " + b"A" * 200 + b"\r\n"),
        ("C", b"SYST\r\n"),
        ("S", b"530 Permission denied.\r\n"),
        ("S", b"215 UNIX Type: L8\r\n"),
    ]
    events = tr(transcript, limits=limits)
    assert weird_names(events) == ["ftp_line_too_long"]
    user, syst = of(events, FtpRequest)
    assert user.command == "USER" and user.arg == "A" * 59 and user.arg_truncated
    assert (syst.command, syst.arg_truncated) == ("SYST", False)
    assert of(events, FtpLogin)[0].user_truncated


def test_line_exactly_at_limit_is_not_cut() -> None:
    limits = FtpLimits(max_line_length=20)
    events = tr([BANNER, ("C", b"CWD 1234567890123456\r\n"), ("C", b"CWD 12345678901234567\n")], limits=limits)
    assert [(r.arg, r.arg_truncated) for r in of(events, FtpRequest)] == [
        ("1234567890123456", False),
        ("1234567890123456", True),
    ]
    assert weird_names(events) == ["ftp_line_too_long"]


def test_long_reply_line_and_text_cap() -> None:
    limits = FtpLimits(max_line_length=100, max_text_length=30)
    transcript = [BANNER, ("C", b"HELP\r\n"), ("S", b"214-" + b"x" * 300 + b"\r\n more\r\n214 Help OK.\r\n")]
    events = tr(transcript, limits=limits)
    assert weird_names(events) == ["ftp_line_too_long"]
    (help_reply,) = [r for r in of(events, FtpReply) if r.code == 214]
    assert help_reply.text == "x" * 30 and help_reply.text_truncated


def test_receive_buffer_is_bounded() -> None:
    parser = FtpCommandParser(FtpLimits(max_line_length=128))
    for _ in range(1000):
        parser.receive_data(b"A" * 1000)  # one endless line, never drained
    assert len(parser._lines._buf) == 1000  # the first chunk; nothing after it
    parser.receive_data(b"tail\r\nNOOP\r\n")
    got = []
    while (ev := parser.next_event()) is not NEED_DATA:
        got.append(ev)
    assert got[-2:] == [CommandLine("A" * 16, "", True), CommandLine("NOOP", "", False)]
    parser = FtpCommandParser(FtpLimits(max_line_length=128))
    parser.receive_data(b"A" * 10_000)
    events = []
    while (ev := parser.next_event()) is not NEED_DATA:
        events.append(ev)
    assert [e.name for e in events if isinstance(e, ParseIssue)] == ["ftp_line_too_long", "ftp_malformed_command"]
    parser.receive_data(b"B" * 10_000 + b"\r\nNOOP\r\n")
    assert len(parser._lines._buf) <= 128 + 1 + 8
    events = []
    while (ev := parser.next_event()) is not NEED_DATA:
        events.append(ev)
    assert events[-1] == CommandLine("NOOP", "", False)


def test_argument_cap() -> None:
    limits = FtpLimits(max_arg_length=8)
    _, events = session(("C", b"STOR 0123456789abc\r\n"), ("S", b"226 ok\r\n"), limits=limits)
    cmd = of(events, FtpDataCommand)[0]
    assert (cmd.arg, cmd.arg_truncated) == ("01234567", True)
    assert weird_names(events) == []


def test_too_many_pending_commands() -> None:
    limits = FtpLimits(max_pending_commands=3)
    burst = b"NOOP\r\n" * 3 + b"PWD\r\nRETR x\r\n"
    transcript = [BANNER, ("C", burst), ("S", b"200 NOOP ok.\r\n" * 3)]
    events = tr(transcript, limits=limits)
    assert weird_names(events) == ["ftp_too_many_pending_commands"]
    assert [r.for_command for r in of(events, FtpReply)] == ["", "NOOP", "NOOP", "NOOP"]
    # the RETR could not be queued: its result comes at once, as untracked
    (result,) = of(events, FtpDataResult)
    assert (result.arg, result.outcome, result.code) == ("x", "untracked", 0)
    assert [r.seq for r in of(events, FtpRequest)] == [1, 2, 3, 4, 5]


def test_reply_without_command() -> None:
    _, events = session(("S", b"200 Nothing asked.\r\n"))
    assert weird_names(events) == ["ftp_reply_without_command"]
    assert of(events, FtpReply) == [FtpReply(ts_of(5), 0, 200, "Nothing asked.", False, "")]


def test_malformed_reply_line() -> None:
    _, events = session(("S", b"HTTP/1.1 400 Bad Request\r\n"))
    assert weird_names(events) == ["ftp_malformed_reply"]
    assert of(events, FtpReply) == []


def test_malformed_command_still_paired() -> None:
    _, events = session(("C", b"\x16\x03\x01garbage\r\n"), ("S", b"500 Unknown command.\r\n"))
    assert weird_names(events) == ["ftp_malformed_command"]
    assert of(events, FtpReply)[0].for_command == of(events, FtpRequest)[0].command


def test_bad_port_tuple() -> None:
    _, events = session(
        ("C", b"PORT 10,77,0,1,156\r\n"),
        ("S", b"500 Illegal PORT command.\r\n"),
        ("C", b"RETR x\r\n"),
        ("S", b"425 Use PORT or PASV first.\r\n"),
    )
    assert weird_names(events) == ["ftp_bad_port"]
    assert of(events, ExpectConnection) == []
    assert of(events, FtpDataCommand)[0].channel_seq == 0


@pytest.mark.parametrize("arg", [b"10,77,0,300,156,65", b"10,77,0,1,256,0", b"10,77,0,1,0,0"])
def test_port_with_out_of_range_numbers(arg: bytes) -> None:
    _, events = session(("C", b"PORT " + arg + b"\r\n"))
    assert weird_names(events) == ["ftp_bad_port"]
    assert "out of range" in of(events, Weird)[0].detail or "port 0" in of(events, Weird)[0].detail
    assert of(events, ExpectConnection) == []


@pytest.mark.parametrize(
    "arg",
    [
        b"|3|10.77.0.1|40005|",
        b"|1|10.77.0.1|70000|",
        b"|1|::1|40005|",
        b"|1|10.77.0.1|",
        b"10.77.0.1 40005",
        b"|2|10.77.0.1|40005|",
    ],
)
def test_bad_eprt(arg: bytes) -> None:
    _, events = session(("C", b"EPRT " + arg + b"\r\n"))
    assert weird_names(events) == ["ftp_bad_eprt"]
    assert of(events, ExpectConnection) == []


def test_port_refused_forgets_channel() -> None:
    _, events = session(
        ("C", b"PORT 10,77,0,1,156,65\r\n"),
        ("S", b"500 Illegal PORT command.\r\n"),
        ("C", b"RETR x\r\n"),
        ("S", b"425 Use PORT or PASV first.\r\n"),
    )
    assert len(of(events, ExpectConnection)) == 1  # announced before the refusal
    assert of(events, FtpDataCommand)[0].channel_seq == 0


def test_pasv_reply_without_tuple() -> None:
    _, events = session(
        ("C", b"PASV\r\n"),
        ("S", b"227 Entering Passive Mode.\r\n"),
        ("C", b"EPSV\r\n"),
        ("S", b"229 Entering Extended Passive Mode (|||0|)\r\n"),
    )
    assert weird_names(events) == ["ftp_bad_pasv_reply", "ftp_bad_epsv_reply"]
    assert of(events, ExpectConnection) == []


def test_bounce() -> None:
    _, events = session(
        ("C", b"PORT 192,0,2,99,0,25\r\n"),
        ("S", b"200 PORT command successful.\r\n"),
        ("C", b"STOR mail.txt\r\n"),
        ("S", b"150 Ok to send data.\r\n"),
        ("C", b"EPRT |1|198.51.100.7|22|\r\n"),
    )
    assert weird_names(events) == ["ftp_bounce", "ftp_bounce"]
    assert "192.0.2.99" in of(events, Weird)[0].detail
    assert of(events, ExpectConnection) == []  # no expectation towards a third host
    assert of(events, FtpDataCommand)[0].channel_seq == 0


def test_bad_size_reply() -> None:
    _, events = session(("C", b"SIZE a\r\n"), ("S", b"213 lots\r\n"))
    assert weird_names(events) == ["ftp_bad_size_reply"] and of(events, FtpSize) == []


def test_nul_and_invalid_utf8_decoded_safely() -> None:
    _, events = session(("C", b"RETR a\x00b\xff\xfe.txt\r\n"), ("S", b"550 Failed to open file \xff.\r\n"))
    assert weird_names(events) == ["ftp_nul_in_line"]
    (cmd,) = of(events, FtpDataCommand)
    assert cmd.arg == "a\x00b\\xff\\xfe.txt"
    assert of(events, FtpReply)[0].text == "Failed to open file \\xff."
    for e in events:
        for name in fields_of(e):
            value = getattr(e, name)
            if isinstance(value, str):
                value.encode("utf-8")  # never a lone surrogate


def test_bare_lf_equals_crlf() -> None:
    crlf = tr(CURL_EPSV_DOWNLOAD)
    lf = tr([(side, data.replace(b"\r\n", b"\n")) for side, data in CURL_EPSV_DOWNLOAD])
    assert snapshot(lf) == snapshot(crlf)


def test_telnet_abort_sequence_before_abor() -> None:
    _, events = session(("C", b"\xff\xf4\xff\xf2ABOR\r\n"), ("S", b"225 No transfer to ABOR.\r\n"))
    assert [r.command for r in of(events, FtpRequest)] == ["ABOR"]
    assert weird_names(events) == []


def test_weirds_are_capped() -> None:
    limits = FtpLimits(max_weirds=5)
    _, events = session(("S", b"garbage\r\n" * 100), limits=limits)
    assert weird_names(events) == ["ftp_malformed_reply"] * 5 + ["ftp_weird_limit_reached"]


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        FtpLimits(max_pending_commands=0)


# ---------------------------------------------------------------------------
# gaps, close, midstream
# ---------------------------------------------------------------------------


def test_gap_mid_line_resyncs_at_next_line() -> None:
    a, events = session(
        ("C", b"RETR big.iso\r\n"), ("S", b"150 Opening BINARY mode data connection.\r\n"), ("S", b"226 Transfer comp")
    )
    out = a.gap(False, 500, ts_of(20))
    assert weird_names(out) == ["ftp_content_gap"]
    # the RETR's pairing is lost: its result says so
    (result,) = of(out, FtpDataResult)
    assert (result.arg, result.outcome, result.code) == ("big.iso", "gap", 0)
    assert a.state is FtpState.UNKNOWN
    # the tail of a cut line is dropped, the next whole line is parsed
    out = a.receive_tc(b"ete.\r\n250 x\r\n", ts_of(21))
    assert weird_names(out) == []  # unpaired after a gap: expected, not weird
    assert [(r.code, r.seq) for r in of(out, FtpReply)] == [(250, 0)]
    out = a.receive_ts(b"PWD\r\n", ts_of(22)) + a.receive_tc(b'257 "/"\r\n', ts_of(23))
    assert [(r.code, r.for_command) for r in of(out, FtpReply)] == [(257, "PWD")]
    # pairing is back: an unpaired reply is weird again
    assert weird_names(a.receive_tc(b"200 ?\r\n", ts_of(24))) == ["ftp_reply_without_command"]


def test_gap_on_line_boundary_loses_nothing() -> None:
    a, _ = session()
    a.gap(True, 100, ts_of(20))
    out = a.receive_ts(b"STOR x\r\n", ts_of(21))
    assert [r.command for r in of(out, FtpRequest)] == ["STOR"]


def test_gap_in_client_direction_drops_partial_command() -> None:
    a, _ = session(("C", b"DELE importa"))
    a.gap(True, 10, ts_of(20))
    out = a.receive_ts(b"nt.doc\r\nCWD /tmp\r\n", ts_of(21))
    assert [(r.command, r.arg) for r in of(out, FtpRequest)] == [("CWD", "/tmp")]


def test_close_flushes_and_reports_unanswered_transfer() -> None:
    a, events = session(
        ("C", b"RETR x\r\n"),
        ("S", b"150 Opening BINARY mode data connection for x (5 bytes).\r\n"),
        ("S", b"226 Transfer complete."),
    )  # FIN without CRLF
    out = a.close(ts_of(30))
    assert [r.code for r in of(out, FtpReply)] == [226]
    assert of(out, FtpDataResult)[0].outcome == "complete"
    a, _ = session(("C", b"RETR x\r\n"), ("S", b"150 Opening BINARY mode data connection for x (5 bytes).\r\n"))
    out = a.close(ts_of(30))
    assert [(r.outcome, r.announced_size, r.code) for r in of(out, FtpDataResult)] == [("unanswered", 5, 0)]
    assert a.close(ts_of(31)) == [] and a.receive_ts(b"NOOP\r\n", ts_of(32)) == []


def test_unterminated_multiline_reply_at_close() -> None:
    a, _ = session(("C", b"FEAT\r\n"), ("S", b"211-Features:\r\n EPSV\r\n"))
    assert weird_names(a.close(ts_of(30))) == ["ftp_unterminated_reply"]


def test_midstream_pickup() -> None:
    a = FtpAnalyzer(CONN, midstream=True)
    assert a.state is FtpState.UNKNOWN
    out = a.receive_tc(b"ete.\r\n226 Transfer complete.\r\n", 1)
    out += a.receive_ts(b"t.iso\r\nEPSV\r\n", 2)
    out += a.receive_tc(b"229 Entering Extended Passive Mode (|||40009|)\r\n", 3)
    assert weird_names(out) == []
    assert [(r.code, r.for_command) for r in of(out, FtpReply)] == [(226, ""), (229, "EPSV")]
    assert of(out, ExpectConnection)[0].resp_p == 40009


def test_unpaired_pasv_reply_gets_own_channel_number() -> None:
    a = FtpAnalyzer(CONN, midstream=True)
    out = a.receive_tc(b"227 Entering Passive Mode (10,77,0,2,156,67).\r\n", 1)
    out += a.receive_ts(b"RETR x\r\n", 2)
    (expect,) = of(out, ExpectConnection)
    (cmd,) = of(out, FtpDataCommand)
    assert expect.context.channel_seq == cmd.channel_seq == 1 and cmd.seq == 2


# ---------------------------------------------------------------------------
# wire parsers on their own (h11 style)
# ---------------------------------------------------------------------------


def test_reply_parser_need_data_and_multiline() -> None:
    p = FtpReplyParser()
    assert p.next_event() is NEED_DATA
    p.receive_data(b"230-Welcome\r\n230-  to the")
    assert p.next_event() is NEED_DATA
    p.receive_data(b" server\r\n 230 is not the end\r\n230 Login successful.\r\n220 n")
    assert p.next_event() == ReplyMessage(
        230, "Welcome\n  to the server\n 230 is not the end\nLogin successful.", False, 4
    )
    assert p.next_event() is NEED_DATA


def test_command_parser_events() -> None:
    p = FtpCommandParser()
    p.receive_data(b"retr  two spaces\r\n\r\nNOOP")
    assert p.next_event() == CommandLine("RETR", " two spaces", False)
    assert p.next_event() is NEED_DATA  # empty line ignored, NOOP unfinished
    p.receive_eof()
    assert p.next_event() == CommandLine("NOOP", "", False)


# ---------------------------------------------------------------------------
# pure helpers and probes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("10,77,0,1,156,65", HostPort("10.77.0.1", 40001)),
        (" 10, 77, 0, 1, 0, 20 ", HostPort("10.77.0.1", 20)),
    ],
)
def test_parse_port_arg(arg: str, expected: HostPort) -> None:
    assert parse_port_arg(arg) == expected


@pytest.mark.parametrize(
    "arg", ["", "10,77,0,1,156", "10,77,0,1,156,65,1", "a,b,c,d,e,f", "1000,1,1,1,1,1", "10,77,0,1,1,\u0663"]
)
def test_parse_port_arg_rejects(arg: str) -> None:
    with pytest.raises(FtpAddressError):
        parse_port_arg(arg)


def test_parse_eprt() -> None:
    assert parse_eprt_arg("|1|132.235.1.2|6275|") == HostPort("132.235.1.2", 6275)
    assert parse_eprt_arg("|2|1080::8:800:200C:417A|5282|") == HostPort("1080::8:800:200c:417a", 5282)
    assert parse_eprt_arg("!1!10.0.0.1!21!") == HostPort("10.0.0.1", 21)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Entering Passive Mode (192,168,1,2,195,80).", HostPort("192.168.1.2", 50000)),
        ("Entering Passive Mode 192,168,1,2,195,80", HostPort("192.168.1.2", 50000)),
        ("=192,168,1,2,4,1", HostPort("192.168.1.2", 1025)),
    ],
)
def test_parse_pasv_reply(text: str, expected: HostPort) -> None:
    assert parse_pasv_reply(text) == expected


def test_parse_pasv_reply_rejects() -> None:
    for text in ("Entering Passive Mode.", "(1234,1,1,1,1)", "(300,1,1,1,1,1)"):
        with pytest.raises(FtpAddressError):
            parse_pasv_reply(text)


def test_parse_epsv_reply() -> None:
    assert parse_epsv_reply("Entering Extended Passive Mode (|||6446|)") == HostPort(None, 6446)
    assert parse_epsv_reply("Entering Extended Passive Mode (!!!6446!)") == HostPort(None, 6446)
    for text in ("Entering Extended Passive Mode", "(|||70000|)", "(|||0|)", "(aaa1a)"):
        with pytest.raises(FtpAddressError):
            parse_epsv_reply(text)


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"220 (vsFTPd 3.0.3)\r\n", True),
        (b"220-FileZilla Server 1.7.0\r\n220 Please visit https://filezilla-project.org/\r\n", True),
        (b"220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n", True),
        (b"220 mail.example.com ESMTP Postfix\r\n", False),
        (b"SSH-2.0-OpenSSH_9.2p1\r\n", False),
        (b"+OK POP3 ready\r\n", False),
        (b"230 Login successful.\r\n", False),
        (b"2", None),
        (b"220 (vsFTP", None),
        (b"", None),
    ],
)
def test_probe_tc(data: bytes, expected: bool | None) -> None:
    assert probe_tc(data) is expected
    assert FtpAnalyzer.probe_tc(data) is expected


def test_probe_tc_midstream_accepts_any_reply() -> None:
    assert probe_tc(b"226 Transfer complete.\r\n", midstream=True) is True
    assert probe_tc(b"22", midstream=True) is None
    assert probe_tc(b"ete.\r\n", midstream=True) is False


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"USER anonymous\r\n", True),
        (b"AUTH TLS\r\n", True),
        (b"feat\r\n", True),
        (b"US", None),
        (b"GET / HTTP/1.1\r\n", False),
        (b"EHLO client\r\n", False),
        (b"\x16\x03\x01\x02\x00", False),
        (b"RETR x\r\n", False),  # not an opening command
    ],
)
def test_probe_ts(data: bytes, expected: bool | None) -> None:
    assert probe_ts(data) is expected


def test_probe_ts_midstream() -> None:
    assert probe_ts(b"RETR x\r\n", midstream=True) is True
    assert probe_ts(b"xyz.txt\r\n", midstream=True) is False


# ---------------------------------------------------------------------------
# properties: never an exception, only our own Weirds; chunking does not matter
# ---------------------------------------------------------------------------

FRAGMENTS = [
    b"220 (vsFTPd 3.0.3)\r\n",
    b"USER anonymous\r\n",
    b"331 Please specify the password.\r\n",
    b"PASS x\r\n",
    b"230 Login successful.\r\n",
    b"530 Login incorrect.\r\n",
    b"PASV\r\n",
    b"227 Entering Passive Mode (10,77,0,2,156,67).\r\n",
    b"227 (999,1,1,1,1,1)\r\n",
    b"EPSV\r\n",
    b"229 Entering Extended Passive Mode (|||40001|)\r\n",
    b"PORT 10,77,0,1,156,65\r\n",
    b"PORT 1,2,3,4,5,6\r\n",
    b"EPRT |2|::1|5|\r\n",
    b"RETR a\r\n",
    b"STOR b\r\n",
    b"150 Ok (5 bytes).\r\n",
    b"226 Transfer complete.\r\n",
    b"211-Features:\r\n",
    b" EPSV\r\n",
    b"211 End\r\n",
    b"AUTH TLS\r\n",
    b"234 Proceed with negotiation.\r\n",
    b"421 Timeout.\r\n",
    b"QUIT\r\n",
    b"221 Goodbye.\r\n",
    b"SIZE a\r\n",
    b"213 12\r\n",
    b"REIN\r\n",
    b"\x16\x03\x01",
    b"\r\n",
    b"\n",
    b"\x00",
    b"\xff\xf4",
]
chunk = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=40))
step = st.one_of(
    st.tuples(st.sampled_from(["C", "S"]), st.lists(chunk, max_size=4).map(b"".join)),
    st.tuples(st.just("gap"), st.booleans(), st.integers(min_value=1, max_value=10_000)),
)
SMALL = FtpLimits(max_line_length=48, max_arg_length=16, max_text_length=24, max_pending_commands=4, max_weirds=8)


def check_events(events: list[Event]) -> None:
    """Only our own Weirds, str fields that encode, and (unless a TLS upgrade
    ended the session) exactly one FtpDataResult per FtpDataCommand."""
    if not of(events, FtpTlsUpgrade):
        assert sorted(e.seq for e in of(events, FtpDataCommand)) == sorted(e.seq for e in of(events, FtpDataResult))
    for e in events:
        assert isinstance(e, Event)
        if isinstance(e, Weird):
            assert e.analyzer == "ftp" and e.name in WEIRD_NAMES
        for name in fields_of(e):
            value = getattr(e, name)
            if isinstance(value, str):
                value.encode("utf-8")


def run_steps(steps: list, limits: FtpLimits, split: list[int] | None = None) -> list[Event]:
    a = FtpAnalyzer(CONN, limits)
    out: list[Event] = []
    for i, s in enumerate(steps):
        if s[0] == "gap":
            out += a.gap(s[1], s[2], i)
            continue
        side, data = s
        receive = a.receive_ts if side == "C" else a.receive_tc
        cut = (split[i] % (len(data) + 1)) if split else len(data)
        out += receive(data[:cut], i)
        out += receive(data[cut:], i)
    out += a.close(len(steps))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_arbitrary_bytes_each_direction(to_server: bytes, to_client: bytes) -> None:
    for limits in (DEFAULT_LIMITS, SMALL):
        for midstream in (False, True):
            a = FtpAnalyzer(CONN, limits, midstream=midstream)
            events = a.receive_ts(to_server, 1) + a.receive_tc(to_client, 2) + a.close(3)
            check_events(events)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=25), st.lists(st.integers(min_value=0, max_value=10**6), min_size=25, max_size=25))
def test_interleavings_never_raise_and_chunking_is_irrelevant(steps: list, split: list[int]) -> None:
    for limits in (DEFAULT_LIMITS, SMALL):
        whole = run_steps(steps, limits)
        check_events(whole)
        assert snapshot(run_steps(steps, limits, split)) == snapshot(whole)


@pytest.mark.parametrize("name", sorted(ALL_TRANSCRIPTS))
def test_every_transcript_same_three_ways_and_clean(name: str) -> None:
    events = tr(ALL_TRANSCRIPTS[name])
    check_events(events)
    assert weird_names(events) == []
