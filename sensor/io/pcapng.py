"""pcapng blocks: the few the flight recorder writes, and a bounded reader
of the packet comments in them.

Writing (``section_header``, ``interface_block``, ``packet_block``): a
Section Header Block naming the application (``shb_userappl``), one
Interface Description Block per link type, Enhanced Packet Blocks with
microsecond timestamps and an optional ``opt_comment`` (``comment_option``: what
tshark shows as ``frame.comment``). Format: the IETF draft "PCAP Next Generation (pcapng)
Capture File Format" (draft-ietf-opsawg-pcapng).

Reading (``read_comments``): libpcap (and so pcapy-ng) hands packets over
without their comments, so the replay reads them here. The file is hostile
input: every length is checked against the block, the block against
``MAX_BLOCK_BYTES`` and the file's end; only the first ``head_bytes`` of a
commented packet and ``max_comment_bytes`` of its comment are kept; memory
is one block's header and options at a time. Anything malformed stops the
walk with ``PcapngError`` naming the byte offset (what was yielded before
stands). Design: docs/endpoint.md, "The flight recorder".
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_TSRESOL = 9
# the longest block the reader accepts: a packet of the sensor's snaplen
# (sensor/io/live.py, 256 KiB) with its options, and room to spare
MAX_BLOCK_BYTES = 1 << 20
MAX_OPTIONS = 64  # options read per block; more is malformed
MAX_INTERFACES = 1024  # Interface Description Blocks per section
SNAPLEN = 262_144

_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}


class PcapngError(ValueError):
    """The file is not pcapng, or is malformed at the offset named."""


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = bytearray()
    for code, value in opts:
        out += struct.pack("<HH", code, len(value)) + value + b"\0" * _pad(len(value))
    out += struct.pack("<HH", OPT_ENDOFOPT, 0)
    return bytes(out)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def section_header(userappl: str) -> bytes:
    """A little-endian Section Header Block, section length unknown."""
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(SHB_TYPE, body + _options([(SHB_USERAPPL, userappl.encode("utf-8", "replace"))]))


def interface_block(linktype: int, snaplen: int = SNAPLEN) -> bytes:
    """An Interface Description Block; timestamps in microseconds (the default resolution)."""
    return _block(IDB_TYPE, struct.pack("<HHI", linktype & 0xFFFF, 0, snaplen))


def comment_option(comment: bytes) -> bytes:
    """The options of a packet with ``comment`` (UTF-8 text the caller escaped
    and capped; longer than 65535 bytes is cut): built once per connection."""
    return _options([(OPT_COMMENT, comment[:65535])]) if comment else b""


_EPB_HEAD = struct.Struct("<IIIIIII")


def packet_block(iface: int, ts_us: int, data: bytes, options: bytes = b"") -> bytes:
    """An Enhanced Packet Block; ``options``: ``comment_option(...)`` or nothing."""
    n = len(data)
    ts = ts_us & 0xFFFF_FFFF_FFFF_FFFF
    total = 32 + n + (-n % 4) + len(options)
    head = _EPB_HEAD.pack(EPB_TYPE, total, iface, ts >> 32, ts & 0xFFFF_FFFF, n, n)
    return b"".join((head, data, b"\0" * (-n % 4), options, total.to_bytes(4, "little")))


def is_recording(path: str, userappl_prefix: str) -> bool:
    """Is ``path`` a pcapng file whose first section says it was written by
    ``userappl_prefix`` (the flight recorder)? Any error: False."""
    try:
        with open(path, "rb") as f:
            for kind, _off, value in _walk(f, want_packets=False):
                if kind == "userappl":
                    return isinstance(value, bytes) and value.startswith(userappl_prefix.encode())
                if kind == "packet" or kind == "idb":
                    return False
    except (OSError, PcapngError):
        return False
    return False


def read_comments(
    f: BinaryIO, *, head_bytes: int = 256, max_comment_bytes: int = 8192
) -> Iterator[tuple[int, int, bytes, bytes]]:
    """``(linktype, ts_us, head, comment)`` for every Enhanced Packet Block
    of ``f`` that has an ``opt_comment`` (the first one, if several):
    ``head``: the packet's first ``head_bytes``; ``comment``: its first
    ``max_comment_bytes``. Raises ``PcapngError`` at the first malformed
    block (after yielding every one before it)."""
    for kind, _off, value in _walk(f, head_bytes=head_bytes, max_comment_bytes=max_comment_bytes):
        if kind == "packet" and isinstance(value, tuple) and value[3] is not None:
            yield value


def _walk(
    f: BinaryIO, *, want_packets: bool = True, head_bytes: int = 256, max_comment_bytes: int = 8192
) -> Iterator[tuple[str, int, object]]:
    """The blocks of ``f``: ("userappl", offset, bytes), ("idb", offset,
    linktype), ("packet", offset, (linktype, ts_us, head, comment | None))."""
    off = 0
    order = ""
    ifaces: list[tuple[int, int, int]] = []  # (linktype, units per second numerator, denominator)
    while True:
        hdr = f.read(8)
        if not hdr:
            return
        if len(hdr) < 8:
            raise PcapngError(f"block header cut at byte {off}")
        if off == 0 or order == "":
            btype = struct.unpack_from("<I", hdr)[0]
            if btype != SHB_TYPE:
                raise PcapngError("not pcapng (no Section Header Block at byte 0)")
        if struct.unpack_from("<I", hdr)[0] == SHB_TYPE:  # the type reads the same in both orders
            bom = f.read(4)
            if len(bom) < 4:
                raise PcapngError(f"section header cut at byte {off}")
            if struct.unpack("<I", bom)[0] == BYTE_ORDER_MAGIC:
                order = "<"
            elif struct.unpack(">I", bom)[0] == BYTE_ORDER_MAGIC:
                order = ">"
            else:
                raise PcapngError(f"bad byte-order magic at byte {off + 8}")
            total = _U32[order].unpack_from(hdr, 4)[0]
            _check_total(total, off, 28)
            rest = f.read(total - 12)
            if len(rest) < total - 12:
                raise PcapngError(f"section header cut at byte {off}")
            _check_trailer(rest, total, order, off)
            ifaces = []
            # version (4), section length (8), then options up to the trailer
            for code, value in _parse_options(rest[12 : total - 12 - 4 + 0], order, off):
                if code == SHB_USERAPPL:
                    yield "userappl", off, value
            off += total
            continue
        u32 = _U32[order]
        btype, total = u32.unpack_from(hdr, 0)[0], u32.unpack_from(hdr, 4)[0]
        if btype == IDB_TYPE:
            _check_total(total, off, 20)
            body = f.read(total - 8)
            if len(body) < total - 8:
                raise PcapngError(f"interface block cut at byte {off}")
            _check_trailer(body, total, order, off, body_starts=8)
            if len(ifaces) >= MAX_INTERFACES:
                raise PcapngError(f"more than {MAX_INTERFACES} interfaces in a section at byte {off}")
            linktype = struct.unpack_from(order + "H", body, 0)[0]
            num, den = 1_000_000, 1_000_000  # ticks per second, microseconds per second
            for code, value in _parse_options(body[8 : total - 12], order, off):
                if code == IF_TSRESOL:
                    if len(value) != 1:
                        raise PcapngError(f"bad if_tsresol at byte {off}")
                    r = value[0]
                    exp = r & 0x7F
                    if (r & 0x80 and exp > 63) or (not r & 0x80 and exp > 18):
                        raise PcapngError(f"if_tsresol out of range at byte {off}")
                    num = (2**exp) if r & 0x80 else 10**exp
            ifaces.append((linktype, num, den))
            yield "idb", off, linktype
            off += total
            continue
        if btype == EPB_TYPE:
            if not want_packets:
                yield "packet", off, None
                return
            _check_total(total, off, 32)
            fixed = f.read(20)
            if len(fixed) < 20:
                raise PcapngError(f"packet block cut at byte {off}")
            iface, hi, lo, caplen, _origlen = struct.unpack(order + "IIIII", fixed)
            if iface >= len(ifaces):
                raise PcapngError(f"packet of undeclared interface {iface} at byte {off}")
            padded = caplen + _pad(caplen)
            if 32 + padded > total:
                raise PcapngError(f"captured length {caplen} exceeds its block at byte {off}")
            opt_len = total - 32 - padded
            comment = None
            head = b""
            if opt_len:
                head = f.read(min(caplen, head_bytes))
                f.seek(padded - len(head), 1)
                raw = f.read(opt_len + 4)
                if len(raw) < opt_len + 4:
                    raise PcapngError(f"packet block cut at byte {off}")
                _check_trailer(raw, total, order, off, body_starts=total - len(raw))
                for code, value in _parse_options(raw[:opt_len], order, off):
                    if code == OPT_COMMENT:
                        comment = value[:max_comment_bytes]
                        break
            else:
                f.seek(padded, 1)
                tail = f.read(4)
                if len(tail) < 4:
                    raise PcapngError(f"packet block cut at byte {off}")
                _check_trailer(tail, total, order, off, body_starts=total - 4)
            linktype, num, den = ifaces[iface]
            ticks = (hi << 32) | lo
            ts_us = ticks if num == den else ticks * den // num
            yield "packet", off, (linktype, ts_us, head, comment)
            off += total
            continue
        # any other block: skipped whole, its trailer checked
        _check_total(total, off, 12)
        f.seek(total - 12, 1)
        tail = f.read(4)
        if len(tail) < 4:
            raise PcapngError(f"block cut at byte {off}")
        _check_trailer(tail, total, order, off, body_starts=total - 4)
        off += total


def _check_total(total: int, off: int, least: int) -> None:
    if total < least or total % 4 or total > MAX_BLOCK_BYTES:
        raise PcapngError(f"bad block length {total} at byte {off}")


def _check_trailer(buf: bytes, total: int, order: str, off: int, body_starts: int = 12) -> None:
    """``buf`` holds the block's bytes from ``body_starts`` to its end: its last 4 repeat ``total``."""
    if len(buf) != total - body_starts or _U32[order].unpack_from(buf, len(buf) - 4)[0] != total:
        raise PcapngError(f"block length mismatch at byte {off}")


def _parse_options(buf: bytes, order: str, off: int) -> Iterator[tuple[int, bytes]]:
    """The options in ``buf`` (up to ``opt_endofopt`` or its end), each length checked."""
    hh = struct.Struct(order + "HH")
    i = 0
    n = 0
    while i + 4 <= len(buf):
        code, length = hh.unpack_from(buf, i)
        if code == OPT_ENDOFOPT:
            return
        n += 1
        if n > MAX_OPTIONS:
            raise PcapngError(f"more than {MAX_OPTIONS} options at byte {off}")
        end = i + 4 + length
        if end > len(buf):
            raise PcapngError(f"option {code} overruns its block at byte {off}")
        yield code, buf[i + 4 : end]
        i = end + _pad(length)
    if i != len(buf):
        raise PcapngError(f"options do not fill their block at byte {off}")
