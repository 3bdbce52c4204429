"""``xfer-sensor run`` as a real daemon inside one of the lab's namespaces.

The daemon must run in the namespace whose sockets it attributes (sock_diag
and /proc/net answer for their own network namespace only), so it is started
with ``ip netns exec``.  Readiness is its systemd ``READY=1`` on a
``$NOTIFY_SOCKET`` we listen on (a path socket: abstract unix sockets belong
to a network namespace); stop() sends SIGTERM, which flushes every flow and
record, and returns what it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from .netns import Lab, LabError
from .tools import sensor_cmd

__all__ = ["SensorDaemon", "sensor_bin", "read_jsonl"]


def sensor_bin() -> str:
    """The ``xfer-sensor`` of the venv running the tests."""
    try:
        return sensor_cmd()[0]
    except RuntimeError as e:
        raise LabError(str(e)) from e


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SensorDaemon:
    """``xfer-sensor run -i <iface> --allow-root`` in namespace ``ns``."""

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        config: dict,
        ns: str | None = None,
        interfaces: Sequence[str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.lab = lab
        self.ns = ns or lab.cli_ns
        self.interfaces = list(interfaces or [lab.cli_if])
        self.dir = Path(workdir)
        self.out = self.dir / "out"
        self.cfg_path = self.dir / "config.yaml"
        self.state_dir = self.dir / "state"
        self.config = config
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.dir / "sensor.stderr"
        self.returncode: int | None = None
        self.notifications: list[str] = []

    def help_text(self) -> str:
        cp = subprocess.run([sensor_bin(), "run", "--help"], capture_output=True, text=True, timeout=30)
        return cp.stdout + cp.stderr

    def argv(self) -> list[str]:
        argv = [sensor_bin(), "run"]
        for i in self.interfaces:
            argv += ["-i", i]
        argv += ["--allow-root", "--out", str(self.out), "--config", str(self.cfg_path)]
        if "--state-dir" in self.help_text():  # window state on disk (another branch)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--state-dir", str(self.state_dir)]
        return argv + self.extra

    def start(self, timeout: float = 20.0) -> SensorDaemon:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cfg_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        sock_path = self.dir / "notify.sock"
        if sock_path.exists():
            sock_path.unlink()
        ns_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns_sock.bind(str(sock_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1")
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        errf = open(self.stderr_path, "wb")
        try:
            self.proc = self.lab.popen(self.ns, self.argv(), stdout=subprocess.DEVNULL, stderr=errf, env=env)
        finally:
            errf.close()
        deadline = time.monotonic() + timeout
        try:
            ns_sock.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise LabError(
                        f"xfer-sensor run exited {self.proc.returncode} before READY=1:\n{self.stderr()[-3000:]}"
                    )
                try:
                    msg = ns_sock.recv(4096).decode("utf-8", "replace")
                except TimeoutError:
                    continue
                self.notifications.append(msg)
                if "READY=1" in msg.splitlines():
                    return self
            raise LabError(f"xfer-sensor run sent no READY=1 within {timeout}s:\n{self.stderr()[-3000:]}")
        except BaseException:
            self.stop()
            raise
        finally:
            ns_sock.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM: the daemon ends every flow, writes every record and exits."""
        if self.proc is not None:
            self.returncode = self.lab.stop(self.proc, signal.SIGTERM, timeout=timeout)
            self.proc = None
        return self.returncode

    def scrape(self, port: int) -> str:
        """The daemon's Prometheus /metrics (``--metrics-listen 127.0.0.1:PORT``,
        loopback of its namespace); "" when it does not answer."""
        cp = subprocess.run(
            self.lab.ns_argv(self.ns, ["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"]),
            capture_output=True,
            text=True,
            timeout=15,
        )
        return cp.stdout if cp.returncode == 0 else ""

    def records(self, name: str) -> list[dict]:
        return read_jsonl(self.out / f"{name}.jsonl")
