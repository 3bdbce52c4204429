"""Hostile or broken local files (issue #13): every config and rules problem,
and an unusable --out, is one line on stderr naming the file (and the rule
and field) with exit 2, through the real CLI; never a traceback. Whatever
`check` refuses, `replay`, `rules list`, `rules test` and `run` refuse the
same way (one validation path)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.core.config import MAX_FILE_BYTES, MAX_SECONDS, MAX_YAML_DEPTH, MAX_YAML_NODES, Limits
from sensor.detect.detector import Detector
from sensor.detect.rules import MAX_CONDITION_DEPTH, MAX_CONDITION_TOKENS, MAX_TIMESPAN_S, load_rules
from sensor.detect.winstore import STATE_FILE, WindowPersistence
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import Link, Tcp, write_pcap

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pcaps" / "demo.pcap"
SENSOR = [sys.executable, "-m", "sensor"]
RID = "11111111-1111-4111-8111-111111111111"
HEAD = f"title: t\nid: {RID}\nlogsource: {{category: network_connection}}\n"
SIMPLE = HEAD + "detection: {sel: {RemotePort: 21}, condition: sel}\n"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        SENSOR + [str(a) for a in args],
        cwd=REPO,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def refused(p: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback, naming ``words``."""
    lines = p.stderr.splitlines()
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and lines[0].startswith("xfer-sensor: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def bomb(levels: int = 9) -> str:
    """Billion laughs: 9 ** levels strings from a few hundred bytes."""
    out = 'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        out += f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n"
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    f: dict[str, Path] = {}

    def put(name: str, data: str | bytes) -> None:
        p = d / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        f[name] = p

    put("nonutf8.yml", HEAD.encode() + b"description: caf\xe9\ndetection: {sel: {RemotePort: 21}, condition: sel}\n")
    put("nonutf8.yaml", b"device_name: caf\xe9\n")
    put("date.yml", HEAD + "date: 2026-13-45\ndetection: {sel: {RemotePort: 21}, condition: sel}\n")
    put(
        "expires.yml",
        SIMPLE + "---\ntitle: f\nid: 33333333-3333-4333-8333-333333333333\nlogsource: {category: network_connection}\n"
        f"filter: {{rules: [{RID}], f: {{RemoteIP: 192.0.2.1}}, condition: not f}}\n"
        "reason: partner\nexpires: 2026-13-45\n",
    )
    put("deep.yml", HEAD + "detection: {sel: {RemotePort: " + "[" * 100_000 + "]" * 100_000 + "}, condition: sel}\n")
    put("deep.yaml", "tracked_ports: " + "[" * 100_000 + "]" * 100_000 + "\n")
    put(
        "parens.yml",
        HEAD + 'detection: {sel: {RemotePort: 21}, condition: "' + "(" * 5000 + "sel" + ")" * 5000 + '"}\n',
    )
    put("nan.yaml", "timeouts: {tcp_established: .nan}\n")
    put("inf.yaml", "timeouts: {udp: .inf}\n")
    put("inf_interval.yaml", "status_interval: .inf\n")
    correlation = (
        "---\ntitle: c\nid: 22222222-2222-4222-8222-222222222222\ncorrelation: {type: event_count, "
        f"rules: [{RID}], group-by: [RemoteIP], timespan: TS, condition: {{gt: N}}}}\n"
    )
    put("timespan.yml", SIMPLE + correlation.replace("TS", "99999999999999999999d").replace("N", "3"))
    put("timespan_digits.yml", SIMPLE + correlation.replace("TS", "9" * 5000 + "d").replace("N", "3"))
    put("threshold.yml", SIMPLE + correlation.replace("TS", "24h").replace("N", "9" * 30))
    put("limits.yaml", "limits: {max_window_keys: 99999999999999999999999999}\n")
    put("limits_float.yaml", "limits: {flow_scan_interval: 1e300}\n")
    put("big.yaml", "#" * (MAX_FILE_BYTES + 1) + "\n")
    put("big.yml", "#" * (MAX_FILE_BYTES + 1) + "\n")
    put("bomb.yaml", bomb() + "device_name: *l8\n")
    put(
        "bomb.yml",
        HEAD + bomb().replace("l0: &l0", "x-l0: &l0") + "detection: {sel: {RemotePort: 21}, condition: sel}\n",
    )
    put("backref.yml", HEAD + "detection: {sel: {AppUser|re: '(a)\\1'}, condition: sel}\n")
    put("lookahead.yml", HEAD + "detection: {sel: {AppUser|re: 'adm(?=in)'}, condition: sel}\n")
    put("ok.yaml", "timeouts: {udp: 30}\n")
    return f


# -- each bad file: check, replay (and rules list / rules test for rules) ---------------
RULE_CASES = [
    ("nonutf8.yml", ["<file>", "not UTF-8"]),
    ("date.yml", [RID, "'date'", "2026-13-45"]),
    ("expires.yml", ["filter '33333333-3333-4333-8333-333333333333'", "'expires'", "2026-13-45"]),
    ("deep.yml", ["<yaml>", f"deeper than {MAX_YAML_DEPTH}"]),
    ("parens.yml", [RID, "detection.condition", str(MAX_CONDITION_TOKENS)]),
    ("timespan.yml", ["correlation.timespan", f"at most {MAX_TIMESPAN_S // 86400}d"]),
    ("timespan_digits.yml", ["correlation.timespan", "at most"]),
    ("threshold.yml", ["correlation.condition.gt"]),
    ("big.yml", ["<file>", f"larger than {MAX_FILE_BYTES} bytes"]),
    ("bomb.yml", ["<yaml>", f"more than {MAX_YAML_NODES} values"]),
    ("backref.yml", [RID, "detection.AppUser|re", "RE2", "invalid escape sequence"]),
    ("lookahead.yml", [RID, "detection.AppUser|re", "RE2", "(?="]),
]
CONFIG_CASES = [
    ("nonutf8.yaml", ["<file>", "not UTF-8"]),
    ("deep.yaml", ["<yaml>", f"deeper than {MAX_YAML_DEPTH}"]),
    ("nan.yaml", ["timeouts.tcp_established", "nan"]),
    ("inf.yaml", ["timeouts.udp", "inf", str(MAX_SECONDS)]),
    ("inf_interval.yaml", ["status_interval", "inf"]),
    ("limits.yaml", ["limits.max_window_keys", "99999999999999999999999999"]),
    ("limits_float.yaml", ["limits.flow_scan_interval"]),
    ("big.yaml", ["<file>", f"larger than {MAX_FILE_BYTES} bytes"]),
    ("bomb.yaml", ["<yaml>", f"more than {MAX_YAML_NODES} values"]),
]


@pytest.mark.parametrize("name,words", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_bad_rules_file_is_one_line_exit_2_everywhere(files, tmp_path, name, words):
    path = files[name]
    refused(cli("check", "--rules", path), str(path), *words)
    refused(cli("replay", DEMO, "--rules", path, "--out", tmp_path / "out"), str(path), *words)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    refused(cli("rules", "list", "--rules", path), str(path), *words)
    refused(cli("rules", "test", path, DEMO), str(path), *words)


@pytest.mark.parametrize("name,words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_file_is_one_line_exit_2_everywhere(files, tmp_path, name, words):
    path = files[name]
    refused(cli("check", "--config", path), str(path), *words)
    refused(cli("replay", DEMO, "--config", path, "--out", tmp_path / "out"), str(path), *words)
    assert not (tmp_path / "out").exists()
    refused(cli("rules", "test", REPO / "rules" / "t1071_002_file_transfer_protocols.yml", DEMO, "--config", path))


def test_daemon_refuses_a_bad_config_or_rule_at_start(files, tmp_path):
    """`run` validates the same way before it opens any capture (no interface is touched)."""
    common = ["run", "-i", "lo", "--mode", "span", "--allow-root", "--metrics-listen", "off"]
    common += ["--state-dir", tmp_path / "state", "--out", tmp_path / "out"]
    refused(cli(*common, "--config", files["nan.yaml"]), "timeouts.tcp_established")
    refused(cli(*common, "--rules", files["backref.yml"]), "RE2")
    refused(cli(*common, "--rules", files["bomb.yml"]), "more than")


# -- --out -------------------------------------------------------------------------------
def test_out_naming_an_existing_file_is_refused_before_reading(tmp_path):
    f = tmp_path / "taken"
    f.write_text("keep me\n")
    refused(cli("replay", DEMO, "--out", f), "--out", str(f), "not a folder")
    assert f.read_text() == "keep me\n"


def test_out_under_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    refused(cli("replay", DEMO, "--out", f / "sub" / "dir"), "--out", "cannot create")


def test_out_where_a_record_file_is_a_folder_is_refused(tmp_path):
    (tmp_path / "out" / "alerts.jsonl").mkdir(parents=True)
    refused(cli("replay", DEMO, "--out", tmp_path / "out"), "alerts.jsonl", "not a file")


def test_out_on_a_read_only_filesystem_is_refused():
    """/proc refuses a new folder even to root (what permissions cannot show here)."""
    refused(cli("replay", DEMO, "--out", "/proc/xfer-sensor-test/out"), "--out", "cannot create")


def test_daemon_refuses_an_unusable_out_at_start(tmp_path):
    f = tmp_path / "taken"
    f.write_text("")
    p = cli("run", "-i", "lo", "--mode", "span", "--allow-root", "--metrics-listen", "off", "--out", f)
    refused(p, "--out", "not a folder")


def test_a_good_config_still_replays(files, tmp_path):
    p = cli("replay", DEMO, "--config", files["ok.yaml"], "--out", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "connections.jsonl").stat().st_size > 0


# -- linear-time regular expressions -----------------------------------------------------
def _ftp_logins(path: Path, users: list[bytes]) -> Path:
    pkts = []
    for i, user in enumerate(users):
        c = Tcp("10.0.0.5", "203.0.113.10", 40000 + i, 21, 1_800_000_000.0 + 10 * i, Link(), 1000, 5000)
        c.handshake()
        c.s2c(b"220 ready\r\n")
        c.c2s(b"USER " + user + b"\r\n")
        c.s2c(b"331 password\r\n")
        c.c2s(b"PASS x\r\n")
        c.s2c(b"530 no\r\n")
        pkts += c.fin().pkts
    return write_pcap(path, pkts)


def test_catastrophic_regex_runs_in_linear_time_and_matches_correctly(tmp_path):
    """`^(a+)+$` backtracks 2^n on Python's engine for 'aaa...a!'; on RE2 it is
    linear. 1000 'a' then '!' must not match, 1000 'a' must; a user of
    100,000 'a' then '!' is cut by the FTP analyzer (max_arg_length) and the
    rule's verdict is the right one for what the record holds."""
    rule = tmp_path / "re.yml"
    rule.write_text(HEAD + "detection: {sel: {AppUser|re: '^(a+)+$'}, condition: sel}\n")
    pcap = _ftp_logins(tmp_path / "users.pcap", [b"a" * 1000 + b"!", b"a" * 1000, b"a" * 100_000 + b"!", b"bob"])
    p = cli("rules", "test", rule, pcap, "--format", "json", timeout=60)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["connections"] == 4
    matched = {e["Uid"] for e in doc["events"] if e["verdict"] == "matched"}
    out = tmp_path / "out"
    q = cli("replay", pcap, "--rules", rule, "--out", out, timeout=60)
    assert q.returncode == 0, q.stderr
    recs = {r["Uid"]: r for r in map(json.loads, (out / "connections.jsonl").read_text().splitlines())}
    users = {uid: r.get("AppUser") or "" for uid, r in recs.items()}
    # the reference verdict, computed without backtracking: a non-empty run of 'a' only
    expect = {uid for uid, u in users.items() if u and set(u) == {"a"}}
    assert matched == expect
    assert {len(users[u]) for u in expect} >= {1000}  # the 1000-'a' user matched
    assert any(u.startswith("a" * 1000 + "!") for u in users.values())  # ... the one with '!' did not
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    assert sorted(u for a in alerts for u in a["Uids"]) == sorted(expect)


def test_re2_and_wildcards_are_cheap_on_long_hostile_fields():
    """A field of 1,000,000 characters: |re, wildcards and contains finish fast (a
    backtracking engine or a regex translation of '*a*a*...' would not)."""
    import time

    from sensor.detect.rules import load_rule_docs

    doc = {
        "title": "t",
        "id": RID,
        "logsource": {"category": "network_connection"},
        "detection": {
            "r": {"AppUser|re": "^(a+)+$"},
            "w": {"AppUser": "*a*a*a*a*a*a*a*a*a*a*b"},
            "q": {"AppUser": "a?a?a?a?a*b?"},
            "c": {"AppUser|contains": "aab"},
            "condition": "r or w or q or c",
        },
    }
    rs = load_rule_docs([("t.yml", 0, doc)], RECORD_FIELDS, max_match_chars=10_000_000)
    rule = rs.detections[0]
    field = "a" * 1_000_000 + "!"
    t0 = time.perf_counter()
    v = rule.explain({"AppUser": field})
    assert not v.matched and v.selections == ()
    assert rule.explain({"AppUser": "a" * 1_000_000 + "b"}).selections == ("w", "c")
    assert rule.explain({"AppUser": "a" * 1_000_000}).selections == ("r",)
    assert time.perf_counter() - t0 < 5.0


def test_max_match_chars_bounds_what_re_and_wildcards_read():
    from sensor.detect.rules import load_rule_docs

    doc = {
        "title": "t",
        "id": RID,
        "logsource": {"category": "network_connection"},
        "detection": {"r": {"AppUser|re": "x$"}, "w": {"AppUser": "*x"}, "condition": "r or w"},
    }
    rule = load_rule_docs([("t.yml", 0, doc)], RECORD_FIELDS, max_match_chars=100).detections[0]
    assert rule.explain({"AppUser": "a" * 99 + "x"}).selections == ("r", "w")
    assert rule.explain({"AppUser": "a" * 100 + "x"}).selections == ()  # the x is past the cap


@pytest.mark.parametrize(
    "pattern,value,expect",
    [
        ("*.7z", "Q1-FINANCE.7Z", True),
        ("*.7z", "a.7z.txt", False),
        ("pay*20??*.xlsx", "payroll-2026-1.xlsx", True),
        ("pay*20??*.xlsx", "payroll-2x.xlsx", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),
        ("?", "", False),
        ("?", "é", True),
        ("*", "", True),
        ("**x**", "x", True),
        ("[ab]", "a", False),  # Sigma has no character classes: brackets are literal
        ("[ab]", "[AB]", True),
        ("c:\\windows\\sys*", "C:\\Windows\\System32", True),  # a backslash before a letter is literal
        ("c:\\windows\\*", "C:\\Windows\\System32", False),  # Sigma: \\* is a literal star
        ("c:\\windows\\*", "C:\\Windows*", True),
        ("a\\*b", "a*b", True),  # Sigma escape: a literal star
        ("a\\*b", "axb", False),
        ("a\\?", "a?", True),
        ("a\\?", "ab", False),
        ("a\\\\*", "a\\zzz", True),  # an escaped backslash, then a wildcard
    ],
)
def test_sigma_wildcards(pattern, value, expect):
    from sensor.detect.rules import load_rule_docs

    doc = {
        "title": "t",
        "id": RID,
        "logsource": {"category": "network_connection"},
        "detection": {"s": {"AppUser": pattern}, "condition": "s"},
    }
    rule = load_rule_docs([("t.yml", 0, doc)], RECORD_FIELDS).detections[0]
    assert rule.match({"AppUser": value}) is expect


def test_wildcards_agree_with_a_reference_regex():
    """Random patterns of a, b, * and ? against random strings: the glob
    matcher gives what an anchored regex (fine on these short inputs) gives."""
    import random
    import re

    from sensor.detect.rules import load_rule_docs

    rnd = random.Random(13)
    for _ in range(400):
        pat = "".join(rnd.choice("ab*?") for _ in range(rnd.randint(1, 7)))
        doc = {
            "title": "t",
            "id": RID,
            "logsource": {"category": "network_connection"},
            "detection": {"s": {"AppUser": pat}, "condition": "s"},
        }
        rule = load_rule_docs([("t.yml", 0, doc)], RECORD_FIELDS).detections[0]
        ref = re.compile("".join(".*" if c == "*" else "." if c == "?" else c for c in pat), re.S)
        for _ in range(10):
            v = "".join(rnd.choice("abAB") for _ in range(rnd.randint(0, 9)))
            assert rule.match({"AppUser": v}) is (ref.fullmatch(v.lower()) is not None), (pat, v)


def test_condition_nesting_is_bounded_not_recursive():
    from sensor.detect.rules import RuleError, load_rule_docs

    def doc(cond: str) -> dict:
        return {
            "title": "t",
            "id": RID,
            "logsource": {"category": "network_connection"},
            "detection": {"s": {"RemotePort": 21}, "condition": cond},
        }

    ok = "(" * MAX_CONDITION_DEPTH + "s" + ")" * MAX_CONDITION_DEPTH
    assert load_rule_docs([("t.yml", 0, doc(ok))], RECORD_FIELDS).detections[0].match({"RemotePort": 21})
    with pytest.raises(RuleError, match="nested deeper"):
        load_rule_docs([("t.yml", 0, doc("not " * (MAX_CONDITION_DEPTH + 1) + "s"))], RECORD_FIELDS)
    with pytest.raises(RuleError, match="words and parentheses"):
        load_rule_docs([("t.yml", 0, doc(" or ".join(["s"] * MAX_CONDITION_TOKENS)))], RECORD_FIELDS)


def test_re2_is_imported_only_when_a_rule_uses_re():
    code = (
        "import sys\n"
        "from sensor.detect.rules import load_rules\n"
        "from sensor.records.mde import RECORD_FIELDS\n"
        "load_rules('rules', RECORD_FIELDS)\n"
        "print('re2' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


# -- the window-state file is a file too ---------------------------------------------------
def test_hostile_window_state_rows_are_skipped_not_fatal(tmp_path, caplog):
    rules = load_rules(REPO / "rules", RECORD_FIELDS)
    det = Detector(rules, Limits())
    p = WindowPersistence.open(tmp_path, det, 2.0, 1000, wallclock=lambda: 1_800_000_000.0)
    rec = {
        "RemoteIP": "203.0.113.10",
        "RemotePort": 21,
        "RemoteIPType": "Public",
        "ActionType": "ConnectionSuccess",
        "DeviceName": "WS",
        "AccountName": "a",
        "Uid": "C1",
        "Timestamp": "-",
    }
    for i in range(6):
        det.observe(dict(rec, RemoteIP=f"203.0.113.{i}", Uid=f"C{i}"), 1_800_000_000 * 1_000_000)
    p.close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    bad = [
        '[[1e999, 1, 1, "u"]]',  # an infinite time
        '[[-5, 1, 1, "u"]]',  # before 1970
        '[[1, 99999999999999999999999, 1, "u"]]',  # bytes past int64
        "[" * 100_000 + "]" * 100_000,  # JSON nested too deep for the parser
        '{"a": 1}',
    ]
    keys = [k for (k,) in db.execute("SELECT key FROM keys ORDER BY seq")]
    for k, ev in zip(keys, bad):
        db.execute("UPDATE keys SET events = ? WHERE key = ?", (ev, k))
    db.execute(
        "UPDATE keys SET episode = ?, armed = 0 WHERE key = ?",
        (
            json.dumps(
                {
                    "ConnectionCount": 1,
                    "BytesSent": 1,
                    "BytesReceived": 1,
                    "FirstSeen": "x",
                    "LastSeen": "x",
                    "Uids": [[[[1]]]],
                }
            ),
            keys[-1],
        ),
    )
    db.commit()
    db.close()
    det2 = Detector(rules, Limits())
    with caplog.at_level(logging.INFO, logger="xfer-sensor"):
        p2 = WindowPersistence.open(tmp_path, det2, 2.0, 1000, wallclock=lambda: 1_800_000_000.0)
    assert p2.restored == 0 and "6 unreadable" in caplog.text
    det2.observe(rec, 1_800_000_000 * 1_000_000)  # the detector works on
    p2.close()


def test_window_store_flush_survives_a_value_sqlite_cannot_hold(tmp_path, caplog):
    rules = load_rules(REPO / "rules", RECORD_FIELDS)
    det = Detector(rules, Limits())
    p = WindowPersistence.open(tmp_path, det, 2.0, 1000, wallclock=lambda: 1_800_000_000.0)
    # a pcapng timestamp may be any 64-bit number: past SQLite's signed 64 bits
    rec = {"RemoteIP": "203.0.113.1", "RemotePort": 21, "RemoteIPType": "Public", "ActionType": "ConnectionSuccess"}
    det.observe(dict(rec, Uid="C1"), (1 << 63) + 5)
    with caplog.at_level(logging.ERROR, logger="xfer-sensor"):
        p.flush()  # logged, kept in memory, no exception
    assert "write failed" in caplog.text
    p.store = None  # nothing more to write


# -- any value in any field: the loaders' own error, nothing else ----------------------------
def _random_value(rnd, depth: int = 0):
    pool = [
        None,
        True,
        0,
        -1,
        1 << 70,
        float("nan"),
        float("inf"),
        -0.0,
        1e300,
        "",
        "x" * 5000,
        "2026-13-45",
        "9999-12-31",
        "24h",
        "1.2.3.4/99",
        "udp",
        "\udcff",
        "(a)\\1",
        "*?*",
    ]
    if depth < 3 and rnd.random() < 0.3:
        if rnd.random() < 0.5:
            return [_random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
        return {rnd.choice(["a", "gt", "reason", "expires", 1]): _random_value(rnd, depth + 1) for _ in range(2)}
    return rnd.choice(pool)


def test_any_value_in_any_field_is_a_named_error_or_accepted():
    """Every config key and section option, every rule key, correlation key and
    allow-entry key, with hostile values: ConfigError / RuleError or a value
    that loads, never another exception."""
    import dataclasses
    import random

    from sensor.core.config import ConfigError, Output, SyslogOutput, Timeouts, config_from_dict
    from sensor.detect.rules import RuleError, load_rule_docs

    rnd = random.Random(1313)
    top = [
        "tracked_ports",
        "home_net",
        "ip_type_overrides",
        "inventory",
        "device_name",
        "hostnames",
        "metrics_listen",
        "status_interval",
        "state_dir",
        "state_flush_interval",
    ]
    sections = {
        "timeouts": [f.name for f in dataclasses.fields(Timeouts)],
        "limits": [f.name for f in dataclasses.fields(Limits)],
        "output": [f.name for f in dataclasses.fields(Output) if f.name != "syslog"],
    }
    syslog = [f.name for f in dataclasses.fields(SyslogOutput)]
    for _ in range(3000):
        k = rnd.choice(top + list(sections) + ["output.syslog"])
        if k in sections:
            raw = {k: {rnd.choice(sections[k]): _random_value(rnd)}}
        elif k == "output.syslog":
            raw = {"output": {"syslog": {rnd.choice(syslog): _random_value(rnd)}}}
        else:
            raw = {k: _random_value(rnd)}
        try:
            config_from_dict(raw, "c.yaml")
        except ConfigError as e:
            assert "\n" not in str(e)
    base = {
        "title": "t",
        "id": RID,
        "logsource": {"category": "network_connection"},
        "detection": {"sel": {"RemotePort": 21}, "f": {"RemoteIP": "192.0.2.1"}, "condition": "sel and not f"},
    }
    flt = {
        "title": "f",
        "id": "f-1",
        "logsource": {"category": "network_connection"},
        "filter": {"rules": [RID], "f": {"RemoteIP": "192.0.2.1"}, "condition": "not f"},
        "reason": "r",
        "expires": "2030-01-01",
    }
    cor = {
        "title": "c",
        "id": "c",
        "correlation": {
            "type": "event_count",
            "rules": [RID],
            "group-by": ["RemoteIP"],
            "timespan": "24h",
            "condition": {"gt": 3},
        },
    }
    paths = [
        ("title",),
        ("id",),
        ("name",),
        ("level",),
        ("tags",),
        ("date",),
        ("description",),
        ("references",),
        ("author",),
        ("logsource",),
        ("detection",),
        ("detection", "sel"),
        ("detection", "sel", "RemotePort"),
        ("detection", "sel", "AppUser|re"),
        ("detection", "sel", "AppUser|contains"),
        ("detection", "sel", "RemoteIP|cidr"),
        ("detection", "sel", "SentBytes|gt"),
        ("detection", "condition"),
    ]
    fpaths = [
        ("title",),
        ("id",),
        ("logsource",),
        ("filter",),
        ("filter", "rules"),
        ("filter", "f"),
        ("filter", "f", "RemoteIP"),
        ("filter", "condition"),
        ("expires",),
        ("reason",),
    ]
    cpaths = [("correlation", k) for k in ("type", "rules", "group-by", "timespan", "condition", "generate")]
    cpaths.append(("correlation", "condition", "gt"))
    for _ in range(3000):
        det, c, f = json.loads(json.dumps(base)), json.loads(json.dumps(cor)), json.loads(json.dumps(flt))
        which = rnd.random()
        doc, path = (
            (det, rnd.choice(paths))
            if which < 0.5
            else (f, rnd.choice(fpaths))
            if which < 0.75
            else (c, rnd.choice(cpaths))
        )
        node = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = _random_value(rnd)
        try:
            rs = load_rule_docs([("r.yml", 0, det), ("r.yml", 1, c), ("f.yml", 0, f)], RECORD_FIELDS)
        except RuleError as e:
            assert "\n" not in str(e)
            continue
        for d in rs.detections:  # what loaded also matches without an exception
            rec = {"RemotePort": 21, "AppUser": "\udcff" + "a" * 10, "RemoteIP": "192.0.2.1", "SentBytes": 5}
            d.explain(rec)
            d.match(rec)
