"""Capture: the only module that reads packets (pcap/pcapng files, later
live interfaces), through the libpcap binding ``pcapy-ng``.

A source delivers ``(ts_us, data)`` to a per-link-type handler chosen by the
pipeline; nothing here interprets bytes. libpcap reads both pcap and pcapng.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pcapy

Handler = Callable[[int, bytes], None]


class CaptureError(Exception):
    """A capture could not be opened or read at all (missing, not a capture)."""


@dataclass(slots=True)
class ReadResult:
    path: str
    linktype: int
    packets: int      # packets delivered (those the capture filter admitted)
    capture_filter: str | None = None
    error: str = ""   # set when the file is damaged: packets before it were delivered


def open_offline(path: str | Path):
    p = str(path)
    if not os.path.exists(p):
        raise CaptureError(f"{p}: no such file")
    if os.path.isdir(p):
        raise CaptureError(f"{p}: is a directory, not a capture file")
    if not os.access(p, os.R_OK):
        raise CaptureError(f"{p}: permission denied")
    try:
        return pcapy.open_offline(p)
    except pcapy.PcapError as e:
        msg = str(e)
        if os.path.getsize(p) == 0:
            msg = "empty file"
        raise CaptureError(f"{p}: not a pcap or pcapng capture ({msg})") from None


def set_filter(reader, filters: Sequence[str | None]) -> str | None:
    """Install the first filter that compiles for this link type (``vlan``
    does not compile on every link type); None = no filter."""
    for f in filters:
        if f is None:
            return None
        try:
            reader.setfilter(f)
            return f
        except pcapy.PcapError:
            continue
    return None


def read_file(path: str | Path, handler_for: Callable[[int], Handler],
              filters: Sequence[str | None] | None = None,
              refilter: Callable[[], Sequence[str | None] | None] | None = None) -> ReadResult:
    """Read every packet of ``path``; ``handler_for(linktype)`` gives the
    function that receives ``(ts_us, data)``; ``filters`` are capture filters
    to try, best first (the first that compiles for the file's link type is
    installed). A damaged file (cut in the middle of a record) yields every
    whole packet before the damage and reports it in ``ReadResult.error``."""
    reader = open_offline(path)
    linktype = reader.datalink()
    handle = handler_for(linktype)
    installed = set_filter(reader, filters) if filters else None
    count = [0]
    state = [installed]

    def cb(hdr, data: bytes) -> None:
        count[0] += 1
        s, us = hdr.getts()
        handle(s * 1_000_000 + us, data)
        if refilter is not None:
            new = refilter()
            if new is not None:   # libpcap applies a savefile's filter per packet: exact
                state[0] = set_filter(reader, new)

    err = ""
    try:
        reader.loop(0, cb)
    except pcapy.PcapError as e:
        err = str(e) or "read error"
    finally:
        try:
            reader.close()
        except Exception:  # pragma: no cover - close never matters for correctness
            pass
    return ReadResult(str(path), linktype, count[0], state[0], err)
