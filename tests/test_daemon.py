"""The daemon without systemd: live capture on loopback, SIGHUP with a broken
rule (old rules stay), SIGHUP after a rename (a new file is written),
SIGTERM (everything flushed, exit in < 5 s). Traffic only on 127.0.0.0/8."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.loopback_ftp import DaemonProcess, banner_server, login_sessions, records_of, wait_for

REPO = Path(__file__).resolve().parent.parent
PORT = 0  # set by the ftp_server fixture: a free port (other test runs may hold any fixed one)
SERVER = "127.0.0.2"
# how long systemd waits after SIGTERM before it kills the daemon: the stop promise
UNIT_STOP_TIMEOUT_S = int(
    re.search(r"^TimeoutStopSec=(\d+)$", (REPO / "systemd" / "xfer-sensor.service").read_text(), re.M).group(1)
)


@pytest.fixture
def ftp_server():
    global PORT
    with banner_server(SERVER) as PORT:
        yield


def sessions(n: int, user: str) -> None:
    login_sessions(SERVER, PORT, n, user)


def read(path: Path) -> list[dict]:
    return records_of(path, SERVER, PORT)


class Daemon(DaemonProcess):
    def __init__(self, tmp: Path, mode: str = "span", *extra: str):
        self.out = tmp / "out"
        self.rules = tmp / "rules"
        self.rules.mkdir()
        for f in (REPO / "rules").glob("*.yml"):
            (self.rules / f.name).write_text(f.read_text())
        self.cfg = tmp / "config.yaml"
        self.cfg.write_text(
            f"tracked_ports: [{PORT}]\nhome_net: [127.0.0.1/32]\nip_type_overrides: {{'{SERVER}/32': Public}}\n"
            "timeouts: {tcp_closed: 0.3, tcp_attempt: 2}\nlimits: {flow_scan_interval: 0.1}\n"
        )
        # the shipped rule selects the real FTP ports; test it on ours
        r = self.rules / "t1071_002_file_transfer_protocols.yml"
        r.write_text(r.read_text().replace("      - 20\n", f"      - {PORT}\n      - 20\n"))
        super().__init__(
            [
                sys.executable,
                "-m",
                "sensor.daemon",
                "-i",
                "lo",
                "--out",
                str(self.out),
                "--config",
                str(self.cfg),
                "--rules",
                str(self.rules),
                "--allow-root",
                "--mode",
                mode,
                *extra,
                "--state-dir",
                str(tmp / "state"),
            ],  # not the host's /var/lib/xfer-sensor
            REPO,
        )


@pytest.mark.root
def test_daemon_signals(tmp_path, ftp_server):
    """span mode: the account is the protocol login (no attribution)."""
    d = Daemon(tmp_path)
    try:
        conns = d.out / "connections.jsonl"
        sessions(4, "alice")
        wait_for(lambda: len(read(conns)) == 4, what="4 connection records")
        wait_for(lambda: len(read(d.out / "alerts.jsonl")) == 1, what="the alert")
        a = read(d.out / "alerts.jsonl")[0]
        assert (a["RemoteIP"], a["RemotePort"], a["ConnectionCount"], a["AccountName"]) == (SERVER, PORT, 4, "alice")

        # a broken rule: refused, logged, the old rules stay (and so do their windows)
        (d.rules / "zz_broken.yml").write_text(
            "title: x\nid: broken-1\nlogsource: {category: x}\ndetection:\n  sel: {RemotPort: 21}\n  condition: sel\n"
        )
        d.p.send_signal(signal.SIGHUP)
        wait_for(lambda: b"reload refused" in d.err(), what="the refusal")
        assert b"broken-1" in d.err() and b"RemotPort" in d.err()
        sessions(1, "alice")  # the 5th of the key: joins the alert, no new one
        sessions(4, "bob")  # a new key crosses: one new alert
        wait_for(lambda: len(read(conns)) == 9, what="9 connection records")
        wait_for(lambda: len(read(d.out / "alerts.jsonl")) == 2, what="bob's alert")
        assert read(d.out / "alerts.jsonl")[1]["AccountName"] == "bob"

        # logrotate: rename, then SIGHUP: a new file is written
        (d.rules / "zz_broken.yml").unlink()
        conns.rename(d.out / "connections.jsonl.1")
        d.p.send_signal(signal.SIGHUP)
        wait_for(lambda: b"reloaded" in d.err(), what="the reload")
        sessions(2, "carol")
        wait_for(lambda: len(read(conns)) == 2, what="records in the new file")
        assert len(read(d.out / "connections.jsonl.1")) == 9

        # SIGTERM: flows still open are written, and the daemon exits by itself
        # before systemd's TimeoutStopSec would kill it (the promise of the unit)
        sessions(1, "dave")
        d.p.send_signal(signal.SIGTERM)
        rc = d.p.wait(UNIT_STOP_TIMEOUT_S)
        assert rc == 0, rc
        assert [r["AppUser"] for r in read(conns)][-1] == "dave"
        for line in (d.out / "connections.jsonl").read_text().splitlines():
            json.loads(line)
    finally:
        if d.p.poll() is None:
            d.p.kill()
            d.p.wait()


CLIENT = """
import socket, sys, time
for user in sys.argv[2:]:
    with socket.create_connection(("127.0.0.2", int(sys.argv[1])), source_address=("127.0.0.1", 0), timeout=2) as s:
        s.recv(100)
        s.sendall(f"USER {user}\\r\\n".encode())
        s.recv(100)
        time.sleep(0.01)   # a real client's session lives a few ms (curl FTP: 6-13 ms)
    time.sleep(0.02)
"""


@pytest.mark.root
def test_endpoint_mode_names_the_process_and_account(tmp_path, ftp_server):
    """endpoint mode (the default): each record carries the process that made
    the connection -- a short-lived client under its own name, run as
    nobody -- and the account that alerts are grouped by is the process's."""
    import pwd
    import shutil
    import socket as _socket
    import tempfile

    bindir = Path(tempfile.mkdtemp(prefix="xs-client-"))  # 0700 pytest folders are closed to nobody
    os.chmod(bindir, 0o755)
    prog = bindir / "xs-ftp-client"
    prog.symlink_to(os.path.realpath(sys.executable))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    d = Daemon(tmp_path, "endpoint", "--metrics-listen", f"127.0.0.1:{mport}")
    try:
        pids = []
        for _ in range(2):  # two processes, two sessions each
            c = subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    str(prog),
                    "-c",
                    CLIENT,
                    str(PORT),
                    "alice",
                    "bob",
                ],
                cwd="/",
            )
            assert c.wait(10) == 0
            pids.append(c.pid)
        conns = d.out / "connections.jsonl"
        wait_for(lambda: len(read(conns)) == 4, what="4 connection records")
        recs = read(conns)
        nobody = pwd.getpwuid(65534).pw_name
        assert [r["InitiatingProcessId"] for r in recs] == [pids[0], pids[0], pids[1], pids[1]], [
            (r["AttributionSource"], r["InitiatingProcessAccountName"], r["LocalPort"], r["Timestamp"]) for r in recs
        ]
        for r in recs:
            assert r["InitiatingProcessFileName"] == "xs-ftp-client", r
            assert r["InitiatingProcessAccountName"] == nobody and r["AccountName"] == nobody, r
            assert r["AttributionSource"] == "socket", r
            assert "create_connection" in r["InitiatingProcessCommandLine"], r
            assert r["DeviceName"] == _socket.gethostname(), r
        assert [r["AppUser"] for r in recs] == ["alice", "bob", "alice", "bob"]
        # the 4th connection of one process and account to one server: one alert, with them
        wait_for(lambda: len(read(d.out / "alerts.jsonl")) == 1, what="the alert")
        a = read(d.out / "alerts.jsonl")[0]
        assert (a["InitiatingProcessFileName"], a["AccountName"], a["ConnectionCount"]) == ("xs-ftp-client", nobody, 4)
        # and /metrics counts them by source
        import urllib.request

        def socket_count() -> float:
            body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
            m = re.search(r'^xfer_sensor_attributions_total\{source="socket"\} (\S+)$', body, re.M)
            return float(m.group(1)) if m else -1

        wait_for(lambda: socket_count() >= 4, what="/metrics to count the attributions")
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
        assert b"attribution helper started" in d.err()
    finally:
        if d.p.poll() is None:
            d.p.kill()
            d.p.wait()
        shutil.rmtree(bindir, ignore_errors=True)


@pytest.mark.root
def test_daemon_refuses_root_without_the_flag(tmp_path):
    assert os.geteuid() == 0, "the daemon tests run as root (scripts/test.sh)"
    r = subprocess.run(
        [sys.executable, "-m", "sensor", "run", "-i", "lo", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "refusing to run as root" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.root
def test_unprivileged_daemon_keeps_only_the_capabilities_it_needs(tmp_path):
    """As nobody with the unit's ambient capabilities: it captures, then holds
    no capability at all; its attribution helper keeps only CAP_SYS_PTRACE
    and CAP_DAC_READ_SEARCH (the lookups), not the capture's."""
    from sensor.io.privileges import CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_PTRACE, effective_caps

    out = tmp_path / "out"
    out.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(out, 0o777)
    caps = "+net_raw,+net_admin,+sys_ptrace,+dac_read_search"
    p = subprocess.Popen(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            f"--inh-caps={caps}",
            f"--ambient-caps={caps}",
            sys.executable,
            "-m",
            "sensor.daemon",
            "-i",
            "lo",
            "--out",
            str(out),
            "--rules",
            str(REPO / "rules"),
            "--state-dir",
            str(out / "state"),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        err = ""
        end = time.time() + 60
        while time.time() < end and "capturing on lo" not in err:
            line = p.stderr.readline()
            if not line:
                break
            err += line
        assert "capturing on lo" in err, err
        import psutil

        assert effective_caps(p.pid) == 0, hex(effective_caps(p.pid))
        helpers = [
            c for c in psutil.Process(p.pid).children() if "sensor.attribution.attributor" in " ".join(c.cmdline())
        ]
        assert len(helpers) == 1, [c.cmdline() for c in psutil.Process(p.pid).children()]
        eff = effective_caps(helpers[0].pid)
        assert eff == (1 << CAP_SYS_PTRACE) | (1 << CAP_DAC_READ_SEARCH), hex(eff)
        assert not eff & ((1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN))
        for pid in (p.pid, helpers[0].pid):
            with open(f"/proc/{pid}/status") as f:
                assert "Uid:\t65534" in f.read()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
