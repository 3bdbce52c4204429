"""LiveCapture and pcap_activate()'s result: pcapy returns it instead of
raising, so a handle that did not activate (not root: PCAP_ERROR_PERM_DENIED)
must stop the start-up with one clear line, not fail at the first read
("F_GETFL: Bad file descriptor"). libpcap is faked (activate() gives any
result); two tests open real handles: an interface that does not exist, and
loopback as root without CAP_NET_RAW (setpriv drops it from the bounding set)."""

import logging
import os
import shutil
import subprocess
import sys

import pytest

from sensor.io import live
from sensor.io.capture import CaptureError
from sensor.io.live import LiveCapture, activate_result


class FakeHandle:
    def __init__(self, iface: str, rc: int, log: list[str]) -> None:
        self.iface, self.rc, self.log = iface, rc, log

    def set_snaplen(self, n: int) -> None:
        pass

    def set_promisc(self, on: int) -> None:
        pass

    def set_timeout(self, ms: int) -> None:
        pass

    def set_buffer_size(self, n: int) -> None:
        pass

    def activate(self) -> int:
        self.log.append(f"activate {self.iface}")
        return self.rc

    def setnonblock(self, on: int) -> None:
        if self.rc < 0:  # what libpcap does with a handle that did not activate
            raise AssertionError("setnonblock on a handle that is not activated")
        self.log.append(f"setnonblock {self.iface}")

    def datalink(self) -> int:
        return 1

    def close(self) -> None:
        self.log.append(f"close {self.iface}")


@pytest.fixture
def fake_pcap(monkeypatch):
    """``results``: pcap_activate()'s result per interface (0 if not named)."""
    results: dict[str, int] = {}
    calls: list[str] = []
    monkeypatch.setattr(live.pcapy, "create", lambda iface: FakeHandle(iface, results.get(iface, 0), calls))
    return results, calls


def test_permission_denied_is_one_clear_error(fake_pcap):
    results, calls = fake_pcap
    results["lo"] = -8  # PCAP_ERROR_PERM_DENIED: not root, no CAP_NET_RAW
    with pytest.raises(CaptureError) as exc:
        LiveCapture(["lo"])
    assert str(exc.value) == "lo: cannot capture: permission denied (needs CAP_NET_RAW) (libpcap -8)"
    assert calls == ["activate lo", "close lo"]  # never used, closed


def test_failure_closes_the_interfaces_opened_before(fake_pcap):
    results, calls = fake_pcap
    results["eth1"] = -5  # PCAP_ERROR_NO_SUCH_DEVICE
    with pytest.raises(CaptureError, match=r"^eth1: cannot capture: no such device \(libpcap -5\)$"):
        LiveCapture(["eth0", "eth1"])
    assert calls == ["activate eth0", "setnonblock eth0", "activate eth1", "close eth1", "close eth0"]


def test_unknown_error_code_is_named_by_number(fake_pcap):
    results, _ = fake_pcap
    results["lo"] = -99
    with pytest.raises(CaptureError, match=r"^lo: cannot capture: libpcap error -99$"):
        LiveCapture(["lo"])


def test_warning_is_logged_and_the_capture_goes_on(fake_pcap, caplog):
    results, calls = fake_pcap
    results["lo"] = 2  # PCAP_WARNING_PROMISC_NOTSUP
    with caplog.at_level(logging.WARNING, logger="xfer-sensor.capture"):
        cap = LiveCapture(["lo"])
    assert [(i, lt) for i, _, lt in cap.handles] == [("lo", 1)]
    assert calls == ["activate lo", "setnonblock lo"]
    assert [r.getMessage() for r in caplog.records] == [
        "lo: capturing despite: promiscuous mode not supported (libpcap 2)"
    ]
    cap.close()


def test_success_logs_nothing(fake_pcap, caplog):
    with caplog.at_level(logging.DEBUG, logger="xfer-sensor.capture"):
        cap = LiveCapture(["lo"])
    assert len(cap.handles) == 1 and caplog.records == []
    cap.close()


def test_activate_result_texts():
    assert activate_result(-8) == "permission denied (needs CAP_NET_RAW) (libpcap -8)"
    assert activate_result(3) == "time stamp type not supported (libpcap 3)"
    assert activate_result(7) == "libpcap warning 7"


def test_real_libpcap_missing_interface():
    """Real pcapy: an interface that does not exist (or, not root, no
    permission at all) fails at start-up with libpcap's code, whoever runs it."""
    with pytest.raises(CaptureError, match=r"^xfs-nosuch0: cannot capture: .*\(libpcap -\d+\)$"):
        LiveCapture(["xfs-nosuch0"])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_real_libpcap_without_cap_net_raw():
    code = (
        "from sensor.io.live import LiveCapture\n"
        "try:\n    LiveCapture(['lo'])\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    p = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if p.returncode != 0 and not p.stdout:
        pytest.skip(f"setpriv cannot drop CAP_NET_RAW here: {p.stderr.strip()[:200]}")
    assert p.stdout == "CaptureError lo: cannot capture: permission denied (needs CAP_NET_RAW) (libpcap -8)\n"
