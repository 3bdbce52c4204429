"""Sinks: files, stdout and syslog, each behind a bounded queue and a writer thread.

``Outputs.emit(kind, record)`` encodes the record on the caller's thread and
queues the line to every sink. A sink that fails or blocks never stalls the
pipeline: ``block=False`` (live) drops and counts on a full queue,
``block=True`` (replay) waits at most ``stall_timeout`` seconds of no
progress. ``reopen()`` (SIGHUP) only sets a flag. Behaviour, rotation and
syslog framing: docs/outputs.md, "Sinks".
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import ssl
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sensor.core.config import Output, SyslogOutput
from sensor.io.tls import client_context
from sensor.records.encode import KINDS, Encoder, make_profile

log = logging.getLogger("xfer-sensor.outputs")

STALL_TIMEOUT_S = 10.0  # a blocking put gives up on a writer that made no progress this long
WAKE_INTERVAL_S = 0.2  # the writer thread checks its queue and reopen requests at least this often
NOTIFY_BATCH = 64  # queued records that wake the writer at once (fewer thread switches);
# fewer wait at most WAKE_INTERVAL_S

# syslog severities (RFC 5424): record kind / alert level -> severity
SEV_INFO, SEV_NOTICE = 6, 5
ALERT_SEVERITY = {"informational": 6, "low": 5, "medium": 4, "high": 3, "critical": 2}


class SinkError(OSError):
    pass


# -- line writers (run on the writer thread) ------------------------------------------
class FileWriter:
    """``DIR/<kind>.jsonl`` per record kind, O_APPEND, one write per line."""

    def __init__(self, outdir: str | Path, kinds: Sequence[str] = KINDS, truncate: bool = True) -> None:
        self.name = f"files:{outdir}"
        self.dir = Path(outdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kinds = tuple(kinds)
        self.fds: dict[str, int] = {}
        for k in self.kinds:
            self.fds[k] = self._open(k, truncate)

    def _open(self, kind: str, truncate: bool = False) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        return os.open(self.dir / f"{kind}.jsonl", flags, 0o640)

    def path(self, kind: str) -> Path:
        return self.dir / f"{kind}.jsonl"

    def write(self, meta: tuple, line: bytes) -> None:
        write_line(self.fds[meta[0]], line, rollback=True)

    def reopen(self) -> None:
        for k, old in list(self.fds.items()):
            self.fds[k] = self._open(k)
            os.close(old)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class StreamWriter:
    """NDJSON on a file descriptor (stdout)."""

    def __init__(self, fd: int | None = None, name: str = "stdout") -> None:
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.name = name
        try:  # a regular file (stdout redirected to one) can take back a partial line; a pipe cannot
            self.rollback = stat.S_ISREG(os.fstat(self.fd).st_mode)
        except OSError:
            self.rollback = False

    def write(self, meta: tuple, line: bytes) -> None:
        write_line(self.fd, line, self.rollback)

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def write_line(fd: int, data: bytes, rollback: bool) -> None:
    """Write one whole line, or nothing: a write that fails writes nothing
    (POSIX), and when a short write (disk full) is followed by a failure the
    partial line is cut off again (``rollback``: ``fd`` is a regular file,
    whose offset is the end of what was written). A
    pipe cannot take bytes back: there the rest is retried until it fails."""
    n = os.write(fd, data)
    if n == len(data):
        return
    done = n
    view = memoryview(data)[n:]
    try:
        while view:
            n = os.write(fd, view)
            done += n
            view = view[n:]
    except OSError as e:
        if not rollback:
            raise
        try:
            start = os.lseek(fd, 0, os.SEEK_CUR) - done
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)  # without O_APPEND (a shell's >) the offset stays past the end
        except OSError as e2:
            raise SinkError(f"{e}; the partial line ({done} bytes) could not be removed: {e2}") from e
        raise


TLS_CLOSE_WAIT_S = 1.0  # seconds a TLS close waits for the collector's close_notify


class SyslogWriter:
    """RFC 5424 to one collector; UDP, TCP with octet counting (RFC 6587), or
    TLS with octet counting (RFC 5425), the collector's certificate verified."""

    def __init__(self, cfg: SyslogOutput, hostname: str | None = None) -> None:
        self.cfg = cfg
        # tls: built now, so a CA/cert/key that does not load is bad input before any packet
        self.tls: ssl.SSLContext | None = client_context(cfg) if cfg.protocol == "tls" else None
        self.name = f"syslog:{cfg.protocol}://{cfg.host}:{cfg.port}"
        host = (cfg.hostname or hostname or socket.gethostname() or "-")[:255]
        self.hostname = "".join(c for c in host if 33 <= ord(c) <= 126) or "-"
        self.app = cfg.app_name
        self.procid = str(os.getpid())
        self.sock: socket.socket | None = None
        self.poller = select.poll()  # the connected socket's, for _peer_gone
        self.down_until = 0.0
        self.down_reason = "collector unreachable"
        self.sent = 0

    def header(self, meta: tuple) -> bytes:
        kind, ts, sev = meta
        pri = self.cfg.facility * 8 + sev
        stamp = ts if isinstance(ts, str) and ts and " " not in ts else "-"
        return f"<{pri}>1 {stamp} {self.hostname} {self.app} {self.procid} {kind} - ".encode("ascii", "replace")

    def _connect(self) -> socket.socket:
        cfg = self.cfg
        stype = socket.SOCK_DGRAM if cfg.protocol == "udp" else socket.SOCK_STREAM
        err: Exception | None = None
        for fam, st, proto, _, addr in socket.getaddrinfo(cfg.host, cfg.port, type=stype):
            s = socket.socket(fam, st, proto)
            s.settimeout(cfg.timeout)
            try:
                s.connect(addr)  # UDP: a connected socket reports ICMP port-unreachable
                if self.tls is not None:  # the handshake, verified, within the same timeout
                    s = self.tls.wrap_socket(s, server_hostname=cfg.server_name or cfg.host)
                self.poller = select.poll()
                self.poller.register(s.fileno(), select.POLLIN)
                return s
            except ssl.SSLCertVerificationError as e:  # refused: never sent in clear instead
                s.close()
                raise SinkError(f"TLS: the collector's certificate was refused: {e.verify_message or e}") from None
            except OSError as e:
                err = e
                s.close()
        raise SinkError(f"cannot connect: {err}")

    def _peer_gone(self, sock: socket.socket) -> bool:
        """A stream collector never sends (RFC 6587/5425 are simplex): a socket
        that reads end-of-stream (FIN, TLS close_notify) or an error (reset)
        means the collector went away, e.g. restarted; reconnecting now keeps the
        next record from going into a dead connection. One poll per record on
        the writer thread; a read only when the socket is readable (TLS 1.3
        session tickets after the handshake are consumed and ignored)."""
        try:
            if not self.poller.poll(0):
                return False
            if isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:
                    return not sock.recv(1)
                finally:
                    sock.settimeout(self.cfg.timeout)
            return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            return True

    def write(self, meta: tuple, line: bytes) -> None:
        now = time.monotonic()
        if self.sock is not None and self.cfg.protocol != "udp" and self._peer_gone(self.sock):
            self._drop_socket()
        if self.sock is None:
            if now < self.down_until:
                raise SinkError(f"{self.down_reason} (waiting to retry)")
            try:
                self.sock = self._connect()
            except OSError as e:
                self.down_until = now + self.cfg.retry_interval
                self.down_reason = str(e) or "collector unreachable"
                raise
        msg = self.header(meta) + line.rstrip(b"\n")
        try:
            if self.cfg.protocol == "udp":
                self.sock.send(msg)
            else:
                self.sock.sendall(b"%d " % len(msg) + msg)
        except OSError as e:
            self._drop_socket()
            self.down_until = now + self.cfg.retry_interval
            self.down_reason = f"send failed: {e}"
            raise
        self.sent += 1

    def _drop_socket(self) -> None:
        if self.sock is not None:
            if isinstance(self.sock, ssl.SSLSocket):
                # RFC 5425 5.4: close_notify before closing. Without it the collector
                # sees an unexpected EOF, and rsyslog drops what it had not yet processed
                try:
                    self.sock.settimeout(min(self.cfg.timeout, TLS_CLOSE_WAIT_S))
                    self.sock.unwrap()
                except (OSError, ValueError):
                    pass
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def reopen(self) -> None:
        self._drop_socket()
        self.down_until = 0.0

    def close(self) -> None:
        self._drop_socket()


# -- the queue and its thread -----------------------------------------------------------
class AsyncSink:
    """A bounded queue in front of one line writer, drained by a thread."""

    def __init__(
        self,
        writer: Any,
        queue_max: int = 10000,
        block: bool = True,
        error_log_interval: float = 60.0,
        stall_timeout: float = STALL_TIMEOUT_S,
        kinds: Iterable[str] = KINDS,
        queue_bytes_max: int | None = None,
    ) -> None:
        self.writer = writer
        self.name = getattr(writer, "name", type(writer).__name__)
        self.kinds = frozenset(kinds)
        self.queue_max = queue_max
        self.block = block
        self.error_log_interval = error_log_interval
        self.stall_timeout = stall_timeout
        self.q: deque = deque()
        # optional second bound: bytes queued (the flight recorder's packets vary in size)
        self.queue_bytes_max = queue_bytes_max
        self.q_bytes = 0
        self._need = 0  # bytes of the record waiting for room
        # optional ``writer.tick()``: called after each batch and when the queue stays empty for
        # WAKE_INTERVAL_S; optional ``writer.write_batch(items)``: takes a whole batch and never
        # raises (it counts its own losses: the flight recorder's packets)
        self._tick = getattr(writer, "tick", None)
        self._write_batch = getattr(writer, "write_batch", None)
        self.cond = threading.Condition(threading.Lock())
        self.closing = False
        self.reopen_requested = False
        self.stalled = False
        self.busy = False
        self.last_progress = time.monotonic()
        # counters
        self.queued = self.written = self.dropped_overflow = self.dropped_error = self.reopened = 0
        self.max_depth = 0
        self.lost_by_kind: dict[str, int] = {}  # records not written (overflow or error), by kind
        self.failing = False  # the last write failed: a burst of errors is under way
        self.burst_lost = 0  # records lost in the current burst
        # rate-limited logging
        self._last_log = -1e18
        self._unlogged_errors = 0
        self._unlogged_overflow = 0
        self._last_error = ""
        self.thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self.thread.start()

    # -- producer side ----------------------------------------------------------------
    def put(self, meta: tuple, line: bytes) -> bool:
        with self.cond:
            if self._full(len(line)):
                if self.block and not self.stalled:
                    self._need = len(line)
                    self._wait_room()
                if self._full(len(line)):
                    self.dropped_overflow += 1
                    self._lost(meta)
                    self._unlogged_overflow += 1
                    self._maybe_log()
                    return False
            self.q.append((meta, line))
            self.q_bytes += len(line)
            self.queued += 1
            if len(self.q) > self.max_depth:
                self.max_depth = len(self.q)
            if len(self.q) == NOTIFY_BATCH:
                self.cond.notify_all()
        return True

    def _full(self, n: int) -> bool:
        """Caller holds the lock: would ``n`` more bytes overflow the queue?"""
        qb = self.queue_bytes_max
        return len(self.q) >= self.queue_max or (qb is not None and self.q_bytes + n > qb)

    def _wait_room(self) -> None:
        """Caller holds the lock. Waits while the writer makes progress."""
        while self._full(self._need) and not self.closing:
            before = self.written + self.dropped_error
            self.cond.wait(WAKE_INTERVAL_S)
            if (
                self.written + self.dropped_error == before
                and time.monotonic() - self.last_progress >= self.stall_timeout
            ):
                self.stalled = True
                self._last_error = f"writer made no progress for {self.stall_timeout:g}s; dropping until it drains"
                self._unlogged_errors += 1
                self._maybe_log(force=True)
                return

    def request_reopen(self) -> None:
        """Async-signal-safe: only sets a flag the writer thread checks."""
        self.reopen_requested = True

    def flush(self, timeout: float = 30.0) -> bool:
        """Waits until every queued record was written (or dropped) and a requested
        reopen was done."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.cond.notify_all()  # the writer may be waiting for a fuller batch
            while (self.q or self.busy or self.reopen_requested) and self.thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, WAKE_INTERVAL_S))
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join(timeout=max(1.0, timeout / 10))
        if self.q:
            lost = len(self.q)
            for meta, _ in self.q:
                self._lost(meta)
            self.q.clear()
            self.dropped_error += lost
            self._unlogged_errors += lost
            self._last_error = f"{lost} record(s) still queued at exit"
        self._maybe_log(force=True)
        try:
            self.writer.close()
        except OSError as e:
            log.error("%s: close failed: %s", self.name, e)

    # -- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.q and not self.closing and not self.reopen_requested:
                    if not self.cond.wait(WAKE_INTERVAL_S) and self._tick is not None:
                        break  # idle: let the writer do its timed work
                if not self.q and self.closing:
                    return
                batch = list(self.q)
                self.q.clear()
                self.q_bytes = 0
                self.busy = True
                self.cond.notify_all()  # room for blocked producers
            if self._write_batch is not None and batch:
                if self.reopen_requested:
                    self._reopen()
                self._write_batch(batch)
                self.written += len(batch)
                self.last_progress = time.monotonic()
                batch = []
            for meta, line in batch:
                if self.reopen_requested:
                    self._reopen()
                try:
                    self.writer.write(meta, line)
                    self.written += 1
                    if self.failing:
                        self._recovered()
                except OSError as e:
                    self.dropped_error += 1
                    self._lost(meta)
                    self._unlogged_errors += 1
                    self._last_error = str(e) or type(e).__name__
                    if not self.failing:  # the first error of a burst is logged at once
                        self.failing = True
                        self._maybe_log(force=True)
                    else:
                        self._maybe_log()
                    self.burst_lost += 1
                self.last_progress = time.monotonic()
            if self.reopen_requested:
                self._reopen()
            if self._tick is not None:
                self._tick()
            with self.cond:
                self.busy = False
                if self.stalled and len(self.q) <= self.queue_max // 2:
                    self.stalled = False
                self.cond.notify_all()

    def _lost(self, meta: tuple) -> None:
        k = meta[0] if meta else "?"
        self.lost_by_kind[k] = self.lost_by_kind.get(k, 0) + 1

    def _recovered(self) -> None:
        """A write worked after a burst of errors: say so once, with what the burst cost."""
        self._maybe_log(force=True)  # errors of the burst not reported yet
        log.warning("%s: writing again; %d record(s) were lost while it failed", self.name, self.burst_lost)
        self.failing = False
        self.burst_lost = 0

    def _reopen(self) -> None:
        self.reopen_requested = False
        try:
            self.writer.reopen()
            self.reopened += 1
        except OSError as e:
            self._unlogged_errors += 1
            self._last_error = f"reopen failed: {e}"
            self._maybe_log(force=True)

    def _maybe_log(self, force: bool = False) -> None:
        if not (self._unlogged_errors or self._unlogged_overflow):
            return
        now = time.monotonic()
        if not force and now - self._last_log < self.error_log_interval:
            return
        self._last_log = now
        if self._unlogged_errors:
            log.error(
                "%s: %s (%d record(s) lost to errors since the last report, %d in all)",
                self.name,
                self._last_error,
                self._unlogged_errors,
                self.dropped_error,
            )
        if self._unlogged_overflow:
            log.warning(
                "%s: queue full (%d records): %d record(s) dropped since the last report, %d in all",
                self.name,
                self.queue_max,
                self._unlogged_overflow,
                self.dropped_overflow,
            )
        self._unlogged_errors = self._unlogged_overflow = 0

    def stats(self) -> dict[str, Any]:
        return sink_stats(self, reopened=self.reopened, max_depth=self.max_depth, last_error=self._last_error)


def sink_stats(s: Any, **more: Any) -> dict[str, Any]:
    """A sink's counters as ``Outputs.stats`` and /metrics read them (an AsyncSink's, a worker's pipe)."""
    return {
        "queued": s.queued,
        "written": s.written,
        "dropped_overflow": s.dropped_overflow,
        "dropped_error": s.dropped_error,
        "lost_by_kind": dict(sorted(s.lost_by_kind.items())),
        "failing": s.failing,
        **more,
    }


# -- the pipeline's sink --------------------------------------------------------------------
def _syslog_severity(kind: str, rec: Mapping[str, Any]) -> int:
    if kind == "alerts":
        return ALERT_SEVERITY.get(str(rec.get("Level", "")), 4)
    return SEV_NOTICE if kind == "weird" else SEV_INFO


class Outputs:
    """``emit(kind, record)`` for the pipeline: profile, encode once, queue to every sink."""

    def __init__(self, encoder: Encoder, sinks: Sequence[AsyncSink]) -> None:
        self.encoder = encoder
        self.sinks = list(sinks)
        self.counts = {k: 0 for k in KINDS}
        self._old_hup: Any = None
        # the sinks of each kind: a record no sink takes is not encoded (a replay
        # without --out or --stdout encodes nothing; the encoder's ``truncated``
        # counts lines written)
        self._takers = {k: tuple(s for s in self.sinks if k in s.kinds) for k in KINDS}

    def emit(self, kind: str, rec: Mapping[str, Any]) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        takers = self._takers.get(kind)
        if takers is None:
            takers = tuple(s for s in self.sinks if kind in s.kinds)
        if not takers:
            return
        line = self.encoder.encode(kind, rec)
        meta = (kind, rec.get("Timestamp"), _syslog_severity(kind, rec))
        for s in takers:
            s.put(meta, line)

    def emit_line(self, meta: tuple, line: bytes) -> None:
        """A record another process encoded (a worker's, sensor/workers.py):
        ``meta`` is ``(kind, Timestamp, syslog severity)``, as ``emit`` makes it."""
        kind = meta[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        for s in self._takers.get(kind) or ():
            s.put(meta, line)

    def request_reopen(self) -> None:
        for s in self.sinks:
            s.request_reopen()

    reopen = request_reopen

    def install_sighup(self) -> None:
        """SIGHUP -> reopen every sink (logrotate's postrotate ``kill -HUP``)."""
        self._old_hup = signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reopen())

    def flush(self, timeout: float = 30.0) -> bool:
        return all(s.flush(timeout) for s in self.sinks)

    def close(self, timeout: float = 30.0) -> None:
        for s in self.sinks:
            s.close(timeout)
        if self._old_hup is not None:
            signal.signal(signal.SIGHUP, self._old_hup)
            self._old_hup = None

    def log_losses(self) -> None:
        """At the end of a run: one line per sink that did not write every record."""
        for name, st in self.stats()["sinks"].items():
            lost = st["dropped_overflow"] + st["dropped_error"]
            if lost:
                by = ", ".join(f"{k} {n}" for k, n in st["lost_by_kind"].items())
                log.warning("%s: %d record(s) not written in this run (%s)", name, lost, by)

    def stats(self) -> dict[str, Any]:
        return {
            "profile": getattr(self.encoder.profile, "name", "?"),
            "records": dict(self.counts),
            "truncated": self.encoder.truncated,
            "sinks": {s.name: s.stats() for s in self.sinks},
        }


def build_outputs(
    output: Output,
    *,
    config: Any = None,
    rules: Any = None,
    outdir: str | Path | None = None,
    stdout: bool | None = None,
    syslog: SyslogOutput | None = None,
    block: bool = True,
    truncate: bool = True,
    stdout_fd: int | None = None,
) -> Outputs:
    """The sinks an ``output:`` config section (plus command-line overrides) asks for."""
    encoder = Encoder(make_profile(output.profile, config, rules), output.max_line_bytes)
    sinks: list[AsyncSink] = []
    common: dict[str, Any] = {
        "queue_max": output.queue_max,
        "block": block,
        "error_log_interval": output.error_log_interval,
    }
    if outdir is not None and output.files:
        sinks.append(AsyncSink(FileWriter(outdir, truncate=truncate), **common))
    if stdout if stdout is not None else output.stdout:
        sinks.append(AsyncSink(StreamWriter(stdout_fd), **common))
    syslog = syslog or output.syslog
    if syslog is not None:
        sinks.append(AsyncSink(SyslogWriter(syslog), kinds=syslog.kinds, **common))
    return Outputs(encoder, sinks)


# -- simple synchronous sinks (tests, the daemon's default) ---------------------------
class MemorySink:
    """Keeps records in lists (tests, the replay summary)."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict]] = {k: [] for k in KINDS}

    def emit(self, kind: str, rec: dict) -> None:
        self.records[kind].append(rec)

    def close(self) -> None:
        pass


class JsonlSink:
    """``OUT/<kind>.jsonl`` files, opened with O_APPEND, one write per record,
    written synchronously. ``reopen()`` reopens them (after logrotate renamed
    or truncated them). The replay uses the queued sinks of sensor/io/sinks.py."""

    def __init__(self, outdir: str | Path, truncate: bool = True, encoder: Encoder | None = None) -> None:
        self.dir = Path(outdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder or Encoder()
        self.fds: dict[str, int] = {}
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        for k in KINDS:
            self.fds[k] = os.open(self.dir / f"{k}.jsonl", flags, 0o640)
        self.counts = {k: 0 for k in KINDS}

    def emit(self, kind: str, rec: dict) -> None:
        os.write(self.fds[kind], self.encoder.encode(kind, rec))
        self.counts[kind] += 1

    def reopen(self) -> None:
        for k, old in list(self.fds.items()):
            self.fds[k] = os.open(self.dir / f"{k}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.close(old)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class TeeSink:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def emit(self, kind: str, rec: dict) -> None:
        for s in self.sinks:
            s.emit(kind, rec)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
