"""The hardened unit (issue #14, "A harder unit"): systemd-analyze's offline
score of the shipped unit, and the daemon working under the unit's
restrictions applied without systemd (tests/support/unit_sandbox.py: seccomp
filters, mount and UTS namespaces, setpriv) -- live capture on lo,
attribution, records, syslog over TLS, /metrics, SIGHUP reload, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

from sensor.attribution.recording import parse_comment
from sensor.io.pcapng import read_comments
from tests.support.loopback_ftp import DaemonProcess, banner_server, login_sessions, records_of, wait_for
from tests.support.syslog import octet_frames
from tests.support.unit_sandbox import command, unit_allow_list
from tests.test_daemon import CLIENT
from tests.test_outputs_syslog_tls import _ca, _leaf

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "xfer-sensor.service"
T1071_RULE = "0b7f5a8e-9d4c-4c1b-8f6a-1e2d3c4b5a69"  # the correlation of the shipped rule
SERVER = "127.0.0.2"
NOBODY = 65534
RE_RULE = "22222222-2222-4222-8222-222222222222"
# the directives issue #14 asks for; each is in the unit and modelled by unit_sandbox
HARDENING = (
    "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native",
    "RestrictSUIDSGID=yes",
    "ProtectKernelLogs=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "PrivateDevices=yes",
    "UMask=0027",
    "RemoveIPC=yes",
    "RestrictRealtime=yes",
    "MemoryDenyWriteExecute=yes",
)


def unit_caps() -> list[str]:
    return re.search(r"^AmbientCapabilities=(.*)$", UNIT.read_text(), re.M).group(1).split()


def test_unit_scores_below_3():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (scripts/deps.sh installs the systemd package)")
    text = UNIT.read_text()
    for line in HARDENING:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    r = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for xfer-sensor\.service: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) < 3.0, r.stdout


@pytest.fixture
def sandbox():
    """A folder every user can reach (pytest's are 0700), the filter spec in it,
    and ``run(argv, caps)``: argv under the unit's restrictions as nobody."""
    d = Path(tempfile.mkdtemp(prefix="xs-unit-"))
    os.chmod(d, 0o755)
    spec = d / "spec.json"
    spec.write_text(json.dumps({"allow": unit_allow_list(UNIT.read_text())}))
    os.chmod(spec, 0o644)
    (d / "dev").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def argv(args: list[str], caps: list[str] | None = None) -> list[str]:
        return command(args, d / "dev", spec, NOBODY, unit_caps() if caps is None else caps, REPO)

    try:
        yield d, argv, env
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.root
def test_the_sandbox_enforces_what_it_models(sandbox):
    """Without this, a daemon passing in the sandbox would prove nothing: each
    modelled restriction refuses what it should."""
    d, argv, env = sandbox
    own = d / "own"
    own.mkdir()
    os.chown(own, NOBODY, NOBODY)

    def py(code: str, *caps: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv([sys.executable, "-c", code], unit_caps() + list(caps)),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=REPO,
        )

    r = py(
        "import os, socket\n"
        "st = open('/proc/self/status').read()\n"
        "print(os.getuid(), oct(os.umask(0)), sorted(os.listdir('/dev')))\n"
        "print([l for l in st.splitlines() if l.startswith(('NoNewPrivs', 'Seccomp', 'CapBnd'))])\n"
        "try:\n    print('kmsg', len(open('/proc/kmsg', 'rb').read(1)))\nexcept OSError as e:\n    print('kmsg', e.errno)\n"
    )
    assert r.returncode == 0, r.stderr
    assert f"{NOBODY} 0o27 " in r.stdout
    assert "'kmsg'" not in r.stdout and "'rtc0'" not in r.stdout and "'null'" in r.stdout
    assert "'NoNewPrivs:\\t1'" in r.stdout and "'Seccomp:\\t2'" in r.stdout and "'Seccomp_filters:\\t2'" in r.stdout
    assert "kmsg 0" in r.stdout or "kmsg 13" in r.stdout  # nothing of the kernel's log (EOF, or EACCES)
    bnd = int(re.search(r"CapBnd:\\t([0-9a-f]+)", r.stdout).group(1), 16)
    assert not bnd & ((1 << 27) | (1 << 17))  # CAP_MKNOD, CAP_SYS_RAWIO
    # MemoryDenyWriteExecute: W+X memory kills
    r = py("import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)")
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stderr)
    # SystemCallFilter=@system-service: a call outside it (sethostname, @system) kills
    r = py("import socket; socket.sethostname('x')")
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stderr)
    # RestrictRealtime: refused even with CAP_SYS_NICE
    r = py("import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))", "CAP_SYS_NICE")
    assert r.returncode == 1 and "PermissionError" in r.stderr, r.stderr
    r = py("import os; os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0)); print('batch')")
    assert r.returncode == 0 and "batch" in r.stdout, r.stderr
    # RestrictSUIDSGID: setuid/setgid bits refused on one's own file, others allowed
    code = f"import os; p = '{own}/f'; open(p, 'w').close(); os.chmod(p, 0o750); print('plain'); os.chmod(p, 0o%o)"
    for mode in (0o4755, 0o2755):
        r = py(code % mode)
        assert "plain" in r.stdout and r.returncode == 1 and "PermissionError" in r.stderr, r.stderr


def _tls_collector(pki: Path) -> tuple[socket.socket, list[bytes], threading.Thread]:
    """A TLS syslog collector on 127.0.0.1 that keeps the octet-counted messages."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    msgs: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            buf = b""
            try:
                with ctx.wrap_socket(c, server_side=True) as t:
                    while chunk := t.recv(65536):
                        got, buf = octet_frames(buf + chunk)
                        msgs.extend(got)
            except OSError:
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return lsock, msgs, th


@pytest.mark.root
def test_daemon_works_under_the_unit_restrictions(sandbox):
    d, argv, env = sandbox
    pki = d / "pki"
    pki.mkdir()
    _ca(pki, "ca")
    ext = "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    _leaf(pki, "server", "ca", "localhost", ext)
    _leaf(pki, "client", "ca", "sensor", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for f in pki.iterdir():
        os.chmod(f, 0o644)
    os.chmod(pki, 0o755)
    out = d / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    rules = d / "rules"
    rules.mkdir(mode=0o755)
    lsock, msgs, _th = _tls_collector(pki)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    with banner_server(SERVER) as port:
        for f in (REPO / "rules").glob("*.yml"):
            (rules / f.name).write_text(f.read_text().replace("      - 20\n", f"      - {port}\n      - 20\n"))
        # a |re rule: RE2 is loaded and matched under the filters too
        (rules / "zz_re.yml").write_text(
            f"title: re\nid: {RE_RULE}\nlogsource: {{category: network_connection}}\n"
            "detection: {sel: {AppUser|re: '^b[o]+b$'}, condition: sel}\n"
        )
        cfg = d / "config.yaml"
        cfg.write_text(
            f"tracked_ports: [{port}]\nhome_net: [127.0.0.1/32]\nip_type_overrides: {{'{SERVER}/32': Public}}\n"
            "timeouts: {tcp_closed: 0.3, tcp_attempt: 2}\nlimits: {flow_scan_interval: 0.1}\n"
            f"output:\n  syslog: {{host: 127.0.0.1, port: {lsock.getsockname()[1]}, protocol: tls,\n"
            f"    ca: {pki / 'ca.pem'}, cert: {pki / 'client.pem'}, key: {pki / 'client.key'}}}\n"
        )
        os.chmod(cfg, 0o644)
        daemon = [sys.executable, "-m", "sensor.daemon", "-i", "lo", "--mode", "endpoint"]
        daemon += ["--out", str(out), "--config", str(cfg), "--rules", str(rules)]
        daemon += ["--state-dir", str(out / "state"), "--metrics-listen", f"127.0.0.1:{mport}"]
        daemon += ["--pcap-dir", str(out / "ring")]  # the flight recorder, as the service account
        p = _Sandboxed(argv(daemon), env)
        try:
            conns = out / "connections.jsonl"

            def read(path: Path) -> list[dict]:
                return records_of(path, SERVER, port)

            # capture + attribution: a client process that lives a few ms per session, like curl
            c = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), *["alice"] * 4])
            assert c.wait(30) == 0
            wait_for(lambda: len(read(conns)) == 4, what="4 connection records")
            for r in read(conns):
                assert r["AttributionSource"] == "socket" and r["InitiatingProcessId"] == c.pid, r
            alerts = out / "alerts.jsonl"
            wait_for(lambda: [a["RuleId"] for a in records_of(alerts)] == [T1071_RULE], what="the alert")
            # syslog over TLS (OpenSSL under the filters)
            wait_for(lambda: sum(b" connections - " in m for m in msgs) >= 4, what="syslog over TLS")

            # metrics
            def socket_count() -> float:
                body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
                m = re.search(r'^xfer_sensor_attributions_total\{source="socket"\} (\S+)$', body, re.M)
                return float(m.group(1)) if m else -1

            wait_for(lambda: socket_count() >= 4, what="/metrics to count the attributions")
            # SIGHUP: reopen after a rename, reload config and rules
            conns.rename(out / "connections.jsonl.1")
            p.p.send_signal(signal.SIGHUP)
            wait_for(lambda: b"reloaded" in p.err(), what="the reload")
            login_sessions(SERVER, port, 2, "bob")  # (from this process)
            wait_for(lambda: len(read(conns)) == 2, what="records in the new file")
            wait_for(lambda: [a["RuleId"] for a in records_of(alerts)].count(RE_RULE) == 2, what="the |re alerts")
            # SIGTERM: a clean exit
            p.p.send_signal(signal.SIGTERM)
            assert p.p.wait(15) == 0, p.err().decode()[-3000:]
            err = p.err().decode()
            assert "attribution helper started" in err and "Traceback" not in err, err
            # UMask=0027: nothing the daemon made is world-accessible
            for f in out.rglob("*"):
                assert not f.stat().st_mode & 0o007, (f, oct(f.stat().st_mode))
            # the flight recorder's ring: the service account's files, 0640, alice's client in the comments
            ring = sorted((out / "ring").glob("*.pcapng"))
            assert ring and all(f.stat().st_uid == NOBODY and f.stat().st_mode & 0o777 == 0o640 for f in ring)
            pids = set()
            for f in ring:
                with open(f, "rb") as fh:
                    for _lt, _ts, _head, comment in read_comments(fh):
                        got = parse_comment(comment, 1024)
                        assert got is not None, comment
                        pids.add(got[0].InitiatingProcessId)
            assert c.pid in pids, (c.pid, pids)
        finally:
            if p.p.poll() is None:
                p.p.kill()
                p.p.wait()
            lsock.close()


class _Sandboxed(DaemonProcess):
    def __init__(self, argv: list[str], env: dict) -> None:
        self.stderr = b""
        self.p = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, env=env)
        os.set_blocking(self.p.stderr.fileno(), False)
        try:
            wait_for(lambda: b"capturing on lo" in self.err() or self.p.poll() is not None, 60, what="capture")
            assert b"capturing on lo" in self.err(), (self.p.returncode, self.err().decode()[-3000:])
        except BaseException:
            if self.p.poll() is None:
                self.p.kill()
            self.p.wait()
            raise
