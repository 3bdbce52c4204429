#!/usr/bin/env python3
"""Mutation fuzzing of the full replay pipeline, seeded from the repo's real captures.

    python fuzz/mutate.py --packets 1000000 [--seed S] [--corpus pcaps/real pcaps/demo.pcap]

Reads every frame of the corpus (classic pcap or pcapng, a small struct
reader), then, batch after batch, takes a run of consecutive frames of one
capture (so connections stay coherent and the FTP/SMB/TFTP analyzers get
deep into real sessions), mutates them and feeds them in-process through
``Pipeline.handler_for(linktype)``, ending each batch with ``finish()``:

- byte level: bit flips, interesting byte values, random 16/32-bit
  integers, truncation (biased to header boundaries), extension, splicing
  two frames;
- header fields: IPv4 total length / IHL / fragment bits / protocol / version,
  TCP ports (kept on tracked and on the capture's own ports, so packets stay
  on tracked flows), sequence and acknowledgement numbers (small deltas,
  around the 2^32 wrap, half the space), flags, data offset, UDP length;
- application payload: FTP commands and replies with hostile arguments
  (PORT/EPRT/PASV/EPSV announcements included), NetBIOS/SMB2 header fields,
  TFTP opcodes and strings;
- sequence level: drops, duplicates (retransmissions), swaps, reversed
  windows, timestamps jittered, going backwards, jumping hours or days;
- whole batch: the frames re-wrapped as 802.1Q, QinQ, Linux SLL/SLL2, raw
  IP, BSD loopback (NULL/LOOP) or LINKTYPE_IPV4/IPV6 links, or converted to
  IPv6 (with extension headers), or with source addresses randomised (many
  flows);
- configuration: the defaults, the demo's (alerts fire), or tight limits
  (tiny max_flows, window keys, seq jump, timeouts: every eviction path).

A crash is any exception escaping the pipeline (``handler``, ``finish()``),
an analyzer's internal-error weird (``*_analyzer_error``: the analyzer caught
a bug of its own and turned it into a weird instead of raising), or the
serialisation of a record (``sensor.records.encode.to_line``), a record that
is not exactly one JSON line, a broken invariant (flows above max_flows,
flows left after finish(), negative byte counts, window keys above the
cap), or a batch whose output differs between two replays (checked every
``--determinism-every`` batches). Reproducers (the batch's frames up to the
failure, pcapng, plus a JSON sidecar with the preset, the traceback and the
failing frame's index) go to ``fuzz/crashes/`` (git-ignored); replay one with
``python fuzz/mutate.py --replay fuzz/crashes/<name>.pcapng``.

Reported: mutated packets (bytes or time differ from the corpus frame),
packets fed in all, crashes (must be 0) by signature, the slowest packet
(its time and a copy in ``fuzz/crashes/slowest-*.pcapng``), the slowest
``finish()``, packets/s and peak RSS.

``--wide-timestamps`` also draws timestamps from the whole 64-bit microsecond
range a pcapng file can hold (classic pcap: 32-bit seconds, the default).

``run(...)`` is the same thing as a function (tests/test_properties.py runs a
quick 20,000-packet mode and asserts 0 crashes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import resource
import struct
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sensor.core.config import config_from_dict  # noqa: E402
from sensor.detect.rules import load_rules  # noqa: E402
from sensor.pipeline import Pipeline  # noqa: E402
from sensor.records.encode import to_line  # noqa: E402
from sensor.records.mde import RECORD_FIELDS  # noqa: E402

DEFAULT_CORPUS = ("pcaps/real", "pcaps/demo.pcap")
CRASH_DIR = Path(__file__).resolve().parent / "crashes"
MAX_SAVES_PER_SIGNATURE = 3

TRACKED = (20, 21, 69, 139, 445, 990, 989)

# An analyzer that catches an exception of its own (its "never raise" contract)
# reports it as a weird named <analyzer>_analyzer_error (smb_analyzer_error):
# a bug, not an anomaly of the traffic -- a crash here and in the tests.
INTERNAL_ERROR_SUFFIX = "_analyzer_error"


def is_internal_error(weird_name: str) -> bool:
    """Is this weird an analyzer's caught internal error (a bug)?"""
    return weird_name.endswith(INTERNAL_ERROR_SUFFIX)


PCAP_TS_MAX = (1 << 32) * 1_000_000 - 1  # classic pcap: u32 seconds + usec
PCAPNG_TS_MAX = (1 << 64) - 1  # pcapng EPB: u64 in (default) microseconds

# ---------------------------------------------------------------------------
# Capture files: a small struct reader and a pcapng writer
# ---------------------------------------------------------------------------

Frame = tuple[int, bytes]  # (ts_us, bytes)


def read_capture(path: str | Path) -> tuple[int, list[Frame]]:
    """(linktype, frames) of a classic pcap or a pcapng with one link type.
    Stops quietly at a record cut short."""
    b = Path(path).read_bytes()
    if len(b) < 24:
        raise ValueError(f"{path}: too short for a capture")
    magic_le = struct.unpack_from("<I", b)[0]
    if magic_le == 0x0A0D0D0A:
        return _read_pcapng(b, path)
    for e in ("<", ">"):
        m = struct.unpack_from(e + "I", b)[0]
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            nano = m == 0xA1B23C4D
            break
    else:
        raise ValueError(f"{path}: not a pcap or pcapng file")
    linktype = struct.unpack_from(e + "I", b, 20)[0] & 0x0FFFFFFF
    off, out = 24, []
    while off + 16 <= len(b):
        s, frac, incl, _orig = struct.unpack_from(e + "IIII", b, off)
        off += 16
        if off + incl > len(b):
            break
        out.append((s * 1_000_000 + (frac // 1000 if nano else frac), b[off : off + incl]))
        off += incl
    return linktype, out


def _read_pcapng(b: bytes, path) -> tuple[int, list[Frame]]:
    e = "<" if struct.unpack_from("<I", b, 8)[0] == 0x1A2B3C4D else ">"
    off, out, ifaces = 0, [], []  # ifaces: (linktype, units per second)
    while off + 12 <= len(b):
        btype, blen = struct.unpack_from(e + "II", b, off)
        if blen < 12 or off + blen > len(b):
            break
        body = b[off + 8 : off + blen - 4]
        if btype == 1 and len(body) >= 8:
            lt = struct.unpack_from(e + "H", body)[0]
            res = 1_000_000
            o = 8
            while o + 4 <= len(body):
                code, olen = struct.unpack_from(e + "HH", body, o)
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    v = body[o + 4]
                    res = 2 ** (v & 0x7F) if v & 0x80 else 10**v
                o += 4 + olen + (-olen % 4)
            ifaces.append((lt, res))
        elif btype == 6 and len(body) >= 20:
            iface, hi, lo, incl, _orig = struct.unpack_from(e + "IIIII", body)
            res = ifaces[iface][1] if iface < len(ifaces) else 1_000_000
            units = (hi << 32) | lo
            out.append((units * 1_000_000 // res, body[20 : 20 + incl]))
        elif btype == 3 and len(body) >= 4:
            out.append((0, body[4:]))
        off += blen
    if not ifaces:
        raise ValueError(f"{path}: pcapng without an interface")
    if len({lt for lt, _ in ifaces}) > 1:
        raise ValueError(f"{path}: several link types; the fuzzer reads one")
    return ifaces[0][0], out


def _blk(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path: str | Path, linktype: int, frames: Iterable[Frame]) -> Path:
    """One section, one interface (microsecond timestamps, 64-bit)."""
    path = Path(path)
    out = [
        _blk(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
        _blk(1, struct.pack("<HHI", linktype, 0, 262144)),
    ]
    for ts, data in frames:
        ts &= PCAPNG_TS_MAX
        out.append(_blk(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data))
    path.write_bytes(b"".join(out))
    return path


def load_corpus(paths: Sequence[str | Path]) -> list[tuple[str, int, list[Frame]]]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_absolute() and not p.exists():
            p = REPO / p
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".pcap", ".pcapng"))
        else:
            files.append(p)
    out = []
    for f in files:
        lt, frames = read_capture(f)
        if frames:
            out.append((f.name, lt, frames))
    if not out:
        raise SystemExit(f"no frames in the corpus {list(map(str, paths))}")
    return out


# ---------------------------------------------------------------------------
# Frame anatomy (Ethernet corpus frames)
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Anatomy:
    l3: int = -1  # offset of the IP header
    ver: int = 0
    l4: int = -1  # offset of the transport header
    proto: int = 0
    pay: int = -1  # offset of the payload


def anatomy(f: bytes) -> Anatomy:
    a = Anatomy()
    if len(f) < 14:
        return a
    off = 12
    et = (f[off] << 8) | f[off + 1]
    off = 14
    while et in (0x8100, 0x88A8, 0x9100) and off + 4 <= len(f):
        et = (f[off + 2] << 8) | f[off + 3]
        off += 4
    if et == 0x0800 and off + 20 <= len(f):
        a.l3, a.ver = off, 4
        ihl = (f[off] & 0x0F) * 4
        a.proto = f[off + 9]
        a.l4 = off + max(ihl, 20)
    elif et == 0x86DD and off + 40 <= len(f):
        a.l3, a.ver = off, 6
        a.proto = f[off + 6]
        a.l4 = off + 40
    else:
        return a
    if a.proto == 6 and a.l4 + 13 <= len(f):
        a.pay = a.l4 + max((f[a.l4 + 12] >> 4) * 4, 20)
    elif a.proto == 17:
        a.pay = a.l4 + 8
    return a


def _put16(b: bytearray, off: int, v: int) -> None:
    if 0 <= off and off + 2 <= len(b):
        b[off : off + 2] = struct.pack("!H", v & 0xFFFF)


def _put32(b: bytearray, off: int, v: int) -> None:
    if 0 <= off and off + 4 <= len(b):
        b[off : off + 4] = struct.pack("!I", v & 0xFFFFFFFF)


def _fix_ip_len(b: bytearray, a: Anatomy) -> None:
    if a.ver == 4:
        _put16(b, a.l3 + 2, len(b) - a.l3)
    elif a.ver == 6:
        _put16(b, a.l3 + 4, len(b) - a.l3 - 40)
    if a.proto == 17 and a.l4 >= 0:
        _put16(b, a.l4 + 4, len(b) - a.l4)


INTERESTING8 = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0D, 0x0A, 0x1B, 0x20, 0x25, 0x2C, 0x7C)
INTERESTING32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x10000, 0xFFFF, 0x8000, 65536 * 4 + 64)

FTP_TOKENS = (
    b"USER ",
    b"PASS ",
    b"STOR ",
    b"RETR ",
    b"APPE ",
    b"STOU ",
    b"LIST ",
    b"NLST ",
    b"MLSD ",
    b"SIZE ",
    b"PORT ",
    b"EPRT ",
    b"PASV",
    b"EPSV",
    b"AUTH TLS",
    b"AUTH SSL",
    b"PBSZ 0",
    b"PROT P",
    b"REST ",
    b"QUIT",
    b"220 ",
    b"220-",
    b"331 ",
    b"230 ",
    b"530 ",
    b"150 ",
    b"125 ",
    b"226 ",
    b"250 ",
    b"421 ",
    b"234 ",
    b"227 Entering Passive Mode (",
    b"229 Entering Extended Passive Mode (|||",
    b"213 ",
    b"550 ",
)
HOSTILE_ARGS = (
    b"",
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x1b[2J\x1b[31m",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"../../../../etc/passwd",
    b"a" * 5000,
    b"%s%n%x",
    b"1,2,3,4,5,6",
    b"10,77,0,2,300,1",
    b"|1|10.77.0.2|2121|",
    b"|2|::1|65536|",
    b"|||-1|",
    b"(1,2,3,4,255,255)",
    b"(999999999999,1,1,1,1,1)",
    b"|||40000|)",
    b"(10,77,0,1,156,64)",
    b"-1",
    b"18446744073709551616",
    b"\xe2\x80\xae.exe",
)


def _ftp_line(rng: random.Random) -> bytes:
    line = rng.choice(FTP_TOKENS) + rng.choice(HOSTILE_ARGS)
    if rng.random() < 0.3:
        line += rng.choice(HOSTILE_ARGS)
    return line + rng.choice((b"\r\n", b"\r\n", b"\n", b"", b"\r"))


def _smb_edit(b: bytearray, pay: int, rng: random.Random) -> None:
    """NetBIOS length, SMB2 header fields, structure sizes, offsets/lengths."""
    if pay + 4 > len(b):
        return
    r = rng.random()
    if r < 0.2:  # NetBIOS type + 24-bit length
        b[pay] = rng.choice((0x00, 0x81, 0x82, 0x83, 0x84, 0x85, rng.randrange(256)))
        v = rng.choice((0, 1, 63, 64, 0xFFFFFF, len(b) - pay - 4, rng.randrange(1 << 24)))
        b[pay + 1 : pay + 4] = v.to_bytes(3, "big")
    elif r < 0.35 and pay + 8 <= len(b):  # protocol id
        b[pay + 4 : pay + 8] = rng.choice((b"\xfeSMB", b"\xffSMB", b"\xfdSMB", b"\xfcSMB", b"\x00SMB"))
    else:  # a little-endian 16/32-bit field somewhere in the first 200 bytes of the message
        o = pay + 4 + rng.randrange(0, 200)
        if rng.random() < 0.5:
            if o + 2 <= len(b):
                b[o : o + 2] = struct.pack("<H", rng.choice((0, 1, 0xFFFF, 0x8000, 64, 65, 120, rng.randrange(65536))))
        elif o + 4 <= len(b):
            b[o : o + 4] = struct.pack("<I", rng.choice(INTERESTING32 + (rng.randrange(1 << 32),)))


def _tftp_payload(rng: random.Random) -> bytes:
    op = rng.choice((1, 2, 3, 4, 5, 6, 0, 7, 0xFFFF))
    if op in (1, 2):
        body = (
            rng.choice(HOSTILE_ARGS).replace(b"\x00", b"")
            + b"\x00"
            + rng.choice((b"octet", b"netascii", b"mail", b"x" * 40))
            + b"\x00"
        )
        for _ in range(rng.randrange(0, 4)):
            body += (
                rng.choice((b"blksize", b"tsize", b"windowsize", b"timeout", b"\xff"))
                + b"\x00"
                + rng.choice((b"1024", b"0", b"65535", b"99999999999", b"", b"-1"))
                + b"\x00"
            )
        if rng.random() < 0.2:
            body = body[:-1]
    elif op in (3, 4):
        body = struct.pack("!H", rng.choice((0, 1, 2, 0xFFFF, rng.randrange(65536)))) + rng.randbytes(
            rng.choice((0, 1, 511, 512, 513))
        )
    elif op == 5:
        body = struct.pack("!H", rng.randrange(9)) + rng.choice(HOSTILE_ARGS) + (b"\x00" if rng.random() < 0.7 else b"")
    else:
        body = rng.randbytes(rng.randrange(0, 40))
    return struct.pack("!H", op) + body


# share of mutated frames whose checksums are left as the mutation made them
# (mostly wrong): the checksum path is fuzzed, and the rest, recomputed, still
# reach the flow table and the analyzers
BAD_CHECKSUM_SHARE = 0.2


def _ones(data: bytes) -> int:
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    return v % 0xFFFF


def fix_checksums(f: bytes) -> bytes:
    """An Ethernet frame with its IPv4 header checksum and its TCP/UDP
    checksum recomputed (over what the IP length says, when captured whole;
    IPv4 fragments and IPv6 extension headers keep theirs)."""
    a = anatomy(f)
    if a.l3 < 0:
        return f
    b = bytearray(f)
    if a.ver == 4:
        ihl = (b[a.l3] & 0x0F) * 4
        if ihl < 20 or a.l3 + ihl > len(b):
            return f
        end = a.l3 + ((b[a.l3 + 2] << 8) | b[a.l3 + 3])
        _put16(b, a.l3 + 10, 0)
        _put16(b, a.l3 + 10, 0xFFFF - _ones(bytes(b[a.l3 : a.l3 + ihl])))
        if (b[a.l3 + 6] << 8 | b[a.l3 + 7]) & 0x3FFF:
            return bytes(b)  # a fragment: its transport checksum covers the whole datagram
        addrs = bytes(b[a.l3 + 12 : a.l3 + 20])
    else:
        end = a.l3 + 40 + ((b[a.l3 + 4] << 8) | b[a.l3 + 5])
        addrs = bytes(b[a.l3 + 8 : a.l3 + 40])
    if a.proto not in (6, 17) or a.l4 < 0 or end > len(b) or end - a.l4 < (20 if a.proto == 6 else 8):
        return bytes(b)
    at = a.l4 + (16 if a.proto == 6 else 6)
    if a.proto == 17:
        _put16(b, a.l4 + 4, end - a.l4)  # the UDP length the checksum covers
    _put16(b, at, 0)
    s = (int.from_bytes(addrs, "big") + a.proto + end - a.l4 + _ones(bytes(b[a.l4 : end]))) % 0xFFFF
    ck = 0xFFFF - s if s else 0xFFFF
    if a.proto == 17 and ck == 0:
        ck = 0xFFFF
    _put16(b, at, ck)
    return bytes(b)


class Mutator:
    def __init__(self, rng: random.Random, ports: Sequence[int], wide_ts: bool) -> None:
        self.rng = rng
        self.ports = tuple(ports) or TRACKED
        self.wide_ts = wide_ts

    # -- one frame --------------------------------------------------------------
    def frame(self, f: bytes, other: bytes) -> bytes:
        rng = self.rng
        b = bytearray(f)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            a = anatomy(bytes(b))
            r = rng.random()
            if r < 0.12:
                self._bitflip(b, a)
            elif r < 0.20:
                self._byteset(b, a)
            elif r < 0.30:
                self._truncate(b, a)
            elif r < 0.35:
                b += rng.randbytes(rng.choice((1, 7, 64, 1500, 9000)))
                if rng.random() < 0.5:
                    _fix_ip_len(b, a)
            elif r < 0.42:
                i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
                b = bytearray(b[:i] + other[j:])
            elif r < 0.62:
                self._ip_tcp_fields(b, a)
            elif r < 0.88:
                self._payload(b, a)
            else:
                self._ports(b, a)
        return bytes(b)

    def _bitflip(self, b: bytearray, a: Anatomy) -> None:
        if not b:
            return
        lo = a.l3 if a.l3 >= 0 and self.rng.random() < 0.8 else 0
        for _ in range(self.rng.choice((1, 1, 2, 4, 8))):
            i = self.rng.randrange(lo, len(b)) if lo < len(b) else self.rng.randrange(len(b))
            b[i] ^= 1 << self.rng.randrange(8)

    def _byteset(self, b: bytearray, a: Anatomy) -> None:
        if not b:
            return
        rng = self.rng
        i = rng.randrange(len(b))
        r = rng.random()
        if r < 0.6:
            b[i] = rng.choice(INTERESTING8)
        elif r < 0.8 and i + 4 <= len(b):
            b[i : i + 4] = struct.pack(rng.choice("<>") + "I", rng.choice(INTERESTING32))
        elif i + 2 <= len(b):
            b[i : i + 2] = struct.pack("!H", rng.randrange(65536))

    def _truncate(self, b: bytearray, a: Anatomy) -> None:
        rng = self.rng
        cuts = [0, 1, 13, 14, 17, 18, 20]
        for base in (a.l3, a.l4, a.pay):
            if base >= 0:
                cuts += [base - 1, base, base + 1, base + 4, base + 8, base + 13, base + 19, base + 20]
        cuts.append(rng.randrange(len(b) + 1))
        n = max(0, min(len(b), rng.choice(cuts)))
        del b[n:]

    def _ip_tcp_fields(self, b: bytearray, a: Anatomy) -> None:
        rng = self.rng
        if a.l3 < 0:
            self._bitflip(b, a)
            return
        r = rng.random()
        if a.ver == 4 and r < 0.30:
            k = rng.randrange(6)
            if k == 0:  # total length
                cur = len(b) - a.l3
                _put16(
                    b,
                    a.l3 + 2,
                    rng.choice((0, 19, 20, 39, 40, cur - 1, cur + 1, cur + 1000, 0xFFFF, rng.randrange(65536))),
                )
            elif k == 1:  # IHL / version
                b[a.l3] = rng.choice((0x40 | rng.randrange(16), rng.randrange(256), 0x4F, 0x44, 0x60 | (b[a.l3] & 15)))
            elif k == 2:  # fragment bits
                _put16(
                    b,
                    a.l3 + 6,
                    rng.choice((0x2000, 0x2000 | rng.randrange(1, 8192), rng.randrange(1, 8192), 0x4000, 0xFFFF)),
                )
            elif k == 3:  # protocol
                b[a.l3 + 9] = rng.choice((6, 17, 1, 41, 47, 50, 0, 255))
            elif k == 4 and a.l3 + 20 <= len(b):  # options: IHL 15 with garbage
                b[a.l3] = 0x4F
            else:
                _put16(b, a.l3 + 4, rng.randrange(65536))  # id
        elif a.ver == 6 and r < 0.30:
            k = rng.randrange(3)
            if k == 0:
                _put16(
                    b,
                    a.l3 + 4,
                    rng.choice((0, 8, 20, 0xFFFF, rng.randrange(65536), len(b) - a.l3 - 40 + rng.randrange(-30, 30))),
                )
            elif k == 1:
                b[a.l3 + 6] = rng.choice((0, 43, 44, 51, 60, 59, 6, 17, 135, 139, 140))
            else:
                b[a.l3] = rng.randrange(256)
        elif a.proto == 6 and a.l4 + 20 <= len(b):
            k = rng.randrange(6)
            if k == 0:  # seq
                cur = struct.unpack_from("!I", b, a.l4 + 4)[0]
                _put32(
                    b,
                    a.l4 + 4,
                    rng.choice(
                        (
                            cur + rng.randrange(-3000, 3000),
                            cur + (1 << 31),
                            cur + (1 << 30) + 1,
                            0xFFFFFFFF - rng.randrange(100),
                            rng.randrange(1 << 32),
                            cur - (1 << 30),
                        )
                    ),
                )
            elif k == 1:  # ack
                _put32(b, a.l4 + 8, rng.randrange(1 << 32))
            elif k == 2:  # flags
                b[a.l4 + 13] = rng.choice(
                    (0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x06, 0x01, 0x03, 0xFF, 0x00, rng.randrange(256))
                )
            elif k == 3:  # data offset
                b[a.l4 + 12] = (rng.randrange(16) << 4) | (b[a.l4 + 12] & 0x0F)
            elif k == 4:  # options garbage
                if a.pay > a.l4 + 20:
                    for i in range(a.l4 + 20, min(a.pay, len(b))):
                        b[i] = rng.randrange(256)
            else:
                _put16(b, a.l4 + 18, rng.randrange(65536))  # urgent pointer
        elif a.proto == 17 and a.l4 + 8 <= len(b):
            cur = len(b) - a.l4
            _put16(b, a.l4 + 4, rng.choice((0, 7, 8, cur - 1, cur + 1, 0xFFFF, rng.randrange(65536))))
        else:
            self._bitflip(b, a)

    def _ports(self, b: bytearray, a: Anatomy) -> None:
        rng = self.rng
        if a.l4 < 0 or a.l4 + 4 > len(b):
            return
        side = rng.randrange(3)
        choices = TRACKED + self.ports + (0, 1023, 1024, 65535, rng.randrange(65536))
        if side in (0, 2):
            _put16(b, a.l4, rng.choice(choices))
        if side in (1, 2):
            _put16(b, a.l4 + 2, rng.choice(choices))

    def _payload(self, b: bytearray, a: Anatomy) -> None:
        rng = self.rng
        if a.pay < 0 or a.pay > len(b):
            self._bitflip(b, a)
            return
        sport = (b[a.l4] << 8 | b[a.l4 + 1]) if a.l4 + 2 <= len(b) else 0
        dport = (b[a.l4 + 2] << 8 | b[a.l4 + 3]) if a.l4 + 4 <= len(b) else 0
        ports = (sport, dport)
        r = rng.random()
        if a.proto == 17 and (69 in ports or rng.random() < 0.3):
            new = _tftp_payload(rng) if r < 0.7 else bytes(b[a.pay :])
            if r >= 0.7 and new:
                new = bytearray(new)
                new[rng.randrange(len(new))] = rng.randrange(256)
            del b[a.pay :]
            b += new
            _fix_ip_len(b, a)
            return
        if (21 in ports or 990 in ports or r < 0.25) and r < 0.6:
            # replace, prepend or append FTP lines
            lines = b"".join(_ftp_line(rng) for _ in range(rng.choice((1, 1, 2, 5))))
            k = rng.randrange(3)
            old = bytes(b[a.pay :])
            new = lines if k == 0 else lines + old if k == 1 else old + lines
            del b[a.pay :]
            b += new
            if rng.random() < 0.85:
                _fix_ip_len(b, a)
            return
        if (445 in ports or 139 in ports) and r < 0.85:
            _smb_edit(b, a.pay, rng)
            return
        # generic: flip bytes in the payload
        if a.pay < len(b):
            for _ in range(rng.choice((1, 2, 8))):
                i = rng.randrange(a.pay, len(b))
                b[i] = rng.randrange(256)

    # -- whole batch ----------------------------------------------------------------
    def ts(self, t: int) -> int:
        rng = self.rng
        r = rng.random()
        top = PCAPNG_TS_MAX if self.wide_ts else PCAP_TS_MAX
        if r < 0.4:
            t += rng.randrange(-2_000_000, 2_000_000)
        elif r < 0.6:
            t -= rng.choice((1, 1000, 3_600_000_000, 86_400_000_000))
        elif r < 0.8:
            t += rng.choice((3_600_000_000, 86_400_000_000, 86_400_000_001, 7 * 86_400_000_000))
        elif r < 0.9:
            t = rng.choice((0, 1, top, top - 1, rng.randrange(top)))
        else:
            t = rng.randrange(top)
        return min(max(t, 0), top)


# -- link re-wrapping (whole batch) ----------------------------------------------------


def _strip_eth(f: bytes) -> tuple[int, bytes]:
    """(ethertype, L3 bytes) of an Ethernet frame (tags skipped)."""
    if len(f) < 14:
        return 0, b""
    et, off = (f[12] << 8) | f[13], 14
    while et in (0x8100, 0x88A8, 0x9100) and off + 4 <= len(f):
        et, off = (f[off + 2] << 8) | f[off + 3], off + 4
    return et, f[off:]


def relink(kind: str, f: bytes, vlan: int = 10, fam6: int = 10) -> bytes:
    """An Ethernet frame re-wrapped as ``kind`` (see LINKS)."""
    if kind == "eth":
        return f
    if kind in ("vlan", "qinq"):
        if len(f) < 14:
            return f
        tag = struct.pack("!H", vlan & 0xFFFF)
        if kind == "vlan":
            return f[:12] + b"\x81\x00" + tag + f[12:]
        return f[:12] + b"\x88\xa8\x00\x64\x81\x00" + tag + f[12:]
    et, l3 = _strip_eth(f)
    if kind == "sll":
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", et) + l3
    if kind == "sll2":
        return struct.pack("!HHIHBB8s", et, 0, 2, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + l3
    if kind in ("raw", "ipv4", "ipv6"):
        return l3
    fam = 2 if et == 0x0800 else fam6
    if kind == "null":
        return struct.pack("<I", fam) + l3
    if kind == "loop":
        return struct.pack("!I", fam) + l3
    raise ValueError(kind)


LINKS = {
    "eth": 1,
    "vlan": 1,
    "qinq": 1,
    "sll": 113,
    "sll2": 276,
    "raw": 101,
    "null": 0,
    "loop": 108,
    "ipv4": 228,
    "ipv6": 229,
}


def to_ipv6(f: bytes, rng: random.Random, ext: bool) -> bytes:
    """An Ethernet IPv4 frame as IPv6 (addresses mapped into fd00::/8 and
    2001:db8::/32), optionally behind hop-by-hop / destination / fragment headers."""
    a = anatomy(f)
    if a.ver != 4 or a.l4 < 0 or a.l4 > len(f):
        return f
    src, dst = f[a.l3 + 12 : a.l3 + 16], f[a.l3 + 16 : a.l3 + 20]
    tot = (f[a.l3 + 2] << 8) | f[a.l3 + 3]
    l4 = f[a.l4 : a.l3 + tot] if tot >= a.l4 - a.l3 else f[a.l4 :]

    def m(x: bytes) -> bytes:
        return (b"\xfd" + b"\x00" * 11 if x[0] in (10, 192, 172) else b"\x20\x01\x0d\xb8" + b"\x00" * 8) + x

    nh, exts = a.proto, b""
    if ext:
        for kind in rng.sample((0, 60, 44), rng.randrange(1, 3)):
            if kind == 44:
                exts = bytes((nh, 0)) + struct.pack("!HI", 0, rng.randrange(1 << 32)) + exts
            else:
                exts = bytes((nh, 0)) + b"\x01\x04\x00\x00\x00\x00" + exts
            nh = kind
    hdr = struct.pack("!IHBB", 0x60000000, len(exts) + len(l4), nh, 64) + m(src) + m(dst)
    return f[:12] + b"\x86\xdd" + hdr + exts + l4


def scatter_sources(f: bytes, rng: random.Random) -> bytes:
    a = anatomy(f)
    if a.ver != 4:
        return f
    b = bytearray(f)
    b[a.l3 + 12 : a.l3 + 16] = bytes((10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)))
    if a.l4 >= 0 and a.l4 + 2 <= len(b) and rng.random() < 0.5:
        _put16(b, a.l4, rng.randrange(1024, 65536))
    return bytes(b)


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------

PRESETS = {
    "default": {},
    "demo": {
        "home_net": ["192.168.56.0/24", "10.77.0.1/32"],
        "ip_type_overrides": {
            "203.0.113.0/24": "Public",
            "198.51.100.0/24": "Public",
            "10.77.0.2/32": "Public",
            "2001:db8::/32": "Public",
        },
        "inventory": {"192.168.56.10": "WS-FIN-07"},
    },
    "tight": {
        "home_net": ["10.77.0.1/32"],
        "ip_type_overrides": {"10.0.0.0/8": "Public"},
        "timeouts": {"tcp_attempt": 0.5, "tcp_established": 2.0, "tcp_closed": 0.05, "udp": 0.5},
        "limits": {
            "max_flows": 24,
            "flow_scan_budget": 3,
            "flow_scan_interval": 0.001,
            "max_seq_jump": 4096,
            "max_window_keys": 3,
            "max_window_events": 2,
        },
    },
}


class AnalyzerInternalError(AssertionError):
    """An analyzer's internal-error weird reached the records."""


class CheckingSink:
    """Serialises every record as the JsonlSink would and checks it is one
    valid JSON line; keeps the lines when asked (determinism check). An
    analyzer's internal-error weird raises at the packet that caused it."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.lines: list[bytes] = []
        self.count = 0

    def emit(self, kind: str, rec: dict) -> None:
        line = to_line(rec)
        if not line.endswith(b"\n") or line.count(b"\n") != 1 or b"\r" in line:
            raise AssertionError(f"{kind} record is not exactly one line: {line[:200]!r}")
        back = json.loads(line)
        if not isinstance(back, dict):
            raise AssertionError(f"{kind} record is not a JSON object")
        if kind == "connections":
            for k in (
                "SentBytes",
                "ReceivedBytes",
                "SentPackets",
                "ReceivedPackets",
                "DataSentBytes",
                "DataReceivedBytes",
            ):
                if not isinstance(back.get(k), int) or back[k] < 0:
                    raise AssertionError(f"connection record {k}={back.get(k)!r}")
            if back["FirstSeen"] > back["LastSeen"]:
                raise AssertionError(f"FirstSeen {back['FirstSeen']} > LastSeen {back['LastSeen']}")
        elif kind == "transfers":
            if not isinstance(back.get("Bytes"), int) or back["Bytes"] < 0:
                raise AssertionError(f"transfer record Bytes={back.get('Bytes')!r}")
        elif kind == "weird" and is_internal_error(str(back.get("Name", ""))):
            raise AnalyzerInternalError(f"{back['Name']}: {back.get('Detail', '')}")
        self.count += 1
        if self.keep:
            self.lines.append(kind.encode() + b" " + line)

    def close(self) -> None:
        pass


class Failure(Exception):
    def __init__(self, kind: str, index: int, exc: BaseException | None, tb: str) -> None:
        super().__init__(kind)
        self.kind, self.index, self.exc, self.tb = kind, index, exc, tb


def signature(exc: BaseException, tb: str) -> str:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = [f"{Path(fr.filename).name}:{fr.lineno}" for fr in frames if "/sensor/" in fr.filename.replace("\\", "/")]
    msg = re.sub(r"\d+", "N", str(exc))[:80]
    return f"{type(exc).__name__}: {msg} @ {' < '.join(reversed(where[-3:])) or 'harness'}"


def replay_batch(
    rules, preset: str, linktype: int, frames: Sequence[Frame], keep: bool = False, timing: list | None = None
) -> tuple[Pipeline, CheckingSink]:
    """Feed ``frames`` to a fresh pipeline and finish it; raises Failure."""
    cfg = config_from_dict(PRESETS[preset], f"<fuzz:{preset}>")
    sink = CheckingSink(keep)
    pipe = Pipeline(cfg, rules, sink)
    h = pipe.handler_for(linktype)
    i = -1
    perf = time.perf_counter
    try:
        if timing is None:
            for ts, data in frames:
                h(ts, data)
        else:
            worst, worst_i = timing[0], -1
            for i, (ts, data) in enumerate(frames):
                t0 = perf()
                h(ts, data)
                dt = perf() - t0
                if dt > worst:
                    worst, worst_i = dt, i
            if worst_i >= 0:
                timing[0], timing[1] = worst, worst_i
        i = len(frames)
        t0 = perf()
        pipe.finish()
        if timing is not None:
            timing[2] = perf() - t0
    except Exception as e:  # noqa: BLE001 -- any exception escaping is what we look for
        raise Failure("exception", i, e, traceback.format_exc()) from None
    lim = cfg.limits
    problems = []
    if pipe.flows.stats.active_max > lim.max_flows:
        problems.append(f"active_max {pipe.flows.stats.active_max} > max_flows {lim.max_flows}")
    if pipe.flows.flows:
        problems.append(f"{len(pipe.flows.flows)} flows left after finish()")
    if pipe.flows.stats.created != pipe.flows.stats.ended:
        problems.append(f"created {pipe.flows.stats.created} != ended {pipe.flows.stats.ended}")
    for w in pipe.detector._all_windows():
        if len(w.keys) > lim.max_window_keys:
            problems.append(f"window keys {len(w.keys)} > {lim.max_window_keys}")
    if problems:
        raise Failure("invariant", len(frames), None, "; ".join(problems))
    return pipe, sink


@dataclass
class Summary:
    packets_mutated: int = 0
    packets_fed: int = 0
    batches: int = 0
    crashes: int = 0
    signatures: dict = field(default_factory=dict)  # signature -> count
    saved: list = field(default_factory=list)
    nondeterministic: int = 0
    determinism_checked: int = 0
    slowest_packet_s: float = 0.0
    slowest_packet_where: str = ""
    slowest_finish_s: float = 0.0
    elapsed_s: float = 0.0
    rss_start_kb: int = 0
    peak_rss_kb: int = 0
    records: int = 0
    by_link: dict = field(default_factory=dict)
    by_preset: dict = field(default_factory=dict)
    app: dict = field(default_factory=dict)  # summed pipe.app.stats: analyzers reached
    weird_names: dict = field(default_factory=dict)  # weird name -> count (the anomaly path taken)

    @property
    def packets_per_s(self) -> float:
        return self.packets_fed / self.elapsed_s if self.elapsed_s else 0.0

    def text(self) -> str:
        lines = [
            f"mutated packets      {self.packets_mutated:,} (fed in all: {self.packets_fed:,} in {self.batches:,} batches)",
            f"crashes              {self.crashes}" + ("" if not self.signatures else ""),
        ]
        for sig, n in sorted(self.signatures.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>8}  {sig}")
        lines += [
            f"determinism          {self.nondeterministic} differing of {self.determinism_checked} batches replayed twice",
            f"slowest packet       {self.slowest_packet_s * 1e3:.3f} ms ({self.slowest_packet_where})",
            f"slowest finish()     {self.slowest_finish_s * 1e3:.3f} ms",
            f"throughput           {self.packets_per_s:,.0f} packets/s ({self.elapsed_s:.1f} s)",
            f"peak RSS             {self.peak_rss_kb / 1024:.1f} MiB (after loading the corpus: {self.rss_start_kb / 1024:.1f} MiB)",
            f"records written      {self.records:,}",
            f"links                {', '.join(f'{k} {v:,}' for k, v in sorted(self.by_link.items()))}",
            f"presets              {', '.join(f'{k} {v:,}' for k, v in sorted(self.by_preset.items()))}",
            f"app layer            {', '.join(f'{k} {v:,}' for k, v in sorted(self.app.items()))}",
            f"weird names seen     {len(self.weird_names)} ({sum(self.weird_names.values()):,} weirds)",
        ]
        if self.saved:
            lines.append(
                "reproducers          " + ", ".join(self.saved[:10]) + (" ..." if len(self.saved) > 10 else "")
            )
        return "\n".join(lines)


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _save(crash_dir: Path, tag: str, linktype: int, frames: Sequence[Frame], meta: dict) -> str:
    crash_dir.mkdir(parents=True, exist_ok=True)
    p = write_pcapng(crash_dir / f"{tag}.pcapng", linktype, frames)
    (crash_dir / f"{tag}.json").write_text(json.dumps(dict(meta, linktype=linktype, frames=len(frames)), indent=1))
    return p.name


def make_batch(rng: random.Random, corpus, mut_p: float, mutator: Mutator) -> tuple[str, str, int, list[Frame], int]:
    """(link kind, preset, linktype, frames, how many mutated)."""
    name, lt, frames = corpus[rng.randrange(len(corpus))]
    n = rng.choice((50, 200, 500, 1000, 2000))
    start = rng.randrange(max(1, len(frames) - n))
    src = frames[start : start + n]
    kind = "eth"
    if lt == 1:
        kind = rng.choices(list(LINKS), weights=(10, 2, 1, 1, 1, 1, 1, 1, 1, 1))[0]
    vlan = rng.choice((1, 10, 4095, 0, rng.randrange(65536)))
    fam6 = rng.choice((10, 24, 28, 30))
    v6 = lt == 1 and (kind == "ipv6" or (kind != "ipv4" and rng.random() < 0.15))
    v6ext = v6 and rng.random() < 0.5
    scatter = rng.random() < 0.1
    preset = rng.choices(list(PRESETS), weights=(4, 3, 3))[0]
    out: list[Frame] = []
    mutated = 0
    seq_p = rng.choice((0.0, 0.01, 0.05))
    ts_p = rng.choice((0.0, 0.01, 0.05))
    for _i, (ts, f) in enumerate(src):
        g = f
        if v6:
            g = to_ipv6(g, rng, v6ext)
        if scatter:
            g = scatter_sources(g, rng)
        if v6 or scatter:
            g = fix_checksums(g)  # new addresses: the packet stays valid
        base = g
        if rng.random() < mut_p:
            other = src[rng.randrange(len(src))][1]
            g = mutator.frame(g, other)
            if rng.random() >= BAD_CHECKSUM_SHARE:
                g = fix_checksums(g)
        t = ts
        if rng.random() < ts_p:
            t = mutator.ts(ts)
        if kind != "eth":
            g, base = relink(kind, g, vlan, fam6), relink(kind, base, vlan, fam6)
        changed = g != base or t != ts
        mutated += changed
        out.append((t, g))
        r = rng.random()
        if r < seq_p:  # retransmission / duplicate
            out.append((t, g))
        elif r < 2 * seq_p and len(out) >= 2:  # swap with the previous one
            out[-1], out[-2] = out[-2], out[-1]
        elif r < 3 * seq_p:
            out.pop()  # dropped
            mutated -= changed
        elif r < 3.2 * seq_p and len(out) >= 8:  # a reversed window
            out[-8:] = out[-8:][::-1]
    link_lt = LINKS[kind] if lt == 1 else lt
    return kind, preset, link_lt, out, mutated


def run(
    packets: int = 20_000,
    seed: int = 1,
    corpus: Sequence[str | Path] = DEFAULT_CORPUS,
    crash_dir: Path | None = CRASH_DIR,
    wide_timestamps: bool = False,
    determinism_every: int = 25,
    progress: bool = False,
    max_seconds: float | None = None,
) -> Summary:
    rng = random.Random(seed)
    rules = load_rules(REPO / "rules", RECORD_FIELDS)
    corp = load_corpus(corpus)
    ports = sorted(
        {
            p
            for _, lt, fr in corp
            for _, f in fr[:2000]
            for a in (anatomy(f),)
            if a.l4 >= 0 and a.l4 + 4 <= len(f)
            for p in ((f[a.l4] << 8) | f[a.l4 + 1], (f[a.l4 + 2] << 8) | f[a.l4 + 3])
        }
    )
    mutator = Mutator(rng, ports[:400], wide_timestamps)
    s = Summary(rss_start_kb=_rss_kb())
    saves: dict[str, int] = {}
    timing = [0.0, -1, 0.0]
    t_start = time.perf_counter()
    next_report = t_start + 10
    while s.packets_mutated < packets:
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            break
        mut_p = rng.choice((0.02, 0.1, 0.3, 0.7, 1.0))
        kind, preset, lt, frames, mutated = make_batch(rng, corp, mut_p, mutator)
        s.batches += 1
        s.by_link[kind] = s.by_link.get(kind, 0) + len(frames)
        s.by_preset[preset] = s.by_preset.get(preset, 0) + len(frames)
        before = timing[0]
        timing[2] = 0.0
        try:
            pipe, sink = replay_batch(rules, preset, lt, frames, keep=False, timing=timing)
            s.records += sink.count
            for k, v in pipe.app.stats.items():
                s.app[k] = s.app.get(k, 0) + v
            for k, v in pipe.weird_counts.items():
                s.weird_names[k] = s.weird_names.get(k, 0) + v
            s.packets_fed += len(frames)
            s.packets_mutated += mutated
            if timing[0] > before:
                s.slowest_packet_s = timing[0]
                i = timing[1]
                s.slowest_packet_where = f"batch {s.batches}, {kind}/{preset}, frame {i} of {len(frames)}"
                if crash_dir is not None:
                    for old in crash_dir.glob("slowest-*"):
                        old.unlink()
                    _save(
                        crash_dir,
                        "slowest-context",
                        lt,
                        frames[: i + 1],
                        {"preset": preset, "link": kind, "index": i, "seconds": timing[0], "seed": seed},
                    )
                    _save(
                        crash_dir,
                        "slowest-packet",
                        lt,
                        frames[i : i + 1],
                        {"preset": preset, "link": kind, "seconds": timing[0], "seed": seed},
                    )
            s.slowest_finish_s = max(s.slowest_finish_s, timing[2])
            if determinism_every and s.batches % determinism_every == 0:
                s.determinism_checked += 1
                _, a = replay_batch(rules, preset, lt, frames, keep=True)
                _, b = replay_batch(rules, preset, lt, frames, keep=True)
                if a.lines != b.lines:
                    s.nondeterministic += 1
                    sig = "nondeterministic output"
                    s.signatures[sig] = s.signatures.get(sig, 0) + 1
                    s.crashes += 1
                    if crash_dir is not None and saves.get(sig, 0) < MAX_SAVES_PER_SIGNATURE:
                        saves[sig] = saves.get(sig, 0) + 1
                        s.saved.append(
                            _save(
                                crash_dir,
                                f"nondet-{seed}-{s.batches}",
                                lt,
                                frames,
                                {"preset": preset, "link": kind, "seed": seed, "kind": sig},
                            )
                        )
        except Failure as fail:
            s.crashes += 1
            fed = min(fail.index + 1, len(frames))
            s.packets_fed += fed
            s.packets_mutated += min(mutated, fed)
            sig = signature(fail.exc, fail.tb) if fail.exc is not None else f"invariant: {fail.tb}"
            s.signatures[sig] = s.signatures.get(sig, 0) + 1
            if crash_dir is not None and saves.get(sig, 0) < MAX_SAVES_PER_SIGNATURE:
                saves[sig] = saves.get(sig, 0) + 1
                tag = f"crash-{hashlib.sha1(sig.encode()).hexdigest()[:10]}-{seed}-{s.batches}"
                meta = {
                    "preset": preset,
                    "link": kind,
                    "seed": seed,
                    "batch": s.batches,
                    "index": fail.index,
                    "signature": sig,
                    "traceback": fail.tb,
                }
                s.saved.append(_save(crash_dir, tag, lt, frames[:fed], meta))
                if 0 <= fail.index < len(frames):  # the failing frame alone, when it suffices
                    try:
                        replay_batch(rules, preset, lt, frames[fail.index : fail.index + 1])
                    except Failure:
                        s.saved.append(_save(crash_dir, tag + "-alone", lt, frames[fail.index : fail.index + 1], meta))
        s.peak_rss_kb = max(s.peak_rss_kb, _rss_kb())
        if progress and time.perf_counter() > next_report:
            next_report += 30
            el = time.perf_counter() - t_start
            print(
                f"  {s.packets_mutated:,} mutated / {s.packets_fed:,} fed, {s.crashes} crashes, "
                f"{s.packets_fed / el:,.0f} pkt/s, RSS {_rss_kb() / 1024:.0f} MiB",
                flush=True,
            )
    s.elapsed_s = time.perf_counter() - t_start
    s.peak_rss_kb = max(s.peak_rss_kb, _rss_kb())
    return s


def replay_reproducer(path: Path) -> int:
    meta_p = path.with_suffix(".json")
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    lt, frames = read_capture(path)
    rules = load_rules(REPO / "rules", RECORD_FIELDS)
    try:
        replay_batch(rules, meta.get("preset", "default"), lt, frames)
    except Failure as f:
        print(f.tb, file=sys.stderr)
        print(f"reproduced: {f.kind} at frame {f.index} of {len(frames)} ({meta.get('preset', 'default')})")
        return 1
    print(f"no failure replaying {len(frames)} frames ({meta.get('preset', 'default')})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="mutated packets to run (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", nargs="+", default=list(DEFAULT_CORPUS))
    ap.add_argument("--crash-dir", default=str(CRASH_DIR))
    ap.add_argument(
        "--wide-timestamps", action="store_true", help="draw timestamps from pcapng's 64-bit microsecond range too"
    )
    ap.add_argument("--determinism-every", type=int, default=25, help="replay every Nth batch twice (0: never)")
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--replay", type=Path, help="replay one reproducer from fuzz/crashes/ and show its failure")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = ap.parse_args(argv)
    if args.replay:
        return replay_reproducer(args.replay)
    print(f"fuzzing {args.packets:,} mutated packets, seed {args.seed}, corpus {' '.join(args.corpus)}", flush=True)
    s = run(
        args.packets,
        args.seed,
        args.corpus,
        Path(args.crash_dir),
        args.wide_timestamps,
        args.determinism_every,
        progress=True,
        max_seconds=args.max_seconds,
    )
    print(s.text())
    if args.json:
        d = {k: v for k, v in s.__dict__.items()}
        d["packets_per_s"] = s.packets_per_s
        print(json.dumps(d, indent=1, default=str))
    return 1 if s.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
