"""Capture: the only module that reads packet files, through the libpcap
binding ``pcapy-ng``.

A source delivers ``(ts_us, data)`` to a per-link-type handler chosen by the
pipeline; nothing here interprets bytes. A file is read ahead on a thread and
still gives exactly the packets of a plain ``pcap_loop`` (see
``_read_ahead``). Design: docs/engine.md, "Capture".
"""

from __future__ import annotations

import os
import queue
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pcapy

Handler = Callable[[int, bytes], None]


class CaptureError(Exception):
    """A capture could not be opened or read at all (missing, not a capture)."""


@dataclass(slots=True)
class ReadResult:
    path: str
    linktype: int
    packets: int  # packets delivered (those the capture filter admitted)
    capture_filter: str | None = None
    error: str = ""  # set when the file is damaged: packets before it were delivered


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
        st = os.stat(p)
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
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


READ_AHEAD_BATCH = 1024  # packets libpcap reads per call on the read-ahead thread
READ_AHEAD_BATCHES = 8  # batches read ahead of the pipeline at most (bounded memory)


def read_file(
    path: str | Path,
    handler_for: Callable[[int], Handler],
    filters: Sequence[str | None] | None = None,
    refilter: Callable[[], Sequence[str | None] | None] | None = None,
    read_ahead: bool = True,
    watch: Any = None,
) -> ReadResult:
    """Read every packet of ``path``; ``handler_for(linktype)`` gives the
    function that receives ``(ts_us, data)``; ``filters`` are capture filters
    to try, best first (the first that compiles for the file's link type is
    installed); ``refilter()``, asked after each packet, returns new filters
    when the ones installed must change (applied from the next packet on).
    A damaged file (cut in the middle of a record) yields every whole packet
    before the damage and reports it in ``ReadResult.error``. ``read_ahead``:
    read on a thread ahead of the handler (same packets, see the module
    docstring); False: one plain ``pcap_loop``. ``watch``: an object whose
    ``version`` attribute changes whenever ``refilter`` may have new filters
    (the pipeline's PortSet); with it, reading ahead, ``refilter`` is asked
    only then instead of after every packet."""
    link_types = _pcapng_link_types(path)
    if link_types is not None and len(link_types) > 1:
        return _read_pcapng_mixed(path, handler_for)
    reader = open_offline(path)
    linktype = reader.datalink()
    handle = handler_for(linktype)
    installed = set_filter(reader, filters) if filters else None
    if read_ahead and hasattr(reader, "next_batch"):
        return _read_ahead(path, reader, linktype, handle, installed, refilter, watch)
    return _loop(path, reader, linktype, handle, installed, refilter, 0)


def _loop(
    path: str | Path,
    reader,
    linktype: int,
    handle: Handler,
    installed: str | None,
    refilter: Callable[[], Sequence[str | None] | None] | None,
    count: int,
) -> ReadResult:
    """One ``pcap_loop`` over the rest of ``reader`` (``count`` packets were
    delivered before)."""
    state = [installed]

    if refilter is None:

        def cb(hdr, data: bytes) -> None:
            nonlocal count
            count += 1
            s, us = hdr.getts()
            handle(s * 1_000_000 + us, data)
    else:

        def cb(hdr, data: bytes) -> None:
            nonlocal count
            count += 1
            s, us = hdr.getts()
            handle(s * 1_000_000 + us, data)
            new = refilter()
            if new is not None:  # libpcap applies a savefile's filter per packet: exact
                state[0] = set_filter(reader, new)

    err = ""
    try:
        reader.loop(0, cb)
    except pcapy.PcapError as e:
        err = str(e) or "read error"
        at = damage_offset(path)
        if at is not None:
            err += f" (the damage starts at byte {at} of {os.path.getsize(path)})"
    finally:
        try:
            reader.close()
        except Exception:  # pragma: no cover - close never matters for correctness
            pass
    return ReadResult(str(path), linktype, count, state[0], err)


_END = object()


def _read_ahead(
    path: str | Path,
    reader,
    linktype: int,
    handle: Handler,
    installed: str | None,
    refilter: Callable[[], Sequence[str | None] | None] | None,
    watch: Any = None,
) -> ReadResult:
    """``read_file`` with libpcap reading on a thread, ``READ_AHEAD_BATCH``
    packets per call, at most ``READ_AHEAD_BATCHES`` ahead.

    Packets read ahead were filtered with the filter of the moment. When
    ``refilter`` asks for a new one, or libpcap reports damage (``next_batch``
    then drops the whole packets of the batch it was reading), the read-ahead
    is dropped and the file is opened again: the packets already delivered
    are skipped with the filters they were read with (``pcap_loop`` counts
    only the packets a filter admits), and the rest is read with a plain
    ``pcap_loop``, which applies a new filter from the next packet on and
    delivers every whole packet before damage."""
    q: queue.Queue = queue.Queue(READ_AHEAD_BATCHES)
    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.is_set():
                pb, meta = reader.next_batch(READ_AHEAD_BATCH)
                if not meta:
                    break
                q.put((pb, meta))
        except pcapy.PcapError as e:
            q.put(e)
        q.put(_END)

    t = threading.Thread(target=run, name="pcap-read-ahead", daemon=True)
    t.start()
    unpack = BATCH_META.iter_unpack
    count = 0
    new_filters = None
    damaged = False
    seen = watch.version if watch is not None else None
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, pcapy.PcapError):
                damaged = True
                break
            pb, meta = item
            if refilter is None:
                for s, us, off, caplen in unpack(meta):
                    handle(s * 1_000_000 + us, pb[off : off + caplen])
                count += len(meta) >> 4
                continue
            for s, us, off, caplen in unpack(meta):
                count += 1
                handle(s * 1_000_000 + us, pb[off : off + caplen])
                if watch is None or watch.version != seen:  # without watch: ask after every packet
                    if watch is not None:
                        seen = watch.version
                    new_filters = refilter()
                    if new_filters is not None:
                        break
            if new_filters is not None:
                break
    finally:
        stop.set()
        while t.is_alive():  # unblock a put() so the thread sees ``stop``
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass
        try:
            reader.close()
        except Exception:  # pragma: no cover - close never matters for correctness
            pass
    if new_filters is None and not damaged:
        return ReadResult(str(path), linktype, count, installed)
    # read again from where the pipeline stopped, the plain way: skip what was
    # delivered (all of it read under ``installed``), then one pcap_loop
    again = open_offline(path)
    if installed is not None:
        again.setfilter(installed)
    if count:
        again.loop(count, _skip)
    if new_filters is not None:
        installed = set_filter(again, new_filters)
    return _loop(path, again, linktype, handle, installed, refilter, count)


BATCH_META = struct.Struct("=IIII")  # next_batch: (sec, usec, offset, caplen) per packet


def _skip(hdr, data: bytes) -> None:
    pass


_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_MAX_RECORD = 256 << 20


def damage_offset(path: str | Path) -> int | None:
    """Where a damaged pcap or pcapng file stops making sense: the offset of
    the first record (block) that is cut short or has an impossible length.
    Only headers are read (a seek per record). None for what cannot be
    walked (a pipe) or when no damage is found."""
    p = str(path)
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return None
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            magic = f.read(4)
            if magic in _PCAP_MAGICS:
                e = _PCAP_MAGICS[magic]
                off = 24
                while off < size:
                    f.seek(off)
                    hdr = f.read(16)
                    if len(hdr) < 16:
                        return off
                    caplen = struct.unpack(e + "I", hdr[8:12])[0]
                    if caplen > _MAX_RECORD or off + 16 + caplen > size:
                        return off
                    off += 16 + caplen
                return None
            if magic == _SHB:
                for off, btype, _, _ in _pcapng_blocks(f, size):
                    if btype is None:
                        return off
                return None
    except OSError:
        return None
    return None


# -- pcapng with interfaces of several link types ------------------------------
# libpcap (1.9, bundled with pcapy-ng) refuses a pcapng whose interfaces have
# different link types. Such files are read here, block by block, in Python;
# the capture filter does not apply and the decoder's own checks do the work.

MAX_PCAPNG_INTERFACES = 4096


_SHB = b"\x0a\x0d\x0d\x0a"
_BOM_LE = b"\x4d\x3c\x2b\x1a"


def _pcapng_blocks(f, size: int):
    """Walk a pcapng file by its block headers: yield (offset, block type,
    total length, byte order) per block. A section header sets the byte
    order for what follows. A block cut short or of impossible length ends
    the walk with (offset, None, 0, byte order)."""
    e = "<"
    off = 0
    while off < size:
        f.seek(off)
        hdr = f.read(12)
        if len(hdr) < 8 or (hdr[:4] == _SHB and len(hdr) < 12):
            yield off, None, 0, e
            return
        if hdr[:4] == _SHB:
            e = "<" if hdr[8:12] == _BOM_LE else ">"
        btype, blen = struct.unpack(e + "II", hdr[:8])
        if blen < 12 or blen % 4 or blen > _MAX_RECORD or off + blen > size:
            yield off, None, 0, e
            return
        yield off, btype, blen, e
        off += blen


def _pcapng_link_types(path: str | Path) -> set[int] | None:
    """The link types of a pcapng file's interfaces (None: not pcapng, or
    unreadable). Only block headers are read."""
    try:
        p = str(path)
        if not stat.S_ISREG(os.stat(p).st_mode):
            return None
        size = os.path.getsize(p)
        types: set[int] = set()
        with open(p, "rb") as f:
            if f.read(4) != _SHB:
                return None
            for off, btype, _, e in _pcapng_blocks(f, size):
                if btype == 1:
                    f.seek(off + 8)
                    types.add(struct.unpack(e + "H", f.read(2))[0])
                    if len(types) > MAX_PCAPNG_INTERFACES:
                        break
        return types
    except (OSError, struct.error):
        return None


def _tsresol(opts: bytes, e: str) -> tuple[int, int]:
    """(numerator, denominator) turning a timestamp into microseconds."""
    i = 0
    while i + 4 <= len(opts):
        code, olen = struct.unpack(e + "HH", opts[i : i + 4])
        if code == 0:
            break
        if code == 9 and olen >= 1:
            r = opts[i + 4]
            if r & 0x80:
                return 1_000_000, 1 << (r & 0x7F)
            return 1_000_000, 10 ** (r & 0x7F)
        i += 4 + olen + (-olen % 4)
    return 1, 1


def _read_pcapng_mixed(path: str | Path, handler_for: Callable[[int], Handler]) -> ReadResult:
    p = str(path)
    size = os.path.getsize(p)
    ifaces: list[tuple[int, int, int]] = []  # (linktype, num, den) per interface of this section
    handlers: dict[int, Handler] = {}
    count = 0
    err = ""
    last_ts = 0
    with open(p, "rb") as f:
        for off, btype, blen, e in _pcapng_blocks(f, size):
            if btype is None:
                err = f"bad or truncated block (the damage starts at byte {off} of {size})"
                break
            if btype == 0x0A0D0D0A:
                ifaces = []  # interface ids are per section
            f.seek(off + 8)
            body = f.read(blen - 12)
            if btype == 1 and len(body) >= 8:
                lt = struct.unpack(e + "H", body[:2])[0]
                if len(ifaces) < MAX_PCAPNG_INTERFACES:
                    ifaces.append((lt,) + _tsresol(body[8:], e))
            elif btype == 6 and len(body) >= 20:
                iid, hi, lo, caplen, _ = struct.unpack(e + "IIIII", body[:20])
                if iid < len(ifaces) and 20 + caplen <= len(body):
                    lt, num, den = ifaces[iid]
                    last_ts = ((hi << 32) | lo) * num // den
                    h = handlers.get(lt)
                    if h is None:
                        h = handlers[lt] = handler_for(lt)
                    count += 1
                    h(last_ts, body[20 : 20 + caplen])
            elif btype == 3 and len(body) >= 4 and ifaces:  # simple packet: interface 0, no time
                lt = ifaces[0][0]
                h = handlers.get(lt)
                if h is None:
                    h = handlers[lt] = handler_for(lt)
                count += 1
                h(last_ts, body[4 : 4 + min(struct.unpack(e + "I", body[:4])[0], len(body) - 4)])
    lts = sorted({lt for lt, _, _ in ifaces})
    return ReadResult(p, lts[0] if lts else -1, count, None, err)
