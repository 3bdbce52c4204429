"""tshark's independent application-layer view of a capture (via pyshark).

Where ``tests/lab/oracle.py`` gives tshark's view of the TCP/UDP
conversations, this module gives what tshark's application dissectors say
about the same capture: FTP commands, replies, users and data channels
(``ftp`` / ``ftp-data``), TFTP requests, options and data blocks (``tftp``),
SMB2 negotiate, session setup (NTLMSSP), tree connects, creates, reads and
writes (``nbss`` / ``smb2``), and TLS ClientHello SNI.  It knows nothing
about the sensor.

Each view is one pyshark pass with ``use_json=True``, a display filter that
keeps only the frames needed and ``-J`` limiting the JSON to the protocols
read (an SMB2 READ response otherwise drags its whole payload through the
JSON parser).  Field values are read from pyshark's JSON layer dicts with a
recursive lookup, because tshark nests most fields under text nodes ("SMB2
Header", "Read Response (0x08)", "USER anonymous\\r\\n", ...).

Counting rules, stated once:

* FTP data bytes: per data conversation and direction, the union of the
  payload ranges in relative sequence space (``tcp.seq`` .. ``tcp.seq +
  tcp.len``) of EVERY payload frame of the conversation: retransmissions
  count once, SYN/FIN never.  (A conversation is a data conversation when
  tshark labels any of its frames ``ftp-data``; it does not label them all --
  on ftp_lossy it leaves retransmitted and out-of-order segments as plain
  TCP, and summing only ``ftp-data`` frames gives 341,840 of 524,288 bytes.)
* FTP replies are paired with commands first-in first-out; a multi-line
  reply (``NNN-`` ... ``NNN ``) is one reply; 1xx replies are preliminary
  and do not end a command.  After a 234 reply to AUTH the control channel
  is TLS: nothing later on that conversation is read as FTP (tshark 4.0
  turns ``AUTH TLS`` into TLS but dissects the TLS records after ``AUTH SSL``
  as garbage FTP lines).
* The data command of a data conversation is derived, not taken from
  ``ftp-data.command``, which is unreliable in two ways on these captures:
  tshark names the command LAST SENT on the control connection when the
  data channel was set up (for curl, which connects right after the 229/227
  reply and before sending TYPE, that is ``TYPE I``), and tshark 4.0 sets up
  no data channel for EPRT at all (the port-20 conversation is dissected as
  ftp-data by port only: no setup method, no command).  Derived here from
  the announcements tshark parsed: the data conversation's client endpoint
  equals a PORT (``ftp.active.cip``/``ftp.active.port``) or EPRT
  (``ftp.eprt.ip``/``ftp.eprt.port``) argument, or its server endpoint is
  the control server at a 227 (``ftp.passive.port``) or 229
  (``ftp.epsv.port``) reply's port; the latest such announcement before the
  data conversation's first payload wins, and the command is the first
  RETR/STOR/STOU/APPE/LIST/NLST/MLSD sent on that control connection after
  the announcement.  tshark's own ``ftp-data.*`` values are kept beside it.
* TFTP bytes: ``data.len`` of DATA packets, each block number
  (``tftp.block.full``) once; packets are tied to their request by
  ``tftp.request_frame``.
* SMB2 bytes: READ responses (final, STATUS_SUCCESS) ``smb2.olb.length``
  (the read data blob) tied to their request's FileId by MessageId; WRITE
  requests ``smb2.write_length`` whose response succeeded.  FileId -> name
  from the CREATE request/response pair (by MessageId).  TCP reassembly of
  out-of-order segments is switched on (``tcp.reassemble_out_of_order``):
  without it tshark 4.0 does not dissect the 512 KiB READ response of the
  lossy capture at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyshark

from .tools import union_length

__all__ = [
    "FtpCommand",
    "FtpControl",
    "FtpDataConv",
    "FtpView",
    "ftp_view",
    "TftpTransfer",
    "tftp_view",
    "SmbFile",
    "SmbSession",
    "smb_view",
    "client_hellos",
    "SMB2_DIALECTS",
    "DATA_COMMANDS",
]

DATA_COMMANDS = {
    "RETR": "download",
    "STOR": "upload",
    "STOU": "upload",
    "APPE": "upload",
    "LIST": "listing",
    "NLST": "listing",
    "MLSD": "listing",
}

# tshark shows the dialect as its wire value; the names are MS-SMB2's
SMB2_DIALECTS = {
    "0x0202": "SMB 2.0.2",
    "0x0210": "SMB 2.1",
    "0x0300": "SMB 3.0",
    "0x0302": "SMB 3.0.2",
    "0x0311": "SMB 3.1.1",
    "0x02ff": "SMB 2.???",
}

PREFS = {
    "tcp.relative_sequence_numbers": "TRUE",
    "tcp.analyze_sequence_numbers": "TRUE",
    "tcp.reassemble_out_of_order": "TRUE",
    "tcp.desegment_tcp_streams": "TRUE",
}

Endpoint = tuple  # (ip, port)


# ---------------------------------------------------------------------------
# pyshark plumbing


def _packets(pcap: str | Path, display_filter: str, protocols: str, decode_as: dict | None = None) -> Iterator[Any]:
    cap = pyshark.FileCapture(
        str(pcap),
        display_filter=display_filter,
        keep_packets=False,
        use_json=True,
        custom_parameters=["-J", protocols],
        override_prefs=PREFS,
        decode_as=decode_as,
    )
    try:
        yield from cap
    finally:
        cap.close()


def _layers(pkt, name: str) -> list[dict]:
    """Every instance of layer *name* in the packet, as JSON dicts."""
    out = []
    for layer in pkt.layers:
        if layer.layer_name.lower() == name:
            out.append(layer._all_fields)
            out.extend(d._all_fields for d in layer.duplicate_layers)
    return out


def _layer_value(pkt, name: str) -> str | None:
    """tshark 4.0 puts the ftp-data.* fields beside the layers, as
    one-value pseudo-layers; pyshark keeps their value in ``.value``."""
    for layer in pkt.layers:
        if layer.layer_name.lower() == name:
            return getattr(layer, "value", None)
    return None


def _find(obj: Any, key: str, out: list | None = None, depth: int | None = None) -> list:
    """All values of *key* anywhere under *obj* (lists flattened)."""
    if out is None:
        out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                if isinstance(v, list):
                    out.extend(x for x in v if not isinstance(x, (dict, list)))
                elif not isinstance(v, dict):
                    out.append(v)
            if isinstance(v, (dict, list)) and (depth is None or depth > 0):
                _find(v, key, out, None if depth is None else depth - 1)
    elif isinstance(obj, list):
        for v in obj:
            _find(v, key, out, depth)
    return out


def _one(obj: Any, key: str, default=None):
    v = _find(obj, key)
    return v[0] if v else default


def _subtree(obj: dict, prefix: str) -> dict | None:
    for k, v in obj.items():
        if k.startswith(prefix) and isinstance(v, dict):
            return v
    return None


def _frame(pkt) -> int:
    return int(pkt.frame_info._all_fields["frame.number"])


def _ip(pkt) -> tuple[str, str]:
    ip = _layers(pkt, "ip")[0]
    return ip["ip.src"], ip["ip.dst"]


# ---------------------------------------------------------------------------
# FTP


@dataclass
class FtpCommand:
    frame: int
    command: str  # upper-cased as tshark shows it
    arg: str
    reply: int | None = None  # the final (non-1xx) reply code
    preliminary: list = field(default_factory=list)  # 1xx codes


@dataclass
class FtpControl:
    stream: int
    client: Endpoint
    server: Endpoint
    commands: list = field(default_factory=list)
    tls_upgrade: str | None = None  # "AUTH <ARG>" once answered 234
    upgrade_frame: int | None = None
    # data-channel announcements: (frame, "PORT"|"EPRT"|"PASV"|"EPSV", (ip, port))
    announcements: list = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        return [c.arg for c in self.commands if c.command == "USER"]

    def data_command_after(self, frame: int) -> FtpCommand | None:
        for c in self.commands:
            if c.frame > frame and c.command in DATA_COMMANDS:
                return c
        return None


@dataclass
class FtpDataConv:
    stream: int
    a: Endpoint  # first payload packet's source
    b: Endpoint
    first_frame: int
    setup_frame: int  # tshark's ftp-data.setup-frame
    setup_method: str  # tshark's ftp-data.setup-method ("" when none)
    tshark_command: str  # tshark's ftp-data.command ("" when none)
    cwd: str = ""
    announcement: tuple | None = None  # the (frame, kind, endpoint) it was derived from
    segments: dict = field(default_factory=dict)  # src endpoint -> [(start, end)]
    control: FtpControl | None = None
    command: FtpCommand | None = None  # derived (see module docstring)

    def bytes_from(self, ip: str) -> int:
        return sum(union_length(segs) for src, segs in self.segments.items() if src[0] == ip)


@dataclass
class FtpView:
    controls: dict = field(default_factory=dict)  # tcp.stream -> FtpControl
    data: list = field(default_factory=list)  # FtpDataConv, in order of first payload


def _lines(ftp: dict) -> Iterator[tuple[str, dict]]:
    """The command / reply lines of one ftp layer, in order (a line repeated
    in one frame is a list under one key)."""
    for line, body in ftp.items():
        for b in body if isinstance(body, list) else (body,):
            if isinstance(b, dict):
                yield line, b


_REPLY_LINE = re.compile(r"^(\d{3})([ -]|$)")


def ftp_view(pcap: str | Path) -> FtpView:
    view = FtpView()
    pending: dict[int, list[FtpCommand]] = {}
    multi: dict[int, str | None] = {}
    data: dict[int, FtpDataConv] = {}
    # every TCP payload frame off the control ports (see the module docstring)
    segments: dict[int, dict] = {}
    firsts: dict[int, tuple] = {}
    flt = "ftp || ftp-data || (tcp.len > 0 && !(tcp.port in {21, 990}))"
    for pkt in _packets(pcap, flt, "frame ip tcp ftp ftp-data"):
        tcp = _layers(pkt, "tcp")[0]
        stream = int(tcp["tcp.stream"])
        src_ip, dst_ip = _ip(pkt)
        src, dst = (src_ip, int(tcp["tcp.srcport"])), (dst_ip, int(tcp["tcp.dstport"]))
        num = _frame(pkt)
        if not _layers(pkt, "ftp"):
            seq, length = int(tcp["tcp.seq"]), int(tcp["tcp.len"])
            if length:
                segments.setdefault(stream, {}).setdefault(src, []).append((seq, seq + length))
                firsts.setdefault(stream, (num, src, dst))
            if _layers(pkt, "ftp-data") and stream not in data:
                first = firsts[stream]
                data[stream] = FtpDataConv(
                    stream,
                    first[1],
                    first[2],
                    first[0],
                    setup_frame=int(_layer_value(pkt, "ftp-data.setup-frame") or 0),
                    setup_method=_layer_value(pkt, "ftp-data.setup-method") or "",
                    tshark_command=_layer_value(pkt, "ftp-data.command") or "",
                    cwd=_layer_value(pkt, "ftp-data.current-working-directory") or "",
                )
            continue
        for ftp in _layers(pkt, "ftp"):
            is_request = ftp.get("ftp.request") == "1"
            ctl = view.controls.get(stream)
            if ctl is None:
                client, server = (src, dst) if is_request else (dst, src)
                ctl = view.controls[stream] = FtpControl(stream, client, server)
            if ctl.tls_upgrade is not None:
                continue  # TLS from here on; tshark may still show garbage lines
            for line, body in _lines(ftp):
                if is_request:
                    cmd = body.get("ftp.request.command")
                    if cmd is None:
                        continue
                    c = FtpCommand(num, cmd.upper(), body.get("ftp.request.arg", ""))
                    ctl.commands.append(c)
                    pending.setdefault(stream, []).append(c)
                    if "ftp.active.port" in body:
                        ctl.announcements.append(
                            (num, "PORT", (body.get("ftp.active.cip"), int(body["ftp.active.port"])))
                        )
                    elif "ftp.eprt.port" in body:
                        ctl.announcements.append((num, "EPRT", (body.get("ftp.eprt.ip"), int(body["ftp.eprt.port"]))))
                    continue
                if "ftp.passive.port" in body:
                    ctl.announcements.append((num, "PASV", (ctl.server[0], int(body["ftp.passive.port"]))))
                elif "ftp.epsv.port" in body:
                    ctl.announcements.append((num, "EPSV", (ctl.server[0], int(body["ftp.epsv.port"]))))
                text = line.replace("\\r\\n", "")
                m = _REPLY_LINE.match(text)
                open_code = multi.get(stream)
                if open_code is not None:
                    if m and m.group(1) == open_code and m.group(2) != "-":
                        multi[stream] = None
                        _ftp_reply(ctl, pending.get(stream, []), int(open_code), num)
                    continue
                if not m:
                    continue
                if m.group(2) == "-":
                    multi[stream] = m.group(1)
                    continue
                _ftp_reply(ctl, pending.get(stream, []), int(m.group(1)), num)
    for d in sorted(data.values(), key=lambda d: d.first_frame):
        d.segments = segments.get(d.stream, {})
        best = None
        for ctl in view.controls.values():
            for ann in ctl.announcements:
                frame, kind, ep = ann
                if frame < d.first_frame and ep in (d.a, d.b) and (best is None or frame > best[1][0]):
                    best = (ctl, ann)
        if best is not None:
            d.control, d.announcement = best
            d.command = d.control.data_command_after(d.announcement[0])
        view.data.append(d)
    return view


def _ftp_reply(ctl: FtpControl, pending: list, code: int, frame: int) -> None:
    if not pending:
        return  # the greeting, or a reply to nothing
    if code < 200:
        pending[0].preliminary.append(code)
        return
    c = pending.pop(0)
    c.reply = code
    if code == 234 and c.command == "AUTH":
        ctl.tls_upgrade = f"AUTH {c.arg.upper()}"
        ctl.upgrade_frame = frame


# ---------------------------------------------------------------------------
# TLS


def client_hellos(pcap: str | Path, tls_ports: Iterable[int] = (21,)) -> dict:
    """{(client endpoint, server endpoint): set of SNI names (empty set: a
    ClientHello without SNI)} for every ClientHello in the capture.  The
    control ports in *tls_ports* are decoded as TLS throughout, so explicit
    FTPS after ``AUTH SSL`` (which tshark 4.0 does not follow) is seen."""
    decode = {f"tcp.port=={p}": "tls" for p in tls_ports}
    out: dict = {}
    for pkt in _packets(pcap, "tls.handshake.type == 1", "frame ip tcp tls", decode_as=decode):
        tcp = _layers(pkt, "tcp")[0]
        src_ip, dst_ip = _ip(pkt)
        key = ((src_ip, int(tcp["tcp.srcport"])), (dst_ip, int(tcp["tcp.dstport"])))
        names = out.setdefault(key, set())
        for tls in _layers(pkt, "tls"):
            names.update(_find(tls, "tls.handshake.extensions_server_name"))
    return out


# ---------------------------------------------------------------------------
# TFTP


@dataclass
class TftpTransfer:
    request_frame: int
    op: str  # "read" | "write"
    filename: str
    mode: str
    options: dict  # the request's options, as sent
    client: Endpoint
    server: Endpoint  # the request's destination (port 69)
    oack: dict | None = None
    transfer_from: Endpoint | None = None  # the server's new port
    blocks: dict = field(default_factory=dict)  # full block number -> data length
    data_packets: int = 0
    error: tuple | None = None
    payload: dict = field(default_factory=dict)  # transfer endpoint -> UDP payload bytes sent

    @property
    def bytes(self) -> int:
        return sum(self.blocks.values())

    @property
    def direction(self) -> str:
        return "download" if self.op == "read" else "upload"


def tftp_view(pcap: str | Path) -> list[TftpTransfer]:
    reqs: dict[int, TftpTransfer] = {}
    for pkt in _packets(pcap, "tftp", "frame ip udp tftp data"):
        udp = _layers(pkt, "udp")[0]
        src_ip, dst_ip = _ip(pkt)
        src, dst = (src_ip, int(udp["udp.srcport"])), (dst_ip, int(udp["udp.dstport"]))
        t = _layers(pkt, "tftp")[0]
        op = int(t["tftp.opcode"])
        options = dict(zip(_find(t, "tftp.option.name"), _find(t, "tftp.option.value")))
        if op in (1, 2):
            num = _frame(pkt)
            name = t.get("tftp.source_file") if op == 1 else t.get("tftp.destination_file")
            reqs[num] = TftpTransfer(
                num, "read" if op == 1 else "write", name or "", t.get("tftp.type", ""), options, src, dst
            )
            continue
        rf = t.get("tftp.request_frame")
        if rf is None or int(rf) not in reqs:
            continue
        tr = reqs[int(rf)]
        payload = int(udp["udp.length"]) - 8
        tr.payload[src] = tr.payload.get(src, 0) + payload
        if src[0] == tr.server[0] and tr.transfer_from is None:
            tr.transfer_from = src
        if op == 6:
            tr.oack = options
        elif op == 3:
            tr.data_packets += 1
            block = int(t.get("tftp.block.full", t.get("tftp.block")))
            n = sum(int(x) for d in _layers(pkt, "data") for x in _find(d, "data.len"))
            tr.blocks.setdefault(block, n)
        elif op == 5:
            tr.error = (int(t.get("tftp.error.code", -1)), t.get("tftp.error.message", ""))
    return sorted(reqs.values(), key=lambda r: r.request_frame)


# ---------------------------------------------------------------------------
# SMB2


@dataclass
class SmbFile:
    name: str
    tree: str
    fid: str
    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0
    writes: int = 0


@dataclass
class SmbSession:
    stream: int
    client: Endpoint
    server: Endpoint
    netbios_called: list = field(default_factory=list)
    dialects_offered: list = field(default_factory=list)
    dialect: str | None = None  # negotiate response, named
    users: list = field(default_factory=list)  # NTLMSSP AUTHENTICATE user names
    domains: list = field(default_factory=list)
    hosts: list = field(default_factory=list)
    guest: bool = False  # a session setup response flagged Guest
    trees: list = field(default_factory=list)  # tree connect requests answered STATUS_SUCCESS
    files: list = field(default_factory=list)  # SmbFile per successful create
    creates_seen: int = 0  # CREATE requests in the clear
    transform_frames: int = 0  # SMB3 transform (encrypted) messages
    clear_commands: list = field(default_factory=list)  # (cmd, response) seen in the clear


def smb_view(pcap: str | Path) -> dict[int, SmbSession]:
    sessions: dict[int, SmbSession] = {}
    reqs: dict[tuple[int, str], dict] = {}  # (stream, msg_id) -> request facts
    files: dict[tuple[int, str], SmbFile] = {}  # (stream, fid) -> file
    flt = (
        "nbss.type == 0x81 || ntlmssp.messagetype == 3 || smb2.protocol_id == 0xfd534d42"
        " || smb2.cmd in {0, 1, 3, 5, 6, 8, 9}"
    )
    for pkt in _packets(pcap, flt, "frame ip tcp nbss smb2"):
        tcp = _layers(pkt, "tcp")[0]
        stream = int(tcp["tcp.stream"])
        src_ip, dst_ip = _ip(pkt)
        src, dst = (src_ip, int(tcp["tcp.srcport"])), (dst_ip, int(tcp["tcp.dstport"]))
        s = sessions.get(stream)
        if s is None:
            client, server = (src, dst) if dst[1] in (139, 445) else (dst, src)
            s = sessions[stream] = SmbSession(stream, client, server)
        for nb in _layers(pkt, "nbss"):
            if nb.get("nbss.type") == "0x81":
                s.netbios_called.extend(_find(nb, "nbss.called_name"))
        for smb in _layers(pkt, "smb2"):
            if _subtree(smb, "SMB2 Transform Header") is not None or _one(smb, "smb2.protocol_id") == "0xfd534d42":
                s.transform_frames += 1
                continue
            hdr = _subtree(smb, "SMB2 Header")
            if hdr is None:
                continue
            cmd = int(_one(hdr, "smb2.cmd"))
            resp = _one(hdr, "smb2.flags.response") == "1"
            msg = _one(hdr, "smb2.msg_id")
            status = _one(hdr, "smb2.nt_status")
            s.clear_commands.append((cmd, resp))
            key = (stream, msg)
            if cmd == 0:
                body = _subtree(smb, "Negotiate Protocol")
                dialects = _find(body, "smb2.dialect", depth=0) if body else []
                if resp and dialects:
                    s.dialect = SMB2_DIALECTS.get(dialects[0].lower(), dialects[0])
                elif not resp:
                    s.dialects_offered = [SMB2_DIALECTS.get(d.lower(), d) for d in dialects]
            elif cmd == 1:
                if not resp:
                    s.users.extend(_find(smb, "ntlmssp.auth.username"))
                    s.domains.extend(_find(smb, "ntlmssp.auth.domain"))
                    s.hosts.extend(_find(smb, "ntlmssp.auth.hostname"))
                elif status == "0x00000000" and "1" in _find(smb, "smb2.ses_flags.guest"):
                    s.guest = True
            elif cmd == 3:
                if not resp:
                    reqs[key] = {"tree": _one(smb, "smb2.tree")}
                elif status == "0x00000000" and key in reqs:
                    t = reqs.pop(key)["tree"]
                    if t and t not in s.trees:
                        s.trees.append(t)
            elif cmd == 5:
                if not resp:
                    s.creates_seen += 1
                    reqs[key] = {"name": _one(smb, "smb2.filename", ""), "tree": _one(hdr, "smb2.tree", "")}
                elif status == "0x00000000" and key in reqs:
                    r = reqs.pop(key)
                    fid = _one(smb, "smb2.fid")
                    f = SmbFile(r["name"], r["tree"], fid)
                    files[(stream, fid)] = f
                    s.files.append(f)
            elif cmd == 8:
                if not resp:
                    reqs[key] = {"fid": _one(smb, "smb2.fid")}
                elif status == "0x00000000" and key in reqs:
                    fid = reqs.pop(key)["fid"]
                    body = _subtree(smb, "Read Response")
                    n = int(_one(body, "smb2.olb.length", "0")) if body else 0
                    f = files.get((stream, fid))
                    if f is not None:
                        f.bytes_read += n
                        f.reads += 1
                # STATUS_PENDING (0x103): an interim response, the final one follows
            elif cmd == 9:
                if not resp:
                    reqs[key] = {"fid": _one(smb, "smb2.fid"), "len": int(_one(smb, "smb2.write_length", "0"))}
                elif status == "0x00000000" and key in reqs:
                    r = reqs.pop(key)
                    f = files.get((stream, r["fid"]))
                    if f is not None:
                        f.bytes_written += r["len"]
                        f.writes += 1
    return sessions
