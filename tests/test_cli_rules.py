"""`xfer-sensor rules list` and `xfer-sensor rules test RULE PCAP`."""

from __future__ import annotations

import calendar
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.craft import tcp_session, write_pcap

REPO = Path(__file__).resolve().parent.parent
EX = REPO / "rules" / "examples"
SENSOR = [sys.executable, "-m", "sensor"]
T0 = calendar.timegm((2026, 11, 27, 1, 0, 0))


def sensor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(SENSOR + list(args), cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def partner_pcap(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("rules")
    pkts = []
    for j, server in enumerate(("198.51.100.5", "203.0.113.9")):
        for i in range(4):
            pkts += tcp_session(
                "10.1.1.5", server, 40000 + 10 * j + i, 21, T0 + i * 600 + j, c2s=b"USER u\r\n", s2c=b"220 hi\r\n"
            )
    cfg = d / "cfg.yaml"
    cfg.write_text("ip_type_overrides: {198.51.100.0/24: Public, 203.0.113.0/24: Public}\n")
    return write_pcap(d / "partner.pcap", pkts), cfg


def test_rules_list_default():
    p = sensor("rules", "list")
    assert p.returncode == 0, p.stderr
    assert "xfer_public_file_transfer_connection" in p.stdout and "xfer_repeated_public_file_transfer" in p.stdout
    assert "counts xfer_public_file_transfer_connection: gt 3 in 86400s" in p.stdout
    assert p.stdout.rstrip().endswith("1 detection rule(s), 1 correlation rule(s), 0 allow filters")
    assert "filter " not in p.stdout


PARTNER = EX / "mf_allow_partner_cidr.yml"
REASON = "Contoso payroll file drop (change CHG-1042, owner finance-it)"


def test_rules_list_shows_filters_reasons_and_expiry(tmp_path):
    p = sensor("rules", "list", "--filters", str(PARTNER), "--filters", str(EX / "mf_allow_mft_tenant_sni.yml"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    i = lines.index(f"{'':20} filter allow_partner_contoso_cidr: {REASON} (expires 2027-06-30)")
    assert lines[i + 1].strip() == str(PARTNER)
    assert (
        f"{'':20} filter allow_mft_tenant_contoso_sni: Contoso's MOVEit Cloud tenant (vendor file exchange) "
        "(expires 2027-03-31)" in lines
    )
    # the filters are listed under the detection rule they tune, not the correlation
    assert i < next(n for n, x in enumerate(lines) if x.startswith("correlation"))
    assert lines[-1] == "1 detection rule(s), 1 correlation rule(s), 2 allow filters"
    old = tmp_path / "mf_old.yml"
    old.write_text(PARTNER.read_text().replace("expires: 2027-06-30", "expires: 2020-01-31"))
    p = sensor("rules", "list", "--filters", str(old))
    assert p.returncode == 0, p.stderr
    assert f"filter allow_partner_contoso_cidr: {REASON} (EXPIRED 2020-01-31)" in p.stdout
    p = sensor("rules", "list", "--filters", str(old), "--format", "json")
    assert p.returncode == 0
    rows = json.loads(p.stdout)
    det = next(r for r in rows if r["kind"] == "detection")
    assert det["filters"] == [
        {
            "name": "allow_partner_contoso_cidr",
            "id": "2bf90942-9e31-4c23-8928-3c4f00a8d93a",
            "title": "Allow the Contoso payroll file drop by address",
            "source": str(old),
            "reason": REASON,
            "expires": "2020-01-31",
            "expired": True,
            "filter": {
                "selection": {"RemoteIP|cidr": ["198.51.100.0/28", "2001:db8:100::/48"]},
                "condition": "not selection",
            },
        }
    ]
    assert next(r for r in rows if r["kind"] == "correlation")["filters"] == []
    assert f"allow filter 'allow_partner_contoso_cidr' ({old}) expired on 2020-01-31" in p.stderr
    p = sensor("check", "--filters", str(old))
    assert p.returncode == 0 and "expired on 2020-01-31" in p.stderr
    # a filter without expiry
    forever = tmp_path / "mf_forever.yml"
    forever.write_text(PARTNER.read_text().replace("expires: 2027-06-30\n", ""))
    p = sensor("rules", "list", "--filters", str(forever))
    assert f"filter allow_partner_contoso_cidr: {REASON} (no expiry)" in p.stdout


def test_rules_test_says_what_matched_and_why_one_was_suppressed(partner_pcap):
    pcap, cfg = partner_pcap
    p = sensor(
        "rules",
        "test",
        "xfer_repeated_public_file_transfer",
        str(pcap),
        "--config",
        str(cfg),
        "--filters",
        str(PARTNER),
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    sup = [x for x in lines if x.startswith("SUPPRESSED")]
    hit = [x for x in lines if x.startswith("MATCHED")]
    assert len(sup) == 4 and all("-> 198.51.100.5:21" in x for x in sup)
    assert all(f"allowed by allow_partner_contoso_cidr ({REASON}), expires 2027-06-30" in x for x in sup)
    assert len(hit) == 4 and all("-> 203.0.113.9:21" in x and "[selections: selection]" in x for x in hit)
    assert "8 connection(s): 4 matched, 4 suppressed by allow filters" in p.stdout
    alerts = [x for x in lines if x.startswith("ALERT")]
    assert len(alerts) == 1 and "203.0.113.9:21 4 connections" in alerts[0]


def test_rules_test_by_file_and_json(partner_pcap):
    pcap, cfg = partner_pcap
    rule = REPO / "rules" / "t1071_002_file_transfer_protocols.yml"
    p = sensor(
        "rules", "test", str(rule), str(pcap), "--config", str(cfg), "--filters", str(PARTNER), "--format", "json"
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    verdicts = sorted((e["RemoteIP"], e["verdict"]) for e in doc["events"])
    assert verdicts == [("198.51.100.5", "suppressed")] * 4 + [("203.0.113.9", "matched")] * 4
    sup = next(e for e in doc["events"] if e["verdict"] == "suppressed")
    assert sup["selections"] == ["selection"]
    assert sup["suppressed_by"] == [{"filter": "allow_partner_contoso_cidr", "reason": REASON, "expires": "2027-06-30"}]
    assert [a["RemoteIP"] for a in doc["alerts"] if "ConnectionCount" in a] == ["203.0.113.9"]
    # the shipped rule, same capture: both servers match, nothing suppressed
    p = sensor(
        "rules", "test", "xfer_public_file_transfer_connection", str(pcap), "--config", str(cfg), "--format", "json"
    )
    doc = json.loads(p.stdout)
    assert sorted({e["verdict"] for e in doc["events"]}) == ["matched"] and len(doc["events"]) == 8


def test_rules_test_unknown_rule_is_one_line_exit_2(partner_pcap):
    p = sensor("rules", "test", "no_such_rule", str(partner_pcap[0]))
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "no rule with this id or name" in p.stderr
    p = sensor("rules", "test", "xfer_public_file_transfer_connection", "/nonexistent.pcap")
    assert p.returncode == 2 and p.stderr.startswith("xfer-sensor: error: /nonexistent.pcap: no such file")


def test_replay_summary_counts_what_allow_filters_suppressed(partner_pcap, tmp_path):
    pcap, cfg = partner_pcap
    p = sensor("replay", str(pcap), "--config", str(cfg), "--filters", str(PARTNER))
    assert p.returncode == 0, p.stderr
    assert "1 alert(s)" in p.stdout
    assert "allow filters: 6f0c1f7e-3a52-4f6e-9c1e-2b7d0a8e5c11/allow_partner_contoso_cidr suppressed 4" in p.stdout
    p = sensor("replay", str(pcap), "--config", str(cfg))
    assert "2 alert(s)" in p.stdout and "allow filters" not in p.stdout


def test_hunt_and_report_take_filters_too(partner_pcap, tmp_path):
    """Re-running tuned rules on old records: the same filter suppresses the same key in `hunt`."""
    pcap, cfg = partner_pcap
    out = tmp_path / "out"
    p = sensor("replay", str(pcap), "--config", str(cfg), "--out", str(out))
    assert p.returncode == 0 and "2 alert(s)" in p.stdout, p.stderr

    def hunted(*more: str) -> list[str]:
        d = tmp_path / f"hunt{len(list(tmp_path.iterdir()))}"
        p = sensor("hunt", str(out / "connections.jsonl"), "--out", str(d), *more)
        assert p.returncode == 0, p.stderr
        alerts = [json.loads(x) for x in (d / "alerts.jsonl").read_text().splitlines()]
        return sorted(a["RemoteIP"] for a in alerts if "ConnectionCount" in a)

    assert hunted() == ["198.51.100.5", "203.0.113.9"]
    assert hunted("--filters", str(PARTNER)) == ["203.0.113.9"]
    page = tmp_path / "r.html"
    p = sensor("report", str(out), "--report", str(page), "--filters", str(PARTNER))
    assert p.returncode == 0, p.stderr
    html = page.read_text()
    assert "allow_partner_contoso_cidr" in html and "Contoso payroll file drop" in html
