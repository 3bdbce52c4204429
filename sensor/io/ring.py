"""The flight recorder: a bounded ring of pcapng files of the packets the
daemon tracks, each packet of an attributed connection carrying the process
in its comment.

``Recorder.wrap(handler_for)`` puts every packet the capture hands the
pipeline (so, exactly what its capture filter admits) on a bounded queue
(``sinks.AsyncSink``: count and bytes, never blocking; a full queue drops
the packet from the recording, counted) before the pipeline sees it. The
writer thread (``RingWriter``) holds each packet ``hold_seconds`` so that
the attribution of its connection, which the helper finds a few
milliseconds after the first packet, is there when it is written; then
writes it as an Enhanced Packet Block with that comment (``annotate``).
Files rotate by size and by packet time; the ring keeps at most
``max_files`` files and ``max_bytes`` in all (oldest removed first); a
write that fails (disk full) drops the packet, counted, and never leaves
half a block. SIGHUP starts a new file. Design and bounds: docs/endpoint.md,
"The flight recorder"; metrics: docs/daemon.md.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor.core.config import PcapRing
from sensor.engine.decode import ETHERTYPE_IPV4, ETHERTYPE_IPV6, locate
from sensor.io.capture import CaptureError
from sensor.io.pcapng import comment_option, interface_block, packet_block, section_header
from sensor.io.sinks import AsyncSink, write_line

log = logging.getLogger("xfer-sensor.recorder")

USERAPPL = "xfer-sensor flight recorder"  # shb_userappl: how the replay knows a recording
FILE_RE = re.compile(r"^xfer-sensor-(\d{8,18})\.pcapng$")  # 8 digits, more past 99,999,999
MATCH_US = 100_000  # an annotation belongs to packets from its first packet's time on (less this)
PER_KEY = 8  # annotations kept per 5-tuple (a reused client port)
ERROR_LOG_S = 60.0  # seconds between two logs of a failing disk
FLUSH_BYTES = 256 << 10  # blocks buffered before a write (else one write per queue batch)
SHB = section_header(USERAPPL)
SHB_BYTES = len(SHB)
IDB_BYTES = len(interface_block(1))  # every link type's: no options

Handler = Callable[[int, bytes], None]
FlowKey = tuple[int, bytes, int, bytes, int]

# link type -> (offset of the ethertype, offset of the payload); None: raw IP (version nibble)
_LINKS: dict[int, tuple[int, int] | None] = {1: (12, 14), 113: (14, 16), 276: (0, 20), 101: None, 12: None, 14: None}


def flow_of(linktype: int, data: bytes) -> FlowKey | None:
    """``(proto, src, sport, dst, dport)`` (packed addresses) of a TCP or UDP
    packet, through the decoder's own header walk; None for anything else."""
    got = _walk(linktype, data)
    return got[0] if got is not None else None


def _walk(linktype: int, data: bytes) -> tuple[FlowKey, bool] | None:
    """``flow_of``'s key and whether the packet opens a TCP connection (SYN without ACK)."""
    try:
        if linktype in _LINKS:
            link = _LINKS[linktype]
            if link is None:
                v = data[0] >> 4
                where = locate(data, 0, ETHERTYPE_IPV4 if v == 4 else ETHERTYPE_IPV6 if v == 6 else 0)
            else:
                where = locate(data, link[1], (data[link[0]] << 8) | data[link[0] + 1])
        elif linktype in (228, 229):
            where = locate(data, 0, ETHERTYPE_IPV4 if linktype == 228 else ETHERTYPE_IPV6)
        elif linktype in (0, 108):  # BSD loopback: the family in host or network order
            fam = data[0] | data[1] << 8 if linktype == 0 and (data[0] or data[1]) else data[2] << 8 | data[3]
            where = locate(data, 4, ETHERTYPE_IPV4 if fam == 2 else ETHERTYPE_IPV6 if fam in (10, 24, 28, 30) else 0)
        else:
            return None
    except IndexError:
        return None
    why, _t, _v, _ver, proto, l4, _e, src, dst, _f = where
    if why or l4 + 4 > len(data):
        return None
    syn = proto == 6 and l4 + 13 < len(data) and data[l4 + 13] & 0x12 == 0x02
    return (proto, src, (data[l4] << 8) | data[l4 + 1], dst, (data[l4 + 2] << 8) | data[l4 + 3]), syn


def packed_key(key: tuple) -> FlowKey | None:
    """A record's ``(proto, ip, port, ip, port)`` with packed addresses; None if it is not one."""
    try:
        proto, a, pa, b, pb = key
        fa = socket.AF_INET6 if ":" in a else socket.AF_INET
        fb = socket.AF_INET6 if ":" in b else socket.AF_INET
        return (int(proto), socket.inet_pton(fa, a), int(pa), socket.inet_pton(fb, b), int(pb))
    except (ValueError, TypeError, OSError):
        return None


class RecorderError(CaptureError):
    """The ring's folder cannot be used (exit 2 before capturing)."""


class RingWriter:
    """The writer thread's side: holding, comments, files. Never raises from
    ``write``/``tick``: a failed write is counted (``dropped_error``)."""

    def __init__(self, directory: str | Path, opts: PcapRing, clock: Callable[[], float] = time.monotonic) -> None:
        self.dir = Path(directory)
        self.opts = opts
        self.name = f"pcap-ring:{self.dir}"
        self.clock = clock
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.files: deque[tuple[int, Path, int]] = deque()  # closed ring files: (seq, path, size), oldest first
        self.total = 0  # bytes of every ring file, the open one included
        self.seq = 0
        self.fd: int | None = None
        self.cur: tuple[int, Path] | None = None
        self.cur_size = 0
        self.cur_first_ts: int | None = None
        self.ifaces: dict[int, int] = {}  # link type -> interface id in the open file
        self.held: deque[tuple[float, int, int, bytes]] = deque()  # (arrived, ts, linktype, frame)
        self.held_bytes = 0
        self.buf = bytearray()  # blocks not written yet (one write per batch)
        self.buf_pkts = self.buf_comments = 0
        self.lock = threading.Lock()
        # 5-tuple (both orientations) -> [(first packet µs, named a process, local end, higher local port, options)]
        self.notes: OrderedDict[FlowKey, list[tuple[int, bool, tuple[bytes, int], bool, bytes]]] = OrderedDict()
        # a TCP connection's originator (address, port), from its SYN, by the 5-tuple of the SYN's
        # direction and the reverse (the writer thread's alone; bounded like the notes)
        self.origins: OrderedDict[FlowKey, tuple[bytes, int]] = OrderedDict()
        self.stats = {
            "packets_written": 0,
            "comments_written": 0,
            "bytes_written": 0,
            "dropped_error": 0,
            "dropped_too_big": 0,
            "files_opened": 0,
            "files_removed": 0,
            "annotations": 0,
            "annotations_evicted": 0,
        }
        self.failing = False
        self.last_error = ""
        self._last_log = -1e18
        self._scan()

    # -- annotations (the daemon thread) ------------------------------------------------
    def annotate(self, key: tuple, first_us: int | None, comment: bytes, process: bool = True) -> None:
        """The connection ``key`` (a record's 5-tuple, the local end first)
        whose first packet was at ``first_us`` is attributed: its packets from
        then on carry ``comment``. ``process``: the lookup named the process
        (not only the account). On loopback both ends are the host's and both
        may be looked up: a packet carries the lookup that named a process,
        of those the originator's (the end that sent the SYN; without a SYN
        seen, the higher port's) -- the one the record takes."""
        k = packed_key(key)
        if k is None or not comment:
            return
        rev = (k[0], k[3], k[4], k[1], k[2])
        entry = (first_us or 0, process, (k[1], k[2]), k[2] > k[4], comment_option(comment))
        with self.lock:
            self.stats["annotations"] += 1
            for kk in (k, rev):
                lst = self.notes.get(kk)
                if lst is None:
                    lst = self.notes[kk] = []
                self.notes.move_to_end(kk)
                lst.append(entry)
                if len(lst) > PER_KEY:
                    del lst[0]
            while len(self.notes) > 2 * self.opts.max_annotations:
                self.notes.popitem(last=False)
                self.stats["annotations_evicted"] += 1

    def comment_for(self, linktype: int, ts: int, data: bytes) -> bytes:
        """The options block (a comment) of this packet: its connection's, or none."""
        got = _walk(linktype, data)
        if got is None:
            return b""
        k, syn = got
        if syn:
            self._origin(k)
        with self.lock:
            lst = self.notes.get(k)
            if not lst:
                return b""
            if len(lst) == 1:
                return lst[0][4] if lst[0][0] <= ts + MATCH_US else b""
            started = [e for e in lst if e[0] <= ts + MATCH_US]
        if not started:
            return b""
        # the newest connection on this 5-tuple that started by then; of its lookups (both ends
        # on loopback), the one that named a process, of those the originator's
        newest = max(e[0] for e in started)
        origin = self.origins.get(k)

        def rank(e: tuple[int, bool, tuple[bytes, int], bool, bytes]) -> tuple[bool, bool, int]:
            return (e[1], e[2] == origin if origin is not None else e[3], e[0])

        return max((e for e in started if e[0] >= newest - MATCH_US), key=rank)[4]

    def _origin(self, k: FlowKey) -> None:
        """A SYN from ``k``'s source: that end opened the connection on this 5-tuple."""
        end = (k[1], k[2])
        for kk in (k, (k[0], k[3], k[4], k[1], k[2])):
            self.origins[kk] = end
            self.origins.move_to_end(kk)
        while len(self.origins) > 2 * self.opts.max_annotations:
            self.origins.popitem(last=False)

    # -- AsyncSink's writer interface (the writer thread) -----------------------------------
    def write(self, meta: tuple, data: bytes) -> None:
        self.write_batch([(meta, data)])

    def write_batch(self, batch: list[tuple[tuple, bytes]]) -> None:
        """A batch of the queue: held, then what is due written (``tick`` follows)."""
        now = self.clock()
        append = self.held.append
        n = 0
        for (_kind, ts, linktype), data in batch:
            append((now, ts, linktype, data))
            n += len(data)
        self.held_bytes += n
        self._release(False)

    def tick(self) -> None:
        """After each batch of the queue, and when idle: what is due, written."""
        self._release(False)
        self._flush()

    def reopen(self) -> None:
        """SIGHUP: the next packet starts a new file; files removed by hand are forgotten."""
        self._close_file()
        self._scan()

    def close(self) -> None:
        self._release(True)
        self._close_file()

    def _release(self, everything: bool) -> None:
        held = self.held
        due = self.clock() - self.opts.hold_seconds
        most = self.opts.queue_packets  # held packets: bounded in count too (small ones cost more than their bytes)
        while held and (everything or held[0][0] <= due or self.held_bytes > self.opts.hold_bytes or len(held) > most):
            _arrived, ts, linktype, data = held.popleft()
            self.held_bytes -= len(data)
            self._record(ts, linktype, data)

    # -- files ----------------------------------------------------------------------------
    def _scan(self) -> None:
        """The ring files already in the folder (a restart continues the ring)."""
        found = []
        try:
            entries = list(os.scandir(self.dir))
        except OSError as e:
            self._error(f"cannot list {self.dir}: {e}")
            entries = []
        for ent in entries:
            m = FILE_RE.match(ent.name)
            if m is None or (self.cur is not None and ent.name == self.cur[1].name):
                continue
            try:
                if not ent.is_file(follow_symlinks=False):
                    continue
                found.append((int(m.group(1)), Path(ent.path), ent.stat(follow_symlinks=False).st_size))
            except OSError:
                continue
        found.sort()
        self.files = deque(found)
        self.total = sum(s for _, _, s in found) + (self.cur_size if self.fd is not None else 0)
        if found:
            self.seq = max(self.seq, found[-1][0])

    def _record(self, ts: int, linktype: int, data: bytes) -> None:
        comment = self.comment_for(linktype, ts, data) if self.notes else b""
        opts = self.opts
        block = packet_block(0, ts, data, comment)  # sized first; the interface id is set below
        if SHB_BYTES + IDB_BYTES + len(block) > min(opts.file_bytes, opts.max_bytes):
            self.stats["dropped_too_big"] += 1
            return
        if self.fd is not None:
            age = ts - (self.cur_first_ts if self.cur_first_ts is not None else ts)
            if self.cur_size + len(block) > opts.file_bytes or age >= opts.file_seconds * 1e6:
                self._close_file()
        while True:  # the oldest files go until this block fits in max_bytes (the open one last)
            need = len(block) + (
                SHB_BYTES + IDB_BYTES if self.fd is None else 0 if linktype in self.ifaces else IDB_BYTES
            )
            if self.total + need <= opts.max_bytes:
                break
            if self.files:
                self._remove_oldest()
            elif self.fd is not None:
                self._close_file()
            else:  # pragma: no cover - the block alone fits (checked above)
                break
        if self.fd is None:
            try:
                self._open_file()
            except OSError as e:
                self.stats["dropped_error"] += 1
                self._error(str(e) or type(e).__name__)
                return
        iface = self.ifaces.get(linktype)
        if iface is None:
            iface = self.ifaces[linktype] = len(self.ifaces)
            self._buffer(interface_block(linktype))
        self._buffer(block if iface == 0 else packet_block(iface, ts, data, comment))
        self.buf_pkts += 1
        self.buf_comments += 1 if comment else 0
        if self.cur_first_ts is None:
            self.cur_first_ts = ts
        if len(self.buf) >= FLUSH_BYTES:
            self._flush()

    def _buffer(self, block: bytes) -> None:
        self.buf += block
        self.cur_size += len(block)
        self.total += len(block)

    def _flush(self) -> None:
        """Write what is buffered in one write: all of it, or (disk full) none
        of it, counted, and the file closed so the next packet starts a whole new one."""
        if not self.buf or self.fd is None:
            return
        n, pkts, comments = len(self.buf), self.buf_pkts, self.buf_comments
        try:
            write_line(self.fd, bytes(self.buf), rollback=True)  # the whole batch or nothing
        except OSError as e:
            self.buf.clear()
            self.buf_pkts = self.buf_comments = 0
            self.cur_size -= n
            self.total -= n
            self.stats["dropped_error"] += pkts
            self._error(str(e) or type(e).__name__)
            self._close_file()
            return
        self.buf.clear()
        self.buf_pkts = self.buf_comments = 0
        st = self.stats
        st["bytes_written"] += n
        st["packets_written"] += pkts
        st["comments_written"] += comments
        if self.failing:
            log.warning("%s: writing again", self.name)
            self.failing = False

    def _remove_oldest(self) -> None:
        _seq, path, size = self.files.popleft()
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            self._error(f"cannot remove {path.name}: {e}")
        self.total -= size
        self.stats["files_removed"] += 1

    def _open_file(self) -> None:
        while len(self.files) + 1 > self.opts.max_files:
            self._remove_oldest()
        self.seq += 1
        path = self.dir / f"xfer-sensor-{self.seq:08d}.pcapng"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        try:
            os.fchmod(fd, 0o640)  # whatever the umask
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self.fd, self.cur, self.cur_size, self.cur_first_ts, self.ifaces = fd, (self.seq, path), 0, None, {}
        self._buffer(SHB)
        self.stats["files_opened"] += 1

    def _close_file(self) -> None:
        if self.fd is None or self.cur is None:
            return
        self._flush()
        if self.fd is None:  # the flush failed and closed it
            return
        try:
            os.close(self.fd)
        except OSError:
            pass
        if self.cur_size:
            self.files.append((self.cur[0], self.cur[1], self.cur_size))
        else:  # nothing of it reached the disk (it was full)
            self.cur[1].unlink(missing_ok=True)
        self.fd = self.cur = None
        self.cur_size = 0
        self.cur_first_ts = None
        self.ifaces = {}

    def _error(self, msg: str) -> None:
        self.last_error = msg
        now = time.monotonic()
        if not self.failing or now - self._last_log >= ERROR_LOG_S:
            log.error("%s: %s (%d packet(s) not recorded in all)", self.name, msg, self.stats["dropped_error"])
            self._last_log = now
        self.failing = True


class Recorder:
    """The daemon's side: the queue in front of the ring writer."""

    def __init__(self, directory: str | Path, opts: PcapRing) -> None:
        try:
            self.writer = RingWriter(directory, opts)
            probe = Path(directory) / ".xfer-sensor-probe"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640))
            probe.unlink()
        except OSError as e:
            raise RecorderError(f"--pcap-dir {directory}: cannot write there: {e.strerror or e}") from None
        self.sink = AsyncSink(
            self.writer,
            queue_max=opts.queue_packets,
            block=False,
            kinds=("packets",),
            queue_bytes_max=opts.queue_bytes,
        )

    def wrap(self, handler_for: Callable[[int], Handler]) -> Callable[[int], Handler]:
        """``handler_for`` whose handlers also queue each packet for the ring."""
        put = self.sink.put
        cache: dict[int, Handler] = {}

        def for_linktype(linktype: int) -> Handler:
            h = cache.get(linktype)
            if h is None:
                inner = handler_for(linktype)

                def h(ts: int, data: bytes, inner: Handler = inner, lt: int = linktype) -> None:
                    put(("packets", ts, lt), data)
                    inner(ts, data)

                cache[linktype] = h
            return h

        return for_linktype

    def annotate(self, key: tuple, first_us: int | None, comment: bytes, process: bool = True) -> None:
        self.writer.annotate(key, first_us, comment, process)

    def request_reopen(self) -> None:
        self.sink.request_reopen()

    def close(self) -> None:
        self.sink.close()

    def stats(self) -> dict[str, Any]:
        q = self.sink.stats()
        w = dict(self.writer.stats)
        return {
            "queued": q["queued"],
            "dropped_overflow": q["dropped_overflow"],
            "failing": self.writer.failing,
            "bytes": self.writer.total,
            "files": len(self.writer.files) + (1 if self.writer.fd is not None else 0),
            **w,
        }
