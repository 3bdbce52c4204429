"""A replay split by host pair over several processes, with the output of one.

Like a Zeek cluster's workers or Suricata's flow-hash load balancing, each
process analyses the host pairs of its share (``owner``: CRC-32 of the two
addresses, the same for both directions; the parent's share is smaller, it
also reads). Unlike them, the result is the one a single pipeline gives,
byte for byte, whatever the number of workers:

- The parent reads the capture once (libpcap on its read-ahead thread, see
  sensor/io/capture.py), analyses share 0 itself and hands every worker each
  read batch as libpcap gave it -- the frames' buffer, every packet's time,
  offset and length -- with every packet's share (a pipe per worker, one
  writev per batch, nothing copied out). Every pipeline moves its clock on every
  packet, so packet time -- the only clock -- moves in each exactly as in
  one pipeline, and every expiry scan runs at the same packet.
- Everything a connection's record depends on stays inside its host pair:
  its own packets; FTP data channels and TFTP transfers (expectations are
  keyed by the control connection's two hosts, a bounce gets none); FTPS
  sessions (followed by host pair); and the flow table's expiry, which ends
  a flow from its own activity and the clock only (sensor/engine/flows.py).
- Each record leaves its worker with its place in one pipeline's output: the
  index of the packet it came with, then the phase -- an expiry scan runs
  before packet i (phase 0, ending flows by timeout class, then queue time,
  then uid), then packet i's own work (phase 1, one worker only), the final
  flush last (phase 2, by first time and uid) -- and its order within that.
  The parent merges the workers' spool files on that key and does what spans
  host pairs: detection (a window may group connections of any hosts), the
  sampling of weird records, the outputs and the summary.
- What one pipeline shares but a worker has alone -- the table bounds
  (``max_flows`` and its emergency mode, ``flow_scan_budget``,
  ``max_expectations``, FTPS sessions followed, the uid memory) and a capture
  filter that must change during the replay (a port below 1024 joining) --
  is checked afterwards: when the workers' peaks added up could have reached
  a bound, or a filter changed, their output is dropped and the replay runs
  again in one process (``Outcome.fallback`` says why).

Counters are the workers' sums. Two kinds can differ from one pipeline's:
``flows.active_max``, ``flows.scan_max`` and ``expectations.peak`` add up
per-worker peaks; and ``decoder.target``, ``decoder.tcp``/``udp`` and
``flows.untracked`` may count differently the packets sent to a port that
another host pair expected a data channel on (one pipeline looks them up and
finds nothing; a worker never knew of that port).
"""
from __future__ import annotations

import heapq
import os
import pickle
import queue
import shutil
import signal
import stat
import struct
import tempfile
import threading
import traceback
import zlib
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Iterator, Sequence

from sensor.io.capture import BATCH_META
from sensor.engine.decode import _VLAN_TPIDS, LINKTYPE_ETHERNET, MAX_VLAN_TAGS

_crc = zlib.crc32

PARTITION_MIN_BYTES = 64 << 20   # ``--workers auto``: smaller captures run in one process
MAX_AUTO_WORKERS = 8             # ``--workers auto``: at most this many processes
SPOOL_BATCH = 256                # records pickled together into a spool file
PIPE_BYTES = 1 << 20             # pipe buffer asked for, reader -> worker
FEED_BATCHES = 32                # batches queued for a worker before the parent waits
SHARE_MEMORY = 1 << 16           # address pairs whose share the hand-out remembers (then forgets all)
_FLUSH_INDEX = 1 << 62           # the final flush comes after every packet


# the parent's share of host pairs against a worker's 1.0: it also hands every
# packet out (~1.7 us each) and its libpcap thread reads (~0.45 CPU-s on the 1M
# benchmark), so with 0.6 the worker waited 0.18-0.3 s for input; 0.3: 0.06-0.17 s.
# Tried on the 1M benchmark with 2 processes, alternating: 0.2, 0.3, 0.4 within
# noise of each other, 0.6 and 0.001 ~5-10 % slower
PARENT_WEIGHT = 0.3
_SLOTS = 256


def share_table(n: int) -> bytes:
    """Slot (0..255) -> share: share 0 (the parent's) gets ``PARENT_WEIGHT``
    of a worker's slots. Which share a host pair falls in never changes the
    output, only the balance."""
    total = PARENT_WEIGHT + (n - 1)
    bounds = [round(_SLOTS * (PARENT_WEIGHT + k) / total) for k in range(n)]
    return bytes(sum(1 for b in bounds if slot >= b) for slot in range(_SLOTS))


def owner(src: bytes, dst: bytes, table: bytes) -> int:
    """The share of the host pair {src, dst}: the same for both directions."""
    return table[(_crc(src) ^ _crc(dst)) & 0xFF]


def raw_owner(data: bytes, table: bytes) -> int:
    """``owner`` of an Ethernet frame: its IP addresses after up to four VLAN
    tags; share 0 when it has none."""
    off = 14
    if len(data) < off:
        return 0
    et = (data[12] << 8) | data[13]
    tags = 0
    while et in _VLAN_TPIDS and tags < MAX_VLAN_TAGS and off + 4 <= len(data):
        et = (data[off + 2] << 8) | data[off + 3]
        off += 4
        tags += 1
    if et == 0x0800 and off + 20 <= len(data):
        return owner(data[off + 12:off + 16], data[off + 16:off + 20], table)
    if et == 0x86DD and off + 40 <= len(data):
        return owner(data[off + 8:off + 24], data[off + 24:off + 40], table)
    return 0


# -- choosing ---------------------------------------------------------------------

def partitionable(path: str) -> bool:
    """A regular file whose packets are
    all Ethernet frames (``raw_owner`` reads their addresses); anything else
    is replayed in one process."""
    from sensor.io.capture import CaptureError, _pcapng_link_types, open_offline
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        types = _pcapng_link_types(path)
        if types is not None and types != {LINKTYPE_ETHERNET}:
            return False
        r = open_offline(path)
        try:
            return r.datalink() == LINKTYPE_ETHERNET
        finally:
            r.close()
    except (OSError, CaptureError):
        return False


def choose_workers(requested: str | int, paths: Sequence[str]) -> int:
    """``--workers``: a number, or ``auto`` (one process below
    ``PARTITION_MIN_BYTES`` of capture, else one per CPU, at most
    ``MAX_AUTO_WORKERS``). One whenever a file is not ``partitionable``."""
    if requested == "auto":
        try:
            size = sum(os.path.getsize(p) for p in paths)
        except OSError:
            return 1
        if size < PARTITION_MIN_BYTES:
            return 1
        n = min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS)
    else:
        n = int(requested)
    if n > 1 and not all(partitionable(p) for p in paths):
        return 1
    return max(1, n)


# -- a share's side -------------------------------------------------------------------

class _Spool:
    """The sink of a share's pipeline (the parent's or a worker's): each
    record with its merge key, pickled in batches into the share's spool file.
    With an ``encoder`` (a worker's), each record also carries its output
    line, encoded as the parent's outputs would (and whether it was cut), so
    the merge, which runs alone at the end, only writes it."""

    __slots__ = ("ft", "f", "index", "buf", "ctx", "seq", "last", "encoder")

    def __init__(self, f, encoder: Any = None) -> None:
        self.ft = None
        self.f = f
        self.encoder = encoder
        self.index = 0      # packets delivered so far: the same count in every worker
        self.buf: list[list] = []
        self.ctx: tuple = ()
        self.seq = 0
        self.last: list | None = None

    def emit(self, kind: str, rec: dict) -> None:
        ft = self.ft
        phase = ft.phase
        if phase == 1:
            ctx = (self.index, 1)
        elif phase == 0:
            fl = ft.ending
            ctx = (self.index, 0, fl.tclass, fl.qts, fl.uid)
        else:
            fl = ft.ending
            ctx = (_FLUSH_INDEX, 2, fl.first_ts, fl.uid)
        if ctx == self.ctx:
            self.seq += 1
        else:
            self.ctx = ctx
            self.seq = 0
        if len(self.buf) >= SPOOL_BATCH:
            self.flush()     # before, not after: ``detected`` may still mark the last one
        enc = self.encoder
        if enc is None:
            m = [ctx + (self.seq,), kind, rec, None, None, False]
        else:
            cut = enc.truncated
            m = [ctx + (self.seq,), kind, rec, None, enc.encode(kind, rec), enc.truncated != cut]
        self.buf.append(m)
        self.last = m

    def detected(self, ts: int) -> None:
        """The connection record just emitted enters detection at ``ts``."""
        self.last[3] = ts

    def flush(self) -> None:
        if self.buf:
            pickle.dump(self.buf, self.f, protocol=pickle.HIGHEST_PROTOCOL)
            self.buf = []

    def close(self) -> None:
        self.flush()


class _DetectTap:
    """Stands for the worker pipeline's detector: detection runs in the
    parent, on the merged records; the tap marks what enters it, and when."""

    def __init__(self, spool: _Spool) -> None:
        from sensor.detect.detector import DetectStats
        self.spool = spool
        self.stats = DetectStats()

    def observe(self, rec: dict, ts: int) -> tuple:
        self.spool.detected(ts)
        return ()

    def hunt_results(self) -> list:
        return []


_BATCH = struct.Struct("=II?")  # packets in a batch, bytes of its buffer, its records in _ONE's form
_ONE = struct.Struct("=qqII")   # BATCH_META's (sec, usec, offset, caplen) for one packet, any time


def _share(cfg: Any, rules: Any, spool_file, output: Any = None) -> tuple[Any, _Spool]:
    """A pipeline whose records go to a spool, detection left to the merge;
    ``output`` (the replay's output settings): encode the lines here too."""
    from sensor.pipeline import Pipeline
    encoder = None
    if output is not None:
        from sensor.records.encode import Encoder, make_profile
        encoder = Encoder(make_profile(output.profile, cfg, rules), output.max_line_bytes)
    spool = _Spool(spool_file, encoder)
    pipe = Pipeline(cfg, rules, spool)
    spool.ft = pipe.flows
    pipe.detector = _DetectTap(spool)
    return pipe, spool


def _report(pipe: Any) -> dict:
    ft = pipe.flows
    return {
        "stats": pipe.stats(),
        "peaks": {"filter_changes": pipe.portset.version, "active": ft.stats.active_max,
                  "scan": ft.stats.scan_max, "expectations": pipe.app.expect.stats.peak,
                  "ftps": pipe.app.ftps_peak, "recent": ft.recent_peak},
        "bounds": {"active": ft.max_flows, "scan": ft.scan_budget, "expectations": pipe.app.expect.max},
    }


def _work(k: int, fd: int, cfg: Any, rules: Any, spool_path: str, output: Any = None) -> dict:
    """Worker ``k``: the parent's read batches as libpcap gave them (the
    packets' times, offsets and lengths, their frames) with each packet's
    share, through a pipeline of its own: share ``k``'s packets analysed,
    every other one moving the clock."""
    with open(spool_path, "wb", buffering=1 << 20) as out, os.fdopen(fd, "rb", buffering=0) as f:
        read = _reader(f)
        pipe, spool = _share(cfg, rules, out, output)
        ft = pipe.flows
        handle = pipe.handler_for(LINKTYPE_ETHERNET)
        advance = ft.advance
        index = 0
        while True:
            head = read(_BATCH.size)
            if len(head) < _BATCH.size:
                break
            count, nbytes, one = _BATCH.unpack(head)
            form = _ONE if one else BATCH_META
            meta = read(form.size * count)
            shares = read(count)
            pb = read(nbytes)
            for (s, us, off, n), w in zip(form.iter_unpack(meta), shares):
                index += 1
                ts = s * 1_000_000 + us
                if w == k:
                    spool.index = index
                    handle(ts, pb[off:off + n])
                else:                # another share's packet: the clock moves all the same
                    if ts > ft.now:
                        ft.now = ts
                    if ft.now >= ft.next_scan:
                        spool.index = index
                        advance(ts)
        pipe.finish()
        spool.close()
    return _report(pipe)


class _Distributor:
    """The parent's packet handler: share 0 through the parent's own
    pipeline; every worker gets each read batch as it is (libpcap's buffer
    and per-packet times, offsets and lengths) with every packet's share --
    no frame is copied out for it."""

    def __init__(self, feeds: list["_Feed"], pipe: Any, spool: _Spool) -> None:
        self.feeds = feeds       # worker k's is feeds[k - 1]
        self.n = len(feeds) + 1
        self.pipe = pipe
        self.spool = spool

    def handler(self):
        """The per-packet function; it carries ``batch(pb, meta)``, the same
        for a whole ``next_batch`` of packets at once (sensor/io/capture.py
        calls that when it reads ahead: no Python call per packet)."""
        table = share_table(self.n)
        feeds = self.feeds
        spool = self.spool
        ft = self.pipe.flows
        advance = ft.advance
        mine = self.pipe.handler_for(LINKTYPE_ETHERNET)
        index = 0
        ip4 = b"\x08\x00"
        remembered: dict[bytes, int] = {}     # untagged IPv4 (src, dst) as in the frame -> share
        remembered_get = remembered.get

        def batch(pb: bytes, meta: bytes, form: struct.Struct = BATCH_META) -> None:
            nonlocal index
            shares = bytearray()
            add = shares.append
            for s, us, off, n in form.iter_unpack(meta):
                ts = s * 1_000_000 + us
                if pb[off + 12:off + 14] == ip4 and n >= 34:   # raw_owner, inline for untagged IPv4,
                    pair = pb[off + 26:off + 34]              # remembered per address pair
                    w = remembered_get(pair)
                    if w is None:
                        if len(remembered) >= SHARE_MEMORY:
                            remembered.clear()
                        w = remembered[pair] = owner(pair[:4], pair[4:], table)
                else:
                    w = raw_owner(pb[off:off + n], table)
                index += 1
                add(w)
                if w:
                    if ts > ft.now:
                        ft.now = ts
                    if ft.now >= ft.next_scan:
                        spool.index = index      # the scan may end flows of share 0
                        advance(ts)
                else:
                    spool.index = index
                    mine(ts, pb[off:off + n])
            if shares:
                head = _BATCH.pack(len(shares), len(pb), form is _ONE)
                for feed in feeds:
                    feed.put((head, meta, shares, pb))     # written with one writev

        def handle(ts: int, data: bytes) -> None:
            """One packet (the plain read after damage): a batch of one."""
            s, us = divmod(ts, 1_000_000)
            batch(data, _ONE.pack(s, us, 0, len(data)), _ONE)

        handle.batch = batch     # type: ignore[attr-defined]
        return handle


class _Feed:
    """A worker's pipe, written by a thread of its own (the write releases
    the GIL), so the parent goes on with its share while a worker is busy --
    up to ``FEED_BATCHES`` batches queued."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.q: queue.Queue = queue.Queue(FEED_BATCHES)
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="replay-feed", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                return
            if self.error is None:
                try:
                    _write_all(self.fd, *data)
                except OSError as e:     # the worker is gone: reported by put() and close()
                    self.error = e

    def put(self, data: tuple[bytes, ...]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(data)

    def close(self) -> None:
        """Write what is queued, then end the worker's input."""
        self.q.put(None)
        self.thread.join()
        os.close(self.fd)
        if self.error is not None:
            raise self.error


# -- the parent's side ----------------------------------------------------------------

@dataclass
class Outcome:
    """What the workers did. ``fallback``: why their output cannot stand for
    one pipeline's (then replay in one process); empty when it can."""
    results: list[tuple[int, str]]           # per path: (packets delivered, damage)
    stats: dict[str, Any]
    fallback: str = ""
    spools: list[str] = field(default_factory=list)
    tmpdir: str = ""

    def records(self) -> Iterator[list]:
        """[key, kind, record, detection time or None, line or None, line cut],
        in one pipeline's order."""
        return heapq.merge(*(_read_spool(p) for p in self.spools), key=itemgetter(0))

    def deliver(self, sink: Any, detector: Any) -> None:
        """The records into ``sink`` in one pipeline's order, with detection
        on the connections (as ``Pipeline._emit_connection`` does) and the
        weird records sampled per name (as ``Pipeline._weird`` does)."""
        from sensor.pipeline import WEIRD_LOG_PER_NAME
        logged: dict[str, int] = {}
        emit_encoded = getattr(sink, "emit_encoded", None)
        for _, kind, rec, ts, line, cut in self.records():
            if kind == "weird":
                name = rec.get("Name", "")
                n = logged.get(name, 0) + 1
                logged[name] = n
                if n > WEIRD_LOG_PER_NAME:
                    continue
            if line is not None and emit_encoded is not None:
                emit_encoded(kind, rec, line, cut)
            else:
                sink.emit(kind, rec)
            if ts is not None:
                for alert in detector.observe(rec, ts):
                    sink.emit("alerts", alert)

    def cleanup(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = ""


def _read_spool(path: str) -> Iterator[list]:
    with open(path, "rb", buffering=1 << 20) as f:
        while True:
            try:
                batch = pickle.load(f)
            except EOFError:
                return
            yield from batch


def _reader(f) -> Any:
    """``read(n)``: exactly n bytes from the unbuffered pipe ``f`` (fewer at
    its end), in one system call when the pipe holds them: no buffer copy."""
    raw = f.read

    def read(n: int) -> bytes:
        b = raw(n)
        if b is None or len(b) == n or not b:
            return b or b""
        parts = [b]
        got = len(b)
        while got < n:
            more = raw(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)
    return read


def _write_all(fd: int, *parts: bytes) -> None:
    """Write ``parts`` one after the other (``writev``: no joined copy)."""
    views = [memoryview(p) for p in parts if p]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def run(paths: Sequence[str], cfg: Any, rules: Any, n: int, progress: Any = None, output: Any = None) -> Outcome:
    """Fork ``n - 1`` workers, read ``paths``, hand the packets out and
    analyse share 0, wait for the workers. ``progress``: a
    ``sensor.cli.progress.Progress`` shown while reading. The caller delivers the
    records (``Outcome.deliver``, unless ``fallback``) and calls ``cleanup()``."""
    from sensor.engine.bpf import capture_filters
    from sensor.io.capture import read_file
    from sensor.engine.ports import PortSet
    tmpdir = tempfile.mkdtemp(prefix="xfer-sensor-replay-")
    spools = [os.path.join(tmpdir, f"share{k}.spool") for k in range(n)]
    kids: list[tuple[int, int]] = []     # (pid, fd of its answer)
    feeds: list[int] = []
    writers: list[_Feed] = []
    try:
        for k in range(1, n):
            data_r, data_w = os.pipe()
            ans_r, ans_w = os.pipe()
            _widen(data_w)
            pid = os.fork()
            if pid == 0:     # the worker: never returns
                code = 0
                try:
                    os.close(ans_r)
                    os.close(data_w)
                    for fd in feeds:
                        os.close(fd)
                    out = pickle.dumps(("ok", _work(k, data_r, cfg, rules, spools[k], output)))
                except BaseException:   # reported to the parent, which fails loudly
                    out = pickle.dumps(("error", traceback.format_exc()))
                    code = 70
                try:
                    _write_all(ans_w, out)
                finally:
                    os._exit(code)
            os.close(data_r)
            os.close(ans_w)
            feeds.append(data_w)
            kids.append((pid, ans_r))
        results = []
        writers = [_Feed(fd) for fd in feeds]
        feeds = []
        fed: OSError | None = None      # a worker stopped reading: its own answer says why
        with open(spools[0], "wb", buffering=1 << 20) as out:
            pipe, spool = _share(cfg, rules, out)
            dist = _Distributor(writers, pipe, spool)
            handle = dist.handler()
            filters = capture_filters(PortSet(cfg.tracked_ports).filter_ports)
            handler_for = progress.wrap(lambda linktype: handle) if progress is not None else (lambda lt: handle)
            try:
                for path in paths:
                    if progress is not None:
                        progress.begin(path)
                    res = read_file(path, handler_for, filters)
                    if progress is not None:
                        progress.end(path)
                        if res.error:
                            progress.clear()
                    results.append((res.packets, res.error))
            except OSError as e:
                fed = e
            while writers:
                try:
                    writers.pop().close()
                except OSError as e:
                    fed = fed or e
            pipe.finish()
            spool.close()
        answers = [("ok", _report(pipe))]
        while kids:
            pid, r = kids.pop(0)
            data = _read_all(r)
            os.close(r)
            _, status = os.waitpid(pid, 0)
            if not data:
                raise RuntimeError(f"replay worker {pid} died (wait status {status})")
            answers.append(pickle.loads(data))
            if answers[-1][0] != "ok":
                raise RuntimeError("replay worker failed:\n" + answers[-1][1])
        if fed is not None:
            raise fed
    except BaseException:
        for pid, r in kids:        # first, so a feed blocked on a full pipe gets EPIPE
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
                os.close(r)
            except OSError:
                pass
        for fd in feeds:
            os.close(fd)
        for w in writers:
            try:
                w.close()
            except OSError:
                pass
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    outs = [out for _, out in answers]
    return Outcome(results, _sum_stats([o["stats"] for o in outs]), _fallback(outs), spools, tmpdir)


def _widen(fd: int) -> None:
    """A bigger pipe buffer (up to pipe-max-size): fewer stalls between the reader and a worker."""
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:
        pass


def _fallback(outs: list[dict]) -> str:
    """Why the workers' output may differ from one pipeline's ('' if it cannot)."""
    peak = {k: sum(o["peaks"][k] for o in outs) for k in outs[0]["peaks"]}
    bounds = outs[0]["bounds"]
    from sensor.engine.dispatch import MAX_FTPS_SESSIONS
    from sensor.engine.flows import EMERGENCY_ENTER, MAX_RECENT_KEYS
    if peak["filter_changes"]:
        return "the capture filter changed during the replay (a port below 1024 joined)"
    if peak["active"] >= EMERGENCY_ENTER * bounds["active"]:
        return "the flow table may have reached its emergency threshold"
    if peak["scan"] >= bounds["scan"]:
        return "an expiry scan may have reached flow_scan_budget"
    if peak["expectations"] > bounds["expectations"]:
        return "expected connections may have exceeded their bound"
    if peak["ftps"] >= MAX_FTPS_SESSIONS:
        return "FTPS sessions followed may have reached their bound"
    if peak["recent"] >= MAX_RECENT_KEYS:
        return "the uid memory may have been cleared"
    return ""


def _sum_stats(items: list[Any]) -> Any:
    """The workers' ``Pipeline.stats()`` added up (numbers summed, dicts
    merged key by key; a dict kept sorted when every worker's is)."""
    first = items[0]
    if isinstance(first, dict):
        keys: dict[Any, None] = {}
        for it in items:
            keys.update(dict.fromkeys(it))
        order = list(keys)
        if all(list(it) == sorted(it) for it in items):
            order.sort()
        return {k: _sum_stats([it[k] for it in items if k in it]) for k in order}
    if isinstance(first, bool) or not isinstance(first, int):
        return first
    return sum(items)
