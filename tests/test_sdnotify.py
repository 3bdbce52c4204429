"""sd_notify without libsystemd, against real AF_UNIX datagram sockets.

The receiving socket plays systemd: bound at a path or at an abstract name,
it must receive exactly the datagrams a Type=notify service sends, from the
sending process (SO_PASSCRED: systemd checks the sender's pid for
NotifyAccess=main).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.io.sdnotify import SdNotifier, WatchdogTimer, watchdog_interval

REPO = Path(__file__).resolve().parent.parent

SCM_CREDENTIALS = 2


def _receiver(address) -> socket.socket:
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    r.bind(address)
    r.settimeout(2.0)
    return r


def _recv(r: socket.socket) -> tuple[bytes, int]:
    """One datagram and the sender's pid (from SCM_CREDENTIALS)."""
    data, anc, _flags, _addr = r.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, typ, payload in anc:
        if level == socket.SOL_SOCKET and typ == SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("=iII", payload[:12])
    return data, pid


def _nothing_more(r: socket.socket) -> None:
    r.settimeout(0.05)
    with pytest.raises((socket.timeout, TimeoutError, BlockingIOError)):
        r.recv(4096)


def _exchange(address_env: str, r: socket.socket) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": address_env})
    assert n.enabled
    assert n.ready("capturing on eth0")
    assert n.watchdog()
    assert n.status("12 connections, 0 alerts\nsecond line")
    t_before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    t_after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.ready()
    assert n.stopping("flushing")
    got = [_recv(r) for _ in range(6)]
    msgs = [d for d, _ in got]
    assert {pid for _, pid in got} == {os.getpid()}
    assert msgs[0] == b"READY=1\nSTATUS=capturing on eth0"
    assert msgs[1] == b"WATCHDOG=1"
    assert msgs[2] == b"STATUS=12 connections, 0 alerts second line"  # one line: no injected keys
    lines = msgs[3].split(b"\n")
    assert lines[0] == b"RELOADING=1" and len(lines) == 2 and lines[1].startswith(b"MONOTONIC_USEC=")
    assert t_before <= int(lines[1].split(b"=")[1]) <= t_after
    assert msgs[4] == b"READY=1"
    assert msgs[5] == b"STOPPING=1\nSTATUS=flushing"
    _nothing_more(r)
    assert (n.sent, n.errors) == (6, 0)
    n.close()


def test_path_socket(tmp_path):
    path = tmp_path / "notify.sock"
    with _receiver(str(path)) as r:
        _exchange(str(path), r)


def test_abstract_socket():
    name = f"xfer-sensor-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver("\0" + name) as r:
        _exchange("@" + name, r)


def test_unset_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SdNotifier()
    assert not n.enabled
    assert not n.ready("x") and not n.watchdog() and not n.stopping()
    assert n.watchdog_interval() is None
    assert (n.sent, n.errors) == (0, 0) and n._sock is None
    # an unsupported address (vsock, relative path) is treated as unset
    assert not SdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not SdNotifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_send_failure_is_counted_not_raised(tmp_path):
    n = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert n.ready() is False
    assert n.errors == 1 and "FileNotFoundError" in n.last_error
    # the receiver appears later (systemd restarted): sending works again
    with _receiver(str(tmp_path / "nobody-listens")) as r:
        assert n.watchdog()
        assert _recv(r)[0] == b"WATCHDOG=1"


def test_watchdog_interval():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # not us
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "-5"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None
    n = SdNotifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "5000000"})
    assert n.watchdog_interval() == 2.5
    # without a socket to send to there is nothing to pace
    assert SdNotifier({"WATCHDOG_USEC": "5000000"}).watchdog_interval() is None


def test_watchdog_timer():
    t = WatchdogTimer(2.5)
    assert t.due(100.0)
    assert not t.due(101.0) and not t.due(102.4)
    assert t.due(102.5)
    assert not t.due(104.0) and t.due(105.1)
    off = WatchdogTimer(None)
    assert not off.due(0.0) and not off.due(1e9)


def test_unset_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "s"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = SdNotifier(unset_environment=True)
    assert n.enabled and n.watchdog_interval() == 0.5
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert "WATCHDOG_PID" not in os.environ


def test_a_service_process_notifies_like_under_systemd(tmp_path):
    """A child started the way systemd starts a Type=notify service (the
    variables in its environment) reaches the socket, credentials included."""
    path = tmp_path / "notify.sock"
    code = (
        "from sensor.io.sdnotify import SdNotifier\n"
        "n = SdNotifier()\n"
        "iv = n.watchdog_interval()\n"
        "assert n.ready(f'watchdog every {iv}s') and n.watchdog() and n.stopping()\n"
    )
    with _receiver(str(path)) as r:
        env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="20000000", PYTHONPATH=str(REPO))
        env.pop("WATCHDOG_PID", None)
        p = subprocess.Popen([sys.executable, "-c", code], env=env)
        assert p.wait(30) == 0
        got = [_recv(r) for _ in range(3)]
        assert [d for d, _ in got] == [b"READY=1\nSTATUS=watchdog every 10.0s", b"WATCHDOG=1", b"STOPPING=1"]
        assert {pid for _, pid in got} == {p.pid}
        _nothing_more(r)
