"""TFTP on flows: the request to port 69 and the transfer the server
answers from a new port (a child of the request, announced by the request
analyzer's expectation).

The request's record gets ``TftpOp``/``TftpFilename``/``TftpMode``
(``TftpOptions``); each transfer becomes one transfer record, owned by the
request flow while it lives. A client that reuses its port for a new
request, once the old one was answered, starts a new connection
(``restarts``)."""

from __future__ import annotations

from typing import Any

from sensor.analyzers.base import FlowContext, FlowView, Plugin, Session
from sensor.analyzers.tftp.analyzer import (
    TftpRequest,
    TftpRequestAnalyzer,
    TftpTransferAnalyzer,
    TftpTransferContext,
    TftpTransferDone,
)
from sensor.core.events import Event, ExpectConnection
from sensor.core.timefmt import iso_us

REQUEST_OPCODES = frozenset((b"\x00\x01", b"\x00\x02"))  # RRQ, WRQ: sessions of their own, never a data channel


class TftpSession(Session):
    """A request flow (``context`` None) or a transfer flow. Slotted: a
    request flood keeps one per flow (``max_flows``)."""

    __slots__ = ("analyzer", "context", "options", "__weakref__")

    def __init__(
        self,
        ctx: FlowContext,
        analyzer: TftpRequestAnalyzer | TftpTransferAnalyzer,
        context: TftpTransferContext | None = None,
    ) -> None:
        super().__init__(ctx)
        self.analyzer = analyzer
        self.context = context
        # the options of the last request that had some (the record's
        # TftpOptions: a later request without options leaves them)
        self.options: tuple[tuple[str, str], ...] = ()

    def on_event(self, ev: Event) -> None:
        # a TftpRequest's fields are the record's, set when the flow ends
        # (``flow_ending``): an empty fields dict costs a third of a full one
        if isinstance(ev, TftpTransferDone):
            self.transfer(ev)
        elif isinstance(ev, TftpRequest) and ev.options:
            self.options = ev.options

    def flow_ending(self) -> None:
        """The record's ``TftpOp``/``TftpFilename``/``TftpMode``: the last
        request's (a retransmission repeats it; a new one on the same flow
        replaces it), as the analyzer parses it again; ``TftpOptions``: the
        last ones a request of the flow carried."""
        a = self.analyzer
        req = a.context if isinstance(a, TftpRequestAnalyzer) else None
        if req is not None:
            ctx = self.ctx
            ctx.set_field("TftpOp", req.op)
            ctx.set_field("TftpFilename", req.filename)
            ctx.set_field("TftpMode", req.mode)
            if self.options:
                ctx.set_field("TftpOptions", {k: v for k, v in self.options})

    def transfer(self, ev: TftpTransferDone) -> None:
        ctx = self.ctx
        flow = ctx.flow
        parent = ctx.parent
        pf = parent.flow if parent is not None else None
        rec: dict[str, Any] = {
            "Timestamp": iso_us(ev.ts),
            "Protocol": "tftp",
            "Uid": flow.uid,
            "ControlUid": pf.uid if pf is not None else (ev.request_uid or flow.uid),
            # a transfer flow's originator is the server
            "ClientIP": pf.orig_h if pf is not None else flow.resp_h,
            "ServerIP": pf.resp_h if pf is not None else flow.orig_h,
            "ServerPort": pf.resp_p if pf is not None else flow.orig_p,
            "User": "",
            "Command": "RRQ" if ev.op == "read" else "WRQ",
            "Filename": ev.filename,
            "FilenameTruncated": bool(self.context is not None and self.context.filename_truncated),
            "Direction": ev.direction,
            "Bytes": ev.bytes,
            "Complete": ev.complete,
            "Blocks": ev.blocks,
            "BlockSize": ev.blksize,
        }
        if ev.error_code is not None:
            rec["ErrorCode"] = ev.error_code
            rec["ErrorMessage"] = ev.error_msg
        if ev.tsize is not None and ev.tsize > ev.bytes:  # the tsize option claimed more than moved
            rec["ClaimedBytes"] = ev.tsize
            rec["Complete"] = False
        (parent or ctx).transfer(rec)

    def restarts(self, payload: bytes) -> bool:
        """An RRQ/WRQ from the client on a request the server already
        answered (its transfer flow was seen) is a new request, not a
        retransmission -- which comes only while unanswered."""
        ctx = self.ctx
        return (
            payload[:2] in REQUEST_OPCODES
            and self.context is None
            and ctx.parent is None
            and (ctx.children > 0 or ctx.child_answered)
        )


class TftpPlugin(Plugin):
    name = "tftp"
    udp_ports = {69: "tftp"}
    expects = ("tftp-transfer",)

    def attach(self, ctx: FlowContext, app: str, midstream: bool) -> Session | None:
        return TftpSession(ctx, TftpRequestAnalyzer(ctx.conn()))

    def expected(self, ctx: FlowContext, exp: ExpectConnection, parent: FlowView | None) -> Session | None:
        ctx.set_app("tftp")
        tctx = exp.context if isinstance(exp.context, TftpTransferContext) else None
        return TftpSession(ctx, TftpTransferAnalyzer(ctx.conn(), context=tctx), tctx)
