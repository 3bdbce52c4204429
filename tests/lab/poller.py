"""The polling baseline: ``psutil.net_connections(kind="inet")`` every
``interval`` seconds, what an agent without a first-packet trigger sees.

Run as a program inside the namespace to watch (it sees only that
namespace's sockets)::

    python tests/lab/poller.py OUT.json [INTERVAL_S]

It prints ``READY`` once polling, polls until a line (or EOF) arrives on
stdin, then writes OUT.json: every (socket, pid) it saw once, with the
process name and account read right then, plus the sockets it saw without
an owning process (TIME-WAIT, orphaned) and the cost of a poll.  Only psutil
and the standard library: no import of the sensor.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def poll(interval: float, stop: threading.Event) -> dict:
    import psutil

    seen: dict[tuple, dict] = {}
    no_pid: dict[tuple, float] = {}
    names: dict[int, tuple[str, str]] = {}
    durations: list[float] = []
    nxt = time.monotonic()
    while not stop.is_set():
        t0 = time.perf_counter()
        now = time.time()
        try:
            conns = psutil.net_connections(kind="inet")
        except psutil.Error:
            conns = []
        for c in conns:
            if not c.laddr:
                continue
            proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            rip, rport = (c.raddr.ip, c.raddr.port) if c.raddr else ("", 0)
            sock = (proto, c.laddr.ip, c.laddr.port, rip, rport)
            if not c.pid:
                no_pid.setdefault(sock, now)
                continue
            k = (*sock, c.pid)
            if k in seen:
                continue
            if c.pid not in names:
                try:
                    p = psutil.Process(c.pid)
                    names[c.pid] = (p.name(), p.username())
                except psutil.Error:
                    names[c.pid] = ("", "")
            name, user = names[c.pid]
            seen[k] = {
                "proto": proto,
                "local_ip": c.laddr.ip,
                "local_port": c.laddr.port,
                "remote_ip": rip,
                "remote_port": rport,
                "pid": c.pid,
                "name": name,
                "user": user,
                "first_seen": now,
                "status": c.status,
            }
        durations.append((time.perf_counter() - t0) * 1e3)
        nxt += interval
        stop.wait(max(0.0, nxt - time.monotonic()))
    durations.sort()
    return {
        "interval_s": interval,
        "seen": list(seen.values()),
        "no_pid": [list(k) + [t] for k, t in no_pid.items()],
        "polls": len(durations),
        "poll_ms_p50": round(durations[len(durations) // 2], 3) if durations else 0.0,
        "poll_ms_max": round(durations[-1], 3) if durations else 0.0,
    }


def main(out: str, interval: float) -> None:
    stop = threading.Event()
    result: dict = {}
    th = threading.Thread(target=lambda: result.update(poll(interval, stop)), daemon=True)
    th.start()
    print("READY", flush=True)
    sys.stdin.readline()
    stop.set()
    th.join(10)
    with open(out, "w") as f:
        json.dump(result, f)


class PollerResult:
    """Lookups into a poller's output: did it name this connection's process?"""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.by_sock: dict[tuple, list[dict]] = {}
        for s in data["seen"]:
            self.by_sock.setdefault((s["proto"], s["local_port"], s["remote_ip"], s["remote_port"]), []).append(s)

    def named(
        self, proto: str, local_port: int, remote_ip: str, remote_port: int, pid: int, name: str, user: str
    ) -> bool:
        """True when a poll saw this connection's socket (connected to the
        remote, or unconnected on the local port, as tftp-hpa's is) owned by
        the right pid, under the right process name and account."""
        for key in ((proto, local_port, remote_ip, remote_port), (proto, local_port, "", 0)):
            for s in self.by_sock.get(key, ()):
                if (s["pid"], s["name"], s["user"]) == (pid, name, user):
                    return True
        return False


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.1)
