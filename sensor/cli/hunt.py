"""``xfer-sensor hunt RECORDS...``: the rules over connection records, without the captures.

Connection records (JSONL, ``mde`` or ``ecs`` profile, from any number of
sensors: files, globs, folders holding ``connections.jsonl``, ``-`` for stdin)
are merged by ``Timestamp`` and fed to the same ``Detector`` replay uses, in
the order a replay would have fed them, so the alerts equal the replay's for
the same connections. docs/usage.md (command, exit codes), docs/detection.md
("Hunting over records").

Merging: a heap holds the next record of each input (memory: one record per
input); the smallest ``Timestamp`` goes first, ties in the order the inputs
were named. Within one input, records keep their order: a sensor writes a
connection when it ends, so its file is in end order, not ``Timestamp``
order, and the detector takes such late records as replay does (its windows
are kept in packet-time order). Records earlier than the one before them in
the same input are counted (``out of order`` in the summary), not reordered.

Every input is hostile: a line that is not a connection record the sensor
could have written (not JSON, a field of the wrong type, longer than the
config's ``output.max_line_bytes``) is one warning naming file:line, counted,
never a traceback; an input whose first line is not a JSON object is not
JSONL: one line, exit 2. Exit codes: 0 done; 2 bad input (file, config, rule,
option); 4 alerts not all written.
"""

from __future__ import annotations

import argparse
import glob
import heapq
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sensor.cli.ruleargs import add_rule_options, load_rule_set
from sensor.core.config import PROFILES, Config, ConfigError, load_config
from sensor.detect.detector import Detector
from sensor.detect.rules import RuleSet
from sensor.records.ecs_read import connection_from_ecs, ecs_dataset, is_ecs
from sensor.records.encode import Encoder, make_profile
from sensor.records.mde import ENDPOINT_FIELDS, RECORD_FIELDS

EXIT_OK, EXIT_BAD_INPUT, EXIT_NOT_WRITTEN = 0, 2, 4
MAX_WARNINGS = 20  # bad lines named one by one on stderr; the rest are counted
MAX_INT = (1 << 63) - 1

INT_FIELDS = frozenset(
    {
        "LocalPort",
        "RemotePort",
        "InitiatingProcessId",
        "SentBytes",
        "ReceivedBytes",
        "SentPackets",
        "ReceivedPackets",
        "Vlan",
        "DataSentBytes",
        "DataReceivedBytes",
        "InitiatingProcessParentId",
    }
)
STR_FIELDS = frozenset(RECORD_FIELDS + ENDPOINT_FIELDS + ("RemoteUrl",)) - INT_FIELDS - {"AdditionalFields"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class BadLine(ValueError):
    pass


def add_command(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    hp = sub.add_parser(
        "hunt",
        help="run the rules over connection records (JSONL, mde or ecs) of any number of sensors, merged by time",
    )
    hp.add_argument(
        "records",
        nargs="+",
        metavar="RECORDS",
        help="connections.jsonl files, globs, folders holding connections.jsonl (a replay's --out), or - (stdin)",
    )
    add_rule_options(hp)
    hp.add_argument("--config", help="config YAML (limits, hostnames, output.profile)")
    hp.add_argument("--out", metavar="DIR", help="write alerts.jsonl here")
    hp.add_argument("--format", choices=("table", "json"), default="table", help="summary format (stdout)")
    hp.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="the alerts' shape in --out: mde or ecs (default: the config's output.profile)",
    )
    hp.set_defaults(func=func)


def parse_ts(v: Any) -> int:
    """Our ISO 8601 UTC timestamps (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) -> µs since the epoch."""
    if not isinstance(v, str) or len(v) != 27 or v[10] != "T" or v[-1] != "Z" or v[19] != ".":
        raise BadLine(f"Timestamp {str(v)[:40]!r} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    try:
        d = datetime.fromisoformat(v[:-1] + "+00:00")
    except ValueError:
        raise BadLine(f"Timestamp {v!r} is not a time") from None
    return (d - _EPOCH) // _US


def _check(rec: dict[str, Any]) -> None:
    for k, v in rec.items():
        if k in INT_FIELDS:
            if type(v) is not int or not 0 <= v <= MAX_INT:
                raise BadLine(f"{k}: expected a whole number, got {json.dumps(v)[:40]}")
        elif k in STR_FIELDS:
            if not isinstance(v, str):
                raise BadLine(f"{k}: expected a string, got {json.dumps(v)[:40]}")
        elif k == "AdditionalFields" and not isinstance(v, dict):
            raise BadLine(f"{k}: expected an object, got {json.dumps(v)[:40]}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadLine(f"not JSON: {str(e)[:80]}") from None


@dataclass
class Counts:
    lines: int = 0
    records: int = 0  # connection records fed to the detector
    other: int = 0  # records of other kinds (alerts, transfers, ... in a mixed --stdout stream)
    bad: int = 0
    out_of_order: int = 0
    warned: int = 0


class Input:
    """One input: its lines as connection records, in file order."""

    def __init__(self, name: str, f: BinaryIO, max_line: int, hostnames: bool, counts: Counts) -> None:
        self.name, self.f, self.max_line, self.hostnames, self.counts = name, f, max_line, hostnames, counts
        self.lineno = 0
        self.last_ts = -1

    def first(self) -> tuple[int, dict[str, Any]] | None:
        """The first record; an input whose first line is not a JSON object is not JSONL (ConfigError)."""
        line = self.f.readline(self.max_line + 1)
        while line and not line.strip():
            self.lineno += 1
            self.counts.lines += 1
            line = self.f.readline(self.max_line + 1)
        if not line:
            return None
        self.lineno += 1
        self.counts.lines += 1
        if len(line) > self.max_line and not line.endswith(b"\n"):
            raise ConfigError(self.name, "records", f"not JSONL (line {self.lineno} longer than {self.max_line} bytes)")
        try:
            doc = _loads(line)
        except BadLine as e:
            raise ConfigError(self.name, "records", f"not JSONL (line {self.lineno}: {e})") from None
        if not isinstance(doc, dict):
            raise ConfigError(self.name, "records", f"not JSONL records (line {self.lineno} is not a JSON object)")
        r = self._record(doc)
        return r if r is not None else self.next()

    def next(self) -> tuple[int, dict[str, Any]] | None:
        while True:
            line = self._line()
            if line is None:
                return None
            if not line.strip():
                continue
            try:
                doc = _loads(line)
                if not isinstance(doc, dict):
                    raise BadLine("not a JSON object")
            except BadLine as e:
                self._warn(str(e))
                continue
            r = self._record(doc)
            if r is not None:
                return r

    def _line(self) -> bytes | None:
        line = self.f.readline(self.max_line + 1)
        if not line:
            return None
        self.lineno += 1
        self.counts.lines += 1
        if len(line) > self.max_line and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the line, a bounded piece at a time
                line = self.f.readline(self.max_line + 1)
            self._warn(f"longer than output.max_line_bytes ({self.max_line})")
            return b""
        return line

    def _record(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        try:
            if is_ecs(doc):
                kind = ecs_dataset(doc)
                if kind != "connections":
                    self.counts.other += 1
                    return None
                rec = connection_from_ecs(doc, self.hostnames)
            else:
                kind = doc.pop("RecordKind", "connections")
                if kind != "connections":
                    self.counts.other += 1
                    return None
                doc.pop("RecordTruncated", None)
                if "ActionType" not in doc:
                    raise BadLine("not a connection record (no ActionType)")
                rec = doc
            _check(rec)
            ts = parse_ts(rec.get("Timestamp"))
        except BadLine as e:
            self._warn(str(e))
            return None
        if ts < self.last_ts:
            self.counts.out_of_order += 1
        self.last_ts = max(ts, self.last_ts)
        self.counts.records += 1
        return ts, rec

    def _warn(self, why: str) -> None:
        c = self.counts
        c.bad += 1
        if c.warned < MAX_WARNINGS:
            c.warned += 1
            print(f"xfer-sensor: warning: {self.name}:{self.lineno}: skipped: {why}", file=sys.stderr)


def expand(names: list[str]) -> list[str]:
    """Files, folders (their connections.jsonl), globs and ``-``, in the order named."""
    out: list[str] = []
    for n in names:
        if n == "-":
            out.append(n)
            continue
        p = Path(n)
        if p.is_dir():
            c = p / "connections.jsonl"
            if not c.is_file():
                raise ConfigError(n, "records", "a folder without connections.jsonl")
            out.append(str(c))
        elif p.exists():
            out.append(n)
        elif glob.has_magic(n):
            hits = sorted(glob.glob(n))
            if not hits:
                raise ConfigError(n, "records", "no file matches this pattern")
            out.extend(str(Path(h) / "connections.jsonl") if Path(h).is_dir() else h for h in hits)
        else:
            raise ConfigError(n, "records", "no such file or folder")
    if out.count("-") > 1:
        raise ConfigError("-", "records", "stdin named more than once")
    return out


def merged(inputs: list[Input]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of every input by Timestamp (ties: the input named first), each input in its own order."""
    heap: list[tuple[int, int, dict[str, Any]]] = []
    firsts = [(i, inp.first()) for i, inp in enumerate(inputs)]  # every input checked before any record is used
    for i, r in firsts:
        if r is not None:
            heap.append((r[0], i, r[1]))
    heapq.heapify(heap)
    while heap:
        ts, i, rec = heap[0]
        yield ts, rec
        r = inputs[i].next()
        if r is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (r[0], i, r[1]))


def cmd_hunt(args: argparse.Namespace, table: Callable[[list[dict]], str], order: Callable[[list[dict]], list]) -> int:
    cfg = load_config(args.config)
    rules = load_rule_set(args, cfg)
    profile = args.profile or cfg.output.profile
    names = expand(args.records)
    outfile = None
    if args.out is not None:
        from sensor.io.outdir import check_outdir

        outfile = check_outdir(args.out, kinds=("alerts",)) / "alerts.jsonl"
        for n in names:
            if n != "-" and Path(n).resolve() == outfile.resolve():
                raise ConfigError("--out", "out", f"{outfile} is also an input")
    counts = Counts()
    inputs: list[Input] = []
    opened: list[BinaryIO] = []
    try:
        for n in names:
            if n == "-":
                if sys.stdin.isatty():
                    raise ConfigError("-", "records", "stdin is a terminal: pipe records in, or name files")
                f = sys.stdin.buffer
            else:
                try:
                    f = open(n, "rb")  # noqa: SIM115 (closed below)
                except OSError as e:
                    raise ConfigError(n, "records", f"cannot read: {e.strerror or e}") from None
                opened.append(f)
            inputs.append(Input(n, f, cfg.output.max_line_bytes, bool(cfg.hostnames), counts))
        return _run(args, cfg, rules, profile, inputs, counts, outfile, table, order)
    finally:
        for f in opened:
            f.close()


def _run(
    args: argparse.Namespace,
    cfg: Config,
    rules: RuleSet,
    profile: str,
    inputs: list[Input],
    counts: Counts,
    outfile: Path | None,
    table: Callable[[list[dict]], str],
    order: Callable[[list[dict]], list],
) -> int:
    from sensor.io.sinks import FileWriter

    detector = Detector(rules, cfg.limits)
    encoder = Encoder(make_profile(profile, cfg, rules), cfg.output.max_line_bytes)
    writer = FileWriter(outfile.parent, kinds=("alerts",)) if outfile is not None else None
    alerts_n = written = 0
    error = ""
    try:
        for ts, rec in merged(inputs):
            for alert in detector.observe(rec, ts):
                alerts_n += 1
                if writer is not None and not error:
                    try:
                        writer.write(("alerts",), encoder.encode("alerts", alert))
                        written += 1
                    except OSError as e:
                        error = f"{outfile}: {e.strerror or e}"
    finally:
        if writer is not None:
            writer.close()
    if counts.bad > counts.warned:
        print(
            f"xfer-sensor: warning: {counts.bad - counts.warned} more bad line(s) skipped ({counts.bad} in all)",
            file=sys.stderr,
        )
    rc = EXIT_OK
    if error:
        print(
            f"xfer-sensor: error: {error}: {alerts_n - written} alert(s) not written "
            f"({written} written; every line in the file is whole)",
            file=sys.stderr,
        )
        rc = EXIT_NOT_WRITTEN
    hunted = order(detector.hunt_results())
    summary = {
        "inputs": [i.name for i in inputs],
        "lines": counts.lines,
        "connections": counts.records,
        "other_records": counts.other,
        "bad_lines": counts.bad,
        "out_of_order": counts.out_of_order,
        "alerts": alerts_n,
        "alerts_written": written if outfile is not None else None,
        "out": str(outfile) if outfile is not None else None,
        "profile": profile,
        "hunt": hunted,
        "exit_code": rc,
    }
    if args.format == "json":
        json.dump(summary, sys.stdout, indent=1)
        print()
        return rc
    print(
        f"{counts.records} connection record(s) from {len(inputs)} input(s), {alerts_n} alert(s)"
        + (f"; {counts.bad} bad line(s) skipped" if counts.bad else "")
        + (f"; {counts.other} other record(s) ignored" if counts.other else "")
        + (f"; {counts.out_of_order} earlier than the record before them in their input" if counts.out_of_order else "")
    )
    if hunted:
        print()
        print(table(hunted))
    if outfile is not None and not error:
        print(f"\nalerts ({profile}) written to {outfile}")
    return rc
