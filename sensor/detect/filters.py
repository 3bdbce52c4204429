"""Allow-lists as Sigma filters: one allow entry, one filter document.

A filter is a document of the Sigma filters specification (v2), which pySigma
reads too (``sigma.filters.SigmaFilter``)::

    title: Allow the Contoso payroll file drop by address
    id: 2bf90942-9e31-4c23-8928-3c4f00a8d93a
    name: allow_partner_contoso_cidr
    logsource: {product: xfer-sensor, category: network_connection}
    filter:
      rules: [xfer_public_file_transfer_connection]   # names or ids of detection rules
      selection: {RemoteIP|cidr: 198.51.100.0/28}
      condition: not selection                         # ANDed with the rule's condition
    reason: Contoso payroll file drop (CHG-1042)       # custom attributes (pySigma keeps them)
    expires: 2027-06-30                                # inclusive, UTC, the event's time

This module is the value model and the document checks that need no rule:
``load_filters(paths)`` gives ``AllowFilter`` values, ``is_active(f, when)``
says whether one still applies. The selections' fields and values are checked,
compiled and applied when ``sensor.detect.rules.load_rules`` attaches the
filters to the rules they name (``DetectionRule.filters``: one ``AllowEntry``
per filter and rule). docs/detection.md, "False-positive controls".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sensor.core.config import YamlFileError, one_line, quote, read_yaml_file

log = logging.getLogger("xfer-sensor.rules")

# the metadata every Sigma document (rule, correlation, filter) may carry
SIGMA_META_KEYS = frozenset(
    {
        "title",
        "id",
        "name",
        "related",
        "taxonomy",
        "description",
        "license",
        "author",
        "references",
        "date",
        "modified",
        "logsource",
        "tags",
        "falsepositives",
    }
)
# a filter document: the Sigma filters specification's `filter`, and the allow entry's reason and expiry
FILTER_KEYS = SIGMA_META_KEYS | {"filter", "reason", "expires"}
LOGSOURCE_KEYS = frozenset({"category", "product", "service", "definition"})


class RuleError(ValueError):
    """A rule or filter file problem: the file, the document (its id or name),
    the field and what is wrong, on one line."""

    def __init__(self, source: str, rule: str, fieldname: str, message: str, kind: str = "rule") -> None:
        self.source, self.rule, self.field, self.message = source, rule, fieldname, message
        super().__init__(one_line(f"{source}: {kind} '{rule[:200]}': field '{fieldname[:200]}': {message}"))


def filter_error(src: str, fid: str, fieldname: str, message: str) -> RuleError:
    return RuleError(src, fid, fieldname, message, kind="filter")


@dataclass(frozen=True)
class AllowFilter:
    """One Sigma filter document, checked; ``detection`` is its ``filter``
    mapping as written without ``rules`` (the selections and the condition),
    for a backend to convert."""

    source: str
    id: str
    name: str
    title: str
    rules: tuple[str, ...]  # the detection rules it applies to, by name or id, as written
    detection: Mapping[str, Any]
    logsource: Mapping[str, str]
    reason: str
    expires: str | None  # ISO date (inclusive) or date-time, as normalised; None: never
    expires_us: int | None  # the last microsecond it applies (UTC, packet time)
    description: str = ""
    author: str = ""

    @property
    def ref(self) -> str:
        return self.name or self.id

    @property
    def condition(self) -> str:
        return str(self.detection["condition"])

    @property
    def selections(self) -> dict[str, Any]:
        return {k: v for k, v in self.detection.items() if k != "condition"}

    def active_at(self, ts_us: int | None) -> bool:
        """Does it apply to an event at ``ts_us`` (µs since the epoch, UTC)?"""
        return self.expires_us is None or ts_us is None or ts_us <= self.expires_us


def is_active(f: AllowFilter, when: date | datetime) -> bool:
    """Does ``f`` apply on ``when``: a date (the whole day, UTC) or a date-time
    (naive: UTC)? An export leaves out filters not active today."""
    if isinstance(when, datetime):
        d = when if when.tzinfo else when.replace(tzinfo=UTC)
    else:
        d = datetime(when.year, when.month, when.day, tzinfo=UTC)
    return f.active_at(int(d.timestamp()) * 1_000_000 + d.microsecond)


class AllowEntry:
    """A filter applied to one detection rule, with its counters:
    ``suppresses(rec)`` is true when the filter's condition is false for the
    record (the filter would drop it). ``gate`` decides, at the event's time,
    whether it may; an expired filter logs a warning once."""

    __slots__ = ("rule_id", "filter", "suppresses", "condition", "hits", "expired_hits", "logged")

    def __init__(
        self, rule_id: str, f: AllowFilter, suppresses: Callable[[Mapping[str, Any]], bool], condition: Any = None
    ) -> None:
        self.rule_id, self.filter, self.suppresses = rule_id, f, suppresses
        self.condition = condition  # the filter's parsed condition (sensor/detect/rules.py's tree)
        self.hits = self.expired_hits = 0
        self.logged = False

    @property
    def name(self) -> str:
        return self.filter.ref

    @property
    def reason(self) -> str:
        return self.filter.reason

    @property
    def expires(self) -> str | None:
        return self.filter.expires

    @property
    def expires_us(self) -> int | None:
        return self.filter.expires_us

    def active_at(self, ts_us: int | None) -> bool:
        return self.filter.active_at(ts_us)

    def expired_now(self) -> bool:
        return self.expires_us is not None and time.time() * 1e6 > self.expires_us

    def gate(self, rec: Mapping[str, Any]) -> bool:
        """Called when the filter would suppress ``rec``: may it?"""
        if self.expires_us is None or self.active_at(event_us(rec)):
            self.hits += 1
            return True
        self.expired_hits += 1
        if not self.logged:
            self.logged = True
            log.warning(
                "rule %s: allow filter '%s' (%s) expired on %s (%s): it no longer suppresses events",
                self.rule_id,
                self.name,
                self.filter.source,
                self.expires,
                self.reason,
            )
        return False

    def describe(self) -> str:
        s = f"'{self.name}' ({self.reason})"
        if self.expires:
            s += f", expires {self.expires}"
        return s


def event_us(rec: Mapping[str, Any]) -> int | None:
    """A record's ``Timestamp`` in µs since the epoch; None when it has none."""
    ts = rec.get("Timestamp")
    if not isinstance(ts, str):
        return None
    try:
        d = datetime.fromisoformat(ts[:-1] + "+00:00" if ts.endswith("Z") else ts)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def expiry(err: Callable[[str], RuleError], v: Any) -> tuple[str, int]:
    """``expires``: a date (valid through that day, UTC) or an ISO 8601 date-time."""
    try:
        if isinstance(v, datetime):
            d = v if v.tzinfo else v.replace(tzinfo=UTC)
            return d.isoformat(), int(d.timestamp() * 1_000_000)
        if isinstance(v, date):
            end = datetime(v.year, v.month, v.day, tzinfo=UTC) + timedelta(days=1)
            return v.isoformat(), int(end.timestamp()) * 1_000_000 - 1
    except (OverflowError, ValueError):  # 9999-12-31 has no next day
        raise err(f"a date datetime can hold (before 9999-12-31), got {quote(v)}") from None
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
        except ValueError:
            pass
        else:
            if len(v) == 10:
                return expiry(err, d.date())
            return expiry(err, d)
    raise err(f"a date (YYYY-MM-DD) or an ISO 8601 date-time, got {quote(v)}")


def is_sigma_date(v: Any) -> bool:
    """Sigma's ``date``/``modified``: YYYY-MM-DD (or the older YYYY/MM/DD)."""
    if isinstance(v, str):
        try:
            return len(v) == 10 and bool(date.fromisoformat(v.replace("/", "-")))
        except ValueError:
            return False
    return isinstance(v, date) and not isinstance(v, datetime)


def is_filter_doc(doc: Any) -> bool:
    """A Sigma filter document (``filter:``, no ``detection`` or ``correlation``)."""
    return isinstance(doc, dict) and "filter" in doc and "detection" not in doc and "correlation" not in doc


def _string(src: str, fid: str, doc: Mapping[str, Any], key: str, required: bool = False) -> str:
    v = doc.get(key, "")
    if not isinstance(v, str) or (required and not v.strip()):
        raise filter_error(src, fid, key, "required, a non-empty string" if required else "must be a string")
    return v.strip()


def parse_filter(src: str, idx: int, doc: Any) -> AllowFilter:
    """One filter document, checked for everything that needs no rule."""
    if not is_filter_doc(doc):
        rid = str(doc.get("id") or doc.get("name") or f"#{idx}") if isinstance(doc, dict) else f"#{idx}"
        raise filter_error(src, rid, "filter", "not a Sigma filter document (title, id, logsource, filter: ...)")
    fid = str(doc.get("id") or doc.get("name") or f"#{idx}")[:200]
    for k in doc:
        if k not in FILTER_KEYS:
            raise filter_error(src, fid, str(k), f"unknown key (known: {', '.join(sorted(FILTER_KEYS))})")
    title = _string(src, fid, doc, "title", required=True)
    ident = _string(src, fid, doc, "id", required=True)
    name = _string(src, fid, doc, "name")
    desc = _string(src, fid, doc, "description")
    author = _string(src, fid, doc, "author")
    for k in ("date", "modified"):
        if k in doc and not is_sigma_date(doc[k]):
            raise filter_error(src, fid, k, f"a date YYYY-MM-DD, got {quote(doc[k])}")
    ls = doc.get("logsource")
    if not isinstance(ls, dict) or not ls:
        raise filter_error(src, fid, "logsource", "required, a mapping (e.g. {product: xfer-sensor, category: ...})")
    for k, v in ls.items():
        if k not in LOGSOURCE_KEYS:
            raise filter_error(src, fid, f"logsource.{k}", f"unknown key (known: {', '.join(sorted(LOGSOURCE_KEYS))})")
        if not isinstance(v, str):
            raise filter_error(src, fid, f"logsource.{k}", "must be a string")
    body = doc["filter"]
    if not isinstance(body, dict):
        raise filter_error(src, fid, "filter", "must be a mapping of rules, selections and condition")
    refs = body.get("rules")
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise filter_error(src, fid, "filter.rules", "required, the names or ids of the detection rules it allows for")
    if any(r.strip().lower() == "any" for r in refs):
        raise filter_error(
            src, fid, "filter.rules", "'any' would allow for every rule of the log source; name the rules it tunes"
        )
    cond = body.get("condition")
    if not isinstance(cond, str) or not cond.strip():
        raise filter_error(src, fid, "filter.condition", "required, a string (e.g. not selection)")
    detection = {str(k): v for k, v in body.items() if k != "rules"}
    if len(detection) < 2:
        raise filter_error(src, fid, "filter", "no selection")
    reason = _string(src, fid, doc, "reason", required=True)
    expires, expires_us = None, None
    if doc.get("expires") is not None:
        expires, expires_us = expiry(lambda m: filter_error(src, fid, "expires", m), doc["expires"])
    return AllowFilter(
        src,
        ident,
        name,
        title,
        tuple(r.strip() for r in refs),
        detection,
        dict(ls),
        reason,
        expires,
        expires_us,
        desc,
        author,
    )


def yaml_files(path: str | Path) -> list[Path]:
    """The ``*.yml`` and ``*.yaml`` files of a folder (sorted, not recursive), or the one file."""
    p = Path(path)
    try:
        if p.is_dir():
            return sorted(list(p.glob("*.yml")) + list(p.glob("*.yaml")))
        if p.exists():
            return [p]
    except OSError as e:
        raise RuleError(str(p), "-", "<file>", f"cannot read: {e.strerror or e}") from None
    raise RuleError(str(p), "-", "<file>", "no such file or folder")


def read_docs(files: Iterable[Path]) -> list[tuple[str, int, Any]]:
    """(source, index, document) of every YAML document of ``files``."""
    docs = []
    for f in files:
        try:
            for i, d in enumerate(read_yaml_file(f)):
                docs.append((str(f), i, d))
        except YamlFileError as e:
            raise RuleError(str(f), "-", e.field, e.message) from None
    return docs


def load_filters(paths: Iterable[str | Path]) -> list[AllowFilter]:
    """The filter documents of files and folders (a folder: its ``*.yml`` and
    ``*.yaml``, sorted); every document must be a filter. Checks what needs no
    rule; ``load_rules(..., filters=paths)`` checks the rest against the rules."""
    out = []
    for p in paths:
        for src, idx, doc in read_docs(yaml_files(p)):
            if doc is not None:
                out.append(parse_filter(src, idx, doc))
    return out
