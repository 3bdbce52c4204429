"""The process of a connection, carried in a recording's packet comments.

The daemon's flight recorder (``run --pcap-dir``, sensor/io/ring.py) writes
every packet of an attributed connection with a comment made by
``comment_for``: ``xfer-sensor/1 `` and one JSON object (ASCII only: every
control character and non-ASCII code point escaped; each text field cut at
``limits.max_comment_chars``). A replay of such a file reads the comments
back (``RecordingBook.load``, through the bounded block reader of
sensor/io/pcapng.py), parses them strictly (``parse_comment``: known keys,
right types, every length capped, anything else ignored) and fills the
records' process columns with ``AttributionSource`` "recording". A comment
is only as trustworthy as the file that holds it: docs/threat-model.md.
Design: docs/endpoint.md, "The flight recorder".
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sensor.attribution.book import BOOK_MAX_ENTRIES, AttributionBook
from sensor.io.pcapng import PcapngError, is_recording, read_comments
from sensor.io.ring import USERAPPL, flow_of

if TYPE_CHECKING:
    from sensor.attribution.attributor import Attribution

PREFIX = "xfer-sensor/1 "
SOURCE_RECORDING = "recording"
# comment key -> (Attribution field, type)
_FIELDS: dict[str, tuple[str, type]] = {
    "proc": ("InitiatingProcessFileName", str),
    "pid": ("InitiatingProcessId", int),
    "cmd": ("InitiatingProcessCommandLine", str),
    "user": ("InitiatingProcessAccountName", str),
    "parent": ("InitiatingProcessParentFileName", str),
    "ppid": ("InitiatingProcessParentId", int),
    "started": ("InitiatingProcessCreationTime", str),
    "exe": ("InitiatingProcessFolderPath", str),
    "uid": ("InitiatingProcessAccountUid", int),
}
_INT_RANGE = {"pid": (0, 1 << 31), "ppid": (0, 1 << 31), "uid": (-1, 1 << 32), "first": (0, 1 << 62)}
PARSED_CACHE_BYTES = 4 << 20  # comments kept parsed while a recording is read (their bytes; cleared beyond)
LIVE_SOURCES = ("socket", "uid-only")  # what a live lookup that found the process says


def comment_cap(max_chars: int) -> int:
    """The longest comment (bytes) ``comment_for`` writes with this cap; the reader keeps no more."""
    # each text field escaped is at most 6 bytes per character (\\uXXXX), plus keys and numbers
    return 6 * max_chars * sum(1 for _k, (_f, t) in _FIELDS.items() if t is str) + 512


def comment_for(att: Any, first_us: int | None, max_chars: int) -> bytes | None:
    """The packet comment naming ``att``'s process; None when it names none."""
    if att is None or getattr(att, "AttributionSource", "none") not in LIVE_SOURCES:
        return None
    if not (getattr(att, "InitiatingProcessFileName", "") or getattr(att, "InitiatingProcessAccountName", "")):
        return None  # names neither a process nor an account
    d: dict[str, Any] = {}
    for key, (name, typ) in _FIELDS.items():
        v = getattr(att, name, None)
        if typ is str:
            d[key] = str(v or "")[:max_chars]
        else:
            lo, hi = _INT_RANGE[key]
            d[key] = v if isinstance(v, int) and lo <= v < hi else lo
    d["src"] = att.AttributionSource
    if first_us is not None and 0 <= first_us < _INT_RANGE["first"][1]:
        d["first"] = int(first_us)
    return (PREFIX + json.dumps(d, ensure_ascii=True, separators=(",", ":"))).encode("ascii")


def parse_comment(raw: bytes, max_chars: int) -> tuple[Attribution, int | None] | None:
    """The attribution in one packet comment, and its connection's first
    packet time (µs); None for anything that is not exactly such a comment."""
    if len(raw) > comment_cap(max_chars):
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.startswith(PREFIX) or not text[len(PREFIX) :].startswith("{"):
        return None
    try:
        d = json.loads(text[len(PREFIX) :])
    except (ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or not set(d) <= set(_FIELDS) | {"src", "first"} or "proc" not in d:
        return None
    kw: dict[str, Any] = {}
    for key, v in d.items():
        if key == "src":
            if v not in LIVE_SOURCES:
                return None
            continue
        typ = _FIELDS[key][1] if key in _FIELDS else int
        if typ is int:
            if isinstance(v, bool) or not isinstance(v, int) or not _INT_RANGE[key][0] <= v < _INT_RANGE[key][1]:
                return None
        elif not isinstance(v, str) or len(v) > max_chars:
            return None
        if key != "first":
            kw[_FIELDS[key][0]] = v
    if not kw.get("InitiatingProcessFileName") and not kw.get("InitiatingProcessAccountName"):
        return None  # names nothing (uid-only: the account alone)
    from sensor.attribution.attributor import Attribution  # psutil and all: only for a recording

    live = d.get("src", "")
    att = Attribution(
        **kw,
        AttributionSource=SOURCE_RECORDING,
        AttributionDetail=f"from the recording's packet comment (live: {live})" if live else "",
    )
    first = d.get("first")
    return att, (first if first else None)


def _swap(key: tuple) -> tuple:
    return (key[0], key[3], key[4], key[1], key[2])


class RecordingBook(AttributionBook):
    """An ``AttributionBook`` filled from recordings: a connection's key is
    taken in either orientation (the replay's ``home_net`` may see the
    device at the other end than the live daemon did)."""

    __slots__ = ("max_chars", "comments", "rejected", "_seen", "_parsed", "_parsed_bytes")

    def __init__(self, max_chars: int, max_entries: int = BOOK_MAX_ENTRIES) -> None:
        super().__init__(max_entries)
        self.max_chars = max_chars
        self.comments = 0  # comments read
        self.rejected = 0  # comments that were not the recorder's, or malformed
        self._seen: dict[tuple, None] = {}  # (key, first) already added (bounded: cleared when full)
        # a connection's packets repeat one comment: parsed once (bounded: cleared when full)
        self._parsed: dict[bytes, tuple[Any, int | None] | None] = {}
        self._parsed_bytes = 0

    def take(self, key: tuple, first_ts: int | None = None) -> Any | None:
        a = super().take(key, first_ts)
        return a if a is not None else super().take(_swap(key), first_ts)

    def load(self, path: str) -> str:
        """Add the attributions of ``path``'s comments (a flight recording,
        else nothing); returns "" or why the reading stopped early."""
        if not is_recording(path, USERAPPL):
            return ""
        cap = comment_cap(self.max_chars)
        try:
            with open(path, "rb") as f:
                for linktype, ts, head, comment in read_comments(f, max_comment_bytes=cap + 1):
                    self._one(linktype, ts, head, comment)
        except PcapngError as e:
            return f"packet comments read up to the damage: {e}"
        except OSError as e:
            return f"packet comments not read: {e}"
        return ""

    def _one(self, linktype: int, ts: int, head: bytes, comment: bytes) -> None:
        self.comments += 1
        if comment in self._parsed:
            got = self._parsed[comment]
        else:
            got = parse_comment(comment, self.max_chars)
            if self._parsed_bytes + len(comment) > PARSED_CACHE_BYTES:
                self._parsed.clear()
                self._parsed_bytes = 0
            self._parsed[comment] = got
            self._parsed_bytes += len(comment)
        k = flow_of(linktype, head) if got is not None else None
        if got is None or k is None:
            self.rejected += 1
            return
        att, first = got
        proto, a, pa, b, pb = k
        key = (proto, str(ipaddress.ip_address(a)), pa, str(ipaddress.ip_address(b)), pb)
        seen = (min(key, _swap(key)), first, att)
        if seen in self._seen:
            return
        if len(self._seen) >= self.max_entries:
            self._seen.clear()
        self._seen[seen] = None
        self.add(key, att, first if first is not None else ts)


def recording_book(paths: Iterable[str], max_chars: int) -> RecordingBook | None:
    """A book for the replay of ``paths`` when one of them is a flight
    recording (a regular pcapng file whose section header names the
    recorder); else None (no process columns, as before)."""
    for p in paths:
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                continue
        except OSError:
            continue
        if is_recording(p, USERAPPL):
            return RecordingBook(max_chars)
    return None
