"""Live capture on several cores: ``xfer-sensor run --workers N``.

The daemon's process (the *supervisor*) forks N workers before it starts any
thread. Worker k opens its own capture on every interface with the capture
filter ANDed with its share of host pairs (``sensor.engine.bpf.share_expr``:
the sum of both addresses modulo N, so both directions of a host pair, an FTP
session with its data channels and a TFTP request with its transfer stay with
one worker, and so does every detection key of one device and remote host) and
runs the ordinary daemon loop (``sensor.daemon.Daemon``) on it.

Each worker talks to the supervisor over one AF_UNIX stream socket, in
length-prefixed messages (``Channel``):

- records, already encoded (profile and JSON line made in the worker, on its
  core), which the supervisor hands to the one set of outputs whole, line by
  line: no two workers' lines can interleave;
- its metrics snapshot every second; the supervisor's ``/metrics`` and status
  line show their sums;
- from the supervisor, in endpoint mode, the lookups of the one attribution
  helper, each sent to the worker whose share holds the connection's host pair.

Signals: the supervisor passes SIGHUP (reopen its outputs; each worker reloads
config and rules) and SIGTERM/SIGINT (each worker drains, ends every flow and
sends every record before it says goodbye) on. A worker that exits otherwise
is logged and the supervisor stops the others and exits 1, so systemd restarts
the whole service rather than let it run on part of the traffic.
Design and figures: docs/daemon.md, "Several cores".
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sensor.core.config import ConfigError, PcapRing
from sensor.engine.bpf import capture_filters, share_expr, share_of
from sensor.io import metrics
from sensor.io.capture import CaptureError
from sensor.io.privileges import drop_daemon_caps
from sensor.io.sdnotify import SdNotifier
from sensor.io.sinks import Outputs, build_outputs, sink_stats
from sensor.records.encode import KINDS, Encoder, make_profile

log = logging.getLogger("xfer-sensor")

AUTO_WORKERS_MAX = 4  # what ``auto`` picks at most (docs/daemon.md: measured up to 2, 4 by caution)
READY_TIMEOUT_S = 30.0  # longest wait for every worker's capture to open
# on SIGTERM the supervisor waits for its workers' last records as long as they keep coming (one daemon
# takes as long as its last flows need; systemd's TimeoutStopSec bounds both); a worker silent this long is killed
STOP_STALL_S = 5.0
MESSAGE_MAX = 64 << 20  # a longer message is a broken channel
RECORDS_BATCH_BYTES = 256 << 10  # a worker sends its records in messages of about this size
POLL_S = 0.25  # a worker's longest wait in its channel's flush
SUPERVISOR_POLL_S = 0.02  # the supervisor's longest wait: the helper's lookups go on within it

# message types (one byte) and the header: type, payload length
RECORDS, SNAPSHOT, READY, ERROR, BYE, ATTRIBUTIONS = b"R", b"S", b"Y", b"E", b"B", b"A"
_HEADER = struct.Struct("<cI")
_ENTRY = struct.Struct("<BBHI")  # kind index, syslog severity, Timestamp length, line length
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}

PR_SET_PDEATHSIG = 1


def resolve_workers(value: int | str) -> int:
    """``auto``: one worker per CPU this process may run on, at most
    ``AUTO_WORKERS_MAX`` (why: docs/daemon.md, "Several cores")."""
    if value != "auto":
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, AUTO_WORKERS_MAX))


# -- the channel -----------------------------------------------------------------------------------
class ChannelClosed(OSError):
    pass


class Channel:
    """Messages over a non-blocking AF_UNIX stream socket. ``send`` queues (at
    most ``max_pending`` bytes; beyond, it refuses and the caller counts the
    loss), ``pump`` moves what the socket takes and returns the whole messages
    that arrived."""

    def __init__(self, sock: socket.socket, max_pending: int = 64 << 20) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.max_pending = max_pending
        self.closed = False  # the other end is gone

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: bytes, payload: bytes, force: bool = False) -> bool:
        if not force and len(self.out) + len(payload) > self.max_pending:
            return False
        self.out += _HEADER.pack(kind, len(payload))
        self.out += payload
        return True

    def write_some(self) -> None:
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.closed = True
                    self.out.clear()
                    return
                raise
            del self.out[:n]

    def read_some(self) -> list[tuple[bytes, bytes]]:
        while not self.closed:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            self.inbuf += data
        msgs = []
        buf = self.inbuf
        while len(buf) >= _HEADER.size:
            kind, n = _HEADER.unpack_from(buf)
            if n > MESSAGE_MAX:
                raise ChannelClosed(f"message of {n} bytes")
            if len(buf) < _HEADER.size + n:
                break
            msgs.append((kind, bytes(buf[_HEADER.size : _HEADER.size + n])))
            del buf[: _HEADER.size + n]
        return msgs

    def flush(self, timeout: float) -> bool:
        """Block (at most ``timeout`` s) until everything queued is sent."""
        end = time.monotonic() + timeout
        while self.out and not self.closed:
            left = end - time.monotonic()
            if left <= 0:
                return False
            select.select([], [self.sock], [], min(left, POLL_S))
            self.write_some()
        return not self.out

    def close(self) -> None:
        self.sock.close()


def pack_records(entries: Sequence[tuple[tuple, bytes]]) -> bytes:
    parts = []
    for (kind, ts, sev), line in entries:
        t = ts.encode() if isinstance(ts, str) else b""
        parts.append(_ENTRY.pack(_KIND_INDEX[kind], sev, len(t), len(line)))
        parts.append(t)
        parts.append(line)
    return b"".join(parts)


def unpack_records(data: bytes) -> list[tuple[tuple, bytes]]:
    out = []
    i, n = 0, len(data)
    while i + _ENTRY.size <= n:
        k, sev, tl, ll = _ENTRY.unpack_from(data, i)
        i += _ENTRY.size
        if k >= len(KINDS) or i + tl + ll > n:
            raise ChannelClosed("damaged records message")
        ts = data[i : i + tl].decode() if tl else None
        i += tl
        out.append(((KINDS[k], ts, sev), data[i : i + ll]))
        i += ll
    if i != n:
        raise ChannelClosed("damaged records message")
    return out


# -- the worker's side -------------------------------------------------------------------------------
class PipeSink:
    """The one sink of a worker's ``Outputs``: lines queued on the channel to
    the supervisor (bounded by the config's ``output.queue_max`` records not
    yet taken by the socket; beyond, dropped and counted as a full queue is)."""

    name = "worker-pipe"
    kinds = frozenset(KINDS)

    def __init__(self, link: WorkerLink, queue_max: int) -> None:
        self.link = link
        self.queue_max = queue_max
        self.batch: list[tuple[tuple, bytes]] = []
        self.batch_bytes = 0
        self.queued = self.written = self.dropped_overflow = self.dropped_error = 0
        self.lost_by_kind: dict[str, int] = {}
        self.failing = False

    def put(self, meta: tuple, line: bytes) -> bool:
        if len(self.batch) >= self.queue_max:
            self.dropped_overflow += 1
            self.lost_by_kind[meta[0]] = self.lost_by_kind.get(meta[0], 0) + 1
            return False
        self.batch.append((meta, line))
        self.batch_bytes += len(line)
        self.queued += 1
        if self.batch_bytes >= RECORDS_BATCH_BYTES:
            self.send()
        return True

    def send(self) -> None:
        """Hand the batch to the channel (which holds it until the socket takes it)."""
        if not self.batch:
            return
        if self.link.chan.send(RECORDS, pack_records(self.batch), force=True):
            self.written += len(self.batch)
        self.batch = []
        self.batch_bytes = 0
        self.link.chan.write_some()

    def request_reopen(self) -> None:  # the supervisor's outputs reopen
        pass

    def flush(self, timeout: float = 30.0) -> bool:
        self.send()
        return self.link.chan.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)

    def stats(self) -> dict[str, Any]:
        return sink_stats(self)


class RemoteHelper:
    """The attribution helper as a worker sees it: the supervisor's lookups
    for this worker's host pairs, arriving on the channel."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.pending: list[tuple[tuple, Any, list[float]]] = []

    def poll_timed(self) -> list[tuple[tuple, Any, list[float]]]:
        self.link.pump()
        got, self.pending = self.pending, []
        return got

    def alive(self) -> bool:  # the supervisor watches the helper itself
        return True

    def figures(self) -> dict[str, Any]:
        return {}  # the supervisor adds the helper's own

    def stop(self) -> None:
        pass


class WorkerLink:
    """What a worker's ``Daemon`` uses instead of its own outputs, metrics
    endpoint, attribution helper and whole-traffic capture filter."""

    def __init__(self, k: int, n: int, sock: socket.socket) -> None:
        self.k, self.n = k, n
        self.chan = Channel(sock)
        self.share = share_expr(k, n)
        self.helper = RemoteHelper(self)
        self.pipe_sink: PipeSink | None = None
        self.parent_gone = False
        self.early: set[int] = set()  # signals that came before the daemon's handlers

    def catch_early_signals(self) -> None:
        """From the fork on: a SIGTERM while the worker starts must stop it cleanly, not kill it."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: self.early.add(signum))

    def outputs(self, output: Any, config: Any, rules: Any) -> Outputs:
        self.pipe_sink = PipeSink(self, output.queue_max)
        sinks: list[Any] = [self.pipe_sink]  # an AsyncSink's interface, written synchronously
        return Outputs(Encoder(make_profile(output.profile, config, rules), output.max_line_bytes), sinks)

    def filters(self, ports: Any) -> list[str | None]:
        return capture_filters(ports, share=self.share)

    def check_filters(self, installed: Mapping[str, str | None]) -> None:
        for iface, f in installed.items():
            if f is None:
                raise CaptureError(f"{iface}: --workers: no capture filter for this worker's share compiles on it")

    def state_dir(self, base: str | Path) -> Path:
        """Each worker's rule windows in a folder of its own (one writer per SQLite file)."""
        return Path(base) / f"worker-{self.k}-of-{self.n}"

    def ring(self, base: str | Path, opts: PcapRing) -> tuple[Path, PcapRing]:
        """Each worker's flight recorder in a folder of its own, with 1/N of the bounds."""
        return self.state_dir(base), ring_share(opts, self.n)

    # the metrics endpoint's interface (Daemon.metrics_server)
    url = "the supervisor's"

    def publish(self, snap: Mapping) -> None:
        if self.pipe_sink is not None:
            self.pipe_sink.send()
        self.chan.send(SNAPSHOT, pickle.dumps(thaw(snap)), force=True)
        self.chan.write_some()

    def close(self) -> None:
        pass

    def pump(self) -> bool:
        """Send what is queued, take the supervisor's messages; False once it is gone."""
        if self.pipe_sink is not None:
            self.pipe_sink.send()
        try:
            self.chan.write_some()
            for kind, payload in self.chan.read_some():
                if kind == ATTRIBUTIONS:
                    self.helper.pending.extend(pickle.loads(payload))
        except OSError:
            self.chan.closed = True
        if self.chan.closed:
            self.parent_gone = True
        return not self.parent_gone

    def ready(self, filters: Mapping[str, str | None], daemon: Any) -> None:
        """The capture is open: the daemon's own signal handlers from now on (with
        what came before), then tell the supervisor."""
        signal.signal(signal.SIGHUP, daemon._on_hup)
        signal.signal(signal.SIGTERM, daemon._on_term)
        signal.signal(signal.SIGINT, daemon._on_term)
        if signal.SIGHUP in self.early:
            daemon.hup = True
        if self.early & {signal.SIGTERM, signal.SIGINT}:
            daemon.stop = True
        self.chan.send(READY, repr(dict(filters)).encode(), force=True)
        self.chan.flush(5.0)

    def error(self, message: str) -> None:
        self.chan.send(ERROR, message.encode(errors="replace"), force=True)
        self.chan.flush(5.0)

    def bye(self, timeout: float = 300.0) -> None:
        if self.pipe_sink is not None:
            self.pipe_sink.send()
        self.chan.send(BYE, b"", force=True)
        self.chan.flush(timeout)


def ring_share(opts: PcapRing, n: int) -> PcapRing:
    """One worker's share of the flight recorder's bounds: the files and bytes
    of the whole ring divided by ``n``, so that every worker's ring together
    stays within them (docs/daemon.md, "Several cores")."""
    if opts.max_files < n:
        raise ConfigError("config", "pcap_ring.max_files", f"must be at least the number of workers ({n})")
    max_bytes = opts.max_bytes // n
    return replace(opts, max_bytes=max_bytes, max_files=opts.max_files // n, file_bytes=min(opts.file_bytes, max_bytes))


def thaw(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: thaw(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [thaw(x) for x in v]
    return v


# -- merged metrics -------------------------------------------------------------------------------
def _sum(a: Any, b: Any) -> Any:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for k, v in b.items():
            out[k] = _sum(out[k], v) if k in out else thaw(v)
        return out
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) or bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return a if a not in (None, "") else b


def merge_snapshots(snaps: Sequence[Mapping], outputs: Mapping[str, Any], start_time: float, helper: Any) -> Mapping:
    """One snapshot of the whole daemon: the workers' counters summed (the
    flows' ``active_max`` too: an upper bound), the supervisor's outputs (plus
    the workers' pipes and lines shortened), the one helper's figures."""
    total: dict[str, Any] = {}
    for s in snaps:
        total = _sum(total, thaw(s))
    if not total:  # no worker reported yet: the shape of an idle daemon
        total = thaw(metrics.collect(pipe_stats={}, capture_stats={}, flows_active=0))
    total["time"] = time.time()
    total["start_time"] = start_time
    total.setdefault("flows", {})["emergency"] = max((s["flows"].get("emergency", 0) for s in snaps), default=0)
    outs = thaw(outputs)
    wo = total.get("outputs") or {}
    outs["truncated"] = int(wo.get("truncated", 0))
    outs.setdefault("sinks", {}).update(wo.get("sinks") or {})
    total["outputs"] = outs
    if helper is not None:
        total.setdefault("attribution", {})["helper"] = helper.figures()
    return metrics.freeze(total)


# -- the supervisor ---------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """The kernel sends this worker SIGTERM when the supervisor dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - Linux has prctl
        pass


WorkerMain = Callable[[WorkerLink], int]


class Worker:
    def __init__(self, k: int, pid: int, chan: Channel) -> None:
        self.k, self.pid, self.chan = k, pid, chan
        self.ready = False
        self.said_bye = False
        self.exited: int | None = None  # wait status, once reaped
        self.snapshot: Mapping | None = None
        self.error = ""


class Supervisor:
    """Forks ``n`` workers running ``worker_main(link)``, then owns the outputs,
    the metrics endpoint, the attribution helper and systemd's notifications."""

    def __init__(
        self,
        n: int,
        worker_main: WorkerMain,
        *,
        make_outputs: Callable[[], Outputs],
        start_helper: Callable[[], Any] | None,
        metrics_listen: tuple[str, int] | None,
        status_interval: float,
        interfaces: Sequence[str],
    ) -> None:
        self.n = n
        self.workers: list[Worker] = []
        self.messages = 0  # taken from the workers (progress while stopping)
        self.stop = False
        self.hup = False
        self.exit_code = 0
        self.started = time.time()
        self.interfaces = list(interfaces)
        self.status_interval = status_interval
        sys.stdout.flush()
        sys.stderr.flush()
        for k in range(n):  # before any thread of this process starts
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                link = WorkerLink(k, n, theirs)
                try:
                    link.catch_early_signals()
                    mine.close()
                    for w in self.workers:
                        w.chan.close()
                    _die_with_parent()
                    os.environ.pop("NOTIFY_SOCKET", None)  # the supervisor alone talks to systemd
                    os.environ.pop("WATCHDOG_USEC", None)
                    for h in logging.getLogger().handlers:
                        h.setFormatter(logging.Formatter(f"xfer-sensor[worker {k}]: %(levelname)s: %(message)s"))
                    code = worker_main(link)
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    log.exception("worker %d failed", k)
                finally:
                    logging.shutdown()
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            theirs.close()
            self.workers.append(Worker(k, pid, Channel(mine)))
        self.sink = make_outputs()  # the forks are done: threads may start; a ready worker sends at once
        try:
            self._wait_ready()
        except BaseException:
            self._kill_all()
            self.sink.close()
            raise
        self.helper: Any = None
        self.metrics_server: metrics.MetricsServer | None = None
        if metrics_listen:
            try:
                self.metrics_server = metrics.MetricsServer(*metrics_listen).start()
            except metrics.MetricsError:
                self._kill_all()
                raise
            self.metrics_server.publish(self.snapshot())
            log.info("metrics on %s", self.metrics_server.url)
        self.helper = start_helper() if start_helper is not None else None
        drop_daemon_caps(log)
        self.notify = SdNotifier()

    # -- start and end ---------------------------------------------------------------------------
    def _wait_ready(self) -> None:
        end = time.monotonic() + READY_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            self._pump(min(POLL_S, max(0.0, end - time.monotonic())))
            for w in self.workers:
                if w.error:
                    raise CaptureError(w.error)
                if w.exited is not None and not w.ready:
                    raise CaptureError(f"worker {w.k} exited at start ({describe_status(w.exited)})")
            if time.monotonic() > end:
                raise CaptureError(f"workers not capturing after {READY_TIMEOUT_S:g} s")

    def _kill_all(self) -> None:
        for w in self.workers:
            if w.exited is None:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                    w.exited = os.waitpid(w.pid, 0)[1]
                except (ProcessLookupError, ChildProcessError):
                    pass

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.exited is None:
                try:
                    os.kill(w.pid, sig)
                except ProcessLookupError:
                    pass

    # -- the loop --------------------------------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        live = [w for w in self.workers if not w.chan.closed]
        rl = [w.chan for w in live]
        wl = [w.chan for w in live if w.chan.out]
        try:
            ready, writable, _ = select.select(rl, wl, [], timeout)
        except InterruptedError:
            ready, writable = [], []
        for c in writable:
            c.write_some()
        for w in live:
            if w.chan in ready:
                self._read(w)
        self._reap()

    def _read(self, w: Worker) -> None:
        try:
            for kind, payload in w.chan.read_some():
                self._message(w, kind, payload)
        except (ChannelClosed, pickle.UnpicklingError, ValueError) as e:
            # only a bug makes a worker send this: the worker counts as dead
            log.error("worker %d: broken channel (%s)", w.k, e)
            w.chan.closed = True

    def _message(self, w: Worker, kind: bytes, payload: bytes) -> None:
        self.messages += 1
        if kind == RECORDS:
            emit = self.sink.emit_line
            for meta, line in unpack_records(payload):
                emit(meta, line)
        elif kind == SNAPSHOT:
            w.snapshot = pickle.loads(payload)
        elif kind == READY:
            w.ready = True
            log.info("worker %d of %d (pid %d) capturing, filter %s", w.k, self.n, w.pid, payload.decode()[:200])
        elif kind == ERROR:
            w.error = payload.decode(errors="replace")
        elif kind == BYE:
            w.said_bye = True

    def _reap(self) -> None:
        for w in self.workers:
            if w.exited is None:
                try:
                    pid, status = os.waitpid(w.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = w.pid, 0
                if pid:
                    w.exited = status

    def _route_attributions(self) -> None:
        if self.helper is None:
            return
        got = self.helper.poll_timed()
        if not got:
            return
        per: dict[int, list] = {}
        for item in got:
            key = item[0]
            try:
                k = share_of(_packed(key[1]), _packed(key[3]), self.n)
            except (ValueError, IndexError, TypeError):
                continue
            per.setdefault(k, []).append(item)
        for k, items in per.items():
            w = self.workers[k]
            if not w.chan.send(ATTRIBUTIONS, pickle.dumps(items)):
                log.warning("worker %d is not reading: %d attribution(s) dropped", k, len(items))

    def snapshot(self) -> Mapping:
        return merge_snapshots(
            [w.snapshot for w in self.workers if w.snapshot is not None], self.sink.stats(), self.started, self.helper
        )

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.hup = True

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop = True

    def _dead_worker(self) -> Worker | None:
        """A worker that stopped while the daemon runs (even cleanly: it was
        signalled on its own) leaves its share of the traffic unwatched."""
        for w in self.workers:
            if w.exited is not None or w.chan.closed:
                return w
        return None

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        ifaces = ", ".join(self.interfaces)
        log.info("capturing on %s with %d workers", ifaces, self.n)
        self.notify.ready(f"capturing on {ifaces} with {self.n} workers")
        watchdog = self.notify.watchdog_interval()
        now = time.monotonic()
        next_wd, next_status, next_publish = now, now + self.status_interval, now + metrics.PUBLISH_EVERY_S
        try:
            while not self.stop:
                self._route_attributions()
                self._pump(SUPERVISOR_POLL_S if self.helper is not None else POLL_S)
                if self.hup:
                    self.hup = False
                    self.notify.reloading("reloading")
                    self.sink.request_reopen()
                    self._signal_all(signal.SIGHUP)
                    log.info("reload: outputs reopened, SIGHUP passed to %d workers", self.n)
                    self.notify.ready("reloaded")
                dead = None if self.stop else self._dead_worker()
                if dead is not None:
                    end = time.monotonic() + 1.0  # its channel closes first: wait a moment to say how it ended
                    while dead.exited is None and time.monotonic() < end:
                        time.sleep(0.01)
                        self._reap()
                    how = describe_status(dead.exited) if dead.exited is not None else "closed its channel"
                    log.error(
                        "worker %d (pid %d) %s; stopping so the service restarts with all %d",
                        dead.k,
                        dead.pid,
                        how,
                        self.n,
                    )
                    self.exit_code = 1
                    break
                if self.helper is not None and not self.helper.alive():
                    log.error("the attribution helper exited; stopping so the service restarts with it")
                    self.exit_code = 1
                    break
                now = time.monotonic()
                if watchdog is not None and now >= next_wd:
                    self.notify.watchdog()
                    next_wd = now + watchdog
                if now >= next_status:
                    line = metrics.summary(self.snapshot())
                    log.info("%s", line)
                    self.notify.status(line)
                    next_status = now + self.status_interval
                if self.metrics_server is not None and now >= next_publish:
                    self.metrics_server.publish(self.snapshot())
                    next_publish = now + metrics.PUBLISH_EVERY_S
        finally:
            self.notify.stopping("flushing")
            self._finish()
        return self.exit_code

    def _finish(self) -> None:
        """Every worker drains, writes its records and says goodbye; then the outputs close."""
        self._signal_all(signal.SIGTERM)
        last = time.monotonic()
        while time.monotonic() - last < STOP_STALL_S and not all(
            w.chan.closed or w.exited is not None for w in self.workers
        ):
            self._route_attributions()  # the last lookups, for the last connections
            before = self.messages
            self._pump(0.05)
            if self.messages != before:
                last = time.monotonic()
        for w in self.workers:  # what is left in the sockets
            if not w.chan.closed:
                self._read(w)
        end = time.monotonic() + STOP_STALL_S
        while time.monotonic() < end and any(w.exited is None for w in self.workers):
            self._reap()
            time.sleep(0.02)
        for w in self.workers:
            if w.exited is None:
                log.error("worker %d (pid %d) sent nothing for %g s while stopping: killed", w.k, w.pid, STOP_STALL_S)
                self.exit_code = 1
            elif not w.said_bye and self.exit_code == 0:
                log.error("worker %d (pid %d) %s before writing all it had", w.k, w.pid, describe_status(w.exited))
                self.exit_code = 1
        self._kill_all()
        self.sink.close()
        self.sink.log_losses()
        final = metrics.summary(self.snapshot())
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.helper is not None:
            self.helper.stop()
        for w in self.workers:
            w.chan.close()
        log.info("stopped: %s", final)


def _packed(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def describe_status(status: int | None) -> str:
    if status is None:
        return "is running"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def run_workers(
    n: int,
    worker_main: WorkerMain,
    *,
    cfg: Any,
    rules: Any,
    outdir: Path,
    metrics_listen: tuple[str, int] | None,
    start_helper: Callable[[], Any] | None,
    interfaces: Sequence[str],
) -> int:
    """``run --workers n`` (n >= 2): the supervisor's life."""

    def make_outputs() -> Outputs:
        return build_outputs(cfg.output, config=cfg, rules=rules, outdir=outdir, block=False, truncate=False)

    sup = Supervisor(
        n,
        worker_main,
        make_outputs=make_outputs,
        start_helper=start_helper,
        metrics_listen=metrics_listen,
        status_interval=cfg.status_interval,
        interfaces=interfaces,
    )
    return sup.run()
