"""Sigma rules: detection rules and ``event_count`` correlation rules.

Loaded with pyyaml into validated, frozen objects. Anything this loader does
not implement is refused at load time with the file, the rule id and the
field (``RuleError``), never silently ignored. The supported subset and the
allow-lists (Sigma filter documents, sensor/detect/filters.py, attached to the
rules they name): docs/detection.md.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.resources
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sensor.core.config import Limits, quote
from sensor.detect.filters import (
    SIGMA_META_KEYS,
    AllowEntry,
    AllowFilter,
    event_us,
    filter_error,
    is_filter_doc,
    is_sigma_date,
    load_filters,
    parse_filter,
    read_docs,
    yaml_files,
)
from sensor.detect.filters import RuleError as RuleError  # the loader's error, where it always was

Matcher = Callable[[Mapping[str, Any]], bool]
# a parsed condition (see _parse_condition)
Node = tuple[Any, ...]


RULE_KEYS = SIGMA_META_KEYS | {"status", "detection", "fields", "level", "scope", "correlation", "generate"}
# Defender DeviceNetworkEvents columns a record may carry beyond today's replay
# records (endpoint attribution; RemoteUrl from the config's `hostnames`)
EXTRA_FIELDS = frozenset(
    {
        "RemoteUrl",
        "InitiatingProcessCommandLine",
        "InitiatingProcessFolderPath",
        "InitiatingProcessParentFileName",
        "InitiatingProcessParentId",
        "InitiatingProcessCreationTime",
        "InitiatingProcessAccountDomain",
        "InitiatingProcessAccountSid",
        "InitiatingProcessAccountUpn",
        "InitiatingProcessSHA1",
        "InitiatingProcessSHA256",
        "InitiatingProcessMD5",
        "DeviceId",
        "ReportId",
        "AttributionSource",
    }
)
# keys records carry inside AdditionalFields, reachable as AdditionalFields.<key>
ADDITIONAL_FIELDS = frozenset(
    {
        "SmbDialect",
        "SmbTrees",
        "SmbDomain",
        "SmbWorkstation",
        "SmbEncrypted",
        "NetbiosCalledName",
        "TlsUpgrade",
        "TlsSni",
        "TftpOp",
        "TftpFilename",
        "TftpMode",
        "TftpOptions",
        "FtpLoginSuccess",
        "SmbGuest",
        "SmbPipes",
        "NonStandardPort",
        "ConflictingOverlaps",
        "Files",
        "AttributionDetail",
    }
)
# a filter keyed only on these would allow whatever that process does
PROCESS_FIELDS = frozenset(
    {
        "InitiatingProcessFileName",
        "InitiatingProcessId",
        "InitiatingProcessAccountName",
        "AccountName",
        "InitiatingProcessCommandLine",
        "InitiatingProcessFolderPath",
        "InitiatingProcessParentFileName",
        "InitiatingProcessParentId",
        "InitiatingProcessCreationTime",
        "InitiatingProcessAccountDomain",
        "InitiatingProcessAccountSid",
        "InitiatingProcessAccountUpn",
        "InitiatingProcessSHA1",
        "InitiatingProcessSHA256",
        "InitiatingProcessMD5",
        "AppUser",
    }
)
# an allow filter must pin the destination with one of these in every alternative
DESTINATION_FIELDS = frozenset({"RemoteIP", "RemoteUrl", "AdditionalFields.TlsSni"})
CORRELATION_KEYS = frozenset({"type", "rules", "group-by", "timespan", "condition", "generate", "aliases"})
MODIFIERS = frozenset({"contains", "startswith", "endswith", "all", "cidr", "re", "gt", "gte", "lt", "lte", "exists"})
LEVELS = ("informational", "low", "medium", "high", "critical")
_TIMESPAN = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TIMESPAN_S = 3660 * 86400  # a correlation window spans at most ~10 years (packet-time arithmetic, SQLite)
MAX_THRESHOLD = 1 << 31  # the largest count a correlation condition may name
MAX_CONDITION_TOKENS = 256  # words and parentheses of one detection condition
MAX_CONDITION_DEPTH = 32  # parentheses and `not` nested in one condition
DEFAULT_MAX_MATCH_CHARS = Limits().max_match_chars


@dataclass(frozen=True, slots=True)
class Miss:
    """Why a record missed a rule: a field of a selection the condition needs
    that the record's value failed (``field`` set), or a filter selection of
    the rule itself that matched (``field`` empty)."""

    selection: str
    field: str = ""  # the record field ("" for a filter that matched)
    value: Any = None  # the record's value of it
    wanted: str = ""  # the rule's test as written: key (with modifiers) and value(s)


@dataclass(frozen=True)
class Verdict:
    """What a detection rule made of one record (``DetectionRule.explain``)."""

    matched: bool
    selections: tuple[str, ...]  # the rule's selections that matched (before allow filters)
    suppressed_by: tuple[AllowEntry, ...] = ()  # allow filters that suppressed a match
    expired: tuple[AllowEntry, ...] = ()  # filters that would have suppressed, but expired
    misses: tuple[Miss, ...] = ()  # not matched and not suppressed: why (see Miss)


_SCALARS = frozenset((str, int, float, bool, type(None)))


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
    description: str = ""
    references: tuple[str, ...] = ()
    author: str = ""
    selections: Mapping[str, Matcher] = field(default_factory=dict, compare=False)
    condition: Any = field(default=None, compare=False)  # the parsed condition (AST)
    # the allow filters applied to this rule (sensor/detect/filters.py), in load order
    filters: tuple[AllowEntry, ...] = field(default=(), compare=False)
    # the rule's `detection:` mapping as written (selections and condition), for
    # showing the rule (sensor/report: its allow filters and the hunt's KQL)
    detection: Mapping[str, Any] = field(default_factory=dict, compare=False)
    logsource: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ref(self) -> str:
        return self.name or self.id

    def explain(self, rec: Mapping[str, Any]) -> Verdict:
        """Evaluates every selection and says whether the rule matched and, when
        it did not, which allow filters suppressed it. Side-effect free."""
        raw = {n: bool(m(rec)) for n, m in self.selections.items()}
        picked = tuple(n for n, v in raw.items() if v)
        if not _eval(self.condition, raw):
            return Verdict(False, picked, misses=self._misses(rec, raw))
        ts = event_us(rec)
        sup: list[AllowEntry] = []
        expired: list[AllowEntry] = []
        for e in self.filters:
            if e.suppresses(rec):
                (sup if e.active_at(ts) else expired).append(e)
        return Verdict(not sup, picked, tuple(sup), tuple(expired))

    def could_match(self, known: Mapping[str, Any]) -> bool:
        """False when no record whose fields ``known`` has take those values
        can match the rule, whatever its other fields hold: the condition
        evaluated in three-valued logic, a field test on a field not in
        ``known`` (or a matcher that is not a plain selection) unknown."""
        return _eval3(self.condition, {n: _could(m, known) for n, m in self.selections.items()}) is not False

    @cached_property
    def _getters(self) -> tuple[Callable[[Mapping[str, Any]], Any], ...]:
        return tuple(_getter(f) for f in sorted(self.fields_used))

    @cached_property
    def _expiring(self) -> bool:
        return any(e.expires_us is not None for e in self.filters)

    def explain_key(self, rec: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The values ``explain`` depends on, hashable, for a cache of its
        verdicts; None when it cannot be cached (a list or mapping value, or an
        allow filter with an expiry, which depends on the event's time)."""
        if self._expiring:
            return None
        vals = tuple([get(rec) for get in self._getters])
        types = tuple([type(v) for v in vals])
        for t in types:
            if t not in _SCALARS:
                return None
        return types, vals  # the types too: True == 1, but not for a rule

    def _misses(self, rec: Mapping[str, Any], env: Mapping[str, bool]) -> tuple[Miss, ...]:
        """Why the condition is false: the filters (selections it only
        negates) that matched, when without them it would be true; else the
        fields that failed in each selection it needs (of each, the
        alternative with the fewest failures)."""
        pol = _polarity(self.condition)
        filters = [n for n, p in pol.items() if p == {True} and env.get(n)]
        if filters and _eval(self.condition, {**env, **dict.fromkeys(filters, False)}):
            return tuple(Miss(n, wanted=f"not {n}") for n in filters)
        out: list[Miss] = []
        for name, polarity in pol.items():
            if polarity == {True} or env.get(name):
                continue
            sel = self.selections.get(name)
            if not isinstance(sel, _Selection):
                continue
            best: list[Miss] | None = None
            for alt in sel.alternatives:
                failed = [Miss(name, t.field, t.get(rec), t.wanted) for t in alt if not t.pred(t.get(rec))]
                if best is None or len(failed) < len(best):
                    best = failed
            out.extend(best or ())
        return tuple(out)


@dataclass(frozen=True)
class CorrelationRule:
    source: str
    id: str
    name: str
    title: str
    level: str
    tags: tuple[str, ...]
    rules: tuple[str, ...]  # ids of the referenced detection rules
    group_by: tuple[str, ...]
    timespan_s: int
    op: str  # "gt" | "gte"
    threshold: int
    generate: bool
    description: str = field(default="", compare=False)
    references: tuple[str, ...] = field(default=(), compare=False)
    author: str = field(default="", compare=False)


@dataclass(frozen=True)
class RuleSet:
    detections: tuple[DetectionRule, ...]
    correlations: tuple[CorrelationRule, ...]

    @property
    def allow_entries(self) -> tuple[AllowEntry, ...]:
        return tuple(e for d in self.detections for e in d.filters)

    @property
    def filters(self) -> tuple[AllowFilter, ...]:
        """The loaded allow filters, each once (a filter may name several rules)."""
        seen: dict[int, AllowFilter] = {}
        for e in self.allow_entries:
            seen.setdefault(id(e.filter), e.filter)
        return tuple(seen.values())

    @property
    def quiet_detections(self) -> frozenset[str]:
        """Detection rule ids that only feed correlations (``generate: false``)."""
        q: set[str] = set()
        for c in self.correlations:
            if not c.generate:
                q.update(c.rules)
        return frozenset(q)


# -- values ------------------------------------------------------------------
STAR, QMARK = object(), object()


def _sigma_tokens(s: str) -> list[Any]:
    """A Sigma string value: characters, ``STAR`` for ``*`` and ``QMARK`` for
    ``?``; a backslash escapes ``*``, ``?`` and itself, any other is literal."""
    out: list[Any] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in "*?\\":
            out.append(s[i + 1])
            i += 2
            continue
        out.append(STAR if c == "*" else QMARK if c == "?" else c)
        i += 1
    return out


def _glob(tokens: list[Any], cap: int) -> Callable[[str], bool]:
    """Case-insensitive wildcard match, without backtracking: the value splits
    at each ``*`` into fixed-length segments; the first is anchored at the
    start, the last at the end, each middle one is taken at its leftmost
    place after the one before (which leaves the most room for the rest).
    A segment without ``?`` is found with ``str.find``; one with ``?`` by a
    regex of literals and ``.`` only (no repetition, nothing to backtrack).
    Cost: O(field length x segment length) at worst, on the first ``cap``
    characters of the field."""
    segs: list[list[Any]] = [[]]
    for t in tokens:
        if t is STAR:
            segs.append([])
        else:
            segs[-1].append(t)

    def size(seg: list[Any]) -> int:  # characters the segment matches (lowering may change a length)
        return sum(1 if t is QMARK else len(t.lower()) for t in seg)

    def finder(seg: list[Any]) -> tuple[int, Callable[[str, int], int]]:
        if QMARK not in seg:
            lit = "".join(seg).lower()
            return len(lit), lambda v, pos: v.find(lit, pos)
        rx = re.compile("".join("." if t is QMARK else re.escape(t.lower()) for t in seg), re.DOTALL)

        def search(v: str, pos: int) -> int:
            m = rx.search(v, pos)
            return -1 if m is None else m.start()

        return size(seg), search

    def at(seg: list[Any]) -> Callable[[str, int], bool]:
        if QMARK not in seg:
            lit = "".join(seg).lower()
            return lambda v, pos: v.startswith(lit, pos)
        rx = re.compile("".join("." if t is QMARK else re.escape(t.lower()) for t in seg), re.DOTALL)
        return lambda v, pos: rx.match(v, pos) is not None

    first_len, first_at = size(segs[0]), at(segs[0])
    if len(segs) == 1:
        return lambda v: len(v[:cap].lower()) == first_len and first_at(v[:cap].lower(), 0)
    last_len, last_at = size(segs[-1]), at(segs[-1])
    middle = [finder(seg) for seg in segs[1:-1] if seg]

    def match(v: str) -> bool:
        v = v[:cap].lower()
        if len(v) < first_len + last_len or not first_at(v, 0):
            return False
        pos = first_len
        for size, find in middle:
            i = find(v, pos)
            if i < 0:
                return False
            pos = i + size
        end = len(v) - last_len
        return end >= pos and last_at(v, end)

    return match


def _re2_pred(err: Callable[[str], RuleError], pattern: str, cap: int) -> Callable[[Any], bool]:
    """``|re`` on RE2: matching time is linear in the field's length (no
    backtracking); what RE2 cannot run (backreferences, lookaround, ...) is
    refused here with its reason. Imported only when a rule uses ``|re``."""
    try:
        import re2  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise err("the |re modifier needs the google-re2 package (pip install google-re2)") from None
    opts = re2.Options()
    opts.log_errors = False  # the reason goes into the RuleError, not onto stderr
    try:
        rx = re2.compile(pattern.encode("utf-8", "surrogatepass"), opts)
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise err(f"regular expression {quote(pattern)} cannot run on RE2 (linear-time matching): {reason}") from None
    search = rx.search
    return lambda v: v is not None and search(str(v)[:cap].encode("utf-8", "surrogatepass")) is not None


def _value_pred(
    err: Callable[[str], RuleError], fieldname: str, mods: list[str], value: Any, cap: int = DEFAULT_MAX_MATCH_CHARS
) -> Callable[[Any], bool]:
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
        ops: dict[str, Callable[[Any], bool]] = {
            "gt": lambda a: a > value,
            "gte": lambda a: a >= value,
            "lt": lambda a: a < value,
            "lte": lambda a: a <= value,
        }
        op = ops[m]
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and op(v)
    if "cidr" in mods:
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise err(f"not a CIDR: {value!r}") from None

        def cidr(v: Any, net: ipaddress.IPv4Network | ipaddress.IPv6Network = net) -> bool:
            try:
                a = ipaddress.ip_address(str(v))
            except ValueError:
                return False
            return a.version == net.version and a in net

        return cidr
    if "re" in mods:
        if not isinstance(value, str):
            raise err(f"|re needs a string, got {quote(value)}")
        return _re2_pred(err, value, cap)
    if isinstance(value, bool):
        return lambda v: v is value
    if isinstance(value, (int, float)) and not any(m in mods for m in ("contains", "startswith", "endswith")):
        return lambda v: (not isinstance(v, bool) and v == value) or (isinstance(v, str) and v == str(value))
    toks = _sigma_tokens(str(value))
    if "contains" in mods:
        toks = [STAR, *toks, STAR]
    elif "startswith" in mods:
        toks = [*toks, STAR]
    elif "endswith" in mods:
        toks = [STAR, *toks]
    if STAR in toks or QMARK in toks:
        glob = _glob(toks, cap)
        return lambda v: v is not None and glob(str(v))
    low = "".join(toks).lower()
    return lambda v: v is not None and str(v).lower() == low


def _known(fieldname: str, known: frozenset[str]) -> bool:
    if fieldname in known:
        return True
    head, _, tail = fieldname.partition(".")
    return bool(tail) and head == "AdditionalFields" and head in known and tail in ADDITIONAL_FIELDS


def _getter(fieldname: str) -> Callable[[Mapping[str, Any]], Any]:
    head, _, tail = fieldname.partition(".")
    if not tail:
        return lambda rec: rec.get(fieldname)

    def dotted(rec: Mapping[str, Any]) -> Any:
        v = rec.get(head)
        return v.get(tail) if isinstance(v, dict) else None

    return dotted


def _field_matcher(
    src: str, rid: str, key: str, value: Any, known: frozenset[str] | None, cap: int = DEFAULT_MAX_MATCH_CHARS
) -> tuple[str, Callable[[Any], bool]]:
    parts = key.split("|")
    fieldname, mods = parts[0], parts[1:]

    def err(msg: str) -> RuleError:
        return RuleError(src, rid, f"detection.{key}", msg)

    if not fieldname:
        raise err("keyword (field-less) searches are not supported")
    if known is not None and not _known(fieldname, known):
        raise RuleError(
            src,
            rid,
            f"detection.{key}",
            f"unknown field '{fieldname}' (records have: {', '.join(sorted(known))}"
            f"; and AdditionalFields.<{'|'.join(sorted(ADDITIONAL_FIELDS))}>)",
        )
    for m in mods:
        if m not in MODIFIERS:
            raise err(f"unsupported modifier '|{m}' (supported: {', '.join(sorted(MODIFIERS))})")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise err("empty value list")
    preds = [_value_pred(err, fieldname, mods, v, cap) for v in values]
    pred: Callable[[Any], bool]
    if "all" in mods:
        pred = lambda v: all(p(v) for p in preds)  # noqa: E731
    elif len(preds) == 1:
        pred = preds[0]
    else:
        pred = lambda v: any(p(v) for p in preds)  # noqa: E731
    if "exists" in mods or value is None:
        return fieldname, pred

    def one_or_any(v: Any, pred: Callable[[Any], bool] = pred) -> bool:
        if isinstance(v, list):  # a list value (AdditionalFields.Files): any item
            return any(pred(x) for x in v)
        return pred(v)

    return fieldname, one_or_any


@dataclass(frozen=True, slots=True)
class _FieldTest:
    field: str
    get: Callable[[Mapping[str, Any]], Any]
    pred: Callable[[Any], bool]
    wanted: str  # as written in the rule, for explanations


class _Selection:
    """A selection's matcher that keeps its field tests, so that
    ``DetectionRule.explain`` can say which field failed. ``alternatives``:
    the OR-ed maps, each the AND of its field tests."""

    __slots__ = ("alternatives", "costs", "_checks")

    def __init__(self, alternatives: tuple[tuple[_FieldTest, ...], ...], costs: tuple[tuple[int, ...], ...]) -> None:
        self.alternatives = alternatives  # as written: explanations name fields in the rule's order
        self.costs = costs  # _cost of each test, alternative by alternative
        # evaluation order, not the rule's (which the report shows as written): the
        # comparisons are side-effect free, so the cheapest, most selective run first
        # (a failed connection is rejected by its ActionType before the port list)
        self._checks = tuple(
            tuple((t.get, t.pred) for _, _, t in sorted(zip(c, range(len(alt)), alt, strict=True), key=lambda e: e[:2]))
            for alt, c in zip(alternatives, costs, strict=True)
        )

    def __call__(self, rec: Mapping[str, Any]) -> bool:
        for checks in self._checks:  # (loops, no generator: one call per record and rule)
            for get, pred in checks:
                if not pred(get(rec)):
                    break
            else:
                return True
        return False


MAX_WANTED_CHARS = 200  # characters of a rule's test kept to explain a miss


def _wanted(key: str, value: Any) -> str:
    vals = value if isinstance(value, list) else [value]
    text = f"{key}: " + ", ".join("null" if v is None else str(v) for v in vals)
    return text if len(text) <= MAX_WANTED_CHARS else text[: MAX_WANTED_CHARS - 3] + "..."


# fields of a connection's outcome: under a scan or a flood most records are
# failed attempts, so a selection on them rejects most records at once
OUTCOME_FIELDS = frozenset({"ActionType", "ConnState"})


def _cost(key: str, value: Any) -> int:
    """How early a selection evaluates a field: 0 an outcome field
    (OUTCOME_FIELDS) against one plain string, 1 another field against one
    plain string (an exact, case-insensitive comparison), 2 one number,
    3 a list, 4 modifiers (globs, CIDR, regular expressions)."""
    if "|" in key:
        return 4
    if isinstance(value, str) and "*" not in value and "?" not in value:
        return 0 if key in OUTCOME_FIELDS else 1
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 2
    return 3


def _selection(
    src: str,
    rid: str,
    name: str,
    body: Any,
    known: frozenset[str] | None,
    used: set[str],
    alternatives: list[frozenset[str]] | None = None,
    cap: int = DEFAULT_MAX_MATCH_CHARS,
) -> _Selection:
    """``alternatives`` collects the field set of each OR-ed map (for the allow checks)."""
    if alternatives is None:
        alternatives = []
    if isinstance(body, dict):
        if not body:
            raise RuleError(src, rid, f"detection.{name}", "empty selection")
        tests = []
        costs = []
        for k, v in body.items():
            f, pred = _field_matcher(src, rid, str(k), v, known, cap)
            used.add(f)
            tests.append(_FieldTest(f, _getter(f), pred, _wanted(str(k), v)))
            costs.append(_cost(str(k), v))
        alternatives.append(frozenset(str(k).split("|")[0] for k in body))
        return _Selection((tuple(tests),), (tuple(costs),))
    if isinstance(body, list) and body and all(isinstance(x, dict) for x in body):
        subs = [_selection(src, rid, name, x, known, used, alternatives, cap) for x in body]
        return _Selection(
            tuple(alt for sub in subs for alt in sub.alternatives), tuple(c for sub in subs for c in sub.costs)
        )
    raise RuleError(
        src,
        rid,
        f"detection.{name}",
        "must be a mapping of fields or a list of mappings (keyword lists are not supported)",
    )


# -- condition ---------------------------------------------------------------
# The condition parses into a small tree: ("sel", name) | ("not", n) | ("and", a, b)
# | ("or", a, b) | ("any", names) | ("all", names); it is compiled into closures
# for the hot path and evaluated directly for explanations.
_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9_*\-.]+|\S)")


def _parse_condition(src: str, rid: str, text: str, names_known: Iterable[str]) -> Node:
    sel_names = list(names_known)

    def err(msg: str) -> RuleError:
        return RuleError(src, rid, "detection.condition", f"{msg} in {text!r}")

    if "|" in text:
        raise err("pipe aggregations are not supported (use a correlation rule)")
    toks: list[str] = _TOKEN.findall(text)
    if len(toks) > MAX_CONDITION_TOKENS:
        raise RuleError(src, rid, "detection.condition", f"more than {MAX_CONDITION_TOKENS} words and parentheses")
    pos = 0
    depth = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(toks):
            raise err("unexpected end")
        pos += 1
        return toks[pos - 1]

    def names(pattern: str) -> tuple[str, ...]:
        if pattern == "them":
            found = list(sel_names)
        else:
            found = [n for n in sel_names if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise err(f"'{pattern}' names no selection")
        return tuple(found)

    def nested() -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_CONDITION_DEPTH:
            raise RuleError(
                src, rid, "detection.condition", f"parentheses and 'not' nested deeper than {MAX_CONDITION_DEPTH}"
            )

    def primary() -> Node:
        nonlocal depth
        t = take()
        tl = t.lower()
        if t == "(":
            nested()
            m = expr()
            if take() != ")":
                raise err("missing ')'")
            depth -= 1
            return m
        if tl == "not":
            nested()
            n = ("not", primary())
            depth -= 1
            return n
        if tl in ("1", "all", "any"):
            if (peek() or "").lower() != "of":
                raise err(f"expected 'of' after '{t}'")
            take()
            return ("all" if tl == "all" else "any", names(take()))
        if tl in ("and", "or", ")") or t in ("(",):
            raise err(f"unexpected '{t}'")
        if t not in sel_names:
            if re.fullmatch(r"[A-Za-z0-9_\-.]+", t):
                raise err(f"unknown selection '{t}'")
            raise err(f"unsupported token '{t}'")
        return ("sel", t)

    def conj() -> Node:
        m = primary()
        while (peek() or "").lower() == "and":
            take()
            m = ("and", m, primary())
        return m

    def expr() -> Node:
        m = conj()
        while (peek() or "").lower() == "or":
            take()
            m = ("or", m, conj())
        return m

    if not toks:
        raise err("empty condition")
    m = expr()
    if pos != len(toks):
        raise err(f"unexpected '{toks[pos]}'")
    return m


def _compile(node: Node, sels: Mapping[str, Matcher]) -> Matcher:
    op = node[0]
    if op == "sel":
        return sels[node[1]]
    if op == "not":
        inner = _compile(node[1], sels)
        return lambda r: not inner(r)
    if op in ("and", "or"):
        a, b = _compile(node[1], sels), _compile(node[2], sels)
        return (lambda r: a(r) and b(r)) if op == "and" else (lambda r: a(r) or b(r))
    ms = [sels[n] for n in node[1]]
    if op == "all":
        return lambda r: all(m(r) for m in ms)
    return lambda r: any(m(r) for m in ms)


def _eval(node: Node, env: Mapping[str, bool]) -> bool:
    op = node[0]
    if op == "sel":
        return env[node[1]]
    if op == "not":
        return not _eval(node[1], env)
    if op == "and":
        return _eval(node[1], env) and _eval(node[2], env)
    if op == "or":
        return _eval(node[1], env) or _eval(node[2], env)
    vals = [env[n] for n in node[1]]
    return all(vals) if op == "all" else any(vals)


def _could(sel: Matcher, known: Mapping[str, Any]) -> bool | None:
    """A selection on a record of which only the fields in ``known`` are
    known: True or False when they decide it, None when they do not."""
    if not isinstance(sel, _Selection):
        return None
    out: bool | None = False
    for alt in sel.alternatives:
        v: bool | None = True
        for t in alt:
            if t.field not in known:
                v = None
            elif not t.pred(t.get(known)):
                v = False
                break
        if v:
            return True
        if v is None:
            out = None
    return out


def _eval3(node: Node, env: Mapping[str, bool | None]) -> bool | None:
    """``_eval`` in Kleene's three-valued logic (None: unknown)."""
    op = node[0]
    if op == "sel":
        return env[node[1]]
    if op == "not":
        v = _eval3(node[1], env)
        return None if v is None else not v
    if op in ("and", "all"):
        vals = [_eval3(node[1], env), _eval3(node[2], env)] if op == "and" else [env[n] for n in node[1]]
        return False if False in vals else None if None in vals else True
    vals = [_eval3(node[1], env), _eval3(node[2], env)] if op == "or" else [env[n] for n in node[1]]
    return True if True in vals else None if None in vals else False


def _polarity(node: Node, negated: bool = False, out: dict[str, set[bool]] | None = None) -> dict[str, set[bool]]:
    """selection name -> {True if referenced under a negation, False if not}."""
    out = {} if out is None else out
    op = node[0]
    if op == "sel":
        out.setdefault(node[1], set()).add(negated)
    elif op == "not":
        _polarity(node[1], not negated, out)
    elif op in ("and", "or"):
        _polarity(node[1], negated, out)
        _polarity(node[2], negated, out)
    else:
        for n in node[1]:
            out.setdefault(n, set()).add(negated)
    return out


# -- documents ---------------------------------------------------------------
def _common(src: str, doc: dict[str, Any], idx: int) -> tuple[str, str, str, str, tuple[str, ...]]:
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
    for k in ("date", "modified"):
        if k in doc and not is_sigma_date(doc[k]):
            raise RuleError(src, rid, k, f"a date YYYY-MM-DD, got {quote(doc[k])}")
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RuleError(src, rid, "tags", "must be a list of strings")
    return doc["id"], name, title, level, tuple(tags)


def _meta(src: str, rid: str, doc: dict[str, Any]) -> tuple[str, tuple[str, ...], str]:
    desc = doc.get("description", "")
    refs = doc.get("references", [])
    author = doc.get("author", "")
    if not isinstance(desc, str):
        raise RuleError(src, rid, "description", "must be a string")
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise RuleError(src, rid, "references", "must be a list of strings")
    if not isinstance(author, str):
        raise RuleError(src, rid, "author", "must be a string")
    return desc.strip(), tuple(refs), author


def _detection(
    src: str, doc: dict[str, Any], idx: int, known: frozenset[str] | None, cap: int = DEFAULT_MAX_MATCH_CHARS
) -> DetectionRule:
    rid, name, title, level, tags = _common(src, doc, idx)
    if "correlation" in doc or "generate" in doc:
        raise RuleError(src, rid, "correlation", "a rule has either 'detection' or 'correlation'")
    desc, refs, author = _meta(src, rid, doc)
    ls = doc.get("logsource")
    if not isinstance(ls, dict) or not ls:
        raise RuleError(src, rid, "logsource", "required, a mapping (e.g. category: network_connection)")
    det = doc["detection"]
    if not isinstance(det, dict):
        raise RuleError(src, rid, "detection", "must be a mapping")
    cond = det.get("condition")
    if isinstance(cond, list):
        if len(cond) != 1:
            raise RuleError(
                src, rid, "detection.condition", "a list of conditions is not supported; join them with 'or'"
            )
        cond = cond[0]
    if not isinstance(cond, str):
        raise RuleError(src, rid, "detection.condition", "required, a string")
    used: set[str] = set()
    sels: dict[str, Matcher] = {}
    alts: dict[str, list[frozenset[str]]] = {}
    for k, v in det.items():
        if k in ("condition", "timeframe"):
            if k == "timeframe":
                raise RuleError(src, rid, "detection.timeframe", "not supported; use a correlation rule's timespan")
            continue
        alts[str(k)] = []
        sels[str(k)] = _selection(src, rid, str(k), v, known, used, alts[str(k)], cap)
    if not sels:
        raise RuleError(src, rid, "detection", "no selection")
    tree = _parse_condition(src, rid, cond, sels)
    pol = _polarity(tree)
    for sname, polarity in pol.items():
        if polarity == {True}:  # a filter: it can only suppress
            for fields_ in alts[sname]:
                if fields_ <= PROCESS_FIELDS:
                    raise RuleError(
                        src,
                        rid,
                        f"detection.{sname}",
                        "a filter keyed on the process or account alone would allow anything that "
                        "process does (exfiltration included); pin the destination too "
                        f"({', '.join(sorted(DESTINATION_FIELDS))})",
                    )
    match = _compile(tree, sels)
    return DetectionRule(
        src, rid, name, title, level, tags, frozenset(used), match, desc, refs, author, sels, tree, (), det, ls
    )


def _match_all(key: str, value: Any) -> bool:
    """Does the test ``key: value`` (one field, modifiers) hold for any value?"""
    mods = key.split("|")[1:]
    vals = value if isinstance(value, list) else [value]
    if "exists" in mods:
        return True  # present or absent, nothing pins the destination
    for v in vals:
        if "cidr" in mods:
            try:
                if ipaddress.ip_network(str(v), strict=False).prefixlen == 0:
                    return True
            except ValueError:
                pass  # refused by the compiler
        elif "re" in mods:
            if str(v) in ("", ".*", "^", "$", ".+"):
                return True
        elif isinstance(v, str):
            if v and v.strip("*") == "":  # `*`: anything
                return True
            if not v and any(m in mods for m in ("contains", "startswith", "endswith")):
                return True
    return False


def _alternatives(body: Any) -> list[Mapping[str, Any]]:
    """The OR-ed maps of a selection as written."""
    return (
        [body] if isinstance(body, dict) else [x for x in body if isinstance(x, dict)] if isinstance(body, list) else []
    )


def _apply_filters(
    dets: list[DetectionRule],
    filters: Iterable[AllowFilter],
    known: frozenset[str] | None,
    cap: int,
    correlations: Mapping[str, str],
) -> list[DetectionRule]:
    """Each filter compiled and checked, and ANDed with each rule it names:
    the rule matches when its own condition holds and no active filter
    suppresses the event. ``correlations``: names and ids of correlation
    rules (a filter cannot tune one)."""
    by_ref: dict[str, int] = {}
    for i, d in enumerate(dets):
        by_ref[d.id] = i
        if d.name:
            by_ref[d.name] = i
    entries: list[list[AllowEntry]] = [[] for _ in dets]
    extra_fields: list[set[str]] = [set() for _ in dets]
    dest = ", ".join(sorted(DESTINATION_FIELDS))
    for f in filters:

        def err(fieldname: str, message: str, f: AllowFilter = f) -> RuleError:
            return filter_error(f.source, f.id, fieldname, message)

        used: set[str] = set()
        sels: dict[str, Matcher] = {}
        try:
            for sname, body in f.selections.items():
                sels[sname] = _selection(f.source, f.id, sname, body, known, used, None, cap)
            tree = _parse_condition(f.source, f.id, f.condition, sels)
        except RuleError as e:
            raise err("filter" + e.field.removeprefix("detection"), e.message) from None
        pol = _polarity(tree)
        for sname, body in f.selections.items():
            if sname not in pol:
                raise err(f"filter.{sname}", "not used by the condition")
            if pol[sname] != {True}:
                raise err(
                    "filter.condition",
                    f"an allow filter only negates its selections (e.g. 'not {sname}'): "
                    f"{f.condition!r} would narrow the rule to what '{sname}' matches",
                )
            for alt in _alternatives(body):
                pins = [
                    k for k, v in alt.items() if str(k).split("|")[0] in DESTINATION_FIELDS and not _match_all(k, v)
                ]
                if pins:
                    continue
                fields_ = sorted(str(k).split("|")[0] for k in alt)
                if set(fields_) <= PROCESS_FIELDS:
                    why = "keyed on the process or account alone it would allow anything that process does"
                else:
                    why = f"got only {', '.join(fields_)}, or a test that matches any value"
                raise err(
                    f"filter.{sname}",
                    f"every alternative of an allow filter must pin the destination ({dest}); {why}",
                )
        suppresses = _negated(_compile(tree, sels))
        for ref in f.rules:
            if ref not in by_ref:
                if ref in correlations:
                    raise err(
                        "filter.rules", f"'{ref}' is a correlation rule; a filter tunes the detection rules it counts"
                    )
                raise err("filter.rules", f"no loaded detection rule named '{ref}'")
            i = by_ref[ref]
            d = dets[i]
            for k, v in f.logsource.items():
                if d.logsource.get(k) != v:
                    raise err(
                        f"logsource.{k}",
                        f"{v!r} does not cover rule '{ref}' (its logsource has {d.logsource.get(k)!r}); "
                        "other Sigma tools would not apply the filter",
                    )
            if any(e.filter.id == f.id for e in entries[i]):
                continue  # named twice (by name and id)
            entries[i].append(AllowEntry(d.id, f, suppresses, tree))
            extra_fields[i] |= used
    out = []
    for d, es, more in zip(dets, entries, extra_fields):
        if not es:
            out.append(d)
            continue
        out.append(
            dataclasses.replace(
                d, match=_filtered(d.match, tuple(es)), filters=tuple(es), fields_used=d.fields_used | more
            )
        )
    return out


def _negated(m: Matcher) -> Matcher:
    return lambda rec: not m(rec)


def _filtered(base: Matcher, entries: tuple[AllowEntry, ...]) -> Matcher:
    def match(rec: Mapping[str, Any]) -> bool:
        if not base(rec):
            return False
        for e in entries:
            if e.suppresses(rec) and e.gate(rec):
                return False
        return True

    return match


def _correlation(
    src: str, doc: dict[str, Any], idx: int, known: frozenset[str] | None
) -> tuple[CorrelationRule, list[str]]:
    rid, name, title, level, tags = _common(src, doc, idx)
    if "detection" in doc or "logsource" in doc:
        raise RuleError(src, rid, "detection", "a correlation rule has no detection/logsource")
    desc, references, author = _meta(src, rid, doc)
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
            raise RuleError(
                src, rid, "correlation.group-by", f"unknown field '{g}' (records have: {', '.join(sorted(known))})"
            )
    ts = c.get("timespan")
    m = _TIMESPAN.match(str(ts)) if isinstance(ts, (str, int)) and not isinstance(ts, bool) else None
    if not m or int(m.group(1)[:12]) <= 0:
        raise RuleError(src, rid, "correlation.timespan", f"required, like 24h, 30m, 7d; got {quote(ts)}")
    # no int() of a long digit string (Python refuses more than 4300 digits)
    span = MAX_TIMESPAN_S + 1 if len(m.group(1)) > 12 else int(m.group(1)) * _UNIT_S[m.group(2)]
    if span > MAX_TIMESPAN_S:
        raise RuleError(
            src, rid, "correlation.timespan", f"at most {MAX_TIMESPAN_S // 86400}d ({MAX_TIMESPAN_S}s); got {quote(ts)}"
        )
    cond = c.get("condition")
    if not isinstance(cond, dict) or len(cond) != 1:
        raise RuleError(src, rid, "correlation.condition", "required, one of {gt: N} or {gte: N}")
    ((op, n),) = cond.items()
    if op not in ("gt", "gte"):
        raise RuleError(src, rid, f"correlation.condition.{op}", "only 'gt' and 'gte' are implemented")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_THRESHOLD:
        raise RuleError(
            src, rid, f"correlation.condition.{op}", f"must be a whole number from 0 to {MAX_THRESHOLD}, got {quote(n)}"
        )
    gen = doc.get("generate", c.get("generate", False))
    if not isinstance(gen, bool):
        raise RuleError(src, rid, "correlation.generate", "must be true or false")
    return CorrelationRule(
        src, rid, name, title, level, tags, (), tuple(gb), span, op, n, gen, desc, references, author
    ), refs


def load_rule_docs(
    docs: Iterable[tuple[str, int, Any]],
    known_fields: Iterable[str] | None = None,
    max_match_chars: int = DEFAULT_MAX_MATCH_CHARS,
    filters: Iterable[AllowFilter] = (),
) -> RuleSet:
    """``docs``: (source, index, parsed YAML document) triples; a Sigma filter
    document among them is an allow filter, like those of ``filters``
    (``load_filters``): each is applied to the detection rules it names.
    ``max_match_chars``: characters of a field that ``|re`` and wildcard
    values read (the config's ``limits.max_match_chars``)."""
    known = frozenset(known_fields) if known_fields is not None else None
    if known is not None and "AdditionalFields" in known:  # record fields: add what records may also carry
        known = known | EXTRA_FIELDS
    dets: list[DetectionRule] = []
    pending: list[tuple[CorrelationRule, list[str]]] = []
    allow = list(filters)
    ids: set[str] = set()
    for src, idx, doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RuleError(src, f"#{idx}", "<document>", "a rule must be a YAML mapping")
        if is_filter_doc(doc):
            allow.append(parse_filter(src, idx, doc))
            continue
        if "correlation" in doc:
            cr, refs = _correlation(src, doc, idx, known)
            rid = cr.id
            pending.append((cr, refs))
        elif "detection" in doc:
            dr = _detection(src, doc, idx, known, max_match_chars)
            rid = dr.id
            dets.append(dr)
        else:
            rid = str(doc.get("id", f"#{idx}"))
            raise RuleError(src, rid, "detection", "a rule needs 'detection' or 'correlation' (a filter: 'filter')")
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
    names: set[str] = set()
    for f in allow:
        if f.id in ids:
            raise filter_error(f.source, f.id, "id", "duplicate id (a rule or another filter has it)")
        ids.add(f.id)
        if f.name:
            if f.name in names or f.name in by_ref:
                raise filter_error(f.source, f.id, "name", f"duplicate name '{f.name}'")
            names.add(f.name)
    cor_refs = {r: cr.id for cr, _ in pending for r in (cr.id, cr.name) if r}
    dets = _apply_filters(dets, allow, known, max_match_chars, cor_refs)
    by_ref = {}
    for d in dets:
        by_ref[d.id] = d
        if d.name:
            by_ref[d.name] = d
    cors = []
    for cr, refs in pending:
        resolved = []
        for r in refs:
            if r not in by_ref:
                raise RuleError(cr.source, cr.id, "correlation.rules", f"no loaded detection rule named '{r}'")
            resolved.append(by_ref[r].id)
        cors.append(
            CorrelationRule(
                cr.source,
                cr.id,
                cr.name,
                cr.title,
                cr.level,
                cr.tags,
                tuple(resolved),
                cr.group_by,
                cr.timespan_s,
                cr.op,
                cr.threshold,
                cr.generate,
                cr.description,
                cr.references,
                cr.author,
            )
        )
    return RuleSet(tuple(dets), tuple(cors))


def load_rules(
    path: str | Path,
    known_fields: Iterable[str] | None = None,
    max_match_chars: int = DEFAULT_MAX_MATCH_CHARS,
    filters: Iterable[str | Path] = (),
) -> RuleSet:
    """Load every ``*.yml``/``*.yaml`` in a folder (sorted), or one file: its
    rules and its filters; then the filter files and folders of ``filters``
    (every document a filter), applied to the rules they name. Every problem is
    a ``RuleError`` naming the file (size, encoding, YAML, nesting and alias
    expansion are checked by ``read_yaml_file``)."""
    docs = read_docs(yaml_files(path))
    return load_rule_docs(docs, known_fields, max_match_chars, load_filters(filters))


SHIPPED_RULES_FILE = "t1071_002_file_transfer_protocols.yml"
RULES_PACKAGE = "sensor_rules"  # rules/ of the repository, installed as package data (pyproject.toml, setup.py)


def default_rules_dir() -> Path:
    """The shipped rules: ``rules/`` of the source checkout this module runs
    from, else the installed package ``sensor_rules`` (any install: system,
    venv, ``--user``, pipx), else ``/etc/xfer-sensor/rules.d``. A folder that
    merely sits beside the package is never taken: in site-packages,
    ``rules/`` can be another package's."""
    checkout = Path(__file__).resolve().parent.parent.parent  # the folder holding sensor/
    rules = checkout / "rules"
    if (
        (checkout / "pyproject.toml").is_file()
        and (rules / "__init__.py").is_file()
        and (rules / SHIPPED_RULES_FILE).is_file()
    ):
        return rules
    try:
        installed = importlib.resources.files(RULES_PACKAGE)
    except ModuleNotFoundError:
        installed = None
    if isinstance(installed, Path) and (installed / SHIPPED_RULES_FILE).is_file():
        return installed
    return Path("/etc/xfer-sensor/rules.d")
