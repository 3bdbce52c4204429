"""FTP and FTPS on flows: control sessions, data channels, transfer records.

- Ports: 21 FTP, 990 implicit FTPS, 989 implicit FTPS data; 20 (either
  side) names active FTP data, which gets state only when a PORT/EPRT
  announced it (``name_only``). An FTP banner on any other port is
  recognised by ``probe_tc`` (``NonStandardPort``).
- A control session turns the analyzer's events into the record's
  ``AppUser``, ``FtpLoginSuccess`` and ``TlsUpgrade``, and pairs each data
  command with its data connections (children announced by PORT/EPRT/PASV/
  EPSV, joined on ``channel_seq``): one transfer record per command, once
  its result is known and its connections have ended (or the session ended).
- FTPS (990, or after ``AUTH TLS``): the control channel is not parsed any
  more; the TLS plugin's tap reads the ClientHello's server name, and new
  connections between the two hosts are taken as the session's data
  channels (``ftps-data``, TLS too), since PORT/PASV are encrypted.
"""

from __future__ import annotations

from typing import Any

from sensor.analyzers.base import FlowContext, FlowView, Plugin, Session
from sensor.analyzers.ftp.analyzer import (
    FtpAnalyzer,
    FtpDataChannel,
    FtpDataCommand,
    FtpDataResult,
    FtpLogin,
    FtpRequest,
    FtpSize,
    FtpTlsUpgrade,
)
from sensor.core.events import Event, ExpectConnection, Weird
from sensor.core.timefmt import iso_us

FTP_DEPTH = 16 * 1024 * 1024  # control-channel bytes reassembled per direction
MAX_FTP_CHANNELS = 256  # open data commands tracked per control session
LISTING_COMMANDS = frozenset(("LIST", "NLST", "MLSD"))
DATA_APPS = ("ftp-data", "ftps-data")


class Channel:
    """A data command, its result and its data connections."""

    __slots__ = ("flows", "open", "command", "result", "emitted", "size", "resumed")

    def __init__(self) -> None:
        self.flows: list[FlowView] = []
        self.open = 0  # data connections still live
        self.command: FtpDataCommand | None = None
        self.result: FtpDataResult | None = None
        self.emitted = False
        self.size: int | None = None  # a SIZE reply for the file a RETR fetches
        self.resumed = False  # REST before the command: the claims are of the whole file


class FtpData(Session):
    """A data connection; ``channel`` is the announcement it fulfilled
    (None: active data from port 20 or an FTPS connection between the hosts)."""

    def __init__(self, ctx: FlowContext, channel: FtpDataChannel | None) -> None:
        super().__init__(ctx)
        self.channel = channel


class FtpControl(Session):
    """A control connection (FTP, or FTPS: then without an analyzer)."""

    def __init__(self, ctx: FlowContext, analyzer: FtpAnalyzer | None = None) -> None:
        super().__init__(ctx)
        self.analyzer = analyzer
        self.depth = FTP_DEPTH
        self.channels: dict[int, Channel] | None = None
        self.last_size: tuple[str, int] | None = None  # the last SIZE answered: (path, size)
        self.rest = False  # a REST with a non-zero offset awaits its data command

    def on_event(self, ev: Event) -> None:
        ctx = self.ctx
        if isinstance(ev, FtpRequest):
            if ev.command == "USER" and ev.arg:
                ctx.set_user(ev.arg)  # the account tried, even if no login follows
            elif ev.command == "REST":
                self.rest = ev.arg.strip().lstrip("0") != ""
        elif isinstance(ev, FtpSize):
            self.last_size = None if ev.path_truncated else (ev.path, ev.size)
        elif isinstance(ev, FtpLogin):
            ctx.set_user(ev.user)
            ctx.set_field("FtpLoginSuccess", ev.success)
        elif isinstance(ev, FtpTlsUpgrade):
            ctx.set_app("ftps")
            ctx.set_field("TlsUpgrade", ev.method)
            ctx.stop()
            ctx.start_tap("tls")
            ctx.follow_hosts()
        elif isinstance(ev, FtpDataCommand):
            ch = self.channel(ev.channel_seq, ev.seq)
            ch.command = ev
            ch.resumed, self.rest = self.rest, False
            if ev.command == "RETR" and self.last_size is not None and self.last_size[0] == ev.arg:
                ch.size = self.last_size[1]
        elif isinstance(ev, FtpDataResult):
            ch = self.channel(ev.channel_seq, ev.seq)
            ch.result = ev
            self.transfer(ch)

    def flow_ending(self) -> None:
        if self.channels:
            for ch in list(self.channels.values()):
                self.transfer(ch, final=True)
            self.channels.clear()

    def child_started(self, child: FlowContext) -> None:
        s = child.session
        if not isinstance(s, FtpData) or s.channel is None:
            return
        ch = self.channel(s.channel.channel_seq, 0)
        ch.flows.append(child.flow)
        ch.open += 1

    def child_ended(self, child: FlowContext) -> None:
        s = child.session
        if (
            child.flow.app in DATA_APPS
            and isinstance(s, FtpData)
            and s.channel is not None
            and self.channels is not None
        ):
            ch = self.channels.get(s.channel.channel_seq)
            if ch is not None:
                ch.open -= 1
                self.transfer(ch)

    # -- data channels ---------------------------------------------------------------------
    def channel(self, channel_seq: int, seq: int) -> Channel:
        """The channel of a data command: by its announcement, else by the command."""
        if self.channels is None:
            self.channels = {}
        key = channel_seq or -seq
        ch = self.channels.get(key)
        if ch is None:
            if len(self.channels) >= MAX_FTP_CHANNELS:
                self.channels.pop(next(iter(self.channels)))
            ch = self.channels[key] = Channel()
        return ch

    def transfer(self, ch: Channel, final: bool = False) -> None:
        """Emit the transfer once the command's result is known and its data
        connections have ended (or the control session ended)."""
        res = ch.result or ch.command
        if res is None or ch.emitted:
            return
        if ch.open and not final:
            return
        if ch.result is None and not final:
            return
        ch.emitted = True
        ctrl = self.ctx.flow
        direction = res.direction
        server = ctrl.resp_h
        nbytes = 0
        uids = []
        for df in ch.flows:
            uids.append(df.uid)
            # file bytes travel from the server for a download, to it for an upload
            from_server = df.o if df.orig_h == server else df.r
            to_server = df.r if df.orig_h == server else df.o
            nbytes += (from_server if direction == "download" else to_server).bytes
        r = ch.result
        complete = bool(r is not None and r.outcome == "complete" and uids)
        # what the server said would move: the 150 reply's "(N bytes)", else a SIZE reply
        claim = None if ch.resumed else (r.announced_size if r is not None else None)
        if claim is None and not ch.resumed:
            claim = ch.size
        if claim is not None and claim <= nbytes:
            claim = None
        rec: dict[str, Any] = {
            "Timestamp": iso_us(res.ts),
            "Protocol": "ftp" if ctrl.app == "ftp" else ctrl.app,
            "Uid": uids[0] if uids else "",
            "DataUids": uids,
            "ControlUid": ctrl.uid,
            "ClientIP": ctrl.orig_h,
            "ServerIP": ctrl.resp_h,
            "ServerPort": ctrl.resp_p,
            "User": self.ctx.user,
            "Command": res.command,
            "Filename": res.arg,
            "FilenameTruncated": res.arg_truncated,
            "Direction": "listing" if res.command in LISTING_COMMANDS else direction,
            "Bytes": nbytes,
            "Complete": complete,
            "Mode": res.mode,
            "ReplyCode": r.code if r is not None else 0,
            "Outcome": r.outcome if r is not None else "unanswered",
        }
        if r is not None and r.announced_size is not None:
            rec["AnnouncedSize"] = r.announced_size
        if claim is not None:
            rec["ClaimedBytes"] = claim
            rec["Complete"] = False
            if complete:  # the server said it was all sent
                detail = f"{res.command} of {claim} bytes said complete, its data connections carried {nbytes}"
                self.ctx.weird(Weird(r.ts if r is not None else res.ts, "ftp_claim_exceeds_data", detail, "ftp"))
        if not uids:
            rec["Note"] = "no data connection seen in the capture"
        if rec["Outcome"] == "complete" and not rec["Complete"]:
            # the server's reply said complete (ReplyCode keeps it); what the capture shows did not
            rec["Outcome"] = "short" if uids else "no_data_connection"
        self.ctx.transfer(rec)


class FtpPlugin(Plugin):
    name = "ftp"
    tcp_ports = {21: "ftp", 990: "ftps", 989: "ftps-data", 20: "ftp-data"}
    tcp_orig_ports = {20: "ftp-data"}
    data_apps = frozenset(DATA_APPS)
    name_only = frozenset(("ftp-data",))
    expects = ("ftp-data",)

    def probe_tc(self, payload: bytes) -> bool:
        # a server's FTP banner
        return payload[:3] == b"220" and bool(FtpAnalyzer.probe_tc(payload))

    def attach(self, ctx: FlowContext, app: str, midstream: bool) -> Session | None:
        if app == "ftp":
            return FtpControl(ctx, FtpAnalyzer(ctx.conn(), midstream=midstream))
        if app == "ftps":
            ctx.start_tap("tls")
            ctx.follow_hosts()
            return FtpControl(ctx)
        if app == "ftps-data":
            ctx.start_tap("tls")
            return FtpData(ctx, None)
        return None

    def probed(self, ctx: FlowContext) -> Session:
        """FTP recognised by its banner on a port that is not FTP's."""
        ctx.set_app("ftp")
        ctx.set_field("NonStandardPort", True)
        return FtpControl(ctx, FtpAnalyzer(ctx.conn()))

    def expected(self, ctx: FlowContext, exp: ExpectConnection, parent: FlowView | None) -> Session | None:
        ctx.set_app("ftp-data")
        s = FtpData(ctx, exp.context if isinstance(exp.context, FtpDataChannel) else None)
        if parent is not None and parent.app == "ftps":
            ctx.set_app("ftps-data")
            ctx.start_tap("tls")
        return s

    def paired(self, ctx: FlowContext) -> Session | None:
        ctx.set_app("ftps-data")
        ctx.start_tap("tls")
        return FtpData(ctx, None)
