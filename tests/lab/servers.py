"""FTP/FTPS, TFTP and SMB servers inside the lab's server namespace.

Each server gets its configuration and served files in a fresh directory
under the lab's work directory, listens only on ``lab.srv_ip`` and is stopped
by ``stop()`` (or at lab teardown at the latest).

* :class:`Vsftpd` ``port=21``: anonymous read (``/pub``) and upload
  (``/upload``), local users, passive range, explicit TLS allowed but not
  forced, active data from port 20.
* :class:`Vsftpd` ``implicit=True``: the same on 990 with ``implicit_ssl=YES``,
  active data from 989.
* :class:`Tftpd`: tftpd-hpa with ``--create --umask 000``.
* :class:`Smbd`: shares ``public`` (guest), ``private`` (lab users) and
  ``secret`` (xsuser2, ``smb encrypt = required``), on 445 and 139.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import random
import subprocess
from pathlib import Path

from .netns import Lab, LabError, _run

__all__ = ["USERS", "FILES", "ensure_users", "make_file", "make_cert", "sha256", "Vsftpd", "Tftpd", "Smbd"]

# Unix (and Samba) accounts of the lab, with their passwords.
USERS: dict[str, str] = {
    "xsuser1": "Xs1-lab-pass",
    "xsuser2": "Xs2-lab-pass",
}

# Served files: name -> (size, seed).  Contents are seeded pseudo-random bytes,
# so every run produces byte-identical files.
FILES: dict[str, tuple[int, int]] = {
    "tiny.txt": (1000, 1),
    "blk1536.bin": (1536, 2),  # 3 x 512: TFTP ends with an empty DATA block
    "blk4096.bin": (4096, 3),  # 8 x 512 and 4 x 1024 (curl blksize 1024)
    "odd.bin": (123_457, 4),
    "tftp70k.bin": (70_001, 5),
    "a512k.bin": (524_288, 6),  # 512 KiB, a multiple of 512
    "big3m.bin": (3_000_000, 7),  # several MB
}


def make_file(path: Path, size: int, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    os.chmod(path, 0o644)
    return path


def make_files(directory: Path, names: list[str] | None = None) -> dict[str, Path]:
    out = {}
    for name in names or list(FILES):
        size, seed = FILES[name]
        out[name] = make_file(Path(directory) / name, size, seed)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ensure_users(users: dict[str, str] = USERS) -> None:
    """Create the lab's unix users (idempotent) and set their passwords."""
    for name, password in users.items():
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", "-c", "xfer-sensor lab user", name])
        _run(["chpasswd"], input=f"{name}:{password}\n")


def make_cert(directory: Path) -> tuple[Path, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not cert.exists():
        _run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=xfer-sensor-lab",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ]
        )
        os.chmod(key, 0o600)
    return cert, key


class _Server:
    name = "server"

    def __init__(self, lab: Lab, root: Path | None = None):
        self.lab = lab
        self.root = Path(root) if root else Path(lab.workdir) / self.name
        self.proc: subprocess.Popen | None = None
        self.log = self.root / f"{self.name}.out"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _mkdir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        return path

    def _popen(self, argv, new_session: bool = False):
        self._mkdir(self.root)
        logf = open(self.log, "ab")
        try:
            self.proc = self.lab.popen(
                self.lab.srv_ns, argv, new_session=new_session, stdout=logf, stderr=subprocess.STDOUT
            )
        finally:
            logf.close()
        return self.proc

    def _fail(self, exc: Exception):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        self.stop()
        raise LabError(f"{self.name} did not start: {exc}\n{text[-3000:]}") from exc

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Vsftpd(_Server):
    """vsftpd on :21 (explicit TLS allowed) or :990 (``implicit=True``)."""

    def __init__(
        self,
        lab: Lab,
        implicit: bool = False,
        root: Path | None = None,
        pasv_min: int | None = None,
        pasv_max: int | None = None,
    ):
        self.implicit = implicit
        self.name = "vsftpd990" if implicit else "vsftpd21"
        super().__init__(lab, root)
        self.port = 990 if implicit else 21
        self.data_port = 989 if implicit else 20
        self.pasv_min = pasv_min or (30100 if implicit else 30000)
        self.pasv_max = pasv_max or (self.pasv_min + 49)
        self.anon_root = self.root / "anon"
        self.pub = self.anon_root / "pub"
        self.upload = self.anon_root / "upload"
        self.local_root = self.root / "local"

    def start(self) -> Vsftpd:
        ensure_users()
        self._mkdir(self.root)
        self._mkdir(self.anon_root, 0o755)  # vsftpd refuses a writable chroot
        make_files(self._mkdir(self.pub, 0o755))
        self._mkdir(self.upload, 0o777)
        make_files(self._mkdir(self.local_root, 0o777))
        cert, key = make_cert(self.root / "tls")
        conf = self.root / "vsftpd.conf"
        lines = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "background": "NO",
            "listen_address": self.lab.srv_ip,
            "listen_port": self.port,
            "anonymous_enable": "YES",
            "anon_root": self.anon_root,
            "no_anon_password": "YES",
            "anon_upload_enable": "YES",
            "anon_mkdir_write_enable": "NO",
            "anon_umask": "022",
            "write_enable": "YES",
            "local_enable": "YES",
            "local_root": self.local_root,
            "local_umask": "022",
            "userlist_enable": "NO",
            "pam_service_name": "vsftpd",
            "port_enable": "YES",
            "connect_from_port_20": "YES",
            "ftp_data_port": self.data_port,
            "pasv_enable": "YES",
            "pasv_min_port": self.pasv_min,
            "pasv_max_port": self.pasv_max,
            "secure_chroot_dir": "/var/run/vsftpd/empty",
            "seccomp_sandbox": "NO",
            "isolate": "NO",
            "isolate_network": "NO",
            "ssl_enable": "YES",
            "allow_anon_ssl": "YES",
            "force_local_data_ssl": "NO",
            "force_local_logins_ssl": "NO",
            "force_anon_data_ssl": "NO",
            "force_anon_logins_ssl": "NO",
            "require_ssl_reuse": "NO",
            "ssl_ciphers": "HIGH",
            "rsa_cert_file": cert,
            "rsa_private_key_file": key,
            "xferlog_enable": "YES",
            "vsftpd_log_file": self.root / "vsftpd.log",
            "log_ftp_protocol": "YES",
            "dual_log_enable": "NO",
        }
        if self.implicit:
            lines["implicit_ssl"] = "YES"
        conf.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        os.chmod(conf, 0o600)
        Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
        proc = self._popen(["vsftpd", str(conf)])
        try:
            self.lab.wait_listening(self.port, proc=proc)
        except LabError as e:
            self._fail(e)
        return self


class Tftpd(_Server):
    name = "tftpd"

    def __init__(self, lab: Lab, root: Path | None = None):
        super().__init__(lab, root)
        self.dir = self.root / "files"

    def start(self) -> Tftpd:
        self._mkdir(self.root)
        self._mkdir(self.dir, 0o777)
        make_files(self.dir)
        proc = self._popen(
            [
                "in.tftpd",
                "--foreground",
                "--listen",
                "--user",
                "tftp",
                "--address",
                f"{self.lab.srv_ip}:69",
                "--create",
                "--umask",
                "000",
                "--secure",
                "--verbose",
                str(self.dir),
            ]
        )
        try:
            self.lab.wait_listening(69, proto="udp", proc=proc)
        except LabError as e:
            self._fail(e)
        return self


class Smbd(_Server):
    """smbd with shares public (guest), private (users), secret (encrypted)."""

    name = "smbd"

    def __init__(self, lab: Lab, root: Path | None = None, ports: str = "445 139"):
        super().__init__(lab, root)
        self.ports = ports
        self.conf = self.root / "smb.conf"
        self.shares = {n: self.root / "shares" / n for n in ("public", "private", "secret")}

    def start(self) -> Smbd:
        ensure_users()
        r = self.root
        for d in ("private", "lock", "state", "cache", "run", "ncalrpc", "log"):
            self._mkdir(r / d, 0o700 if d == "private" else 0o755)
        self._mkdir(r / "shares")
        for share in self.shares.values():
            self._mkdir(share, 0o777)
            make_files(share, ["tiny.txt", "odd.bin", "a512k.bin", "big3m.bin"])
        self.conf.write_text(f"""[global]
  server role = standalone server
  workgroup = XFERLAB
  netbios name = XSLABSRV
  interfaces = {self.lab.srv_ip}/24
  bind interfaces only = yes
  smb ports = {self.ports}
  private dir = {r}/private
  lock directory = {r}/lock
  state directory = {r}/state
  cache directory = {r}/cache
  pid directory = {r}/run
  ncalrpc dir = {r}/ncalrpc
  log file = {r}/log/log.%m
  log level = 1
  passdb backend = tdbsam:{r}/private/passdb.tdb
  map to guest = Bad User
  guest account = nobody
  server min protocol = SMB2_02
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  unix password sync = no
  dns proxy = no

[public]
  path = {self.shares["public"]}
  guest ok = yes
  read only = no

[private]
  path = {self.shares["private"]}
  valid users = {" ".join(USERS)}
  read only = no

[secret]
  path = {self.shares["secret"]}
  valid users = xsuser2
  read only = no
  smb encrypt = required
""")
        for user, password in USERS.items():
            _run(["smbpasswd", "-c", str(self.conf), "-a", "-s", user], input=f"{password}\n{password}\n")
        # smbd signals its whole process group when it stops: give it its own
        proc = self._popen(
            ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-s", str(self.conf)], new_session=True
        )
        try:
            for port in self.ports.split():
                self.lab.wait_listening(int(port), proc=proc, timeout=20)
        except LabError as e:
            self._fail(e)
        return self
