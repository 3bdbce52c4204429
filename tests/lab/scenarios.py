"""Real client/server scenarios recorded in the lab, with ground truth.

Each scenario runs real clients (curl, lftp, tftp-hpa, smbclient) in the
client namespace against real servers in the server namespace while tcpdump
records the client's veth.  Next to every ``<name>.pcap`` a ``<name>.json``
sidecar states what the clients actually did: every client invocation (tool,
command line, protocol, port, mode, TLS, user), every file moved (name, size,
sha256, direction) -- each checked byte for byte after the run -- and the
TCP/UDP connections that must therefore be on the wire.

``record_all`` makes the committed captures (``pcaps/record_real.py``);
``record_fast`` makes a small fresh one for a test run.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Lab, LabError, require_tools
from .servers import FILES, USERS, Smbd, Tftpd, Vsftpd, make_files, sha256
from .tools import record_ts

__all__ = ["SCENARIOS", "record_all", "record_fast", "Recorder", "CLIENT_TOOLS"]

CLIENT_TOOLS = [
    "ip",
    "tc",
    "tcpdump",
    "tshark",
    "vsftpd",
    "in.tftpd",
    "smbd",
    "smbpasswd",
    "curl",
    "lftp",
    "tftp",
    "smbclient",
    "openssl",
    "ss",
    "useradd",
    "chpasswd",
]

LABDIR = "$LABDIR"
LFTP_COMMON = (
    "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 10; "
    "set net:reconnect-interval-base 1; set xfer:clobber on; "
    "set ssl:verify-certificate no; "
)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Transfer:
    direction: str  # "download" (server -> client) | "upload" (client -> server)
    file: str  # lab file name (tests/lab/servers.py FILES)
    remote_path: str  # path as the client named it
    local_path: Path  # client-side file
    server_path: Path  # server-side file (checked after the run)
    data_port: int | str | None = None  # 20 / 989 (active), "passive", None (in-band)

    def as_json(self, lab: Lab) -> dict:
        size, _seed = FILES[self.file]
        return {
            "direction": self.direction,
            "file": self.file,
            "size": size,
            "sha256": sha256(self.local_path if self.direction == "upload" else self.server_path),
            "remote_path": self.remote_path,
            "client_path": _rel(lab, self.local_path),
            "server_path": _rel(lab, self.server_path),
            "data_connection": self.data_port,
        }


def _rel(lab: Lab, p) -> str:
    return str(p).replace(str(lab.workdir), LABDIR)


@dataclass
class Session:
    tool: str
    argv: list[str]
    protocol: str  # ftp | ftps-explicit | ftps-implicit | tftp | smb
    server_ip: str
    server_port: int
    transport: str = "tcp"
    mode: str = ""
    user: str | None = None
    password: str | None = None
    transfers: list[Transfer] = field(default_factory=list)
    expect: str = "success"  # success | refused | unanswered
    exit_code: int | None = None
    started: str = ""
    ended: str = ""
    os_user: str | None = None  # the local account the client ran as (None: root)
    pid: int | None = None  # the client's pid (known when run as os_user)
    t_start: float = 0.0  # time.time() around the run
    t_end: float = 0.0

    def records(self, connections: Iterable[dict], local_ip: str) -> list[dict]:
        """The sensor's records of this session's own connection (to its
        service port, from *local_ip*; not its data channels): those whose
        first packet lies within the run (runs never overlap; the kernel's
        packet times and ``t_start``/``t_end`` are both CLOCK_REALTIME)."""
        proto = "Udp" if self.transport == "udp" else "Tcp"
        return [
            c
            for c in connections
            if c["Protocol"] == proto
            and c["RemotePort"] == self.server_port
            and c["RemoteIP"] == self.server_ip
            and c["LocalIP"] == local_ip
            and self.t_start <= record_ts(c["FirstSeen"]) <= self.t_end
        ]

    def connections(self) -> list[dict]:
        """Connections this session puts on the wire (by server port)."""
        if self.protocol == "tftp":
            # one request flow to 69 per transfer; the transfer itself runs
            # on a new server port (not tracked in this version)
            out = []
            for _t in self.transfers:
                out.append({"server_port": 69, "transport": "udp", "role": "tftp-request", "originator": "client"})
                out.append(
                    {"server_port": "ephemeral", "transport": "udp", "role": "tftp-transfer", "originator": "client"}
                )
            return out
        out = [
            {
                "server_port": self.server_port,
                "transport": self.transport,
                "role": "control" if self.protocol.startswith("ftp") else "session",
                "originator": "client",
                "result": self.expect,
            }
        ]
        for t in self.transfers:
            if t.data_port in (20, 989):
                out.append(
                    {"server_port": t.data_port, "transport": "tcp", "role": "ftp-data-active", "originator": "server"}
                )
            elif t.data_port == "passive":
                out.append(
                    {"server_port": "passive", "transport": "tcp", "role": "ftp-data-passive", "originator": "client"}
                )
        return out

    def as_json(self, lab: Lab) -> dict:
        return {
            "tool": self.tool,
            "command_line": [_rel(lab, a) for a in self.argv],
            "protocol": self.protocol,
            "server_ip": self.server_ip,
            "server_port": self.server_port,
            "transport": self.transport,
            "mode": self.mode,
            "user": self.user,
            "password": self.password,
            "expect": self.expect,
            "exit_code": self.exit_code,
            "started": self.started,
            "ended": self.ended,
            "os_user": self.os_user,
            "pid": self.pid,
            "transfers": [t.as_json(lab) for t in self.transfers],
            "connections": self.connections(),
        }


class Recorder:
    """Runs client sessions for one scenario and checks what they did."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        servers: dict,
        description: str = "",
        user: str | None = None,
        ns: str | None = None,
    ):
        """``user``: run the clients as this local account (tests/lab/clients.py;
        it must exist) instead of root; each session then records its pid.
        ``ns``: the namespace the clients run in (default the lab's client;
        another host: ``Lab.add_host``)."""
        self.lab = lab
        self.ns = ns or lab.cli_ns
        self.name = name
        self.servers = servers
        self.description = description
        self.user = user
        self.sessions: list[Session] = []
        self.impairment: dict | None = None
        self.dir = Path(lab.workdir) / "client" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files = make_files(self.dir / "src")
        if user is not None:
            from .clients import chown_tree

            (Path(lab.workdir) / "client").chmod(0o755)
            chown_tree(self.dir, user)

    def local(self, name: str) -> Path:
        return self.dir / name

    def run(self, s: Session, timeout: float = 90) -> Session:
        s.started = _now()
        if self.user is None:
            s.t_start = time.time()
            cp = self.lab.run(self.ns, s.argv, check=False, timeout=timeout, cwd=str(self.dir))
            s.t_end = time.time()
        else:
            from .clients import run_as

            cp = run_as(self.ns, self.user, s.argv, cwd=self.dir, timeout=timeout)
            s.os_user, s.pid, s.t_start, s.t_end = self.user, cp.pid, cp.t_start, cp.t_end
        s.ended = _now()
        s.exit_code = cp.returncode
        if s.expect == "success":
            if cp.returncode != 0:
                raise LabError(
                    f"{self.name}: {' '.join(s.argv)} exited {cp.returncode}\n{cp.stdout[-2000:]}\n{cp.stderr[-2000:]}"
                )
            for t in s.transfers:  # tftp-hpa exits 0 on failure: check the bytes
                path = t.local_path if t.direction == "download" else t.server_path
                if not path.exists() or path.read_bytes() != self.files[t.file].read_bytes():
                    raise LabError(
                        f"{self.name}: {t.direction} of {t.file} by {s.tool} did not "
                        f"produce the file at {path}\n{cp.stdout[-2000:]}\n"
                        f"{cp.stderr[-2000:]}"
                    )
        elif cp.returncode == 0:
            raise LabError(f"{self.name}: {' '.join(s.argv)} should have failed ({s.expect})")
        self.sessions.append(s)
        return s

    # -- client helpers ----------------------------------------------------
    def dl(self, name: str, remote: str, server_dir: Path, data_port=None, tag: str = "") -> Transfer:
        return Transfer(
            "download", name, remote, self.local(f"dl_{tag}{name}"), server_dir / Path(remote).name, data_port
        )

    def ul(self, name: str, remote: str, server_dir: Path, data_port=None) -> Transfer:
        return Transfer("upload", name, remote, self.files[name], server_dir / Path(remote).name, data_port)

    def curl_ftp(
        self,
        t: Transfer,
        *,
        scheme: str = "ftp",
        port: int = 21,
        user: str | None = None,
        extra: list[str] = (),
        mode: str = "passive-epsv",
        protocol: str = "ftp",
        server_ip: str | None = None,
        expect: str = "success",
    ) -> Session:
        ip = server_ip or self.lab.srv_ip
        portpart = "" if port == (990 if scheme == "ftps" else 21) else f":{port}"
        url = f"{scheme}://{ip}{portpart}/{t.remote_path.lstrip('/')}"
        argv = ["curl", "-sS", "--max-time", "60", *extra]
        if user:
            argv += ["-u", f"{user}:{USERS[user]}"]
        if t.direction == "download":
            argv += ["-o", str(t.local_path), url]
        else:
            argv += ["-T", str(t.local_path), url]
        return self.run(
            Session(
                "curl",
                argv,
                protocol,
                ip,
                port,
                mode=mode,
                user=user or "anonymous",
                password=USERS.get(user or ""),
                transfers=[t],
                expect=expect,
            )
        )

    def lftp(
        self, transfers: list[Transfer], *, user: str, url: str, port: int, protocol: str, mode: str, settings: str
    ) -> Session:
        cmds = []
        for t in transfers:
            if t.direction == "download":
                cmds.append(f"get {t.remote_path} -o {t.local_path}")
            else:
                cmds.append(f"put {t.local_path} -o {t.remote_path}")
        script = LFTP_COMMON + settings + "; ".join(cmds) + "; bye"
        argv = ["lftp", "-u", f"{user},{USERS[user]}", "-e", script, url]
        return self.run(
            Session(
                "lftp",
                argv,
                protocol,
                self.lab.srv_ip,
                port,
                mode=mode,
                user=user,
                password=USERS[user],
                transfers=transfers,
            )
        )

    def lftp_active(self, transfers: list[Transfer], *, user: str, mode: str = "active-port") -> Session:
        """lftp in active mode (PORT: the server opens the data connections from
        port 20), plain FTP (no AUTH TLS), logged in as lab user *user*."""
        return self.lftp(
            transfers,
            user=user,
            url=f"ftp://{self.lab.srv_ip}",
            port=21,
            protocol="ftp",
            mode=mode,
            settings="set ftp:passive-mode off; set ftp:ssl-allow no; ",
        )

    def tftp_hpa(self, t: Transfer) -> Session:
        if t.direction == "download":
            cmd = ["get", t.remote_path, str(t.local_path)]
        else:
            cmd = ["put", str(t.local_path), t.remote_path]
        argv = ["tftp", "-m", "binary", self.lab.srv_ip, "-c", *cmd]
        return self.run(
            Session(
                "tftp",
                argv,
                "tftp",
                self.lab.srv_ip,
                69,
                transport="udp",
                mode="blksize 512 (no options)",
                transfers=[t],
            )
        )

    def curl_tftp(self, t: Transfer, blksize: int = 1024, extra: list[str] = ()) -> Session:
        url = f"tftp://{self.lab.srv_ip}/{t.remote_path}"
        argv = ["curl", "-sS", "--max-time", "60", "--tftp-blksize", str(blksize), *extra]
        argv += ["-o", str(t.local_path), url] if t.direction == "download" else ["-T", str(t.local_path), url]
        return self.run(
            Session(
                "curl",
                argv,
                "tftp",
                self.lab.srv_ip,
                69,
                transport="udp",
                mode=f"blksize {blksize} (OACK)",
                transfers=[t],
            )
        )

    def smbclient(
        self,
        share: str,
        transfers: list[Transfer],
        *,
        port: int,
        user: str | None,
        extra: list[str] = (),
        mode: str = "",
    ) -> Session:
        cmds = [f"lcd {self.dir}"]
        for t in transfers:
            if t.direction == "download":
                cmds.append(f"get {t.remote_path} {t.local_path.name}")
            else:
                cmds.append(f"put {t.local_path.relative_to(self.dir)} {t.remote_path}")
        conf = self._smb_client_conf()
        argv = ["smbclient", f"//{self.lab.srv_ip}/{share}", "-s", str(conf), "-p", str(port), *extra]
        argv += ["-U", f"{user}%{USERS[user]}"] if user else ["-N"]
        argv += ["-c", "; ".join(cmds)]
        return self.run(
            Session(
                "smbclient",
                argv,
                "smb",
                self.lab.srv_ip,
                port,
                mode=mode,
                user=user or "guest",
                password=USERS.get(user or ""),
                transfers=transfers,
            )
        )

    def _smb_client_conf(self) -> Path:
        conf = Path(self.lab.workdir) / "smbclient.conf"
        if not conf.exists():
            conf.write_text(
                "[global]\n  client min protocol = SMB2_02\n  name resolve order = host\n  workgroup = XFERLAB\n"
            )
        return conf

    def failed_connect(self, ip: str, port: int, expect: str, tool: str = "curl") -> Session:
        """A TCP connection that is refused (RST) or never answered."""
        if tool == "smbclient":
            argv = [
                "smbclient",
                f"//{ip}/public",
                "-s",
                str(self._smb_client_conf()),
                "-p",
                str(port),
                "-N",
                "-c",
                "ls",
            ]
            protocol = "smb"
        else:
            argv = ["curl", "-sS", "--connect-timeout", "2.5", f"ftp://{ip}:{port}/"]
            protocol = "ftp"
        return self.run(Session(tool, argv, protocol, ip, port, expect=expect, mode=f"connect {expect}"), timeout=30)

    def impaired(self, rate: str = "40mbit", burst: str = "6k", limit: str = "6k"):
        """Context: packets lost in the lab's middle (real TCP retransmissions)."""
        rec = self

        class _Ctx:
            def __enter__(self_):
                rec.lab.impair(rate, burst, limit)
                rec.impairment = {
                    "where": "bridge namespace between client and server, both directions, after the capture point",
                    "tc": f"tbf rate {rate} burst {burst} limit {limit}",
                }

            def __exit__(self_, *exc):
                rec.lab.unimpair()

        return _Ctx()

    # -- ground truth --------------------------------------------------------
    def expected_tracked(self, tracked=(20, 21, 69, 139, 445, 990)) -> dict[str, int]:
        c: Counter = Counter()
        for s in self.sessions:
            for conn in s.connections():
                if conn["server_port"] in tracked:
                    c[f"{s.server_ip}:{conn['server_port']}/{conn['transport']}"] += 1
        return dict(sorted(c.items()))

    def sidecar(self, pcap: Path, capture) -> dict:
        return {
            "scenario": self.name,
            "description": self.description,
            "pcap": pcap.name,
            "recorded_by": "pcaps/record_real.py (tests/lab)",
            "client_ip": self.lab.cli_ip,
            "server_ip": self.lab.srv_ip,
            "capture": {
                "tool": "tcpdump -U -s 0",
                "namespace": "client",
                "interface": self.lab.cli_if,
                "packets": capture.captured,
            },
            "tools": _versions(),
            "impairment": self.impairment,
            "sessions": [s.as_json(self.lab) for s in self.sessions],
            "expected_tracked_connections": self.expected_tracked(),
        }


_VERSIONS: dict | None = None


def _versions() -> dict:
    global _VERSIONS
    if _VERSIONS is None:

        def first(argv):
            try:
                cp = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
                return ((cp.stdout or cp.stderr).strip().splitlines() or [""])[0]
            except (OSError, subprocess.TimeoutExpired):
                return ""

        _VERSIONS = {
            "curl": first(["curl", "--version"]),
            "lftp": first(["lftp", "--version"]),
            "smbclient": first(["smbclient", "--version"]),
            "smbd": first(["smbd", "--version"]),
            "tftp": "tftp-hpa " + first(["dpkg-query", "-W", "-f", "${Version}", "tftp-hpa"]),
            "in.tftpd": "tftpd-hpa " + first(["dpkg-query", "-W", "-f", "${Version}", "tftpd-hpa"]),
            "vsftpd": "vsftpd " + first(["dpkg-query", "-W", "-f", "${Version}", "vsftpd"]),
            "tcpdump": first(["tcpdump", "--version"]),
        }
    return _VERSIONS


# ---------------------------------------------------------------------------
# scenarios: fn(rec) runs the sessions; servers are in rec.servers


def sc_ftp_passive_anon(r: Recorder) -> None:
    v = r.servers["ftp21"]
    r.curl_ftp(r.dl("a512k.bin", "pub/a512k.bin", v.pub, "passive", "epsv_"), mode="passive-epsv")
    r.curl_ftp(r.ul("odd.bin", "upload/ftp_passive_anon_epsv.bin", v.upload, "passive"), mode="passive-epsv")
    r.curl_ftp(r.dl("odd.bin", "pub/odd.bin", v.pub, "passive", "pasv_"), mode="passive-pasv", extra=["--disable-epsv"])
    r.curl_ftp(
        r.ul("tiny.txt", "upload/ftp_passive_anon_pasv.txt", v.upload, "passive"),
        mode="passive-pasv",
        extra=["--disable-epsv"],
    )


def sc_ftp_active_local(r: Recorder) -> None:
    v = r.servers["ftp21"]
    r.lftp_active(
        [
            r.dl("a512k.bin", "a512k.bin", v.local_root, 20, "lftp_"),
            r.ul("odd.bin", "ftp_active_local_lftp.bin", v.local_root, 20),
        ],
        user="xsuser1",
    )
    r.curl_ftp(
        r.dl("odd.bin", "odd.bin", v.local_root, 20, "curl_"), user="xsuser1", mode="active-eprt", extra=["-P", "-"]
    )
    r.curl_ftp(
        r.ul("tiny.txt", "ftp_active_local_curl.txt", v.local_root, 20),
        user="xsuser1",
        mode="active-eprt",
        extra=["-P", "-"],
    )


def sc_ftps_explicit(r: Recorder) -> None:
    v = r.servers["ftp21"]
    # curl --ssl-reqd: AUTH SSL, then PBSZ/PROT P; passive (EPSV) data over TLS
    r.curl_ftp(
        r.dl("a512k.bin", "a512k.bin", v.local_root, "passive", "curl_"),
        user="xsuser1",
        protocol="ftps-explicit",
        mode="passive-epsv AUTH SSL",
        extra=["--ssl-reqd", "-k"],
    )
    r.curl_ftp(
        r.ul("odd.bin", "ftps_explicit_curl.bin", v.local_root, "passive"),
        user="xsuser1",
        protocol="ftps-explicit",
        mode="passive-epsv AUTH SSL",
        extra=["--ssl-reqd", "-k"],
    )
    # lftp given a plain ftp:// URL upgrades itself (AUTH TLS) because the server offers it
    r.lftp(
        [
            r.dl("odd.bin", "odd.bin", v.local_root, "passive", "lftp_"),
            r.ul("tiny.txt", "ftps_explicit_lftp.txt", v.local_root, "passive"),
        ],
        user="xsuser2",
        url=f"ftp://{r.lab.srv_ip}",
        port=21,
        protocol="ftps-explicit",
        mode="passive AUTH TLS (lftp upgrades by itself)",
        settings="",
    )


def sc_ftps_implicit(r: Recorder) -> None:
    v = r.servers["ftp990"]
    r.curl_ftp(
        r.dl("a512k.bin", "pub/a512k.bin", v.pub, "passive", "curl_"),
        scheme="ftps",
        port=990,
        protocol="ftps-implicit",
        mode="passive-epsv",
        extra=["-k"],
    )
    r.curl_ftp(
        r.ul("odd.bin", "upload/ftps_implicit_curl.bin", v.upload, "passive"),
        scheme="ftps",
        port=990,
        protocol="ftps-implicit",
        mode="passive-epsv",
        extra=["-k"],
    )
    # active mode over TLS (curl 7.88 cannot: 'sa_addr inet_ntop() failed'): lftp,
    # data connections from the server's port 989
    r.lftp(
        [
            r.dl("odd.bin", "odd.bin", v.local_root, 989, "lftp_"),
            r.ul("tiny.txt", "ftps_implicit_lftp.txt", v.local_root, 989),
        ],
        user="xsuser1",
        url=f"ftps://{r.lab.srv_ip}:990",
        port=990,
        protocol="ftps-implicit",
        mode="active-port (data from 989)",
        settings="set ftp:passive-mode off; ",
    )


def sc_tftp(r: Recorder) -> None:
    d = r.servers["tftp"].dir
    r.tftp_hpa(r.dl("blk1536.bin", "blk1536.bin", d, tag="hpa_"))  # 3 blocks + empty one
    r.tftp_hpa(r.ul("blk4096.bin", "tftp_put_hpa.bin", d))  # 8 blocks + empty one
    r.curl_tftp(r.dl("tftp70k.bin", "tftp70k.bin", d, tag="curl_"))  # OACK, blksize 1024
    r.curl_tftp(r.ul("blk4096.bin", "tftp_put_curl.bin", d))  # OACK, 4 x 1024 + empty


def sc_smb445(r: Recorder) -> None:
    sh = r.servers["smb"].shares["private"]
    r.smbclient(
        "private",
        [r.dl("big3m.bin", "big3m.bin", sh), r.ul("odd.bin", "smb445_put.bin", sh)],
        port=445,
        user="xsuser1",
        mode="SMB3, NTLMSSP user",
    )


def sc_smb139(r: Recorder) -> None:
    sh = r.servers["smb"].shares["public"]
    r.smbclient(
        "public",
        [r.dl("a512k.bin", "a512k.bin", sh), r.ul("odd.bin", "smb139_put.bin", sh)],
        port=139,
        user=None,
        mode="NetBIOS session service, SMB3, guest",
    )


def sc_smb_encrypted(r: Recorder) -> None:
    sh = r.servers["smb"].shares["secret"]
    r.smbclient(
        "secret",
        [r.dl("a512k.bin", "a512k.bin", sh), r.ul("odd.bin", "smb_encrypted_put.bin", sh)],
        port=445,
        user="xsuser2",
        extra=["--client-protection=encrypt"],
        mode="SMB3 encryption (client requires it; share has smb encrypt = required)",
    )


def sc_ftp_repeated(r: Recorder) -> None:
    v = r.servers["ftp21"]
    for i in range(5):
        r.curl_ftp(r.dl("tiny.txt", "pub/tiny.txt", v.pub, "passive", f"rep{i}_"), mode="passive-epsv")


def sc_ftp_lossy(r: Recorder) -> None:
    v = r.servers["ftp21"]
    with r.impaired():
        r.lftp_active(
            [
                r.dl("a512k.bin", "a512k.bin", v.local_root, 20, "lftp_"),
                r.ul("a512k.bin", "ftp_lossy_lftp.bin", v.local_root, 20),
            ],
            user="xsuser1",
            mode="active-port, lossy path",
        )


def sc_smb_lossy(r: Recorder) -> None:
    sh = r.servers["smb"].shares["private"]
    with r.impaired():
        r.smbclient(
            "private",
            [r.dl("a512k.bin", "a512k.bin", sh), r.ul("a512k.bin", "smb_lossy_put.bin", sh)],
            port=445,
            user="xsuser2",
            mode="SMB3, NTLMSSP user, lossy path",
        )


SCENARIOS: dict[str, tuple[Callable[[Recorder], None], str]] = {
    "ftp_passive_anon": (sc_ftp_passive_anon, "anonymous FTP with curl: EPSV and PASV (--disable-epsv), get and put"),
    "ftp_active_local": (
        sc_ftp_active_local,
        "local-user FTP in active mode: lftp PORT and curl -P - EPRT, get and put; data connections from server port 20",
    ),
    "ftps_explicit": (
        sc_ftps_explicit,
        "explicit FTPS on 21: curl --ssl-reqd (AUTH SSL) and lftp upgrading a plain session (AUTH TLS)",
    ),
    "ftps_implicit": (
        sc_ftps_implicit,
        "implicit FTPS on 990: curl ftps:// passive; lftp ftps:// active with data from 989",
    ),
    "tftp": (
        sc_tftp,
        "tftp-hpa get/put (blksize 512, files that are multiples of 512) and curl tftp:// with --tftp-blksize 1024 (OACK)",
    ),
    "smb445": (sc_smb445, "smbclient on 445 with a user: get 3 MB, put 120 kB"),
    "smb139": (sc_smb139, "smbclient -p 139 (NetBIOS session service) as guest: get and put"),
    "smb_encrypted": (sc_smb_encrypted, "smbclient with SMB3 encryption to the encrypted share: get and put"),
    "ftp_repeated": (sc_ftp_repeated, "5 separate anonymous curl FTP sessions to the same server (threshold alert)"),
    "ftp_lossy": (
        sc_ftp_lossy,
        "lftp active get and put of 512 KiB over a lossy path: real TCP retransmissions on port 20",
    ),
    "smb_lossy": (sc_smb_lossy, "smbclient get and put of 512 KiB on 445 over a lossy path: real TCP retransmissions"),
}


def record_all(
    out_dir: Path,
    names: list[str] | None = None,
    prefix: str = "xs",
    subnet: str = "10.77.0",
    verify: bool = True,
    log=print,
) -> list[dict]:
    """Record every scenario (or *names*) into *out_dir*: <name>.pcap + <name>.json."""
    require_tools(CLIENT_TOOLS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = names or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios: {sorted(unknown)}")
    results = []
    with Lab(prefix=prefix, subnet=subnet, middle=True) as lab:
        servers = {
            "ftp21": Vsftpd(lab).start(),
            "ftp990": Vsftpd(lab, implicit=True).start(),
            "tftp": Tftpd(lab).start(),
            "smb": Smbd(lab).start(),
        }
        for name in names:
            fn, desc = SCENARIOS[name]
            log(f"recording {name} ...")
            results.append(_record_one(lab, servers, name, fn, desc, out_dir, verify))
        for s in servers.values():
            s.stop()
    return results


def _record_one(lab, servers, name, fn, desc, out_dir: Path, verify: bool) -> dict:
    rec = Recorder(lab, name, servers, desc)
    pcap = out_dir / f"{name}.pcap"
    with lab.capture(pcap) as cap:
        fn(rec)
    side = rec.sidecar(pcap, cap)
    if verify:
        check_capture(pcap, side)
    (out_dir / f"{name}.json").write_text(json.dumps(side, indent=2) + "\n")
    return side


def check_capture(pcap: Path, side: dict) -> None:
    """The capture must hold exactly the tracked connections the sidecar says."""
    from .oracle import conversations, truncated_frames

    cut = truncated_frames(pcap)
    if cut:
        raise LabError(f"{pcap.name}: {cut} frames truncated by the snaplen")
    seen: Counter = Counter()
    for c in conversations(pcap):
        srv = c.b if c.a[0] == side["client_ip"] else c.a
        port = srv[1] if srv[1] in (20, 21, 69, 139, 445, 990) else None
        if port is None:
            continue
        seen[f"{srv[0]}:{port}/{c.proto}"] += 1
    if dict(seen) != side["expected_tracked_connections"]:
        raise LabError(
            f"{pcap.name}: tracked connections on the wire {dict(sorted(seen.items()))} "
            f"!= ground truth {side['expected_tracked_connections']}"
        )


def sc_fast(r: Recorder) -> None:
    """A quick mix for a test run: passive, active, refused and unanswered."""
    v = r.servers["ftp21"]
    lab = r.lab
    r.curl_ftp(r.dl("odd.bin", "pub/odd.bin", v.pub, "passive", "epsv_"), mode="passive-epsv")
    r.curl_ftp(
        r.ul("tiny.txt", "upload/fast_pasv.txt", v.upload, "passive"), mode="passive-pasv", extra=["--disable-epsv"]
    )
    r.lftp_active(
        [r.dl("a512k.bin", "a512k.bin", v.local_root, 20, "lftp_"), r.ul("odd.bin", "fast_lftp.bin", v.local_root, 20)],
        user="xsuser1",
    )
    r.curl_ftp(
        r.dl("tiny.txt", "tiny.txt", v.local_root, 20, "eprt_"), user="xsuser1", mode="active-eprt", extra=["-P", "-"]
    )
    r.failed_connect(lab.srv_ip, 445, "refused", tool="smbclient")  # smbd not started
    r.failed_connect(lab.refuse_ip, 21, "refused")  # nothing listens there
    r.failed_connect(lab.blackhole_ip, 21, "unanswered")  # replies blackholed
    with r.impaired():  # real retransmissions
        r.lftp_active(
            [
                r.dl("a512k.bin", "a512k.bin", v.local_root, 20, "lossy_"),
                r.ul("a512k.bin", "fast_lossy.bin", v.local_root, 20),
            ],
            user="xsuser2",
            mode="active-port, lossy path",
        )


def record_fast(out_dir: Path, name: str = "fast", prefix: str = "xt", subnet: str = "10.77.1") -> dict:
    """Record a fresh small capture (vsftpd on 21 only, no smbd) into
    *out_dir*/<name>.pcap with its sidecar; returns the sidecar."""
    require_tools(CLIENT_TOOLS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Lab(prefix=prefix, subnet=subnet, middle=True) as lab:
        servers = {"ftp21": Vsftpd(lab).start()}
        side = _record_one(
            lab,
            servers,
            name,
            sc_fast,
            "fresh test-time capture: curl passive (EPSV, PASV), lftp PORT, "
            "curl EPRT, refused 445 (no smbd), refused 21 on an address with "
            "no listener, unanswered SYNs (replies blackholed), lftp PORT "
            "over a lossy path (retransmissions)",
            out_dir,
            False,
        )
        servers["ftp21"].stop()
    return side
