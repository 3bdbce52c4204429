"""Config and rules are validated at load time; errors name file, rule and field."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sensor.core.config import ConfigError, config_from_dict, load_config
from sensor.core.iptype import IpTyper
from sensor.detect.rules import RuleError, load_rules
from sensor.records.communityid import community_id_v1
from sensor.records.mde import RECORD_FIELDS

REPO = Path(__file__).resolve().parent.parent
GOOD_BASE = """
title: t
id: base-1
name: base
logsource: {category: network_connection}
detection:
  selection: {RemotePort: 21}
  condition: selection
"""


def rules_dir(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "r.yml").write_text(textwrap.dedent(text))
    return d


def test_shipped_rules_load():
    rs = load_rules(REPO / "rules", RECORD_FIELDS)
    assert len(rs.correlations) >= 1
    c = next(c for c in rs.correlations if c.name == "xfer_repeated_public_file_transfer")
    assert c.group_by == ("DeviceName", "InitiatingProcessFileName", "RemoteIP", "RemotePort", "AccountName")
    assert (c.timespan_s, c.op, c.threshold) == (86400, "gt", 3)


@pytest.mark.parametrize(
    "body,rule,field,words",
    [
        ("selection: {RemotePrt: 21}\n  condition: selection", "base-1", "detection.RemotePrt", "unknown field"),
        (
            "selection: {RemotePort|fuzzy: 21}\n  condition: selection",
            "base-1",
            "detection.RemotePort|fuzzy",
            "unsupported modifier",
        ),
        ("selection: {RemotePort: 21}\n  condition: selection | count() > 3", "base-1", "detection.condition", "pipe"),
        ("selection: {RemotePort: 21}\n  condition: selecton", "base-1", "detection.condition", "unknown selection"),
        ("selection: [ftp, smb]\n  condition: selection", "base-1", "detection.selection", "keyword"),
        (
            "selection: {RemoteIP|cidr: 10.0.0.0/33}\n  condition: selection",
            "base-1",
            "detection.RemoteIP|cidr",
            "CIDR",
        ),
    ],
)
def test_bad_detection_refused(tmp_path, body, rule, field, words):
    text = GOOD_BASE.replace("selection: {RemotePort: 21}\n  condition: selection", body)
    with pytest.raises(RuleError) as e:
        load_rules(rules_dir(tmp_path, text), RECORD_FIELDS)
    assert e.value.rule == rule and e.value.field == field
    assert words in str(e.value) and "r.yml" in str(e.value)


@pytest.mark.parametrize(
    "corr,field,words",
    [
        ("type: value_count", "correlation.type", "event_count"),
        (
            "type: event_count\n  rules: [nope]\n  group-by: [RemoteIP]\n  timespan: 24h\n  condition: {gt: 3}",
            "correlation.rules",
            "nope",
        ),
        (
            "type: event_count\n  rules: [base]\n  group-by: [RemoteIp]\n  timespan: 24h\n  condition: {gt: 3}",
            "correlation.group-by",
            "RemoteIp",
        ),
        (
            "type: event_count\n  rules: [base]\n  group-by: [RemoteIP]\n  timespan: 24hours\n  condition: {gt: 3}",
            "correlation.timespan",
            "24h",
        ),
        (
            "type: event_count\n  rules: [base]\n  group-by: [RemoteIP]\n  timespan: 24h\n  condition: {lt: 3}",
            "correlation.condition.lt",
            "gt",
        ),
        (
            "type: event_count\n  rules: [base]\n  group-by: [RemoteIP]\n  timespan: 24h\n  condition: {gt: three}",
            "correlation.condition.gt",
            "whole number",
        ),
        (
            "type: event_count\n  rules: [base]\n  groupby: [RemoteIP]\n  timespan: 24h\n  condition: {gt: 3}",
            "correlation.groupby",
            "unknown key",
        ),
    ],
)
def test_bad_correlation_refused(tmp_path, corr, field, words):
    text = GOOD_BASE + "---\ntitle: c\nid: corr-1\ncorrelation:\n  " + corr + "\n"
    with pytest.raises(RuleError) as e:
        load_rules(rules_dir(tmp_path, text), RECORD_FIELDS)
    assert e.value.rule == "corr-1" and e.value.field == field, str(e.value)
    assert words in str(e.value)


def test_typo_in_top_level_key_refused(tmp_path):
    with pytest.raises(RuleError) as e:
        load_rules(rules_dir(tmp_path, GOOD_BASE + "levl: high\n"), RECORD_FIELDS)
    assert e.value.field == "levl"


def test_sigma_filter_condition_and_modifiers(tmp_path):
    text = GOOD_BASE.replace(
        "selection: {RemotePort: 21}\n  condition: selection",
        "selection: {RemotePort: [21, 990], RemoteIP|startswith: '93.'}\n"
        "  filter_partner: {RemoteIP|cidr: 93.184.216.0/24}\n"
        "  filter_big: {SentBytes|gt: 1000}\n"
        "  condition: selection and not 1 of filter_*",
    )
    rs = load_rules(rules_dir(tmp_path, text), RECORD_FIELDS)
    m = rs.detections[0].match
    assert m({"RemotePort": 21, "RemoteIP": "93.1.2.3", "SentBytes": 5})
    assert not m({"RemotePort": 21, "RemoteIP": "93.184.216.34", "SentBytes": 5})
    assert not m({"RemotePort": 990, "RemoteIP": "93.1.2.3", "SentBytes": 5000})
    assert not m({"RemotePort": 445, "RemoteIP": "93.1.2.3", "SentBytes": 5})


def test_bad_config_refused_naming_file_and_field(tmp_path):
    cases = {
        "tracked_ports: [21, 70000]": "tracked_ports",
        "home_net: [10.0.0.0/40]": "home_net",
        "ip_type_overrides: {10.77.0.0/24: Publik}": "ip_type_overrides.10.77.0.0/24",
        "limits: {max_flows: -1}": "limits.max_flows",
        "limits: {max_flow: 10}": "limits.max_flow",
        "timeout: {udp: 5}": "timeout",
        "inventory: {not-an-ip: pc}": "inventory.not-an-ip",
    }
    for text, field in cases.items():
        f = tmp_path / "c.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(f)
        assert e.value.field == field and str(f) in str(e.value), text


def test_check_command_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "sensor", "check"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    bad = rules_dir(tmp_path, GOOD_BASE.replace("RemotePort: 21", "RemotPort: 21"))
    r = subprocess.run(
        [sys.executable, "-m", "sensor", "check", "--rules", str(bad)], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 2
    assert "r.yml" in r.stderr and "base-1" in r.stderr and "RemotPort" in r.stderr
    assert "Traceback" not in r.stderr


def test_ip_types_and_overrides():
    t = IpTyper()
    assert [
        t.type_of(a)
        for a in (
            "8.8.8.8",
            "10.1.2.3",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "2001:0:4136:e378::1",
            "::ffff:8.8.8.8",
            "fe80::1",
            "fd00::1",
            "2606:2800:220:1::1",
            "192.0.2.1",
        )
    ] == [
        "Public",
        "Private",
        "Private",
        "Loopback",
        "LinkLocal",
        "Multicast",
        "Broadcast",
        "Reserved",
        "Teredo",
        "FourToSixMapping",
        "LinkLocal",
        "Private",
        "Public",
        "Reserved",
    ]
    cfg = config_from_dict(
        {"ip_type_overrides": {"10.77.0.0/24": "Public", "10.77.0.9/32": "Private", "100.64.0.0/10": "Private"}}
    )
    t = IpTyper(cfg.ip_type_overrides)
    assert t.type_of("10.77.0.2") == "Public"
    assert t.type_of("10.77.0.9") == "Private"  # the most specific prefix wins
    assert t.type_of("100.64.3.3") == "Private"


def test_home_net_and_inventory_pick_the_device(replay):
    from tests.support.craft import tcp_session

    pkts = tcp_session("10.77.0.1", "10.77.0.2", 40000, 21, 1_700_000_000.0, c2s=b"x" * 7)
    r = replay(pkts, config={"home_net": ["10.77.0.2/32"], "inventory": {"10.77.0.2": "ftp-server-1"}})
    c = r.connections[0]
    assert (c["DeviceName"], c["LocalIP"], c["LocalPort"], c["ActionType"], c["ReceivedBytes"]) == (
        "ftp-server-1",
        "10.77.0.2",
        21,
        "InboundConnectionAccepted",
        7,
    )


def test_community_id_spec_vector():
    import ipaddress

    # from the Community ID spec's baseline: TCP 128.232.110.120:34855 -> 66.35.250.204:80
    a = ipaddress.ip_address("128.232.110.120").packed
    b = ipaddress.ip_address("66.35.250.204").packed
    assert community_id_v1(a, b, 6, 34855, 80) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id_v1(b, a, 6, 80, 34855) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="


def test_rule_yaml_parsed_by_libyaml_equals_python_and_errors_are_pythons(tmp_path):
    """Rules are parsed by libyaml when PyYAML has it: the same documents as
    the Python loader gives, and a broken file gets the Python loader's
    message, naming the file and the line."""
    import yaml

    from sensor.core.config import _PY_LOADER, yaml_documents

    for f in sorted((REPO / "rules").rglob("*.yml")):
        text = f.read_text()
        assert yaml_documents(text) == list(yaml.load_all(text, Loader=_PY_LOADER)), f.name
    bad = tmp_path / "bad.yml"
    bad.write_text("title: x\ndetection:\n  sel: [a, b\n  condition: sel\n")
    with pytest.raises(RuleError) as e:
        load_rules(bad, RECORD_FIELDS)
    with pytest.raises(yaml.YAMLError) as py:
        list(yaml.safe_load_all(bad.read_text()))
    assert str(bad) in str(e.value) and "not valid YAML" in str(e.value)
    # the Python loader's problem and line, on one line
    assert py.value.problem in str(e.value) and f"line {py.value.problem_mark.line + 1}," in str(e.value)
    assert "\n" not in str(e.value)
