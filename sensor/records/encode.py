"""Line encoding: a record becomes one JSON line, of a bounded length.

Profiles shape the records (``mde`` as they are, ``ecs`` in sensor/records/ecs.py);
``Encoder`` escapes every control character and non-ASCII code point and
shrinks (and flags) a record longer than ``max_line_bytes``, never splits it.
The sinks are in sensor/io/sinks.py; both are described in docs/outputs.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

KINDS = ("connections", "alerts", "transfers", "weird", "files")

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode

MAX_SHRINK_STEPS = 64  # value cuts tried before keys are dropped
SHRINK_MIN_STRING = 32  # strings at most this long are not cut
# keys never dropped while shrinking (identity of the record)
KEEP_KEYS = frozenset(
    {
        "Timestamp",
        "@timestamp",
        "Uid",
        "RuleId",
        "RuleTitle",
        "ActionType",
        "DeviceName",
        "RemoteIP",
        "RemotePort",
        "LocalIP",
        "LocalPort",
        "Name",
        "ecs",
        "event",
        "RecordTruncated",
        "RecordKind",
        "xfer",
    }
)


def to_line(rec: dict[str, Any]) -> bytes:
    return (_dumps(rec) + "\n").encode("ascii")


# ',"RecordKind":"<kind>"}' and the newline: the end of an mde line (Encoder.encode)
_KIND_TAILS = {k: "," + _dumps("RecordKind") + ":" + _dumps(k) + "}\n" for k in KINDS}


# -- profiles ---------------------------------------------------------------------
class MdeProfile:
    """The records as the sensor builds them (DeviceNetworkEvents-shaped),
    each with its kind last (``RecordKind``: connections, transfers, alerts,
    weird, files), so a stream that mixes them (stdout) says which is which."""

    name = "mde"

    @staticmethod
    def transform(kind: str, rec: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**rec, "RecordKind": kind}

    @staticmethod
    def flag_truncated(doc: dict[str, Any]) -> None:
        doc["RecordTruncated"] = True


def make_profile(name: str, config: Any = None, rules: Any = None) -> Any:
    if name == "mde":
        return MdeProfile()
    if name == "ecs":
        from sensor.core.config import Config
        from sensor.records.ecs import EcsProfile

        prof = EcsProfile(config if config is not None else Config(), rules)
        return prof
    raise ValueError(f"unknown output profile {name!r} (mde, ecs)")


def _flag(profile: Any, doc: dict[str, Any]) -> None:
    f = getattr(profile, "flag_truncated", None)
    if f is not None:
        f(doc)
    else:  # ecs and vendor profiles: under the vendor namespace
        x = doc.get("xfer")
        if not isinstance(x, dict):
            x = doc["xfer"] = {}
        x["record_truncated"] = True


def _size(v: Any) -> int:
    return len(_dumps(v))


def _largest(obj: Any) -> tuple[Any, Any] | None:
    """(container, key) of the largest value that can still be cut, descending
    into the largest child containers; None when nothing can be cut."""
    best: tuple[int, Any, Any] | None = None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        if isinstance(v, (dict, list)):
            if not v:
                continue
        elif not (isinstance(v, str) and len(v) > SHRINK_MIN_STRING):
            continue
        s = _size(v)
        if best is None or s > best[0]:
            best = (s, obj, k)
    if best is None:
        return None
    _, parent, key = best
    child = parent[key]
    if isinstance(child, dict) or (isinstance(child, list) and len(child) == 1 and isinstance(child[0], (dict, list))):
        inner = _largest(child)
        if inner is not None:
            return inner
    return parent, key


def shrink(doc: dict[str, Any], limit: int, flag: Any) -> bytes:
    """Cut ``doc`` (a private copy) until its line fits ``limit`` bytes."""
    flag(doc)
    for _ in range(MAX_SHRINK_STEPS):
        line = to_line(doc)
        if len(line) <= limit:
            return line
        spot = _largest(doc)
        if spot is None:
            break
        parent, key = spot
        v = parent[key]
        if isinstance(v, str):
            parent[key] = v[: len(v) // 2] + "..."
        elif isinstance(v, list):
            parent[key] = v[: len(v) // 2]
        else:  # a dict: drop its largest member
            big = max(v, key=lambda k: _size(v[k]))
            del v[big]
    # still too long: drop whole top-level values, largest first, identity kept
    for key in sorted((k for k in doc if k not in KEEP_KEYS), key=lambda k: -_size(doc[k])):
        del doc[key]
        line = to_line(doc)
        if len(line) <= limit:
            return line
    line = to_line(doc)
    if len(line) <= limit:
        return line
    minimal: dict[str, Any] = {
        k: doc[k] for k in ("Timestamp", "@timestamp", "Uid") if k in doc and _size(doc[k]) < 128
    }
    flag(minimal)
    return to_line(minimal)


class Encoder:
    """record -> profile document -> one ASCII JSON line of at most ``max_line_bytes``
    (newline included)."""

    def __init__(self, profile: Any = None, max_line_bytes: int = 16384) -> None:
        self.profile = profile or MdeProfile()
        self.max_line_bytes = max_line_bytes
        self.truncated = 0
        self._flag = lambda d: _flag(self.profile, d)
        self._mde = type(self.profile) is MdeProfile

    def encode(self, kind: str, rec: Mapping[str, Any]) -> bytes:
        if self._mde and type(rec) is dict and rec and "RecordKind" not in rec:
            # MdeProfile.transform's line without copying the record: its JSON
            # with the kind appended as the last member (the same bytes)
            tail = _KIND_TAILS.get(kind)
            if tail is None:
                tail = "," + _dumps("RecordKind") + ":" + _dumps(kind) + "}\n"
            line = (_dumps(rec)[:-1] + tail).encode("ascii")
        else:
            doc = self.profile.transform(kind, rec)
            line = to_line(doc)  # type: ignore[arg-type]
        if len(line) <= self.max_line_bytes:
            return line
        self.truncated += 1
        return shrink(json.loads(line), self.max_line_bytes, self._flag)
