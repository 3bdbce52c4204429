"""Capabilities: keep only what each process needs (Linux capset(2)).

The daemon keeps nothing once its captures are open (``DAEMON_CAPS``); the
attribution helper keeps CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
(``HELPER_CAPS``). Which process needs what, and when: docs/daemon.md,
"Privileges".
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

CAP_DAC_READ_SEARCH = 2
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_PTRACE = 19
DAEMON_CAPS: frozenset[int] = frozenset()
HELPER_CAPS = frozenset({CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH})

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def effective_caps(pid: int | str = "self") -> int:
    """CapEff of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def keep_only(caps: frozenset[int]) -> int:
    """Drop every capability not in ``caps``; returns the new effective mask.
    Raises OSError when the kernel refuses."""
    libc = _libc()
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    mask = [0, 0]
    for c in caps:
        mask[c // 32] |= 1 << (c % 32)
    for i in range(2):
        data[i].effective &= mask[i]
        data[i].permitted &= mask[i]
        data[i].inheritable &= mask[i]
    if libc.capset(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return effective_caps()


def drop_daemon_caps(log: Any) -> None:
    """``keep_only(DAEMON_CAPS)`` once the captures are open, logged either way (never fatal)."""
    try:
        log.info("capabilities kept: CapEff=%016x", keep_only(DAEMON_CAPS))
    except OSError as e:
        log.warning("could not drop capabilities: %s", e)
