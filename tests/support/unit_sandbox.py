"""Run a command under the restrictions of systemd/xfer-sensor.service without
systemd (PID 1 here is not systemd, so no ``systemd-run``): the seccomp
filters systemd would install, built with libseccomp through ctypes, and the
namespaces and credentials via ``unshare``/``setpriv`` (``command()``).

What each unit line becomes (``command()`` + ``main()``):

- ``SystemCallFilter=@system-service``: an allow list of the group as this
  machine's ``systemd-analyze syscall-filter`` expands it; anything else kills
  the process (SIGSYS), systemd's default action.
- ``SystemCallArchitectures=native``: the filter holds the native architecture
  only (libseccomp's default); a call through another ABI kills the process.
- ``MemoryDenyWriteExecute``: mmap with PROT_WRITE|PROT_EXEC, mprotect and
  pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC (systemd's rules); here
  they *kill* the process instead of systemd's EPERM, so a library that tried
  W+X memory and coped with EPERM would still be seen.
- ``RestrictRealtime``: sched_setscheduler to SCHED_FIFO/RR/DEADLINE -> EPERM.
- ``RestrictSUIDSGID``: chmod/fchmod/fchmodat and open/openat/creat with
  S_ISUID or S_ISGID -> EPERM.
- ``ProtectClock``: clock_settime, clock_adjtime, adjtimex, settimeofday ->
  EPERM (and no /dev/rtc: ``PrivateDevices``).
- ``ProtectHostname``: a UTS namespace, sethostname/setdomainname -> EPERM.
- ``ProtectKernelLogs``: syslog(2) -> EPERM, /proc/kmsg covered, no /dev/kmsg.
- ``PrivateDevices``: a /dev with null, zero, full, random, urandom, tty and
  an empty shm only; CAP_MKNOD and CAP_SYS_RAWIO out of the bounding set.
- ``PrivateMounts``: the mount namespace, propagation private.
- ``UMask=0027``: the umask.
- ``NoNewPrivileges``, ``User``, ``AmbientCapabilities``,
  ``CapabilityBoundingSet``: setpriv.

Usage: ``python -m tests.support.unit_sandbox SPEC.json -- ARGV...`` (run by
``command()``'s shell, as the unprivileged user): installs the filters, execs ARGV.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ACT_KILL_PROCESS = 0x80000000
ACT_ALLOW = 0x7FFF0000
CMP_EQ, CMP_MASKED_EQ = 4, 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT = 0o100
SCHED_FIFO, SCHED_RR, SCHED_DEADLINE, SCHED_RESET_ON_FORK = 1, 2, 6, 0x40000000


def ACT_ERRNO(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: group -> its entries (names and @groups)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in text.splitlines():
        if re.match(r"^@[a-z-]+$", line):
            cur = groups.setdefault(line, [])
        elif cur is not None and line.startswith("    ") and not line.strip().startswith("#"):
            cur.append(line.strip())
        elif not line.strip():
            cur = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> list[str]:
    out: set[str] = set()
    todo = list(names)
    seen: set[str] = set()
    while todo:
        n = todo.pop()
        if n.startswith("@"):
            if n not in seen:
                seen.add(n)
                todo.extend(groups[n])
        else:
            out.add(n)
    return sorted(out)


def unit_allow_list(unit_text: str) -> list[str]:
    """The system calls the unit's ``SystemCallFilter=`` lines allow."""
    entries = []
    for m in re.finditer(r"^SystemCallFilter=(.*)$", unit_text, re.M):
        assert not m.group(1).startswith("~"), "only allow lists are modelled"
        entries += m.group(1).split()
    return expand(entries, syscall_groups())


class Seccomp:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ArgCmp),
        ]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.lib.seccomp_release.argtypes = [ctypes.c_void_p]

    def nr(self, name: str) -> int | None:
        n = self.lib.seccomp_syscall_resolve_name(name.encode())
        return None if n == -1 else n  # __NR_SCMP_ERROR: unknown here

    def filter(self, default: int, rules: list[tuple[int, str, list[tuple[int, int, int, int]]]]) -> None:
        """One filter: ``default`` action, then (action, syscall, [(arg, op, a, b)]) rules."""
        ctx = self.lib.seccomp_init(default)
        assert ctx, "seccomp_init failed"
        try:
            for action, name, cmps in rules:
                n = self.nr(name)
                if n is None or n < 0:  # not a system call of this architecture
                    continue
                arr = (ArgCmp * max(1, len(cmps)))(*[ArgCmp(*c) for c in cmps])
                rc = self.lib.seccomp_rule_add_array(ctx, action, n, len(cmps), arr)
                if rc not in (0, -errno.EACCES):  # EACCES: the same as the default
                    raise OSError(-rc, f"seccomp_rule_add {name}")
            rc = self.lib.seccomp_load(ctx)
            if rc:
                raise OSError(-rc, "seccomp_load")
        finally:
            self.lib.seccomp_release(ctx)


def install(spec: dict) -> None:
    sc = Seccomp()
    kill, eperm = ACT_KILL_PROCESS, ACT_ERRNO(errno.EPERM)
    rules: list[tuple[int, str, list[tuple[int, int, int, int]]]] = []
    # MemoryDenyWriteExecute=yes (kill instead of EPERM: stricter than systemd)
    wx = PROT_WRITE | PROT_EXEC
    rules += [(kill, "mmap", [(2, CMP_MASKED_EQ, wx, wx)])]
    rules += [(kill, c, [(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]) for c in ("mprotect", "pkey_mprotect")]
    rules += [(kill, "shmat", [(2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)])]
    # RestrictRealtime=yes
    for pol in (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE):
        rules.append((eperm, "sched_setscheduler", [(1, CMP_MASKED_EQ, ~SCHED_RESET_ON_FORK & 0xFFFFFFFF, pol)]))
    # RestrictSUIDSGID=yes
    for bit in (S_ISUID, S_ISGID):
        rules += [(eperm, "chmod", [(1, CMP_MASKED_EQ, bit, bit)]), (eperm, "fchmod", [(1, CMP_MASKED_EQ, bit, bit)])]
        rules += [(eperm, "fchmodat", [(2, CMP_MASKED_EQ, bit, bit)]), (eperm, "creat", [(1, CMP_MASKED_EQ, bit, bit)])]
        rules.append((eperm, "open", [(1, CMP_MASKED_EQ, O_CREAT, O_CREAT), (2, CMP_MASKED_EQ, bit, bit)]))
        rules.append((eperm, "openat", [(2, CMP_MASKED_EQ, O_CREAT, O_CREAT), (3, CMP_MASKED_EQ, bit, bit)]))
    # ProtectClock=yes, ProtectHostname=yes, ProtectKernelLogs=yes
    for name in ("clock_settime", "clock_adjtime", "adjtimex", "settimeofday", "sethostname", "setdomainname"):
        rules.append((eperm, name, []))
    rules.append((eperm, "syslog", []))
    sc.filter(ACT_ALLOW, rules)
    # last, as seccomp(2) itself is not in @system-service: SystemCallFilter= (allow
    # list) + SystemCallArchitectures=native
    sc.filter(kill, [(ACT_ALLOW, n, []) for n in spec["allow"]])


DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

SETUP = r"""
set -eu
umask 0027
d="$1"; shift
# PrivateDevices=yes: a /dev of the harmless nodes only (ProtectKernelLogs, ProtectClock: no kmsg, no rtc)
mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs "$d"
for n in {nodes}; do touch "$d/$n"; mount --bind "/dev/$n" "$d/$n"; done
mkdir -m 1777 "$d/shm"; mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$d/shm"
mkdir "$d/pts"
ln -s /proc/self/fd "$d/fd"; ln -s /proc/self/fd/0 "$d/stdin"; ln -s /proc/self/fd/1 "$d/stdout"
ln -s /proc/self/fd/2 "$d/stderr"
mount --move "$d" /dev
# ProtectKernelLogs=yes: /proc/kmsg unreadable
if [ -e /proc/kmsg ]; then mount --bind /dev/null /proc/kmsg; mount -o remount,bind,ro /proc/kmsg; fi
exec "$@"
""".replace("{nodes}", " ".join(DEV_NODES))


def command(argv: list[str], staging: Path, spec_file: Path, uid: int, caps: list[str], cwd: Path) -> list[str]:
    """``argv`` under the unit's restrictions, as ``uid`` with ``caps`` ambient.
    ``staging``: an empty folder for the private /dev; ``spec_file``: the
    JSON written by the caller ({"allow": [...]})."""
    capset = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in caps)
    return [
        "unshare",
        "--mount",
        "--uts",  # ProtectHostname=yes
        "--propagation",
        "private",  # PrivateMounts=yes
        "--",
        "sh",
        "-c",
        SETUP,
        "sandbox",
        str(staging),
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        f"--inh-caps=-all,{capset}",
        f"--ambient-caps=-all,{capset}",
        f"--bounding-set=-all,{capset}",  # CapabilityBoundingSet= (no CAP_MKNOD, CAP_SYS_RAWIO)
        "--no-new-privs",  # NoNewPrivileges=yes (also what lets an unprivileged process load a filter)
        "env",
        f"--chdir={cwd}",
        sys.executable,
        "-m",
        "tests.support.unit_sandbox",
        str(spec_file),
        "--",
        *argv,
    ]


def main(args: list[str]) -> None:
    spec_file, sep, *argv = args
    assert sep == "--" and argv, "usage: unit_sandbox SPEC.json -- ARGV..."
    install(json.loads(Path(spec_file).read_text()))
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
