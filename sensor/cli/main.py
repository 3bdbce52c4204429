"""Command line: ``xfer-sensor replay``, ``check`` and ``rules list|test|export``.

Exit codes: 0 done; 2 bad input, one line on stderr, never a traceback; 3 a
capture damaged part-way (everything before the damage written); 4 records
not all written; 5 packets but nothing decodable; 130/143 SIGINT/SIGTERM
(what was read is written). Commands, options and exit codes: docs/usage.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sensor import __version__
from sensor.attribution.recording import recording_book
from sensor.cli import export as export_cli
from sensor.cli import hunt as hunt_cli
from sensor.cli import report as report_cli
from sensor.cli.progress import Progress, ProgressAwareHandler
from sensor.cli.ruleargs import add_rule_options, load_rule_set, rules_path
from sensor.cli.summary import DEFAULT_TOP, HuntSummary, no_alert_reason, render
from sensor.cli.summary import printable as _printable
from sensor.core.config import PROFILES, ConfigError, SyslogOutput, check_syslog, load_config
from sensor.detect.filters import AllowFilter, is_active
from sensor.detect.rules import DetectionRule, RuleError, RuleSet, load_rules
from sensor.io.capture import CaptureError, Stop, count_frames, linktype_name, read_file
from sensor.io.inputs import Inputs, print_notes, resolve
from sensor.io.outdir import check_outdir
from sensor.io.sinks import MemorySink, TeeSink, build_outputs
from sensor.pipeline import Pipeline, decodable, min_frame_bytes
from sensor.records.encode import KINDS
from sensor.records.mde import RECORD_FIELDS
from sensor.report import ReportError

log = logging.getLogger("xfer-sensor")

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_DAMAGED = 0, 1, 2, 3
EXIT_NOT_WRITTEN = 4  # records could not all be written (disk full, I/O error, a sink that failed)
EXIT_UNDECODABLE = 5  # a capture had packets but none the sensor could decode
# SIGINT and SIGTERM: 128 + the signal (130, 143), after writing what was read


def load_all(args: argparse.Namespace):
    """Config, rules and allow filters, validated the one way check, replay,
    rules list and rules test use (the daemon: the same load_rules call)."""
    cfg = load_config(getattr(args, "config", None))
    return cfg, load_rule_set(args, cfg)


def _table(alerts: list[dict]) -> str:
    cols = (
        "ConnectionCount",
        "DeviceName",
        "InitiatingProcessFileName",
        "RemoteIP",
        "RemotePort",
        "AccountName",
        "Protocol",
        "BytesSent",
        "BytesReceived",
        "FirstSeen",
        "LastSeen",
    )
    heads = (
        "Count",
        "Device",
        "Process",
        "RemoteIP",
        "Port",
        "Account",
        "Protocol",
        "BytesSent",
        "BytesRecv",
        "FirstSeen",
        "LastSeen",
    )
    # wire text (an FTP USER, an SMB user) is escaped and cut for the terminal
    rows = [[_printable(str(a.get(c, "")), 64) for c in cols] for a in alerts]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*heads), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _files(alerts: list[dict], per_alert: int = 10) -> str:
    lines = []
    for i, a in enumerate(alerts, 1):
        files = a.get("Files", [])
        head = (
            f"[{i}] {a.get('DeviceName')} -> {a.get('RemoteIP')}:{a.get('RemotePort')} "
            f"({a.get('Protocol')}): {len(files)} file(s) moved, {_human(a.get('FileBytes', 0))}"
        )
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
    return sorted(
        alerts,
        key=lambda a: (
            -int(a.get("ConnectionCount", 0)),
            a.get("FirstSeen", ""),
            str(a.get("RemoteIP", "")),
            a.get("RemotePort", 0) or 0,
        ),
    )


MAX_SUMMARY_TRANSFERS = 100_000  # transfers remembered for the replay summary


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
                {k: rec.get(k) for k in ("Protocol", "Filename", "Direction", "Bytes", "Complete", "Share")}
            )

    def files_for(self, alert: dict) -> list[dict]:
        out: list[dict] = []
        for uid in alert.get("Uids", ()):
            out.extend(self.transfers.get(uid, ()))
        return out

    def close(self) -> None:
        pass


def _syslog_arg(args: argparse.Namespace, base: SyslogOutput | None) -> SyslogOutput | None:
    """``--syslog HOST:PORT`` (``[v6addr]:PORT``), ``--syslog-protocol`` and the
    TLS files (``--syslog-ca``, ``--syslog-cert``, ``--syslog-key``) over the config's."""
    text, proto = args.syslog, args.syslog_protocol
    tls = {k: getattr(args, f"syslog_{k}") for k in ("ca", "cert", "key")}
    tls = {k: v for k, v in tls.items() if v is not None}
    if text is None:
        if base is None:
            if proto or tls:
                raise ConfigError(
                    "command line", "--syslog", "--syslog-protocol/-ca/-cert/-key need --syslog HOST:PORT"
                )
            return None
        b = dataclasses.replace(base, protocol=proto or base.protocol, **tls)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ConfigError("--syslog", "syslog", f"expected HOST:PORT, got {text!r}")
        host = host.strip("[]")
        b = base or SyslogOutput()
        b = dataclasses.replace(b, host=host, port=int(port), protocol=proto or b.protocol, **tls)
    return check_syslog("command line", b)


def _catch_stop(stop: Stop) -> Any:
    """SIGINT and SIGTERM ask the replay to stop (``stop``); a second one
    leaves at once. Returns what restores the previous handlers (None when
    not on the main thread, where no handler can be installed)."""

    def on_signal(signum: int, frame: Any) -> None:
        if stop.signum:
            os._exit(128 + signum)
        stop.request(signum)

    try:
        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (embedded use)
        return None

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def _why_nothing(
    path: str,
    res: Any,
    before: tuple[int, int, int],
    after: tuple[int, int, int],
    stop: Stop,
    inputs: Inputs | None = None,
) -> tuple[str, int]:
    """Why a capture with packets gave the sensor nothing it could decode
    (a link type it does not know, frames cut before their headers), "" when
    something was decodable (or there was nothing at all); and how many
    frames the capture held (as far as known)."""
    frames, unknown, cut = (a - b for a, b in zip(after, before, strict=True))
    lt = res.linktype
    need = min_frame_bytes(lt)
    if frames == 0 and res.capture_filter is not None and need is not None and not res.stopped:
        # the capture filter rejected everything: look at the frames themselves (those the user selected)
        sel, win = (inputs.select, inputs.window) if inputs is not None else (None, None)
        frames, cut = count_frames(path, need, stop, sel, win.contains if win is not None else None)
    if frames == 0:
        return "", 0
    if unknown == frames:
        why = f"link type {linktype_name(lt)} is not one the sensor decodes: none of its {frames} packet(s) decoded"
    elif cut == frames:
        if need is not None and res.snaplen and res.snaplen < need:
            why = (
                f"snaplen {res.snaplen} leaves no room for headers (link type {linktype_name(lt)} needs "
                f"{need} bytes): none of its {frames} packet(s) decoded"
            )
        else:
            why = f"{cut} of {frames} packets truncated before their headers: none decoded"
    else:
        why = ""
    return why, frames


def cmd_replay(args: argparse.Namespace) -> int:
    stop = Stop()
    restore = _catch_stop(stop)
    try:
        return _replay(args, stop)
    finally:
        if restore is not None:
            restore()


def _replay(args: argparse.Namespace, stop: Stop) -> int:
    cfg, rules = load_all(args)
    inputs = resolve(_input_names(args), args.filter, args.since, args.until)  # all checked before reading
    args.pcap = inputs.paths
    if args.out is not None and cfg.output.files:
        check_outdir(args.out)  # before any packet is read
    output = cfg.output
    if args.profile:
        output = dataclasses.replace(output, profile=args.profile)
    syslog = _syslog_arg(args, output.syslog)
    to_stdout = bool(args.stdout or output.stdout)
    summary_out = sys.stderr if to_stdout else sys.stdout
    mem = _SummarySink()
    hunt = HuntSummary(rules, cfg.limits.max_summary_keys)
    report = report_cli.start(args)

    progress = Progress(args.pcap, enabled=None if args.progress == "auto" else args.progress == "always")
    _log_to(progress)
    t0 = time.perf_counter()
    outputs = build_outputs(
        output, config=cfg, rules=rules, outdir=args.out, stdout=to_stdout, syslog=syslog, block=True
    )
    sink = TeeSink(mem, hunt, outputs, *([report] if report else []))
    try:
        outputs.install_sighup()
    except ValueError:  # not the main thread (embedded use): no signal handler
        pass
    damaged = []
    undecodable = []
    packets = 0
    frames = 0  # frames the captures held, as far as known
    # a flight recording (run --pcap-dir): its packet comments give the process columns
    book = recording_book(args.pcap, cfg.limits.max_comment_chars)
    pipe = Pipeline(cfg, rules, sink, attribution=book)
    detector = pipe.detector
    handler_for = progress.wrap(pipe.handler_for)
    window = inputs.window
    if window is not None:
        handler_for = window.wrap(handler_for)
    print_notes(inputs.notes)
    try:
        for path in args.pcap:
            if stop.signum:
                break
            progress.begin(path)
            if book is not None and (why := book.load(path)):
                progress.clear()
                print(f"xfer-sensor: warning: {path}: {why}", file=sys.stderr)
            before = pipe.undecoded()
            outside = window.outside if window is not None else 0
            res = read_file(
                path,
                handler_for,
                pipe.capture_filters(),
                pipe.refilter,
                watch=pipe.portset,
                stop=stop,
                filter_ok=decodable,
                select=inputs.select,
            )
            progress.end(path)
            packets += res.packets - (window.outside - outside if window is not None else 0)
            if res.error:
                damaged.append(f"{path}: damaged after {res.packets} packets: {res.error}")
                progress.clear()
                print(f"xfer-sensor: warning: {damaged[-1]}", file=sys.stderr)
            why, n = _why_nothing(path, res, before, pipe.undecoded(), stop, inputs)
            frames += n
            if why:
                undecodable.append(f"{path}: {why}")
                progress.clear()
                print(f"xfer-sensor: warning: {undecodable[-1]}", file=sys.stderr)
    finally:
        pipe.finish()
        sink.close()
        progress.finish()
    stats = pipe.stats()
    bounds = pipe.bound_report()  # the flow and expectation tables' bounds reached: one line each
    for line in bounds:
        print(f"xfer-sensor: warning: {line}", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    ostats = outputs.stats()
    lost_total = 0
    for name, st in ostats["sinks"].items():
        lost = st["dropped_overflow"] + st["dropped_error"]
        lost_total += lost
        if lost:
            files = name.startswith("files:")
            by = ", ".join(f"{k}{'.jsonl' if files else ''} {n}" for k, n in st["lost_by_kind"].items())
            why = f": {st['last_error']}" if st["last_error"] else ""
            print(
                f"xfer-sensor: error: {name}: {lost} record(s) not written ({by}; "
                f"{st['dropped_overflow']} queue overflow, {st['dropped_error']} errors){why}",
                file=sys.stderr,
            )
    alerts = detector.hunt_results()
    conns = mem.counts["connections"]
    rc_report = report_cli.finish(args, report, rules, args.pcap)  # before the summary: | head cannot stop it
    alerts = sort_alerts(alerts)
    for a in alerts:
        files = mem.files_for(a)
        a["Files"] = files
        a["FileBytes"] = sum(int(f.get("Bytes") or 0) for f in files)
    tables = hunt.tables(alerts, args.top)
    no_alerts = "" if alerts else no_alert_reason(tables)
    if stop.signum:
        rc = 128 + stop.signum
    elif lost_total or rc_report:
        rc = EXIT_NOT_WRITTEN
    elif damaged:
        rc = EXIT_DAMAGED
    elif undecodable:
        rc = EXIT_UNDECODABLE
    else:
        rc = EXIT_OK
    if undecodable or stats["decoder"]["target"]:
        note = ""
    elif frames:
        note = f"no packet on tracked ports ({frames} packet(s) read)"
    elif inputs.select is not None or window is not None:
        note = "no packet matched " + _selection(args)
    else:
        note = "no packets in the capture" + ("s" if len(args.pcap) > 1 else "")
    interrupted = None
    if stop.signum:
        interrupted = {
            "signal": signal.Signals(stop.signum).name,
            "packets_read": packets,
            # from the signal to here: everything read before it processed and every record written
            "stop_seconds": round(time.monotonic() - stop.at, 6),
        }
    if args.format == "json":
        json.dump(
            {
                "alerts": alerts,
                "hunt": tables,
                "no_alerts": no_alerts,
                "stats": stats,
                "packets": packets,
                "connections": conns,
                "transfers": mem.counts["transfers"],
                "outputs": ostats,
                "bounds": bounds,
                "undecodable": undecodable,
                "note": note,
                "interrupted": interrupted,
                "exit_code": rc,
            },
            summary_out,
            indent=1,
        )
        print(file=summary_out)
    else:
        out = summary_out
        print(
            f"{packets} packets passed the capture filter, {conns} connections, "
            f"{mem.counts['transfers']} transfers, {len(alerts)} alert(s) in {elapsed:.2f}s",
            file=out,
        )
        if note:
            print(note, file=out)
        by = stats["connections"]
        if by:
            print("connections by ActionType: " + ", ".join(f"{k} {v}" for k, v in by.items()), file=out)
        allowed = [e for e in rules.allow_entries if e.hits or e.expired_hits]
        if allowed:
            print(
                "allow filters: "
                + "; ".join(
                    f"{e.rule_id}/{e.name} suppressed {e.hits}"
                    + (f", expired for {e.expired_hits}" if e.expired_hits else "")
                    for e in allowed
                ),
                file=out,
            )
        if alerts:
            print(file=out)
            print(_table(alerts), file=out)
            print(file=out)
            print(_files(alerts), file=out)
        else:
            print("no alerts" + (f": {no_alerts}" if no_alerts else ""), file=out)
        for line in render(tables):
            print(line, file=out)
        if args.out and output.files:
            where = f"{str(args.out).rstrip('/')}/"
            fst = ostats["sinks"].get(f"files:{args.out}", {})
            flost = fst.get("dropped_overflow", 0) + fst.get("dropped_error", 0)
            if flost:
                print(
                    f"\nrecords ({output.profile}) NOT all written to {where}: {fst.get('written', 0)} written, "
                    f"{flost} lost ("
                    + ", ".join(f"{k}.jsonl {n}" for k, n in fst.get("lost_by_kind", {}).items())
                    + "); every line in the files is whole",
                    file=out,
                )
            else:
                print(
                    f"\nrecords ({output.profile}) written to {where} ({', '.join(f'{k}.jsonl' for k in KINDS)})",
                    file=out,
                )
    if interrupted is not None:
        print(
            f"xfer-sensor: interrupted by {interrupted['signal']}: stopped {interrupted['stop_seconds']:.3f}s "
            f"after the signal, the records of the {packets} packet(s) read before it written",
            file=sys.stderr,
        )
    return rc


def _input_names(args: argparse.Namespace) -> list[str]:
    """The inputs in command-line order (``parse_args``); from a namespace of
    ``build_parser().parse_args`` (embedded use): the positionals, then -r."""
    names = getattr(args, "inputs", None)
    return list(names) if names is not None else list(args.pcap or ()) + list(args.read or ())


def _selection(args: argparse.Namespace) -> str:
    """--filter, --since and --until as given, for a message."""
    parts = [f"--filter {args.filter!r}"] if args.filter is not None else []
    parts += [f"{o} {v}" for o, v in (("--since", args.since), ("--until", args.until)) if v is not None]
    return " ".join(parts)


def _log_to(progress: Progress | None) -> None:
    """Warnings and errors of the sensor's loggers go to stderr, one line each."""
    root = logging.getLogger()
    mine = [h for h in root.handlers if isinstance(h, ProgressAwareHandler)]
    if root.handlers and not mine:
        return  # the embedding program (or a test harness) handles logging
    for h in mine:
        root.removeHandler(h)
    h = ProgressAwareHandler(progress)
    h.setFormatter(logging.Formatter("xfer-sensor: %(levelname)s: %(message)s"))
    root.addHandler(h)


def _warn_expired(rules: RuleSet) -> None:
    for f in rules.filters:
        if not is_active(f, datetime.now(UTC)):
            print(
                f"xfer-sensor: warning: allow filter '{f.ref}' ({f.source}) expired on {f.expires} ({f.reason}): "
                "it no longer suppresses events",
                file=sys.stderr,
            )


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def cmd_check(args: argparse.Namespace) -> int:
    cfg, rules = load_all(args)
    _warn_expired(rules)
    print(
        f"ok: config {cfg.source}; {len(rules.detections)} detection rule(s), "
        f"{len(rules.correlations)} correlation rule(s), {_count(len(rules.filters), 'allow filter')} "
        f"from {rules_path(args)}"
    )
    return EXIT_OK


def _filter_status(f: AllowFilter) -> str:
    if f.expires is None:
        return "no expiry"
    return f"{'EXPIRED' if not is_active(f, datetime.now(UTC)) else 'expires'} {f.expires}"


def _filter_row(f: AllowFilter) -> dict[str, Any]:
    return {
        "name": f.name,
        "id": f.id,
        "title": f.title,
        "source": f.source,
        "reason": f.reason,
        "expires": f.expires,
        "expired": not is_active(f, datetime.now(UTC)),
        "filter": json.loads(json.dumps(dict(f.detection), default=str)),
    }


def cmd_rules_list(args: argparse.Namespace) -> int:
    _, rules = load_all(args)
    _warn_expired(rules)
    rows: list[dict[str, Any]] = []
    refs = {d.id: d.ref for d in rules.detections}
    for d in rules.detections:
        rows.append(
            {
                "kind": "detection",
                "id": d.id,
                "name": d.name,
                "title": d.title,
                "level": d.level,
                "source": d.source,
                "feeds": [],
                "filters": [_filter_row(e.filter) for e in d.filters],
            }
        )
    for c in rules.correlations:
        rows.append(
            {
                "kind": "correlation",
                "id": c.id,
                "name": c.name,
                "title": c.title,
                "level": c.level,
                "source": c.source,
                "feeds": [refs.get(r, r) for r in c.rules],
                "filters": [],
                "condition": f"{c.op} {c.threshold} in {c.timespan_s}s by {', '.join(c.group_by)}",
            }
        )
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        print()
        return EXIT_OK
    for r in rows:
        print(f"{r['kind']:<11} {r['level']:<8} {r['id']}  {r['name'] or '-'}")
        print(f"{'':20} {r['title']}")
        print(f"{'':20} {r['source']}")
        if r["kind"] == "correlation":
            print(f"{'':20} counts {', '.join(r['feeds'])}: {r['condition']}")
        for d in rules.detections:
            if d.id == r["id"]:
                for e in d.filters:
                    print(f"{'':20} filter {e.name}: {_printable(e.reason)} ({_filter_status(e.filter)})")
                    print(f"{'':27} {e.filter.source}")
    print(
        f"{len(rules.detections)} detection rule(s), {len(rules.correlations)} correlation rule(s), "
        f"{_count(len(rules.filters), 'allow filter')}"
    )
    return EXIT_OK


class _ExplainSink:
    """Records, for each connection record, what the tested detection rules made of it."""

    def __init__(self, dets: Sequence[DetectionRule]) -> None:
        self.dets = dets
        self.rows: list[dict] = []
        self.connections = 0

    def emit(self, kind: str, rec: dict) -> None:
        if kind != "connections":
            return
        self.connections += 1
        for d in self.dets:
            v = d.explain(rec)
            if not (v.matched or v.suppressed_by or v.expired):
                continue
            self.rows.append(
                {
                    "rule": d.ref,
                    "verdict": "matched" if v.matched else "suppressed",
                    "Timestamp": rec.get("Timestamp"),
                    "Uid": rec.get("Uid"),
                    "DeviceName": rec.get("DeviceName"),
                    "LocalIP": rec.get("LocalIP"),
                    "RemoteIP": rec.get("RemoteIP"),
                    "RemotePort": rec.get("RemotePort"),
                    "RemoteUrl": rec.get("RemoteUrl", ""),
                    "AppProtocol": rec.get("AppProtocol"),
                    "ActionType": rec.get("ActionType"),
                    "RemoteIPType": rec.get("RemoteIPType"),
                    "TlsSni": (rec.get("AdditionalFields") or {}).get("TlsSni", ""),
                    "selections": list(v.selections),
                    "suppressed_by": [
                        {"filter": e.name, "reason": e.reason, "expires": e.expires} for e in v.suppressed_by
                    ],
                    "expired": [{"filter": e.name, "reason": e.reason, "expires": e.expires} for e in v.expired],
                }
            )

    def close(self) -> None:
        pass


def _select_rules(rules: RuleSet, ref: str) -> tuple[list[DetectionRule], list[Any]]:
    dets = [d for d in rules.detections if ref in (d.id, d.name)]
    cors = [c for c in rules.correlations if ref in (c.id, c.name)]
    if cors:
        ids = {rid for c in cors for rid in c.rules}
        dets = [d for d in rules.detections if d.id in ids]
    elif dets:
        cors = [c for c in rules.correlations if dets[0].id in c.rules]
    return dets, cors


def cmd_rules_test(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    rule_path = Path(args.rule)
    cap = cfg.limits.max_match_chars
    if rule_path.is_file():
        rules = load_rules(rule_path, RECORD_FIELDS, cap, [*cfg.filters, *args.filters])
        dets, cors = list(rules.detections), list(rules.correlations)
    else:
        rules = load_rule_set(args, cfg)
        dets, cors = _select_rules(rules, args.rule)
        if not dets and not cors:
            raise RuleError(
                rules_path(args),
                args.rule,
                "<rule>",
                "no rule with this id or name (xfer-sensor rules list shows them)",
            )
    tested = RuleSet(tuple(dets), tuple(cors))
    inputs = resolve(_input_names(args), args.filter, args.since, args.until)  # all checked before reading
    print_notes(inputs.notes)
    explain = _ExplainSink(dets)
    mem = MemorySink()
    pipe = Pipeline(cfg, tested, TeeSink(explain, mem))
    handler_for = pipe.handler_for if inputs.window is None else inputs.window.wrap(pipe.handler_for)
    damaged = []
    for path in inputs.paths:
        res = read_file(
            path, handler_for, pipe.capture_filters(), pipe.refilter, watch=pipe.portset, select=inputs.select
        )
        if res.error:
            damaged.append(f"{path}: damaged after {res.packets} packets: {res.error}")
            print(f"xfer-sensor: warning: {damaged[-1]}", file=sys.stderr)
    pipe.finish()
    alerts = [a for a in mem.records["alerts"]]
    if args.format == "json":
        json.dump(
            {
                "rules": [d.ref for d in dets] + [c.name or c.id for c in cors],
                "connections": explain.connections,
                "events": explain.rows,
                "alerts": alerts,
            },
            sys.stdout,
            indent=1,
        )
        print()
        return EXIT_DAMAGED if damaged else EXIT_OK
    for d in dets:
        print(f"detection {d.ref}: {d.title}")
    for c in cors:
        print(
            f"correlation {c.name or c.id}: {c.title} ({c.op} {c.threshold} in {c.timespan_s}s "
            f"by {', '.join(c.group_by)})"
        )
    print()
    for r in explain.rows:
        where = (
            f"{r['Timestamp']} {r['Uid']} {r['DeviceName']} -> {r['RemoteIP']}:{r['RemotePort']}"
            f" {r['AppProtocol'] or '-'} {r['ActionType']} {r['RemoteIPType']}"
        )
        if r["RemoteUrl"]:
            where += f" url={_printable(r['RemoteUrl'])}"
        if r["TlsSni"]:
            where += f" sni={_printable(r['TlsSni'])}"
        if r["verdict"] == "matched":
            print(f"MATCHED     {r['rule']}: {where}  [selections: {', '.join(r['selections'])}]")
        else:
            why = "; ".join(
                f"{s['filter']}"
                + (f" ({_printable(s['reason'])})" if s["reason"] else "")
                + (f", expires {s['expires']}" if s["expires"] else "")
                for s in r["suppressed_by"]
            )
            print(f"SUPPRESSED  {r['rule']}: {where}  [allowed by {why}]")
        for s in r["expired"]:
            print(
                f"            note: allow filter '{s['filter']}' matched but expired on {s['expires']}"
                + (f" ({_printable(s['reason'])})" if s["reason"] else "")
                + ": not applied"
            )
    n_match = sum(1 for r in explain.rows if r["verdict"] == "matched")
    n_sup = sum(1 for r in explain.rows if r["verdict"] == "suppressed")
    print(f"\n{explain.connections} connection(s): {n_match} matched, {n_sup} suppressed by allow filters")
    for a in alerts:
        if "ConnectionCount" in a:
            print(
                f"ALERT       {a['RuleId']}: {a.get('DeviceName')} -> {a.get('RemoteIP')}:{a.get('RemotePort')} "
                f"{a['ConnectionCount']} connections ({a.get('Threshold')})"
            )
        else:
            print(f"ALERT       {a['RuleId']}: {a.get('Uids')}")
    if not alerts:
        print("no alerts")
    return EXIT_DAMAGED if damaged else EXIT_OK


def _positive(text: str) -> int:
    if not text.isdigit() or not 0 < int(text[:9]) or len(text) > 9:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 999999999, got {text[:40]!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xfer-sensor", description="File-transfer C2/exfiltration sensor (T1071.002)")
    ap.add_argument("--version", action="version", version=f"xfer-sensor {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("replay", help="replay pcap/pcapng files through the sensor")
    rp.add_argument(
        "pcap",
        nargs="*",
        help="capture files, folders of captures (in the order of their first packet) or - (stdin), "
        "replayed in order as one stream",
    )
    _input_options(rp)
    rp.add_argument("--config", help="config YAML (default: built-in defaults)")
    add_rule_options(rp)
    rp.add_argument(
        "--out", help="write connections.jsonl, alerts.jsonl, transfers.jsonl, weird.jsonl, files.jsonl here"
    )
    rp.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="summary format (on stdout; on stderr with --stdout)",
    )
    rp.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="record shape: mde (DeviceNetworkEvents, the default) or ecs (Elastic Common Schema); "
        "overrides the config's output.profile",
    )
    rp.add_argument(
        "--top",
        type=_positive,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"keys shown in the hunt's table of the summary (default {DEFAULT_TOP}; the rest are counted)",
    )
    rp.add_argument("--stdout", action="store_true", help="also write the records as NDJSON on stdout")
    rp.add_argument("--syslog", metavar="HOST:PORT", help="also send the records to this RFC 5424 syslog collector")
    rp.add_argument(
        "--syslog-protocol",
        choices=("udp", "tcp", "tls"),
        default=None,
        help="syslog transport (default: the config's, else udp); tls: RFC 5425, the collector's certificate verified",
    )
    rp.add_argument(
        "--syslog-ca",
        metavar="FILE",
        help="tls: PEM CA file the collector's certificate must chain to (default: the system's CAs)",
    )
    rp.add_argument("--syslog-cert", metavar="FILE", help="tls: client certificate (PEM) to present to the collector")
    rp.add_argument("--syslog-key", metavar="FILE", help="tls: the client certificate's key (PEM)")
    rp.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress line on stderr (auto: only when stderr is a terminal)",
    )
    report_cli.add_replay_option(rp)
    rp.set_defaults(func=cmd_replay)
    ck = sub.add_parser("check", help="validate config and rules, exit non-zero when wrong")
    ck.add_argument("--config")
    add_rule_options(ck)
    ck.set_defaults(func=cmd_check)
    sub.add_parser(
        "run",
        help="capture live as a daemon: run -i IFACE [--config FILE] [--rules DIR] [--filters PATH] [--out DIR] "
        "[--state-dir DIR]",
        add_help=False,
    )
    report_cli.add_command(sub)
    hunt_cli.add_command(sub, lambda a: hunt_cli.cmd_hunt(a, _table, sort_alerts))
    ru = sub.add_parser("rules", help="list the rules, or test one on a capture")
    rsub = ru.add_subparsers(dest="rules_cmd", required=True)
    rl = rsub.add_parser("list", help="the loaded rules, their allow filters, reasons and expiry")
    add_rule_options(rl)
    rl.add_argument("--config", help="config YAML (its filters:)")
    rl.add_argument("--format", choices=("table", "json"), default="table")
    rl.set_defaults(func=cmd_rules_list)
    rt = rsub.add_parser(
        "test", help="replay captures through one rule: which events matched, which an allow filter suppressed and why"
    )
    rt.add_argument("rule", help="a rule id or name (from --rules), or a rule file")
    rt.add_argument("pcap", nargs="*", help="captures, folders or - (stdin), as for replay")
    _input_options(rt)
    add_rule_options(rt, "rules folder or file to find RULE in (default: the shipped rules/)")
    rt.add_argument("--config", help="config YAML (hostnames, ip_type_overrides, ...)")
    rt.add_argument("--format", choices=("table", "json"), default="table")
    rt.set_defaults(func=cmd_rules_test)
    export_cli.add_command(rsub)
    ap.set_defaults(input_parsers={"replay": rp, "rules test": rt})
    return ap


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-r",
        "--read",
        metavar="FILE",
        action="append",
        help="a capture file, folder or - (stdin), like a positional one (repeatable, in order with them)",
    )
    p.add_argument(
        "--filter",
        metavar="BPF",
        help="only packets this libpcap (tcpdump) expression admits; ANDed with the sensor's own filter",
    )
    p.add_argument("--since", metavar="TIME", help="only packets at or after TIME (ISO 8601; no zone: UTC)")
    p.add_argument("--until", metavar="TIME", help="only packets before TIME (ISO 8601; no zone: UTC)")


_READ_MARK = "\0"  # marks a -r value among the positionals (no argument from the OS holds a NUL)
_PLAIN_MARK = "\0\0"  # marks a positional after "--" (argparse's intermixed parsing mishandles "--")


def _mark_reads(tail: Sequence[str]) -> list[str]:
    """``-r FILE``, ``-rFILE``, ``--read FILE``, ``--read=FILE`` (and the
    abbreviations argparse accepts, ``--re``, ``--rea``) become the
    positional ``\\0FILE``, so that inputs keep their command-line order,
    however they are mixed (argparse alone would collect the two kinds
    apart)."""
    out: list[str] = []
    i = 0
    while i < len(tail):
        t = tail[i]
        i += 1
        if t == "--":  # the rest are positionals, even those starting with "-"
            out += [_PLAIN_MARK + a for a in tail[i:]]
            break
        name, eq, value = t.partition("=")
        if t == "-r" or (name.startswith("--") and len(name) >= 4 and "--read".startswith(name)):
            if eq:
                out.append(_READ_MARK + value)
            elif i < len(tail):
                out.append(_READ_MARK + tail[i])
                i += 1
            else:
                out.append(t)  # argparse says the value is missing
        elif t.startswith("-r") and len(t) > 2:
            out.append(_READ_MARK + t[2:])
        else:
            out.append(t)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; ``replay`` and ``rules test`` take their inputs
    positionally and with ``-r``, mixed with the options in any order, and
    keep the order they were given in (``args.inputs``)."""
    ap = build_parser()
    parsers = ap.get_default("input_parsers")
    cmd = "replay" if argv[:1] == ["replay"] else "rules test" if list(argv[:2]) == ["rules", "test"] else None
    if cmd is None:
        return ap.parse_args(argv)
    sub = parsers[cmd]
    tail = argv[1:] if cmd == "replay" else argv[2:]
    if "-h" in tail or "--help" in tail:
        return ap.parse_args(argv)  # argparse's own help, then exit
    args = sub.parse_intermixed_args(_mark_reads(tail))
    args.cmd = cmd.split()[0]
    for k, v in vars(args).items():
        if k != "rule" and isinstance(v, str) and _READ_MARK in v:  # ``--config -r``: -r was taken for a value
            sub.error(f"argument --{k}: expected one argument")
    given = [] if cmd == "replay" else [args.rule]
    given += args.pcap
    given = [g[len(_PLAIN_MARK) :] if g.startswith(_PLAIN_MARK) else g for g in given]
    if cmd == "rules test":
        plain = [g for g in given if not g.startswith(_READ_MARK)]
        if not plain:
            sub.error("the following arguments are required: rule")
        args.rule = plain[0]
        given.remove(plain[0])
    args.inputs = [g[len(_READ_MARK) :] if g.startswith(_READ_MARK) else g for g in given]
    if not args.inputs:
        sub.error("no capture given: name files, folders or - (stdin), positionally or with -r")
    args.pcap = list(args.inputs)
    args.read = None
    return args


def cmd_run(args: argparse.Namespace) -> int:
    from sensor.daemon import main as daemon_main

    return daemon_main(args.daemon_args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from sensor.core.runtime import tune_gc

    tune_gc()
    if argv[:1] == ["run"]:
        # the daemon parses its own options (-i, --config, --rules, --out, --allow-root)
        return cmd_run(argparse.Namespace(daemon_args=argv[1:]))
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RuleError, CaptureError, ReportError) as e:
        print(f"xfer-sensor: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): not an error; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
