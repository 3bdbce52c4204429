#!/usr/bin/env python3
"""Deterministic capture of N short TCP connections to file-transfer ports, for the report's scale test.

Each connection is a handshake and a client RST (4 frames, Ethernet/IPv4,
correct lengths and IPv4/TCP checksums, which the sensor verifies): ``--repeated`` (client, remote, port) keys get ``--per-key``
connections each (so they alert under a config that makes the remotes
Public), every other connection goes to its own remote. Remotes are in
11.0.0.0/8 (global), clients in 10.1.0.0/16. Written with ``struct``, no scapy.

    python bench/gen_conns.py --connections 100000 --out /tmp/conns-100k.pcap
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

PORTS = (21, 445, 990, 139)
T0_US = 1_795_737_600_000_000  # 2026-11-27T00:00:00Z


def _ip(a: int) -> bytes:
    return struct.pack("!I", a)


def _csum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = _ip(src) + _ip(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, _ip(src), _ip(dst))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
    return eth + ip + tcp


def generate(out: Path, connections: int, repeated: int = 100, per_key: int = 10, span_s: int = 7200) -> int:
    client_base = (10 << 24) | (1 << 16)
    remote_base = 11 << 24
    plan: list[tuple[int, int, int]] = []  # (client, remote, port)
    for k in range(min(repeated, connections // max(per_key, 1))):
        plan += [(client_base + k % 250 + 1, remote_base + k + 1, PORTS[k % len(PORTS)])] * per_key
    i = 0
    while len(plan) < connections:
        plan.append((client_base + 256 + i % 4000, remote_base + 100_000 + i, PORTS[i % len(PORTS)]))
        i += 1
    # interleave deterministically: connection n starts at n * span / N
    order = sorted(range(len(plan)), key=lambda n: (n * 7919) % len(plan))
    step = span_s * 1_000_000 // max(1, len(plan))
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for slot, n in enumerate(order):
            client, remote, port = plan[n]
            sport = 20000 + slot % 40000
            t = T0_US + slot * step
            isn_c, isn_s = 1000 + slot, 5000 + slot
            for dt, fr in (
                (0, _frame(client, remote, sport, port, isn_c, 0, 0x02)),
                (200, _frame(remote, client, port, sport, isn_s, isn_c + 1, 0x12)),
                (400, _frame(client, remote, sport, port, isn_c + 1, isn_s + 1, 0x10)),
                (600, _frame(client, remote, sport, port, isn_c + 1, 0, 0x04)),
            ):
                ts = t + dt
                f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(fr), len(fr)))
                f.write(fr)
    return len(plan)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--repeated", type=int, default=100, help="keys with --per-key connections each (alerts)")
    ap.add_argument("--per-key", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    n = generate(a.out, a.connections, a.repeated, a.per_key)
    print(f"{n} connections, {4 * n} packets -> {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
