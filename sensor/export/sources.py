"""What ``rules export`` reads: the rules and their Sigma filters, split by the day's expiry.

The filters (sensor/detect/filters.py: the Sigma filters specification with
``reason`` and ``expires``) come from the rules folder (its filter documents)
and from the files named with ``--filters``. The export is judged on one day
(``--now``, default today, UTC): a filter is active when ``is_active`` says so
for that day; an expired one is left out of the queries and named in a comment.
The sensor's own loader reads the rules with the active filters, so every check
the sensor makes on them is made here too, and KQL (sensor/export/kql.py)
renders what the sensor matches. No pySigma here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sensor.detect.filters import (
    AllowFilter,
    is_active,
    is_filter_doc,
    load_filters,
    parse_filter,
    read_docs,
    yaml_files,
)
from sensor.detect.rules import RuleSet, load_rule_docs


@dataclass
class Sources:
    rule_docs: list[tuple[str, int, Any]] = field(default_factory=list)
    filters: list[AllowFilter] = field(default_factory=list)

    def split(self, day: date) -> tuple[list[AllowFilter], list[AllowFilter]]:
        """(active, expired) on ``day``."""
        return [f for f in self.filters if is_active(f, day)], [f for f in self.filters if not is_active(f, day)]


def read_sources(rules: str | Path, filters: Iterable[str | Path] = ()) -> Sources:
    """The rules (a folder or a file, with the filters among them) and the filter files."""
    out = Sources()
    for src, idx, doc in read_docs(yaml_files(rules)):
        if is_filter_doc(doc):
            out.filters.append(parse_filter(src, idx, doc))
        else:
            out.rule_docs.append((src, idx, doc))
    out.filters += load_filters(filters)
    return out


def load(src: Sources, active: Iterable[AllowFilter], known_fields: Iterable[str]) -> RuleSet:
    """The rules with the active filters applied, read and checked as the sensor does."""
    return load_rule_docs(src.rule_docs, known_fields, filters=active)


def describe(f: AllowFilter) -> str:
    s = f"filter {f.ref} ({f.source})"
    if f.reason:
        s += f": {f.reason}"
    return s + (f"; expires {f.expires}" if f.expires else "; no expiry")


def sigma_doc(f: AllowFilter) -> dict[str, Any]:
    """The filter as the Sigma document pySigma reads (``reason``/``expires`` are the sensor's)."""
    doc: dict[str, Any] = {"title": f.title, "id": f.id, "logsource": dict(f.logsource)}
    if f.name:
        doc["name"] = f.name
    doc["filter"] = {"rules": list(f.rules), **f.detection}
    return doc
