"""Metrics: the Prometheus text exposition (parsed back with a strict parser),
the loopback-only endpoint that serves only published snapshots, the
options, the journal summary, and a real daemon on loopback scraped over
HTTP after traffic. Traffic only on 127.0.0.0/8 (server 127.0.0.4:2123)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from sensor.core.config import ConfigError, config_from_dict, load_config
from sensor.io import metrics
from sensor.io.live import IfaceStats
from tests.support.loopback_ftp import DaemonProcess, banner_server, login_sessions, records_of
from tests.support.loopback_ftp import wait_for as _wait_for

REPO = Path(__file__).resolve().parent.parent
SERVER = "127.0.0.4"
PORT = 0  # set by the ftp_server fixture: a free port (a fixed one may be held by another run)
REFUSED_PORT = 2124  # tracked, nobody listens: ConnectionFailed

# -- a strict parser of the text format 0.0.4 ---------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)$")
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_exposition(text: str) -> tuple[dict, dict]:
    """-> ({(name, ((label, value), ...)): float}, {name: type}); raises
    AssertionError on anything the format does not allow."""
    assert text.endswith("\n") and "\r" not in text, "lines end with \\n"
    samples: dict = {}
    types: dict = {}
    helps: set = set()
    current = None
    for ln in text[:-1].split("\n"):
        assert ln, "no blank lines"
        if ln.startswith("# HELP "):
            name, _, _help = ln[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in helps, ln
            helps.add(name)
            current = None
            continue
        if ln.startswith("# TYPE "):
            name, _, kind = ln[7:].partition(" ")
            assert name in helps and name not in types, f"TYPE after its HELP, once: {ln}"
            assert kind in ("counter", "gauge"), ln
            assert kind != "counter" or name.endswith("_total"), f"counter names end in _total: {name}"
            assert name.startswith("xfer_sensor_"), name
            types[name] = kind
            current = name
            continue
        assert not ln.startswith("#"), ln
        m = _SAMPLE.match(ln)
        assert m, f"not a sample line: {ln!r}"
        name, labels_s, value = m.group(1), m.group(2), m.group(m.lastindex)
        assert name == current, f"sample {name} outside its family ({current})"
        labels = []
        if labels_s:
            for lm in re.finditer(_LABEL, labels_s):
                labels.append((lm.group(1), re.sub(r'\\\\|\\"|\\n', lambda x: _UNESCAPE[x.group(0)], lm.group(2))))
            assert ",".join(f'{k}="{v}"' for k, v in re.findall(_LABEL, labels_s)) == labels_s, ln
            assert len({k for k, _ in labels}) == len(labels), f"duplicate label: {ln}"
        v = float(value)
        if types[name] == "counter":
            assert v >= 0, ln
        key = (name, tuple(sorted(labels)))
        assert key not in samples, f"duplicate series: {ln}"
        samples[key] = v
    return samples, types


def val(samples: dict, metric: str, **labels) -> float:
    return samples[("xfer_sensor_" + metric, tuple(sorted(labels.items())))]


def family(samples: dict, metric: str) -> dict:
    return {k[1]: v for k, v in samples.items() if k[0] == "xfer_sensor_" + metric}


class _Allow:
    def __init__(self, rule_id, name, hits):
        self.rule_id, self.name, self.hits, self.expired_hits = rule_id, name, hits, 0


def _snap(**over):
    pipe = {
        "decoder": {"packets": 900, "truncated": 3, "malformed": 2, "unknown_linktype": 1},
        "flows": {"created": 40, "ended": 35, "evicted": 7, "expired": 20, "active_max": 12},
        "connections": {"ConnectionSuccess": 30, "ConnectionFailed": 4, "InboundConnectionAccepted": 1},
        "detect": {"alerts": 2, "suppressed": 5, "matched": 31, "keys_evicted": 0},
        "weird": {'odd "name"\\x\n': 4, "tcp_seq_jump": 1},
    }
    pipe.update(over)
    cap = {
        "lo": IfaceStats("lo", received=1000, kernel_received=1010, kernel_dropped=10, interface_dropped=0),
        "eth0": IfaceStats("eth0", received=5, kernel_received=5, kernel_dropped=0, interface_dropped=3),
    }
    return metrics.collect(
        pipe_stats=pipe,
        capture_stats=cap,
        flows_active=5,
        allow_entries=[_Allow("r1", "allow_backup", 6), _Allow("r2", "allow_x", 0)],
        allow_base={("r1", "allow_backup"): (4, 0)},
        outputs={
            "records": {"connections": 35, "alerts": 2},
            "sinks": {"files:/x": {"dropped_overflow": 9, "dropped_error": 0}},
        },
        start_time=1700000000.0,
    )


# -- rendering ------------------------------------------------------------------------------------


def test_render_parses_back_with_every_figure():
    s, types = parse_exposition(metrics.render(_snap()))
    assert val(s, "packets_received_total", interface="lo") == 1000
    assert val(s, "packets_kernel_received_total", interface="lo") == 1010
    assert val(s, "packets_dropped_total", interface="lo", by="kernel") == 10
    assert val(s, "packets_dropped_total", interface="eth0", by="interface") == 3
    assert val(s, "decode_errors_total", kind="truncated") == 3
    assert val(s, "decode_errors_total", kind="malformed") == 2
    assert val(s, "packets_decoded_total") == 900
    assert val(s, "flows_active") == 5 and types["xfer_sensor_flows_active"] == "gauge"
    assert val(s, "flows_evicted_total") == 7
    assert val(s, "connections_total", action_type="ConnectionSuccess") == 30
    assert val(s, "connections_total", action_type="ConnectionFailed") == 4
    assert val(s, "alerts_total") == 2
    # allow filters: the running rules' hits plus those of rules a reload replaced
    assert val(s, "alerts_suppressed_total", reason="allow_entry") == 10
    assert val(s, "alerts_suppressed_total", reason="already_raised") == 5
    assert val(s, "allow_entry_suppressed_total", rule="r1", filter="allow_backup") == 10
    assert val(s, "output_dropped_total", sink="files:/x", reason="overflow") == 9
    assert val(s, "records_emitted_total", kind="connections") == 35
    assert val(s, "start_time_seconds") == 1700000000.0
    # label values with quotes, backslashes and newlines survive
    assert val(s, "weird_total", name='odd "name"\\x\n') == 4
    assert all(t == "counter" for n, t in types.items() if n.endswith("_total"))


def test_attribution_rendered_when_present_and_zero_otherwise():
    s, _ = parse_exposition(metrics.render(_snap()))
    for src in ("socket", "uid-only", "linked-control-connection", "none"):
        assert val(s, "attributions_total", source=src) == 0
    assert val(s, "attribution_misses_total") == 0
    snap = _snap(
        attribution={"by_source": {"socket": 12, "uid-only": 3, "none": 1, "linked-control-connection": 2}, "misses": 4}
    )
    s, _ = parse_exposition(metrics.render(snap))
    assert val(s, "attributions_total", source="socket") == 12
    assert val(s, "attributions_total", source="uid-only") == 3
    assert val(s, "attributions_total", source="linked-control-connection") == 2
    assert val(s, "attribution_misses_total") == 4
    assert "socket=12" in metrics.summary(snap) and "misses 4" in metrics.summary(snap)


def test_the_strict_parser_rejects_what_the_format_does_not_allow():
    good = "# HELP xfer_sensor_a_total a\n# TYPE xfer_sensor_a_total counter\nxfer_sensor_a_total 1\n"
    parse_exposition(good)
    for bad in (
        good[:-1],  # no final newline
        good.replace("a_total counter", "a_total histogram"),  # unknown type here
        good + "xfer_sensor_a_total 2\n",  # duplicate series
        good.replace(" 1\n", ' {x="1"} 1\n'),  # stray space
        good.replace("xfer_sensor_a_total 1", 'xfer_sensor_a_total{x="a"b"} 1'),
        "# TYPE xfer_sensor_b gauge\nxfer_sensor_b 1\n",  # TYPE without HELP
        "# HELP xfer_sensor_b b\n# TYPE xfer_sensor_b counter\nxfer_sensor_b 1\n",
    ):  # counter w/o _total
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def test_snapshot_is_read_only():
    snap = _snap()
    with pytest.raises(TypeError):
        snap["flows"]["active"] = 1
    with pytest.raises(TypeError):
        snap["connections"]["ConnectionSuccess"] = 0


def test_summary_line_carries_the_figures():
    line = metrics.summary(_snap())
    for part in (
        "packets 1005 (dropped kernel 10, interface 3)",
        "decode errors 6",
        "flows active 5 (evicted 7)",
        "connections 35 (ConnectionFailed=4 ConnectionSuccess=30 InboundConnectionAccepted=1)",
        "alerts 2 (suppressed allow 10, already raised 5)",
        "socket=0",
        "misses 0",
    ):
        assert part in line, (part, line)
    assert "\n" not in line


# -- the endpoint ------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def test_server_serves_only_published_snapshots_and_404_elsewhere():
    srv = metrics.MetricsServer("127.0.0.1", 0).start()
    try:
        assert get(srv.url)[0] == 503  # nothing published yet
        srv.publish(_snap())
        code, ctype, body = get(srv.url)
        assert code == 200 and ctype == metrics.CONTENT_TYPE
        assert val(parse_exposition(body)[0], "alerts_total") == 2
        srv.publish(_snap(detect={"alerts": 9, "suppressed": 0}))
        assert val(parse_exposition(get(srv.url)[2])[0], "alerts_total") == 9
        assert get(srv.url.replace("/metrics", "/"))[0] == 404
        assert get(srv.url.replace("/metrics", "/metricsx"))[0] == 404
        req = urllib.request.Request(srv.url, data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=5)
        assert ei.value.code == 501
    finally:
        srv.close()


@pytest.mark.parametrize("addr", ["0.0.0.0", "10.1.2.3", "::"])
def test_server_never_binds_off_loopback(addr):
    with pytest.raises(metrics.MetricsError):
        metrics.MetricsServer(addr, 0)


# -- options -------------------------------------------------------------------------------------------


def test_metrics_listen_and_status_interval_options(tmp_path):
    assert config_from_dict({}).metrics_listen is None
    assert config_from_dict({}).status_interval == 300.0
    assert config_from_dict({"metrics_listen": "127.0.0.1:9617"}).metrics_listen == ("127.0.0.1", 9617)
    assert config_from_dict({"metrics_listen": "localhost:9617"}).metrics_listen == ("127.0.0.1", 9617)
    assert config_from_dict({"metrics_listen": "[::1]:9617"}).metrics_listen == ("::1", 9617)
    assert config_from_dict({"metrics_listen": "127.9.8.7:80"}).metrics_listen == ("127.9.8.7", 80)
    assert config_from_dict({"metrics_listen": "off"}).metrics_listen is None
    assert config_from_dict({"status_interval": 60}).status_interval == 60.0
    for bad, words in (
        ("0.0.0.0:9617", "non-loopback"),
        ("192.168.1.5:9617", "non-loopback"),
        ("[::]:9617", "non-loopback"),
        ("example.com:9617", "loopback IP literal"),
        ("127.0.0.1", "ADDRESS:PORT"),
        ("127.0.0.1:0", "port"),
        ("127.0.0.1:70000", "port"),
        (9617, "ADDRESS:PORT"),
    ):
        f = tmp_path / "c.yaml"
        f.write_text(f"metrics_listen: {json.dumps(bad)}\n")
        with pytest.raises(ConfigError) as ei:
            load_config(f)
        assert str(f) in str(ei.value) and "'metrics_listen'" in str(ei.value) and words in str(ei.value), ei.value
    for bad in (0, -1, "5", True):
        with pytest.raises(ConfigError, match="status_interval"):
            config_from_dict({"status_interval": bad}, "c.yaml")
    with pytest.raises(ConfigError, match="metrics_port"):
        config_from_dict({"metrics_port": 9617}, "c.yaml")


def test_run_refuses_a_non_loopback_metrics_address(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor",
            "run",
            "-i",
            "lo",
            "--allow-root",
            "--out",
            str(tmp_path),
            "--metrics-listen",
            "0.0.0.0:9617",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "--metrics-listen" in r.stderr and "non-loopback" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    cfg = tmp_path / "config.yaml"
    cfg.write_text("metrics_listen: 0.0.0.0:9617\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor",
            "run",
            "-i",
            "lo",
            "--allow-root",
            "--out",
            str(tmp_path),
            "--config",
            str(cfg),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and str(cfg) in r.stderr and "'metrics_listen'" in r.stderr, r.stderr


# -- a real daemon, scraped over HTTP --------------------------------------------------------------------


@pytest.fixture
def ftp_server():
    global PORT
    with banner_server(SERVER) as PORT:
        yield


def sessions(n: int, user: str) -> None:
    login_sessions(SERVER, PORT, n, user)


def refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    with s, pytest.raises(ConnectionRefusedError):
        s.connect((SERVER, REFUSED_PORT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path: Path) -> list[dict]:
    return records_of(path)


def wait_for(cond, timeout=60.0, what=""):
    _wait_for(cond, timeout, what)


@pytest.mark.root
def test_daemon_serves_metrics_matching_its_records(tmp_path, ftp_server):
    assert os.geteuid() == 0, "the daemon tests run as root (scripts/test.sh)"
    out, rules, cfg = tmp_path / "out", tmp_path / "rules", tmp_path / "config.yaml"
    rules.mkdir()
    for f in (REPO / "rules").glob("*.yml"):
        (rules / f.name).write_text(f.read_text())
    r = rules / "t1071_002_file_transfer_protocols.yml"
    r.write_text(r.read_text().replace("      - 20\n", f"      - {PORT}\n      - 20\n"))
    mport = free_port()
    cfg.write_text(
        f"tracked_ports: [{PORT}, {REFUSED_PORT}]\nhome_net: [127.0.0.1/32]\n"
        f"ip_type_overrides: {{'{SERVER}/32': Public}}\n"
        "timeouts: {tcp_closed: 0.3, tcp_attempt: 2}\nlimits: {flow_scan_interval: 0.1}\n"
        "status_interval: 1\n"
    )
    d = DaemonProcess(
        [
            sys.executable,
            "-m",
            "sensor",
            "run",
            "-i",
            "lo",
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--state-dir",
            str(tmp_path / "state"),
            "--rules",
            str(rules),
            "--allow-root",
            "--metrics-listen",
            f"127.0.0.1:{mport}",
            "--mode",
            "span",
        ],  # the account is the login: alice and bob are two keys
        REPO,
        timeout=15.0,
    )
    p = d.p

    def stderr() -> str:
        return d.err().decode(errors="replace")

    url = f"http://127.0.0.1:{mport}/metrics"
    try:
        assert f"metrics on {url}" in stderr()
        sessions(5, "alice")  # 4 cross the threshold: one alert; the 5th joins it (already raised)
        refused()  # ConnectionFailed
        sessions(1, "bob")
        conns_path = out / "connections.jsonl"
        wait_for(lambda: len(read(conns_path)) == 7, what="7 connection records")
        wait_for(lambda: len(read(out / "alerts.jsonl")) == 1, what="the alert")
        recs = read(conns_path)
        by_action = Counter(r["ActionType"] for r in recs)
        assert by_action == {"ConnectionSuccess": 6, "ConnectionFailed": 1}, by_action

        def scraped():
            code, ctype, body = get(url)
            assert code == 200 and ctype == metrics.CONTENT_TYPE, (code, ctype)
            return parse_exposition(body)[0]

        # the snapshot is published every second: wait for it to catch up with the records
        wait_for(lambda: sum(family(scraped(), "connections_total").values()) == len(recs), what="the snapshot")
        s = scraped()
        for action, n in by_action.items():
            assert val(s, "connections_total", action_type=action) == n
        assert sum(family(s, "connections_total").values()) == len(recs)
        assert val(s, "alerts_total") == len(read(out / "alerts.jsonl")) == 1
        assert val(s, "alerts_suppressed_total", reason="already_raised") == 1
        assert val(s, "records_emitted_total", kind="connections") == len(recs)
        pkts = sum(r["SentPackets"] + r["ReceivedPackets"] for r in recs)
        assert val(s, "packets_received_total", interface="lo") >= pkts > 0
        assert val(s, "packets_kernel_received_total", interface="lo") >= pkts
        assert val(s, "packets_dropped_total", interface="lo", by="kernel") == 0
        assert val(s, "flows_created_total") >= len(recs)
        assert val(s, "flows_active") >= 0 and val(s, "flows_evicted_total") == 0
        for src in ("socket", "uid-only", "linked-control-connection", "none"):
            assert ("xfer_sensor_attributions_total", (("source", src),)) in s
        assert get(url.replace("/metrics", "/status"))[0] == 404

        # the journal carries the same figures every status_interval
        wait_for(
            lambda: "connections 7 (ConnectionFailed=1 ConnectionSuccess=6), alerts 1 " in stderr(),
            what="a status line with the figures",
        )
        line = next(ln for ln in stderr().splitlines() if "connections 7 (" in ln)
        assert re.search(r"packets [1-9]\d* \(dropped kernel 0, interface \d+\)", line), line
        assert "already raised 1" in line and "flows active" in line and "misses 0" in line, line

        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert re.search(r"stopped: packets [1-9]", stderr()), stderr()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.root
def test_run_exits_cleanly_when_the_metrics_port_is_taken(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "sensor",
                "run",
                "-i",
                "lo",
                "--allow-root",
                "--out",
                str(tmp_path),
                "--state-dir",
                str(tmp_path / "state"),
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_published_snapshot_does_not_follow_the_live_counters():
    """The HTTP thread renders the snapshot, never the pipeline's objects: a
    counter that moves after publish() shows only at the next publish()."""
    pipe = {"connections": {"ConnectionSuccess": 1}, "detect": {"alerts": 1}}
    cap = {"lo": IfaceStats("lo", received=10)}
    srv = metrics.MetricsServer("127.0.0.1", 0).start()
    try:
        srv.publish(metrics.collect(pipe_stats=pipe, capture_stats=cap, flows_active=1))
        pipe["connections"]["ConnectionSuccess"] = 50
        pipe["detect"]["alerts"] = 7
        cap["lo"].received = 999
        s, _ = parse_exposition(get(srv.url)[2])
        assert val(s, "connections_total", action_type="ConnectionSuccess") == 1
        assert val(s, "alerts_total") == 1 and val(s, "packets_received_total", interface="lo") == 10
        srv.publish(metrics.collect(pipe_stats=pipe, capture_stats=cap, flows_active=1))
        s, _ = parse_exposition(get(srv.url)[2])
        assert val(s, "connections_total", action_type="ConnectionSuccess") == 50
        assert val(s, "packets_received_total", interface="lo") == 999
    finally:
        srv.close()
