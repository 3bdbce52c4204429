#!/usr/bin/env python3
"""Benchmark xfer-sensor against NFStream and scapy on one capture.

One command, one capture, each tool in its own subprocess::

    python bench/run.py                 # uses bench/data/mixed-1m.pcap (generated if missing)
    python bench/run.py --generate      # (re)generate the capture first
    python bench/run.py --pcap other.pcap --repeat 3

Rows:

* ``xfer-sensor``  -- ``xfer-sensor replay PCAP --out TMPDIR`` (the console script next
  to the current interpreter; sensor, rules and outputs as shipped, all on).
* ``nfstream (defaults)``       -- ``NFStreamer(source=pcap, n_meters=N)`` iterated to the end.
* ``nfstream (no dissection)``  -- the same with ``n_dissections=0, statistical_analysis=False``.
* ``scapy (subset)`` -- ``scapy.utils.PcapReader`` over the first ``--scapy-packets``
  packets, every packet dissected and its IP/IPv6 and TCP/UDP fields read.

Measured per row: packets (own pcap count; for scapy the subset size), wall seconds of the
subprocess (interpreter start-up and imports included), packets/s = packets / wall, and
peak RSS.  Peak RSS is reported two ways:

* ``rss_tree_mb`` (table column) -- sum of the peak RSS of every process of the tool's
  process tree:
  - peer drivers (NFStream, scapy) report their own ``VmHWM`` from /proc/self/status at
    exit plus ``getrusage(RUSAGE_CHILDREN).ru_maxrss``; NFStream with ``n_meters=1``
    forks exactly one meter process, so own + children is the exact sum of both peaks;
  - xfer-sensor (an external program): ``os.wait4`` ``ru_maxrss`` when it has no child
    processes; otherwise the sum of the per-process ``VmHWM`` (kernel high-water mark)
    sampled every 20 ms from /proc/PID/status for every process in the tree.
  ``ru_maxrss`` of a vfork()+exec()ed child starts at the harness's own high-water mark,
  so the harness keeps itself small (no mmap, 1 MiB buffers) and uses ``ru_maxrss`` only
  when it exceeds the harness's mark (``harness_maxrss_mb`` in the JSON); /proc VmHWM is
  reset at exec and has no such floor.
  A fork()ed child shares pages with its parent, so a sum counts shared pages twice:
  it is an upper bound of the tree's simultaneous footprint.
* ``rss_largest_proc_mb`` -- the largest single process of the tree (same sources).

MB here means MiB (1024 * 1024 bytes), as ``ru_maxrss`` is in KiB on Linux.
The table is printed and written as JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PCAP = HERE / "data" / "mixed-1m.pcap"
RESULTS = HERE / "results"

TARGET_NFSTREAM_X = 3.0
TARGET_SCAPY_X = 100.0
TARGET_RSS_MB = 150.0


# ---------------------------------------------------------------------------
# fast packet count


def count_packets(path: Path) -> int:
    """Count packets of a classic pcap or a pcapng file without dissecting them.

    Reads only the record headers (seeking over packet data) with a small buffer, so
    the harness itself stays small: a child started with vfork()+exec inherits the
    parent's RSS high-water mark into its ru_maxrss.
    """
    with open(path, "rb", buffering=1 << 16) as f:
        head = f.read(24)
        if len(head) < 24:
            return 0
        magic = head[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            rec = struct.Struct("<8xI4x").unpack
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            rec = struct.Struct(">8xI4x").unpack
        elif magic == b"\x0a\x0d\x0d\x0a":
            f.seek(0)
            return _count_pcapng(f)
        else:
            raise ValueError(f"{path}: not a pcap/pcapng file")
        read, seek = f.read, f.seek
        n = 0
        while True:
            h = read(16)
            if len(h) < 16:
                return n
            seek(rec(h)[0], 1)
            n += 1


def _count_pcapng(f) -> int:
    n = 0
    u32 = struct.Struct("<II").unpack
    while True:
        h = f.read(12)
        if len(h) < 12:
            return n
        btype, blen = u32(h[:8])
        if btype == 0x0A0D0D0A:  # section header block: byte order from its magic
            le = h[8:12] == b"\x4d\x3c\x2b\x1a"
            u32 = struct.Struct("<II" if le else ">II").unpack
            btype, blen = u32(h[:8])
        if btype in (2, 3, 6):  # obsolete packet, simple packet, enhanced packet
            n += 1
        if blen < 12:
            raise ValueError("corrupt pcapng block")
        f.seek(blen - 12, 1)


def warm_cache(path: Path) -> float:
    """Read the whole file once so that no tool pays the cold disk read."""
    t = time.perf_counter()
    buf = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def self_maxrss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------------------
# subprocess measurement


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def _vmhwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class TreeSampler(threading.Thread):
    """Poll the process tree below ``root`` and keep each process's VmHWM."""

    def __init__(self, root: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.hwm: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            stack = [self.root]
            while stack:
                pid = stack.pop()
                v = _vmhwm_kb(pid)
                if v is not None and v > self.hwm.get(pid, 0):
                    self.hwm[pid] = v
                stack.extend(_children(pid))
            self.stop.wait(self.interval)


def measure(cmd: list[str], timeout: float, env=None, cwd=None) -> dict:
    """Run ``cmd``; return wall time, exit status, rusage and sampled tree high-water marks."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        harness_kb = self_maxrss_kb()
        load = os.getloadavg()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        sampler = TreeSampler(p.pid)
        sampler.start()
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        _, status, ru = os.wait4(p.pid, 0)  # blocking: rusage of this child (and its reaped descendants)
        killer.cancel()
        timed_out = not killer.is_alive() and status != 0 and time.perf_counter() - t0 >= timeout
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return {
        "cmd": cmd,
        "pid": p.pid,
        "harness_maxrss_kb": harness_kb,
        "loadavg_before": [round(x, 2) for x in load],
        "returncode": p.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "wait4_maxrss_kb": ru.ru_maxrss,
        "sampled_vmhwm_kb": {str(k): v for k, v in sorted(sampler.hwm.items())},
        "stdout_tail": stdout[-4000:],
        "stderr_tail": stderr[-4000:],
        "stdout": stdout,
    }


def _driver_report(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    return {}


# ---------------------------------------------------------------------------
# peer drivers (run with the current interpreter in their own process)

NFSTREAM_DRIVER = r"""
import json, resource, sys, time
t_import = time.perf_counter()
from nfstream import NFStreamer
t0 = time.perf_counter()
kw = json.loads(sys.argv[2])
n = 0
for flow in NFStreamer(source=sys.argv[1], **kw):
    n += 1
t1 = time.perf_counter()
def vmhwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
print("BENCH_RESULT " + json.dumps({
    "self_vmhwm_kb": vmhwm(),
    "flows": n, "loop_s": t1 - t0, "import_s": t0 - t_import,
    "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}))
"""

SCAPY_DRIVER = r"""
import json, resource, sys, time
t_import = time.perf_counter()
from scapy.utils import PcapReader
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
t0 = time.perf_counter()
limit = int(sys.argv[2])
n = ip_n = tcp_n = udp_n = 0
acc = 0
with PcapReader(sys.argv[1]) as reader:
    for pkt in reader:          # each packet is fully dissected by scapy on read
        ip = pkt.getlayer(IP)
        if ip is None:
            ip = pkt.getlayer(IPv6)
        if ip is not None:
            ip_n += 1
            acc ^= hash((ip.src, ip.dst))
            tcp = pkt.getlayer(TCP)
            if tcp is not None:
                tcp_n += 1
                acc ^= tcp.sport ^ tcp.dport ^ tcp.seq ^ int(tcp.flags) ^ len(tcp.payload)
            else:
                udp = pkt.getlayer(UDP)
                if udp is not None:
                    udp_n += 1
                    acc ^= udp.sport ^ udp.dport ^ len(udp.payload)
        n += 1
        if n >= limit:
            break
t1 = time.perf_counter()
def vmhwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
print("BENCH_RESULT " + json.dumps({
    "self_vmhwm_kb": vmhwm(),
    "packets": n, "ip": ip_n, "tcp": tcp_n, "udp": udp_n, "loop_s": t1 - t0, "import_s": t0 - t_import,
    "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}))
"""


def _tree_rss(m: dict, drv: dict, exact_children: bool) -> tuple[float, str]:
    """Sum of per-process peak RSS (KiB) of the tool's tree, and how it was obtained.

    ``ru_maxrss`` of an exec()ed child starts from the RSS high-water mark of the
    process it was vfork()ed from (the harness), so it is exact only when it exceeds
    the harness's own high-water mark; /proc VmHWM is reset at exec and has no such floor.
    """
    sampled = m["sampled_vmhwm_kb"]
    sampled_sum = sum(sampled.values())
    root = str(m["pid"])
    if drv and "self_vmhwm_kb" in drv:
        own = drv["self_vmhwm_kb"]
        if drv["children_maxrss_kb"] == 0:
            return own, "driver's own VmHWM at exit (no child processes)"
        if exact_children:
            return (
                own + drv["children_maxrss_kb"],
                "driver's own VmHWM + its RUSAGE_CHILDREN ru_maxrss (exactly one child process)",
            )
        return (
            own + sum(v for k, v in sampled.items() if k != root),
            f"driver's own VmHWM + sampled VmHWM of {len(sampled) - 1} child processes",
        )
    exact = m["wait4_maxrss_kb"] if m["wait4_maxrss_kb"] > m["harness_maxrss_kb"] else None
    if len(sampled) <= 1:
        if exact is not None:
            return exact, "wait4 ru_maxrss (single process)"
        return sampled.get(root, m["wait4_maxrss_kb"]), "sampled VmHWM (single process)"
    return (max(sampled_sum, exact or 0), f"sum of sampled VmHWM over {len(sampled)} processes")


def _largest_kb(m: dict, drv: dict) -> int:
    """Peak RSS of the largest single process of the tree (KiB)."""
    vals = list(m["sampled_vmhwm_kb"].values())
    if m["wait4_maxrss_kb"] > m["harness_maxrss_kb"]:
        vals.append(m["wait4_maxrss_kb"])
    if drv:
        vals += [drv.get("self_vmhwm_kb", 0), drv.get("children_maxrss_kb", 0)]
    return max(vals, default=0)


def run_tool(
    name: str,
    cmd: list[str],
    packets: int,
    timeout: float,
    drv_exact_children=False,
    env=None,
    cwd=None,
    label_packets=None,
) -> dict:
    m = measure(cmd, timeout, env=env, cwd=cwd)
    drv = _driver_report(m["stdout"])
    ok = m["returncode"] == 0 and not m["timed_out"]
    if name.startswith("scapy") and drv:
        packets = drv.get("packets", packets)
    tree_kb, how = _tree_rss(m, drv, drv_exact_children)
    row = {
        "tool": name,
        "ok": ok,
        "packets": packets,
        "packets_note": label_packets,
        "wall_s": m["wall_s"],
        "pps": packets / m["wall_s"] if ok and m["wall_s"] > 0 else None,
        "cpu_user_s": m["user_s"],
        "cpu_sys_s": m["sys_s"],
        "cpu_s": m["user_s"] + m["sys_s"],
        "loadavg_before": m["loadavg_before"],
        "rss_tree_mb": tree_kb / 1024,
        "rss_tree_method": how,
        "rss_largest_proc_mb": _largest_kb(m, drv) / 1024,
        "wait4_maxrss_mb": m["wait4_maxrss_kb"] / 1024,
        "rss_sampled_vmhwm_sum_mb": sum(m["sampled_vmhwm_kb"].values()) / 1024,
        "processes_seen": len(m["sampled_vmhwm_kb"]),
        "harness_maxrss_mb": m["harness_maxrss_kb"] / 1024,
        "driver": drv or None,
        "cmd": m["cmd"],
        "returncode": m["returncode"],
        "timed_out": m["timed_out"],
    }
    if drv.get("loop_s"):
        row["loop_pps"] = packets / drv["loop_s"]
    mt = re.search(r"^(\d+) packets", m["stdout"], re.M)
    if mt:
        row["tool_reported_packets"] = int(mt.group(1))
    if not ok:
        row["stderr_tail"] = m["stderr_tail"]
        row["stdout_tail"] = m["stdout_tail"]
    else:
        row["stderr_tail"] = m["stderr_tail"][-1500:]
        row["stdout_tail"] = m["stdout_tail"][-1500:]
    return row


def _pick(runs: list[dict]) -> dict:
    """Best run (least wall time) of the successful ones: on a shared machine the fastest run
    is the one least disturbed by other load.  Every run is kept in the JSON."""
    good = [r for r in runs if r["ok"]] or runs
    best = min(good, key=lambda r: r["wall_s"])  # the same object: later truth checks land on it
    best["runs"] = len(runs)
    walls = [r["wall_s"] for r in good]
    best["wall_s_all"] = walls
    best["wall_s_median"] = statistics.median(walls)
    return best


# ---------------------------------------------------------------------------
# ground-truth check of the sensor's records (when the generator's truth file exists)

TRACKED = (20, 21, 69, 139, 445, 990)


def truth_check(truth_path: Path, outdir: Path) -> dict:
    """Compare xfer-sensor's connections/alerts with the generator's ground truth.

    Keys are (client IP, server IP, server port); DeviceName is assumed to be the client's
    IP (the default configuration).  Every session of the capture lies within 24 h.
    """
    from collections import Counter

    truth = [json.loads(x) for x in truth_path.read_text().splitlines() if x.strip()]
    conns = [json.loads(x) for x in (outdir / "connections.jsonl").read_text().splitlines() if x.strip()]
    alerts = [json.loads(x) for x in (outdir / "alerts.jsonl").read_text().splitlines() if x.strip()]
    # a TFTP ERROR answer (from a new server port) is counted neither as success nor as failure
    exp_ok = Counter(t["port"] for t in truth if t["outcome"].startswith("success"))
    tftp_err = sum(1 for t in truth if t["outcome"] == "tftp_error")
    exp_fail = Counter(t["port"] for t in truth if t["outcome"] in ("refused", "no_answer"))
    exp_active = sum(1 for t in truth for x in t.get("transfers", ()) if x.get("data_mode") == "active")
    got = Counter((c.get("ActionType"), c.get("RemotePort")) for c in conns)
    per_port = {}
    for port in TRACKED:
        per_port[str(port)] = v = {
            "expected_success": exp_ok.get(port, 0) if port != 20 else exp_active,
            "sensor_success": got.get(("ConnectionSuccess", port), 0)
            + (got.get(("InboundConnectionAccepted", port), 0) if port == 20 else 0),
            "expected_failed_sessions": exp_fail.get(port, 0),
            "sensor_failed": got.get(("ConnectionFailed", port), 0),
        }
        if port == 69:
            v["expected_answered_with_error"] = tftp_err
    ok = [t for t in truth if t["outcome"].startswith("success")]
    # the hunt's grouping (DeviceName, process, RemoteIP, RemotePort, AccountName); on replay the
    # process is empty and DeviceName is the client's IP; the account is what the wire shows
    keys = Counter((t["client"], t["server"], t["port"], t.get("account_visible", "")) for t in ok)
    want = {k for k, v in keys.items() if v > 3}
    have = {(a.get("DeviceName"), a.get("RemoteIP"), a.get("RemotePort"), a.get("AccountName") or "") for a in alerts}
    missing = sorted(want - have)
    extra = sorted(have - want, key=str)
    # device-level view, ignoring the account
    keys3 = Counter((t["client"], t["server"], t["port"]) for t in ok)
    want3 = {k for k, v in keys3.items() if v > 3}
    have3 = {k[:3] for k in have}
    return {
        "truth_file": str(truth_path),
        "tftp_error_sessions_not_counted": tftp_err,
        "per_port": per_port,
        "alert_keys_expected": len(want),
        "alert_keys_sensor": len(have),
        "alert_keys_matched": len(want & have),
        "alert_keys_missing": [list(k) for k in missing],
        "alert_keys_missing_by_port": dict(Counter(k[2] for k in missing)),
        "alert_keys_extra": [list(k) for k in extra],
        "device_keys_expected": len(want3),
        "device_keys_alerted": len(want3 & have3),
    }


# ---------------------------------------------------------------------------
# reporting


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def table(rows: list[dict]) -> str:
    head = ("tool", "packets", "wall s", "packets/s", "CPU s", "peak RSS MB (tree)", "largest proc MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        pk = f"{r['packets']:,}" + (f" ({r['packets_note']})" if r.get("packets_note") else "")
        lines.append(
            "| "
            + " | ".join(
                (
                    r["tool"] + ("" if r["ok"] else " **FAILED**"),
                    pk,
                    _fmt(r["wall_s"], ".2f"),
                    _fmt(r["pps"], ",.0f"),
                    _fmt(r["cpu_s"], ".2f"),
                    _fmt(r["rss_tree_mb"], ".1f"),
                    _fmt(r["rss_largest_proc_mb"], ".1f"),
                )
            )
            + " |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    by = {r["tool"]: r for r in rows}
    xs = by.get("xfer-sensor")
    out: dict = {}
    if not xs or not xs["ok"]:
        return out
    for r in rows:
        if r is xs or not r["ok"] or not r["pps"]:
            continue
        key = f"xfer-sensor/{r['tool']}"
        out[key] = {"pps_ratio": xs["pps"] / r["pps"]}
        if r.get("loop_pps"):
            # conservative: the peer without its interpreter start-up and imports
            out[key]["pps_ratio_vs_peer_loop_only"] = xs["pps"] / r["loop_pps"]
        if r["cpu_s"] and xs["cpu_s"]:
            # packets per CPU-second (whole process tree): less sensitive to other load on the machine
            out[key]["pkts_per_cpu_s_ratio"] = (xs["packets"] / xs["cpu_s"]) / (r["packets"] / r["cpu_s"])
        out[key]["rss_ratio"] = xs["rss_tree_mb"] / r["rss_tree_mb"] if r["rss_tree_mb"] else None
    return out


def sensor_fingerprint() -> dict:
    """git HEAD and a hash of the sensor's source as it is on disk (editable installs change
    under a running benchmark)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((REPO / "sensor").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    try:
        head = (
            subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        head = None
    return {"git_head": head, "sensor_src_sha256": h.hexdigest()[:16]}


def env_info() -> dict:
    info = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    from importlib import metadata

    for pkg in ("xfer-sensor", "nfstream", "scapy", "pcapy-ng"):
        try:
            info[f"version_{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[f"version_{pkg}"] = None
    try:
        info["git_head"] = (
            subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        info["git_dirty"] = bool(
            subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--", "sensor"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark xfer-sensor vs NFStream and scapy on one capture.")
    ap.add_argument("--pcap", type=Path, default=DEFAULT_PCAP, help=f"capture to replay (default {DEFAULT_PCAP})")
    ap.add_argument("--generate", action="store_true", help="(re)generate the capture with bench/gen_mixed.py first")
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets to generate with --generate")
    ap.add_argument("--seed", type=int, default=None, help="generator seed with --generate (generator default)")
    ap.add_argument("--scapy-packets", type=int, default=50_000, help="scapy subset size (default 50,000)")
    ap.add_argument(
        "--n-meters",
        type=int,
        default=1,
        help="NFStream n_meters, fixed (default 1 = NFStream's own choice on a 2-core machine)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per tool; the fastest run is reported (all runs and the median are in the JSON)",
    )
    ap.add_argument(
        "--only",
        default="xfer-sensor,nfstream,nfstream-min,scapy",
        help="comma list of rows to run (xfer-sensor,nfstream,nfstream-min,scapy)",
    )
    ap.add_argument(
        "--sensor",
        type=Path,
        default=Path(sys.executable).parent / "xfer-sensor",
        help="xfer-sensor console script (default: next to this interpreter)",
    )
    ap.add_argument(
        "--sensor-arg", action="append", default=[], help="extra argument for 'xfer-sensor replay' (repeatable)"
    )
    ap.add_argument("--timeout", type=float, default=3600, help="per-run timeout in seconds")
    ap.add_argument("--results", type=Path, default=RESULTS, help="directory for the JSON result")
    ap.add_argument("--keep-out", action="store_true", help="keep xfer-sensor's --out directory")
    a = ap.parse_args(argv)
    only = {x.strip() for x in a.only.split(",") if x.strip()}

    pcap = a.pcap.resolve()
    if a.generate or not pcap.exists():
        if not a.generate:
            print(f"{pcap} is missing: generating it", file=sys.stderr)
        cmd = [
            sys.executable,
            str(HERE / "gen_mixed.py"),
            "--packets",
            str(a.packets),
            "--out",
            str(pcap),
            "--truth",
            str(pcap.with_name(pcap.name + ".truth.jsonl")),
        ]
        if a.seed is not None:
            cmd += ["--seed", str(a.seed)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"generated {pcap} in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    t = time.perf_counter()
    packets = count_packets(pcap)
    count_s = time.perf_counter() - t
    warm_s = warm_cache(pcap)
    print(
        f"capture: {pcap}  {packets:,} packets  {pcap.stat().st_size / 1e6:.1f} MB "
        f"(counted in {count_s:.2f} s, page cache warmed in {warm_s:.2f} s)",
        file=sys.stderr,
    )

    plan = []
    if "xfer-sensor" in only:
        plan.append("xfer-sensor")
    if "nfstream" in only:
        plan.append("nfstream")
    if "nfstream-min" in only:
        plan.append("nfstream-min")
    if "scapy" in only:
        plan.append("scapy")

    results: list[dict] = []
    all_runs: dict[str, list] = {}
    pending_truth: list[tuple] = []
    nf_default = {"n_meters": a.n_meters}
    nf_min = {"n_meters": a.n_meters, "n_dissections": 0, "statistical_analysis": False}
    for tool in plan:
        runs = []
        for i in range(a.repeat):
            if tool == "xfer-sensor":
                if not a.sensor.exists():
                    print(f"skip xfer-sensor: {a.sensor} not found (pip install -e . into this venv)", file=sys.stderr)
                    break
                outdir = Path(tempfile.mkdtemp(prefix="xfer-bench-out-"))
                cmd = [str(a.sensor), "replay", str(pcap), "--out", str(outdir), *a.sensor_arg]
                print(f"[{tool} {i + 1}/{a.repeat}] {' '.join(cmd)}", file=sys.stderr)
                fp = sensor_fingerprint()
                row = run_tool("xfer-sensor", cmd, packets, a.timeout)
                row["sensor_code"] = fp
                files = sorted(p for p in outdir.rglob("*") if p.is_file())
                row["outputs"] = {str(p.relative_to(outdir)): p.stat().st_size for p in files[:200]}
                row["outputs_count"] = len(files)
                truth_path = pcap.with_name(pcap.name + ".truth.jsonl")
                if row["ok"] and truth_path.exists() and (outdir / "connections.jsonl").exists():
                    # compared after all runs: parsing JSON here would raise the harness's own RSS
                    # high-water mark, which vfork()ed children inherit into ru_maxrss
                    pending_truth.append((row, truth_path, outdir))
                    row["out_dir"] = str(outdir)
                elif a.keep_out:
                    row["out_dir"] = str(outdir)
                else:
                    shutil.rmtree(outdir, ignore_errors=True)
            elif tool in ("nfstream", "nfstream-min"):
                kw = nf_default if tool == "nfstream" else nf_min
                name = (
                    f"nfstream (defaults, n_meters={a.n_meters})"
                    if tool == "nfstream"
                    else f"nfstream (n_dissections=0, stats off, n_meters={a.n_meters})"
                )
                cmd = [sys.executable, "-c", NFSTREAM_DRIVER, str(pcap), json.dumps(kw)]
                print(f"[{name} {i + 1}/{a.repeat}]", file=sys.stderr)
                row = run_tool(name, cmd, packets, a.timeout, drv_exact_children=a.n_meters == 1)
                row["nfstream_kwargs"] = kw
            else:
                name = f"scapy PcapReader (subset: first {a.scapy_packets:,})"
                cmd = [sys.executable, "-c", SCAPY_DRIVER, str(pcap), str(a.scapy_packets)]
                print(f"[{name} {i + 1}/{a.repeat}]", file=sys.stderr)
                row = run_tool(name, cmd, min(packets, a.scapy_packets), a.timeout, label_packets="subset")
            status = "ok" if row["ok"] else f"FAILED rc={row['returncode']}"
            print(
                f"    {status}: {row['wall_s']:.2f} s (CPU {row['cpu_s']:.2f} s, load {row['loadavg_before'][0]}), "
                f"{_fmt(row['pps'], ',.0f')} pkt/s, "
                f"peak RSS {row['rss_tree_mb']:.1f} MB ({row['rss_tree_method']})",
                file=sys.stderr,
            )
            if not row["ok"]:
                print(row.get("stderr_tail", "")[-2000:], file=sys.stderr)
            runs.append(row)
        if runs:
            all_runs[runs[0]["tool"]] = runs
            results.append(_pick(runs))
            fps = {json.dumps(r["sensor_code"], sort_keys=True) for r in runs if "sensor_code" in r}
            if len(fps) > 1:
                results[-1]["warning"] = "sensor source changed between runs: " + ", ".join(sorted(fps))
                print(f"WARNING: {results[-1]['warning']}", file=sys.stderr)

    for row, truth_path, outdir in pending_truth:
        try:
            row["truth_check"] = truth_check(truth_path, outdir)
        except (OSError, ValueError, KeyError) as e:
            row["truth_check"] = {"error": repr(e)}
        if not a.keep_out:
            shutil.rmtree(outdir, ignore_errors=True)
            row.pop("out_dir", None)
    rat = ratios(results)
    print()
    print(
        f"Capture {pcap.name}: {packets:,} packets, {pcap.stat().st_size / 1e6:.1f} MB; "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}"
    )
    print()
    print(table(results))
    print()
    for r in results:
        if r.get("sensor_code"):
            print(
                f"xfer-sensor code: git {r['sensor_code']['git_head']}, sensor/ source sha256 "
                f"{r['sensor_code']['sensor_src_sha256']}" + (f"  WARNING: {r['warning']}" if r.get("warning") else "")
            )
    print()
    for k, v in rat.items():
        extra = (
            f" (vs the peer's loop alone, without start-up: {v['pps_ratio_vs_peer_loop_only']:.2f}x)"
            if "pps_ratio_vs_peer_loop_only" in v
            else ""
        )
        cpu = (
            f"; packets per CPU-second ratio {v['pkts_per_cpu_s_ratio']:.2f}x" if v.get("pkts_per_cpu_s_ratio") else ""
        )
        rss = f"; RSS ratio {v['rss_ratio']:.2f}" if v.get("rss_ratio") else ""
        print(f"{k}: packets/s ratio {v['pps_ratio']:.2f}x{extra}{cpu}{rss}")
    xs = next((r for r in results if r["tool"] == "xfer-sensor"), None)
    targets = {}
    if xs and xs["ok"]:
        nf = next((r for r in results if r["tool"].startswith("nfstream (defaults") and r["ok"]), None)
        sc = next((r for r in results if r["tool"].startswith("scapy") and r["ok"]), None)
        if nf:
            targets["pps_vs_nfstream_defaults>=3x"] = xs["pps"] / nf["pps"] >= TARGET_NFSTREAM_X
        if sc:
            targets["pps_vs_scapy>=100x"] = xs["pps"] / sc["pps"] >= TARGET_SCAPY_X
        targets["peak_rss<=150MB"] = xs["rss_tree_mb"] <= TARGET_RSS_MB
        print("targets: " + ", ".join(f"{k} {'MET' if v else 'NOT MET'}" for k, v in targets.items()))
        tc = xs.get("truth_check")
        if tc and "error" not in tc:
            print()
            print("xfer-sensor vs the generator's ground truth (connections on tracked ports):")
            print("| port | expected success | sensor success | expected failed sessions | sensor failed |")
            print("|---|---|---|---|---|")
            for port, v in tc["per_port"].items():
                err = (
                    f" (+{v['expected_answered_with_error']} answered with ERROR)"
                    if v.get("expected_answered_with_error")
                    else ""
                )
                print(
                    f"| {port} | {v['expected_success']}{err} | {v['sensor_success']} | "
                    f"{v['expected_failed_sessions']} | {v['sensor_failed']} |"
                )
            print(
                f"alert keys (client, server, port, account with > 3 successful connections): expected "
                f"{tc['alert_keys_expected']}, sensor {tc['alert_keys_sensor']}, matched {tc['alert_keys_matched']}, "
                f"missing by port {tc['alert_keys_missing_by_port'] or '{}'}, extra {len(tc['alert_keys_extra'])}; "
                f"(client, server, port) keys over 3 alerted: {tc['device_keys_alerted']} of "
                f"{tc['device_keys_expected']}"
            )
            print(
                "(port 20: active-mode FTP data connections, reported as InboundConnectionAccepted; "
                "failed sessions may hold several SYN/RST attempts on one 4-tuple; "
                "TFTP sessions answered by an ERROR are shown apart)"
            )

    doc = {
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pcap": str(pcap),
        "pcap_bytes": pcap.stat().st_size,
        "packets": packets,
        "notes": {
            "wall_s": "wall time of the tool's subprocess, interpreter start-up and imports included; "
            "with --repeat the fastest run (wall_s_all, wall_s_median list them all)",
            "cpu_s": "user+sys CPU seconds of the subprocess and its reaped descendants (os.wait4)",
            "pps": "packets / wall_s (scapy: subset size / wall_s)",
            "rss_tree_mb": "sum of the per-process peak RSS over the tool's process tree, MiB; see rss_tree_method",
            "rss_largest_proc_mb": "peak RSS of the largest single process of the tree, MiB",
            "wait4_maxrss_mb": "raw os.wait4 ru_maxrss; includes the harness's own high-water mark "
            "(vfork+exec), so only meaningful when above harness_maxrss_mb",
            "nfstream": f"n_meters fixed to {a.n_meters}; NFStream forks n_meters meter processes",
            "scapy": f"first {a.scapy_packets} packets only",
            "page_cache": "capture read once before the runs so every tool reads it from memory",
        },
        "env": env_info(),
        "rows": [{k: v for k, v in r.items() if k not in ("stdout",)} for r in results],
        "all_runs": all_runs,
        "ratios": rat,
        "targets": targets,
    }
    a.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = a.results / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    shutil.copyfile(path, a.results / "latest.json")
    print(f"\nJSON: {path}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
