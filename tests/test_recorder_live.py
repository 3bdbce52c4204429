"""The flight recorder with the real daemon and a tiny bound: the ring on
disk never exceeds ``pcap_ring.max_bytes`` nor ``max_files`` while real FTP
transfers go through, the oldest files go first, SIGHUP starts a new file,
and the metrics count what was removed.

Lab ``xsr`` (10.83.0.0/24): vsftpd in the server namespace; the daemon
(``--mode span``: no attribution helper, the bound is what is tested here;
the comments are in tests/test_e2e_endpoint.py) and curl in the client
namespace. Root, iproute2, vsftpd, curl; run under ``flock /tmp/lab.lock``.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.lab.netns import Lab, LabError, require_tools
from tests.lab.scenarios import Recorder
from tests.lab.sensor import SensorDaemon
from tests.lab.servers import Vsftpd
from tests.support.ring import ring_on_disk

pytestmark = [pytest.mark.lab, pytest.mark.root]

MAX_BYTES = 200_000
MAX_FILES = 8  # with FILE_BYTES, more than MAX_BYTES: the byte bound is the one reached
FILE_BYTES = 40_000
METRICS_PORT = 9783


def test_tiny_ring_stays_within_its_bound_live():
    if os.geteuid() != 0:
        pytest.fail("needs root (namespaces, servers)")
    try:
        require_tools(["curl", "vsftpd", "ip"])
    except LabError as e:
        pytest.fail(str(e))
    work = Path(tempfile.mkdtemp(prefix="xsr-"))
    os.chmod(work, 0o755)
    ring = work / "sensor" / "ring"
    seen = {"max_bytes": 0, "max_files": 0, "samples": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            size, n = ring_on_disk(ring)
            seen["max_bytes"] = max(seen["max_bytes"], size)
            seen["max_files"] = max(seen["max_files"], n)
            seen["samples"] += 1
            time.sleep(0.002)

    with Lab(prefix="xsr", subnet="10.83.0", workdir=work / "lab") as lab:
        v = Vsftpd(lab).start()
        config = {
            "checksum_offload_nets": [f"{lab.srv_ip}/32"],
            "pcap_ring": {
                "max_bytes": MAX_BYTES,
                "max_files": MAX_FILES,
                "file_bytes": FILE_BYTES,
                "hold_seconds": 0.2,
            },
        }
        sensor = SensorDaemon(
            lab,
            work / "sensor",
            config,
            extra=["--mode", "span", "--pcap-dir", str(ring), "--metrics-listen", f"127.0.0.1:{METRICS_PORT}"],
        )
        sensor.start()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            r = Recorder(lab, "ring-live", {"ftp21": v}, "flight recorder, tiny bound")
            for i in range(4):
                s = r.curl_ftp(r.dl("odd.bin", "pub/odd.bin", v.pub, "passive", f"r{i}_"), mode="passive-epsv")
                assert s.exit_code == 0, s
                if i == 1:  # SIGHUP mid-way: the next packet starts a new file
                    time.sleep(0.6)  # past the hold: the packets so far are on disk
                    before = sorted(p.name for p in ring.glob("*.pcapng"))[-1]
                    assert sensor.proc is not None
                    sensor.proc.send_signal(signal.SIGHUP)
                    time.sleep(0.5)
            time.sleep(1.5)  # past the hold, one metrics snapshot
            text = sensor.scrape(METRICS_PORT)
        finally:
            stop.set()
            watcher.join()
            rc = sensor.stop()
            v.stop()
    size, n = ring_on_disk(ring)
    names = sorted(p.name for p in ring.glob("*.pcapng"))
    print(f"\nring live: {seen} at the end {size} bytes in {n} files {names}")
    assert rc == 0, sensor.stderr()[-2000:]
    assert seen["samples"] > 100
    assert MAX_BYTES - FILE_BYTES < seen["max_bytes"] <= MAX_BYTES and seen["max_files"] <= MAX_FILES
    assert size <= MAX_BYTES and n <= MAX_FILES
    assert names[0] > before, "the files before SIGHUP, the oldest, were removed first"

    def metric(name: str) -> float:
        for ln in text.splitlines():
            if ln.startswith(name + " ") or ln.startswith(name + "{"):
                return float(ln.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics")

    assert metric("xfer_sensor_recording_files_removed_total") > 0
    assert metric("xfer_sensor_recording_packets_total") > 100
    assert metric("xfer_sensor_recording_bytes") <= MAX_BYTES
