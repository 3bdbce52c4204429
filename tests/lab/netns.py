"""Two-namespace network lab: a client and a server joined by a veth pair.

Everything here is plain Python (no pytest) so that both the tests and
``pcaps/record_real.py`` can use it.  It needs root, ``ip`` (iproute2) and,
for captures, ``tcpdump``.

Safety: the namespaces have no default route and no interface other than
``lo`` and their end of the veth pair, so nothing sent inside them can reach
any address outside the lab.

Addresses (``subnet`` = "10.77.0" by default, a /24):

* ``.1``  client namespace (``<prefix>-cli``)
* ``.2``  server namespace (``<prefix>-srv``): the servers listen here only
* ``.3``  also on the server, nothing listens there: a SYN gets an RST
* ``.4``  also on the server, but every reply from it is routed into a
  blackhole: a SYN is never answered (no nft/iptables needed)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["Lab", "Capture", "LabError", "require_tools"]


class LabError(RuntimeError):
    """The lab could not be built or a lab command failed."""


def require_tools(names: Iterable[str]) -> None:
    """Raise LabError naming every tool in *names* that is not installed."""
    missing = [
        n
        for n in names
        if shutil.which(n) is None and not Path("/usr/sbin", n).exists() and not Path("/sbin", n).exists()
    ]
    if missing:
        raise LabError(
            "lab tools missing: "
            + ", ".join(missing)
            + " (install the Debian packages: tshark tcpdump vsftpd tftpd-hpa "
            "tftp-hpa samba smbclient lftp curl openssl iproute2)"
        )
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, servers on ports < 1024)")


def _run(argv: Sequence[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 30)
    cp = subprocess.run(list(argv), **kw)
    if check and cp.returncode != 0:
        raise LabError(
            f"command failed ({cp.returncode}): {' '.join(map(str, argv))}\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
        )
    return cp


class Lab:
    """Client/server namespace pair.  Use as a context manager.

    ``prefix`` names the namespaces and interfaces (keep it <= 8 characters),
    ``subnet`` is the first three octets of a private /24 used only inside
    the lab.  Parallel labs need distinct prefixes and subnets.
    """

    def __init__(
        self,
        prefix: str = "xs",
        subnet: str = "10.77.0",
        workdir: str | os.PathLike | None = None,
        middle: bool = False,
    ):
        if len(prefix) > 8 or not prefix.replace("-", "").isalnum():
            raise ValueError("prefix must be short and alphanumeric")
        octets = subnet.split(".")
        if len(octets) != 3 or not all(o.isdigit() and 0 <= int(o) < 256 for o in octets):
            raise ValueError("subnet must look like '10.77.0'")
        if octets[0] != "10":
            raise ValueError("use a 10.x.y private subnet for the lab")
        self.prefix = prefix
        self.subnet = subnet
        self.cli_ns = f"{prefix}-cli"
        self.srv_ns = f"{prefix}-srv"
        self.cli_if = f"{prefix}-c0"
        self.srv_if = f"{prefix}-s0"
        # middle=True: a third namespace bridges the two veth pairs, so that
        # impair() can drop forwarded packets *after* the client's capture
        # point (a local qdisc cannot: TCP small queues throttle the sender
        # instead of losing packets), which gives real retransmissions
        self.middle = middle
        self.mid_ns = f"{prefix}-mid"
        self.mid_cli_if = f"{prefix}-mc"
        self.mid_srv_if = f"{prefix}-ms"
        self.cli_ip = f"{subnet}.1"
        self.srv_ip = f"{subnet}.2"
        self.refuse_ip = f"{subnet}.3"
        self.blackhole_ip = f"{subnet}.4"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self._procs: list[tuple[subprocess.Popen, bool]] = []
        self._up = False
        self.extra_ns: list[str] = []  # add_host() / add_span() namespaces
        self.bridge_ports: list[str] = []  # the hosts' ports on the middle bridge (middle=True)
        self.span_mid_if = f"{prefix}-msp"  # add_span(): the mirror's target in the middle namespace

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Lab:
        self.setup()
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def setup(self) -> None:
        require_tools(["ip"])
        if self.workdir is None:
            import tempfile

            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-lab-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # servers drop privileges (ftp, tftp, nobody, lab users): let them traverse
        os.chmod(self.workdir, 0o755)
        # a namespace of ours left behind by a crashed run: remove it first
        for ns in self._all_ns():
            if ns in self.namespaces():
                self._kill_ns_pids(ns)
                _run(["ip", "netns", "del", ns], check=False)
        try:
            self._up = True
            _run(["ip", "netns", "add", self.cli_ns])
            _run(["ip", "netns", "add", self.srv_ns])
            if self.middle:
                m = self.mid_ns
                _run(["ip", "netns", "add", m])
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        self.cli_if,
                        "netns",
                        self.cli_ns,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        self.mid_cli_if,
                        "netns",
                        m,
                    ]
                )
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        self.srv_if,
                        "netns",
                        self.srv_ns,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        self.mid_srv_if,
                        "netns",
                        m,
                    ]
                )
                _run(["ip", "-n", m, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"])
                _run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        m,
                        "sh",
                        "-c",
                        "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; "
                        "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
                    ],
                    check=False,
                )
                for ifc in (self.mid_cli_if, self.mid_srv_if):
                    self._bridge(ifc)
                _run(["ip", "-n", m, "link", "set", "br0", "up"])
            else:
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        self.cli_if,
                        "netns",
                        self.cli_ns,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        self.srv_if,
                        "netns",
                        self.srv_ns,
                    ]
                )
            for ns, ifc, ips in (
                (self.cli_ns, self.cli_if, [self.cli_ip]),
                (self.srv_ns, self.srv_if, [self.srv_ip, self.refuse_ip, self.blackhole_ip]),
            ):
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
                # IPv4 only: no router solicitations / MLD chatter in the captures
                _run(
                    ["ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{ifc}/disable_ipv6"],
                    check=False,
                )
                for ip in ips:
                    _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifc])
                # no TSO/GSO super-packets: the capture shows wire-sized frames
                _run(["ip", "-n", ns, "link", "set", ifc, "gso_max_size", "1500", "gso_max_segs", "1"], check=False)
                _run(["ip", "-n", ns, "link", "set", ifc, "up"])
            # replies sourced from blackhole_ip go nowhere: SYNs to it stay unanswered
            _run(["ip", "-n", self.srv_ns, "route", "add", "blackhole", "default", "table", "77"])
            _run(["ip", "-n", self.srv_ns, "rule", "add", "from", self.blackhole_ip, "table", "77", "priority", "100"])
            self._wait_link()
        except Exception:
            self.teardown()
            raise

    def _bridge(self, ifc: str) -> None:
        """Make *ifc* (in the middle namespace) a port of the bridge."""
        m = self.mid_ns
        _run(["ip", "-n", m, "link", "set", ifc, "master", "br0"])
        _run(["ip", "-n", m, "link", "set", ifc, "gso_max_size", "1500", "gso_max_segs", "1"], check=False)
        _run(["ip", "-n", m, "link", "set", ifc, "up"])
        self.bridge_ports.append(ifc)

    def _veth_to_mid(self, ns: str, ifc: str, mid_if: str) -> None:
        """A new namespace *ns* joined to the middle namespace by a veth pair
        (*ifc* in *ns*, *mid_if* in the middle); IPv6 off, GSO off, both up."""
        if not self.middle or not self._up:
            raise LabError("more hosts need a set-up Lab(middle=True)")
        if len(ifc) > 15 or len(mid_if) > 15:
            raise ValueError("interface names are at most 15 characters")
        if ns in self.namespaces():
            self._kill_ns_pids(ns)
            _run(["ip", "netns", "del", ns], check=False)
        self.extra_ns.append(ns)
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", ifc, "netns", ns, "type", "veth", "peer", "name", mid_if, "netns", self.mid_ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(
            ["ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{ifc}/disable_ipv6"],
            check=False,
        )
        _run(["ip", "-n", ns, "link", "set", ifc, "gso_max_size", "1500", "gso_max_segs", "1"], check=False)
        _run(["ip", "-n", ns, "link", "set", ifc, "up"])

    def add_host(self, name: str, ip: str) -> tuple[str, str]:
        """Another host on the middle bridge (``Lab(middle=True)``, after
        setup): namespace ``<prefix>-<name>`` with interface ``<prefix>-<name>0``
        holding *ip*/24 (an address of the lab's subnet other than .1-.4).
        Returns (namespace, interface)."""
        ns, ifc, mid_if = f"{self.prefix}-{name}", f"{self.prefix}-{name}0", f"{self.prefix}-m{name}"
        if not ip.startswith(self.subnet + ".") or ip in (self.cli_ip, self.srv_ip, self.refuse_ip, self.blackhole_ip):
            raise ValueError(f"{ip}: use a free address of {self.subnet}.0/24")
        self._veth_to_mid(ns, ifc, mid_if)
        _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifc])
        self._bridge(mid_if)
        self._wait_link(ns, ifc)
        return ns, ifc

    def add_span(self, name: str = "sen") -> tuple[str, str]:
        """A span (mirror) port: namespace ``<prefix>-<name>`` whose interface
        ``<prefix>-sp`` (no address) receives what ``mirror`` copies to its
        peer ``<prefix>-msp`` in the middle namespace (not a bridge port: the
        switch forwards nothing else there). Returns (namespace, interface)."""
        ns, ifc = f"{self.prefix}-{name}", f"{self.prefix}-sp"
        self._veth_to_mid(ns, ifc, self.span_mid_if)
        _run(["ip", "-n", self.mid_ns, "link", "set", self.span_mid_if, "up"])
        self._wait_link(ns, ifc)
        return ns, ifc

    def mirror(self, ports: Sequence[str], direction: str = "ingress") -> None:
        """Copy every frame of the bridge *ports* (their *direction*: what
        enters the switch there, or what leaves it) to the span port
        (``add_span``): ``tc qdisc add dev P clsact`` and ``tc filter add dev
        P <direction> matchall action mirred egress mirror dev <span>``; a
        kernel without cls_matchall gets the same from ``protocol all u32
        match u32 0 0`` (a match on zero bits: every frame)."""
        if direction not in ("ingress", "egress"):
            raise ValueError("direction is ingress or egress")
        m, span = self.mid_ns, self.span_mid_if
        action = ["action", "mirred", "egress", "mirror", "dev", span]
        for p in ports:
            _run(["tc", "-n", m, "qdisc", "replace", "dev", p, "clsact"])
            cp = _run(["tc", "-n", m, "filter", "add", "dev", p, direction, "matchall", *action], check=False)
            if cp.returncode != 0:
                _run(
                    ["tc", "-n", m, "filter", "add", "dev", p, direction, "protocol", "all"]
                    + ["u32", "match", "u32", "0", "0", *action]
                )

    def _wait_link(self, ns: str | None = None, ifc: str | None = None, timeout: float = 5.0) -> None:
        ns, ifc = ns or self.cli_ns, ifc or self.cli_if
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cp = _run(["ip", "-n", ns, "-o", "link", "show", ifc], check=False)
            if "LOWER_UP" in cp.stdout and "state UP" in cp.stdout:
                return
            time.sleep(0.05)
        raise LabError(f"veth {ifc} did not come up")

    def teardown(self) -> None:
        for p, group in reversed(self._procs):
            self.stop(p, group=group)
        self._procs.clear()
        if self._up:
            for ns in self._all_ns():
                if ns in self.namespaces():
                    self._kill_ns_pids(ns)
                    _run(["ip", "netns", "del", ns], check=False)
            self._up = False
        if self._own_workdir and self.workdir is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _all_ns(self) -> list[str]:
        return [self.cli_ns, self.srv_ns] + ([self.mid_ns] if self.middle else []) + self.extra_ns

    def impair(self, rate: str = "40mbit", burst: str = "6k", limit: str = "6k") -> None:
        """Lose packets in the middle (needs middle=True): a token bucket with a
        small queue on both bridge ports drops bursts of forwarded packets,
        past the client's capture point, so TCP really retransmits."""
        if not self.middle:
            raise LabError("impair() needs Lab(middle=True)")
        for ifc in (self.mid_cli_if, self.mid_srv_if):
            _run(
                [
                    "tc",
                    "-n",
                    self.mid_ns,
                    "qdisc",
                    "replace",
                    "dev",
                    ifc,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    burst,
                    "limit",
                    limit,
                ]
            )

    def unimpair(self) -> None:
        if self.middle:
            for ifc in (self.mid_cli_if, self.mid_srv_if):
                _run(["tc", "-n", self.mid_ns, "qdisc", "del", "dev", ifc, "root"], check=False)

    @staticmethod
    def namespaces() -> set[str]:
        cp = _run(["ip", "netns", "list"], check=False)
        return {line.split()[0] for line in cp.stdout.splitlines() if line.strip()}

    @staticmethod
    def _kill_ns_pids(ns: str) -> None:
        """End processes still inside one of *our* namespaces (by pid)."""
        cp = _run(["ip", "netns", "pids", ns], check=False)
        pids = [int(x) for x in cp.stdout.split() if x.isdigit()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    alive.append(pid)
                except ProcessLookupError:
                    pass
            if not alive:
                return
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(_pid_alive(p) for p in alive):
                time.sleep(0.05)
            pids = [p for p in alive if _pid_alive(p)]

    # -- running things ----------------------------------------------------
    def ns_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *map(str, argv)]

    def run(
        self, ns: str, argv: Sequence[str], check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        """Run *argv* inside namespace *ns* and wait for it."""
        return _run(self.ns_argv(ns, argv), check=check, timeout=timeout, **kw)

    def popen(self, ns: str, argv: Sequence[str], new_session: bool = False, **kw) -> subprocess.Popen:
        """Start *argv* inside *ns*; it is stopped at teardown at the latest.

        ``new_session=True`` starts it under setsid (its own process group),
        and stop() then signals the whole group: needed for smbd, which
        signals its process group when it stops.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.ns_argv(ns, argv), start_new_session=new_session, **kw)
        self._procs.append((p, new_session))
        return p

    def stop(
        self, p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0, group: bool | None = None
    ) -> int | None:
        if group is None:
            group = next((g for q, g in self._procs if q is p), False)
        if p.poll() is None:
            try:
                if group:
                    os.killpg(p.pid, sig)
                else:
                    p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    if group:
                        os.killpg(p.pid, signal.SIGKILL)
                    else:
                        p.kill()
                except ProcessLookupError:
                    pass
                p.wait(5)
        elif group:
            # the leader is gone; children of its group may not be
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._procs = [(q, g) for q, g in self._procs if q is not p]
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return p.returncode

    def cli(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return self.run(self.cli_ns, argv, **kw)

    def srv(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return self.run(self.srv_ns, argv, **kw)

    def wait_listening(
        self,
        port: int,
        proto: str = "tcp",
        ip: str | None = None,
        timeout: float = 10.0,
        proc: subprocess.Popen | None = None,
    ) -> None:
        """Poll the server namespace's socket table until *port* listens."""
        ip = ip or self.srv_ip
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LabError(f"server exited ({proc.returncode}) before listening on {port}/{proto}")
            cp = self.srv(["ss", flag], check=False)
            for line in cp.stdout.splitlines():
                cols = line.split()
                if len(cols) >= 4 and cols[3] in (f"{ip}:{port}", f"0.0.0.0:{port}", f"*:{port}"):
                    return
            time.sleep(0.05)
        raise LabError(f"nothing listening on {ip}:{port}/{proto} after {timeout}s")

    def capture(self, pcap: str | os.PathLike, bpf: str | None = None) -> Capture:
        """A tcpdump capture on the client's veth (use as context manager)."""
        return Capture(self, pcap, bpf=bpf)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
    return True


class Capture:
    """tcpdump writing a pcap in the client namespace.

    start() returns once tcpdump prints 'listening on'; stop() waits a little
    (so the last FIN/ACK/RST are on the wire), sends SIGINT, waits for the
    process and checks that the kernel dropped nothing.  ``-U`` writes every
    packet as it arrives.
    """

    def __init__(
        self,
        lab: Lab,
        pcap: str | os.PathLike,
        bpf: str | None = None,
        iface: str | None = None,
        ns: str | None = None,
        snaplen: int = 4096,
        buffer_kib: int = 65536,
    ):
        self.lab = lab
        self.pcap = Path(pcap)
        self.bpf = bpf
        self.iface = iface or lab.cli_if
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self.ns = ns or lab.cli_ns
        self.proc: subprocess.Popen | None = None
        self._stderr: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self.captured: int | None = None
        self.received: int | None = None
        self.dropped: int | None = None

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stop(check=exc_type is None)

    def start(self, timeout: float = 10.0) -> None:
        require_tools(["tcpdump"])
        self.pcap.parent.mkdir(parents=True, exist_ok=True)
        if self.pcap.exists():
            self.pcap.unlink()
        # --immediate-mode: without it libpcap hands packets over in ring-buffer
        # blocks, and those still in the ring at SIGINT are lost.  In immediate
        # mode every ring slot is snaplen long: keep snaplen small (the lab's
        # frames are at most 1514 bytes, GSO is off) and the ring large, or
        # the kernel drops packets of a fast transfer.
        argv = [
            "tcpdump",
            "-n",
            "-U",
            "--immediate-mode",
            "-B",
            str(self.buffer_kib),
            "-s",
            str(self.snaplen),
            "-Z",
            "root",
            "-i",
            self.iface,
            "-w",
            str(self.pcap),
        ]
        if self.bpf:
            argv.append(self.bpf)
        self.proc = self.lab.popen(self.ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout):
            self.lab.stop(self.proc, signal.SIGKILL)
            raise LabError("tcpdump did not start listening: " + "".join(self._stderr))

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            if "listening on" in line:
                self._listening.set()
        self._listening.set()  # EOF: let start() notice the failure

    def stop(self, settle: float = 0.5, check: bool = True) -> Path:
        if self.proc is None:
            return self.pcap
        time.sleep(settle)
        rc = self.lab.stop(self.proc, signal.SIGINT, timeout=10)
        if self._reader is not None:
            self._reader.join(5)
        text = "".join(self._stderr)
        for line in text.splitlines():
            words = line.split()
            if line.endswith("packets captured"):
                self.captured = int(words[0])
            elif line.endswith("packets received by filter"):
                self.received = int(words[0])
            elif line.endswith("packets dropped by kernel"):
                self.dropped = int(words[0])
        self.proc = None
        if check:
            if rc not in (0, -signal.SIGINT):
                raise LabError(f"tcpdump exited {rc}: {text}")
            if self.dropped:
                raise LabError(f"tcpdump: {self.dropped} packets dropped by kernel")
            if self.captured is None or self.captured != self.received:
                raise LabError(
                    f"tcpdump: captured {self.captured} of {self.received} packets received by filter: {text}"
                )
            if not self.pcap.exists() or self.pcap.stat().st_size <= 24:
                raise LabError(f"capture {self.pcap} is empty: {text}")
        return self.pcap
