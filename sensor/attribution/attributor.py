"""Process attribution: which process and account own a connection.

Endpoint mode asks this module, at the *first packet* of a target connection
(SYN for TCP, first datagram for UDP), who made it.  Short-lived clients (a
one-shot curl FTP control connection lives 6-13 ms, a ``tftp get`` 4-11 ms)
are gone long before a periodic ``psutil.net_connections()`` scan would see
them, so the lookup is made of cheap, targeted steps:

1. ``sockdiag``: the kernel's socket for exactly this 5-tuple (~10-100 µs)
   gives its inode and the uid that created it;
2. the owning pid: ``/proc/<pid>/fd`` links are scanned for
   ``socket:[inode]``, newest process first (the pids just below the
   kernel's last handed-out pid are probed before /proc is even listed: a
   short-lived client is among them), stopping at the first match and
   bounded by ``scan_time_budget_s`` / ``scan_max_fds``;
3. the details psutil would give (``name()``, ``exe()``, ``cmdline()``,
   ``username()``, ``ppid()`` -> parent name, ``create_time()``), read straight
   from /proc, the short-lived parts first: psutil.Process + oneshot costs
   0.3-0.5 ms here, which is part of a short-lived client's lifetime.

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
for those) tells nothing: ``"none"``.  An inbound connection not accepted
yet is attributed to its listener (``AttributionDetail`` "listening-socket").

Who runs the lookups:

* ``Attributor`` -- synchronous, not thread-safe;
* ``AsyncAttributor`` -- one Attributor on a worker thread behind a bounded
  queue: ``submit()`` from the packet path never blocks, ``get(key,
  wait_s)`` / ``poll()`` collect;
* ``FirstPacketTap`` -- an AF_PACKET socket that sees SYNs and UDP datagrams
  the moment they pass (libpcap without immediate mode delivers them 1-7 ms
  late) and looks them up on its own thread;
* ``AttributionHelper`` -- tap + lookups in a separate single-threaded
  process with real-time scheduling, results back over a pipe: the one that
  keeps up on a loaded host (see its docstring for the figures).

Privileges (measured in tests/test_attribution.py, unprivileged user with
ambient capabilities): sockdiag needs none; naming another user's process
needs CAP_SYS_PTRACE *and* CAP_DAC_READ_SEARCH (the first to read the fd
links, the second to list the fd folder) -- with either alone, or none,
other users' connections are ``uid-only`` (account still right).  The tap
needs CAP_NET_RAW; SCHED_FIFO for the helper CAP_SYS_NICE (else it falls
back to a short EEVDF slice, unprivileged).
"""

from __future__ import annotations

import bisect
import logging
import os
import pwd
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psutil

from sensor.attribution.sockdiag import PROTO_TCP, PROTO_UDP, STATE_LISTEN, STATE_TIME_WAIT, SockDiag
from sensor.engine.decode import ETHERTYPE_IPV4, ETHERTYPE_IPV6, VLAN_TPIDS, locate

log = logging.getLogger("xfer-sensor")

__all__ = [
    "Attribution",
    "Attributor",
    "AsyncAttributor",
    "AttributorConfig",
    "ProcInfo",
    "LatencyHistogram",
    "SOURCE_SOCKET",
    "SOURCE_UID_ONLY",
    "SOURCE_NONE",
    "SOURCE_LINKED",
    "NO_ATTRIBUTION",
    "FirstPacketTap",
    "tap_filter",
    "AttributionHelper",
]

SOURCE_SOCKET = "socket"
SOURCE_UID_ONLY = "uid-only"
SOURCE_NONE = "none"
# set by the pipeline for FTP data connections / TFTP transfers (never here)
SOURCE_LINKED = "linked-control-connection"

# -- named bounds (defaults of AttributorConfig / AsyncAttributor) --------------
INODE_CACHE_SIZE = 4096  # socket inode -> pid
PROC_CACHE_SIZE = 1024  # pid -> process details (live processes)
EXITED_CACHE_SIZE = 1024  # pid -> details of processes seen to exit
EXITED_TTL_S = 120.0  # how long an exited process's details are kept
RECENT_CONN_CACHE_SIZE = 8192  # connection 5-tuple (UDP: also local port) -> pid
RECENT_CONN_TTL_S = 120.0  # how long a connection's owner is remembered
SCAN_TIME_BUDGET_S = 0.010  # one /proc fd scan stops after this long ...
SCAN_MAX_FDS = 50_000  # ... or after examining this many fd links
SCAN_NEWEST_PIDS = 64  # pids just below the last one handed out: probed first
RECENT_PIDS_FIRST = 8  # then the pids that owned recent sockets
# a long scan lets newer connection starts go first this often (``lookup(yield_to=)``):
# a whole-/proc scan takes ~5-10 ms on a busy host, as long as a short-lived
# client lives, and the client that started during it must not wait for it
SCAN_YIELD_EVERY_S = 0.0002
QUEUE_SIZE = 4096  # AsyncAttributor: pending lookups
MAX_RESULTS = 16384  # AsyncAttributor: finished, not yet collected results
LATENCY_SAMPLES = 2048  # latency summary: exact quantiles over the last N


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who made a connection, with Defender's DeviceNetworkEvents field names.

    Unknown text fields are ``""``, unknown ids ``0`` (as in the records)."""

    InitiatingProcessFileName: str = ""
    InitiatingProcessId: int = 0
    InitiatingProcessCommandLine: str = ""
    InitiatingProcessAccountName: str = ""
    InitiatingProcessParentFileName: str = ""
    InitiatingProcessCreationTime: str = ""  # ISO 8601 UTC with µs
    AttributionSource: str = SOURCE_NONE  # socket | uid-only | none | linked-control-connection
    InitiatingProcessFolderPath: str = ""  # the executable's full path
    InitiatingProcessParentId: int = 0
    InitiatingProcessAccountUid: int = -1  # -1: unknown
    AttributionDetail: str = ""  # how exactly (for diagnostics and metrics)

    def fields(self) -> dict:
        """The fields as a dict (for a record's columns)."""
        return asdict(self)

    def linked(self) -> Attribution:
        """This attribution, inherited by a linked connection (FTP data, TFTP transfer)."""
        return replace(self, AttributionSource=SOURCE_LINKED)

    @property
    def found(self) -> bool:
        return self.AttributionSource != SOURCE_NONE


NO_ATTRIBUTION = Attribution()


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    starttime: int  # clock ticks since boot (/proc/<pid>/stat field 22): identity with pid
    comm: str
    name: str
    exe: str
    cmdline: str
    uid: int  # real uid (what psutil's username() reports)
    username: str
    ppid: int
    parent_name: str
    create_time: str  # ISO 8601 UTC

    def attribution(self, source: str, detail: str) -> Attribution:
        return Attribution(
            InitiatingProcessFileName=self.name,
            InitiatingProcessId=self.pid,
            InitiatingProcessCommandLine=self.cmdline,
            InitiatingProcessAccountName=self.username,
            InitiatingProcessParentFileName=self.parent_name,
            InitiatingProcessCreationTime=self.create_time,
            AttributionSource=source,
            InitiatingProcessFolderPath=self.exe,
            InitiatingProcessParentId=self.ppid,
            InitiatingProcessAccountUid=self.uid,
            AttributionDetail=detail,
        )


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
    scan_newest_pids: int = SCAN_NEWEST_PIDS
    recent_pids_first: int = RECENT_PIDS_FIRST
    scan_yield_every_s: float = SCAN_YIELD_EVERY_S


class LatencyHistogram:
    """Cumulative bucket counts (Prometheus style, µs) and exact quantiles
    over the last ``LATENCY_SAMPLES`` observations."""

    BOUNDS_US = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)

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
        return {
            "count": self.count,
            "mean_us": round(self.sum_us / self.count, 1) if self.count else 0.0,
            "p50_us": q(0.50),
            "p90_us": q(0.90),
            "p99_us": q(0.99),
            "max_us": round(self.max_us, 1),
            "buckets_le_us": buckets,
        }


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


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# an inbound TCP connection not accept()ed yet has no inode: NEW_SYN_RECV /
# SYN_RECV during the handshake, then ESTABLISHED (or CLOSE_WAIT) in the
# accept queue; an orphan of a closed socket is never in these states
_UNACCEPTED_STATES = (1, 3, 8, 12)
_Stat = tuple  # (comm, ppid, starttime)
_PF_EXITING = 0x4  # task flags (/proc/<pid>/stat field 9): in do_exit()
_PF_KTHREAD = 0x200000


def _iso(ts: float) -> str:
    if not ts:
        return ""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond:06d}Z"


class Attributor:
    """Synchronous lookups: ``lookup(proto, local_ip, local_port, remote_ip, remote_port)``.

    ``proto`` is 6 (TCP) / 17 (UDP) or "tcp"/"udp".  The local side is the
    host's own end of the connection (the records' LocalIP/LocalPort).

    ``sockdiag``: a ``SockDiag`` (default: one for the current network
    namespace, opened on first use).  ``proc_root`` and ``clock`` exist for
    tests.
    """

    def __init__(
        self,
        config: AttributorConfig | None = None,
        sockdiag: SockDiag | None = None,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = config or AttributorConfig()
        self.sd = sockdiag if sockdiag is not None else SockDiag()
        self.proc = proc_root.rstrip("/")
        self.clock = clock
        c = self.cfg
        self._inode_pid: _LRU = _LRU(c.inode_cache_size)  # inode -> (pid, starttime, fd)
        self._procs: _LRU = _LRU(c.proc_cache_size)  # pid -> ProcInfo
        self._exited: OrderedDict[int, tuple[ProcInfo, float]] = OrderedDict()
        self._recent: OrderedDict[tuple, tuple[int, int, float]] = OrderedDict()
        self._recent_pids: list[int] = []
        self._users: dict[int, str] = {}
        self._last_pid_fd: int | None = None
        self._boot_time: float | None = None
        self.latency = LatencyHistogram()
        self.scan_latency = LatencyHistogram()
        self.counters: dict[str, int] = {
            "lookups": 0,
            "hits_socket": 0,
            "hits_uid_only": 0,
            "misses": 0,
            "inode_cache_hits": 0,
            "proc_cache_hits": 0,
            "exited_cache_hits": 0,
            "recent_conn_hits": 0,
            "scans": 0,
            "scan_found": 0,
            "scan_pids": 0,
            "scan_fds": 0,
            "scan_budget_exhausted": 0,
            "scan_permission_denied": 0,
            "details_failed": 0,
            "exiting_owner": 0,
            "exiting_candidates": 0,
            "scan_yields": 0,
            "errors": 0,
        }
        self.details: dict[str, int] = {}
        self._yield_to: Callable[[], object] | None = None

    # -- public --------------------------------------------------------------
    def lookup(
        self,
        proto: int | str,
        local_ip: str,
        local_port: int,
        remote_ip: str,
        remote_port: int,
        yield_to: Callable[[], object] | None = None,
    ) -> Attribution:
        """Who owns this connection's socket.  ``yield_to``: called every
        ``scan_yield_every_s`` during a long /proc scan -- the helper looks up
        the connections that started meanwhile there (nested lookups, which do
        not yield again), so a scan for an old or vanished owner never makes a
        new short-lived client wait.  Its time is not taken from the scan's
        budget."""
        t0 = time.perf_counter()
        outer, self._yield_to = self._yield_to, yield_to
        try:
            res = self._lookup(_proto(proto), local_ip, int(local_port), remote_ip, int(remote_port))
        except Exception as e:  # never let attribution take the sensor down
            self.counters["errors"] += 1
            res = replace(NO_ATTRIBUTION, AttributionDetail=f"error:{type(e).__name__}")
        finally:
            self._yield_to = outer
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
        m: dict[str, Any] = dict(self.counters)
        m["by_detail"] = dict(self.details)
        m["latency"] = self.latency.summary()
        m["scan_latency"] = self.scan_latency.summary()
        m["sockdiag"] = self.sd.stats.as_dict()
        m["cache_sizes"] = {
            "inode": len(self._inode_pid),
            "procs": len(self._procs),
            "exited": len(self._exited),
            "recent_conn": len(self._recent),
        }
        return m

    def close(self) -> None:
        self.sd.close()
        if self._last_pid_fd is not None:
            os.close(self._last_pid_fd)
            self._last_pid_fd = None

    # -- steps ---------------------------------------------------------------
    def _lookup(self, proto: int, lip: str, lport: int, rip: str, rport: int) -> Attribution:
        now = self.clock()
        self._expire(now)
        key = (proto, lip, lport, rip, rport)
        si = self.sd.lookup(proto, lip, lport, rip, rport)
        if si is not None and si.inode == 0 and si.state in _UNACCEPTED_STATES and proto == PROTO_TCP:
            # an inbound connection not accepted yet has no owner of its own:
            # the process is the listener's
            wild = "::" if ":" in lip else "0.0.0.0"
            lst = self.sd.lookup(proto, lip, lport, wild, 0)
            if lst is not None and lst.state == STATE_LISTEN:
                si = lst
        if si is None or si.inode == 0:
            # no live socket: closed, TIME-WAIT or orphaned (inode 0, uid 0)
            got = self._from_recent(proto, key)
            if got is not None:
                return got
            if si is None:
                return replace(NO_ATTRIBUTION, AttributionDetail="no-socket")
            return replace(
                NO_ATTRIBUTION, AttributionDetail=("time-wait" if si.state == STATE_TIME_WAIT else "orphaned-socket")
            )
        listen = si.state == STATE_LISTEN
        pid, st, why = self._owner(si.inode, si.uid)
        if pid:
            info = self._proc_info(pid, st=st, sock_uid=si.uid)
            if info is not None:
                if not listen:
                    self._remember(proto, key, info, now)
                return info.attribution(SOURCE_SOCKET, "listening-socket" if listen else why)
            self.counters["details_failed"] += 1
            why = "exited-before-details"
        # the socket's uid is all we have
        return Attribution(
            InitiatingProcessId=pid or 0,
            InitiatingProcessAccountName=self._user(si.uid),
            InitiatingProcessAccountUid=si.uid,
            AttributionSource=SOURCE_UID_ONLY,
            AttributionDetail=why,
        )

    def _owner(self, inode: int, uid: int = -1) -> tuple[int, _Stat | None, str]:
        """(pid, its stat, how) of the process holding socket ``inode``; pid 0 when not found."""
        cached = self._inode_pid.use(inode)
        if cached is not None:
            pid, start, fd = cached
            st = self._stat(pid)
            if (
                st is not None
                and st[2] == start
                and self._readlink(f"{self.proc}/{pid}/fd/{fd}") == f"socket:[{inode}]"
            ):
                self.counters["inode_cache_hits"] += 1
                return pid, st, "inode-cache"
            del self._inode_pid[inode]
        return self._scan(inode, uid)

    def _fd_of(self, pid: int, target: str) -> str | None:
        base = f"{self.proc}/{pid}/fd/"
        try:
            for fd in os.listdir(base):
                if self._readlink(base + fd) == target:
                    return fd
        except OSError:
            pass
        return None

    @staticmethod
    def _readlink(path: str) -> str:
        try:
            return os.readlink(path)
        except OSError:
            return ""

    def _last_pid(self) -> int:
        """The last pid the kernel handed out (0 if unknown)."""
        try:
            if self._last_pid_fd is None:
                self._last_pid_fd = os.open(f"{self.proc}/sys/kernel/ns_last_pid", os.O_RDONLY | os.O_CLOEXEC)
            return int(os.pread(self._last_pid_fd, 32, 0))
        except (OSError, ValueError):
            return 0

    def _candidates(self, last: int) -> Iterable[tuple[int, bool]]:
        """Pids to scan, newest first.

        1. the ``scan_newest_pids`` pids just below the last pid handed out,
           probed without listing /proc (a thread id there is resolved to
           its process on a hit);
        2. the owners of recently found sockets (a long-lived client
           opening connection after connection);
        3. every other process, newest first: below the last pid, descending,
           then the ones above it (started before the pid counter wrapped)."""
        seen: set[int] = set()
        if last > 0:
            for pid in range(last, max(0, last - self.cfg.scan_newest_pids), -1):
                seen.add(pid)
                yield pid, True
        for pid in list(self._recent_pids):
            if pid not in seen:
                seen.add(pid)
                yield pid, False
        try:
            pids = [int(n) for n in os.listdir(self.proc) if n.isdigit()]
        except OSError:
            return
        pids.sort(reverse=True)
        if last > 0:
            cut = next((i for i, p in enumerate(pids) if p <= last), len(pids))
            pids = pids[cut:] + pids[:cut]
        for pid in pids:
            if pid not in seen:
                yield pid, False

    def _scan(self, inode: int, uid: int = -1) -> tuple[int, _Stat | None, str]:
        """Scan /proc/<pid>/fd for ``socket:[inode]`` within the budget.

        Not found while the socket still has an inode: its owner is most
        likely exiting -- the kernel empties a process's fd table
        (exit_files) before it releases the files (exit_task_work), and a
        client that ends as its lookup starts (a one-block TFTP get) is
        caught in between.  The processes whose fd table was empty in the
        scan are then checked: exactly one exiting (PF_EXITING) process of
        the socket's uid is the owner (``_exiting_owner``)."""
        c = self.counters
        c["scans"] += 1
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.scan_time_budget_s
        max_fds = self.cfg.scan_max_fds
        target = f"socket:[{inode}]"
        proc = self.proc
        fds_seen = pids_seen = 0
        denied = False
        empty: list[int] = []  # fd tables found empty: kernel threads, exiting processes
        readlink = os.readlink
        listdir = os.listdir
        clock = time.perf_counter
        result: tuple[int, _Stat | None, str] = (0, None, "not-found")
        yield_to = self._yield_to
        every = self.cfg.scan_yield_every_s
        next_yield = t0 + every
        for pid, probed in self._candidates(self._last_pid()):
            if yield_to is not None and clock() >= next_yield:
                t_y = clock()
                yield_to()
                c["scan_yields"] += 1
                deadline += clock() - t_y
                next_yield = clock() + every
            if fds_seen >= max_fds or clock() > deadline:
                c["scan_budget_exhausted"] += 1
                result = (0, None, "scan-budget")
                break
            base = f"{proc}/{pid}/fd/"
            try:
                fds = listdir(base)
            except FileNotFoundError:
                continue
            except PermissionError:
                denied = denied or self._hides_fds(pid, uid)
                pids_seen += 1
                continue
            except OSError:
                continue
            pids_seen += 1
            if not fds:
                empty.append(pid)
                continue
            fds_seen += len(fds)
            hit = None
            for i, fd in enumerate(fds):
                try:
                    if readlink(base + fd) == target:
                        hit = fd
                        break
                except PermissionError:
                    # listable (CAP_DAC_READ_SEARCH) but not ptrace-readable -- or
                    # the process exited meanwhile (the kernel answers EACCES then too)
                    denied = denied or self._hides_fds(pid, uid)
                    break
                except OSError:
                    continue
                if i & 63 == 63 and clock() > deadline:
                    break
            if hit is None:
                continue
            if probed:
                tgid = self._tgid(pid)
                if tgid != pid:  # a thread id: the process is its thread group
                    pid = tgid
                    hit = self._fd_of(pid, target) or hit
            st = self._stat(pid)
            if st is None:  # gone (or a zombie) since
                continue
            self._inode_pid.put(inode, (pid, st[2], hit))
            if pid in self._recent_pids:
                self._recent_pids.remove(pid)
            self._recent_pids.insert(0, pid)
            del self._recent_pids[self.cfg.recent_pids_first :]
            c["scan_found"] += 1
            result = (pid, st, "procfs-scan")
            break
        if not result[0] and result[2] == "not-found" and uid >= 0 and empty:
            result = self._exiting_owner(uid, empty)
        if denied and not result[0]:
            # some fd folders could not be read: the owner may be among them
            c["scan_permission_denied"] += 1
            if result[2] == "not-found":
                result = (0, None, "scan-permission-denied")
        c["scan_pids"] += pids_seen
        c["scan_fds"] += fds_seen
        self.scan_latency.observe((time.perf_counter() - t0) * 1e6)
        return result

    def _hides_fds(self, pid: int, uid: int) -> bool:
        """A live process whose fds we may not read could own a socket of
        ``uid``: one of that uid (any, when the socket's uid is unknown).
        Others -- pid 1 in a VM or container, say -- say nothing about it."""
        if self._stat(pid) is None:
            return False
        if uid < 0:
            return True
        real = self._real_uid(pid)
        return real is None or real == uid

    def _real_uid(self, pid: int) -> int | None:
        """The real uid of ``pid`` (/proc/<pid>/status), None if unreadable."""
        status = self._read(f"{self.proc}/{pid}/status") or b""
        i = status.find(b"\nUid:")
        if i < 0:
            return None
        try:
            return int(status[i + 5 : status.find(b"\n", i + 1)].split()[0])
        except (ValueError, IndexError):
            return None

    def _exiting_owner(self, uid: int, pids: list[int]) -> tuple[int, _Stat | None, str]:
        """The one exiting process of ``uid`` among ``pids`` (whose fd tables
        were empty): (pid, (comm, ppid, starttime), "exiting-process").
        Several: (0, None, "exiting-ambiguous"), none: "not-found".  Its
        command line and executable are gone with its memory by then; its
        name (comm), parent, start time and account remain."""
        found: list[tuple[int, _Stat]] = []
        for pid in pids:
            got = self._stat_fields(pid)
            if got is None:
                continue
            comm, rest = got
            flags = int(rest[6])
            if not flags & _PF_EXITING or flags & _PF_KTHREAD or self._real_uid(pid) != uid:
                continue
            found.append((pid, (comm, int(rest[1]), int(rest[19]))))  # a zombie too: _stat() would refuse it
        self.counters["exiting_candidates"] += len(found)
        if len(found) == 1:
            self.counters["exiting_owner"] += 1
            return found[0][0], found[0][1], "exiting-process"
        return (0, None, "exiting-ambiguous") if found else (0, None, "not-found")

    def _read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb", buffering=0) as f:
                return f.read()
        except OSError:
            return None

    def _stat_fields(self, pid: int) -> tuple[str, list[bytes]] | None:
        """(comm, the fields after it) of /proc/<pid>/stat; None if gone.
        After comm: state ppid pgrp session tty_nr tpgid flags minflt cminflt
        majflt cmajflt utime stime cutime cstime priority nice num_threads
        itrealvalue starttime ..."""
        raw = self._read(f"{self.proc}/{pid}/stat")
        if raw is None:
            return None
        lp, rp = raw.find(b"("), raw.rfind(b")")
        rest = raw[rp + 2 :].split()
        if len(rest) < 20:
            return None
        return raw[lp + 1 : rp].decode("utf-8", "replace"), rest

    def _stat(self, pid: int) -> _Stat | None:
        """(comm, ppid, starttime) from /proc/<pid>/stat; None if gone or a zombie."""
        got = self._stat_fields(pid)
        if got is None or got[1][0] in (b"Z", b"X"):
            return None
        comm, rest = got
        return comm, int(rest[1]), int(rest[19])

    def _tgid(self, pid: int) -> int:
        """The process (thread group) of a thread id; ``pid`` itself for a process.

        /proc/<tid> of any thread is valid (though not listed), so a scan that
        probes ids directly can land on a thread."""
        raw = self._read(f"{self.proc}/{pid}/status")
        if raw:
            i = raw.find(b"\nTgid:")
            if i >= 0:
                try:
                    return int(raw[i + 6 : raw.find(b"\n", i + 1)])
                except ValueError:
                    pass
        return pid

    def _proc_info(
        self, pid: int, starttime: int | None = None, st: _Stat | None = None, sock_uid: int = -1
    ) -> ProcInfo | None:
        """Details of ``pid`` (the process that started at ``starttime`` when
        given): from the cache when the process is unchanged, else read now;
        a process that is gone is looked up among the recently exited."""
        if st is None:
            st = self._stat(pid)
        if st is not None and starttime is not None and st[2] != starttime:
            st = None  # the pid was reused: the one we want is gone
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
        info = self._gather(pid, comm, ppid, start, sock_uid)
        self._procs.put(pid, info)
        return info

    def _gather(self, pid: int, comm: str, ppid: int, start: int, sock_uid: int) -> ProcInfo:
        """Read a live process's details, the short-lived parts first.

        The same values psutil gives (``name()`` -- comm, extended from the
        command line when the kernel cut it at 15 characters --, ``exe()``,
        ``cmdline()``, ``uids().real``, ``create_time()``), read straight
        from /proc: psutil.Process + oneshot costs ~0.3-0.5 ms here, three
        reads ~50 µs, and a short-lived client may be gone in between.  Once
        we have the stat line, whatever is missing (the process exited
        meanwhile) stays empty; the uid then comes from the socket."""
        base = f"{self.proc}/{pid}/"
        raw = self._read(base + "cmdline") or b""
        argv = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]
        if argv and argv[-1] == "":
            argv.pop()
        exe = self._readlink(base + "exe")
        if exe.endswith(" (deleted)"):
            exe = exe[:-10]
        uid = self._real_uid(pid)
        if uid is None:
            uid = sock_uid
        name = comm
        if len(comm) >= 15 and argv:
            ext = os.path.basename(argv[0])
            if ext.startswith(comm):
                name = ext
        if self._boot_time is None:
            self._boot_time = psutil.boot_time()
        ctime = start / _CLOCK_TICKS + self._boot_time
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
        return ProcInfo(
            pid=pid,
            starttime=start,
            comm=comm,
            name=name,
            exe=exe,
            cmdline=" ".join(argv),
            uid=uid,
            username=self._user(uid) if uid >= 0 else "",
            ppid=ppid,
            parent_name=parent,
            create_time=_iso(ctime),
        )

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


ConnTuple = tuple[int | str, str, int, str, int]  # (proto, local_ip, local_port, remote_ip, remote_port)


class AsyncAttributor:
    """An ``Attributor`` on a worker thread, fed by a bounded queue.

    The packet path calls ``submit(key, tuple)`` at a target connection's
    first packet: it never blocks (a full queue drops the request and counts
    it in ``queue_drops``; submit() returns False).  Results are collected
    either with ``get(key, wait_s)`` -- waits at most ``wait_s`` for the
    key's result -- or in bulk with ``poll()``.  A collected result is removed; uncollected ones are
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

    def __init__(
        self,
        attributor: Attributor | None = None,
        factory: Callable[[], Attributor] | None = None,
        queue_size: int = QUEUE_SIZE,
        max_results: int = MAX_RESULTS,
    ) -> None:
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
        self._lookup_lock = threading.Lock()  # one Attributor, used by one thread at a time
        self.delay = LatencyHistogram()  # submit -> result ready
        self.counters = {
            "submitted": 0,
            "duplicates": 0,
            "queue_drops": 0,
            "completed": 0,
            "inline": 0,
            "result_drops": 0,
            "collected": 0,
            "wait_timeouts": 0,
            "worker_errors": 0,
        }

    @property
    def attributor(self) -> Attributor | None:
        return self._att

    def start(self) -> AsyncAttributor:
        if self._thread is None:
            self._stop.clear()
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), name="xfer-attribution", daemon=True)
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

    def __enter__(self) -> AsyncAttributor:
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

    def lookup_now(self, key: Hashable, conn: ConnTuple) -> Attribution:
        """Look up in the *calling* thread and keep the result for get()/poll().

        For a thread that is beside the packet path and already awake when a
        connection starts (``FirstPacketTap``): handing over to the worker
        costs a second thread wake-up, which on a busy machine waits for a
        scheduler slice (measured: ~3 ms on 2 busy cores) -- as long as a
        short-lived client lives.  Never call this from the packet path."""
        res = self._lookup(conn)
        with self._cond:
            self._pending.discard(key)
            self._store(key, res)
            self.counters["inline"] += 1
            self._cond.notify_all()
        return res

    def _lookup(self, conn: ConnTuple) -> Attribution:
        if self._att is None:
            with self._lookup_lock:
                if self._att is None:
                    self._att = self._factory()
        try:
            with self._lookup_lock:
                return self._att.lookup(*conn)
        except Exception as e:  # Attributor.lookup() already catches; belt and braces
            self.counters["worker_errors"] += 1
            return replace(NO_ATTRIBUTION, AttributionDetail=f"error:{type(e).__name__}")

    def _store(self, key: Hashable, res: Attribution) -> None:
        self._results[key] = res
        self._results.move_to_end(key)
        if len(self._results) > self._max_results:
            self._results.popitem(last=False)
            self.counters["result_drops"] += 1

    def get(self, key: Hashable, wait_s: float = 0.0) -> Attribution | None:
        """The result for ``key``, waiting at most ``wait_s`` for it (also
        for a key not submitted yet: a ``FirstPacketTap`` thread may be
        about to).  None when there is none by then."""
        deadline = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while key not in self._results:
                left = deadline - time.monotonic()
                if left <= 0:
                    if wait_s > 0:
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

    def pending_count(self) -> int:
        """Lookups submitted and not finished yet."""
        return len(self._pending)

    def metrics(self) -> dict:
        m: dict[str, Any] = dict(self.counters)
        m["queue_depth"] = self._q.qsize()
        m["delay"] = self.delay.summary()
        if self._att is not None:
            m["attributor"] = self._att.metrics()
        return m

    def _run(self, ready: threading.Event) -> None:
        with self._lookup_lock:
            if self._att is None:
                self._att = self._factory()
        ready.set()
        q = self._q
        while not self._stop.is_set():
            try:
                key, conn, t_sub = q.get(timeout=self._STOP_POLL_S)
            except queue.Empty:
                continue
            res = self._lookup(conn)
            with self._cond:
                self._pending.discard(key)
                self._store(key, res)
                self.counters["completed"] += 1
                self.delay.observe((time.perf_counter() - t_sub) * 1e6)
                self._cond.notify_all()


# -- first-packet tap ------------------------------------------------------------

ETH_P_ALL = 0x0003
PACKET_HOST = 0
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
TAP_RCVBUF = 4 << 20  # kernel receive buffer of the tap socket
TAP_SEEN_SIZE = 65536  # connection starts remembered (to see each start once)
TAP_SEEN_TCP_S = 1.0  # a SYN for the same 5-tuple after this long is a new attempt
# a datagram after this much silence is looked up again: the port may belong
# to a new socket by now (ephemeral ports are reused: measured, 200 short-lived
# clients collide within seconds).  A re-lookup of the same socket is cheap
# (inode and process caches); a long window would give a new client the old
# client's name.
TAP_SEEN_UDP_S = 0.02
TAP_SNAPLEN = 128
TAP_SLICE_NS = 100_000  # the tap thread's scheduler slice (EEVDF, Linux >= 6.12)
TAP_FIFO_PRIORITY = 1  # SCHED_FIFO priority when asked for (needs CAP_SYS_NICE)
_SYS_SCHED_SETATTR = {
    "x86_64": 314,
    "aarch64": 274,
    "riscv64": 274,
    "armv7l": 380,
    "i686": 351,
    "ppc64le": 355,
    "s390x": 345,
}

_SYN_FILTER = (
    "(ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn)"
    " or (ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x02)"
    " or (ip and udp) or (ip6 and ip6[6] == 17)"
)


def tap_filter(ports: Iterable[int] | None) -> str:
    """The tap's BPF text (network-layer offsets: compiled for DLT_RAW):
    TCP SYNs without ACK and UDP datagrams, on ``ports`` when given."""
    if not ports:
        return _SYN_FILTER
    return f"({_SYN_FILTER}) and ({' or '.join(f'port {int(p)}' for p in sorted(set(ports)))})"


class FirstPacketTap:
    """Sees connection starts the moment they hit the interface and submits
    them to an ``AsyncAttributor`` -- beside the capture path, not in it.

    Why a separate socket: libpcap without immediate mode (pcapy-ng 2.1 has
    no ``set_immediate_mode``) uses TPACKET_V3, which hands packets over
    only when a ring block is retired -- at the earliest one jiffy (4 ms at
    HZ=250) after the first packet.  Measured in tests/test_attribution.py
    (pcapy, to_ms=1): lookups start ~1 ms (p50) and up to 5-7 ms after the
    first packet, by which time a short-lived client may be gone (98-100 %
    of 2-3 ms clients named, against 100 % for ``AttributionHelper``).  This tap is a plain ``AF_PACKET``/``SOCK_DGRAM`` socket with a
    small kernel BPF filter (SYNs and UDP on the tracked ports), read by its
    own thread: each packet wakes it at once.  With ``inline`` (default) that
    thread also does the lookup (``AsyncAttributor.lookup_now``) instead of
    waking the worker: a second wake-up waits for a scheduler slice on a
    busy machine (measured ~3 ms on 2 busy cores).  The packets queue in the
    socket's buffer meanwhile (``rcvbuf``; kernel drops are counted).

    The key it submits is the 5-tuple as the records see it,
    ``(proto, local_ip, local_port, remote_ip, remote_port)``, local being
    this host's side (an outgoing packet's source, an incoming packet's
    destination; packets of other hosts, broadcast and multicast are
    ignored).  The pipeline then asks ``attributor.get(that tuple,
    wait_s)``.  Needs CAP_NET_RAW; sees the network namespace it is created
    in; ``iface`` None = every interface (loopback connections are then seen
    from both ends, each end attributed to its own process).
    """

    def __init__(
        self,
        sink: AsyncAttributor | None,
        iface: str | None = None,
        ports: Iterable[int] | None = None,
        rcvbuf: int = TAP_RCVBUF,
        seen_size: int = TAP_SEEN_SIZE,
        bpf: str | None = "",
        inline: bool = True,
        sched: str | None = "slice",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.inline = inline
        self.sched = sched
        self.sched_applied = ""
        self.iface = iface
        self.filter = tap_filter(ports) if bpf == "" else bpf
        self.rcvbuf = rcvbuf
        self.clock = clock
        self._seen: OrderedDict[tuple, float] = OrderedDict()
        self._seen_size = max(1, seen_size)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.counters = {
            "packets": 0,
            "starts": 0,
            "submitted": 0,
            "submit_drops": 0,
            "ignored": 0,
            "kernel_packets": 0,
            "kernel_drops": 0,
        }

    # -- sans-IO part ------------------------------------------------------------
    def handle(self, pkt: bytes, pkttype: int, ethertype: int = 0) -> ConnTuple | None:
        """One packet (network header first, as AF_PACKET/SOCK_DGRAM gives it):
        the 5-tuple of a connection start not seen before, else None."""
        self.counters["packets"] += 1
        if pkttype == PACKET_OUTGOING:
            local_is_src = True
        elif pkttype == PACKET_HOST:
            local_is_src = False
        else:
            self.counters["ignored"] += 1
            return None
        if ethertype not in VLAN_TPIDS and pkt:  # untagged: the IP version says which
            ethertype = {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(pkt[0] >> 4, ethertype)
        # VLAN tags the NIC did not strip, IPv4 (a first fragment at most), IPv6: the decoder's walk
        why, _, _, ver, proto, l4, _, src, dst, _ = locate(pkt, 0, ethertype)
        n = len(pkt)
        if why or (n < l4 + 14 if proto == PROTO_TCP else n < l4 + 8):
            self.counters["ignored"] += 1
            return None
        if proto == PROTO_TCP:
            if pkt[l4 + 13] & 0x12 != 0x02:  # SYN without ACK only
                self.counters["ignored"] += 1
                return None
            hold = TAP_SEEN_TCP_S
        elif proto == PROTO_UDP:
            hold = TAP_SEEN_UDP_S
        else:
            self.counters["ignored"] += 1
            return None
        sport = (pkt[l4] << 8) | pkt[l4 + 1]
        dport = (pkt[l4 + 2] << 8) | pkt[l4 + 3]
        fam = socket.AF_INET if ver == 4 else socket.AF_INET6
        s_ip, d_ip = socket.inet_ntop(fam, src), socket.inet_ntop(fam, dst)
        key = (proto, s_ip, sport, d_ip, dport) if local_is_src else (proto, d_ip, dport, s_ip, sport)
        now = self.clock()
        seen = self._seen
        last = seen.get(key)
        seen[key] = now
        seen.move_to_end(key)
        if len(seen) > self._seen_size:
            seen.popitem(last=False)
        if last is not None and now - last < hold:
            return None
        self.counters["starts"] += 1
        return key

    # -- the socket ----------------------------------------------------------------
    def open(self) -> FirstPacketTap:
        """Open the socket now (raises OSError without CAP_NET_RAW, or when
        the BPF does not compile)."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.htons(ETH_P_ALL))
        try:
            if self.filter:
                self._attach(s, self.filter)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            if self.iface:
                s.bind((self.iface, ETH_P_ALL))
            s.settimeout(0.2)
        except Exception:
            s.close()
            raise
        self._sock = s
        return self

    @staticmethod
    def _attach(s: socket.socket, text: str) -> None:
        import ctypes

        import pcapy  # libpcap's compiler

        try:
            prog = pcapy.compile(pcapy.DLT_RAW, TAP_SNAPLEN, text, 1, 0).get_bpf()
        except pcapy.PcapError as e:
            raise OSError(f"tap filter does not compile: {e}") from None
        ins = b"".join(struct.pack("=HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in prog)
        buf = ctypes.create_string_buffer(ins)
        fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock else -1

    def read_available(self, limit: int = 1024) -> int:
        """Read what is queued without waiting (for a select loop); returns
        the number of connection starts submitted."""
        if self._sock is None:
            return 0
        n = 0
        for _ in range(limit):
            try:
                data, addr = self._sock.recvfrom(TAP_SNAPLEN, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            n += self._one(data, addr)
        return n

    def _one(self, data: bytes, addr) -> int:
        key = self.handle(data, addr[2], addr[1])
        if key is None or self.sink is None:
            return 0
        if self.inline:
            self.sink.lookup_now(key, key)
            self.counters["submitted"] += 1
            return 1
        if self.sink.submit(key, key):
            self.counters["submitted"] += 1
            return 1
        self.counters["submit_drops"] += 1
        return 0

    def start(self) -> FirstPacketTap:
        """Open (if needed) and read on a thread of its own."""
        if self._sock is None:
            self.open()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="xfer-attribution-tap", daemon=True)
            self._thread.start()
        return self

    def _set_sched(self) -> str:
        """Make the tap thread win the CPU when a packet wakes it.

        On a busy host a woken thread may wait for the running task's
        scheduler slice (ms) -- the lifetime of a short-lived client.
        "slice": SCHED_OTHER with a 100 µs slice (sched_setattr; EEVDF lets a
        task with a shorter slice preempt on wake-up; unprivileged, Linux >=
        6.12, ignored before); "fifo": SCHED_FIFO priority 1 (CAP_SYS_NICE;
        use it in a process of its own -- ``AttributionHelper`` -- where no
        other Python thread can hold the GIL it needs); "auto": fifo, else
        slice; None: leave.  Applies to the calling thread."""
        if not self.sched:
            return "default"
        import ctypes
        import platform

        if self.sched in ("fifo", "auto"):
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(TAP_FIFO_PRIORITY))
                return "fifo"
            except OSError as e:
                if self.sched == "fifo":
                    return f"fifo-failed:{e.errno}"
        nr = _SYS_SCHED_SETATTR.get(platform.machine())
        if nr is None:
            return "slice-unsupported"
        # struct sched_attr (VER1, 56 bytes): size, policy, flags, nice, priority,
        # runtime, deadline, period, util_min, util_max
        attr = struct.pack("=IIQiIQQQII", 56, 0, 0, 0, 0, TAP_SLICE_NS, 0, 0, 0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(attr)
        if libc.syscall(nr, 0, buf, 0) != 0:
            return f"slice-failed:{ctypes.get_errno()}"
        return "slice"

    def _run(self) -> None:
        s = self._sock
        assert s is not None
        self.sched_applied = self._set_sched()
        while not self._stop.is_set():
            try:
                data, addr = s.recvfrom(TAP_SNAPLEN)
            except (TimeoutError, InterruptedError):
                continue
            except OSError:
                if self._stop.is_set():
                    break
                time.sleep(0.01)
                continue
            self._one(data, addr)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._sock is not None:
            self._kernel_stats()
            self._sock.close()
            self._sock = None

    def _kernel_stats(self) -> None:
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # type: ignore[union-attr]
            pk, dr = struct.unpack("=II", raw)  # reading resets them: accumulate
            self.counters["kernel_packets"] += pk
            self.counters["kernel_drops"] += dr
        except OSError:
            pass

    def metrics(self) -> dict:
        if self._sock is not None:
            self._kernel_stats()
        m: dict = dict(self.counters)
        m["sched"] = self.sched_applied
        return m

    def __enter__(self) -> FirstPacketTap:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the attribution helper process ----------------------------------------------

_SO_TIMESTAMPNS = 35
_TS_CMSG_SPACE = socket.CMSG_SPACE(16)
HELPER_MAX_LOOKUPS_PER_S = 1000  # connection starts looked up per second, at most
HELPER_METRICS_EVERY_S = 5.0  # the helper reports its counters this often


class AttributionHelper:
    """Attribution in a process of its own: a ``FirstPacketTap`` and an
    ``Attributor`` in one single-threaded loop, scheduled to win the CPU
    (``sched="auto"``: SCHED_FIFO with CAP_SYS_NICE, else a short EEVDF
    slice).  Results stream back over a pipe; the interface is that of
    ``AsyncAttributor`` (``get(key, wait_s)``, ``poll()``, ``metrics()``),
    keys being ``(proto, local_ip, local_port, remote_ip, remote_port)``.

    Why a process: measured on a loaded 2-core host (load ~3 from other
    work), from a client's first packet to the start of its lookup --
    tap thread inside a multi-threaded Python process: p90 2-5 ms, max
    ~9 ms (the GIL and a second wake-up); this helper with SCHED_FIFO:
    p90 0.3 ms, max < 0.5 ms.  A SCHED_FIFO thread sharing a GIL with
    normal threads suffers priority inversion instead (max 70-150 ms).
    The loop does no work but the lookups, bounded by ``max_lookups_per_s``
    (extra starts are dropped and counted), so a flood cannot make it hog a
    CPU.

    It runs ``sys.executable -m sensor.attribution.attributor helper`` in the current
    network namespace; it inherits the capabilities it needs (CAP_NET_RAW
    for the tap, CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH to name other users'
    processes, CAP_SYS_NICE for SCHED_FIFO) and, once the tap is open and
    its scheduling set, keeps only the two lookup ones; it exits when its
    stdin closes (the sensor died) or on stop().
    """

    def __init__(
        self,
        iface: str | None = None,
        ports: Iterable[int] | None = None,
        sched: str | None = "auto",
        max_results: int = MAX_RESULTS,
        max_lookups_per_s: int = HELPER_MAX_LOOKUPS_PER_S,
        python: str | None = None,
    ) -> None:
        self.argv = [
            python or sys.executable,
            "-m",
            "sensor.attribution.attributor",
            "helper",
            "--sched",
            sched or "none",
            "--max-lookups-per-s",
            str(max_lookups_per_s),
        ]
        if iface:
            self.argv += ["--iface", iface]
        if ports:
            self.argv += ["--ports", ",".join(str(int(p)) for p in ports)]
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._results: OrderedDict[tuple, Attribution] = OrderedDict()
        self._times: dict[tuple, list[float]] = {}
        # results superseded before they were collected: a 5-tuple reused by a
        # new client (two lookups, one key) -- poll() hands out both, oldest first
        self._older: list[tuple[tuple, Attribution, list[float]]] = []
        self._max_results = max(1, max_results)
        self._ready = threading.Event()
        self.child_metrics: dict = {}
        self.counters = {"results": 0, "result_drops": 0, "collected": 0, "bad_lines": 0}

    def start(self, timeout: float = 10.0) -> AttributionHelper:
        if self._proc is not None:
            return self
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="xfer-attribution-helper-reader", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self._proc.poll() is not None:
            rc = self._proc.poll()
            err = self._proc.stderr.read() if rc is not None and self._proc.stderr is not None else "no answer"
            self.stop()
            raise OSError(f"attribution helper did not start ({rc}): {err.strip()[-500:]}")
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        import json

        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                self.counters["bad_lines"] += 1
                continue
            if "k" in msg:
                key = tuple(msg["k"])
                res = Attribution(**msg["a"])
                with self._cond:
                    prev = self._results.get(key)
                    if prev is not None:
                        self._older.append((key, prev, self._times.get(key, [])))
                        if len(self._older) > self._max_results:
                            self._older.pop(0)
                            self.counters["result_drops"] += 1
                    self._results[key] = res
                    self._results.move_to_end(key)
                    self._times[key] = msg.get("t", [])
                    if len(self._results) > self._max_results:
                        old, _ = self._results.popitem(last=False)
                        self._times.pop(old, None)
                        self.counters["result_drops"] += 1
                    self.counters["results"] += 1
                    self._cond.notify_all()
            elif msg.get("ready"):
                self.child_metrics = msg.get("metrics", {})
                self._ready.set()
            elif "metrics" in msg:
                self.child_metrics = msg["metrics"]
        self._ready.set()
        with self._cond:
            self._cond.notify_all()

    def get(self, key: tuple, wait_s: float = 0.0) -> Attribution | None:
        """The result for ``key``, waiting at most ``wait_s`` for it."""
        deadline = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while key not in self._results:
                left = deadline - time.monotonic()
                if left <= 0 or self._proc is None:
                    return None
                self._cond.wait(left)
            self.counters["collected"] += 1
            self._times.pop(key, None)
            return self._results.pop(key)

    def poll(self) -> list[tuple[tuple, Attribution]]:
        return [(k, a) for k, a, _t in self.poll_timed()]

    def poll_timed(self) -> list[tuple[tuple, Attribution, list[float]]]:
        """poll() with the helper's wall-clock times [seen, done, packet]."""
        with self._cond:
            out = self._older + [(k, a, self._times.get(k, [])) for k, a in self._results.items()]
            self._older = []
            self._results.clear()
            self._times.clear()
            self.counters["collected"] += len(out)
        return out

    def metrics(self) -> dict:
        m: dict = dict(self.counters)
        m["helper"] = self.child_metrics
        m["alive"] = self.alive()
        return m

    def figures(self) -> dict:
        """What /metrics shows of the helper (sensor/io/metrics.py)."""
        hm = self.metrics()
        child = hm.get("helper") or {}
        return {
            # lookups: results received (live); the helper's own counters come every 5 s
            "alive": hm.get("alive", False),
            "lookups": hm.get("results", 0),
            "rate_limited": child.get("rate_limited", 0),
            "tap_kernel_drops": (child.get("tap") or {}).get("kernel_drops", 0),
        }

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def stop(self, timeout: float = 5.0) -> None:
        p = self._proc
        if p is None:
            return
        try:
            if p.stdin:
                p.stdin.close()  # the helper's signal to report and exit
        except OSError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if p.stderr:
            p.stderr.close()
        self._proc = None

    def __enter__(self) -> AttributionHelper:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_helper(tracked_ports: Iterable[int], interfaces: Sequence[str]) -> AttributionHelper | None:
    """The daemon's helper for these interfaces (a tap on the one, else on all),
    started; None, logged, when it cannot start (records then say ``none``)."""
    ports = sorted(set(tracked_ports) | {989})
    helper = AttributionHelper(iface=interfaces[0] if len(interfaces) == 1 else None, ports=ports)
    try:
        helper.start()
    except OSError as e:
        log.error("attribution is off: %s (records will say AttributionSource none)", e)
        return None
    log.info("attribution helper started (pid %d)", helper.pid)
    return helper


def _helper_main(argv: list[str]) -> int:
    """The helper process: tap + lookups in one thread, JSON lines out."""
    import argparse
    import json
    import select as _select

    ap = argparse.ArgumentParser(prog="python -m sensor.attribution.attributor helper")
    ap.add_argument("--iface")
    ap.add_argument("--ports", default="")
    ap.add_argument("--sched", default="auto")
    ap.add_argument("--max-lookups-per-s", type=int, default=HELPER_MAX_LOOKUPS_PER_S)
    a = ap.parse_args(argv)
    try:  # die with the sensor
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    # a stop (systemd signals the whole cgroup, a terminal the process group)
    # is the sensor's to handle: it collects the last lookups, then closes
    # our stdin, which ends this loop
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ports = [int(p) for p in a.ports.split(",") if p.strip()]
    att = Attributor()
    tap = FirstPacketTap(None, iface=a.iface, ports=ports or None, sched=None if a.sched == "none" else a.sched)
    try:
        tap.open()
    except OSError as e:
        print(f"attribution helper: {e}", file=sys.stderr)
        return 2
    tap.sched_applied = tap._set_sched()
    # the tap is open and the scheduling set: keep only what the lookups need
    from sensor.io.privileges import HELPER_CAPS, keep_only

    try:
        keep_only(HELPER_CAPS)
    except OSError as e:
        print(f"attribution helper: could not drop capabilities: {e}", file=sys.stderr)
    out = sys.stdout
    next_metrics = time.monotonic() + HELPER_METRICS_EVERY_S

    def metrics() -> dict:
        m = {k: v for k, v in att.metrics().items() if k not in ("latency", "scan_latency")}
        m["latency"] = {k: v for k, v in att.latency.summary().items() if k != "buckets_le_us"}
        m["scan_latency"] = {k: v for k, v in att.scan_latency.summary().items() if k != "buckets_le_us"}
        m["tap"] = tap.metrics()
        m["rate_limited"] = rate["limited"]
        m["first_packet_to_lookup"] = {k: v for k, v in delay.summary().items() if k != "buckets_le_us"}
        return m

    print(json.dumps({"ready": True, "metrics": {"tap": tap.metrics()}}), file=out, flush=True)
    sock = tap._sock
    assert sock is not None
    try:  # the kernel's receive time of each packet: first packet -> lookup latency
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        pass
    # never blocks: a long scan polls it for newer starts (take_starts(nested));
    # a socket timeout would make Python wait for readability first
    sock.setblocking(False)
    fd = sock.fileno()
    delay = LatencyHistogram()
    stdin = sys.stdin.fileno()
    rate = {"window": int(time.monotonic()), "in_window": 0, "limited": 0}

    def take_starts(nested: bool) -> None:
        """Look up the connection starts waiting in the tap (at most 256).
        Not nested: a long scan calls back here (nested) to take the starts
        that came meanwhile first -- those are the short-lived ones."""
        for _ in range(256):
            try:
                data, anc, _fl, addr = sock.recvmsg(TAP_SNAPLEN, _TS_CMSG_SPACE, socket.MSG_DONTWAIT)
            except OSError:  # BlockingIOError: nothing waiting
                break
            key = tap.handle(data, addr[2], addr[1])
            if key is None:
                continue
            t_pkt = 0.0
            for lvl, typ, val in anc:
                if lvl == socket.SOL_SOCKET and typ == _SO_TIMESTAMPNS and len(val) >= 16:
                    sec, nsec = struct.unpack_from("=qq", val)
                    t_pkt = sec + nsec / 1e9
            now_s = int(time.monotonic())
            if now_s != rate["window"]:
                rate["window"], rate["in_window"] = now_s, 0
            rate["in_window"] += 1
            if rate["in_window"] > a.max_lookups_per_s:
                rate["limited"] += 1
                continue
            t_seen = time.time()
            res = att.lookup(*key, yield_to=None if nested else newer_first)
            if t_pkt:
                delay.observe((t_seen - t_pkt) * 1e6)
            out.write(json.dumps({"k": key, "a": res.fields(), "t": [t_seen, time.time(), t_pkt]}) + "\n")

    def newer_first() -> None:
        take_starts(True)

    while True:
        r, _, _ = _select.select([fd, stdin], [], [], HELPER_METRICS_EVERY_S)
        if fd in r:
            take_starts(False)
            out.flush()
        if stdin in r and not os.read(stdin, 4096):
            break
        if time.monotonic() >= next_metrics:
            next_metrics = time.monotonic() + HELPER_METRICS_EVERY_S
            print(json.dumps({"metrics": metrics()}), file=out, flush=True)
    print(json.dumps({"metrics": metrics()}), file=out, flush=True)
    tap.stop()
    att.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["helper"]:
        sys.exit(_helper_main(sys.argv[2:]))
    sys.exit(
        "usage: python -m sensor.attribution.attributor helper [--iface IF] [--ports P,..] [--sched auto|fifo|slice|none]"
    )
