"""Sigma rules: detection rules and ``event_count`` correlation rules.

Loaded with pyyaml into validated, frozen objects. Anything this loader does
not implement (a modifier, a correlation type, a condition construct, an
unknown key, a field records do not have) is refused at load time with the
file, the rule id and the field (``RuleError``) -- never silently ignored.

Supported detection subset:
- selections: a mapping (all fields must match) or a list of mappings (any);
- values: scalar or list (any of; ``|all`` for all of); ``null`` = empty/absent;
  strings compare case-insensitively with ``*``/``?`` wildcards;
- modifiers: contains, startswith, endswith, all, cidr, re, gt, gte, lt, lte,
  exists;
- condition: selection names, ``and``, ``or``, ``not``, parentheses,
  ``1 of NAME*``, ``all of NAME*``, ``1 of them``, ``all of them``.
Correlation subset: ``type: event_count`` with ``rules``, ``group-by``,
``timespan`` (s, m, h, d) and ``condition`` ``gt``/``gte``.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

Matcher = Callable[[Mapping[str, Any]], bool]

RULE_KEYS = frozenset({
    "title", "id", "name", "related", "taxonomy", "status", "description", "license", "author",
    "references", "date", "modified", "logsource", "detection", "fields", "falsepositives",
    "level", "tags", "scope", "correlation", "generate",
})
CORRELATION_KEYS = frozenset({"type", "rules", "group-by", "timespan", "condition", "generate", "aliases"})
MODIFIERS = frozenset({"contains", "startswith", "endswith", "all", "cidr", "re", "gt", "gte", "lt", "lte", "exists"})
LEVELS = ("informational", "low", "medium", "high", "critical")
_TIMESPAN = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RuleError(ValueError):
    def __init__(self, source: str, rule: str, fieldname: str, message: str) -> None:
        self.source, self.rule, self.field = source, rule, fieldname
        super().__init__(f"{source}: rule '{rule}': field '{fieldname}': {message}")


@dataclass(frozen=True)
class DetectionRule:
    source: str
    id: str
    name: str
    title: str
    level: str
    tags: tuple[str, ...]
    fields_used: frozenset[str]
    match: Matcher

    @property
    def ref(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class CorrelationRule:
    source: str
    id: str
    name: str
    title: str
    level: str
    tags: tuple[str, ...]
    rules: tuple[str, ...]        # ids of the referenced detection rules
    group_by: tuple[str, ...]
    timespan_s: int
    op: str                        # "gt" | "gte"
    threshold: int
    generate: bool


@dataclass(frozen=True)
class RuleSet:
    detections: tuple[DetectionRule, ...]
    correlations: tuple[CorrelationRule, ...]

    @property
    def quiet_detections(self) -> frozenset[str]:
        """Detection rule ids that only feed correlations (``generate: false``)."""
        q = set()
        for c in self.correlations:
            if not c.generate:
                q.update(c.rules)
        return frozenset(q)


# -- values ------------------------------------------------------------------
def _wild_re(s: str) -> re.Pattern:
    return re.compile(fnmatch.translate(s), re.IGNORECASE | re.DOTALL)


def _value_pred(err: Callable[[str], RuleError], fieldname: str, mods: list[str], value: Any) -> Callable[[Any], bool]:
    if value is None:
        return lambda v: v is None or v == ""
    if isinstance(value, (dict, list)):
        raise err(f"value must be a scalar, got {type(value).__name__}")
    if "exists" in mods:
        if not isinstance(value, bool):
            raise err("|exists takes true or false")
        return (lambda v: v is not None and v != "") if value else (lambda v: v is None or v == "")
    if any(m in mods for m in ("gt", "gte", "lt", "lte")):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise err(f"numeric modifier needs a number, got {value!r}")
        m = next(m for m in mods if m in ("gt", "gte", "lt", "lte"))
        ops = {"gt": lambda a: a > value, "gte": lambda a: a >= value, "lt": lambda a: a < value, "lte": lambda a: a <= value}
        op = ops[m]
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and op(v)
    if "cidr" in mods:
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise err(f"not a CIDR: {value!r}") from None

        def cidr(v: Any, net=net) -> bool:
            try:
                a = ipaddress.ip_address(str(v))
            except ValueError:
                return False
            return a.version == net.version and a in net
        return cidr
    if "re" in mods:
        try:
            rx = re.compile(str(value))
        except re.error as e:
            raise err(f"bad regular expression {value!r}: {e}") from None
        return lambda v: v is not None and rx.search(str(v)) is not None
    if isinstance(value, bool):
        return lambda v: v is value
    if isinstance(value, (int, float)) and not any(m in mods for m in ("contains", "startswith", "endswith")):
        return lambda v: (not isinstance(v, bool) and v == value) or (isinstance(v, str) and v == str(value))
    s = str(value)
    if "contains" in mods:
        s = f"*{s}*"
    elif "startswith" in mods:
        s = f"{s}*"
    elif "endswith" in mods:
        s = f"*{s}"
    if "*" in s or "?" in s:
        rx = _wild_re(s)
        return lambda v: v is not None and rx.match(str(v)) is not None
    low = s.lower()
    return lambda v: v is not None and str(v).lower() == low


def _field_matcher(src: str, rid: str, key: str, value: Any, known: frozenset[str] | None) -> tuple[str, Callable]:
    parts = key.split("|")
    fieldname, mods = parts[0], parts[1:]

    def err(msg: str) -> RuleError:
        return RuleError(src, rid, f"detection.{key}", msg)

    if not fieldname:
        raise err("keyword (field-less) searches are not supported")
    if known is not None and fieldname not in known:
        raise RuleError(src, rid, f"detection.{key}", f"unknown field '{fieldname}' (records have: {', '.join(sorted(known))})")
    for m in mods:
        if m not in MODIFIERS:
            raise err(f"unsupported modifier '|{m}' (supported: {', '.join(sorted(MODIFIERS))})")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise err("empty value list")
    preds = [_value_pred(err, fieldname, mods, v) for v in values]
    if "all" in mods:
        return fieldname, lambda v: all(p(v) for p in preds)
    if len(preds) == 1:
        return fieldname, preds[0]
    return fieldname, lambda v: any(p(v) for p in preds)


def _selection(src: str, rid: str, name: str, body: Any, known: frozenset[str] | None, used: set) -> Matcher:
    if isinstance(body, dict):
        if not body:
            raise RuleError(src, rid, f"detection.{name}", "empty selection")
        fms = []
        for k, v in body.items():
            f, pred = _field_matcher(src, rid, str(k), v, known)
            used.add(f)
            fms.append((f, pred))
        return lambda rec: all(pred(rec.get(f)) for f, pred in fms)
    if isinstance(body, list) and body and all(isinstance(x, dict) for x in body):
        subs = [_selection(src, rid, name, x, known, used) for x in body]
        return lambda rec: any(s(rec) for s in subs)
    raise RuleError(src, rid, f"detection.{name}", "must be a mapping of fields or a list of mappings (keyword lists are not supported)")


# -- condition ---------------------------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9_*\-.]+|\S)")


def _parse_condition(src: str, rid: str, text: str, sels: Mapping[str, Matcher]) -> Matcher:
    def err(msg: str) -> RuleError:
        return RuleError(src, rid, "detection.condition", f"{msg} in {text!r}")

    if "|" in text:
        raise err("pipe aggregations are not supported (use a correlation rule)")
    toks = _TOKEN.findall(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(toks):
            raise err("unexpected end")
        pos += 1
        return toks[pos - 1]

    def names(pattern: str) -> list[Matcher]:
        if pattern == "them":
            found = list(sels.values())
        else:
            found = [m for n, m in sels.items() if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise err(f"'{pattern}' names no selection")
        return found

    def primary() -> Matcher:
        t = take()
        tl = t.lower()
        if t == "(":
            m = expr()
            if take() != ")":
                raise err("missing ')'")
            return m
        if tl == "not":
            inner = primary()
            return lambda r: not inner(r)
        if tl in ("1", "all", "any"):
            if (peek() or "").lower() != "of":
                raise err(f"expected 'of' after '{t}'")
            take()
            ms = names(take())
            if tl == "all":
                return lambda r: all(m(r) for m in ms)
            return lambda r: any(m(r) for m in ms)
        if tl in ("and", "or", ")") or t in ("(",):
            raise err(f"unexpected '{t}'")
        if t not in sels:
            if re.fullmatch(r"[A-Za-z0-9_\-.]+", t):
                raise err(f"unknown selection '{t}'")
            raise err(f"unsupported token '{t}'")
        return sels[t]

    def conj() -> Matcher:
        m = primary()
        while (peek() or "").lower() == "and":
            take()
            rhs = primary()
            m = (lambda a, b: lambda r: a(r) and b(r))(m, rhs)
        return m

    def expr() -> Matcher:
        m = conj()
        while (peek() or "").lower() == "or":
            take()
            rhs = conj()
            m = (lambda a, b: lambda r: a(r) or b(r))(m, rhs)
        return m

    if not toks:
        raise err("empty condition")
    m = expr()
    if pos != len(toks):
        raise err(f"unexpected '{toks[pos]}'")
    return m


# -- documents ---------------------------------------------------------------
def _common(src: str, doc: dict, idx: int) -> tuple[str, str, str, str, tuple[str, ...]]:
    rid = str(doc.get("id") or doc.get("name") or f"#{idx}")
    for k in doc:
        if k not in RULE_KEYS:
            raise RuleError(src, rid, str(k), f"unknown key (Sigma keys: {', '.join(sorted(RULE_KEYS))})")
    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        raise RuleError(src, rid, "title", "required, a non-empty string")
    if not isinstance(doc.get("id"), str) or not doc["id"].strip():
        raise RuleError(src, rid, "id", "required, a string (a UUID)")
    name = doc.get("name", "")
    if not isinstance(name, str):
        raise RuleError(src, rid, "name", "must be a string")
    level = doc.get("level", "medium")
    if level not in LEVELS:
        raise RuleError(src, rid, "level", f"one of {', '.join(LEVELS)}, got {level!r}")
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RuleError(src, rid, "tags", "must be a list of strings")
    return doc["id"], name, title, level, tuple(tags)


def _detection(src: str, doc: dict, idx: int, known: frozenset[str] | None) -> DetectionRule:
    rid, name, title, level, tags = _common(src, doc, idx)
    if "correlation" in doc or "generate" in doc:
        raise RuleError(src, rid, "correlation", "a rule has either 'detection' or 'correlation'")
    ls = doc.get("logsource")
    if not isinstance(ls, dict) or not ls:
        raise RuleError(src, rid, "logsource", "required, a mapping (e.g. category: network_connection)")
    det = doc["detection"]
    if not isinstance(det, dict):
        raise RuleError(src, rid, "detection", "must be a mapping")
    cond = det.get("condition")
    if isinstance(cond, list):
        if len(cond) != 1:
            raise RuleError(src, rid, "detection.condition", "a list of conditions is not supported; join them with 'or'")
        cond = cond[0]
    if not isinstance(cond, str):
        raise RuleError(src, rid, "detection.condition", "required, a string")
    used: set[str] = set()
    sels = {}
    for k, v in det.items():
        if k in ("condition", "timeframe"):
            if k == "timeframe":
                raise RuleError(src, rid, "detection.timeframe", "not supported; use a correlation rule's timespan")
            continue
        sels[str(k)] = _selection(src, rid, str(k), v, known, used)
    if not sels:
        raise RuleError(src, rid, "detection", "no selection")
    match = _parse_condition(src, rid, cond, sels)
    return DetectionRule(src, rid, name, title, level, tags, frozenset(used), match)


def _correlation(src: str, doc: dict, idx: int, known: frozenset[str] | None) -> tuple[CorrelationRule, list[str]]:
    rid, name, title, level, tags = _common(src, doc, idx)
    if "detection" in doc or "logsource" in doc:
        raise RuleError(src, rid, "detection", "a correlation rule has no detection/logsource")
    c = doc["correlation"]
    if not isinstance(c, dict):
        raise RuleError(src, rid, "correlation", "must be a mapping")
    for k in c:
        if k not in CORRELATION_KEYS:
            raise RuleError(src, rid, f"correlation.{k}", f"unknown key (known: {', '.join(sorted(CORRELATION_KEYS))})")
    if c.get("type") != "event_count":
        raise RuleError(src, rid, "correlation.type", f"only 'event_count' is implemented, got {c.get('type')!r}")
    if "aliases" in c:
        raise RuleError(src, rid, "correlation.aliases", "not supported")
    refs = c.get("rules")
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise RuleError(src, rid, "correlation.rules", "required, a list of rule names or ids")
    gb = c.get("group-by", [])
    if not isinstance(gb, list) or not all(isinstance(g, str) for g in gb):
        raise RuleError(src, rid, "correlation.group-by", "must be a list of field names")
    for g in gb:
        if known is not None and g not in known:
            raise RuleError(src, rid, "correlation.group-by", f"unknown field '{g}' (records have: {', '.join(sorted(known))})")
    ts = c.get("timespan")
    m = _TIMESPAN.match(str(ts)) if ts is not None else None
    if not m or int(m.group(1)) <= 0:
        raise RuleError(src, rid, "correlation.timespan", f"required, like 24h, 30m, 7d; got {ts!r}")
    span = int(m.group(1)) * _UNIT_S[m.group(2)]
    cond = c.get("condition")
    if not isinstance(cond, dict) or len(cond) != 1:
        raise RuleError(src, rid, "correlation.condition", "required, one of {gt: N} or {gte: N}")
    (op, n), = cond.items()
    if op not in ("gt", "gte"):
        raise RuleError(src, rid, f"correlation.condition.{op}", "only 'gt' and 'gte' are implemented")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise RuleError(src, rid, f"correlation.condition.{op}", f"must be a whole number >= 0, got {n!r}")
    gen = doc.get("generate", c.get("generate", False))
    if not isinstance(gen, bool):
        raise RuleError(src, rid, "correlation.generate", "must be true or false")
    return CorrelationRule(src, rid, name, title, level, tags, (), tuple(gb), span, op, n, gen), refs


def load_rule_docs(docs: Iterable[tuple[str, int, Any]], known_fields: Iterable[str] | None = None) -> RuleSet:
    """``docs``: (source, index, parsed YAML document) triples."""
    known = frozenset(known_fields) if known_fields is not None else None
    dets: list[DetectionRule] = []
    pending: list[tuple[CorrelationRule, list[str]]] = []
    ids: set[str] = set()
    for src, idx, doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RuleError(src, f"#{idx}", "<document>", "a rule must be a YAML mapping")
        if "correlation" in doc:
            cr, refs = _correlation(src, doc, idx, known)
            rid = cr.id
            pending.append((cr, refs))
        elif "detection" in doc:
            dr = _detection(src, doc, idx, known)
            rid = dr.id
            dets.append(dr)
        else:
            rid = str(doc.get("id", f"#{idx}"))
            raise RuleError(src, rid, "detection", "a rule needs 'detection' or 'correlation'")
        if rid in ids:
            raise RuleError(src, rid, "id", "duplicate rule id")
        ids.add(rid)
    by_ref = {}
    for d in dets:
        by_ref[d.id] = d
        if d.name:
            if d.name in by_ref:
                raise RuleError(d.source, d.id, "name", f"duplicate rule name '{d.name}'")
            by_ref[d.name] = d
    cors = []
    for cr, refs in pending:
        resolved = []
        for r in refs:
            if r not in by_ref:
                raise RuleError(cr.source, cr.id, "correlation.rules", f"no loaded detection rule named '{r}'")
            resolved.append(by_ref[r].id)
        cors.append(CorrelationRule(cr.source, cr.id, cr.name, cr.title, cr.level, cr.tags, tuple(resolved),
                                    cr.group_by, cr.timespan_s, cr.op, cr.threshold, cr.generate))
    return RuleSet(tuple(dets), tuple(cors))


def load_rules(path: str | Path, known_fields: Iterable[str] | None = None) -> RuleSet:
    """Load every ``*.yml``/``*.yaml`` in a folder (sorted), or one file."""
    p = Path(path)
    if p.is_dir():
        files = sorted(list(p.glob("*.yml")) + list(p.glob("*.yaml")))
    elif p.exists():
        files = [p]
    else:
        raise RuleError(str(p), "-", "<file>", "no such file or folder")
    docs = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as e:
            raise RuleError(str(f), "-", "<file>", f"cannot read: {e.strerror or e}") from None
        try:
            for i, d in enumerate(yaml.safe_load_all(text)):
                docs.append((str(f), i, d))
        except yaml.YAMLError as e:
            raise RuleError(str(f), "-", "<yaml>", f"not valid YAML: {e}") from None
    return load_rule_docs(docs, known_fields)
