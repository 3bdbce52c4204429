"""``xfer-sensor rules export``: the exported queries run on real engines give the sensor's alerts.

The committed captures are replayed (``python -m sensor replay``, in process); the
exported DuckDB and Spark SQL queries run over the replay's own
``connections.jsonl``, read with the columns and types the ingest assets declare
(ingest/sentinel/tables.json for mde, ingest/elasticsearch/index-template.json
for ecs). For every correlation alert the sensor raised, the query with its
look-back ending at the alert's time (``--until``) returns the alert's key with
the alert's connection count, byte sums (data channels included), first and last
seen; and no run of the query, ending at any alert or at the last record, returns
a key the sensor did not alert on. Captures that raise no alert return nothing.
Filters: an active filter removes the same traffic from the engines' results as
from the sensor's alerts; an expired one is left out with a comment.

The text targets that cannot run here (KQL, ES|QL, EQL, SPL) are compared with
tests/data/export/expected/ (regenerate: ``python tests/test_export.py --regen``),
and the ES|QL and EQL parsed with Elastic's grammars;
pySigma and the replay never meet: replay runs with pySigma made unimportable.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest

from sensor.cli.main import main
from sensor.export import targets
from tests.support.captures import ALERTING, CAPTURES, config_for

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "export" / "expected"
KEYS_MDE = ("DeviceName", "InitiatingProcessFileName", "RemoteIP", "RemotePort", "AccountName")
# captures the engines run on: every one that raises an alert (FTP with data channels, TFTP, SMB,
# adversarial byte claims) and three where nothing fires
FIRING = ALERTING | {"real/ftp_passive_anon", "real/tftp", "adversary/ftp_claims", "adversary/smb_claims"}
QUIET = {"real/smb445", "real/ftps_implicit", "real/ftp_active_local"}
ENGINE_CAPTURES = [c for c in CAPTURES if c[0] in FIRING | QUIET]
FILTERS_DAY = "2026-12-06"


# -- the records, as the ingest assets declare them --------------------------------------------------------

_SENTINEL = {"string": "VARCHAR", "int": "INTEGER", "long": "BIGINT", "boolean": "BOOLEAN", "dateTime": "VARCHAR"}
_ES = {"keyword": "VARCHAR", "ip": "VARCHAR", "wildcard": "VARCHAR", "long": "BIGINT", "integer": "INTEGER",
       "boolean": "BOOLEAN", "date": "VARCHAR"}  # fmt: skip
_SPARK = {"VARCHAR": "STRING", "INTEGER": "INT", "BIGINT": "BIGINT", "BOOLEAN": "BOOLEAN"}


def _declared(profile: str) -> dict[str, str]:
    """Every field the profile's pipeline maps (what the queries read) -> its SQL type, from the ingest
    assets; the Defender columns the sensor never fills (DeviceId, hashes, ...) are in neither."""
    fields = sorted(set(targets.field_map(profile).values()))
    out: dict[str, str] = {}
    if profile == "mde":
        tables = json.loads((REPO / "ingest" / "sentinel" / "tables.json").read_text())
        cols = {
            c["name"]: c["type"]
            for r in tables["resources"]
            if r["properties"]["schema"]["name"] == "XferNetworkEvents_CL"
            for c in r["properties"]["schema"]["columns"]
        }
        for f in fields:
            top = f.split(".")[0]
            if top not in cols:
                continue
            # AdditionalFields is dynamic (JSON): its keys the rules name are its members
            out[f] = "VARCHAR" if cols[top] == "dynamic" else _SENTINEL[cols[top]]
        return out
    props = json.loads((REPO / "ingest" / "elasticsearch" / "index-template.json").read_text())["template"]["mappings"]
    for f in fields:
        node = props
        for part in f.split("."):
            node = node.get("properties", {}).get(part, {})
        if "type" in node:
            out[f] = _ES[node["type"]]
    return out


def _nest(flat: dict[str, str]) -> dict:
    tree: dict = {}
    for path, t in flat.items():
        *parents, leaf = path.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = t
    return tree


def _duck_type(node) -> str:
    if isinstance(node, str):
        return node
    return "STRUCT(" + ", ".join(f'"{k}" {_duck_type(v)}' for k, v in node.items()) + ")"


def _spark_type(node) -> str:
    if isinstance(node, str):
        return _SPARK[node]
    return "STRUCT<" + ", ".join(f"`{k}`: {_spark_type(v)}" for k, v in node.items()) + ">"


# -- replays -----------------------------------------------------------------------------------------------


def _replay(out: Path, pcap: Path, config: Path, profile: str, rules: Path | None = None) -> Path:
    argv = ["replay", str(pcap), "--config", str(config), "--out", str(out), "--profile", profile]
    argv += ["--progress", "never", *(["--rules", str(rules)] if rules else [])]
    assert main(argv) == 0
    return out


def _alerts(d: Path) -> list[dict]:
    """The correlation alerts of a replay's mde alerts.jsonl."""
    return [a for a in map(json.loads, (d / "alerts.jsonl").read_text().splitlines()) if "ConnectionCount" in a]


def _last_ts(d: Path, profile: str) -> str:
    ts = "Timestamp" if profile == "mde" else "@timestamp"
    return max(json.loads(line)[ts] for line in (d / "connections.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def replays(tmp_path_factory) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("replays")
    out = {}
    for name, pcap, cfg in ENGINE_CAPTURES:
        config = config_for(base, cfg)
        for profile in ("mde", "ecs"):
            out[(name, profile)] = _replay(base / f"{name.replace('/', '_')}-{profile}", pcap, config, profile)
    return out


@contextlib.contextmanager
def _at(d: Path):
    old = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(old)


def _export(
    tmp: Path, target: str, profile: str, until: str | None = None, extra: tuple[str, ...] = (), at: Path | None = None
) -> str:
    out = tmp / f"q-{target}-{profile}.txt"
    argv = ["rules", "export", "--target", target, "--profile", profile, "--now", FILTERS_DAY, "--out", str(out)]
    with _at(at or Path.cwd()):
        assert main([*argv, *(["--until", until] if until else []), *extra]) == 0
    return out.read_text()


# -- the engines -------------------------------------------------------------------------------------------


class Duck:
    def __init__(self) -> None:
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")

    def load(self, path: Path, profile: str) -> None:
        cols = {k: _duck_type(v) for k, v in _nest(_declared(profile)).items()}
        spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in cols.items()) + "}"
        self.con.execute(
            f"CREATE OR REPLACE VIEW xfer_connections AS SELECT * FROM read_json('{path}', "
            f"format = 'newline_delimited', columns = {spec})"
        )

    def run(self, query: str) -> list[tuple]:
        rel = self.con.sql(query.rstrip().rstrip(";"))
        rows = rel.fetchall()
        return [(*r[:-2], _iso(r[-2]), _iso(r[-1])) for r in rows]


class Spark:
    def __init__(self, session) -> None:
        self.spark = session

    def load(self, path: Path, profile: str) -> None:
        ddl = ", ".join(f"`{k}` {_spark_type(v)}" for k, v in _nest(_declared(profile)).items())
        self.spark.read.schema(ddl).json(str(path)).createOrReplaceTempView("xfer_connections")

    def run(self, query: str) -> list[tuple]:
        df = self.spark.sql(query.rstrip().rstrip(";"))
        cols = df.columns
        # timestamps as text in the session's zone (UTC): Python's conversion would use the local zone
        df = df.selectExpr(
            *[f"`{c}`" for c in cols[:-2]],
            *[f"date_format(`{c}`, \"yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'\")" for c in cols[-2:]],
        )
        return [tuple(r) for r in df.collect()]


def _iso(v) -> str:
    return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    s = (
        SparkSession.builder.master("local[1]")
        .appName("xfer-sensor-export-test")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    s.sparkContext.setLogLevel("ERROR")
    yield Spark(s)
    s.stop()


@pytest.fixture(scope="module")
def duck():
    return Duck()


def _rows_by_key(rows: list[tuple]) -> dict[tuple, tuple]:
    # ecs leaves out what is unknown (no process name in network mode): a missing field is the sensor's ""
    return {tuple("" if v is None else v for v in r[:5]): tuple(r[5:]) for r in rows}


def _check(engine, tmp: Path, profile: str, records: Path, alerts: list[dict]) -> None:
    engine.load(records / "connections.jsonl", profile)
    alerted = {tuple(a[k] for k in KEYS_MDE) for a in alerts}
    for a in alerts:
        rows = _rows_by_key(engine.run(_export(tmp, ENGINE_TARGET[engine.__class__], profile, a["Timestamp"])))
        key = tuple(a[k] for k in KEYS_MDE)
        want = (a["ConnectionCount"], a["BytesSent"], a["BytesReceived"], a["FirstSeen"], a["LastSeen"])
        assert rows.get(key) == want, f"alert {key} at {a['Timestamp']}: engine says {rows.get(key)}"
        assert set(rows) <= alerted, f"keys the sensor did not alert on: {set(rows) - alerted}"
    last = _last_ts(records, profile)
    rows = _rows_by_key(engine.run(_export(tmp, ENGINE_TARGET[engine.__class__], profile, last)))
    assert set(rows) <= alerted
    if not alerts:
        assert rows == {}


ENGINE_TARGET = {Duck: "duckdb", Spark: "spark"}


@pytest.mark.parametrize("profile", ["mde", "ecs"])
@pytest.mark.parametrize("name", [c[0] for c in ENGINE_CAPTURES])
def test_duckdb_gives_the_sensors_alerts(tmp_path, capsys, replays, duck, name, profile):
    alerts = _alerts(replays[(name, "mde")])  # the same alerts in either profile: compared in mde's shape
    assert (name in FIRING) == bool(alerts), f"{name}: the capture's alerts are not what the test expects"
    _check(duck, tmp_path, profile, replays[(name, profile)], alerts)
    capsys.readouterr()


@pytest.mark.parametrize("profile", ["mde", "ecs"])
def test_spark_gives_the_sensors_alerts(tmp_path, capsys, replays, spark, profile):
    for name, _pcap, _cfg in ENGINE_CAPTURES:
        alerts = _alerts(replays[(name, "mde")])
        _check(spark, tmp_path, profile, replays[(name, profile)], alerts)
    capsys.readouterr()


# -- filters -----------------------------------------------------------------------------------------------

FILTERS = REPO / "tests" / "data" / "export" / "filters"
# demo's two alerting keys: FTP to 203.0.113.10 (allowed by allow_ftp.yml) and SMB to 198.51.100.20
# (allowed by allow_smb_expired.yml, expired on 2026-12-01); allow_sni.yml names a field most records
# lack, which must not allow them
FILTER_FILES = [FILTERS / "allow_ftp.yml", FILTERS / "allow_sni.yml", FILTERS / "allow_smb_expired.yml"]
FILTER_FLAGS = tuple(a for f in FILTER_FILES for a in ("--filters", str(f.relative_to(REPO))))


@pytest.mark.parametrize("profile", ["mde", "ecs"])
def test_filters_remove_the_same_traffic_from_the_engine_as_from_the_sensor(tmp_path, capsys, duck, profile):
    demo, cfg = REPO / "pcaps" / "demo.pcap", REPO / "pcaps" / "demo.yaml"

    def sensor(name: str, files: list[Path], prof: str) -> Path:
        flags = [a for f in files for a in ("--filters", str(f))]
        out = tmp_path / f"{name}-{prof}"
        argv = ["replay", str(demo), "--config", str(cfg), "--out", str(out), "--profile", prof]
        assert main([*argv, "--progress", "never", *flags]) == 0
        return out

    def engine(records: Path, day: str, until: str) -> dict[tuple, tuple]:
        duck.load(records / "connections.jsonl", profile)
        argv = ["rules", "export", "--target", "duckdb", "--profile", profile, "--now", day, *FILTER_FLAGS]
        argv += ["--until", until, "--out", str(tmp_path / "q.sql")]
        with _at(REPO):
            assert main(argv) == 0
        return _rows_by_key(duck.run((tmp_path / "q.sql").read_text()))

    plain = _alerts(sensor("plain", [], "mde"))
    assert {a["RemoteIP"] for a in plain} == {"203.0.113.10", "198.51.100.20"}
    # on 2026-12-06 the SMB filter has expired: the export leaves it out, the sensor runs without it;
    # the FTP filter removes its key from both, the SNI filter (a field most records lack) removes nothing
    want = _alerts(sensor("active", FILTER_FILES[:2], "mde"))
    assert [a["RemoteIP"] for a in want] == ["198.51.100.20"]
    got = engine(sensor("active", FILTER_FILES[:2], profile), FILTERS_DAY, want[0]["Timestamp"])
    cols = ("ConnectionCount", "BytesSent", "BytesReceived", "FirstSeen", "LastSeen")
    assert got == {tuple(want[0][k] for k in KEYS_MDE): tuple(want[0][k] for k in cols)}
    # on 2026-11-30 all three are active, in the export and in the sensor: nothing is left
    assert _alerts(sensor("every", FILTER_FILES, "mde")) == []
    for a in plain:
        assert engine(sensor("every", FILTER_FILES, profile), "2026-11-30", a["Timestamp"]) == {}
        assert engine(sensor("active", FILTER_FILES[:2], profile), FILTERS_DAY, a["Timestamp"]).keys() <= {
            tuple(want[0][k] for k in KEYS_MDE)
        }
    text = _export(tmp_path, "duckdb", profile, extra=FILTER_FLAGS, at=REPO)
    assert "-- EXPIRED, left out: filter allow_demo_smb (tests/data/export/filters/allow_smb_expired.yml)" in text
    assert "198.51.100.20" not in text.split("-- Repeated")[1]  # the expired filter is not in the query
    capsys.readouterr()


def test_pipelines_map_every_field_a_rule_may_name():
    from sensor.detect.rules import EXTRA_FIELDS
    from sensor.records.mde import ENDPOINT_FIELDS, RECORD_FIELDS

    known = (set(RECORD_FIELDS) | set(ENDPOINT_FIELDS) | set(EXTRA_FIELDS)) - {"AdditionalFields"}
    for profile in ("mde", "ecs"):
        fmap = targets.field_map(profile)
        assert known <= set(fmap), f"{profile}: unmapped {sorted(known - set(fmap))}"
    ecs = targets.field_map("ecs")
    assert ecs["AdditionalFields.TlsSni"] == "tls.client.server_name"
    assert ecs["AdditionalFields."] == "xfer.details."  # the other AdditionalFields keys


# -- text targets: committed expected queries --------------------------------------------------------------

TEXT = [("kql", "mde"), ("esql", "ecs"), ("esql", "mde"), ("eql", "ecs"), ("spl", "mde"), ("spl", "ecs")]
TEXT += [("duckdb", "mde"), ("duckdb", "ecs"), ("spark", "mde"), ("spark", "ecs")]


def _golden_args(target: str, profile: str) -> list[str]:
    """Run from the repository root (the header names the filter files as given)."""
    argv = ["rules", "export", "--target", target, "--profile", profile, "--now", FILTERS_DAY, "--rules", "rules"]
    return [*argv, *FILTER_FLAGS]


@pytest.mark.parametrize("target,profile", TEXT)
def test_export_matches_the_committed_query(target, profile, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(_golden_args(target, profile)) == 0
    got = capsys.readouterr().out
    assert got == (GOLDEN / f"{target}-{profile}.txt").read_text()


def test_kql_is_the_seed_hunts_shape(capsys):
    assert main(["rules", "export", "--target", "kql", "--now", FILTERS_DAY]) == 0
    q = capsys.readouterr().out
    body = [ln for ln in q.splitlines() if not ln.startswith("//") and ln]
    assert body[0] == "XferNetworkEvents_CL"
    assert body[1] == "| where Timestamp > ago(24h)"
    assert body[2] == (
        '| where RemotePort in (20, 21, 990, 445, 139, 69) and RemoteIPType =~ "Public" '
        'and ActionType =~ "ConnectionSuccess"'
    )
    assert "| summarize ConnectionCount=count(), BytesSent=sum(SentBytes), BytesReceived=sum(ReceivedBytes)," in q
    assert "FirstSeen=min(Timestamp), LastSeen=max(Timestamp) by DeviceName, InitiatingProcessFileName, " in q
    assert "RemoteIP, RemotePort, AccountName\n| where ConnectionCount > 3" in q


def test_eql_and_spl_fix_what_the_backends_get_wrong(capsys):
    assert main(["rules", "export", "--target", "eql", "--now", FILTERS_DAY]) == 0
    eql = capsys.readouterr().out
    assert "with runs=4" in eql and "runs=3" not in eql  # gt: 3 is four connections
    assert "destination.port in (20, 21, 990, 445, 139, 69)" in eql and "like~ (20" not in eql
    assert main(["rules", "export", "--target", "spl", "--now", FILTERS_DAY]) == 0
    spl = capsys.readouterr().out
    assert "bin " not in spl and "earliest=-86400s latest=now" in spl  # a look-back, not fixed 24 h buckets
    assert main(["rules", "export", "--target", "esql", "--now", FILTERS_DAY]) == 0
    esql = capsys.readouterr().out
    assert "date_trunc" not in esql and "NOW() - 86400 seconds" in esql


def _esql_parse(query: str) -> None:
    """Elasticsearch's own ES|QL grammar (esql-parser: the ANTLR lexer and parser of Elasticsearch)."""
    from antlr4 import CommonTokenStream, InputStream
    from antlr4.error.ErrorListener import ErrorListener
    from esql_parser.EsqlBaseLexer import EsqlBaseLexer
    from esql_parser.EsqlBaseParser import EsqlBaseParser

    class Raise(ErrorListener):
        def syntaxError(self, recognizer, symbol, line, column, msg, e):  # noqa: N802 (ANTLR's name)
            raise SyntaxError(f"{line}:{column}: {msg}")

    lexer = EsqlBaseLexer(InputStream(query))
    parser = EsqlBaseParser(CommonTokenStream(lexer))
    for x in (lexer, parser):
        x.removeErrorListeners()
        x.addErrorListener(Raise())
    parser.singleStatement()


def _eql_parse(query: str) -> None:
    """Elastic's eql package, with Elasticsearch's syntax (``:``, ``like~``, ``with runs``), types checked."""
    import eql

    body = "\n".join(line for line in query.splitlines() if not line.startswith("//"))
    with eql.parser.elasticsearch_syntax, eql.parser.ignore_missing_functions, eql.parser.allow_runs:
        eql.parse_query(body)


@pytest.mark.parametrize("profile", ["mde", "ecs"])
def test_esql_and_eql_parse(profile, capsys):
    with _at(REPO):
        assert main(_golden_args("esql", profile)) == 0
        _esql_parse(capsys.readouterr().out)
        assert main([*_golden_args("esql", profile), "--until", "2026-11-27T03:00:00Z"]) == 0
        _esql_parse(capsys.readouterr().out)
        assert main(_golden_args("eql", profile)) == 0
        _eql_parse(capsys.readouterr().out)
    with pytest.raises(SyntaxError):  # the parser refuses what is not ES|QL
        _esql_parse("FROM x | WHERE a === 1")


# -- without the extra, and the sensor without pySigma -----------------------------------------------------


def test_without_the_sigma_extra_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['sigma'] = None\n")
    r = subprocess.run(
        [sys.executable, "-m", "sensor", "rules", "export", "--target", "kql"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr
        == "xfer-sensor: error: rules export needs pySigma and its backends: pip install 'xfer-sensor[sigma]'\n"
    )


def test_replay_never_imports_pysigma(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['sigma'] = None\n")  # any import of pySigma raises
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", "pcaps/demo.pcap", "--config", "pcaps/demo.yaml"]
        + ["--out", str(out), "--progress", "never"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert (out / "alerts.jsonl").read_text().count("ConnectionCount") == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--now", "tomorrow"], "--now: field 'now': expected a date YYYY-MM-DD, got 'tomorrow'"),
        (["--until", "soon"], "--until: field 'until': expected an ISO 8601 time, got 'soon'"),
        (["--rules", "/nonexistent"], "/nonexistent: rule '-': field '<file>': no such file or folder"),
        (["--out", "/nonexistent/q.kql"], "/nonexistent/q.kql: field 'out': cannot write: No such file or directory"),
        (["--profile", "ecs"], "--target kql reads the mde records (a Sentinel/ADX table): use --profile mde"),
        (
            ["--filters", "rules/examples/config/partner_hostnames.yaml"],
            "rules/examples/config/partner_hostnames.yaml: filter '#0': field 'filter': "
            "not a Sigma filter document (title, id, logsource, filter: ...)",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, message):
    with _at(REPO):
        assert main(["rules", "export", "--target", "kql", *args]) == 2
    out = capsys.readouterr()
    assert out.err == f"xfer-sensor: error: {message}\n" and out.out == ""


def test_until_takes_any_zone_and_ends_the_look_back_there(capsys):
    assert main(["rules", "export", "--target", "duckdb", "--until", "2026-11-27T05:00:00+02:00"]) == 0
    q = capsys.readouterr().out
    end = "TIMESTAMPTZ '2026-11-27T03:00:00.000000Z'"
    assert f"BETWEEN {end} - INTERVAL 24 HOUR AND {end}" in q


def _regen() -> None:
    import io

    os.chdir(REPO)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for target, profile in TEXT:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(_golden_args(target, profile)) == 0
        (GOLDEN / f"{target}-{profile}.txt").write_text(buf.getvalue())
        print(f"wrote {GOLDEN / f'{target}-{profile}.txt'}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--regen"]:
        _regen()
    else:
        print("usage: python tests/test_export.py --regen  (rewrites tests/data/export/expected/)", file=sys.stderr)
