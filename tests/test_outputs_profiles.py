"""Output profiles: `mde` (records unchanged, DeviceNetworkEvents columns) and `ecs`
(validated against a checked-in subset of the ECS 8.x field definitions)."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.records.ecs import EcsProfile
from sensor.records.encode import Encoder, MdeProfile
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import Link, tcp_midstream, tcp_refused, tcp_session, write_pcap
from tests.support.tls import openssl_client_hello

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SUBSET = yaml.safe_load((DATA / "ecs" / "ecs_fields_subset.yml").read_text())
MDE_COLUMNS = yaml.safe_load((DATA / "mde" / "device_network_events_columns.yml").read_text())["columns"]
DEMO = REPO / "pcaps" / "demo.pcap"
DEMO_CFG = REPO / "pcaps" / "demo.yaml"
T0 = 1_700_000_000.0


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "sensor", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def read_kinds(outdir: Path) -> dict[str, list[dict]]:
    return {
        k: [json.loads(line) for line in (outdir / f"{k}.jsonl").read_text().splitlines()]
        for k in ("connections", "alerts", "transfers", "weird")
    }


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> tuple[Path, Path]:
    """Crafted traffic covering what the demo does not: FTPS with SNI, a refused and a
    mid-stream connection, inbound, internal and external pairs, IPv6, a VLAN tag, and
    a config with `hostnames`."""
    d = tmp_path_factory.mktemp("varied")
    dev, pub = "10.1.1.5", "93.184.216.34"
    pkts = []
    for i in range(4):  # four FTP sessions to one public server: an alert
        pkts += tcp_session(dev, pub, 40000 + i, 21, T0 + i * 60, c2s=b"USER alice\r\n", s2c=b"220 hi\r\n")
    pkts += tcp_session(
        dev,
        "151.101.1.1",
        40100,
        990,
        T0 + 300,
        c2s=openssl_client_hello("files.mft.example"),
        s2c=b"\x16\x03\x03\x00\x00",
    )
    pkts += tcp_refused(dev, pub, 40200, 445, T0 + 400)
    pkts += tcp_midstream(dev, pub, 40300, 445, T0 + 500)
    pkts += tcp_session(pub, dev, 40400, 21, T0 + 600, c2s=b"USER x\r\n", s2c=b"220 hi\r\n")  # inbound
    pkts += tcp_session(dev, "10.2.2.2", 40500, 445, T0 + 700, c2s=b"\x00\x00\x00\x01x")  # internal
    pkts += tcp_session("8.8.8.8", "1.1.1.1", 40600, 21, T0 + 800, c2s=b"USER y\r\n")  # external
    pkts += tcp_session("fd00::5", "2001:db8::21", 40700, 21, T0 + 900, c2s=b"USER v6\r\n")  # IPv6
    pkts += tcp_session(dev, pub, 40800, 21, T0 + 1000, c2s=b"USER vlan\r\n", link=Link(vlan=42))
    pcap = write_pcap(d / "varied.pcap", pkts)
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"hostnames": {pub: "ftp.example.org"}}))
    return pcap, cfg


@pytest.fixture(scope="module")
def ecs_records(tmp_path_factory, varied) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"connections": [], "alerts": [], "transfers": [], "weird": []}
    for pcap, cfg, args in ((DEMO, DEMO_CFG, ()), (varied[0], varied[1], ())):
        o = tmp_path_factory.mktemp("ecs")
        cli("replay", str(pcap), "--config", str(cfg), "--out", str(o), "--profile", "ecs", *args)
        for k, v in read_kinds(o).items():
            out[k] += v
    return out


# -- ECS validation ------------------------------------------------------------------------
def flatten(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not key.startswith("xfer."):
            if not v:
                out[key] = v
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _date(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _ip(v) -> bool:
    try:
        ipaddress.ip_address(v)
    except (ValueError, TypeError):
        return False
    return True


TYPE_CHECK = {
    "keyword": lambda v: isinstance(v, str),
    "wildcard": lambda v: isinstance(v, str),
    "match_only_text": lambda v: isinstance(v, str),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "ip": _ip,
    "date": _date,
}


def ecs_problems(doc: dict) -> list[str]:
    """Everything in `doc` that the ECS subset does not allow."""
    problems = []
    fields = SUBSET["fields"]
    allowed = SUBSET["allowed_values"]
    for req in ("@timestamp", "ecs.version", "event.kind", "event.category", "event.type"):
        if req not in flatten(doc):
            problems.append(f"missing {req}")
    for key, v in flatten(doc).items():
        if key == "xfer" or key.startswith("xfer."):
            continue
        spec = fields.get(key)
        if spec is None:
            problems.append(f"{key}: not an ECS field (of the subset)")
            continue
        values = v if isinstance(v, list) else [v]
        if spec.get("array") and not isinstance(v, list):
            problems.append(f"{key}: ECS normalizes it to an array, got {v!r}")
        if isinstance(v, list) and not v:
            problems.append(f"{key}: empty array")
        for item in values:
            if not TYPE_CHECK[spec["type"]](item):
                problems.append(f"{key}: {item!r} is not of ECS type {spec['type']}")
        if key in allowed:
            for item in values:
                if item not in allowed[key]:
                    problems.append(f"{key}: {item!r} is not an allowed value")
    flat = flatten(doc)
    cats, types = flat.get("event.category", []), flat.get("event.type", [])
    for t in types:
        if not any(t in SUBSET["expected_event_types"].get(c, ()) for c in cats):
            problems.append(f"event.type {t!r} is not expected for categories {cats}")
    return problems


def test_every_ecs_document_validates(ecs_records):
    n = 0
    for kind, docs in ecs_records.items():
        assert docs or kind == "weird", kind
        for doc in docs:
            assert ecs_problems(doc) == [], (kind, doc)
            n += 1
    assert n > 80


def test_the_validator_can_fail():
    good = {
        "@timestamp": "2026-01-01T00:00:00.000000Z",
        "ecs": {"version": "8.11.0"},
        "event": {"kind": "event", "category": ["network"], "type": ["connection", "end"]},
    }
    assert ecs_problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["event"]["kind"] = "connection"
    bad["event"]["type"] = ["creation"]
    bad["source"] = {"ip": "not-an-ip", "port": "21"}
    bad["network"] = {"direction": "outgoing", "bogus": 1}
    bad["host"] = {"ip": "10.0.0.1"}
    p = ecs_problems(bad)
    assert any("event.kind" in x for x in p) and any("creation" in x for x in p)
    assert any("source.ip" in x for x in p) and any("source.port" in x for x in p)
    assert any("network.direction" in x for x in p) and any("network.bogus" in x for x in p)
    assert any("host.ip" in x and "array" in x for x in p)


def test_ecs_connection_semantics(ecs_records):
    conns = ecs_records["connections"]
    by_action = {}
    for c in conns:
        by_action.setdefault(c["event"]["action"], []).append(c)
    outcome = {
        "ConnectionSuccess": "success",
        "InboundConnectionAccepted": "success",
        "ConnectionFailed": "failure",
        "ConnectionFound": "unknown",
    }
    assert set(by_action) == set(outcome)
    for action, docs in by_action.items():
        assert {d["event"]["outcome"] for d in docs} == {outcome[action]}
    assert {c["network"]["direction"] for c in conns} == {"egress", "ingress", "internal", "external"}
    for c in conns:
        assert c["event"]["type"] == ["connection", "end"]
        assert c["network"]["transport"] in ("tcp", "udp")
        assert c["network"]["community_id"].startswith("1:")
        # originator is the source: outbound -> the device is the source
        if c["xfer"]["direction"] == "outbound":
            assert c["source"]["ip"] == c["host"]["ip"][0]
            assert c["source"]["bytes"] == c["xfer"]["sent_bytes"]
        else:
            assert c["destination"]["ip"] == c["host"]["ip"][0]
            assert c["destination"]["bytes"] == c["xfer"]["sent_bytes"]
        assert c["network"]["bytes"] == c["source"]["bytes"] + c["destination"]["bytes"]
        assert c["event"]["duration"] >= 0
    inbound = [
        c for c in conns if c["event"]["action"] == "InboundConnectionAccepted" and c["source"]["ip"] == "93.184.216.34"
    ]
    assert inbound and inbound[0]["network"]["direction"] == "ingress"
    assert inbound[0]["source"]["domain"] == "ftp.example.org"  # the remote side, from hostnames
    sni = [c for c in conns if c.get("tls")]
    assert [c["tls"]["client"]["server_name"] for c in sni] == ["files.mft.example"]
    assert sni[0]["network"]["protocol"] == "ftps"
    assert any(c["network"].get("type") == "ipv6" for c in conns)
    assert any(c["network"].get("vlan") == {"id": "42"} for c in conns)
    zeek = {c["xfer"]["conn_state"] for c in conns}
    assert {"SF", "REJ", "OTH"} <= zeek
    assert all(
        c["destination"].get("domain") == "ftp.example.org" for c in conns if c["destination"]["ip"] == "93.184.216.34"
    )


def test_ecs_alert_carries_rule_and_attack(ecs_records):
    alerts = [a for a in ecs_records["alerts"] if a["xfer"]["alert"].get("connection_count")]
    assert len(alerts) >= 3  # two in the demo, one in the crafted traffic
    for a in alerts:
        assert a["event"]["kind"] == "alert"
        assert a["rule"]["id"] == "0b7f5a8e-9d4c-4c1b-8f6a-1e2d3c4b5a69"
        assert a["rule"]["ruleset"] == "xfer-sensor"
        assert a["rule"]["reference"] == "https://attack.mitre.org/techniques/T1071/002/"
        t = a["threat"]
        assert t["framework"] == "MITRE ATT&CK"
        assert t["tactic"]["id"] == ["TA0011"]
        assert t["technique"]["id"] == ["T1071"]
        assert t["technique"]["subtechnique"]["id"] == ["T1071.002"]
        assert a["event"]["severity"] == 4  # level high
        assert a["xfer"]["alert"]["connection_count"] == 4
    crafted = [a for a in alerts if a["destination"]["ip"] == "93.184.216.34"]
    assert crafted and crafted[0]["destination"]["domain"] == "ftp.example.org"
    assert crafted[0]["user"]["name"] == "alice"


def test_ecs_transfers_are_file_events(ecs_records):
    tr = ecs_records["transfers"]
    assert len(tr) == 24
    for t in tr:
        assert t["event"]["category"] == ["file", "network"]
        assert t["event"]["action"] in ("file-upload", "file-download", "directory-listing")
    up = next(t for t in tr if t.get("file", {}).get("name") == "q1-finance.7z")
    assert up["file"]["size"] == 40000 and up["event"]["outcome"] == "success"
    assert up["event"]["type"] == ["creation"] and up["xfer"]["transfer"]["command"] == "STOR"
    smb = [t for t in tr if t["network"]["protocol"] == "smb"]
    assert smb and all("\\" not in t["file"]["name"] for t in smb if "file" in t)


def test_ecs_process_fields_from_endpoint_records():
    """Endpoint mode fills Defender's process columns; they map to process.*."""
    rec = {
        "Timestamp": "2026-11-27T01:00:00.000000Z",
        "DeviceName": "WS-1",
        "ActionType": "ConnectionSuccess",
        "LocalIP": "10.0.0.5",
        "LocalPort": 40000,
        "RemoteIP": "93.184.216.34",
        "RemotePort": 21,
        "Protocol": "Tcp",
        "LocalIPType": "Private",
        "RemoteIPType": "Public",
        "InitiatingProcessFileName": "rclone",
        "InitiatingProcessId": 4242,
        "InitiatingProcessAccountName": "backup",
        "InitiatingProcessCommandLine": "rclone sync /srv ftp:",
        "InitiatingProcessFolderPath": "/usr/bin/rclone",
        "InitiatingProcessParentFileName": "cron",
        "InitiatingProcessParentId": 1,
        "InitiatingProcessCreationTime": "2026-11-27T00:59:59.000000Z",
        "AccountName": "backup",
        "SentBytes": 10,
        "ReceivedBytes": 20,
        "SentPackets": 1,
        "ReceivedPackets": 2,
        "FirstSeen": "2026-11-27T01:00:00.000000Z",
        "LastSeen": "2026-11-27T01:00:01.500000Z",
        "ConnState": "SF",
        "History": "ShADadFf",
        "Uid": "Cabc",
        "CommunityId": "1:x",
        "Direction": "outbound",
        "Vlan": 0,
        "AppProtocol": "ftp",
        "AppUser": "ftpuser",
        "DataSentBytes": 0,
        "DataReceivedBytes": 0,
        "ParentUid": "",
        "AdditionalFields": {},
    }
    doc = EcsProfile(config_from_dict({})).connection(rec)
    assert ecs_problems(doc) == []
    assert doc["process"] == {
        "name": "rclone",
        "pid": 4242,
        "command_line": "rclone sync /srv ftp:",
        "executable": "/usr/bin/rclone",
        "start": "2026-11-27T00:59:59.000000Z",
        "user": {"name": "backup"},
        "parent": {"name": "cron", "pid": 1},
    }
    assert doc["user"] == {"name": "backup"}
    assert doc["related"]["user"] == ["backup", "ftpuser"]
    assert doc["event"]["duration"] == 1_500_000_000


def test_ecs_truncated_record_still_validates():
    rec = {
        "Timestamp": "2026-11-27T01:00:00.000000Z",
        "ActionType": "ConnectionSuccess",
        "LocalIP": "10.0.0.5",
        "RemoteIP": "93.184.216.34",
        "Protocol": "Tcp",
        "Direction": "outbound",
        "Uid": "Cx",
        "AdditionalFields": {"Files": [f"file-{i:05d}-" + "x" * 80 for i in range(2000)]},
    }
    enc = Encoder(EcsProfile(config_from_dict({})), 4096)
    line = enc.encode("connections", rec)
    assert len(line) <= 4096 and line.endswith(b"\n")
    doc = json.loads(line)
    assert doc["xfer"]["record_truncated"] is True
    assert 0 < len(doc["xfer"]["details"]["Files"]) < 2000
    assert ecs_problems(doc) == []
    assert len(rec["AdditionalFields"]["Files"]) == 2000  # the record itself is untouched


# -- mde --------------------------------------------------------------------------------
def documented_mde_columns() -> dict[str, tuple[str, str]]:
    """The connections table of docs/outputs.md: field -> (Defender|extra, type)."""
    text = (REPO / "docs" / "outputs.md").read_text()
    section = text.split("### `connections.jsonl`", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for m in re.finditer(r"^\| `([A-Za-z]+)` \| (Defender|extra) \| (\w+) \|", section, re.M):
        rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


DEFENDER_TYPE = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "datetime": _date,
    "dynamic": lambda v: isinstance(v, (dict, list)),
}


def mde_problems(rec: dict, doc_cols: dict) -> list[str]:
    problems = []
    for k, v in rec.items():
        if k not in doc_cols:
            problems.append(f"{k}: not a documented column")
            continue
        origin, typ = doc_cols[k]
        if origin == "Defender":
            if k not in MDE_COLUMNS:
                problems.append(f"{k}: documented as a Defender column but DeviceNetworkEvents has none")
            elif MDE_COLUMNS[k] != typ:
                problems.append(f"{k}: documented type {typ}, Defender's is {MDE_COLUMNS[k]}")
        elif k in MDE_COLUMNS:
            problems.append(f"{k}: an extra column must not reuse a Defender name")
        if not DEFENDER_TYPE[typ](v):
            problems.append(f"{k}: {v!r} is not {typ}")
    return problems


def test_mde_records_are_devicenetworkevents_columns(tmp_path, varied):
    cols = documented_mde_columns()
    assert len(cols) >= 30 and set(RECORD_FIELDS) <= set(cols)
    recs = []
    for pcap, cfg in ((DEMO, DEMO_CFG), varied):
        o = tmp_path / pcap.stem
        cli("replay", str(pcap), "--config", str(cfg), "--out", str(o))
        recs += read_kinds(o)["connections"]
    assert len(recs) > 50
    for r in recs:
        assert mde_problems(r, cols) == [], r
    # the columns the hunt needs are Defender's, and filled
    for k in (
        "Timestamp",
        "DeviceName",
        "ActionType",
        "RemoteIP",
        "RemotePort",
        "RemoteIPType",
        "InitiatingProcessFileName",
    ):
        assert cols[k][0] == "Defender" and all(k in r for r in recs)
    assert any(r.get("RemoteUrl") == "ftp.example.org" for r in recs)
    # and the check can fail
    assert mde_problems({"RemotePort": "21", "Bogus": 1, "SentBytes": 1.5}, cols) != []


def test_mde_profile_writes_the_records_unchanged(tmp_path, replay):
    r = replay(DEMO, config=yaml.safe_load(DEMO_CFG.read_text()))
    o = tmp_path / "o"
    cli("replay", str(DEMO), "--config", str(DEMO_CFG), "--out", str(o), "--profile", "mde")
    got = read_kinds(o)
    # the records, field for field and in order, each with its kind last
    for kind in ("connections", "transfers", "weird"):
        mem = getattr(r, kind)
        assert got[kind] == [{**x, "RecordKind": kind} for x in mem]
        assert all(list(g)[:-1] == list(x) and list(g)[-1] == "RecordKind" for g, x in zip(got[kind], mem))
    doc = MdeProfile.transform("connections", r.connections[0])
    assert doc == {**r.connections[0], "RecordKind": "connections"} and "RecordKind" not in r.connections[0]


def test_profile_from_config_and_command_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(DEMO_CFG.read_text() + "\noutput: {profile: ecs}\n")
    a, b = tmp_path / "a", tmp_path / "b"
    cli("replay", str(DEMO), "--config", str(cfg), "--out", str(a))
    cli("replay", str(DEMO), "--config", str(cfg), "--out", str(b), "--profile", "mde")
    assert "@timestamp" in json.loads((a / "connections.jsonl").read_text().splitlines()[0])
    assert "Timestamp" in json.loads((b / "connections.jsonl").read_text().splitlines()[0])
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: {profile: splunk}\n")
    p = cli("check", "--config", str(bad), check=False)
    assert p.returncode == 2 and "output.profile" in p.stderr and "Traceback" not in p.stderr


def test_ecs_threat_from_rules_file():
    rs = load_rules(REPO / "rules", RECORD_FIELDS)
    prof = EcsProfile(config_from_dict({}), rs)
    c = rs.correlations[0]
    doc = prof.alert(
        {
            "Timestamp": "2026-01-01T00:00:00.000000Z",
            "RuleId": c.id,
            "RuleTitle": c.title,
            "Level": c.level,
            "Tags": list(c.tags),
            "Uids": ["C1"],
        }
    )
    assert ecs_problems(doc) == []
    assert doc["rule"]["description"].startswith("More than 3 successful connections")
    assert doc["threat"]["technique"]["subtechnique"]["name"] == ["File Transfer Protocols"]
