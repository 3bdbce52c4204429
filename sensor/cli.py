"""Command line: ``xfer-sensor replay`` and ``xfer-sensor check``.

Exit codes: 0 done; 2 bad input (missing/unreadable/not-a-capture file, bad
config or rules) -- one clear line on stderr, never a traceback; 3 a capture
was damaged part-way (every whole packet before the damage was processed and
everything was flushed and written).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .capture import CaptureError, read_file
from .config import ConfigError, load_config
from .outputs import KINDS, JsonlSink, TeeSink
from .pipeline import Pipeline
from .records import RECORD_FIELDS
from .rules import RuleError, RuleSet, load_rules

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_DAMAGED = 0, 1, 2, 3


def default_rules_dir() -> Path:
    """``rules/`` of a source checkout, else the installed copy."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "rules", Path(sys.prefix) / "share" / "xfer-sensor" / "rules",
                 Path("/etc/xfer-sensor/rules.d")):
        if cand.is_dir():
            return cand
    return here.parent / "rules"


def load_all(config_path: str | None, rules_path: str | None):
    cfg = load_config(config_path)
    rules = load_rules(rules_path or default_rules_dir(), RECORD_FIELDS)
    return cfg, rules


def _table(alerts: list[dict]) -> str:
    cols = ("ConnectionCount", "DeviceName", "InitiatingProcessFileName", "RemoteIP", "RemotePort",
            "AccountName", "Protocol", "BytesSent", "BytesReceived", "FirstSeen", "LastSeen")
    heads = ("Count", "Device", "Process", "RemoteIP", "Port", "Account", "Protocol", "BytesSent",
             "BytesRecv", "FirstSeen", "LastSeen")
    rows = [[str(a.get(c, "")) for c in cols] for a in alerts]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*heads), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _printable(s: str, limit: int = 120) -> str:
    """Wire text for a terminal: control and other unprintable characters
    escaped, so a filename can never move the cursor or forge a line."""
    out = "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                  for c in s[:limit])
    return out + ("..." if len(s) > limit else "")


def _files(alerts: list[dict], per_alert: int = 10) -> str:
    lines = []
    for i, a in enumerate(alerts, 1):
        files = a.get("Files", [])
        head = (f"[{i}] {a.get('DeviceName')} -> {a.get('RemoteIP')}:{a.get('RemotePort')} "
                f"({a.get('Protocol')}): {len(files)} file(s) moved, {_human(a.get('FileBytes', 0))}")
        lines.append(head)
        for f in files[:per_alert]:
            name = _printable(f.get("Filename") or "")
            share = f" on {_printable(f['Share'])}" if f.get("Share") else ""
            done = "" if f.get("Complete") else " (incomplete)"
            lines.append(f"      {f.get('Direction', ''):<8} {int(f.get('Bytes') or 0):>12} B  {name}{share}{done}")
        if len(files) > per_alert:
            lines.append(f"      ... and {len(files) - per_alert} more (transfers.jsonl)")
    return "\n".join(lines)


def sort_alerts(alerts: list[dict]) -> list[dict]:
    return sorted(alerts, key=lambda a: (-int(a.get("ConnectionCount", 0)), a.get("FirstSeen", ""),
                                         str(a.get("RemoteIP", "")), a.get("RemotePort", 0) or 0))


MAX_SUMMARY_TRANSFERS = 100_000   # transfers remembered for the replay summary


class _SummarySink:
    """Counts records and remembers transfers by control connection, so the
    summary can list, per alert, the files moved."""

    def __init__(self) -> None:
        self.counts = {k: 0 for k in KINDS}
        self.transfers: dict[str, list[dict]] = {}
        self.kept = 0

    def emit(self, kind: str, rec: dict) -> None:
        self.counts[kind] += 1
        if kind == "transfers" and self.kept < MAX_SUMMARY_TRANSFERS:
            self.kept += 1
            self.transfers.setdefault(rec.get("ControlUid", ""), []).append(
                {k: rec.get(k) for k in ("Protocol", "Filename", "Direction", "Bytes", "Complete", "Share")})

    def files_for(self, alert: dict) -> list[dict]:
        out = []
        for uid in alert.get("Uids", ()):
            out.extend(self.transfers.get(uid, ()))
        return out

    def close(self) -> None:
        pass


def cmd_replay(args: argparse.Namespace) -> int:
    cfg, rules = load_all(args.config, args.rules)
    mem = _SummarySink()
    sink = TeeSink(JsonlSink(args.out), mem) if args.out else mem
    pipe = Pipeline(cfg, rules, sink)
    t0 = time.perf_counter()
    damaged = []
    packets = 0
    try:
        for path in args.pcap:
            res = read_file(path, pipe.handler_for, pipe.capture_filters(), pipe.refilter)
            packets += res.packets
            if res.error:
                damaged.append(f"{path}: damaged after {res.packets} packets: {res.error}")
                print(f"xfer-sensor: warning: {damaged[-1]}", file=sys.stderr)
    finally:
        pipe.finish()
        sink.close()
    elapsed = time.perf_counter() - t0
    alerts = pipe.detector.hunt_results()
    conns = mem.counts["connections"]
    alerts = sort_alerts(alerts)
    for a in alerts:
        files = mem.files_for(a)
        a["Files"] = files
        a["FileBytes"] = sum(int(f.get("Bytes") or 0) for f in files)
    if args.format == "json":
        json.dump({"alerts": alerts, "stats": pipe.stats(), "packets": packets,
                   "connections": conns, "transfers": mem.counts["transfers"]}, sys.stdout, indent=1)
        print()
    else:
        out = sys.stdout
        print(f"{packets} packets passed the capture filter, {conns} connections, "
              f"{mem.counts['transfers']} transfers, {len(alerts)} alert(s) in {elapsed:.2f}s", file=out)
        by = pipe.stats()["connections"]
        if by:
            print("connections by ActionType: " + ", ".join(f"{k} {v}" for k, v in by.items()), file=out)
        if alerts:
            print(file=out)
            print(_table(alerts), file=out)
            print(file=out)
            print(_files(alerts), file=out)
        else:
            print("no alerts", file=out)
        if args.out:
            print(f"\nrecords written to {str(args.out).rstrip('/')}/ (connections.jsonl, alerts.jsonl, transfers.jsonl, weird.jsonl)", file=out)
    return EXIT_DAMAGED if damaged else EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    cfg, rules = load_all(args.config, args.rules)
    print(f"ok: config {cfg.source}; {len(rules.detections)} detection rule(s), "
          f"{len(rules.correlations)} correlation rule(s) from {args.rules or default_rules_dir()}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xfer-sensor", description="File-transfer C2/exfiltration sensor (T1071.002)")
    ap.add_argument("--version", action="version", version=f"xfer-sensor {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("replay", help="replay pcap/pcapng files through the sensor")
    rp.add_argument("pcap", nargs="+", help="capture files, replayed in order as one stream")
    rp.add_argument("--config", help="config YAML (default: built-in defaults)")
    rp.add_argument("--rules", help="rules folder or file (default: the shipped rules/)")
    rp.add_argument("--out", help="write connections.jsonl, alerts.jsonl, weird.jsonl here")
    rp.add_argument("--format", choices=("table", "json"), default="table", help="summary format on stdout")
    rp.set_defaults(func=cmd_replay)
    ck = sub.add_parser("check", help="validate config and rules, exit non-zero when wrong")
    ck.add_argument("--config")
    ck.add_argument("--rules")
    ck.set_defaults(func=cmd_check)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RuleError, CaptureError) as e:
        print(f"xfer-sensor: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): not an error; keep Python from complaining at exit
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
