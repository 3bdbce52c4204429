"""Syslog (RFC 5424 over UDP and TCP with octet counting) into a real rsyslogd.

The test starts its own rsyslogd on 127.0.0.1 with its own config, pid file and
work folder in tmp_path (never the system's), reads the records back from the
file rsyslog writes, and checks that every record arrived exactly once, intact.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from sensor.core.config import Output, SyslogOutput, config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.sinks import build_outputs
from sensor.records.encode import KINDS
from sensor.records.mde import RECORD_FIELDS

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pcaps" / "demo.pcap"
DEMO_CFG = REPO / "pcaps" / "demo.yaml"
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

CONF = """
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="fields" type="string"
         string="%pri%|%app-name%|%procid%|%msgid%|%timereported:::date-rfc3339%|%msg%\\n")
ruleset(name="xfer") {{
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="xfer" rcvbufSize="8m")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="xfer")
"""


def free_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Rsyslog:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "rsyslog"
        self.dir.mkdir()
        self.out = self.dir / "received.log"
        self.udp, self.tcp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        conf = self.dir / "rsyslog.conf"
        conf.write_text(CONF.format(work=self.dir, out=self.out, udp=self.udp, tcp=self.tcp))
        self.pidfile = self.dir / "rsyslogd.pid"
        self.log = open(self.dir / "rsyslogd.stderr", "wb")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.pidfile)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Probe both inputs until rsyslog has written both probes."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "rsyslogd.stderr").read_text()
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.sendto(f"<134>1 - probe probe - probe - udp-{token}".encode(), ("127.0.0.1", self.udp))
                u.close()
                t = socket.create_connection(("127.0.0.1", self.tcp), timeout=1)
                m = f"<134>1 - probe probe - probe - tcp-{token}".encode()
                t.sendall(b"%d " % len(m) + m)
                t.close()
            except OSError:
                pass
            time.sleep(0.2)
            text = self.out.read_text() if self.out.exists() else ""
            if f"udp-{token}" in text and f"tcp-{token}" in text:
                return
        raise AssertionError("rsyslogd did not come up: " + (self.dir / "rsyslogd.stderr").read_text())

    def records(self) -> list[tuple[str, ...]]:
        """(pri, app, procid, msgid, timestamp, msg) of every non-probe line."""
        out = []
        for line in self.out.read_text().splitlines():
            parts = tuple(line.split("|", 5))
            if parts[1] != "probe":
                out.append(parts)
        return out

    def wait_for(self, n: int, timeout: float = 60.0) -> list[tuple[str, ...]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if len(recs) >= n or time.monotonic() > deadline:
                time.sleep(0.3)  # anything beyond n (duplicates) would show up too
                return self.records()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def rsyslog(tmp_path):
    r = Rsyslog(tmp_path)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory) -> list[tuple[str, dict]]:
    """The demo capture's records (all kinds), five distinct copies of each (year and Uid changed)."""
    from sensor.io.capture import read_file
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline

    cfg = config_from_dict(yaml.safe_load(DEMO_CFG.read_text()))
    sink = MemorySink()
    pipe = Pipeline(cfg, load_rules(REPO / "rules", RECORD_FIELDS), sink)
    read_file(DEMO, pipe.handler_for, pipe.capture_filters(), pipe.refilter)
    pipe.finish()
    out = []
    for i in range(5):
        for k in KINDS:
            for r in sink.records[k]:
                ts = str(r["Timestamp"])
                out.append((k, dict(r, Uid=f"{r.get('Uid', '')}-{i}", Timestamp=str(int(ts[:4]) + i) + ts[4:])))
    return out


def _send(rsyslog: Rsyslog, protocol: str, profile: str, records) -> dict:
    port = rsyslog.udp if protocol == "udp" else rsyslog.tcp
    sl = SyslogOutput(host="127.0.0.1", port=port, protocol=protocol, facility=16, hostname="sensor-1")
    cfg = config_from_dict(yaml.safe_load(DEMO_CFG.read_text()))
    outputs = build_outputs(Output(profile=profile), config=cfg, syslog=sl, block=True)
    sent = collections.Counter()
    for kind, rec in records:
        outputs.emit(kind, rec)
        sent[(kind, outputs.encoder.encode(kind, rec).decode().rstrip("\n"))] += 1
    outputs.close()
    return {"sent": sent, "stats": outputs.stats()}


@pytest.mark.parametrize("protocol,profile", [("udp", "mde"), ("tcp", "ecs")])
def test_every_record_arrives_once_intact(rsyslog, demo_records, protocol, profile):
    res = _send(rsyslog, protocol, profile, demo_records)
    n = len(demo_records)
    assert n == 5 * 70
    st = next(iter(res["stats"]["sinks"].values()))
    assert st["written"] == n and st["dropped_error"] == 0 and st["dropped_overflow"] == 0
    got = rsyslog.wait_for(n)
    assert len(got) == n, f"{len(got)} of {n} records arrived"
    received = collections.Counter()
    for pri, app, procid, msgid, _ts, msg in got:
        doc = json.loads(msg)  # intact: parses, and is byte-identical to what was sent
        received[(msgid, msg)] += 1
        assert app == "xfer-sensor" and procid == str(os.getpid())
        assert msgid in KINDS
        level = doc.get("Level") or doc.get("xfer", {}).get("alert", {}).get("level")
        expect_sev = {"connections": 6, "transfers": 6, "weird": 5}.get(msgid) or {
            "low": 5,
            "medium": 4,
            "high": 3,
            "critical": 2,
        }[level]
        assert int(pri) == 16 * 8 + expect_sev
    assert received == res["sent"]
    assert all(c == 1 for c in received.values())


def test_replay_to_rsyslog_over_tcp_matches_the_files(rsyslog, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensor",
            "replay",
            str(DEMO),
            "--config",
            str(DEMO_CFG),
            "--out",
            str(out),
            "--profile",
            "ecs",
            "--syslog",
            f"127.0.0.1:{rsyslog.tcp}",
            "--syslog-protocol",
            "tcp",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    files = collections.Counter()
    for k in KINDS:
        for line in (out / f"{k}.jsonl").read_text().splitlines():
            files[(k, line)] += 1
    got = rsyslog.wait_for(sum(files.values()))
    assert collections.Counter((r[3], r[5]) for r in got) == files
    # RFC 5424 TIMESTAMP is the record's own time
    assert {r[4] for r in got} <= {json.loads(r[5])["@timestamp"] for r in got}


def test_syslog_message_format_octet_counting():
    """The exact bytes on a TCP connection: LEN SP <PRI>1 TS HOST APP PROCID MSGID - MSG."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    sl = SyslogOutput(
        host="127.0.0.1", port=srv.getsockname()[1], protocol="tcp", facility=3, app_name="xs", hostname="h1"
    )
    outputs = build_outputs(Output(), syslog=sl)
    rec = {"Timestamp": "2026-11-27T01:00:00.000000Z", "RuleId": "r", "Level": "critical", "Uids": ["C1"]}
    outputs.emit("alerts", rec)
    conn, _ = srv.accept()
    outputs.close()
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    srv.close()
    length, _, rest = data.partition(b" ")
    assert int(length) == len(rest)
    body = json.dumps({**rec, "RecordKind": "alerts"}, separators=(",", ":")).encode()  # mde: the kind, last
    assert rest == b"<26>1 2026-11-27T01:00:00.000000Z h1 xs %d alerts - " % os.getpid() + body
