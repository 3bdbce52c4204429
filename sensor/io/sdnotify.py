"""sd_notify(3) without libsystemd: readiness, watchdog and status for systemd.

    n = SdNotifier()
    n.ready("capturing on eth0")           # READY=1 + STATUS=
    every = n.watchdog_interval()          # seconds, or None when not asked for
    n.watchdog(); n.reloading(); n.stopping()

Without ``$NOTIFY_SOCKET`` every call is a no-op returning False; nothing
raises (a failed send is counted in ``errors``). Protocol: docs/daemon.md.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["SdNotifier", "WatchdogTimer", "watchdog_interval"]


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, or None when
    the watchdog is off, the value is not a positive integer, or
    $WATCHDOG_PID names another process."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class SdNotifier:
    """Notifications to ``$NOTIFY_SOCKET`` (read once, when constructed).

    ``env`` defaults to ``os.environ``.  ``unset_environment=True`` removes
    NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from ``os.environ`` (as
    sd_notify's flag does) so that child processes do not inherit them."""

    def __init__(self, env: Mapping[str, str] | None = None, unset_environment: bool = False) -> None:
        e = os.environ if env is None else env
        self.address = self._address(e.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = watchdog_interval(e)
        self._sock: socket.socket | None = None
        self.sent = 0
        self.errors = 0
        self.last_error = ""
        if unset_environment:
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(k, None)

    @staticmethod
    def _address(raw: str) -> str | bytes | None:
        if not raw:
            return None
        if raw.startswith("@"):
            return b"\0" + raw[1:].encode()
        if raw.startswith("/"):
            return raw
        return None  # vsock and relative paths are not supported

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC) or None."""
        return self._watchdog_s if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False if not sent."""
        if self.address is None:
            return False
        # one assignment per line: a newline inside a value would start a new one
        msg = "\n".join(a.replace("\n", " ") for a in assignments)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg.encode("utf-8", "replace"), self.address)
        except OSError as e:
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            self.close()
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *((f"STATUS={status}",) if status is not None else ()))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *((f"STATUS={status}",) if status is not None else ()))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (systemd >= 253 requires it for
        Type=notify-reload; older versions ignore it).  Send ready() when done."""
        extra = (f"STATUS={status}",) if status is not None else ()
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *extra)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WatchdogTimer:
    """Sans-IO pacing for WATCHDOG=1: ``due(now)`` is True once per interval.

    The main loop calls ``due(time.monotonic())`` on every turn and pings when
    it says so; a stalled loop stops pinging, which is the point."""

    def __init__(self, interval_s: float | None) -> None:
        self.interval = interval_s
        self._next = 0.0

    def due(self, now: float) -> bool:
        if not self.interval:
            return False
        if now >= self._next:
            self._next = now + self.interval
            return True
        return False
