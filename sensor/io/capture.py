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
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pcapy

Handler = Callable[[int, bytes], None]


class CaptureError(Exception):
    """A capture could not be opened or read at all (missing, not a capture)."""


STOP_POLL_S = 0.05  # a reader waiting for packets checks for a stop request this often


class Stop:
    """A request to stop reading (SIGINT, SIGTERM), set from a signal handler
    and checked by the readers between packets or batches, and whenever they
    wait: a reader blocked in libpcap (an idle pipe, a run of records the
    capture filter rejects) is left behind on its thread rather than waited
    for."""

    __slots__ = ("signum", "at")

    def __init__(self) -> None:
        self.signum = 0  # the signal that asked, 0: none
        self.at = 0.0  # when (time.monotonic())

    def request(self, signum: int) -> None:
        if not self.signum:
            self.signum = signum
            self.at = time.monotonic()


class _Stopped(Exception):
    """Raised inside a pcap_loop callback to leave the loop on a stop request."""


@dataclass(slots=True)
class ReadResult:
    path: str
    linktype: int
    packets: int  # packets delivered (those the capture filter admitted)
    capture_filter: str | None = None
    error: str = ""  # set when the file is damaged: packets before it were delivered
    stopped: bool = False  # a stop request ended the read: packets before it were delivered
    snaplen: int = 0  # the file's snapshot length (0: unknown, a pipe, or no limit)


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
    stop: Stop | None = None,
    filter_ok: Callable[[int, int], bool] | None = None,
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
    only then instead of after every packet. ``stop``: a ``Stop`` checked
    while reading (the result then says ``stopped``). ``filter_ok(linktype,
    snaplen)``: False when no capture filter is worth installing (a link
    type the decoder does not know, a snaplen that cuts every header): every
    frame then reaches the handler, which can count them.

    A pipe, FIFO or character device (stdin) is read on a thread, without
    capture filter (it cannot be read twice, which a new filter needs; the
    decoder's own checks do the work), see ``_read_stream``."""
    stop = stop if stop is not None else Stop()
    if _is_stream(path):
        return _read_stream(path, handler_for, stop)
    link_types = _pcapng_link_types(path)
    if link_types is not None and len(link_types) > 1:
        return _read_pcapng_mixed(path, handler_for, stop)
    snaplen = header_snaplen(path)
    reader = open_offline(path)
    linktype = reader.datalink()
    handle = handler_for(linktype)
    if filters and filter_ok is not None and not filter_ok(linktype, snaplen):
        filters = None
    installed = set_filter(reader, filters) if filters else None
    if read_ahead and hasattr(reader, "next_batch"):
        res = _read_ahead(path, reader, linktype, handle, installed, refilter, watch, stop)
    else:
        res = _loop(path, reader, linktype, handle, installed, refilter, 0, stop)
    res.snaplen = snaplen
    return res


def _is_stream(path: str | Path) -> bool:
    """A pipe, FIFO, socket or character device: read once, in order, maybe blocking."""
    try:
        mode = os.stat(str(path)).st_mode
    except OSError:
        return False  # open_offline says why
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


STREAM_BUFFER_PACKETS = 8192  # packets a stream's reader thread holds ahead of the pipeline at most
STREAM_WAKE_PACKETS = 1024  # packets that wake the pipeline's thread at once (else STOP_POLL_S)


STREAM_HEADER_MAX = 60 << 10  # bytes of a stream's header (pcapng: up to its first interface) at most


def _read_exact(fd: int, n: int, buf: bytearray) -> bool:
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return False
        buf += chunk
    return True


def _stream_header(fd: int, name: str) -> bytes:
    """The bytes libpcap reads when it opens a capture: a pcap file's 24, a
    pcapng file's blocks up to its first interface description."""
    buf = bytearray()
    if not _read_exact(fd, 24, buf) or buf[:4] != _SHB:
        return bytes(buf)
    e = "<" if buf[8:12] == _BOM_LE else ">"
    off = 0
    while _read_exact(fd, off + 8, buf):
        btype, blen = struct.unpack(e + "II", buf[off : off + 8])
        if blen < 12:
            break  # libpcap says what is wrong
        if off + blen > STREAM_HEADER_MAX:
            raise CaptureError(f"{name}: pcapng header longer than {STREAM_HEADER_MAX} bytes")
        if not _read_exact(fd, off + blen, buf) or btype == 1:
            break
        off += blen
    return bytes(buf)


def _open_stream(path: str | Path):
    """libpcap on a stream, never blocked while opening it: libpcap holds the
    GIL while it opens and reads a capture's header, so the header is read
    here first (``os.read`` lets other threads run while it waits: a FIFO
    with no writer, an idle pipe), put in a pipe of our own with a thread
    that copies the rest of the stream after it, and libpcap opens that."""
    name = str(path)
    try:
        src = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CaptureError(f"{name}: {e.strerror}") from None
    try:
        head = _stream_header(src, name)
    except OSError as e:
        os.close(src)
        raise CaptureError(f"{name}: {e.strerror}") from None
    except CaptureError:
        os.close(src)
        raise
    r, w = os.pipe()
    os.write(w, head)  # shorter than a pipe's buffer: never blocks

    def pump() -> None:
        try:
            while True:
                chunk = os.read(src, 1 << 16)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(w, view) :]
        except OSError:
            pass  # the stream failed (libpcap sees it end), or the reader closed its end
        finally:
            os.close(src)
            os.close(w)

    threading.Thread(target=pump, name="pcap-stream-copy", daemon=True).start()
    try:
        return pcapy.open_offline(f"/proc/self/fd/{r}")
    except pcapy.PcapError as e:
        raise CaptureError(f"{name}: not a pcap or pcapng capture ({e})") from None
    finally:
        os.close(r)  # libpcap opened its own


def _read_stream(path: str | Path, handler_for: Callable[[int], Handler], stop: Stop) -> ReadResult:
    """A pipe, FIFO or stdin: libpcap opens and reads it on a thread (it may
    block there: a FIFO with no writer, an idle pipe), handing packets over
    through a bounded queue; this thread waits at most ``STOP_POLL_S`` at a
    time, so a stop request ends the read at once, whatever libpcap is doing:
    the packets already taken off the stream (at most
    ``STREAM_BUFFER_PACKETS``) are handled, no more are read. A reader still
    blocked then is left behind (its handle is never closed under it); the
    process is about to exit."""
    box: deque[tuple[int, bytes]] = deque()
    wake = threading.Event()
    room = threading.Event()
    opened: list[Any] = []  # [linktype] or [CaptureError]
    done: list[str] = []  # [error text, "" when the stream ended cleanly]
    left = threading.Event()  # the pipeline stopped reading: the thread must not wait for room

    def run() -> None:
        try:
            reader = _open_stream(path)
            opened.append(reader.datalink())
        except CaptureError as e:
            opened.append(e)
            wake.set()
            return
        wake.set()
        n = 0

        def cb(hdr, data: bytes) -> None:
            nonlocal n
            s, us = hdr.getts()
            box.append((s * 1_000_000 + us, data))
            n += 1
            if n % STREAM_WAKE_PACKETS == 0:
                wake.set()
                while len(box) >= STREAM_BUFFER_PACKETS:
                    if left.is_set():
                        raise _Stopped
                    room.clear()
                    if len(box) >= STREAM_BUFFER_PACKETS:
                        room.wait(STOP_POLL_S)

        err = ""
        try:
            reader.loop(0, cb)
        except pcapy.PcapError as e:
            err = str(e) or "read error"
        except _Stopped:
            pass
        finally:
            try:
                reader.close()
            except Exception:  # pragma: no cover - close never matters for correctness
                pass
        done.append(err)
        wake.set()

    t = threading.Thread(target=run, name="pcap-stream", daemon=True)
    t.start()
    p = str(path)
    while not opened:
        if stop.signum:
            left.set()
            return ReadResult(p, -1, 0, None, "", stopped=True)
        wake.wait(STOP_POLL_S)
    if isinstance(opened[0], CaptureError):
        raise opened[0]
    linktype = opened[0]
    handle = handler_for(linktype)
    count = 0
    pop = box.popleft
    while True:
        if stop.signum:  # what was taken off the stream is handled: it cannot be read again
            left.set()
            while box:
                ts, data = pop()
                handle(ts, data)
                count += 1
            return ReadResult(p, linktype, count, None, "", stopped=True)
        finished = bool(done)  # read before draining: what came before the end is in the box
        n = 0
        while box and n < STREAM_WAKE_PACKETS:
            ts, data = pop()
            handle(ts, data)
            n += 1
        count += n
        room.set()
        if box:
            continue
        if finished:
            return ReadResult(p, linktype, count, None, done[0])
        wake.wait(STOP_POLL_S)
        wake.clear()


def _loop(
    path: str | Path,
    reader,
    linktype: int,
    handle: Handler,
    installed: str | None,
    refilter: Callable[[], Sequence[str | None] | None] | None,
    count: int,
    stop: Stop,
) -> ReadResult:
    """One ``pcap_loop`` over the rest of ``reader`` (``count`` packets were
    delivered before). A stop request is seen at the next packet delivered
    (a regular file: libpcap reaches its end)."""
    state = [installed]

    if refilter is None:

        def cb(hdr, data: bytes) -> None:
            nonlocal count
            if stop.signum:
                raise _Stopped
            count += 1
            s, us = hdr.getts()
            handle(s * 1_000_000 + us, data)
    else:

        def cb(hdr, data: bytes) -> None:
            nonlocal count
            if stop.signum:
                raise _Stopped
            count += 1
            s, us = hdr.getts()
            handle(s * 1_000_000 + us, data)
            new = refilter()
            if new is not None:  # libpcap applies a savefile's filter per packet: exact
                state[0] = set_filter(reader, new)

    err = ""
    try:
        reader.loop(0, cb)
    except _Stopped:
        pass
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
    return ReadResult(str(path), linktype, count, state[0], err, stopped=bool(stop.signum))


_END = object()


def _read_ahead(
    path: str | Path,
    reader,
    linktype: int,
    handle: Handler,
    installed: str | None,
    refilter: Callable[[], Sequence[str | None] | None] | None,
    watch: Any,
    stop: Stop,
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
    delivers every whole packet before damage.

    This thread waits for a batch at most ``STOP_POLL_S`` at a time: on a
    stop request it leaves the reading thread behind if that is still inside
    libpcap (a long run of records the filter rejects), never closing the
    handle under it."""
    q: queue.Queue = queue.Queue(READ_AHEAD_BATCHES)
    halt = threading.Event()

    def run() -> None:
        try:
            while not halt.is_set():
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
    get = q.get
    try:
        while True:
            try:
                item = get(timeout=STOP_POLL_S)
            except queue.Empty:
                if stop.signum:
                    break
                continue
            if stop.signum:
                break
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
        halt.set()
        give_up = time.monotonic() + (STOP_POLL_S if stop.signum else 1e9)
        while t.is_alive() and time.monotonic() < give_up:  # unblock a put() so the thread sees ``halt``
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass
        if not t.is_alive():  # else left behind inside libpcap, its handle with it
            try:
                reader.close()
            except Exception:  # pragma: no cover - close never matters for correctness
                pass
    if stop.signum:
        return ReadResult(str(path), linktype, count, installed, stopped=True)
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
    return _loop(path, again, linktype, handle, installed, refilter, count, stop)


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


# link type names for messages: libpcap's DLT_ constants, and a few others met in captures
_LINKTYPE_NAMES = {getattr(pcapy, n): n[4:] for n in dir(pcapy) if n.startswith("DLT_")}
_LINKTYPE_NAMES.update({101: "RAW", 105: "IEEE802_11", 113: "LINUX_SLL", 127: "IEEE802_11_RADIO", 228: "IPV4"})
_LINKTYPE_NAMES.update({229: "IPV6", 276: "LINUX_SLL2", 220: "USB_LINUX_MMAPPED", 187: "BLUETOOTH_HCI_H4"})


def linktype_name(linktype: int) -> str:
    """``147 (USER0)``-style text for a link type number."""
    name = _LINKTYPE_NAMES.get(linktype)
    if name is None and 147 <= linktype <= 162:
        name = f"USER{linktype - 147}"
    return f"{linktype} ({name})" if name else str(linktype)


def header_snaplen(path: str | Path) -> int:
    """The snapshot length a capture file declares: a pcap file's header, a
    pcapng file's smallest non-zero interface snaplen. 0: no limit, or not
    readable here (a pipe, not a capture)."""
    p = str(path)
    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return 0
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(24)
            if head[:4] in _PCAP_MAGICS and len(head) == 24:
                return int(struct.unpack(_PCAP_MAGICS[head[:4]] + "I", head[16:20])[0])
            if head[:4] != _SHB:
                return 0
            lens = []
            for off, btype, blen, e in _pcapng_blocks(f, size):
                if btype == 1 and blen >= 20:
                    f.seek(off + 12)
                    n = struct.unpack(e + "I", f.read(4))[0]
                    if n:
                        lens.append(n)
                    if len(lens) > MAX_PCAPNG_INTERFACES:
                        break
            return min(lens) if lens else 0
    except (OSError, struct.error):
        return 0


SCAN_MAX_FRAMES = 1_000_000  # frames ``count_frames`` looks at, at most


def count_frames(path: str | Path, min_caplen: int, stop: Stop | None = None) -> tuple[int, int]:
    """(frames, frames shorter than ``min_caplen``) of a regular capture file,
    read without capture filter, at most ``SCAN_MAX_FRAMES`` (libpcap reads,
    nothing is decoded): what a replay that delivered no packet looks at to
    say why. (0, 0) for what libpcap cannot read."""
    try:
        reader = open_offline(path)
    except CaptureError:
        return 0, 0
    frames = short = 0
    try:
        while frames < SCAN_MAX_FRAMES and not (stop is not None and stop.signum):
            _, meta = reader.next_batch(READ_AHEAD_BATCH)
            if not meta:
                break
            for _, _, _, caplen in BATCH_META.iter_unpack(meta):
                frames += 1
                if caplen < min_caplen:
                    short += 1
    except pcapy.PcapError:
        pass  # damage: the replay has reported it
    finally:
        try:
            reader.close()
        except Exception:  # pragma: no cover - close never matters for correctness
            pass
    return frames, short


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


def _read_pcapng_mixed(path: str | Path, handler_for: Callable[[int], Handler], stop: Stop) -> ReadResult:
    p = str(path)
    size = os.path.getsize(p)
    ifaces: list[tuple[int, int, int]] = []  # (linktype, num, den) per interface of this section
    handlers: dict[int, Handler] = {}
    count = 0
    err = ""
    last_ts = 0
    with open(p, "rb") as f:
        for off, btype, blen, e in _pcapng_blocks(f, size):
            if stop.signum:
                break
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
    return ReadResult(p, lts[0] if lts else -1, count, None, err, stopped=bool(stop.signum))
