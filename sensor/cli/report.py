"""``xfer-sensor report RECORDS_DIR --report FILE.html`` and ``replay --report FILE.html``.

The page: sensor/report (docs/report.md). Exit codes: 0 written; 2 a bad folder,
records or report path (one line, checked before any work); 4 the page could
not be written (nothing half-written is left at FILE).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sensor.cli.ruleargs import add_rule_options, load_rule_set
from sensor.core.config import load_config
from sensor.detect.rules import RuleSet
from sensor.report import ReportBuilder, check_report_path, read_records_dir, render_html, write_report

EXIT_OK, EXIT_WRITE = 0, 4


def add_replay_option(rp: argparse.ArgumentParser) -> None:
    rp.add_argument(
        "--report",
        metavar="FILE.html",
        help="also write one self-contained HTML report of the records and alerts here (docs/report.md)",
    )


def add_command(sub: Any) -> None:
    rr = sub.add_parser("report", help="write the HTML report of a replay's records: report RECORDS_DIR --report FILE")
    rr.add_argument("records", metavar="RECORDS_DIR", help="a replay's --out folder (mde profile records)")
    rr.add_argument("--report", metavar="FILE.html", required=True, help="the page to write")
    add_rule_options(rr, "rules folder or file the alerts came from (default: the shipped rules/)")
    rr.add_argument("--config", help="config YAML (its filters:)")
    rr.set_defaults(func=cmd_report)


def start(args: argparse.Namespace) -> ReportBuilder | None:
    """``replay --report``: the path checked before the replay, and the sink to tee records into."""
    if not getattr(args, "report", None):
        return None
    check_report_path(args.report)
    return ReportBuilder()


def finish(args: argparse.Namespace, b: ReportBuilder | None, rules: RuleSet | None, source: list[str]) -> int:
    if b is None:
        return EXIT_OK
    try:
        write_report(args.report, render_html(b, rules, source))
    except OSError as e:
        print(f"xfer-sensor: error: --report {args.report}: not written: {e.strerror or e}", file=sys.stderr)
        return EXIT_WRITE
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    check_report_path(args.report)
    rules = load_rule_set(args, load_config(args.config))
    b = read_records_dir(args.records)
    rc = finish(args, b, rules, [args.records])
    if rc == EXIT_OK:
        print(
            f"report of {b.counts.connections} connections, {b.counts.transfers} transfers, "
            f"{b.counts.alerts} alert(s) written to {args.report}"
        )
    return rc
