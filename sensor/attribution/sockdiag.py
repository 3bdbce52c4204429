"""A pure-stdlib NETLINK_SOCK_DIAG client: one socket by exact 5-tuple.

    sd = SockDiag()
    hit = sd.lookup(PROTO_TCP, "10.0.0.5", 40312, "203.0.113.7", 21)
    if hit: hit.inode, hit.uid, hit.state

Sees the network namespace it was created in (``netns=`` for another).
Nothing raises: a failed or unanswered query returns ``None`` and is counted
in ``stats``. Not thread-safe. The kernel behaviour it relies on (TCP
listener fallback, UDP wildcard sockets, v4-mapped): docs/endpoint.md.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "SockDiag",
    "SockInfo",
    "SockDiagStats",
    "PROTO_TCP",
    "PROTO_UDP",
    "TCP_STATES",
    "NETLINK_SOCK_DIAG",
    "SOCK_DIAG_BY_FAMILY",
    "pack_request",
    "parse_messages",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11
ALL_STATES = 0xFFFFFFFF

PROTO_TCP = 6
PROTO_UDP = 17

# kernel TCP states (include/net/tcp_states.h); UDP sockets report 7 (CLOSE,
# unconnected) or 1 (ESTABLISHED, connected)
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
STATE_TIME_WAIT = 6
STATE_LISTEN = 10

# struct nlmsghdr: len, type, flags, seq, pid
_NLMSGHDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2 head: family, protocol, ext, pad, states
_REQ_HEAD = struct.Struct("=BBBxI")
# struct inet_diag_sockid: sport, dport (big endian), src[16], dst[16], if, cookie[2]
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# struct inet_diag_msg head: family, state, timer, retrans
_MSG_HEAD = struct.Struct("=BBBB")
# after the sockid: expires, rqueue, wqueue, uid, inode
_MSG_TAIL = struct.Struct("=IIIII")
_MSG_LEN = _MSG_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size + _MSG_TAIL.size  # 72
_REQ_LEN = _REQ_HEAD.size + _SOCKID.size + _SOCKID_TAIL.size  # 56

# how long one query may wait for the kernel's answer (it normally takes µs)
RECV_TIMEOUT_S = 0.05
# receive buffer for a dump answer (a filtered UDP dump is small)
RECV_BUFSIZE = 65536
# at most this many answer datagrams are read for one dump
MAX_DUMP_READS = 64


class SockInfo(NamedTuple):
    """One socket as the kernel reports it."""

    inode: int  # 0 when no process holds it (TIME-WAIT, orphaned)
    uid: int  # the uid that created the socket
    state: int  # TCP_STATES key (UDP: 7 unconnected, 1 connected)
    family: int = socket.AF_INET
    local: tuple[str, int] = ("", 0)
    remote: tuple[str, int] = ("", 0)

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, str(self.state))


@dataclass
class SockDiagStats:
    queries: int = 0  # netlink requests sent
    hits: int = 0  # lookup() calls that found a socket
    misses: int = 0  # lookup() calls that found none
    fallback_hits: int = 0  # of the hits: found by the UDP local-port fallback
    errors: int = 0  # kernel errors other than "no such socket", timeouts, bad answers
    invalid: int = 0  # lookups refused before asking (bad address, port, mixed families)
    errnos: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("queries", "hits", "misses", "fallback_hits", "errors", "invalid")}
        d["errnos"] = {_errno.errorcode.get(k, str(k)): v for k, v in self.errnos.items()}
        return d


def _addr(family: int, ip: str) -> bytes:
    """16 bytes as inet_diag_sockid holds them (IPv4 in the first 4)."""
    if family == socket.AF_INET:
        return socket.inet_pton(socket.AF_INET, ip) + b"\0" * 12
    return socket.inet_pton(socket.AF_INET6, ip)


def _family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _v4(ip: str) -> str:
    """'::ffff:10.0.0.1' -> '10.0.0.1' (a v4-mapped address is IPv4 on the wire)."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def pack_request(
    seq: int,
    family: int,
    proto: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    dump: bool = False,
    states: int = ALL_STATES,
    bytecode: bytes = b"",
) -> bytes:
    """One SOCK_DIAG_BY_FAMILY request (nlmsghdr + inet_diag_req_v2 [+ bytecode attribute]).

    ``src``/``sport`` are the socket's local side, ``dst``/``dport`` its remote
    side, the way the kernel reports them."""
    body = (
        _REQ_HEAD.pack(family, proto, 0, states)
        + _SOCKID.pack(sport, dport, _addr(family, src), _addr(family, dst))
        + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    if bytecode:
        # struct nlattr {u16 len; u16 type}, padded to 4
        body += struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body


def local_port_bytecode(port: int) -> bytes:
    """inet_diag bytecode 'local port == port' (INET_DIAG_BC_S_EQ).

    An op is {u8 code; u8 yes; u16 no}: jump ``yes`` bytes when it holds,
    ``no`` otherwise; the program accepts when it ends exactly at its end, so
    ``no`` = length + 4 rejects.  S_EQ takes its port in the next op's ``no``."""
    return struct.pack("=BBH", INET_DIAG_BC_S_EQ, 8, 12) + struct.pack("=BBH", 0, 0, port)


def _ntop(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return _v4(socket.inet_ntop(socket.AF_INET6, raw))


def parse_messages(buf: bytes, seq: int) -> tuple[list[SockInfo], int | None, bool]:
    """Parse netlink answer datagrams: (sockets, errno or None, done).

    Messages of another sequence number (late answers to an earlier query
    that timed out) are skipped.  ``errno`` is the positive error of an
    NLMSG_ERROR message (0 = ack)."""
    out: list[SockInfo] = []
    err: int | None = None
    done = False
    off = 0
    n = len(buf)
    while off + _NLMSGHDR.size <= n:
        mlen, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if mlen < _NLMSGHDR.size or off + mlen > n:
            err = err or _errno.EBADMSG
            done = True
            break
        body = off + _NLMSGHDR.size
        if mseq == seq:
            if mtype == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", buf, body)
                err = -code
                done = True
            elif mtype == NLMSG_DONE:
                done = True
            elif mtype == SOCK_DIAG_BY_FAMILY and mlen - _NLMSGHDR.size >= _MSG_LEN:
                fam, state, _timer, _retrans = _MSG_HEAD.unpack_from(buf, body)
                sport, dport, src, dst = _SOCKID.unpack_from(buf, body + 4)
                _expires, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(buf, body + 4 + _SOCKID.size + _SOCKID_TAIL.size)
                out.append(SockInfo(inode, uid, state, fam, (_ntop(fam, src), sport), (_ntop(fam, dst), dport)))
        off += (mlen + 3) & ~3
    return out, err, done


class _Libc:
    """setns(2) through ctypes (os.setns needs Python 3.12)."""

    _fn = None

    @classmethod
    def setns(cls, fd: int, nstype: int = 0x40000000) -> None:  # CLONE_NEWNET
        if cls._fn is None:
            libc = ctypes.CDLL(None, use_errno=True)
            cls._fn = libc.setns
        if cls._fn(fd, nstype) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))


def _open_netlink() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    s.bind((0, 0))
    s.settimeout(RECV_TIMEOUT_S)
    return s


class SockDiag:
    """Exact socket lookups over one NETLINK_SOCK_DIAG socket.

    ``netns``: path of a network namespace file to query instead of the
    current one (see the module docstring).  Opening the netlink socket
    happens lazily, and again after an error closed it; if it cannot be
    opened, lookups return None and count an error.
    """

    def __init__(self, netns: str | None = None, udp_fallback: bool = True) -> None:
        self.netns = netns
        self.udp_fallback = udp_fallback
        self.stats = SockDiagStats()
        self._sock: socket.socket | None = None
        self._seq = int(time.monotonic_ns() & 0x7FFFFFFF)

    # -- lifecycle ---------------------------------------------------------
    def _open(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        try:
            if self.netns is None:
                self._sock = _open_netlink()
            else:
                self._sock = self._open_in_netns(self.netns)
        except OSError as e:
            self._error(e.errno or _errno.EIO)
            return None
        return self._sock

    @staticmethod
    def _open_in_netns(path: str) -> socket.socket:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            there = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _Libc.setns(there)
                try:
                    return _open_netlink()
                finally:
                    _Libc.setns(here)
            finally:
                os.close(there)
        finally:
            os.close(here)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, code: int) -> None:
        self.stats.errors += 1
        self.stats.errnos[code] = self.stats.errnos.get(code, 0) + 1

    # -- queries -----------------------------------------------------------
    def _query(
        self, req_args: tuple[int, int, str, int, str, int], dump: bool, bytecode: bytes = b""
    ) -> list[SockInfo] | None:
        """Send one request; the sockets answered, [] for "none", None on error."""
        seq = (self._seq + 1) & 0x7FFFFFFF
        req = pack_request(seq, *req_args, dump=dump, bytecode=bytecode)  # bad input raises here
        s = self._open()
        if s is None:
            return None
        self._seq = seq
        self.stats.queries += 1
        try:
            s.send(req)
            found: list[SockInfo] = []
            for _ in range(MAX_DUMP_READS):
                buf = s.recv(RECV_BUFSIZE)
                socks, err, done = parse_messages(buf, seq)
                found.extend(socks)
                if err:
                    if err == _errno.ENOENT:
                        return []
                    self._error(err)
                    return None
                if not dump and found:
                    return found
                if done:
                    return found
            self._error(_errno.EOVERFLOW)
        except TimeoutError:
            self._error(_errno.ETIMEDOUT)
        except OSError as e:
            self._error(e.errno or _errno.EIO)
        # an unfinished exchange leaves answers in the socket: start afresh
        self.close()
        return None

    def lookup(self, proto: int, local_ip: str, local_port: int, remote_ip: str, remote_port: int) -> SockInfo | None:
        """The socket with exactly this local and remote address, or None.

        TCP may answer a listening socket on the local side (state LISTEN) and
        a TIME-WAIT socket (inode 0).  UDP falls back to the local port (see
        the module docstring)."""
        try:
            hit = self._lookup(proto, _v4(local_ip), local_port, _v4(remote_ip), remote_port)
        except (ValueError, OSError, struct.error):  # bad address text, port out of range
            self.stats.invalid += 1
            hit = None
        if hit is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return hit

    def _lookup(self, proto: int, lip: str, lport: int, rip: str, rport: int) -> SockInfo | None:
        fam = _family_of(lip)
        if _family_of(rip) != fam:
            raise ValueError("mixed address families")
        if proto == PROTO_UDP:
            # __udp4_lib_lookup(saddr, sport, daddr, dport) is given the
            # request's src as the *packet source*: for UDP the sockid's
            # "src" is the remote side ("swapped for historical reasons",
            # net/ipv4/udp_diag.c)
            res = self._query((fam, proto, rip, rport, lip, lport), dump=False)
        else:
            res = self._query((fam, proto, lip, lport, rip, rport), dump=False)
        if res:
            return res[0]
        if proto == PROTO_UDP and self.udp_fallback and res is not None:
            hit = self.by_local_port(proto, lip, lport, rip, rport)
            if hit is not None:
                self.stats.fallback_hits += 1
            return hit
        return None

    def by_local_port(
        self, proto: int, local_ip: str, local_port: int, remote_ip: str = "", remote_port: int = 0
    ) -> SockInfo | None:
        """The best socket on ``local_port`` (kernel-filtered dump): exact
        remote first, then a wildcard remote (unconnected); exact local
        address first, then the wildcard address."""
        fam = _family_of(local_ip)
        cands: list[SockInfo] = []
        # an IPv4 flow can belong to a dual-stack IPv6 socket too
        for f in (fam,) if fam == socket.AF_INET6 else (fam, socket.AF_INET6):
            wild = "0.0.0.0" if f == socket.AF_INET else "::"
            res = self._query((f, proto, wild, 0, wild, 0), dump=True, bytecode=local_port_bytecode(local_port))
            if res:
                cands.extend(r for r in res if r.local[1] == local_port)
        best: SockInfo | None = None
        best_score = -1
        for c in cands:
            lip, (rip, rport) = c.local[0], c.remote
            if lip == local_ip:
                ls = 2
            elif lip in ("0.0.0.0", "::"):
                ls = 1
            else:
                continue
            if (rip, rport) == (remote_ip, remote_port):
                rs = 2
            elif rport == 0 and rip in ("0.0.0.0", "::"):
                rs = 1
            else:
                continue
            score = rs * 3 + ls
            if score > best_score:
                best, best_score = c, score
        return best
