#!/usr/bin/env python3
"""A/B replay timing: several xfer-sensor commands on one capture, alternating.

Each variant is a label and a command: ``{pcap}`` and ``{out}`` in it stand
for the capture and a fresh output folder; without them, ``replay {pcap}
--out {out}`` is put after the program. The harness times the subprocess from spawn to exit
(interpreter start-up and imports included). Runs go round-robin, the first
variant of each round rotating, so drift and noise from the machine fall on
every variant alike. Reported per variant: best, median and worst wall time,
packets/s at the best and the median, and the ratio to the first variant
(> 1: slower than it) three ways: best against best, median against median,
and the median of the per-round ratios -- the runs of one round are next to
each other in time, so on a machine whose speed drifts (a shared VM) that
last one is the steadiest. Standard library only::

    python bench/ab.py --repeat 8 \\
        --variant "before=/tmp/basev/bin/xfer-sensor" \\
        --variant "main=.venv/bin/xfer-sensor" --same before,main

The capture defaults to ``bench/data/mixed-1m.pcap`` (``python bench/gen_mixed.py``
writes it). It is read once before the runs so every run reads it from the
page cache. ``--same a,b`` checks that variants a and b wrote byte for byte
the same records (a difference is reported and the exit status is 1). The table is printed and
written as JSON to ``bench/results/ab-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("connections", "transfers", "weird", "alerts")


def count_packets(path: Path) -> int:
    """Packets of a classic pcap, by walking its record headers."""
    with open(path, "rb") as f:
        head = f.read(24)
        end = {
            b"\xd4\xc3\xb2\xa1": "<",
            b"\xa1\xb2\xc3\xd4": ">",
            b"\x4d\x3c\xb2\xa1": "<",
            b"\xa1\xb2\x3c\x4d": ">",
        }.get(head[:4])
        if end is None:
            return 0
        n = 0
        rec = struct.Struct(end + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                return n
            f.seek(rec.unpack(h)[2], 1)
            n += 1


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def records(out: Path) -> dict[str, bytes]:
    return {k: (out / f"{k}.jsonl").read_bytes() for k in KINDS if (out / f"{k}.jsonl").exists()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pcap", type=Path, default=HERE / "data" / "mixed-1m.pcap")
    ap.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="LABEL=COMMAND",
        help="a label and the command prefix that runs xfer-sensor (repeatable; the first is the baseline)",
    )
    ap.add_argument("--repeat", type=int, default=6, help="runs per variant (default 6)")
    ap.add_argument(
        "--same",
        default="",
        metavar="LABEL,LABEL,...",
        help="variants whose records must be byte for byte the same (checked on the first round)",
    )
    ap.add_argument("--results", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    same = set(filter(None, args.same.split(",")))
    variants = []
    for v in args.variant:
        label, sep, cmd = v.partition("=")
        if not sep or not cmd.strip():
            ap.error(f"--variant {v!r}: expected LABEL=COMMAND")
        parts = shlex.split(cmd)
        if not any("{pcap}" in a for a in parts):
            parts[1:1] = ["replay", "{pcap}", "--out", "{out}"]
        variants.append((label, parts))
    if not args.pcap.exists():
        ap.error(f"{args.pcap}: no such capture (python bench/gen_mixed.py writes the default one)")
    packets = count_packets(args.pcap)
    warm(args.pcap)
    times: dict[str, list[float]] = {label: [] for label, _ in variants}
    mismatch = []
    with tempfile.TemporaryDirectory(prefix="xfer-ab-") as tmp:
        first: dict[str, list[bytes]] | None = None
        first_label = ""
        for r in range(args.repeat):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for label, cmd in order:
                out = Path(tmp) / f"{label}-{r}"
                t0 = time.perf_counter()
                full = [a.replace("{pcap}", str(args.pcap)).replace("{out}", str(out)) for a in cmd]
                p = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                wall = time.perf_counter() - t0
                if p.returncode != 0:
                    print(f"{label}: exit {p.returncode}\n{p.stderr.decode(errors='replace')}", file=sys.stderr)
                    return 2
                times[label].append(wall)
                if r == 0 and label in same:
                    recs = records(out)
                    if first is None:
                        first, first_label = recs, label
                    elif recs != first:
                        mismatch.append(label)
    base_label = variants[0][0]
    rows = []
    b_best, b_med = min(times[base_label]), statistics.median(times[base_label])
    for label, cmd in variants:
        ts = times[label]
        best, med = min(ts), statistics.median(ts)
        per_round = statistics.median(t / b for t, b in zip(ts, times[base_label]))
        rows.append(
            {
                "variant": label,
                "command": " ".join(cmd),
                "runs": ts,
                "best_s": best,
                "median_s": med,
                "worst_s": max(ts),
                "pps_best": packets / best,
                "pps_median": packets / med,
                "ratio_best": best / b_best,
                "ratio_median": med / b_med,
                "ratio_per_round": per_round,
            }
        )
    print(f"{args.pcap} ({packets:,} packets), {args.repeat} runs per variant, alternating\n")
    print(
        f"{'variant':<24} {'best s':>7} {'median s':>9} {'worst s':>8} {'pkts/s (median)':>16} "
        f"{'x base (best)':>14} {'x base (median)':>16} {'x base (per round)':>19}"
    )
    for row in rows:
        print(
            f"{row['variant']:<24} {row['best_s']:>7.2f} {row['median_s']:>9.2f} {row['worst_s']:>8.2f} "
            f"{row['pps_median']:>16,.0f} {row['ratio_best']:>14.2f} {row['ratio_median']:>16.2f} "
            f"{row['ratio_per_round']:>19.2f}"
        )
    if mismatch:
        print(f"\nrecords differ from {first_label}'s: {', '.join(mismatch)}")
    elif same:
        print(f"\nrecords byte for byte the same: {', '.join(sorted(same))}")
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.results / f"ab-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "pcap": str(args.pcap),
                "packets": packets,
                "repeat": args.repeat,
                "rows": rows,
                "records_differ": mismatch,
            },
            indent=1,
        )
    )
    print(f"\nwritten to {path}")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
