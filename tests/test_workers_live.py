"""`run --workers 2` live on loopback (sensor/workers.py): the same traffic
gives the same records and alerts as one worker, SIGHUP reopens the outputs
and reloads the rules in every worker, SIGTERM writes every record, a worker
that dies makes the daemon exit 1, and endpoint mode still names the process
of every connection, whichever worker holds it. Traffic only on 127.0.0.0/8:
clients from several addresses of 127.85.0.0/24 (several host pairs, so both
workers get some) to a banner server on 127.0.0.85."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from sensor.engine.bpf import share_of
from tests.support.loopback_ftp import DaemonProcess, banner_server, login_sessions, records_of, wait_for
from tests.support.ring import ring_on_disk

REPO = Path(__file__).resolve().parent.parent
SERVER = "127.0.0.85"
CLIENTS = [f"127.85.0.{i}" for i in range(1, 5)]  # two host pairs in each share of 2

pytestmark = pytest.mark.root


@pytest.fixture
def port():
    with banner_server(SERVER) as p:
        yield p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sensor(DaemonProcess):
    """``xfer-sensor run -i lo`` with ``--workers N`` (and its own out/state folders)."""

    def __init__(
        self,
        tmp: Path,
        port: int,
        workers: int,
        mode: str = "span",
        metrics: int | None = None,
        config: str = "",
        extra: Sequence[str] = (),
    ):
        tmp.mkdir()
        self.out = tmp / "out"
        self.port = port
        self.rules = tmp / "rules"
        self.rules.mkdir()
        for f in (REPO / "rules").glob("*.yml"):  # the shipped rule, on the test server's port
            (self.rules / f.name).write_text(f.read_text().replace("      - 20\n", f"      - {port}\n      - 20\n"))
        cfg = self.config = tmp / "config.yaml"
        cfg.write_text(
            config
            + f"tracked_ports: [{port}]\nhome_net: [127.85.0.0/24]\nip_type_overrides: {{'{SERVER}/32': Public}}\n"
            "timeouts: {tcp_closed: 0.3, tcp_attempt: 2}\nlimits: {flow_scan_interval: 0.1}\n"
            + (f"metrics_listen: 127.0.0.1:{metrics}\n" if metrics else "")
        )
        argv = [sys.executable, "-m", "sensor", "run", "-i", "lo", "--allow-root", "--mode", mode]
        argv += ["--out", str(self.out), "--config", str(cfg), "--rules", str(self.rules)]
        argv += ["--state-dir", str(tmp / "state"), "--workers", str(workers), *extra]
        super().__init__(argv, REPO, timeout=30)
        if workers > 1:
            wait_for(lambda: f"with {workers} workers".encode() in self.err(), 30, what="every worker capturing")

    def records(self, kind: str = "connections") -> list[dict]:
        recs = records_of(self.out / f"{kind}.jsonl")
        if kind == "connections":
            return [r for r in recs if (r.get("RemoteIP"), r.get("RemotePort")) == (SERVER, self.port)]
        return recs

    def stop(self) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(30)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def workers(self) -> list[int]:
        import psutil

        return [
            c.pid
            for c in psutil.Process(self.p.pid).children()
            if "sensor.attribution.attributor" not in " ".join(c.cmdline())
        ]


# fields made of packet time: two captures of one packet on lo get kernel times
# that differ by a microsecond, so two daemons compare on everything else
TIMED = re.compile(r"Timestamp|Seen|Uid|Time")


def canon(recs: list[dict]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if not TIMED.search(k)}, sort_keys=True) for r in recs)


def traffic(port: int, per_client: int, tag: str) -> None:
    for i, c in enumerate(CLIENTS):
        login_sessions(SERVER, port, per_client, f"{tag}{i}", source=c)


def test_clients_fall_in_both_shares():
    got = [share_of(socket.inet_aton(c), socket.inet_aton(SERVER), 2) for c in CLIENTS]
    assert sorted(got) == [0, 0, 1, 1]


def test_two_workers_write_what_one_writes_and_flush_on_sigterm(tmp_path, port):
    mport = free_port()
    one = Sensor(tmp_path / "one", port, 1)
    two = None
    try:
        two = Sensor(tmp_path / "two", port, 2, metrics=mport)
        traffic(port, 4, "u")  # 4 clients x 4 sessions: 16 connections, each client's key alerts
        for s in (one, two):
            wait_for(lambda s=s: len(s.records()) == 16, what="16 connection records")
            wait_for(lambda s=s: len(s.records("alerts")) == 4, what="4 alerts")
        assert canon(two.records()) == canon(one.records())
        assert canon(two.records("alerts")) == canon(one.records("alerts"))
        assert sorted(a["DeviceName"] for a in two.records("alerts")) == CLIENTS

        # one /metrics for both workers: the sums
        def conns() -> float:
            body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
            m = re.search(r'^xfer_sensor_connections_total\{action_type="ConnectionSuccess"\} (\S+)$', body, re.M)
            return float(m.group(1)) if m else -1

        wait_for(lambda: conns() >= 16, what="/metrics to sum the workers' connections")

        # SIGTERM right after the last sessions: flows still open are written by every worker
        traffic(port, 1, "last")
        assert one.stop() == 0
        assert two.stop() == 0
        assert len(two.records()) == 20
        assert canon(two.records()) == canon(one.records())
        err = two.err().decode()
        stopped = re.findall(r"\[worker (\d)\]: INFO: stopped: .*connections (\d+)", err)
        assert sorted(k for k, _ in stopped) == ["0", "1"] and all(int(n) == 10 for _, n in stopped), err
        for line in (two.out / "connections.jsonl").read_text().splitlines():
            json.loads(line)  # whole lines only
    finally:
        one.kill()
        if two is not None:
            two.kill()


def test_sighup_reopens_outputs_and_reloads_every_worker(tmp_path, port):
    s = Sensor(tmp_path / "two", port, 2)
    try:
        traffic(port, 1, "a")
        wait_for(lambda: len(s.records()) == 4, what="4 connection records")
        # a broken rule: every worker refuses it and keeps its rules
        (s.rules / "zz_broken.yml").write_text(
            "title: x\nid: broken-1\nlogsource: {category: x}\ndetection:\n  sel: {RemotPort: 21}\n  condition: sel\n"
        )
        s.p.send_signal(signal.SIGHUP)
        wait_for(lambda: len(re.findall(rb"\[worker \d\]: ERROR: reload refused", s.err())) == 2, what="2 refusals")
        # logrotate: rename, SIGHUP: the supervisor writes a new file
        (s.rules / "zz_broken.yml").unlink()
        conns = s.out / "connections.jsonl"
        conns.rename(s.out / "connections.jsonl.1")
        s.p.send_signal(signal.SIGHUP)
        wait_for(lambda: len(re.findall(rb"\[worker \d\]: INFO: reloaded", s.err())) == 2, what="2 reloads")
        traffic(port, 1, "b")
        wait_for(lambda: len(s.records()) == 4, what="records in the new file")
        assert {r["AppUser"] for r in s.records()} == {f"b{i}" for i in range(4)}
        assert len(records_of(s.out / "connections.jsonl.1")) == 4
        assert s.stop() == 0
    finally:
        s.kill()


def test_a_dead_worker_stops_the_daemon_with_status_1(tmp_path, port):
    s = Sensor(tmp_path / "two", port, 2)
    try:
        workers = s.workers()
        assert len(workers) == 2, workers
        traffic(port, 1, "a")
        wait_for(lambda: len(s.records()) == 4, what="4 connection records")
        os.kill(workers[1], signal.SIGKILL)
        assert s.p.wait(30) == 1
        err = s.err().decode()
        assert f"worker 1 (pid {workers[1]}) was killed by SIGKILL" in err, err
        # the other worker was stopped and wrote what it had; nothing is left running
        assert re.search(r"\[worker 0\]: INFO: stopped:", err), err
        with pytest.raises(ProcessLookupError):
            os.kill(workers[0], 0)
    finally:
        s.kill()


CLIENT = """
import socket, sys, time
port = int(sys.argv[1])
for src in sys.argv[2:]:
    with socket.create_connection(("127.0.0.85", port), source_address=(src, 0), timeout=2) as s:
        s.recv(100)
        s.sendall(b"USER alice\\r\\n")
        s.recv(100)
        time.sleep(0.01)
    time.sleep(0.02)
"""


def test_endpoint_mode_attributes_connections_in_every_worker(tmp_path, port):
    """One attribution helper for the daemon: its lookups reach the worker of each host pair."""
    s = Sensor(tmp_path / "two", port, 2, mode="endpoint")
    try:
        assert b"attribution helper started" in s.err()
        c = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), *CLIENTS])
        assert c.wait(30) == 0
        wait_for(lambda: len(s.records()) == 4, what="4 connection records")
        recs = s.records()
        assert sorted(r["LocalIP"] for r in recs) == CLIENTS
        for r in recs:
            assert r["AttributionSource"] == "socket", r
            assert r["InitiatingProcessId"] == c.pid, r
        assert s.stop() == 0
    finally:
        s.kill()


RING_PORT = 2185  # below the ephemeral ports: on loopback the ring takes the higher port's end as the client
RING_BYTES = 60_000  # the whole ring: 30,000 bytes per worker
RING_FILES = 12  # 6 per worker


def _ring_files(ring: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("xfer-sensor-*.pcapng")) for d in sorted(ring.iterdir()) if d.is_dir()}


def test_flight_recorder_with_two_workers_keeps_the_bound_and_replays(tmp_path):
    """``--pcap-dir`` with 2 workers: a ring per worker (DIR/worker-K-of-2), mode
    0640, half the bounds each so the whole DIR stays within them; replaying each
    worker's folder gives its connections the live process columns."""
    with banner_server(SERVER, RING_PORT) as port:
        _ring_and_replay(tmp_path, port)


def _ring_and_replay(tmp_path: Path, port: int) -> None:
    ring = tmp_path / "ring"
    # the default hold (1 s): a lookup late on a busy machine still comments the connection's packets
    ring_cfg = f"pcap_ring: {{max_bytes: {RING_BYTES}, max_files: {RING_FILES}, file_bytes: 6000}}\n"
    s = Sensor(tmp_path / "two", port, 2, mode="endpoint", config=ring_cfg, extra=["--pcap-dir", str(ring)])
    seen = {"bytes": 0, "files": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            size, n = ring_on_disk(ring, "*/xfer-sensor-*.pcapng")
            seen["bytes"], seen["files"] = max(seen["bytes"], size), max(seen["files"], n)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        traffic(port, 10, "fill")  # 40 connections with their comments: more than the ring holds
        wait_for(lambda: len(s.records()) == 40, what="40 connection records")
        c = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), *CLIENTS])  # the last ones, kept
        assert c.wait(30) == 0
        wait_for(lambda: len(s.records()) == 44, what="44 connection records")
        time.sleep(1.5)  # past the hold: the last packets are written before SIGTERM
        assert s.stop() == 0
    finally:
        stop.set()
        watcher.join()
        s.kill()
    files = _ring_files(ring)
    assert sorted(files) == ["worker-0-of-2", "worker-1-of-2"], files
    for folder, fs in files.items():
        assert fs and all(f.stat().st_mode & 0o777 == 0o640 for f in fs), (folder, fs)
        size = sum(f.stat().st_size for f in fs)
        assert size <= RING_BYTES // 2 and len(fs) <= RING_FILES // 2, (folder, size, fs)
        assert fs[0].name != "xfer-sensor-00000001.pcapng", f"{folder}: the ring never turned"
    assert 0 < seen["bytes"] <= RING_BYTES and seen["files"] <= RING_FILES, seen

    live = {r["Uid"]: r for r in s.records()}
    restored: dict[str, dict] = {}
    for folder in files:
        out = tmp_path / f"replay-{folder}"
        cp = subprocess.run(
            [sys.executable, "-m", "sensor", "replay", str(ring / folder), "--config", str(s.config)]
            + ["--rules", str(s.rules), "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cp.returncode == 0, cp.stderr[-2000:]
        got = [r for r in records_of(out / "connections.jsonl", SERVER, port) if r["Uid"] in live]
        assert got, f"{folder}: no live connection replayed"
        assert not set(restored) & {r["Uid"] for r in got}, "a connection in both workers' rings"
        restored.update((r["Uid"], r) for r in got)
    last = [u for u, r in live.items() if r["InitiatingProcessId"] == c.pid]
    assert len(last) == 4 and set(last) <= set(restored), (last, sorted(restored))
    # the connections the live daemon named by their socket (the last 4 among them). On loopback the
    # server's end (this process) is looked up too: where the client's lookup missed (a login session
    # gone before it, "none" or "uid-only" live) the ring carries the server's process instead
    named = [u for u in restored if live[u]["AttributionSource"] == "socket"]
    assert set(last) <= set(named), (last, named)
    for uid in named:
        r = restored[uid]
        process = {k: v for k, v in live[uid].items() if k.startswith("InitiatingProcess")}
        assert process and {k: r[k] for k in process} == process, (uid, r)
        assert r["AttributionSource"] == "recording", r
