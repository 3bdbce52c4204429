#!/usr/bin/env python3
"""Bounded state under a TFTP read-request flood, as one command:

    python fuzz/tftp_flood.py [--requests 200000] [--max-flows 100000] [--keep]

Writes (with struct, valid IPv4/UDP checksums) a capture of ``--requests``
TFTP read requests (RRQ) to port 69 of one public server, from as many
source ports (``--clients`` home addresses, ports 1024 up), 10 us apart.
Each request is a UDP flow with the TFTP analyzer and announces the
server's answer from a new port (an expectation), so the flood presses on
the flow table and the expectation table together. ``--transfers`` real
read transfers (RRQ, DATA blocks from the server's new port, ACKs) are
spread through it. Replays it with ``xfer-sensor replay --format json`` as
a child process and checks: tracked flows never above ``max_flows``,
every flow ended, the overflow reported on stderr, each real transfer
recorded complete with its bytes, the child's peak RSS (``wait4``) under
``--rss-bound-mb`` (200). Exit status 1 when a check fails.

``flood_frames`` and ``transfer_frames`` are also used by
tests/test_bounded_state.py (small floods).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python fuzz/tftp_flood.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.scan import merged, replay, report, udp_frame, write_pcap

SERVER = bytes((203, 0, 113, 69))
T0_US = 1_790_000_000_000_000
CONFIG = """\
home_net: [192.168.56.0/24]
ip_type_overrides: {{203.0.113.0/24: Public}}
limits: {{max_flows: {max_flows}}}
"""


def client(k: int) -> bytes:
    return bytes((192, 168, 56, 10 + k))


def flood_frames(
    n: int, clients: int = 4, t0_us: int = T0_US, gap_us: int = 10, first_port: int = 1024
) -> Iterator[tuple[int, bytes]]:
    """``n`` RRQs to SERVER:69, each from its own (client address, port):
    client ``i % clients``, port ``first_port + i // clients``."""
    per = 65536 - first_port
    if n > clients * per:
        raise ValueError(f"{n} requests need more than {clients} clients")
    for i in range(n):
        port = first_port + i // clients
        rrq = b"\x00\x01flood-%d.bin\x00octet\x00" % i
        yield t0_us + i * gap_us, udp_frame(client(i % clients), SERVER, port, 69, rrq, i)


def transfer_frames(
    t_us: int, cli: bytes, cport: int, sport: int, name: bytes, size: int, step_us: int = 1000
) -> list[tuple[int, bytes]]:
    """A complete TFTP read of ``size`` bytes: RRQ to port 69, DATA blocks
    of 512 bytes from the server's port ``sport``, each ACKed."""
    out = [(t_us, udp_frame(cli, SERVER, cport, 69, b"\x00\x01" + name + b"\x00octet\x00", 1))]
    block, sent, ident = 1, 0, 2
    while True:
        chunk = min(512, size - sent)
        t_us += step_us
        data = b"\x00\x03" + block.to_bytes(2, "big") + bytes((block & 0xFF,)) * chunk
        out.append((t_us, udp_frame(SERVER, cli, sport, cport, data, ident)))
        t_us += step_us
        out.append((t_us, udp_frame(cli, SERVER, cport, sport, b"\x00\x04" + block.to_bytes(2, "big"), ident + 1)))
        sent += chunk
        block += 1
        ident += 2
        if chunk < 512:
            return out


# the real transfers: (client address, client port, size); ports outside the flood's
REAL = [(bytes((192, 168, 56, 200)), 60000 + k, 3000 + 1000 * k) for k in range(5)]


def real_transfers(span_us: int, count: int = len(REAL), t0_us: int = T0_US) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for k, (cli, cport, size) in enumerate(REAL[:count]):
        t = t0_us + (k + 1) * span_us // (count + 1)
        out += transfer_frames(t, cli, cport, 50000 + k, b"real-%d.bin" % k, size)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=4, help="client addresses the requests come from")
    ap.add_argument("--transfers", type=int, default=len(REAL), help=f"real transfers (at most {len(REAL)})")
    ap.add_argument("--gap-us", type=int, default=10, help="packet time between requests")
    ap.add_argument("--max-flows", type=int, default=100_000)
    ap.add_argument("--rss-bound-mb", type=float, default=200.0)
    ap.add_argument("--dir", help="where to write the capture (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the capture")
    args = ap.parse_args(argv)
    count = min(args.transfers, len(REAL))

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="xfer-tftp-flood-"))
    work.mkdir(parents=True, exist_ok=True)
    pcap, cfg = work / "tftp-flood.pcap", work / "tftp-flood.yaml"
    cfg.write_text(CONFIG.format(max_flows=args.max_flows))
    span = args.requests * args.gap_us
    t = time.perf_counter()
    frames = merged(flood_frames(args.requests, args.clients, T0_US, args.gap_us), real_transfers(span, count))
    n = write_pcap(pcap, frames)
    print(f"wrote {n:,} packets ({pcap.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s: {pcap}")

    run = replay(pcap, cfg)
    if run["rc"] != 0:
        print(f"xfer-sensor exited {run['rc']}\n{run['stderr'][-3000:]}")
        return 1
    res = run["res"]
    fl = res["stats"]["flows"]
    overflow = args.requests > args.max_flows
    want = sorted(size for _, _, size in REAL[:count])
    # the records themselves are not in the summary: count transfers and check the bytes the hunt saw
    checks = {
        f"active_max {fl['active_max']:,} <= max_flows {args.max_flows:,}": fl["active_max"] <= args.max_flows,
        f"flows created {fl['created']:,} == ended {fl['ended']:,}": fl["created"] == fl["ended"],
        f"evicted {fl['evicted']:,} > 0": fl["evicted"] > 0 or not overflow,
        "overflow reported on stderr": not overflow or "flow table full" in run["stderr"],
        f"transfers {res['transfers']:,} == real transfers {count}": res["transfers"] == count,
        f"TFTP alert on {want} bytes": count <= 3
        or any(a.get("Protocol") == "TFTP" and a.get("FileBytes") == sum(want) for a in res["alerts"]),
        f"peak RSS {run['rss_mb']:.1f} MB <= {args.rss_bound_mb:.0f} MB": run["rss_mb"] <= args.rss_bound_mb,
    }
    rc = report(run, checks)
    if not args.keep and not args.dir:
        pcap.unlink()
        cfg.unlink()
        work.rmdir()
    return rc


if __name__ == "__main__":
    sys.exit(main())
