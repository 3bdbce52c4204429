"""SMB on flows (TCP 445 direct, 139 NetBIOS session service): the record's
user and ``Smb*`` fields, one transfer record per file and direction, a file
event per file opened and neither read nor written; named pipes (``IPC$``:
``srvsvc``, ``svcctl``, ...) are no files: they are named in ``SmbPipes``.

The analyzer skips file data itself (READ/WRITE sizes come from headers),
so the connection is reassembled without a depth limit."""

from __future__ import annotations

from typing import Any

from sensor.analyzers.base import FlowContext, Plugin, Session
from sensor.analyzers.smb.analyzer import (
    SmbAnalyzer,
    SmbEncrypted,
    SmbFileSummary,
    SmbNegotiate,
    SmbNetbiosSession,
    SmbSessionSetup,
    SmbTreeConnect,
)
from sensor.core.events import Event
from sensor.core.timefmt import iso_us

SMB_DEPTH = 1 << 62  # never stop reassembling: file data is skipped by the analyzer
MAX_TREES_NAMED = 64  # shares named per connection in AdditionalFields.SmbTrees
MAX_PIPES_NAMED = 64  # named pipes named per connection in AdditionalFields.SmbPipes


def is_pipe(ev: SmbFileSummary) -> bool:
    """A named pipe: opened on a pipe share (the tree connect said so), or on
    ``IPC$`` when the tree connect was not seen."""
    if ev.share_type:
        return ev.share_type == "pipe"
    return ev.tree.rsplit("\\", 1)[-1].upper() == "IPC$"


class SmbSession(Session):
    depth = SMB_DEPTH

    def __init__(self, ctx: FlowContext, analyzer: SmbAnalyzer) -> None:
        super().__init__(ctx)
        self.analyzer = analyzer
        self.uploaded = 0  # transfer bytes reported so far, client to server
        self.downloaded = 0  # and server to client

    def on_event(self, ev: Event) -> None:
        ctx = self.ctx
        if isinstance(ev, SmbNetbiosSession):
            ctx.set_field("NetbiosCalledName", ev.called_name)
        elif isinstance(ev, SmbNegotiate):
            if ev.dialect:
                ctx.set_field("SmbDialect", ev.dialect)
        elif isinstance(ev, SmbSessionSetup):
            if ev.user and not ctx.user:
                ctx.set_user(ev.user)
                ctx.set_field("SmbDomain", ev.domain)
                ctx.set_field("SmbWorkstation", ev.workstation)
            if ev.guest:
                ctx.set_field("SmbGuest", True)  # the server took the session as guest
        elif isinstance(ev, SmbTreeConnect):
            trees = ctx.fields.setdefault("SmbTrees", [])
            if ev.path and ev.path not in trees and len(trees) < MAX_TREES_NAMED:
                trees.append(ev.path)
        elif isinstance(ev, SmbEncrypted):
            ctx.set_field("SmbEncrypted", True)
        elif isinstance(ev, SmbFileSummary):
            self.transfer(ev)

    def transfer(self, ev: SmbFileSummary) -> None:
        if is_pipe(ev):
            if ev.name:
                pipes = self.ctx.fields.setdefault("SmbPipes", [])
                if ev.name not in pipes and len(pipes) < MAX_PIPES_NAMED:
                    pipes.append(ev.name)
            return
        if ev.is_dir:
            return
        flow = self.ctx.flow
        if not (ev.bytes_read or ev.bytes_written):
            if ev.opened and ev.name:  # opened, neither read nor written: a file event, not a transfer
                self.ctx.file_event(
                    {
                        "Timestamp": iso_us(ev.ts),
                        "Protocol": "smb",
                        "Uid": flow.uid,
                        "ClientIP": flow.orig_h,
                        "ServerIP": flow.resp_h,
                        "ServerPort": flow.resp_p,
                        "User": ev.user or self.ctx.user,
                        "Action": "open",
                        "Filename": ev.name,
                        "FilenameTruncated": ev.truncated,
                        "Share": ev.tree,
                        "Disposition": ev.disposition,
                        "Access": list(ev.access),
                        "Closed": ev.closed,
                    }
                )
            return
        for direction, nbytes, claimed in (
            ("download", ev.bytes_read, ev.claimed_read),
            ("upload", ev.bytes_written, ev.claimed_written),
        ):
            if not nbytes:
                continue
            # never more than the connection carried that way, over all its files
            if direction == "upload":
                nbytes = min(nbytes, flow.o.bytes - self.uploaded)
                self.uploaded += nbytes
            else:
                nbytes = min(nbytes, flow.r.bytes - self.downloaded)
                self.downloaded += nbytes
            rec: dict[str, Any] = {
                "Timestamp": iso_us(ev.ts),
                "Protocol": "smb",
                "Uid": flow.uid,
                "ControlUid": flow.uid,
                "ClientIP": flow.orig_h,
                "ServerIP": flow.resp_h,
                "ServerPort": flow.resp_p,
                "User": ev.user or self.ctx.user,
                "Command": "READ" if direction == "download" else "WRITE",
                "Filename": ev.name,
                "FilenameTruncated": ev.truncated,
                "Share": ev.tree,
                "Direction": direction,
                "Bytes": nbytes,
                "Complete": ev.closed and not ev.error and claimed <= nbytes,
            }
            if claimed > nbytes:
                rec["ClaimedBytes"] = claimed
            self.ctx.transfer(rec)


class SmbPlugin(Plugin):
    name = "smb"
    tcp_ports = {445: "smb", 139: "smb"}

    def attach(self, ctx: FlowContext, app: str, midstream: bool) -> Session | None:
        return SmbSession(ctx, SmbAnalyzer(ctx.conn(), midstream=midstream))
