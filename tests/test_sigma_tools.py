"""Other Sigma tools read the rules and the allow filters as they are.

``sigma check`` (sigma-cli, pySigma's validators) over the whole ``rules/`` tree reports
no error and no issue, offline: two validators fetch their reference data from the
network at first use and are left out, by name -- ``attacktag`` (the MITRE ATT&CK
data, github.com/mitre/cti) and ``d3_fendtag`` (the MITRE D3FEND data, d3fend.mitre.org);
every other validator runs. And pySigma loads the shipped rule with each example filter
and applies the filter the way the sensor does: the rule's condition ANDed with the
filter's, the reason and expiry kept as custom attributes. Needs the `sigma` extra
(`pip install 'xfer-sensor[sigma]'`, part of the `test` extra).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.filters import SigmaFilter
from sigma.rule import SigmaRule

from sensor.detect.filters import load_filters
from sensor.detect.rules import load_rules
from sensor.records.mde import RECORD_FIELDS

REPO = Path(__file__).resolve().parent.parent
RULE = REPO / "rules" / "t1071_002_file_transfer_protocols.yml"
EXAMPLES = sorted((REPO / "rules" / "examples").glob("mf_*.yml"))
# the validators that download reference data at first use (no network in CI)
NEEDS_NETWORK = ("attacktag", "d3_fendtag")


def sigma_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # a fresh HOME: no cached ATT&CK / D3FEND data can hide a validator that needs the network
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "sigma.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_sigma_check_is_clean_over_the_rules_tree(tmp_path):
    assert len(EXAMPLES) == 5
    skip = [a for v in NEEDS_NETWORK for a in ("--exclude", v)]
    p = sigma_cli("check", "--fail-on-error", "--fail-on-issues", *skip, str(REPO / "rules"), home=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Found 0 errors, 0 condition errors and 0 issues." in p.stdout, p.stdout
    # it did check the filters (sigma check validates the rules with the filters applied):
    # a filter value that should use a modifier is an issue
    bad = tmp_path / "rules"
    bad.mkdir()
    (bad / RULE.name).write_text(RULE.read_text())
    hostname = REPO / "rules" / "examples" / "mf_allow_partner_hostname.yml"
    text = hostname.read_text()
    assert "RemoteUrl|endswith: .fabrikam.example" in text
    (bad / hostname.name).write_text(
        text.replace("RemoteUrl|endswith: .fabrikam.example", "RemoteUrl: '*.fabrikam.example'")
    )
    p = sigma_cli("check", "--fail-on-error", "--fail-on-issues", *skip, str(bad), home=tmp_path)
    assert p.returncode != 0 and "WildcardInsteadOfEndswithIssue" in p.stdout, p.stdout


def test_the_validators_left_out_are_only_those_that_need_the_network(tmp_path):
    """Each validator left out exists (a typo would skip nothing); every other one runs."""
    p = sigma_cli("list", "validators", home=tmp_path)
    assert p.returncode == 0, p.stderr
    for v in NEEDS_NETWORK:
        assert f"| {v} " in p.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_pysigma_applies_each_filter_to_the_rule(path):
    col = SigmaCollection.load_ruleset([RULE, path])
    rules = [r for r in col.rules if isinstance(r, SigmaRule)]
    assert len(rules) == 1 and len([r for r in col.rules if isinstance(r, SigmaCorrelationRule)]) == 1
    (cond,) = rules[0].detection.condition
    prefix = cond.split("(not ")[1].split("_selection")[0]
    assert cond == f"(selection) and (not {prefix}_selection)"
    ours = load_filters([path])[0]
    applied = rules[0].detection.detections[f"{prefix}_selection"].to_plain()
    assert applied == ours.selections["selection"]
    # the filter document itself, parsed with every error collected (sigma check reports
    # the rules a filter was applied to, not the filter's own parse errors)
    (flt,) = SigmaCollection.from_yaml(path.read_text(), collect_errors=True, collect_filters=True).filters
    assert isinstance(flt, SigmaFilter) and flt.errors == []
    assert str(flt.id) == ours.id and flt.name == ours.name and flt.title == ours.title
    assert flt.custom_attributes["reason"] == ours.reason
    assert flt.custom_attributes["expires"] == date.fromisoformat(str(ours.expires))
    # and the sensor applies the same filter to the same rule
    rs = load_rules(REPO / "rules", RECORD_FIELDS, filters=[path])
    assert [e.filter.id for e in rs.detections[0].filters] == [ours.id]
