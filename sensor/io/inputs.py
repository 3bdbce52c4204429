"""What a replay reads, as an analyst names it: capture files, ``-`` for
stdin, folders of rotated captures, a BPF expression (``--filter``) and a
packet-time range (``--since``/``--until``).

Everything is checked before any packet is read: a bad name, folder,
expression or date is an ``InputError`` (one line, exit 2). A folder's
captures are replayed as one stream in the order of their first packet's
time, ties by name; files in it that are not captures are skipped with a
note. Described in docs/usage.md, "Inputs".
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pcapy

from sensor.io.capture import (
    CaptureError,
    Handler,
    compile_for,
    first_packet_us,
    is_capture_magic,
    linktype_name,
    probe_link_types,
)

STDIN = "-"
STDIN_PATH = "/dev/stdin"
MAX_FOLDER_ENTRIES = 100_000  # entries a folder given as input may hold (more: refused)
MAX_FILTER_CHARS = 4096  # length of a --filter expression at most (libpcap's optimizer is not linear)
SKIPPED_NAMED = 5  # skipped files a note names, at most
FILTER_SNAPLEN = 262144  # snaplen --filter is compiled for when checking it


class InputError(CaptureError):
    """An input the user named is not usable: one line, exit 2, before any packet is read."""


@dataclass(slots=True)
class Inputs:
    """The resolved inputs: ``paths`` in the order they are replayed (a
    folder's captures in place of the folder), ``notes`` to print (files a
    folder held that are not captures), ``select`` the user's BPF
    expression (None: none), ``window`` the packet-time range."""

    paths: list[str]
    notes: list[str] = field(default_factory=list)
    select: str | None = None
    window: TimeWindow | None = None


def parse_time(text: str, option: str) -> int:
    """An ISO 8601 date and time as microseconds since the epoch; a value
    without time zone is UTC."""
    shown = text if len(text) <= 64 else text[:64] + "..."
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"{option} {shown!r}: not an ISO 8601 date and time (e.g. 2026-11-27T01:00:00Z; no zone: UTC)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    except OverflowError:  # pragma: no cover - every datetime is within timedelta's range
        raise InputError(f"{option} {shown!r}: out of range") from None


class TimeWindow:
    """Packets with ``since <= time < until`` (as editcap's -A and -B) reach
    the pipeline; the others are not seen at all: they do not move its
    clock, and a flow straddling a bound is what the packets inside show.
    ``outside`` counts the packets left out."""

    __slots__ = ("since", "until", "outside")

    def __init__(self, since: int | None, until: int | None) -> None:
        self.since = since
        self.until = until
        self.outside = 0

    def contains(self, ts: int) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def wrap(self, handler_for: Callable[[int], Handler]) -> Callable[[int], Handler]:
        lo = self.since if self.since is not None else -(1 << 80)
        hi = self.until if self.until is not None else 1 << 80

        def window_handler_for(linktype: int) -> Handler:
            inner = handler_for(linktype)

            def handle(ts: int, data: bytes) -> None:
                if lo <= ts < hi:
                    inner(ts, data)
                else:
                    self.outside += 1

            return handle

        return window_handler_for


def check_filter(expr: str) -> str:
    """``expr`` when libpcap compiles it (for Ethernet, as tcpdump would);
    else an InputError with libpcap's message."""
    if len(expr) > MAX_FILTER_CHARS:
        raise InputError(f"--filter: expression longer than {MAX_FILTER_CHARS} characters")
    if "\0" in expr:
        raise InputError("--filter: a NUL character in the expression")
    try:
        pcapy.compile(pcapy.DLT_EN10MB, FILTER_SNAPLEN, expr, 1, 0)
    except pcapy.PcapError as e:
        raise InputError(f"--filter {expr!r}: {e}") from None
    return expr


def _check_filter_on(path: str, expr: str, link_types: set[int]) -> None:
    for lt in sorted(link_types):
        try:
            compile_for(lt, expr)
        except pcapy.PcapError as e:
            raise InputError(
                f"{path}: --filter {expr!r} does not apply to link type {linktype_name(lt)}: {e}"
            ) from None


def _stdin() -> str:
    try:
        if os.isatty(0):
            raise InputError("-: stdin is a terminal, not a capture (pipe one in: ... | xfer-sensor replay -)")
        os.fstat(0)
    except OSError:
        raise InputError("-: stdin is closed") from None
    return STDIN_PATH


def _folder(path: str, notes: list[str]) -> list[str]:
    """The captures in folder ``path`` (not its subfolders), in the order
    of their first packet's time, ties by name (a capture without packets
    first)."""
    try:
        with os.scandir(path) as it:
            names = []
            for entry in it:
                names.append(entry.name)
                if len(names) > MAX_FOLDER_ENTRIES:
                    raise InputError(f"{path}: more than {MAX_FOLDER_ENTRIES} entries in the folder")
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    if not names:
        raise InputError(f"{path}: empty folder, no capture to replay")
    found: list[tuple[int, str, str]] = []
    skipped: list[str] = []
    for name in sorted(names):
        p = os.path.join(path, name)
        try:
            st = os.stat(p)
        except OSError:
            skipped.append(name)  # a dangling link
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(name + ("/" if stat.S_ISDIR(st.st_mode) else ""))
            continue
        try:
            with open(p, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise InputError(f"{p}: {e.strerror}") from None
        if not is_capture_magic(magic):
            skipped.append(name)
            continue
        first = first_packet_us(p)
        found.append((first if first is not None else -(1 << 80), name, p))
    if not found:
        raise InputError(
            f"{path}: no pcap or pcapng capture in the folder ({len(skipped)} other file(s): {_some(skipped)})"
        )
    if skipped:
        notes.append(f"{path}: skipped {len(skipped)} file(s) that are not captures: {_some(skipped)}")
    found.sort()
    return [p for _, _, p in found]


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(n)[1:-1] for n in names[:SKIPPED_NAMED])
    return shown + (f" and {len(names) - SKIPPED_NAMED} more" if len(names) > SKIPPED_NAMED else "")


def resolve(
    names: Sequence[str], select: str | None = None, since: str | None = None, until: str | None = None
) -> Inputs:
    """Check and expand what the user named, before any packet is read."""
    if not names:
        raise InputError("no capture given: name files, folders or - (stdin), positionally or with -r")
    expr = check_filter(select) if select is not None else None
    lo = parse_time(since, "--since") if since is not None else None
    hi = parse_time(until, "--until") if until is not None else None
    if lo is not None and hi is not None and lo >= hi:
        raise InputError(f"--since {since} is not before --until {until}: no packet can be in the range")
    notes: list[str] = []
    paths: list[str] = []
    for name in names:
        if name == STDIN:
            if STDIN_PATH in paths:
                raise InputError("-: stdin named twice (it can be read once)")
            paths.append(_stdin())
            continue
        if "\0" in name:
            raise InputError(f"{name!r}: a NUL character in the name")
        if os.path.isdir(name):
            paths.extend(_folder(name, notes))
            continue
        paths.append(name)
    for p in paths:
        lts = probe_link_types(p)  # raises for what is missing, unreadable or not a capture
        if expr is not None and lts:
            _check_filter_on(p, expr, lts)
    window = TimeWindow(lo, hi) if lo is not None or hi is not None else None
    return Inputs(paths, notes, expr, window)


def print_notes(notes: Sequence[str]) -> None:
    for n in notes:
        print(f"xfer-sensor: note: {n}", file=sys.stderr)
