"""Application layer: analyzers on flows, data channels, transfers (sans-IO).

Wiring between the flow table and the analyzers:
- picks the analyzer for a new flow: an expectation it fulfils (FTP data
  channel, TFTP transfer), else the responder port (21 FTP, 990 implicit
  FTPS, 989 FTPS data, 139/445 SMB, 69 TFTP), else nothing;
- reassembles TCP per direction (``sensor.engine.reassembly``) and feeds analyzers
  in packet order, with gap signals; UDP datagrams go straight in;
- turns analyzer events into expectations, weird records, transfer records
  and fields of the connection records (AppProtocol, AppUser,
  AdditionalFields);
- links children (data channels, TFTP transfers) to their parent (the
  control session, the request): a parent's record waits until its children
  have ended, then carries their bytes (DataSentBytes/DataReceivedBytes) and,
  for TFTP, turns ConnectionSuccess when the server answered.
"""
from __future__ import annotations

from typing import Any, Callable

from sensor.analyzers.base import Analyzer, ConnInfo
from sensor.analyzers.ftp import (FtpAnalyzer, FtpDataChannel, FtpDataCommand, FtpDataResult, FtpLogin, FtpRequest,
                            FtpTlsUpgrade)
from sensor.analyzers.smb import (SmbAnalyzer, SmbEncrypted, SmbFileSummary, SmbNegotiate, SmbNetbiosSession,
                            SmbSessionSetup, SmbTreeConnect)
from sensor.analyzers.tftp import (TftpRequest, TftpRequestAnalyzer, TftpTransferAnalyzer, TftpTransferContext,
                             TftpTransferDone)
from sensor.analyzers.tls import parse_tls_client_hello_sni
from sensor.engine.decode import FIN, RST, SYN, Packet
from sensor.core.events import Event, ExpectConnection, Weird
from sensor.engine.expect import Expectations
from sensor.engine.flows import Flow, _ntop
from sensor.engine.ports import PortSet
from sensor.engine.reassembly import ReassemblyLimits, Stream
from sensor.records.mde import iso_us

# reassembly bounds per analyzer (named options)
FTP_REASSEMBLY = ReassemblyLimits(depth=16 * 1024 * 1024)
SMB_REASSEMBLY = ReassemblyLimits(depth=1 << 62)   # SMB skips file data itself; never stop
SNI_SCAN_BYTES = 16 * 1024                          # client bytes searched for a TLS ClientHello
MAX_FTP_CHANNELS = 256                              # open data commands tracked per control session
MAX_SUMMARY_FILES = 64                              # files named per flow in AdditionalFields

NONSTANDARD_FTP = object()  # admit() marker: an FTP banner on another port
PENDING = "pending"         # flow.analyzer until the flow's first payload attaches one
FTPS_DATA = object()        # admit() marker: a connection between the hosts of an FTPS session
MAX_FTPS_SESSIONS = 10_000  # FTPS host pairs followed at once

TCP_PORT_ANALYZERS = {21: "ftp", 990: "ftps", 989: "ftps-data", 20: "ftp-data", 445: "smb", 139: "smb"}
UDP_PORT_ANALYZERS = {69: "tftp"}
SERVICE_PORTS = frozenset((21, 990, 445, 139, 69))
TFTP_REQUEST_OPCODES = frozenset((b"\x00\x01", b"\x00\x02"))   # RRQ, WRQ  # sessions of their own, never a data channel


class AppState:
    """Per-flow application state (kept on ``flow.ctx``)."""

    __slots__ = ("analyzer", "streams", "parent", "children", "held", "user", "fields", "channel",
                 "ftp_channels", "sni_buf", "child_sent", "child_recv", "child_answered", "stopped",
                 "nonstandard", "files", "probe_ftp", "tftp_ctx")

    def __init__(self) -> None:
        self.analyzer: Analyzer | None = None
        self.streams: tuple[Stream, Stream] | None = None   # (orig->resp, resp->orig)
        self.parent: Flow | None = None
        self.children = 0               # live children
        self.held: dict | None = None   # this flow's record, waiting for children
        self.user = ""
        self.fields: dict[str, Any] = {}
        self.channel: FtpDataChannel | None = None
        self.ftp_channels: dict[int, dict] | None = None
        self.sni_buf: bytearray | None = None
        self.child_sent = 0             # bytes of children, from the parent's orig side
        self.child_recv = 0
        self.child_answered = False
        self.stopped = False            # parse nothing more (TLS upgrade, depth)
        self.nonstandard = False
        self.files: list[str] = []
        self.probe_ftp = False          # tracked port with no analyzer: look for an FTP banner
        self.tftp_ctx: TftpTransferContext | None = None


class AppLayer:
    def __init__(self, tracked_ports: frozenset[int], ports: PortSet,
                 emit: Callable[[str, dict], None], weird: Callable[[int, str, str, str, str], None]) -> None:
        self.tracked = tracked_ports
        self.ports = ports
        self.emit = emit            # (kind, record) for transfers
        self.weird = weird          # (ts, name, detail, uid, source)
        self.expect = Expectations(on_port=ports.ref)
        self.ftps: dict[tuple[bytes, bytes], Flow] = {}   # (client, server) -> the live FTPS control flow
        self.ftps_peak = 0
        self.stats = {"analyzed_flows": 0, "expected_flows": 0, "transfers": 0, "gaps": 0}
        # (owner flow, transfer record): writes a transfer instead of ``emit``
        # (endpoint mode: the record names the owner's process)
        self.emit_transfer: Callable[[Flow, dict], None] | None = None

    # -- admission of flows on untracked ports ------------------------------------
    def admit(self, p: Packet) -> tuple[bool, Any] | None:
        """For the first packet of a new flow: (from_orig, match) when the flow
        is an expected one (an announced data channel or TFTP transfer, a
        connection between the hosts of a live FTPS session, an FTP banner on
        an unusual port), else None."""
        proto = "tcp" if p.proto == 6 else "udp"
        src, dst = _ntop(p.src), _ntop(p.dst)
        ts = p.ts
        if p.proto == 6 and p.flags & SYN and p.flags & 0x10:   # SYN-ACK: the receiver is the originator
            order = ((dst, p.dport, src, p.sport, False),)
        elif p.proto == 6 and p.flags & SYN:
            order = ((src, p.sport, dst, p.dport, True),)
        else:
            order = ((src, p.sport, dst, p.dport, True), (dst, p.dport, src, p.sport, False))
        for oh, op, rh, rp, fwd in order:
            m = self.expect.match(proto, oh, op, rh, rp, ts)
            if m is not None:
                return fwd, m
        if p.proto == 6 and self.ftps:
            ctrl = self.ftps.get((p.src, p.dst)) or self.ftps.get((p.dst, p.src))
            if ctrl is not None and not ctrl.end_reason and p.sport not in SERVICE_PORTS \
                    and p.dport not in SERVICE_PORTS:
                # FTPS hides PORT/PASV: a new connection between the same two hosts
                # while the session lives is taken as its data channel
                fwd = not (p.flags & SYN and p.flags & 0x10)
                return fwd, (FTPS_DATA, ctrl)
        if p.proto == 6 and p.payload[:3] == b"220" and p.sport not in self.tracked \
                and FtpAnalyzer.probe_tc(p.payload):
            # a server's FTP banner on a port that is not FTP's: the sender is the responder
            return False, (NONSTANDARD_FTP, p)
        return None

    def reused(self, flow: Flow, from_orig: bool, payload: bytes) -> bool:
        """A UDP datagram starts a new connection on ``flow``'s 5-tuple: a
        TFTP client's port reused by a new request -- an RRQ/WRQ from the
        client on a request flow the server already answered (its transfer
        flow was seen), not a retransmission, which comes only while
        unanswered.  The flow table then ends the old request."""
        if not from_orig or payload[:2] not in TFTP_REQUEST_OPCODES or flow.app != "tftp":
            return False
        st: AppState = flow.ctx
        return st is not None and st.parent is None and (st.children > 0 or st.child_answered)

    # -- flows --------------------------------------------------------------------
    def flow_started(self, flow: Flow, match: Any = None) -> None:
        """A new flow. Expected flows get their state now; a flow on a
        service port only gets its name here, and its analyzer with its first
        payload (``attach``) -- so a half-open scan costs no analyzer state."""
        if match is None:
            if flow.proto == 6:
                kind = TCP_PORT_ANALYZERS.get(flow.resp_p) or ("ftp-data" if flow.orig_p == 20 else None)
            else:
                kind = UDP_PORT_ANALYZERS.get(flow.resp_p)
            flow.app = kind or ""
            if kind != "ftp-data" and (kind is not None or flow.proto == 6):
                flow.analyzer = PENDING
            return
        st = AppState()
        flow.ctx = st
        kind = None
        if match[0] is FTPS_DATA:
            ctrl = match[1]
            flow.app = "ftps-data"
            st.sni_buf = bytearray()
            if ctrl.ctx is not None and not ctrl.end_reason:
                st.parent = ctrl
                ctrl.ctx.children += 1
            self.stats["expected_flows"] += 1
            return
        if match[0] is NONSTANDARD_FTP:
            st.nonstandard = True
            self._ftp_from_banner(flow, st, match[1].seq, match[1].ack)
            self.ports.ref(flow.resp_p, +1)
            return
        exp, parent = match
        kind = exp.analyzer
        self.stats["expected_flows"] += 1
        if parent is not None and parent.ctx is not None and not parent.end_reason:
            st.parent = parent
            parent.ctx.children += 1
        elif parent is not None:
            st.fields["ParentUid"] = parent.uid
        flow.app = "ftp-data" if kind == "ftp-data" else "tftp" if kind == "tftp-transfer" else kind
        self.ports.ref(flow.orig_p, +1)
        self.ports.ref(flow.resp_p, +1)
        if kind == "ftp-data":
            st.channel = exp.context if isinstance(exp.context, FtpDataChannel) else None
            if parent is not None and parent.app == "ftps":
                flow.app = "ftps-data"
                st.sni_buf = bytearray()
        elif kind == "tftp-transfer":
            st.tftp_ctx = exp.context if isinstance(exp.context, TftpTransferContext) else None
            st.analyzer = TftpTransferAnalyzer(self._conn(flow), context=st.tftp_ctx)

    def attach(self, flow: Flow) -> AppState:
        """The first payload of a flow on a service port: build its analyzer,
        anchoring reassembly on the SYNs the flow table saw."""
        flow.analyzer = None
        st = AppState()
        flow.ctx = st
        kind = flow.app
        if not kind:
            st.probe_ftp = flow.proto == 6
            return st
        midstream = flow.proto == 6 and "S" not in flow.history and "h" not in flow.history
        if kind == "ftp":
            st.analyzer = FtpAnalyzer(self._conn(flow), midstream=midstream)
            st.streams = (Stream(FTP_REASSEMBLY), Stream(FTP_REASSEMBLY))
        elif kind == "smb":
            st.analyzer = SmbAnalyzer(self._conn(flow), midstream=midstream)
            st.streams = (Stream(SMB_REASSEMBLY), Stream(SMB_REASSEMBLY))
        elif kind == "tftp":
            st.analyzer = TftpRequestAnalyzer(self._conn(flow))
        elif kind in ("ftps", "ftps-data"):
            st.sni_buf = bytearray()
            if kind == "ftps":
                self._follow_ftps(flow)
        if st.analyzer is not None:
            self.stats["analyzed_flows"] += 1
        if st.streams is not None:
            if "S" in flow.history and flow.o.seen_seq:
                st.streams[0].start(flow.o.base)
            if "h" in flow.history and flow.r.seen_seq:
                st.streams[1].start(flow.r.base)
        return st

    def _ftp_from_banner(self, flow: Flow, st: AppState, seq: int, ack: int) -> None:
        """FTP recognised by its banner on a port that is not FTP's."""
        flow.app = "ftp"
        st.fields["NonStandardPort"] = True
        st.analyzer = FtpAnalyzer(self._conn(flow))
        st.streams = (Stream(FTP_REASSEMBLY), Stream(FTP_REASSEMBLY))
        # the banner is the server's first byte, and it acknowledges the client's next one
        st.streams[1].start(seq)
        st.streams[0].start(ack)
        self.stats["analyzed_flows"] += 1

    def _conn(self, flow: Flow) -> ConnInfo:
        return ConnInfo(flow.uid, "tcp" if flow.proto == 6 else "udp", flow.orig_h, flow.orig_p,
                        flow.resp_h, flow.resp_p)

    # -- packets --------------------------------------------------------------------
    def packet(self, flow: Flow, p: Packet) -> None:
        if flow.ctx is None:
            return
        self.segment(flow, p.src == flow.orig_b and p.sport == flow.orig_p, p.ts, p.flags, p.seq, p.ack,
                     p.plen, p.payload)

    def segment(self, flow: Flow, from_orig: bool, ts: int, flags: int, seq: int, ack: int, plen: int,
                payload: bytes) -> None:
        """``packet`` with the packet's fields as arguments (the pipeline's
        fast path has no :class:`Packet`)."""
        st: AppState = flow.ctx
        if st is None:
            return
        if st.probe_ftp and not from_orig and payload:
            st.probe_ftp = False       # the server's first data decides
            if payload[:3] == b"220" and FtpAnalyzer.probe_tc(payload):
                self._ftp_from_banner(flow, st, seq, ack)
        if st.sni_buf is not None and from_orig and payload:
            self._sni(flow, st, payload)
        a = st.analyzer
        if a is None or st.stopped:
            return
        if flow.proto != 6:
            evs = a.receive_ts(payload, ts) if from_orig else a.receive_tc(payload, ts)
            if evs:
                self._events(flow, evs)
            return
        streams = st.streams
        if streams is None:
            return
        s = streams[0] if from_orig else streams[1]
        if flags & SYN:
            s.start(seq + 1)
            return
        if not plen:
            return
        if len(payload) == plen:
            data = s.in_order(seq, payload)
            if data is not None:
                evs = a.receive_ts(data, ts) if from_orig else a.receive_tc(data, ts)
                if evs:
                    self._events(flow, evs)
                return
        chunks = s.segment(seq, payload)
        if len(payload) < plen:   # cut by the snaplen: the rest is missing
            chunks += s.skip_to(seq + plen)
        for c in chunks:
            if c.gap:
                self.stats["gaps"] += 1
                if c.gap > 0:  # content that never arrived (Zeek's g)
                    flow.add_history("G" if from_orig else "g")
                self._events(flow, a.gap(from_orig, max(c.gap, 0), ts))
            elif c.data:
                self._events(flow, a.receive_ts(c.data, ts) if from_orig else a.receive_tc(c.data, ts))
            if st.stopped:
                break

    def _sni(self, flow: Flow, st: AppState, payload: bytes) -> None:
        buf = st.sni_buf
        buf += payload[: SNI_SCAN_BYTES - len(buf)]
        sni = parse_tls_client_hello_sni(bytes(buf))
        if sni:
            st.fields["TlsSni"] = sni
            st.sni_buf = None
        elif len(buf) >= SNI_SCAN_BYTES or buf[:1] not in (b"\x16", b""):
            st.sni_buf = None

    def _follow_ftps(self, flow: Flow) -> None:
        if len(self.ftps) >= MAX_FTPS_SESSIONS:
            self.stats["ftps_sessions_not_followed"] = self.stats.get("ftps_sessions_not_followed", 0) + 1
            return
        for pair in ((flow.orig_b, flow.resp_b), (flow.resp_b, flow.orig_b)):
            self.ports.hosts.add(pair)
        self.ftps[(flow.orig_b, flow.resp_b)] = flow
        if len(self.ftps) > self.ftps_peak:
            self.ftps_peak = len(self.ftps)

    def flow_ending(self, flow: Flow) -> None:
        """Flush reassembly and analyzer state before the record is built."""
        st: AppState = flow.ctx
        if st is None:
            return
        if self.ftps.get((flow.orig_b, flow.resp_b)) is flow:
            del self.ftps[(flow.orig_b, flow.resp_b)]
            if not any(k in self.ftps for k in ((flow.orig_b, flow.resp_b), (flow.resp_b, flow.orig_b))):
                self.ports.hosts.discard((flow.orig_b, flow.resp_b))
                self.ports.hosts.discard((flow.resp_b, flow.orig_b))
        a = st.analyzer
        if a is not None and not st.stopped:
            ts = flow.last_ts
            if st.streams is not None:
                for fwd, s in ((True, st.streams[0]), (False, st.streams[1])):
                    for c in s.flush():
                        if c.gap > 0:
                            flow.add_history("G" if fwd else "g")
                        if c.gap:
                            self._events(flow, a.gap(fwd, max(c.gap, 0), ts))
                        elif c.data:
                            self._events(flow, a.receive_ts(c.data, ts) if fwd else a.receive_tc(c.data, ts))
            self._events(flow, a.close(ts))
        st.analyzer = None
        st.streams = None
        if st.ftp_channels:
            for ch in list(st.ftp_channels.values()):
                self._ftp_transfer(flow, ch, final=True)
            st.ftp_channels.clear()

    # -- events ---------------------------------------------------------------------------
    def _events(self, flow: Flow, events: list[Event]) -> None:
        st: AppState = flow.ctx
        for ev in events:
            t = type(ev)
            if t is Weird:
                self.weird(ev.ts, ev.name, ev.detail, flow.uid, ev.analyzer or flow.app)
            elif t is ExpectConnection:
                self.expect.add(ev, flow)
            elif t is FtpRequest:
                if ev.command == "USER" and ev.arg:
                    st.user = ev.arg       # the account tried, even if no login follows
            elif t is FtpLogin:
                st.user = ev.user
                st.fields["FtpLoginSuccess"] = ev.success
            elif t is FtpTlsUpgrade:
                flow.app = "ftps"
                st.fields["TlsUpgrade"] = ev.method
                st.stopped = True
                st.sni_buf = bytearray()
                self._follow_ftps(flow)
            elif t is FtpDataCommand:
                self._ftp_channel(st, ev.channel_seq, ev.seq)["command"] = ev
            elif t is FtpDataResult:
                ch = self._ftp_channel(st, ev.channel_seq, ev.seq)
                ch["result"] = ev
                self._ftp_transfer(flow, ch)
            elif t is TftpRequest:
                st.fields.update(TftpOp=ev.op, TftpFilename=ev.filename, TftpMode=ev.mode)
                if ev.options:
                    st.fields["TftpOptions"] = {k: v for k, v in ev.options}
            elif t is TftpTransferDone:
                self._tftp_transfer(flow, ev)
            elif t is SmbNetbiosSession:
                st.fields["NetbiosCalledName"] = ev.called_name
            elif t is SmbNegotiate:
                if ev.dialect:
                    st.fields["SmbDialect"] = ev.dialect
            elif t is SmbSessionSetup:
                if ev.user and not st.user:
                    st.user = ev.user
                    st.fields["SmbDomain"] = ev.domain
                    st.fields["SmbWorkstation"] = ev.workstation
                if ev.guest:
                    st.fields["SmbGuest"] = True   # the server took the session as guest
            elif t is SmbTreeConnect:
                trees = st.fields.setdefault("SmbTrees", [])
                if ev.path and ev.path not in trees and len(trees) < MAX_SUMMARY_FILES:
                    trees.append(ev.path)
            elif t is SmbEncrypted:
                st.fields["SmbEncrypted"] = True
            elif t is SmbFileSummary:
                self._smb_transfer(flow, ev)

    # -- FTP data channels ------------------------------------------------------------------
    def _ftp_channel(self, st: AppState, channel_seq: int, seq: int) -> dict:
        if st.ftp_channels is None:
            st.ftp_channels = {}
        key = channel_seq or -seq
        ch = st.ftp_channels.get(key)
        if ch is None:
            if len(st.ftp_channels) >= MAX_FTP_CHANNELS:
                st.ftp_channels.pop(next(iter(st.ftp_channels)))
            ch = st.ftp_channels[key] = {"flows": [], "open": 0, "command": None, "result": None}
        return ch

    def _ftp_transfer(self, ctrl: Flow, ch: dict, final: bool = False) -> None:
        """Emit the transfer once the command's result is known and its data
        connections have ended (or the control session ended)."""
        res = ch.get("result") or ch.get("command")
        if res is None or ch.get("emitted"):
            return
        if ch["open"] and not final:
            return
        if ch.get("result") is None and not final:
            return
        ch["emitted"] = True
        st: AppState = ctrl.ctx
        direction = res.direction
        server = ctrl.resp_h
        nbytes = 0
        uids = []
        for df in ch["flows"]:
            uids.append(df.uid)
            # file bytes travel from the server for a download, to it for an upload
            from_server = df.o if df.orig_h == server else df.r
            to_server = df.r if df.orig_h == server else df.o
            nbytes += (from_server if direction == "download" else to_server).bytes
        r = ch.get("result")
        complete = bool(r is not None and r.outcome == "complete" and uids)
        rec = {
            "Timestamp": iso_us(res.ts), "Protocol": "ftp" if ctrl.app == "ftp" else ctrl.app,
            "Uid": uids[0] if uids else "", "DataUids": uids, "ControlUid": ctrl.uid,
            "ClientIP": ctrl.orig_h, "ServerIP": ctrl.resp_h, "ServerPort": ctrl.resp_p,
            "User": st.user, "Command": res.command, "Filename": res.arg,
            "FilenameTruncated": res.arg_truncated, "Direction": "listing" if res.command in ("LIST", "NLST", "MLSD") else direction,
            "Bytes": nbytes, "Complete": complete, "Mode": res.mode,
            "ReplyCode": r.code if r is not None else 0, "Outcome": r.outcome if r is not None else "unanswered",
        }
        if r is not None and r.announced_size is not None:
            rec["AnnouncedSize"] = r.announced_size
        if not uids:
            rec["Note"] = "no data connection seen in the capture"
        self._transfer(ctrl, rec)

    # -- TFTP / SMB transfers --------------------------------------------------------------
    def _tftp_transfer(self, flow: Flow, ev: TftpTransferDone) -> None:
        st: AppState = flow.ctx
        parent = st.parent
        rec = {
            "Timestamp": iso_us(ev.ts), "Protocol": "tftp", "Uid": flow.uid,
            "ControlUid": parent.uid if parent is not None else (ev.request_uid or flow.uid),
            "ClientIP": parent.orig_h if parent is not None else flow.resp_h,
            "ServerIP": parent.resp_h if parent is not None else flow.orig_h,
            "ServerPort": parent.resp_p if parent is not None else flow.orig_p,
            "User": "", "Command": "RRQ" if ev.op == "read" else "WRQ", "Filename": ev.filename,
            "FilenameTruncated": bool(st.tftp_ctx is not None and st.tftp_ctx.filename_truncated), "Direction": ev.direction, "Bytes": ev.bytes, "Complete": ev.complete,
            "Blocks": ev.blocks, "BlockSize": ev.blksize,
        }
        if ev.error_code is not None:
            rec["ErrorCode"] = ev.error_code
            rec["ErrorMessage"] = ev.error_msg
        self._transfer(parent or flow, rec)

    def _smb_transfer(self, flow: Flow, ev: SmbFileSummary) -> None:
        if ev.is_dir or not (ev.bytes_read or ev.bytes_written):
            return
        st: AppState = flow.ctx
        for direction, nbytes in (("download", ev.bytes_read), ("upload", ev.bytes_written)):
            if not nbytes:
                continue
            rec = {
                "Timestamp": iso_us(ev.ts), "Protocol": "smb", "Uid": flow.uid, "ControlUid": flow.uid,
                "ClientIP": flow.orig_h, "ServerIP": flow.resp_h, "ServerPort": flow.resp_p,
                "User": ev.user or st.user, "Command": "READ" if direction == "download" else "WRITE",
                "Filename": ev.name, "FilenameTruncated": ev.truncated, "Share": ev.tree,
                "Direction": direction, "Bytes": nbytes, "Complete": ev.closed and not ev.error,
            }
            self._transfer(flow, rec)

    def _transfer(self, owner: Flow, rec: dict) -> None:
        self.stats["transfers"] += 1
        st: AppState = owner.ctx
        if st is not None and len(st.files) < MAX_SUMMARY_FILES:
            st.files.append(rec.get("Filename", ""))
        if self.emit_transfer is not None:
            self.emit_transfer(owner, rec)
        else:
            self.emit("transfers", rec)

    # -- children and parents ----------------------------------------------------------------
    def child_ended(self, child: Flow) -> Flow | None:
        """A child flow ended: add its bytes to its parent, release the ports.
        Returns the parent when its held record can now be emitted."""
        st: AppState = child.ctx
        if st is not None and st.nonstandard:
            self.ports.ref(child.resp_p, -1)
        if st is None or st.parent is None:
            return None
        self.ports.ref(child.orig_p, -1)
        self.ports.ref(child.resp_p, -1)
        parent = st.parent
        pst: AppState = parent.ctx
        # child bytes seen from the parent's originator (the client)
        client = parent.orig_h
        c_side, s_side = (child.o, child.r) if child.orig_h == client else (child.r, child.o)
        pst.child_sent += c_side.bytes
        pst.child_recv += s_side.bytes
        if s_side.pkts:
            pst.child_answered = True
        if child.app in ("ftp-data", "ftps-data") and st.channel is not None and pst.ftp_channels is not None:
            ch = pst.ftp_channels.get(st.channel.channel_seq)
            if ch is not None:
                ch["open"] -= 1
                self._ftp_transfer(parent, ch)
        pst.children -= 1
        if pst.children <= 0 and pst.held is not None:
            return parent
        return None

    def child_started(self, child: Flow) -> None:
        st: AppState = child.ctx
        if st is None or st.parent is None or st.channel is None:
            return
        pst: AppState = st.parent.ctx
        ch = self._ftp_channel(pst, st.channel.channel_seq, 0)
        ch["flows"].append(child)
        ch["open"] += 1

    def expire(self, now: int) -> None:
        self.expect.expire(now)


