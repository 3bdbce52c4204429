"""Real clients run as other local users inside the lab's client namespace.

``ensure_login_users`` creates unprivileged local accounts (with a home: lftp
and smbclient keep state there) if they are missing; ``run_as`` runs one
client command as such a user in a namespace and reports its pid.

The pid: ``ip netns exec`` and ``setpriv`` both *exec* (neither forks), so
the pid of the process we spawn is the pid of the client itself -- the pid
the sensor must report as ``InitiatingProcessId``.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .netns import LabError, _run

__all__ = ["ensure_login_users", "ClientRun", "run_as", "as_user_argv", "chown_tree"]


def ensure_login_users(names: Sequence[str]) -> dict[str, int]:
    """Create the local users *names* (idempotent) with a home; name -> uid."""
    uids = {}
    for name in names:
        try:
            uids[name] = pwd.getpwnam(name).pw_uid
            continue
        except KeyError:
            pass
        cp = _run(
            [
                "useradd",
                "--create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "xfer-sensor lab client user",
                name,
            ],
            check=False,
        )
        if cp.returncode not in (0, 9):  # 9: created meanwhile by someone else
            raise LabError(f"useradd {name}: {cp.stderr.strip()}")
        uids[name] = pwd.getpwnam(name).pw_uid
    return uids


def chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for n in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(n, pw.pw_uid, pw.pw_gid)


def as_user_argv(user: str, argv: Sequence[str]) -> list[str]:
    """*argv* run as *user* (uid, gid and supplementary groups; setpriv execs)."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *map(str, argv)]


def _user_env(user: str) -> dict[str, str]:
    pw = pwd.getpwnam(user)
    return {
        "HOME": pw.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    }


@dataclass
class ClientRun:
    user: str
    argv: list[str]
    pid: int
    returncode: int
    stdout: str
    stderr: str
    t_start: float  # time.time() right before the spawn
    t_end: float  # time.time() right after it was reaped

    @property
    def tool(self) -> str:
        return os.path.basename(self.argv[0])


def run_as(
    ns: str, user: str, argv: Sequence[str], cwd: str | os.PathLike | None = None, timeout: float = 60
) -> ClientRun:
    """Run *argv* as *user* in namespace *ns*, wait for it; its pid is the client's."""
    full = ["ip", "netns", "exec", ns, *as_user_argv(user, argv)]
    pw = pwd.getpwnam(user)
    t0 = time.time()
    p = subprocess.Popen(
        full,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_user_env(user),
        cwd=str(cwd or pw.pw_dir),
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        p.kill()
        out, err = p.communicate()
        raise LabError(f"{' '.join(map(str, argv))} as {user} timed out after {timeout}s: {err[-2000:]}") from e
    return ClientRun(user, list(map(str, argv)), p.pid, p.returncode, out, err, t0, time.time())
