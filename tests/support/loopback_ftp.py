"""A minimal FTP server on a loopback address for the daemon tests: it sends
vsftpd's banner, answers USER with 331 and closes -- enough for the sensor to
see a successful FTP control connection with a login. And the client side."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def banner_server(host: str, port: int = 0) -> Iterator[int]:
    """Serve on ``host:port`` (0: a free port) while the block runs; yields the port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                c.sendall(b"220 (vsFTPd 3.0.3)\r\n")
                if c.recv(100):
                    c.sendall(b"331 Please specify the password.\r\n")
                c.recv(100)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        srv.close()


def login_sessions(host: str, port: int, n: int, user: str, source: str = "127.0.0.1") -> None:
    """``n`` control connections from ``source``, each sending ``USER user``."""
    for _ in range(n):
        with socket.create_connection((host, port), source_address=(source, 0), timeout=2) as s:
            s.recv(100)
            s.sendall(f"USER {user}\r\n".encode())
            s.recv(100)
        time.sleep(0.02)


def records_of(path, server: str | None = None, port: int | None = None) -> list[dict]:
    """The JSON lines of ``path`` (none while it does not exist); with ``server``
    and ``port`` only the records of that server (other daemon tests may run
    at the same time on lo, and the sensor reports FTP by its banner on any port)."""
    import json
    from pathlib import Path

    p = Path(path)
    recs = [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
    if server is None:
        return recs
    return [r for r in recs if (r.get("RemoteIP"), r.get("RemotePort")) == (server, port)]


def wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
    """Polls cond() until it holds. The timeout only ends a test that would
    otherwise hang: it is generous so that a loaded machine is not a failure."""
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class DaemonProcess:
    """``xfer-sensor run`` as a child process, its stderr collected without
    blocking (``err()``); the constructor returns once it captures on lo."""

    def __init__(self, argv: list[str], cwd, timeout: float = 10.0) -> None:
        import os
        import subprocess

        self.stderr = b""
        self.p = subprocess.Popen(argv, cwd=cwd, stderr=subprocess.PIPE)
        os.set_blocking(self.p.stderr.fileno(), False)
        try:
            wait_for(lambda: b"capturing on lo" in self.err(), timeout, what="the daemon to capture")
        except BaseException:
            self.p.kill()
            self.p.wait()
            raise

    def err(self) -> bytes:
        import select

        while select.select([self.p.stderr], [], [], 0)[0]:
            chunk = self.p.stderr.read(65536)
            if not chunk:
                break
            self.stderr += chunk
        return self.stderr
