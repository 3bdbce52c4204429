"""The report without a browser: the hunt's KQL, hostile record files, exit codes, determinism."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.cli import report as report_cli
from sensor.detect.rules import default_rules_dir, load_rules
from sensor.export.kql import hunt_kql
from sensor.records.mde import RECORD_FIELDS
from sensor.report import ReportBuilder, read_records_dir, render_html
from sensor.report.model import MAX_BINS, Timeline

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sensor", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_hunt_kql_from_the_shipped_rule() -> None:
    rules = load_rules(default_rules_dir(), RECORD_FIELDS)
    (cor,) = rules.correlations
    dets = [d for d in rules.detections if d.id in cor.rules]
    assert hunt_kql(cor, dets) == (
        "DeviceNetworkEvents\n"
        "| where Timestamp > ago(24h)\n"
        '| where RemotePort in (20, 21, 990, 445, 139, 69) and RemoteIPType =~ "Public" '
        'and ActionType =~ "ConnectionSuccess"\n'
        "| summarize ConnectionCount=count(), BytesSent=sum(SentBytes), BytesReceived=sum(ReceivedBytes),\n"
        "            FirstSeen=min(Timestamp), LastSeen=max(Timestamp) "
        "by DeviceName, InitiatingProcessFileName, RemoteIP, RemotePort, AccountName\n"
        "| where ConnectionCount > 3"
    )


def test_hunt_kql_allow_filters_and_escaping(tmp_path: Path) -> None:
    rule = tmp_path / "r.yml"
    rule.write_text(
        """title: t
id: d1
name: det
logsource: {product: xfer-sensor}
detection:
  selection: {RemotePort: [21, 445], RemoteIPType: Public}
  condition: selection
level: low
---
title: f
id: f1
name: partner
logsource: {product: xfer-sensor}
filter:
  rules: [det]
  partner:
    - RemoteIP|cidr: 198.51.100.0/28
    - RemoteUrl|endswith: '.x"y\\z'
  condition: not partner
reason: partner drop
expires: 2099-01-01
---
title: c
id: c1
correlation: {type: event_count, rules: [det], group-by: [DeviceName, RemoteIP], timespan: 2h, condition: {gte: 10}}
level: high
"""
    )
    rs = load_rules(rule, RECORD_FIELDS)
    q = hunt_kql(rs.correlations[0], rs.detections)
    assert "| where Timestamp > ago(2h)" in q
    assert (
        '| where (RemotePort in (21, 445) and RemoteIPType =~ "Public") and not((ipv4_is_in_range(RemoteIP, '
        '"198.51.100.0/28") or RemoteUrl endswith ".x\\"y\\\\z"))'
    ) in q
    assert q.endswith("by DeviceName, RemoteIP\n| where ConnectionCount >= 10")


def test_timeline_bins_do_not_depend_on_order() -> None:
    times = [1_000_000 + 37 * i for i in range(5000)] + [999_000, 1_500_000]
    a, b = Timeline(), Timeline()
    for t in times:
        a.add("k", t, 1)
    for t in reversed(times):
        b.add("k", t, 1)
    assert (a.width, a.lo, a.hi, a.series) == (b.width, b.lo, b.hi, b.series)
    assert a.hi - a.lo + 1 <= MAX_BINS and sum(a.series["k"].values()) == len(times)


def test_hostile_record_files(tmp_path: Path) -> None:
    d = tmp_path / "recs"
    d.mkdir()
    good = {"Timestamp": "2026-11-27T01:00:00.000000Z", "Uid": "C1", "RemoteIP": "<b>x</b>", "RemotePort": 21}
    lines = [
        json.dumps(good),
        "not json",
        "[1, 2]",
        json.dumps({"Timestamp": "yesterday", "Uid": "C2"}),
        json.dumps(dict(good, Uid="C3", SentBytes="9" * 30, ReceivedBytes=-5, RemotePort=True)),
        "x" * (1 << 20 + 1),
        "[" * 100_000,
        json.dumps(dict(good, Uid="C4", ActionType="\x1b[31m<script>alert(1)</script>")),
    ]
    (d / "connections.jsonl").write_text("\n".join(lines) + "\n")
    (d / "alerts.jsonl").write_bytes(b"\xff\xfe{\n" + json.dumps({"Timestamp": 5, "Uids": "C1"}).encode() + b"\n")
    b = read_records_dir(str(d))
    assert b.counts.connections == 3
    assert b.counts.alerts == 0
    assert b.counts.skipped == {
        "not a JSON object": 1,
        "line that is not JSON": 3,
        "line longer than 1 MiB": 1,
        "connection without a valid Timestamp": 1,
        "alert without a valid Timestamp": 1,
    }
    assert b.counts.bad_values == 3  # a string, a negative number, a bool
    page = render_html(b, None, [str(d)])
    assert "<script" not in page and "<b>" not in page
    assert "\\x1b[31m&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;:0" in page


def test_report_command_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "ecs").mkdir()
    (tmp_path / "ecs" / "connections.jsonl").write_text('{"@timestamp": "2026-11-27T01:00:00Z"}\n')
    for args in (
        ["report", "missing", "--report", "r.html"],
        ["report", "empty", "--report", "r.html"],
        ["report", "ecs", "--report", "r.html"],
        ["report", "empty", "--report", "nodir/r.html"],
        ["report", "empty", "--report", "empty"],
        ["replay", str(ROOT / "pcaps" / "demo.pcap"), "--report", "nodir/r.html"],
    ):
        r = _run(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("xfer-sensor: error: "), r.stderr
    assert not (tmp_path / "r.html").exists()


def test_replay_report_equals_report_of_its_records(tmp_path: Path) -> None:
    """The same records give the same page, from the replay or from its --out folder (no wall clock)."""
    demo = ROOT / "pcaps" / "demo.pcap"
    args = ["replay", str(demo), "--config", str(ROOT / "pcaps" / "demo.yaml"), "--out", "out"]
    assert _run(*args, "--report", "a.html", cwd=tmp_path).returncode == 0
    assert _run(*args[:-1], "out2", "--report", "b.html", cwd=tmp_path).returncode == 0
    r = _run("report", "out", "--report", "c.html", cwd=tmp_path)
    assert r.returncode == 0 and "2 alert(s) written to c.html" in r.stdout
    a, b, c = ((tmp_path / n).read_text().splitlines() for n in ("a.html", "b.html", "c.html"))
    assert a == b  # the same capture, the same page
    diff = [(x, y) for x, y in zip(a, c) if x != y]
    assert len(a) == len(c) and len(diff) == 1 and diff[0][0].startswith("<p>From ")  # only the source differs


def test_write_failure_leaves_nothing_and_exits_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "r.html"
    args = type("A", (), {"report": str(target)})()
    assert report_cli.finish(args, ReportBuilder(), None, ["x"]) == 4  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
