"""``--report FILE.html``: one self-contained HTML page from records and alerts.

It reads records, never packets: ``replay --report`` tees its records into a
``ReportBuilder``; ``xfer-sensor report DIR`` feeds it the record files of a
replay's ``--out`` folder (``read_records_dir``). ``render_html`` draws the page,
``write_report`` writes it whole or not at all. An edge like ``sensor/io``: it
reads record files and writes one file. docs/report.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sensor.export.kql import hunt_kql
from sensor.report.html import render_html
from sensor.report.model import ReportBuilder

__all__ = ["ReportBuilder", "ReportError", "check_report_path", "hunt_kql", "read_records_dir", "render_html"]

MAX_LINE_BYTES = 1 << 20  # a record line longer than this is skipped (the sensor writes at most max_line_bytes)
RECORD_FILES = ("alerts", "connections", "transfers", "weird")  # read in this order: the alerts name what to keep


class ReportError(ValueError):
    """A records folder or report path that cannot be used (one line, exit 2)."""


def check_report_path(path: str) -> None:
    """Refuses, before any work, a report path whose folder is missing or not writable."""
    p = Path(path)
    if p.is_dir():
        raise ReportError(f"--report {path}: is a folder, expected a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ReportError(f"--report {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"--report {path}: folder {parent} is not writable")


def write_report(path: str, page: str) -> None:
    """Writes the page whole or not at all (a temporary file renamed over ``path``); OSError on failure."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _lines(path: Path, b: ReportBuilder) -> Iterator[object]:
    """The JSON records of one file, one at a time; a line that is too long or not JSON is skipped and counted."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        while True:
            try:
                line = f.readline(MAX_LINE_BYTES + 1)
            except OSError as e:
                raise ReportError(f"{path}: cannot read: {e.strerror or e}") from None
            if not line:
                break
            if len(line) > MAX_LINE_BYTES:
                b.counts.skipped["line longer than 1 MiB"] = b.counts.skipped.get("line longer than 1 MiB", 0) + 1
                while line and not line.endswith(b"\n"):  # the rest of that line
                    line = f.readline(MAX_LINE_BYTES + 1)
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                b.counts.skipped["line that is not JSON"] = b.counts.skipped.get("line that is not JSON", 0) + 1
                continue
            if isinstance(rec, dict) and "@timestamp" in rec and "Timestamp" not in rec:
                raise ReportError(f"{path}: records in the ecs profile; the report reads mde records (--profile mde)")
            yield rec


def read_records_dir(folder: str) -> ReportBuilder:
    """A ``ReportBuilder`` fed a replay's ``--out`` folder (mde profile)."""
    d = Path(folder)
    if not d.is_dir():
        raise ReportError(f"{folder}: not a folder of records (connections.jsonl, alerts.jsonl, ...)")
    if not any((d / f"{k}.jsonl").is_file() for k in RECORD_FILES):
        raise ReportError(f"{folder}: no record files (connections.jsonl, alerts.jsonl, transfers.jsonl, weird.jsonl)")
    b = ReportBuilder()
    for rec in _lines(d / "alerts.jsonl", b):
        b.emit("alerts", rec)
    b.wanted = b.alert_uids()
    for kind in RECORD_FILES[1:]:
        for rec in _lines(d / f"{kind}.jsonl", b):
            b.emit(kind, rec)
    return b
