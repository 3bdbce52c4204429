"""``rules export``: the loaded rules and their active filters as six targets' queries.

The detection (the rule with its Sigma filters ANDed in, the way pySigma applies
them) comes from the pySigma backend of each target, with the processing
pipeline of the output profile (``pipelines/mde.yml``, ``pipelines/ecs.yml``);
the correlation stage is ours, because no backend writes the hunt's scheduled
form: a look-back of the correlation's timespan ending now, the group-by fields,
``count > threshold``, and the hunt's columns (connection count, bytes sent and
received including the data channels', first and last seen). What each backend
gets wrong and what we do instead: docs/export.md. KQL is the sensor's own
renderer (sensor/export/kql.py), also the HTML report's.

Fixes on the backends (subclasses below): a negated expression is ``NOT
coalesce(expr, false)`` in SQL and ES|QL (a record without the filter's field
is not allowed by it, as in the sensor; SQL's NULL would drop it); a CIDR the
backend expands into equalities is grouped (pySigma's expansion is unparenthesized
under NOT); dotted fields are struct paths in SQL (``"host"."name"``), not one
quoted name; Apache Spark has no ``ip_cidr_contains`` (Databricks only): CIDRs
expand into prefix matches there.

Imports pySigma: only the ``rules export`` command imports this module.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar

from sigma.backends.databricks import DatabricksBackend
from sigma.backends.elasticsearch import EqlBackend, ESQLBackend
from sigma.backends.splunk import SplunkBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionNOT
from sigma.conversion.base import TextQueryBackend
from sigma.conversion.state import ConversionState
from sigma.exceptions import SigmaError
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaRule
from sigma.types import SigmaNumber
from sigma_backend_duckdb.backend import DuckDBBackend

from sensor.core.timefmt import iso_us
from sensor.detect.filters import AllowFilter
from sensor.detect.rules import CorrelationRule, RuleError, RuleSet
from sensor.export.kql import CUSTOM_TABLE, hunt_kql
from sensor.export.sources import Sources, describe, load, sigma_doc
from sensor.records.mde import RECORD_FIELDS

TARGETS = ("kql", "esql", "eql", "spl", "duckdb", "spark")
PROFILES = ("mde", "ecs")
# the profile a target reads when --profile is not given
DEFAULT_PROFILE = {"kql": "mde", "esql": "ecs", "eql": "ecs", "spl": "mde", "duckdb": "mde", "spark": "mde"}
# where the connection records are (--table overrides)
DEFAULT_TABLE = {
    "kql": CUSTOM_TABLE,
    "esql": "logs-xfer_sensor.connections-*",
    "eql": "logs-xfer_sensor.connections-*",
    "spl": 'index=xfer_sensor sourcetype="xfer-sensor:connections"',
    "duckdb": "xfer_connections",
    "spark": "xfer_connections",
}
COMMENT = {"kql": "//", "esql": "//", "eql": "//", "spl": None, "duckdb": "--", "spark": "--"}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ExportError(ValueError):
    """A rule or filter the target cannot express: one line, exit 2."""


def pipeline(profile: str) -> ProcessingPipeline:
    """The shipped pySigma processing pipeline of an output profile (also usable with sigma-cli:
    ``sigma convert -p sensor/export/pipelines/ecs.yml``)."""
    text = importlib.resources.files("sensor.export").joinpath("pipelines", f"{profile}.yml").read_text()
    return ProcessingPipeline.from_yaml(text)


def field_map(profile: str) -> dict[str, str]:
    """Record field -> the profile's field, from the profile's pipeline (identity for mde)."""
    out: dict[str, str] = {}
    for item in pipeline(profile).items:
        mapping = getattr(item.transformation, "mapping", None)
        if isinstance(mapping, Mapping):
            for k, v in mapping.items():
                out[k] = v if isinstance(v, str) else v[0]
    return out


# -- the backends, with what they get wrong fixed -----------------------------------------------------------


class _Raw:
    """Adds the output format ``xfer``: the detection's predicate alone, for our correlation stage."""

    formats: ClassVar[dict[str, str]]
    not_token: ClassVar[str]
    group_expression: ClassVar[str]
    coalesce_not: ClassVar[bool] = False
    numbers_in: ClassVar[bool] = False

    def finalize_query_xfer(self, rule: SigmaRule, query: Any, index: int, state: ConversionState) -> Any:
        if state.has_deferred():
            raise ExportError(f"rule {rule.name or rule.id}: needs a post-filter this export does not write")
        return query

    def finalize_output_xfer(self, queries: list[Any]) -> list[Any]:
        return queries

    def convert_condition_not(self, cond: ConditionNOT, state: ConversionState) -> Any:
        if not self.coalesce_not:
            return super().convert_condition_not(cond, state)  # type: ignore[misc]
        inner = self.convert_condition(cond.args[0], state)  # type: ignore[attr-defined]
        return f"{self.not_token} coalesce({inner}, false)"

    def convert_condition_as_in_expression(self, cond: Any, state: ConversionState) -> Any:
        if self.numbers_in and all(isinstance(a.value, SigmaNumber) for a in cond.args):
            field = self.escape_and_quote_field(cond.args[0].field)  # type: ignore[attr-defined]
            return f"{field} in ({', '.join(str(a.value) for a in cond.args)})"
        return super().convert_condition_as_in_expression(cond, state)  # type: ignore[misc]

    def convert_condition_field_eq_val_cidr(self, cond: Any, state: ConversionState) -> Any:
        r = super().convert_condition_field_eq_val_cidr(cond, state)  # type: ignore[misc]
        return self.group_expression.format(expr=r) if isinstance(r, str) else r


def _sql_path(name: str, quote: str) -> str:
    """A dotted field as a SQL struct path, each part quoted when it needs it."""
    return ".".join(p if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) else f"{quote}{p}{quote}" for p in name.split("."))


def _sql_field(quote: str) -> Callable[[Any, str], str]:
    """The backends' ``escape_and_quote_field``: one quoted name would not be a struct path."""
    return lambda self, name: _sql_path(name, quote)


def _backend(target: str, pipe: ProcessingPipeline) -> TextQueryBackend:
    if target == "esql":
        base: type[TextQueryBackend] = ESQLBackend
        extra: dict[str, Any] = {"coalesce_not": True}
    elif target == "eql":
        # EQL's like~ takes strings: ports are numbers, compared with in
        base, extra = EqlBackend, {"numbers_in": True}
    elif target == "spl":
        base, extra = SplunkBackend, {}
    elif target == "duckdb":
        base, extra = DuckDBBackend, {"coalesce_not": True, "escape_and_quote_field": _sql_field('"')}
    else:
        # Apache Spark has no ip_cidr_contains/try_ip_as_binary (Databricks SQL only)
        base = DatabricksBackend
        extra = {"coalesce_not": True, "cidr_expression": None, "escape_and_quote_field": _sql_field("`")}
    cls = type(f"Xfer{base.__name__}", (_Raw, base), {"formats": {**base.formats, "xfer": "predicate"}, **extra})
    return cls(processing_pipeline=pipe)


# -- the export --------------------------------------------------------------------------------------------


@dataclass
class Export:
    target: str
    profile: str
    table: str
    today: date
    until: datetime | None = None  # the look-back's end (default: now, the scheduled form)


def detection_predicates(src: Sources, active: Sequence[AllowFilter], target: str, profile: str) -> dict[str, str]:
    """Detection rule id -> the backend's predicate for it with the active filters applied."""
    docs = [d for _s, _i, d in src.rule_docs if isinstance(d, dict) and "detection" in d] + [
        sigma_doc(f) for f in active
    ]
    try:
        col = SigmaCollection.from_dicts(docs)
        backend = _backend(target, pipeline(profile))
        out: dict[str, str] = {}
        for r in col.rules:
            if isinstance(r, SigmaRule):
                q = backend.convert_rule(r, "xfer")
                out[str(r.id)] = str(q[0]) if len(q) == 1 else " OR ".join(f"({x})" for x in q)
        return out
    except (SigmaError, NotImplementedError, ValueError, TypeError, KeyError) as e:
        # a rule or filter the sensor accepts but the backend cannot convert: one line, not a traceback
        raise ExportError(f"pySigma ({target}): {' '.join(str(e).split())[:300]}") from None


def _header(ex: Export, rules: RuleSet, active: Sequence[AllowFilter], expired: Sequence[AllowFilter]) -> list[str]:
    lines = [
        f"xfer-sensor rules export --target {ex.target} --profile {ex.profile}",
        f"the loaded rules with {len(active)} active filter(s) on {ex.today.isoformat()}",
    ]
    lines += [f"active: {describe(f)}" for f in active]
    lines += [f"EXPIRED, left out: {describe(f)}" for f in expired]
    return lines


def _comment(target: str, lines: Sequence[str]) -> str:
    mark = COMMENT[target]
    if mark is None:  # SPL: a ``` comment ``` block
        return "\n".join("``` " + ln.replace("`", "'") + " ```" for ln in lines)
    return "\n".join(f"{mark} {ln}" for ln in lines)


def _iso(t: datetime) -> str:
    return iso_us((t - _EPOCH) // timedelta(microseconds=1))


def _ts_literal(target: str, t: datetime) -> str:
    iso = _iso(t)
    return {
        "duckdb": f"TIMESTAMPTZ '{iso}'",
        "spark": f"TIMESTAMP '{iso}'",
        "esql": f'TO_DATETIME("{iso[:-4]}Z")',
    }.get(target, iso)


def _sql(ex: Export, c: CorrelationRule, pred: str, f: Callable[[str], str]) -> str:
    quote = '"' if ex.target == "duckdb" else "`"

    def q(name: str) -> str:
        return _sql_path(name, quote)

    ts = f"CAST({q(f('Timestamp'))} AS {'TIMESTAMPTZ' if ex.target == 'duckdb' else 'TIMESTAMP'})"
    end = (
        _ts_literal(ex.target, ex.until) if ex.until else ("now()" if ex.target == "duckdb" else "current_timestamp()")
    )
    hours = c.timespan_s // 3600 if c.timespan_s % 3600 == 0 else None
    span = f"INTERVAL {hours} HOUR" if hours else f"INTERVAL {c.timespan_s} SECOND"
    keys = ", ".join(f"{q(f(g))} AS {quote}{f(g)}{quote}" for g in c.group_by)
    by = ", ".join(q(f(g)) for g in c.group_by)

    def total(own: str, data: str) -> str:
        return f"sum({q(f(own))} + coalesce({q(f(data))}, 0))"

    op = {"gt": ">", "gte": ">="}[c.op]
    return "\n".join(
        [
            f"SELECT {keys},",
            "       count(*) AS ConnectionCount,",
            f"       {total('SentBytes', 'DataSentBytes')} AS BytesSent,",
            f"       {total('ReceivedBytes', 'DataReceivedBytes')} AS BytesReceived,",
            f"       min({ts}) AS FirstSeen, max({ts}) AS LastSeen",
            f"FROM {ex.table}",
            f"WHERE {ts} BETWEEN {end} - {span} AND {end}",
            f"  AND ({pred})",
            f"GROUP BY {by}",
            f"HAVING count(*) {op} {c.threshold};",
        ]
    )


def _esql(ex: Export, c: CorrelationRule, pred: str, f: Callable[[str], str]) -> str:
    end = _ts_literal("esql", ex.until) if ex.until else "NOW()"
    ts = f("Timestamp")
    op = {"gt": ">", "gte": ">="}[c.op]
    return "\n".join(
        [
            f"FROM {ex.table}",
            f"| WHERE {ts} >= {end} - {c.timespan_s} seconds AND {ts} <= {end}",
            f"| WHERE {pred}",
            f"| EVAL xfer_sent = {f('SentBytes')} + COALESCE({f('DataSentBytes')}, 0),"
            f" xfer_received = {f('ReceivedBytes')} + COALESCE({f('DataReceivedBytes')}, 0)",
            "| STATS ConnectionCount = COUNT(*), BytesSent = SUM(xfer_sent), BytesReceived = SUM(xfer_received),",
            f"        FirstSeen = MIN({ts}), LastSeen = MAX({ts}) BY {', '.join(f(g) for g in c.group_by)}",
            f"| WHERE ConnectionCount {op} {c.threshold}",
        ]
    )


def _eql(ex: Export, c: CorrelationRule, pred: str, f: Callable[[str], str]) -> str:
    runs = c.threshold + 1 if c.op == "gt" else c.threshold
    return "\n".join(
        [
            f"sequence by {', '.join(f(g) for g in c.group_by)} with maxspan={c.timespan_s}s",
            f"  [network where {pred}] with runs={runs}",
        ]
    )


def _spl(ex: Export, c: CorrelationRule, pred: str, f: Callable[[str], str]) -> str:
    def ev(name: str) -> str:
        n = f(name)
        return f"'{n}'" if "." in n else n

    earliest = (
        f"earliest={int(ex.until.timestamp()) - c.timespan_s} latest={int(ex.until.timestamp()) + 1}"
        if ex.until
        else f"earliest=-{c.timespan_s}s latest=now"
    )
    op = {"gt": ">", "gte": ">="}[c.op]
    return "\n".join(
        [
            f"search {ex.table} {earliest} {pred}",
            f"| eval xfer_sent={ev('SentBytes')}+coalesce({ev('DataSentBytes')}, 0),"
            f" xfer_received={ev('ReceivedBytes')}+coalesce({ev('DataReceivedBytes')}, 0)",
            "| stats count AS ConnectionCount, sum(xfer_sent) AS BytesSent, sum(xfer_received) AS BytesReceived,",
            f"    min(_time) AS FirstSeen, max(_time) AS LastSeen by {' '.join(f(g) for g in c.group_by)}",
            f"| where ConnectionCount {op} {c.threshold}",
            '| fieldformat FirstSeen=strftime(FirstSeen, "%Y-%m-%dT%H:%M:%S.%6NZ")',
            '| fieldformat LastSeen=strftime(LastSeen, "%Y-%m-%dT%H:%M:%S.%6NZ")',
        ]
    )


def export(src: Sources, ex: Export) -> str:
    """Every correlation of the loaded rules, as ``ex.target``'s query, with a header naming the filters."""
    if ex.target == "kql" and ex.profile != "mde":
        raise ExportError("--target kql reads the mde records (a Sentinel/ADX table): use --profile mde")
    active, expired = src.split(ex.today)
    rules = load(src, active, RECORD_FIELDS)  # the sensor's own reading: every rule and filter is valid
    if not rules.correlations:
        raise ExportError("no correlation rule among the loaded rules: nothing to export")
    parts = [_comment(ex.target, _header(ex, rules, active, expired))]
    fmap = field_map(ex.profile)

    def f(name: str) -> str:
        return fmap.get(name, name)

    preds = {} if ex.target == "kql" else detection_predicates(src, active, ex.target, ex.profile)
    for c in rules.correlations:
        if c.op not in ("gt", "gte"):
            raise ExportError(f"rule {c.name or c.id}: condition {c.op} is not a hunt (gt or gte)")
        dets = [d for d in rules.detections if d.id in c.rules]
        title = [f"{c.title} ({c.name or c.id}), over {', '.join(d.ref for d in dets)}"]
        if ex.target == "kql":
            q = hunt_kql(c, dets, ex.table, True, _iso(ex.until) if ex.until else None)
        else:
            ps = [preds[d.id] for d in dets]
            pred = ps[0] if len(ps) == 1 else " OR ".join(f"({p})" for p in ps)
            if ex.target in ("duckdb", "spark"):
                q = _sql(ex, c, pred, f)
            elif ex.target == "esql":
                q = _esql(ex, c, pred, f)
            elif ex.target == "eql":
                title.append("EQL has no sums: it finds the sequences; the bytes and counts come from ES|QL")
                q = _eql(ex, c, pred, f)
            else:
                q = _spl(ex, c, pred, f)
        parts.append(_comment(ex.target, title) + "\n" + q)
    return "\n\n".join(parts) + "\n"


__all__ = ["DEFAULT_PROFILE", "DEFAULT_TABLE", "PROFILES", "TARGETS", "Export", "ExportError", "RuleError", "export"]
