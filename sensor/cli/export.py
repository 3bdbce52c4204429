"""``xfer-sensor rules export``: the rules and their active filters as a SIEM's or data lake's query.

Needs the optional extra ``sigma`` (pySigma and its backends): without it, one
line saying what to install, exit 2. The sensor itself (replay, run) never
imports pySigma: this module imports it only inside ``cmd_export``.
docs/export.md (targets, what each backend does and what we add).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sensor.core.config import ConfigError
from sensor.detect.rules import default_rules_dir

EXIT_OK, EXIT_BAD_INPUT = 0, 2
TARGETS = ("kql", "esql", "eql", "spl", "duckdb", "spark")  # sensor.export.targets.TARGETS, without importing it
INSTALL_HINT = "rules export needs pySigma and its backends: pip install 'xfer-sensor[sigma]'"


def add_command(rsub: Any) -> None:
    ex = rsub.add_parser(
        "export",
        help="the rules with their active filters as KQL, ES|QL, EQL, SPL, DuckDB or Spark SQL (needs xfer-sensor[sigma])",
    )
    ex.add_argument("--target", required=True, choices=TARGETS)
    ex.add_argument(
        "--profile",
        choices=("mde", "ecs"),
        help="the records' field names: mde or ecs (default: mde, ecs for esql and eql)",
    )
    ex.add_argument("--rules", help="rules folder or file (default: the shipped rules); its Sigma filters are read too")
    ex.add_argument("--filters", action="append", default=[], metavar="FILE", help="a Sigma filter file (repeatable)")
    ex.add_argument("--out", metavar="FILE", help="write the queries here (default: stdout)")
    ex.add_argument(
        "--now", metavar="DATE", help="the day filter expiry is judged on (YYYY-MM-DD, UTC; default: today)"
    )
    ex.add_argument(
        "--until",
        metavar="TIME",
        help="end the look-back at TIME (ISO 8601, UTC) instead of now: the hunt as it stood then",
    )
    ex.add_argument("--table", help="table, index or search the records are in (default: per target, docs/export.md)")
    ex.set_defaults(func=cmd_export)


def _day(text: str | None) -> date:
    if text is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError("--now", "now", f"expected a date YYYY-MM-DD, got {text[:40]!r}") from None


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError("--until", "until", f"expected an ISO 8601 time, got {text[:40]!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def cmd_export(args: argparse.Namespace) -> int:
    today, until = _day(args.now), _time(args.until)
    try:
        from sensor.export import targets
    except ImportError as e:
        if not (e.name or "").startswith("sigma"):
            raise
        print(f"xfer-sensor: error: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from sensor.export.sources import read_sources

    src = read_sources(args.rules or default_rules_dir(), args.filters)
    profile = args.profile or targets.DEFAULT_PROFILE[args.target]
    ex = targets.Export(args.target, profile, args.table or targets.DEFAULT_TABLE[args.target], today, until)
    try:
        text = targets.export(src, ex)
    except targets.ExportError as e:
        print(f"xfer-sensor: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(str(out), "out", f"cannot write: {e.strerror or e}") from None
    return EXIT_OK
