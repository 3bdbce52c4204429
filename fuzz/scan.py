#!/usr/bin/env python3
"""Bounded state under a SYN scan, as one command:

    python fuzz/scan.py [--syns 1000000] [--sources 50000] [--max-flows 100000] [--keep] [--out DIR] [--each]

Writes (with struct, in seconds) a capture of ``--syns`` TCP SYNs from
``--sources`` addresses to tracked ports (445, 21, 139, 990) of 20 public
servers, 10 us apart, with 5 real FTP sessions (logins to one public server,
crafted with tests/support/craft.py) spread through it; replays it with
``xfer-sensor replay --format json`` as a child process and reports what the
issue asks for: tracked flows never above ``max_flows`` (``active_max``),
evictions and expiries, the FTP sessions still counted and alerted on (one
alert, 5 connections in the hunt), every flow in a connection record or
counted in a ``connection_attempts`` record (``attempt_records: aggregate``,
docs/engine.md), the child's peak RSS (``wait4``) against a bound
(``--rss-bound-mb``, 200), and the time taken. ``--out DIR``: the replay
writes the records there (as a deployment does) and every connection record
must be a line of ``connections.jsonl``, the FTP sessions' records whole
(successful, ``SF``, the login) and the ``Attempts`` of weird.jsonl the
attempts aggregated. ``--each``: ``attempt_records: each`` (a record per
attempt, as before aggregation). Exit status 1 when a check fails.

``syn_scan_frames`` is also used by tests/test_bounded_state.py (small scans).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCAN_PORTS = (445, 21, 139, 990)
FTP_SERVER = "203.0.113.10"
FTP_SERVER_SAYS = (b"220 ready\r\n", b"331 password\r\n", b"230 ok\r\n", b"221 bye\r\n")  # each FTP session's replies
CONFIG = """\
home_net: [192.168.56.0/24, 10.0.0.0/8]
ip_type_overrides: {{203.0.113.0/24: Public, 198.51.100.0/24: Public}}
limits: {{max_flows: {max_flows}}}
attempt_records: {attempt_records}
"""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) >> 1}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


_ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


def ipv4_frame(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int) -> bytes:
    """An Ethernet/IPv4 frame carrying the transport segment ``l4`` (its checksum already set)."""
    head = _IP.pack(0x45, 0, 20 + len(l4), ident & 0xFFFF, 0, 64, proto, 0, src, dst)
    return _ETH + head[:10] + checksum(head).to_bytes(2, "big") + head[12:] + l4


def tcp_frame(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, ident: int, payload: bytes = b""
) -> bytes:
    """An Ethernet/IPv4/TCP frame with valid IPv4 and TCP checksums."""
    seg = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 1024, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
    seg = seg[:16] + checksum(pseudo + seg).to_bytes(2, "big") + seg[18:]
    return ipv4_frame(src, dst, 6, seg, ident)


def udp_frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int) -> bytes:
    """An Ethernet/IPv4/UDP frame with valid IPv4 and UDP checksums."""
    dgram = _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(dgram))
    c = checksum(pseudo + dgram) or 0xFFFF  # 0 means "no checksum" in UDP
    return ipv4_frame(src, dst, 17, dgram[:6] + c.to_bytes(2, "big") + dgram[8:], ident)


def syn_scan_frames(
    n: int, sources: int = 5_000, t0_us: int = 1_790_000_000_000_000, gap_us: int = 10, targets: int = 20
) -> Iterator[tuple[int, bytes]]:
    """``n`` Ethernet/IPv4/TCP SYN frames with valid checksums, each a new
    flow: source 10.x.y.z (``sources`` of them), source port
    1024 + i // sources, destination 198.51.100.(1 + i % targets) on one of
    SCAN_PORTS."""
    for i in range(n):
        s = i % sources
        src = bytes((10, 1 + (s >> 16 & 0x7F), s >> 8 & 0xFF, s & 0xFF))
        dst = bytes((198, 51, 100, 1 + i % targets))
        sport = 1024 + (i // sources) % 64000
        dport = SCAN_PORTS[(i // targets) % len(SCAN_PORTS)]
        yield t0_us + i * gap_us, tcp_frame(src, dst, sport, dport, i * 2654435761, 0, 0x02, i)


def write_pcap(path: Path, frames: Iterator[tuple[int, bytes]], linktype: int = 1) -> int:
    n = 0
    rec = struct.Struct("<IIII")
    with open(path, "wb", buffering=1 << 20) as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for ts, data in frames:
            s, us = divmod(ts, 1_000_000)
            f.write(rec.pack(s, us, len(data), len(data)))
            f.write(data)
            n += 1
    return n


def ftp_frames(t0_us: int, span_us: int) -> list[tuple[int, bytes]]:
    if str(REPO) not in sys.path:  # run as a script: python fuzz/scan.py
        sys.path.insert(0, str(REPO))
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from tests.support.craft import Tcp

    out = []
    for i in range(5):
        t = (t0_us + (i + 1) * span_us // 6) / 1e6
        c = Tcp("192.168.56.10", FTP_SERVER, 40000 + i, 21, t).handshake()
        for said, line in zip(FTP_SERVER_SAYS, (b"USER anonymous\r\n", b"PASS guest@\r\n", b"QUIT\r\n", None)):
            c.s2c(said)
            if line is not None:
                c.c2s(line)
        out += [(int(round(float(p.time) * 1e6)), bytes(p)) for p in c.fin().pkts]
    return out


def merged(scan: Iterator[tuple[int, bytes]], extra: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    extra = sorted(extra)
    j = 0
    for ts, f in scan:
        while j < len(extra) and extra[j][0] <= ts:
            yield extra[j]
            j += 1
        yield ts, f
    yield from extra[j:]


def replay(pcap: Path, cfg: Path, out: Path | None = None) -> dict[str, Any]:
    """``xfer-sensor replay PCAP --config CFG --format json [--out OUT]`` as a
    child process: its exit code, summary (``res``), stderr, peak RSS (MiB,
    ``wait4``), wall and CPU (user + sys) seconds."""
    exe = Path(sys.executable).parent / "xfer-sensor"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sensor"]
    cmd += ["replay", str(pcap), "--config", str(cfg), "--format", "json", "--progress", "never"]
    if out is not None:
        cmd += ["--out", str(out)]
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO)
        _, status, ru = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    rc = os.waitstatus_to_exitcode(status)
    return {
        "rc": rc,
        "res": json.loads(stdout) if rc == 0 else None,
        "stderr": stderr.decode(errors="replace"),
        "rss_mb": ru.ru_maxrss / 1024,
        "wall_s": elapsed,
        "cpu_s": ru.ru_utime + ru.ru_stime,
    }


def _written(out: Path) -> tuple[list[tuple[str, str, str, int]], int]:
    """From the records written to ``out``: the FTP sessions' (ActionType,
    ConnState, AppUser, ReceivedBytes), and the attempts the
    connection_attempts records count."""
    ftp = []
    with open(out / "connections.jsonl", "rb") as f:
        for line in f:
            if FTP_SERVER.encode() in line:
                r = json.loads(line)
                if r["RemoteIP"] == FTP_SERVER:
                    ftp.append((r["ActionType"], r["ConnState"], r["AppUser"], r["ReceivedBytes"]))
    attempts = 0
    with open(out / "weird.jsonl", "rb") as f:
        for line in f:
            w = json.loads(line)
            if w["Name"] == "connection_attempts":
                attempts += w["Attempts"]
    return sorted(ftp), attempts


def report(run: dict[str, Any], checks: dict[str, bool]) -> int:
    """Print the replay's figures and the checks; 0 when all pass."""
    res = run["res"]
    n = res["packets"]
    print(
        f"replayed {n:,} packets in {run['wall_s']:.1f} s wall ({n / run['wall_s']:,.0f} packets/s), "
        f"{run['cpu_s']:.1f} s CPU ({n / max(run['cpu_s'], 1e-9):,.0f} packets per CPU-second), "
        f"peak RSS {run['rss_mb']:.1f} MB, {res['connections']:,} connection records, {res['transfers']:,} transfers"
    )
    print("flows: " + ", ".join(f"{k} {v:,}" for k, v in res["stats"]["flows"].items()))
    print("expectations: " + ", ".join(f"{k} {v:,}" for k, v in res["stats"]["expectations"].items()))
    print("detect: " + ", ".join(f"{k} {v:,}" for k, v in res["stats"]["detect"].items()))
    print("attempts: " + ", ".join(f"{k} {v:,}" for k, v in res["stats"]["attempts"].items()))
    for line in run["stderr"].splitlines():
        print(f"stderr: {line}")
    for text, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--syns", type=int, default=1_000_000)
    ap.add_argument("--sources", type=int, default=50_000)
    ap.add_argument("--gap-us", type=int, default=10, help="packet time between SYNs")
    ap.add_argument("--max-flows", type=int, default=100_000)
    ap.add_argument("--rss-bound-mb", type=float, default=200.0)
    ap.add_argument("--dir", help="where to write the capture (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the capture")
    ap.add_argument(
        "--out", help="replay with --out DIR: the records written (and counted) as a deployment writes them"
    )
    ap.add_argument("--each", action="store_true", help="attempt_records: each (one record per unanswered SYN)")
    args = ap.parse_args(argv)

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="xfer-scan-"))
    work.mkdir(parents=True, exist_ok=True)
    pcap, cfg = work / "scan.pcap", work / "scan.yaml"
    cfg.write_text(CONFIG.format(max_flows=args.max_flows, attempt_records="each" if args.each else "aggregate"))
    t0_us = 1_790_000_000_000_000
    span = args.syns * args.gap_us
    t = time.perf_counter()
    n = write_pcap(pcap, merged(syn_scan_frames(args.syns, args.sources, t0_us, args.gap_us), ftp_frames(t0_us, span)))
    print(f"wrote {n:,} packets ({pcap.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s: {pcap}")

    out = Path(args.out) if args.out else None
    run = replay(pcap, cfg, out)
    if run["rc"] != 0:
        print(f"xfer-sensor exited {run['rc']}\n{run['stderr'][-3000:]}")
        return 1
    res = run["res"]
    fl = res["stats"]["flows"]
    alerts = [a for a in res["alerts"] if a.get("RemoteIP") == FTP_SERVER]
    agg = res["stats"]["attempts"]["aggregated"]
    overflow = args.syns > args.max_flows
    checks = {
        f"active_max {fl['active_max']:,} <= max_flows {args.max_flows:,}": fl["active_max"] <= args.max_flows,
        f"flows created {fl['created']:,} == ended {fl['ended']:,}": fl["created"] == fl["ended"],
        f"evicted {fl['evicted']:,} > 0": fl["evicted"] > 0 or not overflow,
        f"FTP alert: {[(a['ConnectionCount'], a['AccountName']) for a in alerts]} == [(5, 'anonymous')]": [
            (a["ConnectionCount"], a["AccountName"]) for a in alerts
        ]
        == [(5, "anonymous")],
        "overflow and emergency reported on stderr": not overflow
        or ("flow table full" in run["stderr"] and "emergency mode" in run["stderr"]),
        f"connection records {res['connections']:,} + attempts aggregated {agg:,} == flows created {fl['created']:,}": res[
            "connections"
        ]
        + agg
        == fl["created"],
        "aggregated attempts reported on stderr": not agg or f"unanswered attempts aggregated: {agg} " in run["stderr"],
        f"peak RSS {run['rss_mb']:.1f} MB <= {args.rss_bound_mb:.0f} MB": run["rss_mb"] <= args.rss_bound_mb,
    }
    if out is not None:
        with open(out / "connections.jsonl", "rb") as f:
            lines = sum(1 for _ in f)
        checks[f"{lines:,} lines in connections.jsonl == {res['connections']:,} records"] = lines == res["connections"]
        ftp, attempts = _written(out)
        want = ("ConnectionSuccess", "SF", "anonymous", sum(map(len, FTP_SERVER_SAYS)))
        checks[f"FTP records {ftp} == 5 x {want}"] = ftp == [want] * 5
        checks[f"Attempts in weird.jsonl {attempts:,} == aggregated {agg:,}"] = attempts == agg
    rc = report(run, checks)
    if not args.keep and not args.dir:
        pcap.unlink()
        cfg.unlink()
        work.rmdir()
    return rc


if __name__ == "__main__":
    sys.exit(main())
