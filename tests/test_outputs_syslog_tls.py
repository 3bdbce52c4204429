"""Syslog over TLS (RFC 5425) into a real rsyslogd with its openssl stream driver.

The test makes a throwaway PKI with the ``openssl`` CLI (a CA, the collector's
certificate for 127.0.0.1, a client certificate for the sensor, and a second,
unrelated CA), starts its own rsyslogd on 127.0.0.1 with a config, pid file and
work folder in tmp_path (TLS only, ``StreamDriver.Mode=1``, ``AuthMode
x509/name``: the sensor's client certificate is required and its name checked),
and reads back the file rsyslog writes.
"""

from __future__ import annotations

import collections
import json
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from sensor.core.config import ConfigError, Output, SyslogOutput, config_from_dict
from sensor.io.sinks import SyslogWriter, build_outputs
from sensor.records.encode import KINDS
from tests.support.syslog import octet_frames

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pcaps" / "demo.pcap"
DEMO_CFG = REPO / "pcaps" / "demo.yaml"
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
OSSL_DRIVER = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so")
CLIENT_NAME = "sensor-1.test"

CONF = """
global(workDirectory="{work}" maxMessageSize="64k"
       DefaultNetstreamDriver="ossl"
       DefaultNetstreamDriverCAFile="{pki}/ca.pem"
       DefaultNetstreamDriverCertFile="{pki}/server.pem"
       DefaultNetstreamDriverKeyFile="{pki}/server.key")
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
       PermittedPeer=["{client}"])
template(name="fields" type="string"
         string="%pri%|%app-name%|%procid%|%msgid%|%timereported:::date-rfc3339%|%msg%\\n")
ruleset(name="xfer") {{
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="xfer")
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=xfer-sensor test {name}",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem; server.pem/.key (127.0.0.1, localhost); client.pem/.key (CLIENT_NAME);
    other-ca.pem, a CA that signed none of them."""
    assert shutil.which("openssl"), "openssl is missing: scripts/deps.sh installs it"
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(
        d,
        "server",
        "ca",
        "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    _leaf(
        d,
        "client",
        "ca",
        CLIENT_NAME,
        f"subjectAltName=DNS:{CLIENT_NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    return d


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def client_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return ctx


class RsyslogTLS:
    """rsyslogd listening with TLS only on 127.0.0.1:``port``."""

    def __init__(self, tmp: Path, pki: Path, port: int | None = None) -> None:
        assert OSSL_DRIVER.exists(), "rsyslog's TLS driver is missing: scripts/deps.sh installs rsyslog-openssl"
        self.pki = pki
        self.dir = tmp / "rsyslog"
        self.dir.mkdir(exist_ok=True)
        self.out = self.dir / "received.log"
        self.port = port or free_port()
        self.start()

    def start(self) -> None:
        conf = self.dir / "rsyslog.conf"
        conf.write_text(CONF.format(work=self.dir, pki=self.pki, out=self.out, port=self.port, client=CLIENT_NAME))
        self.log = open(self.dir / "rsyslogd.stderr", "ab")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.dir / "rsyslogd.pid")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Probe over TLS (with the client certificate) until rsyslog wrote the probe."""
        token = uuid.uuid4().hex
        ctx = client_ctx(self.pki)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "rsyslogd.stderr").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw:
                    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                        m = f"<134>1 - probe probe - probe - tls-{token}".encode()
                        t.sendall(b"%d " % len(m) + m)
            except OSError:
                pass
            time.sleep(0.2)
            if self.out.exists() and f"tls-{token}" in self.out.read_text():
                return
        raise AssertionError("rsyslogd did not come up: " + (self.dir / "rsyslogd.stderr").read_text())

    def records(self) -> list[tuple[str, ...]]:
        """(pri, app, procid, msgid, timestamp, msg) of every non-probe line."""
        out = []
        text = self.out.read_text() if self.out.exists() else ""
        for line in text.splitlines():
            parts = tuple(line.split("|", 5))
            if parts[1] != "probe":
                out.append(parts)
        return out

    def wait_for(self, n: int, timeout: float = 60.0) -> list[tuple[str, ...]]:
        deadline = time.monotonic() + timeout
        while len(self.records()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # anything beyond n (duplicates) would show up too
        return self.records()

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
def rsyslog(tmp_path, pki):
    r = RsyslogTLS(tmp_path, pki)
    try:
        yield r
    finally:
        r.stop()


def _file_lines(out: Path) -> collections.Counter:
    files: collections.Counter = collections.Counter()
    for k in KINDS:
        for line in (out / f"{k}.jsonl").read_text().splitlines():
            files[(k, line)] += 1
    return files


def _replay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(DEMO), "--out", str(tmp_path / "out"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replay_over_tls_delivers_every_record_once(rsyslog, pki, tmp_path):
    """The config's output.syslog section (protocol tls, CA, client certificate):
    every record of the --out files arrives once, intact, and nothing else."""
    cfg = tmp_path / "demo-tls.yaml"
    cfg.write_text(
        DEMO_CFG.read_text()
        + "\noutput:\n  syslog:\n"
        + f"    host: 127.0.0.1\n    port: {rsyslog.port}\n    protocol: tls\n    facility: local0\n"
        + f"    ca: {pki / 'ca.pem'}\n    cert: {pki / 'client.pem'}\n    key: {pki / 'client.key'}\n"
    )
    p = _replay(tmp_path, "--config", str(cfg), "--format", "json")
    assert p.returncode == 0, p.stderr
    files = _file_lines(tmp_path / "out")
    assert sum(files.values()) == 70  # the demo's records: connections, transfers, alerts, ...
    got = rsyslog.wait_for(sum(files.values()))
    assert collections.Counter((r[3], r[5]) for r in got) == files
    for pri, app, _procid, msgid, _ts, msg in got:
        json.loads(msg)
        assert app == "xfer-sensor" and int(pri) // 8 == 16 and msgid in KINDS
    sinks = json.loads(p.stdout)["outputs"]["sinks"]
    st = sinks[f"syslog:tls://127.0.0.1:{rsyslog.port}"]
    assert st["written"] == 70 and st["dropped_error"] == 0 and st["dropped_overflow"] == 0


def test_wrong_ca_is_refused_and_replay_exits_4(rsyslog, pki, tmp_path):
    """A collector whose certificate does not chain to --syslog-ca: nothing is
    sent, the refusal is reported, the records count as not written (exit 4)."""
    p = _replay(
        tmp_path,
        "--config",
        str(DEMO_CFG),
        "--syslog",
        f"127.0.0.1:{rsyslog.port}",
        "--syslog-protocol",
        "tls",
        "--syslog-ca",
        str(pki / "other-ca.pem"),
        "--syslog-cert",
        str(pki / "client.pem"),
        "--syslog-key",
        str(pki / "client.key"),
    )
    assert p.returncode == 4, p.stderr
    assert "Traceback" not in p.stderr
    refused = [line for line in p.stderr.splitlines() if "certificate was refused" in line]
    assert refused, p.stderr
    # the first refusal at once, the count at close, the summary: not one line per record
    assert len(refused) <= 3, p.stderr
    assert "70 record(s) not written" in p.stderr, p.stderr
    assert _file_lines(tmp_path / "out").total() == 70  # the files are unaffected
    time.sleep(0.5)
    assert rsyslog.records() == []


def test_wrong_ca_never_sends_in_clear(pki):
    """What reaches the wire when verification fails: a TLS ClientHello, then
    nothing -- no record in clear -- and the sink counts the record as lost."""
    srv = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srv.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    got: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            c, _ = lsock.accept()
            data = b""
            c.settimeout(5)
            try:
                with srv.wrap_socket(c, server_side=True) as t:  # fails: the client aborts
                    data = t.recv(65536)
            except OSError:
                pass
            got.append(data)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    sl = SyslogOutput(
        host="127.0.0.1", port=lsock.getsockname()[1], protocol="tls", ca=str(pki / "other-ca.pem"), retry_interval=0.05
    )
    outputs = build_outputs(Output(), syslog=sl)
    rec = {"Timestamp": "2026-11-27T01:00:00.000000Z", "RuleId": "secret-rule-id", "Level": "high"}
    outputs.emit("alerts", rec)
    outputs.flush()
    time.sleep(0.1)
    outputs.emit("alerts", rec)  # after retry_interval: a second attempt, refused again
    outputs.close()
    th.join(10)
    lsock.close()
    assert got == [b"", b""]  # the server never got application data
    st = next(iter(outputs.stats()["sinks"].values()))
    assert st["written"] == 0 and st["dropped_error"] == 2 and st["failing"]
    assert "certificate was refused" in st["last_error"]


def test_octet_counted_framing_on_the_tls_stream(pki):
    """The exact plaintext inside the TLS session: LEN SP MSG, one per record
    (RFC 5425 section 4.3), the server verified by name (127.0.0.1)."""
    srv = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    srv.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    srv.verify_mode = ssl.CERT_REQUIRED  # the sensor's client certificate
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    data = bytearray()
    peer: list = []

    def serve() -> None:
        c, _ = lsock.accept()
        with srv.wrap_socket(c, server_side=True) as t:
            peer.append(t.getpeercert())
            while chunk := t.recv(65536):
                data.extend(chunk)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    sl = SyslogOutput(
        host="127.0.0.1",
        port=lsock.getsockname()[1],
        protocol="tls",
        facility=3,
        app_name="xs",
        hostname="h1",
        ca=str(pki / "ca.pem"),
        cert=str(pki / "client.pem"),
        key=str(pki / "client.key"),
    )
    outputs = build_outputs(Output(), syslog=sl)
    recs = [{"Timestamp": f"2026-11-27T01:00:0{i}.000000Z", "RuleId": "r" * (i * 50), "Level": "low"} for i in (1, 2)]
    for r in recs:
        outputs.emit("alerts", r)
    outputs.close()
    th.join(10)
    lsock.close()
    assert dict(x[0] for x in peer[0]["subject"])["commonName"] == CLIENT_NAME
    msgs, rest = octet_frames(bytes(data))
    assert rest == b"" and len(msgs) == 2
    for r, m in zip(recs, msgs, strict=True):
        head = b"<29>1 %s h1 xs " % r["Timestamp"].encode()
        assert m.startswith(head) and b" alerts - " in m
        assert json.loads(m.split(b" alerts - ", 1)[1])["RuleId"] == r["RuleId"]


def test_reconnects_with_tls_when_the_collector_restarts(tmp_path, pki):
    """A TLS collector closes every session and listens again on the same port
    (a restart): the next records go into a new, verified TLS session, none into
    the dead one (the sink sees the collector's close before it writes). The
    collector is this test's own, so that its restart is exact; delivery to a
    real rsyslog is test_replay_over_tls_delivers_every_record_once."""
    srv = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    srv.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    srv.verify_mode = ssl.CERT_REQUIRED
    port = free_port()
    frames: list[bytes] = []
    sessions: list[ssl.SSLSocket] = []
    lock = threading.Lock()

    def listen() -> tuple[socket.socket, threading.Thread]:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(4)

        def serve() -> None:
            while True:
                try:
                    c, _ = ls.accept()
                except OSError:  # the listener closed: the "restart"
                    return
                try:
                    t = srv.wrap_socket(c, server_side=True)
                except OSError:
                    c.close()
                    continue
                with lock:
                    sessions.append(t)
                threading.Thread(target=read, args=(t,), daemon=True).start()

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        return ls, th

    def read(t: ssl.SSLSocket) -> None:
        buf = b""
        try:
            while chunk := t.recv(65536):
                got, buf = octet_frames(buf + chunk)
                with lock:
                    frames.extend(got)
        except OSError:
            pass

    def wait_for(n: int) -> list[bytes]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if len(frames) >= n:
                    break
            time.sleep(0.02)
        time.sleep(0.2)  # anything beyond n (duplicates) would show up too
        with lock:
            return list(frames)

    ls, th = listen()
    sl = SyslogOutput(
        host="127.0.0.1",
        port=port,
        protocol="tls",
        ca=str(pki / "ca.pem"),
        cert=str(pki / "client.pem"),
        key=str(pki / "client.key"),
        retry_interval=0.05,
    )
    outputs = build_outputs(Output(), syslog=sl, block=True)

    def batch(tag: str, n: int) -> None:
        for i in range(n):
            outputs.emit("weird", {"Timestamp": "2026-11-27T01:00:00.000000Z", "Name": f"{tag}-{i}"})
        assert outputs.flush()

    def names(got: list[bytes]) -> collections.Counter:
        return collections.Counter(json.loads(f.split(b" weird - ", 1)[1])["Name"] for f in got)

    try:
        batch("before", 20)
        assert names(wait_for(20)) == collections.Counter(f"before-{i}" for i in range(20)), outputs.stats()
        ls.shutdown(socket.SHUT_RDWR)  # the collector restarts: its listener (accept wakes up)
        ls.close()
        th.join(10)
        with lock:
            for t in sessions:  # ... and every session close, as at a process's exit
                t.shutdown(socket.SHUT_RDWR)  # (wakes its reader; FIN to the sensor)
                t.close()
        ls, th = listen()
        batch("after", 20)
        want = collections.Counter([f"before-{i}" for i in range(20)] + [f"after-{i}" for i in range(20)])
        assert names(wait_for(40)) == want, outputs.stats()["sinks"]
        assert len(sessions) == 2  # one session before the restart, one after
        st = next(iter(outputs.stats()["sinks"].values()))
        assert st["written"] == 40 and st["dropped_error"] == 0
    finally:
        outputs.close()
        ls.close()


def test_tls_options_are_checked(tmp_path, pki, caplog):
    def syslog(**kw):
        return config_from_dict({"output": {"syslog": {"host": "127.0.0.1", **kw}}}).output.syslog

    assert syslog(protocol="tls").port == 6514  # RFC 5425's port unless one is given
    assert syslog(protocol="tls", port=10514).port == 10514
    for bad, field in (
        ({"protocol": "tcp", "ca": "x.pem"}, "ca"),
        ({"protocol": "tls", "key": "k.pem"}, "key"),
        ({"protocol": "tls", "ca": 5}, "ca"),
        ({"protocol": "ssl"}, "protocol"),
    ):
        with pytest.raises(ConfigError) as e:
            syslog(**bad)
        assert e.value.field == f"output.syslog.{field}", e.value
    # files that do not load: bad input, named, before anything is sent
    with pytest.raises(ConfigError, match="missing.pem"):
        SyslogWriter(SyslogOutput(protocol="tls", ca=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="client.pem"):
        SyslogWriter(SyslogOutput(protocol="tls", cert=str(pki / "client.pem"), key=str(pki / "server.csr")))
    logging.getLogger("xfer-sensor.outputs")  # nothing logged by refusing a config
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_replay_with_an_unreadable_ca_is_bad_input(tmp_path):
    p = _replay(
        tmp_path,
        "--syslog",
        "127.0.0.1:6514",
        "--syslog-protocol",
        "tls",
        "--syslog-ca",
        str(tmp_path / "nope.pem"),
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "nope.pem" in p.stderr and "Traceback" not in p.stderr
    p = _replay(tmp_path, "--syslog", "127.0.0.1:514", "--syslog-ca", str(tmp_path / "ca.pem"))
    assert p.returncode == 2 and "only with protocol tls" in p.stderr, p.stderr
