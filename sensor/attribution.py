"""Process attribution: which process and account own a connection.

Endpoint mode asks this module, at the *first packet* of a target connection
(SYN for TCP, first datagram for UDP), who made it.  Short-lived clients (a
one-shot curl FTP control connection lives 6-13 ms, a ``tftp get`` 4-11 ms)
are gone long before a periodic ``psutil.net_connections()`` scan would see
them, so the lookup is made of cheap, targeted steps:

1. ``sockdiag``: the kernel's socket for exactly this 5-tuple (about 10 µs)
   gives its inode and the uid that created it;
2. the owning pid: ``/proc/<pid>/fd`` links are scanned for
   ``socket:[inode]``, newest process first (a short-lived client is among
   the newest), stopping at the first match and bounded by
   ``scan_time_budget_s`` / ``scan_max_fds``;
3. psutil for the details (name, exe, command line, user, parent, start time).

Caches (all bounded, sizes named below): inode -> pid, pid -> process details
(validated against the process start time and name, so a reused pid or an
``exec`` is noticed), recently exited processes (kept ``exited_ttl_s``
seconds after the exit was noticed) and recent connections -> pid, so a late
lookup -- the socket already closed, the process already gone -- still
resolves to the process seen earlier.  For UDP the recent-connection cache is
also keyed by local port alone: a TFTP transfer reuses the request's local
port with a new remote port.

When the socket is found but not its process (the process exited between the
first packet and the scan, the sensor may not read other users' ``fd``
folders, the scan budget ran out), the account of the socket's uid is still
reported, with ``AttributionSource == "uid-only"``.  A socket without an
owner (TIME-WAIT, orphaned after close: the kernel reports inode 0 and uid 0
for those) tells nothing: ``"none"``.

``Attributor`` is synchronous and not thread-safe; ``AsyncAttributor`` runs
one on a worker thread behind a bounded queue so that the packet path never
waits for it (see its docstring for how the pipeline uses it).

Privileges: sockdiag needs none; reading other users' ``/proc/<pid>/fd``
needs CAP_SYS_PTRACE (ptrace read access; CAP_DAC_READ_SEARCH is not enough
for ``fd`` links) -- without it only the sensor's own user's processes are
found and everything else is ``uid-only``.
"""
from __future__ import annotations

import bisect
import os
import pwd
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Hashable, Iterable

import psutil

from .sockdiag import PROTO_TCP, PROTO_UDP, STATE_LISTEN, STATE_TIME_WAIT, SockDiag, SockInfo

__all__ = [
    "Attribution", "Attributor", "AsyncAttributor", "AttributorConfig", "ProcInfo",
    "LatencyHistogram", "SOURCE_SOCKET", "SOURCE_UID_ONLY", "SOURCE_NONE", "SOURCE_LINKED",
    "NO_ATTRIBUTION",
]

SOURCE_SOCKET = "socket"
SOURCE_UID_ONLY = "uid-only"
SOURCE_NONE = "none"
# set by the pipeline for FTP data connections / TFTP transfers (never here)
SOURCE_LINKED = "linked-control-connection"

# -- named bounds (defaults of AttributorConfig / AsyncAttributor) --------------
INODE_CACHE_SIZE = 4096          # socket inode -> pid
PROC_CACHE_SIZE = 1024           # pid -> process details (live processes)
EXITED_CACHE_SIZE = 1024         # pid -> details of processes seen to exit
EXITED_TTL_S = 120.0             # how long an exited process's details are kept
RECENT_CONN_CACHE_SIZE = 8192    # connection 5-tuple (UDP: also local port) -> pid
RECENT_CONN_TTL_S = 120.0        # how long a connection's owner is remembered
SCAN_TIME_BUDGET_S = 0.010       # one /proc fd scan stops after this long ...
SCAN_MAX_FDS = 50_000            # ... or after examining this many fd links
RECENT_PIDS_FIRST = 8            # pids that owned recent sockets are scanned first
QUEUE_SIZE = 4096                # AsyncAttributor: pending lookups
MAX_RESULTS = 16384              # AsyncAttributor: finished, not yet collected results
LATENCY_SAMPLES = 2048           # latency summary: exact quantiles over the last N


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who made a connection, with Defender's DeviceNetworkEvents field names.

    Unknown text fields are ``""``, unknown ids ``0`` (as in the records)."""
    InitiatingProcessFileName: str = ""
    InitiatingProcessId: int = 0
    InitiatingProcessCommandLine: str = ""
    InitiatingProcessAccountName: str = ""
    InitiatingProcessParentFileName: str = ""
    InitiatingProcessCreationTime: str = ""      # ISO 8601 UTC with µs
    AttributionSource: str = SOURCE_NONE         # socket | uid-only | none | linked-control-connection
    InitiatingProcessFolderPath: str = ""        # the executable's full path
    InitiatingProcessParentId: int = 0
    InitiatingProcessAccountUid: int = -1        # -1: unknown
    AttributionDetail: str = ""                  # how exactly (for diagnostics and metrics)

    def fields(self) -> dict:
        """The fields as a dict (for a record's columns)."""
        return asdict(self)

    def linked(self) -> "Attribution":
        """This attribution, inherited by a linked connection (FTP data, TFTP transfer)."""
        return replace(self, AttributionSource=SOURCE_LINKED)

    @property
    def found(self) -> bool:
        return self.AttributionSource != SOURCE_NONE


NO_ATTRIBUTION = Attribution()


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    starttime: int        # clock ticks since boot (/proc/<pid>/stat field 22): identity with pid
    comm: str
    name: str
    exe: str
    cmdline: str
    uid: int              # real uid (what psutil's username() reports)
    username: str
    ppid: int
    parent_name: str
    create_time: str      # ISO 8601 UTC

    def attribution(self, source: str, detail: str) -> Attribution:
        return Attribution(
            InitiatingProcessFileName=self.name, InitiatingProcessId=self.pid,
            InitiatingProcessCommandLine=self.cmdline, InitiatingProcessAccountName=self.username,
            InitiatingProcessParentFileName=self.parent_name,
            InitiatingProcessCreationTime=self.create_time, AttributionSource=source,
            InitiatingProcessFolderPath=self.exe, InitiatingProcessParentId=self.ppid,
            InitiatingProcessAccountUid=self.uid, AttributionDetail=detail)


@dataclass
class AttributorConfig:
    inode_cache_size: int = INODE_CACHE_SIZE
    proc_cache_size: int = PROC_CACHE_SIZE
    exited_cache_size: int = EXITED_CACHE_SIZE
    exited_ttl_s: float = EXITED_TTL_S
    recent_conn_cache_size: int = RECENT_CONN_CACHE_SIZE
    recent_conn_ttl_s: float = RECENT_CONN_TTL_S
    scan_time_budget_s: float = SCAN_TIME_BUDGET_S
    scan_max_fds: int = SCAN_MAX_FDS
    recent_pids_first: int = RECENT_PIDS_FIRST


class LatencyHistogram:
    """Cumulative bucket counts (Prometheus style, µs) and exact quantiles
    over the last ``LATENCY_SAMPLES`` observations."""
    BOUNDS_US = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000,
                 250_000, 1_000_000)

    def __init__(self, samples: int = LATENCY_SAMPLES) -> None:
        self.counts = [0] * (len(self.BOUNDS_US) + 1)
        self.count = 0
        self.sum_us = 0.0
        self.max_us = 0.0
        self._ring: list[float] = []
        self._size = samples
        self._pos = 0

    def observe(self, us: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS_US, us)] += 1
        self.count += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us
        if len(self._ring) < self._size:
            self._ring.append(us)
        else:
            self._ring[self._pos] = us
            self._pos = (self._pos + 1) % self._size

    def summary(self) -> dict:
        r = sorted(self._ring)

        def q(p: float) -> float:
            return round(r[min(len(r) - 1, int(p * len(r)))], 1) if r else 0.0

        buckets = {}
        acc = 0
        for b, c in zip(self.BOUNDS_US + ("+Inf",), self.counts):
            acc += c
            buckets[str(b)] = acc
        return {"count": self.count, "mean_us": round(self.sum_us / self.count, 1) if self.count else 0.0,
                "p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "max_us": round(self.max_us, 1),
                "buckets_le_us": buckets}


class _LRU(OrderedDict):
    """A bounded mapping; ``put`` evicts the least recently put/used entry."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = max(1, size)

    def put(self, k, v) -> None:
        self[k] = v
        self.move_to_end(k)
        if len(self) > self.size:
            self.popitem(last=False)

    def use(self, k):
        v = self.get(k)
        if v is not None:
            self.move_to_end(k)
        return v


def _iso(ts: float) -> str:
    if not ts:
        return ""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond:06d}Z"


class Attributor:
    """Synchronous lookups: ``lookup(proto, local_ip, local_port, remote_ip, remote_port)``.

    ``proto`` is 6 (TCP) / 17 (UDP) or "tcp"/"udp".  The local side is the
    host's own end of the connection (the records' LocalIP/LocalPort).

    ``sockdiag``: a ``SockDiag`` (default: one for the current network
    namespace, opened on first use).  ``proc_root`` and ``clock`` exist for
    tests.
    """

    def __init__(self, config: AttributorConfig | None = None, sockdiag: SockDiag | None = None,
                 proc_root: str = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = config or AttributorConfig()
        self.sd = sockdiag if sockdiag is not None else SockDiag()
        self.proc = proc_root.rstrip("/")
        self.clock = clock
        c = self.cfg
        self._inode_pid: _LRU = _LRU(c.inode_cache_size)            # inode -> (pid, starttime)
        self._procs: _LRU = _LRU(c.proc_cache_size)                 # pid -> ProcInfo
        self._exited: OrderedDict[int, tuple[ProcInfo, float]] = OrderedDict()
        self._recent: OrderedDict[tuple, tuple[int, int, float]] = OrderedDict()
        self._recent_pids: list[int] = []
        self._users: dict[int, str] = {}
        self._self_pid = os.getpid()
        self.latency = LatencyHistogram()
        self.scan_latency = LatencyHistogram()
        self.counters: dict[str, int] = {
            "lookups": 0, "hits_socket": 0, "hits_uid_only": 0, "misses": 0,
            "inode_cache_hits": 0, "proc_cache_hits": 0, "exited_cache_hits": 0,
            "recent_conn_hits": 0, "scans": 0, "scan_found": 0, "scan_pids": 0, "scan_fds": 0,
            "scan_budget_exhausted": 0, "scan_permission_denied": 0, "details_failed": 0,
            "errors": 0,
        }
        self.details: dict[str, int] = {}

    # -- public --------------------------------------------------------------
    def lookup(self, proto: int | str, local_ip: str, local_port: int, remote_ip: str,
               remote_port: int) -> Attribution:
        t0 = time.perf_counter()
        try:
            res = self._lookup(_proto(proto), local_ip, int(local_port), remote_ip, int(remote_port))
        except Exception as e:  # never let attribution take the sensor down
            self.counters["errors"] += 1
            res = replace(NO_ATTRIBUTION, AttributionDetail=f"error:{type(e).__name__}")
        self.latency.observe((time.perf_counter() - t0) * 1e6)
        c = self.counters
        c["lookups"] += 1
        if res.AttributionSource == SOURCE_SOCKET:
            c["hits_socket"] += 1
        elif res.AttributionSource == SOURCE_UID_ONLY:
            c["hits_uid_only"] += 1
        else:
            c["misses"] += 1
        d = res.AttributionDetail.split(":", 1)[0]
        self.details[d] = self.details.get(d, 0) + 1
        return res

    def metrics(self) -> dict:
        m = dict(self.counters)
        m["by_detail"] = dict(self.details)
        m["latency"] = self.latency.summary()
        m["scan_latency"] = self.scan_latency.summary()
        m["sockdiag"] = self.sd.stats.as_dict()
        m["cache_sizes"] = {"inode": len(self._inode_pid), "procs": len(self._procs),
                            "exited": len(self._exited), "recent_conn": len(self._recent)}
        return m

    def close(self) -> None:
        self.sd.close()

    # -- steps ---------------------------------------------------------------
    def _lookup(self, proto: int, lip: str, lport: int, rip: str, rport: int) -> Attribution:
        now = self.clock()
        self._expire(now)
        key = (proto, lip, lport, rip, rport)
        si = self.sd.lookup(proto, lip, lport, rip, rport)
        if si is None or si.inode == 0:
            # no live socket: closed, TIME-WAIT or orphaned (inode 0, uid 0)
            got = self._from_recent(proto, key)
            if got is not None:
                return got
            if si is None:
                return replace(NO_ATTRIBUTION, AttributionDetail="no-socket")
            return replace(NO_ATTRIBUTION, AttributionDetail=(
                "time-wait" if si.state == STATE_TIME_WAIT else "orphaned-socket"))
        listen = si.state == STATE_LISTEN
        pid, why = self._owner(si.inode)
        if pid:
            info = self._proc_info(pid)
            if info is not None:
                if not listen:
                    self._remember(proto, key, info, now)
                detail = "listening-socket" if listen else why
                return info.attribution(SOURCE_SOCKET, detail)
            self.counters["details_failed"] += 1
            why = "exited-before-details"
        # the socket's uid is all we have
        return Attribution(
            InitiatingProcessId=pid or 0,
            InitiatingProcessAccountName=self._user(si.uid),
            InitiatingProcessAccountUid=si.uid, AttributionSource=SOURCE_UID_ONLY,
            AttributionDetail=why)

    def _owner(self, inode: int) -> tuple[int, str]:
        """(pid, how) of the process holding socket ``inode``; pid 0 when not found."""
        cached = self._inode_pid.use(inode)
        if cached is not None:
            pid, start = cached
            if self._starttime(pid) == start and self._holds(pid, inode):
                self.counters["inode_cache_hits"] += 1
                return pid, "inode-cache"
            del self._inode_pid[inode]
        return self._scan(inode)

    def _holds(self, pid: int, inode: int) -> bool:
        target = f"socket:[{inode}]"
        base = f"{self.proc}/{pid}/fd"
        try:
            for fd in os.listdir(base):
                try:
                    if os.readlink(f"{base}/{fd}") == target:
                        return True
                except OSError:
                    pass
        except OSError:
            pass
        return False

    def _pid_order(self) -> list[int]:
        """Pids newest first: below the last pid handed out, descending, then
        the pids above it (allocated before the pid counter wrapped)."""
        try:
            pids = [int(n) for n in os.listdir(self.proc) if n.isdigit()]
        except OSError:
            return []
        pids.sort(reverse=True)
        try:
            with open(f"{self.proc}/sys/kernel/ns_last_pid", "rb") as f:
                last = int(f.read())
        except (OSError, ValueError):
            return pids
        cut = next((i for i, p in enumerate(pids) if p <= last), len(pids))
        order = pids[cut:] + pids[:cut]
        if self._recent_pids:
            have = set(pids)
            first = [p for p in self._recent_pids if p in have]
            if first:
                fs = set(first)
                order = first + [p for p in order if p not in fs]
        return order

    def _scan(self, inode: int) -> tuple[int, str]:
        c = self.counters
        c["scans"] += 1
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.scan_time_budget_s
        max_fds = self.cfg.scan_max_fds
        target = f"socket:[{inode}]"
        proc = self.proc
        fds_seen = 0
        pids_seen = 0
        denied = False
        readlink = os.readlink
        result = (0, "not-found")
        for pid in self._pid_order():
            if fds_seen >= max_fds or time.perf_counter() > deadline:
                c["scan_budget_exhausted"] += 1
                result = (0, "scan-budget")
                break
            pids_seen += 1
            base = f"{proc}/{pid}/fd/"
            try:
                fds = os.listdir(base)
            except PermissionError:
                denied = True
                continue
            except OSError:
                continue
            fds_seen += len(fds)
            hit = False
            for fd in fds:
                try:
                    if readlink(base + fd) == target:
                        hit = True
                        break
                except OSError:
                    continue
            if hit:
                start = self._starttime(pid)
                if start is None:   # gone since
                    continue
                self._inode_pid.put(inode, (pid, start))
                if pid in self._recent_pids:
                    self._recent_pids.remove(pid)
                self._recent_pids.insert(0, pid)
                del self._recent_pids[self.cfg.recent_pids_first:]
                c["scan_found"] += 1
                result = (pid, "procfs-scan")
                break
        if denied and not result[0]:
            # some fd folders could not be read: the owner may be among them
            c["scan_permission_denied"] += 1
            if result[1] == "not-found":
                result = (0, "scan-permission-denied")
        c["scan_pids"] += pids_seen
        c["scan_fds"] += fds_seen
        self.scan_latency.observe((time.perf_counter() - t0) * 1e6)
        return result

    def _stat(self, pid: int) -> tuple[str, int, int] | None:
        """(comm, ppid, starttime) from /proc/<pid>/stat; None if gone (or a zombie)."""
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        lp, rp = raw.find(b"("), raw.rfind(b")")
        rest = raw[rp + 2:].split()
        if len(rest) < 20 or rest[0] == b"Z":
            return None
        return raw[lp + 1:rp].decode("utf-8", "replace"), int(rest[1]), int(rest[19])

    def _starttime(self, pid: int) -> int | None:
        st = self._stat(pid)
        return st[2] if st else None

    def _proc_info(self, pid: int, starttime: int | None = None) -> ProcInfo | None:
        """Details of ``pid`` (the process that started at ``starttime`` when
        given): from the cache when the process is unchanged, else psutil;
        a process that is gone is looked up among the recently exited."""
        st = self._stat(pid)
        if st is not None and starttime is not None and st[2] != starttime:
            st = None   # the pid was reused: the one we want is gone
        cached = self._procs.get(pid)
        if st is None:
            if cached is not None and (starttime is None or cached.starttime == starttime):
                self._procs.pop(pid, None)
                self._note_exit(cached)
                self.counters["exited_cache_hits"] += 1
                return cached
            ex = self._exited.get(pid)
            if ex is not None and (starttime is None or ex[0].starttime == starttime):
                self.counters["exited_cache_hits"] += 1
                return ex[0]
            return None
        comm, ppid, start = st
        if cached is not None:
            if cached.starttime == start and cached.comm == comm:
                self._procs.move_to_end(pid)
                self.counters["proc_cache_hits"] += 1
                return cached
            if cached.starttime != start:
                self._note_exit(cached)
        info = self._gather(pid, comm, ppid, start)
        if info is not None:
            self._procs.put(pid, info)
        return info

    def _gather(self, pid: int, comm: str, ppid: int, start: int) -> ProcInfo | None:
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                name = p.name()
                try:
                    exe = p.exe()
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    exe = ""
                try:
                    cmdline = " ".join(p.cmdline())
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    cmdline = ""
                uid = p.uids().real
                ctime = p.create_time()
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return None
        parent = ""
        if ppid > 0:
            pinfo = self._procs.get(ppid)
            pst = self._stat(ppid)
            if pinfo is not None and pst is not None and pinfo.starttime == pst[2]:
                parent = pinfo.name
            else:
                try:
                    parent = psutil.Process(ppid).name()
                except psutil.Error:
                    parent = pst[0] if pst else ""
        return ProcInfo(pid=pid, starttime=start, comm=comm, name=name, exe=exe, cmdline=cmdline,
                        uid=uid, username=self._user(uid), ppid=ppid, parent_name=parent,
                        create_time=_iso(ctime))

    def _user(self, uid: int) -> str:
        u = self._users.get(uid)
        if u is None:
            try:
                u = pwd.getpwuid(uid).pw_name
            except KeyError:
                u = str(uid)
            if len(self._users) < 4096:
                self._users[uid] = u
        return u

    # -- caches of the recent past ----------------------------------------------
    def _note_exit(self, info: ProcInfo) -> None:
        self._exited[info.pid] = (info, self.clock())
        self._exited.move_to_end(info.pid)
        while len(self._exited) > self.cfg.exited_cache_size:
            self._exited.popitem(last=False)

    def _remember(self, proto: int, key: tuple, info: ProcInfo, now: float) -> None:
        v = (info.pid, info.starttime, now)
        keys = [key]
        if proto == PROTO_UDP:
            keys.append((proto, key[1], key[2], None, None))
        for k in keys:
            self._recent[k] = v
            self._recent.move_to_end(k)
        while len(self._recent) > self.cfg.recent_conn_cache_size:
            self._recent.popitem(last=False)

    def _from_recent(self, proto: int, key: tuple) -> Attribution | None:
        got = self._recent.get(key)
        if got is None and proto == PROTO_UDP:
            got = self._recent.get((proto, key[1], key[2], None, None))
        if got is None:
            return None
        pid, start, _t = got
        info = self._proc_info(pid, start)
        if info is None:
            return None
        self.counters["recent_conn_hits"] += 1
        alive = pid in self._procs
        return info.attribution(SOURCE_SOCKET, "recent-connection" if alive else "exited-process")

    def _expire(self, now: float) -> None:
        ttl = self.cfg.exited_ttl_s
        ex = self._exited
        while ex:
            pid, (_info, t) = next(iter(ex.items()))
            if now - t <= ttl:
                break
            ex.popitem(last=False)
        ttl = self.cfg.recent_conn_ttl_s
        rc = self._recent
        while rc:
            k, (_p, _s, t) = next(iter(rc.items()))
            if now - t <= ttl:
                break
            rc.popitem(last=False)


def _proto(p: int | str) -> int:
    if isinstance(p, str):
        p = {"tcp": PROTO_TCP, "udp": PROTO_UDP}[p.lower()]
    if p not in (PROTO_TCP, PROTO_UDP):
        raise ValueError(f"protocol {p}: only TCP (6) and UDP (17)")
    return p


ConnTuple = tuple  # (proto, local_ip, local_port, remote_ip, remote_port)


class AsyncAttributor:
    """An ``Attributor`` on a worker thread, fed by a bounded queue.

    The packet path calls ``submit(key, tuple)`` at a target connection's
    first packet: it never blocks (a full queue drops the request and counts
    it in ``queue_drops``).  Results are collected either with ``get(key,
    wait_s)`` -- waits at most ``wait_s`` for a submitted key, returns None
    at once for a key that was never submitted or was dropped -- or in bulk
    with ``poll()``.  A collected result is removed; uncollected ones are
    bounded by ``max_results`` (oldest dropped, counted in
    ``result_drops``).  The same key submitted again while pending is not
    queued twice.

    Intended use in the pipeline::

        att = AsyncAttributor(); att.start()
        # first packet of a target flow (SYN / first datagram):
        att.submit(flow.uid, (proto, local_ip, local_port, remote_ip, remote_port))
        # now and then (e.g. once per batch of packets): attach finished results
        for uid, a in att.poll(): flows_by_uid[uid].attribution = a
        # when the flow's record is built and it has no attribution yet:
        a = att.get(flow.uid, wait_s=0.05) or NO_ATTRIBUTION
        # linked FTP data / TFTP transfer: control_attribution.linked()
        att.stop()

    The worker is a Python thread: it shares the GIL with the packet path,
    but a lookup is short (tens to hundreds of µs) and the packet path never
    waits on a lock held during a lookup.
    """

    _STOP_POLL_S = 0.2

    def __init__(self, attributor: Attributor | None = None,
                 factory: Callable[[], Attributor] | None = None,
                 queue_size: int = QUEUE_SIZE, max_results: int = MAX_RESULTS) -> None:
        # the Attributor (and its netlink socket) is made on the worker thread
        # when only a factory is given
        self._att = attributor
        self._factory = factory or Attributor
        self._q: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._cond = threading.Condition()
        self._results: OrderedDict[Hashable, Attribution] = OrderedDict()
        self._pending: set = set()
        self._max_results = max(1, max_results)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.delay = LatencyHistogram()     # submit -> result ready
        self.counters = {"submitted": 0, "duplicates": 0, "queue_drops": 0, "completed": 0,
                         "result_drops": 0, "collected": 0, "wait_timeouts": 0, "worker_errors": 0}

    @property
    def attributor(self) -> Attributor | None:
        return self._att

    def start(self) -> "AsyncAttributor":
        if self._thread is None:
            self._stop.clear()
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,),
                                            name="xfer-attribution", daemon=True)
            self._thread.start()
            ready.wait(5.0)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._att is not None:
            self._att.close()

    def __enter__(self) -> "AsyncAttributor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def submit(self, key: Hashable, conn: ConnTuple) -> bool:
        """Queue a lookup; False when it was dropped (queue full)."""
        with self._cond:
            if key in self._pending:
                self.counters["duplicates"] += 1
                return True
            try:
                self._q.put_nowait((key, conn, time.perf_counter()))
            except queue.Full:
                self.counters["queue_drops"] += 1
                return False
            self._pending.add(key)
            self.counters["submitted"] += 1
        return True

    def get(self, key: Hashable, wait_s: float = 0.0) -> Attribution | None:
        """The result for ``key``, waiting at most ``wait_s`` while it is pending."""
        deadline = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while key not in self._results:
                if key not in self._pending:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    self.counters["wait_timeouts"] += 1
                    return None
                self._cond.wait(left)
            self.counters["collected"] += 1
            return self._results.pop(key)

    def poll(self) -> list[tuple[Hashable, Attribution]]:
        """Every finished result not collected yet (and forget them)."""
        with self._cond:
            if not self._results:
                return []
            out = list(self._results.items())
            self._results.clear()
            self.counters["collected"] += len(out)
        return out

    def pending(self, key: Hashable) -> bool:
        with self._cond:
            return key in self._pending

    def metrics(self) -> dict:
        m = dict(self.counters)
        m["queue_depth"] = self._q.qsize()
        m["delay"] = self.delay.summary()
        if self._att is not None:
            m["attributor"] = self._att.metrics()
        return m

    def _run(self, ready: threading.Event) -> None:
        if self._att is None:
            self._att = self._factory()
        ready.set()
        att = self._att
        q = self._q
        while not self._stop.is_set():
            try:
                key, conn, t_sub = q.get(timeout=self._STOP_POLL_S)
            except queue.Empty:
                continue
            try:
                res = att.lookup(*conn)
            except Exception as e:   # lookup() already catches; belt and braces
                self.counters["worker_errors"] += 1
                res = replace(NO_ATTRIBUTION, AttributionDetail=f"error:{type(e).__name__}")
            with self._cond:
                self._pending.discard(key)
                self._results[key] = res
                if len(self._results) > self._max_results:
                    self._results.popitem(last=False)
                    self.counters["result_drops"] += 1
                self.counters["completed"] += 1
                self.delay.observe((time.perf_counter() - t_sub) * 1e6)
                self._cond.notify_all()

