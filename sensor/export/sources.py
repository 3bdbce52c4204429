"""What ``rules export`` reads: the rule files and the Sigma filter files, split by kind.

Sigma filters (the Sigma filters specification: ``filter: {rules, <selections>,
condition}``, here with the custom attributes ``reason`` and ``expires``) come
from the rules folder (every document with a ``filter`` key) and from the files
named with ``--filters``. A filter is active on ``today`` when it has no
``expires`` or ``expires`` (inclusive, UTC) is not before it; an expired one is
left out of the export and named in a comment.

``merged_rule_docs`` ANDs the active filters into the detection rules they
name, the way pySigma applies a filter to its rule: the rule's selections plus
the filter's (renamed ``<filter name>__<selection>``), the condition
``(rule condition) and (filter condition)``. The sensor's own loader then reads
the result, so KQL (sensor/export/kql.py) renders exactly what the sensor
matches. No pySigma here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sensor.core.config import YamlFileError, read_yaml_file
from sensor.detect.rules import RuleError, RuleSet, _expiry, load_rule_docs

_KEYWORDS = frozenset({"and", "or", "not", "of", "all", "1", "them"})
_TOKEN = re.compile(r"[A-Za-z0-9_*]+")


@dataclass(frozen=True)
class Filter:
    source: str
    doc: dict[str, Any]
    ref: str  # its name, else its id
    rules: tuple[str, ...]  # the rule ids or names it applies to
    reason: str
    expires: str | None
    expires_us: int | None

    def active_on(self, day: date) -> bool:
        """Not expired on ``day`` (``expires`` is inclusive, UTC)."""
        if self.expires_us is None:
            return True
        end_of_day = datetime(day.year, day.month, day.day, 23, 59, 59, 999999, tzinfo=UTC)
        start_of_day = end_of_day.replace(hour=0, minute=0, second=0, microsecond=0)
        return start_of_day.timestamp() * 1_000_000 <= self.expires_us

    def describe(self) -> str:
        s = f"filter {self.ref} ({self.source})"
        if self.reason:
            s += f": {self.reason}"
        return s + (f"; expires {self.expires}" if self.expires else "; no expiry")


@dataclass
class Sources:
    rule_docs: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)

    def split(self, day: date) -> tuple[list[Filter], list[Filter]]:
        """(active, expired) on ``day``."""
        return [f for f in self.filters if f.active_on(day)], [f for f in self.filters if not f.active_on(day)]


def _files(p: Path) -> list[Path]:
    try:
        if p.is_dir():
            return sorted(list(p.glob("*.yml")) + list(p.glob("*.yaml")))
        if p.exists():
            return [p]
    except OSError as e:
        raise RuleError(str(p), "-", "<file>", f"cannot read: {e.strerror or e}") from None
    raise RuleError(str(p), "-", "<file>", "no such file or folder")


def _filter(src: str, idx: int, doc: dict[str, Any]) -> Filter:
    ref = str(doc.get("name") or doc.get("id") or f"#{idx}")
    body = doc.get("filter")
    if not isinstance(body, dict) or not isinstance(body.get("condition"), str):
        raise RuleError(src, ref, "filter", "must be a mapping with rules, selections and a condition")
    rules = body.get("rules")
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, list) or not rules or not all(isinstance(r, str) for r in rules):
        raise RuleError(src, ref, "filter.rules", "must name the rules (ids or names) the filter applies to")
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise RuleError(src, ref, "reason", "must be text")
    expires, expires_us = (None, None)
    if doc.get("expires") is not None:
        expires, expires_us = _expiry(src, ref, "expires", doc["expires"])
    return Filter(src, doc, ref, tuple(rules), " ".join(reason.split()), expires, expires_us)


def read_sources(rules: str | Path, filters: Iterable[str | Path] = ()) -> Sources:
    """The rules (a folder or a file) and the filter files; every problem is a ``RuleError``."""
    out = Sources()
    for path, filters_only in [(Path(rules), False), *((Path(f), True) for f in filters)]:
        for f in _files(path):
            try:
                docs = read_yaml_file(f)
            except YamlFileError as e:
                raise RuleError(str(f), "-", e.field, e.message) from None
            for i, d in enumerate(docs):
                if d is None:
                    continue
                if isinstance(d, dict) and "filter" in d:
                    out.filters.append(_filter(str(f), i, d))
                elif filters_only:
                    raise RuleError(str(f), f"#{i}", "filter", "not a Sigma filter (no filter: section)")
                elif isinstance(d, dict):
                    out.rule_docs.append((str(f), i, d))
                else:
                    raise RuleError(str(f), f"#{i}", "<document>", "a rule must be a YAML mapping")
    return out


def _rename(condition: str, prefix: str, names: Iterable[str]) -> str:
    """The filter's condition over its renamed selections (``them``: all of them)."""
    known = set(names)

    def sub(m: re.Match[str]) -> str:
        t = m.group(0)
        if t == "them":
            return f"{prefix}*"
        if t.lower() in _KEYWORDS or not (t in known or "*" in t):
            return t
        return prefix + t

    return _TOKEN.sub(sub, condition)


def merged_rule_docs(src: Sources, active: Iterable[Filter]) -> list[tuple[str, int, dict[str, Any]]]:
    """The rule documents with the active filters ANDed into the detection rules they name."""
    docs = [(s, i, copy.deepcopy(d)) for s, i, d in src.rule_docs]
    for flt in active:
        body = {k: v for k, v in flt.doc["filter"].items() if k not in ("rules", "condition")}
        prefix = re.sub(r"\W", "_", flt.ref) + "__"
        hit = False
        for _s, _i, d in docs:
            det = d.get("detection")
            if not isinstance(det, dict) or not ({d.get("id"), d.get("name")} & set(flt.rules)):
                continue
            hit = True
            for k, v in body.items():
                det[prefix + str(k)] = copy.deepcopy(v)
            cond = _rename(flt.doc["filter"]["condition"], prefix, (str(k) for k in body))
            det["condition"] = f"({det.get('condition')}) and ({cond})"
        if not hit:
            raise RuleError(flt.source, flt.ref, "filter.rules", "names no loaded detection rule")
    return docs


def load_merged(src: Sources, active: Iterable[Filter], known_fields: Iterable[str]) -> RuleSet:
    return load_rule_docs(merged_rule_docs(src, active), known_fields)
