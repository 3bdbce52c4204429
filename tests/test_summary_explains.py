"""The replay summary explains (issue #15): every hunt key with its count and
status, what the selection left out and why, counted by reason, the files per
key; in the text summary and in --format json.

Every expected value is derived here from the records the same replay wrote
(connections.jsonl, transfers.jsonl) and from the shipped rule file read with
plain yaml, never from the summary code."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
REAL = sorted((REPO / "pcaps" / "real").glob("*.pcap"))
DEMO, DEMO_CFG = REPO / "pcaps" / "demo.pcap", REPO / "pcaps" / "demo.yaml"
SENSOR = [sys.executable, "-m", "sensor"]

# the hunt as the shipped rule file writes it (read with yaml, not the sensor's loader)
_DOCS = list(yaml.safe_load_all((REPO / "rules" / "t1071_002_file_transfer_protocols.yml").read_text()))
_SEL = _DOCS[0]["detection"]["selection"]
HUNT_PORTS = set(_SEL["RemotePort"])
HUNT_TYPE = _SEL["RemoteIPType"]
HUNT_ACTION = _SEL["ActionType"]
GROUP_BY = tuple(_DOCS[1]["correlation"]["group-by"])
THRESHOLD = _DOCS[1]["correlation"]["condition"]["gt"]


def replay(tmp: Path, *args: str, fmt: str = "json") -> tuple[subprocess.CompletedProcess, list[dict], list[dict]]:
    out = tmp / f"out-{fmt}"
    p = subprocess.run(
        SENSOR + ["replay", *args, "--out", str(out), "--format", fmt],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    conns = [json.loads(line) for line in (out / "connections.jsonl").read_text().splitlines()]
    transfers = [json.loads(line) for line in (out / "transfers.jsonl").read_text().splitlines()]
    return p, conns, transfers


def key_of(rec: dict) -> tuple:
    return tuple(rec.get(f, "") for f in GROUP_BY)


def selected(rec: dict) -> bool:
    return rec["RemotePort"] in HUNT_PORTS and rec["RemoteIPType"] == HUNT_TYPE and rec["ActionType"] == HUNT_ACTION


def expected_reasons(conns: list[dict]) -> dict[str, tuple[int, Counter]]:
    """reason -> (connections, values), each connection under every field it fails."""
    out: dict[str, tuple[int, Counter]] = {}
    for field, ok in (
        ("RemoteIPType", lambda r: r["RemoteIPType"] == HUNT_TYPE),
        ("ActionType", lambda r: r["ActionType"] == HUNT_ACTION),
        ("RemotePort", lambda r: r["RemotePort"] in HUNT_PORTS),
    ):
        bad = [r for r in conns if not ok(r)]
        if bad:
            out[f"field:{field}"] = (len(bad), Counter(str(r[field]) for r in bad))
    return out


def table_by_key(summary: dict) -> dict[tuple, dict]:
    (hunt,) = summary["hunt"]
    return {tuple(row[f] for f in GROUP_BY): row for row in hunt["table"]}


def reasons_of(summary: dict) -> dict[str, tuple[int, Counter]]:
    (hunt,) = summary["hunt"]
    return {r["reason"]: (r["connections"], Counter(r["values"])) for r in hunt["left_out"]}


@pytest.mark.parametrize("pcap", REAL, ids=[p.stem for p in REAL])
def test_real_capture_names_every_key_and_why(pcap, tmp_path):
    p, conns, transfers = replay(tmp_path, str(pcap))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert conns, "every committed real capture has connections"
    keys = Counter(key_of(r) for r in conns)
    (hunt,) = s["hunt"]
    assert hunt["connections"] == len(conns) and hunt["keys"] == len(keys) and hunt["more"] == 0
    assert hunt["counted"] == sum(1 for r in conns if selected(r)) == 0  # lab addresses are Private
    table = table_by_key(s)
    assert set(table) == set(keys)
    for k, n in keys.items():
        row = table[k]
        assert row["Connections"] == n and row["ConnectionCount"] == 0 and row["Status"] == "left out"
        assert "RemoteIPType Private" in row["Why"]
    assert reasons_of(s) == expected_reasons(conns)
    # the files per key: every transfer joins its control connection's key
    key_by_uid = {r["Uid"]: key_of(r) for r in conns}
    files = Counter(key_by_uid[t["ControlUid"]] for t in transfers)
    assert {k: row["Files"] for k, row in table.items() if row["Files"]} == dict(files)
    for k, row in table.items():
        by_dir: Counter = Counter()
        for t in transfers:
            if key_by_uid[t["ControlUid"]] == k:
                by_dir[t["Direction"]] += t["Bytes"]
        assert {d: x["Bytes"] for d, x in row["Transfers"].items()} == dict(by_dir)
    assert s["no_alerts"].startswith(f"none of the {len(conns)} connection(s) is counted by the hunt (RemoteIPType")

    # the text summary: the one-line reason, a row per key with its count, the hint
    t = subprocess.run(SENSOR + ["replay", str(pcap)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr
    lines = t.stdout.splitlines()
    assert f"no alerts: none of the {len(conns)} connection(s) is counted by the hunt" in t.stdout
    for k, n in keys.items():
        ip, port = k[GROUP_BY.index("RemoteIP")], k[GROUP_BY.index("RemotePort")]
        rows = [ln.split() for ln in lines if ln.startswith("left out ")]
        assert any(r[2:4] == ["0", str(n)] and ip in r and str(port) in r for r in rows), (k, n)
    assert "ip_type_overrides" in t.stdout


def test_lab_range_typed_public_alerts_and_marks_the_key(tmp_path):
    """ftp_repeated with the lab range typed Public: the README's threshold alert."""
    cfg = tmp_path / "lab.yaml"
    cfg.write_text("ip_type_overrides: {10.77.0.0/24: Public}\n")
    p, conns, _ = replay(tmp_path, str(REPO / "pcaps/real/ftp_repeated.pcap"), "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    counted = Counter(key_of(r) for r in conns if selected(r))
    (busy, n), *_ = counted.most_common()
    assert n > THRESHOLD
    table = table_by_key(s)
    assert table[busy]["Status"] == "ALERT" and table[busy]["ConnectionCount"] == n
    assert [tuple(a[f] for f in GROUP_BY) for a in s["alerts"]] == [busy]
    assert s["no_alerts"] == ""
    # what is still left out: the data channels, on ports the hunt does not count
    assert reasons_of(s) == expected_reasons(conns)
    assert set(reasons_of(s)) == {"field:RemotePort"}


def test_demo_statuses_and_every_reason(tmp_path):
    """The demo: alerted, near and below keys, and every field reason with values from the records."""
    p, conns, _ = replay(tmp_path, str(DEMO), "--config", str(DEMO_CFG))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    alerted = {tuple(a[f] for f in GROUP_BY) for a in s["alerts"]}
    counted = Counter(key_of(r) for r in conns if selected(r))
    total = Counter(key_of(r) for r in conns)
    table = table_by_key(s)
    assert set(table) == set(total)  # 17 keys, all within the default --top
    for k, row in table.items():
        n = counted.get(k, 0)
        assert row["ConnectionCount"] == n and row["Connections"] == total[k]
        if k in alerted:
            want = "ALERT"
        elif n == 0:
            want = "left out"
        elif n >= THRESHOLD - 1:  # 2 or 3 of "more than 3" (or more, never within one window)
            want = "near"
        else:
            want = "below"
        assert row["Status"] == want, (k, row)
    assert {row["Status"] for row in table.values()} == {"ALERT", "near", "left out"}
    # the FTPS key with 4 connections over 30 hours: counted 4, never 4 within 24h
    spread = [row for row in table.values() if row["Status"] == "near" and row["ConnectionCount"] > THRESHOLD]
    assert spread and all("never" in row["Why"] for row in spread)
    reasons = reasons_of(s)
    assert reasons == expected_reasons(conns)
    assert set(reasons) == {"field:RemoteIPType", "field:ActionType", "field:RemotePort"}
    (hunt,) = s["hunt"]
    text = {r["reason"]: r["text"] for r in hunt["left_out"]}
    assert "ip_type_overrides" in text["field:RemoteIPType"]
    assert "the hunt counts ActionType: ConnectionSuccess" in text["field:ActionType"]
    assert "the hunt counts RemotePort: 20, 21, 990, 445, 139, 69" in text["field:RemotePort"]


def test_not_public_names_the_type(tmp_path):
    """Without the demo's config its servers are in documentation ranges: Reserved, not Private."""
    p, conns, _ = replay(tmp_path, str(DEMO))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    n, values = reasons_of(s)["field:RemoteIPType"]
    want = Counter(r["RemoteIPType"] for r in conns if r["RemoteIPType"] != HUNT_TYPE)
    assert n == sum(want.values()) and values == want
    assert set(want) == {"Reserved", "Private"}
    assert s["alerts"] == [] and "RemoteIPType Reserved" in s["no_alerts"]


def test_allow_filter_named_with_its_reason(tmp_path):
    """An allow entry that suppresses the SMB key: the summary names the filter and its reason."""
    src = (REPO / "rules/examples/mf_allow_partner_cidr.yml").read_text()
    assert "198.51.100.0/28" in src
    flt = tmp_path / "mf_partner.yml"
    flt.write_text(src.replace("198.51.100.0/28", "198.51.100.16/28"))
    p, conns, _ = replay(tmp_path, str(DEMO), "--config", str(DEMO_CFG), "--filters", str(flt))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    net = ipaddress.ip_network("198.51.100.16/28")
    allowed = [r for r in conns if selected(r) and ipaddress.ip_address(r["RemoteIP"]) in net]
    assert allowed
    code = "allow:xfer_public_file_transfer_connection/allow_partner_contoso_cidr"
    reasons = reasons_of(s)
    assert reasons[code][0] == len(allowed)
    (hunt,) = s["hunt"]
    (entry,) = [r for r in hunt["left_out"] if r["reason"] == code]
    assert entry["keys"] == len({key_of(r) for r in allowed})
    assert "Contoso payroll file drop" in entry["text"] and "expires 2027-06-30" in entry["text"]
    for k in {key_of(r) for r in allowed}:
        assert table_by_key(s)[k]["Why"] == "allowed by allow_partner_contoso_cidr"
        assert k not in {tuple(a[f] for f in GROUP_BY) for a in s["alerts"]}
    # the field reasons are unchanged by the filter
    assert {c: v for c, v in reasons.items() if c != code} == expected_reasons(conns)


def test_plain_filter_and_other_fields_are_named(tmp_path):
    """A filter selection of the rule itself, and a selection field other than the three, explain themselves."""
    rules = tmp_path / "rules"
    rules.mkdir()
    doc = _DOCS[0] | {
        "detection": {
            "selection": dict(_SEL, AppProtocol=["ftp", "smb"]),
            "filter_lab": {"RemoteIP": "203.0.113.30"},
            "condition": "selection and not filter_lab",
        }
    }
    (rules / "r.yml").write_text(yaml.safe_dump_all([doc, _DOCS[1]], sort_keys=False))
    p, conns, _ = replay(tmp_path, str(DEMO), "--config", str(DEMO_CFG), "--rules", str(rules))
    assert p.returncode == 0, p.stderr
    reasons = reasons_of(json.loads(p.stdout))
    in_sel = [r for r in conns if selected(r) and r["AppProtocol"] in ("ftp", "smb")]
    filtered = [r for r in in_sel if r["RemoteIP"] == "203.0.113.30"]
    assert filtered and reasons["filter:xfer_public_file_transfer_connection/filter_lab"][0] == len(filtered)
    other = Counter(r["AppProtocol"] for r in conns if r["AppProtocol"] not in ("ftp", "smb"))
    assert reasons["field:AppProtocol"] == (sum(other.values()), other)


def test_top_bounds_the_table(tmp_path):
    p, conns, _ = replay(tmp_path, str(DEMO), "--config", str(DEMO_CFG), "--top", "3")
    s = json.loads(p.stdout)
    (hunt,) = s["hunt"]
    keys = len({key_of(r) for r in conns})
    assert len(hunt["table"]) == 3 and hunt["more"] == keys - 3 and hunt["top"] == 3
    assert [r["Status"] for r in hunt["table"]] == ["ALERT", "ALERT", "near"]
    t = subprocess.run(
        SENSOR + ["replay", str(DEMO), "--config", str(DEMO_CFG), "--top", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"... and {keys - 3} more key(s)" in t.stdout
    bad = subprocess.run(SENSOR + ["replay", str(DEMO), "--top", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--top" in bad.stderr and "Traceback" not in bad.stderr


def test_max_summary_keys_bounds_what_is_kept(tmp_path):
    """limits.max_summary_keys: the first keys are tabulated, the connections of later new keys
    only counted by reason."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEMO_CFG.read_text() + "limits: {max_summary_keys: 2}\n")
    p, conns, _ = replay(tmp_path, str(DEMO), "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    first: list[tuple] = []
    for r in conns:
        if key_of(r) not in first and len(first) < 2:
            first.append(key_of(r))
    (hunt,) = s["hunt"]
    assert hunt["keys"] == 2 and set(table_by_key(s)) == set(first)
    assert hunt["keys_not_tabulated_connections"] == sum(1 for r in conns if key_of(r) not in first)
    assert reasons_of(s) == expected_reasons(conns)  # reasons still count every connection


def test_wire_text_cannot_forge_summary_lines():
    """Account and file names come off the wire: the text summary escapes them, the sink takes
    records with odd values without an exception, and every count stays bounded."""
    from sensor.cli.summary import MAX_VALUES, HuntSummary, render
    from sensor.detect.rules import load_rules
    from sensor.records.mde import RECORD_FIELDS

    hs = HuntSummary(load_rules(REPO / "rules", RECORD_FIELDS), max_keys=1000)
    evil = "x\x1b[2J\r\nALERT 99 forged\u202e"
    for i in range(40):
        uid = f"C{i}"
        hs.emit(
            "transfers",
            {"ControlUid": uid, "Filename": evil, "Direction": f"dir{i}\n", "Bytes": "12" if i % 2 else -5},
        )
        hs.emit(
            "connections",
            {
                "Uid": uid,
                "Timestamp": "2026-11-27T01:00:00.000000Z",
                "DeviceName": "d",
                "InitiatingProcessFileName": "",
                "RemoteIP": "203.0.113.9",
                "RemotePort": 21 if i % 2 else 40000 + i,  # a new port value each time: values stay bounded
                "AccountName": evil,
                "RemoteIPType": "Public",
                "ActionType": "ConnectionSuccess",
                "SentBytes": None,
                "ReceivedBytes": 2**70,
            },
        )
    (t,) = hs.tables([], top=5)
    assert t["connections"] == 40 and t["counted"] == 20 and t["more"] == t["keys"] - 5
    (port,) = [r for r in t["left_out"] if r["reason"] == "field:RemotePort"]
    assert port["connections"] == 20 and len(port["values"]) <= MAX_VALUES
    text = "\n".join(render([t]))
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert not any(line.startswith("ALERT 99") for line in text.splitlines())
    assert all(len(r["Transfers"]) <= MAX_VALUES for r in t["table"])


def test_no_alert_names_the_busiest_key(tmp_path):
    """Counted connections but no alert: the one-line reason names the busiest key and its count."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("home_net: [192.168.56.0/24]\nip_type_overrides: {203.0.113.30/32: Public}\n")
    p, conns, _ = replay(tmp_path, str(DEMO), "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    counted = Counter(key_of(r) for r in conns if selected(r))
    (key, n), *rest = counted.most_common()
    assert 0 < n <= THRESHOLD and all(m < n for _, m in rest)
    assert s["alerts"] == []
    dev, ip, port = (key[GROUP_BY.index(f)] for f in ("DeviceName", "RemoteIP", "RemotePort"))
    assert s["no_alerts"].startswith(
        f"{sum(counted.values())} of {len(conns)} connection(s) counted; the busiest key, {dev} -> {ip}:{port}"
    )
    assert s["no_alerts"].endswith(f"has {n}: the hunt alerts at more than {THRESHOLD} connections within 24h")
    assert table_by_key(s)[key]["Status"] == "near"
