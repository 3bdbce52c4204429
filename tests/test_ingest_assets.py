"""The ingest assets (ingest/) cover every field the sensor writes.

Records are produced by replaying the committed captures (pcaps/demo.pcap,
pcaps/real/*.pcap, pcaps/adversary/*.pcap) and crafted traffic (hostnames,
VLAN, IPv6, FTPS with SNI, refused and mid-stream connections) through the real
pipeline, in endpoint mode too (a real capture with an AttributionBook, as the
daemon fills it), and encoded by the real profiles (mde, ecs) exactly as the
sinks encode them, truncated lines included.  Every leaf of every document must
be mapped by the Elasticsearch index template with a type its value is valid
for, and every mde column must be in the Sentinel table of its kind with a
compatible Kusto type.  No Elasticsearch or Azure here: the assets' structure is
checked offline."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fuzz.scan import syn_scan_frames
from fuzz.scan import write_pcap as write_scan_pcap
from sensor.attribution.attributor import Attribution
from sensor.attribution.book import AttributionBook
from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.capture import read_file
from sensor.io.sinks import KINDS, MemorySink
from sensor.pipeline import Pipeline
from sensor.records.encode import Encoder, make_profile
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import Link, Tcp, tcp_midstream, tcp_refused, tcp_session, udp_exchange, write_pcap
from tests.support.tls import openssl_client_hello
from tests.test_record_semantics import ftp_session, smb_session

REPO = Path(__file__).resolve().parent.parent
INGEST = REPO / "ingest"
PCAPS = REPO / "pcaps"
REAL_CFG = {  # veth captures: the server's offloaded checksums are accepted (tests/test_endpoint_records.py)
    "home_net": ["10.77.0.1/32"],
    "ip_type_overrides": {"10.77.0.2/32": "Public"},
    "checksum_offload_nets": ["10.77.0.2/32"],
}
T0 = 1_700_000_000.0


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _crafted(tmp: Path) -> Path:
    """What the committed captures do not show: FTPS with SNI, refused, mid-stream,
    inbound, internal, external, IPv6, a VLAN tag, TFTP with options."""
    dev, pub = "10.1.1.5", "93.184.216.34"
    pkts = []
    for i in range(4):  # four FTP sessions to one public server: an alert
        pkts += tcp_session(dev, pub, 40000 + i, 21, T0 + i * 60, c2s=b"USER alice\r\n", s2c=b"220 hi\r\n")
    hello = openssl_client_hello("files.mft.example")
    pkts += tcp_session(dev, "151.101.1.1", 40100, 990, T0 + 300, c2s=hello, s2c=b"\x16\x03\x03\x00\x00")
    pkts += tcp_refused(dev, pub, 40200, 445, T0 + 400)
    pkts += tcp_midstream(dev, pub, 40300, 445, T0 + 500)
    pkts += tcp_session(pub, dev, 40400, 21, T0 + 600, c2s=b"USER x\r\n", s2c=b"220 hi\r\n")  # inbound
    pkts += tcp_session(dev, "10.2.2.2", 40500, 445, T0 + 700, c2s=b"\x00\x00\x00\x01x")  # internal
    pkts += tcp_session("8.8.8.8", "1.1.1.1", 40600, 21, T0 + 800, c2s=b"USER y\r\n")  # external
    pkts += tcp_session("fd00::5", "2001:db8::21", 40700, 21, T0 + 900, c2s=b"USER v6\r\n")  # IPv6
    pkts += tcp_session(dev, pub, 40800, 21, T0 + 1000, c2s=b"USER vlan\r\n", link=Link(vlan=42))
    rrq = b"\x00\x01dump.bin\x00octet\x00tsize\x000\x00blksize\x001024\x00"
    pkts += udp_exchange(dev, pub, 40900, 69, T0 + 1100, [(True, rrq)])
    pkts += udp_exchange(
        dev, pub, 40900, 50000, T0 + 1100.01, [(False, b"\x00\x06tsize\x00999\x00"), (True, b"\x00\x04\x00\x00")]
    )
    return write_pcap(tmp / "crafted.pcap", pkts)


def _crafted_home(tmp: Path) -> Path:
    """192.168.56.10 (home_net 192.168.0.0/16): SMB pipes and an untouched open
    (a file event), FTP listing / missing data channel, FTP on port 2121, TFTP error."""
    dev, pub = "192.168.56.10", "198.51.100.20"
    pkts = smb_session(42000, T0)
    pkts += ftp_session(40100, T0 + 100, [("LIST", 30001, b"a.txt\r\n"), ("RETR b.txt", 30003, b"")])
    c = Tcp(dev, pub, 40200, 2121, T0 + 200).handshake()
    c.s2c(b"220 (vsFTPd 3.0.3)\r\n").c2s(b"USER exfil\r\n").s2c(b"331 Password.\r\n").fin()
    pkts += c.pkts
    rrq = b"\x00\x01missing.txt\x00octet\x00"
    pkts += udp_exchange(dev, pub, 40300, 69, T0 + 300, [(True, rrq)])
    pkts += udp_exchange(dev, pub, 40300, 50001, T0 + 300.01, [(False, b"\x00\x05\x00\x01File not found\x00")])
    return write_pcap(tmp / "crafted_home.pcap", pkts)


def _replay(pcap: Path, cfg: dict, book: AttributionBook | None = None) -> dict[str, list[dict]]:
    sink = MemorySink()
    rules = load_rules(REPO / "rules", RECORD_FIELDS)
    pipe = Pipeline(config_from_dict(cfg, "<test>"), rules, sink, attribution=book)
    res = read_file(pcap, pipe.handler_for, pipe.capture_filters(), pipe.refilter)
    assert not res.error, (pcap, res.error)
    pipe.finish()
    return sink.records


def _endpoint_book(pcap: Path, cfg: dict) -> AttributionBook:
    """One process per outbound control connection / request of ``pcap`` (as the
    daemon's helper finds them); the children inherit it."""
    book = AttributionBook()
    for i, r in enumerate(_replay(pcap, cfg)["connections"]):
        if not r["ParentUid"] and r["Direction"] == "outbound":
            key = (6 if r["Protocol"] == "Tcp" else 17, r["LocalIP"], r["LocalPort"], r["RemoteIP"], r["RemotePort"])
            book.add(
                key,
                Attribution(
                    InitiatingProcessFileName="lftp",
                    InitiatingProcessId=4000 + i,
                    InitiatingProcessCommandLine=f"lftp -e 'mirror -R /srv' {r['RemoteIP']}",
                    InitiatingProcessAccountName="backup",
                    InitiatingProcessParentFileName="cron",
                    InitiatingProcessCreationTime="2026-11-27T00:59:59.000000Z",
                    AttributionSource="socket",
                    InitiatingProcessFolderPath="/usr/bin/lftp",
                    InitiatingProcessParentId=1,
                    AttributionDetail="socket inode",
                ),
            )
    return book


def _runs(tmp: Path) -> list[tuple[str, Path, dict, AttributionBook | None]]:
    runs: list[tuple[str, Path, dict, AttributionBook | None]] = [
        ("demo", PCAPS / "demo.pcap", _yaml(PCAPS / "demo.yaml"), None)
    ]
    runs += [(p.name, p, REAL_CFG, None) for p in sorted((PCAPS / "real").glob("*.pcap"))]
    bytes_cfg, adv_cfg = _yaml(PCAPS / "adversary" / "bytes.yaml"), _yaml(PCAPS / "adversary" / "adversary.yaml")
    for p in sorted((PCAPS / "adversary").glob("*.pcap")):
        runs.append((p.name, p, bytes_cfg if p.stem.endswith("_claims") else adv_cfg, None))
    hostnames = {"93.184.216.34": "ftp.example.org", "1.1.1.1": "one.example"}
    runs.append(("crafted", _crafted(tmp), {"home_net": ["10.0.0.0/8"], "hostnames": hostnames}, None))
    home = ({"home_net": ["192.168.0.0/16"]}, _crafted_home(tmp))
    runs.append(("crafted_home", home[1], home[0], None))
    runs.append(("endpoint:crafted_home", home[1], home[0], _endpoint_book(home[1], home[0])))
    # endpoint mode: process columns filled (and "none" where nothing was found)
    for name in ("ftp_passive_anon.pcap", "ftp_active_local.pcap", "tftp.pcap", "smb445.pcap"):
        runs.append(
            (f"endpoint:{name}", PCAPS / "real" / name, REAL_CFG, _endpoint_book(PCAPS / "real" / name, REAL_CFG))
        )
    runs.append(("endpoint-none:smb139.pcap", PCAPS / "real" / "smb139.pcap", REAL_CFG, AttributionBook()))
    # a SYN scan past max_flows: connection_attempts weird records (attempt_records: aggregate)
    scan = tmp / "scan.pcap"
    write_scan_pcap(scan, syn_scan_frames(1_000, sources=50, t0_us=int(T0 * 1e6)))
    runs.append(("scan", scan, {"home_net": ["10.0.0.0/8"], "limits": {"max_flows": 100}}, None))
    return runs


def emitted(tmp: Path) -> dict[str, dict[str, list[dict]]]:
    """{profile: {kind: [documents as written]}} for every run, through the sinks' encoder;
    the first three of each kind also through a line cap small enough to truncate them."""
    out: dict[str, dict[str, list[dict]]] = {p: {k: [] for k in KINDS} for p in ("mde", "ecs")}
    for _name, pcap, cfg, book in _runs(tmp):
        records = _replay(pcap, cfg, book)
        config = config_from_dict(cfg, "<test>")
        rules = load_rules(REPO / "rules", RECORD_FIELDS)
        for prof in ("mde", "ecs"):
            enc = Encoder(make_profile(prof, config, rules))
            small = Encoder(make_profile(prof, config, rules), max_line_bytes=400)
            for kind, recs in records.items():
                out[prof][kind] += [json.loads(enc.encode(kind, r)) for r in recs]
                out[prof][kind] += [json.loads(small.encode(kind, r)) for r in recs[:3]]
    return out


# -- the documents ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> dict[str, dict[str, list[dict]]]:
    return emitted(tmp_path_factory.mktemp("ingest"))


def _leaves(v: Any, path: str = "") -> list[str]:
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _leaves(x, f"{path}.{k}" if path else k)]
    if isinstance(v, list):
        return [p for x in v for p in _leaves(x, path)]
    return [path]


def test_the_replays_cover_every_kind_both_profiles_and_endpoint_mode(docs):
    """What the type checks below walk: all five kinds, the process columns of
    endpoint mode, truncated lines, hostnames, file events."""
    for prof in ("mde", "ecs"):
        for kind in KINDS:
            assert docs[prof][kind], (prof, kind)
    mde_paths = {p for ds in docs["mde"].values() for d in ds for p in _leaves(d)}
    ecs_paths = {p for ds in docs["ecs"].values() for d in ds for p in _leaves(d)}
    assert {
        "InitiatingProcessCommandLine",
        "InitiatingProcessCreationTime",
        "AttributionSource",
        "RecordTruncated",
        "RemoteUrl",
        "AdditionalFields.TlsSni",
        "AdditionalFields.SmbPipes",
        "Access",
        "ErrorCode",
        "Note",
        "Attempts",
        "LastResponderIP",
    } <= mde_paths
    assert {
        "process.command_line",
        "process.start",
        "process.parent.pid",
        "xfer.attribution_source",
        "xfer.file.attribution_source",
        "xfer.transfer.attribution_source",
        "xfer.record_truncated",
        "destination.domain",
        "tls.client.server_name",
        "network.vlan.id",
        "message",
        "xfer.details.TftpOptions.tsize",
        "threat.technique.subtechnique.id",
        "xfer.weird.attempts",
    } <= ecs_paths


# -- Elasticsearch: the index template ------------------------------------------------------
TEMPLATE = INGEST / "elasticsearch" / "index-template.json"
ISO8601 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")
STRINGS = {"keyword", "constant_keyword", "wildcard", "match_only_text", "text"}


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _is_ip(v: Any) -> bool:
    try:
        ipaddress.ip_address(v)
    except (ValueError, TypeError):
        return False
    return True


def _is_date(v: Any) -> bool:
    if not (isinstance(v, str) and ISO8601.match(v)):
        return False
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_long(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


ES_VALID = {
    "long": _is_long,
    "boolean": lambda v: isinstance(v, bool),
    "ip": _is_ip,
    "date": _is_date,
    **{t: (lambda v: isinstance(v, str)) for t in STRINGS},
}


def _flattened_ok(v: Any, depth: int = 0) -> bool:
    """A flattened field holds any JSON object of scalars (indexed as keywords), up to depth 20."""
    if depth > 20:
        return False
    if isinstance(v, dict):
        return all(isinstance(k, str) and _flattened_ok(x, depth + 1) for k, x in v.items())
    if isinstance(v, list):
        return all(_flattened_ok(x, depth) for x in v)
    return isinstance(v, (str, int, float, bool))


def es_problems(doc: dict, mappings: dict) -> list[str]:
    """Every leaf of ``doc`` that the template does not map explicitly, or maps
    with a type its value is not valid for (arrays: each element)."""
    problems: list[str] = []

    def walk(v: Any, m: dict | None, path: str) -> None:
        if m is None:
            problems.append(f"{path}: not mapped")
            return
        if isinstance(v, list):
            for x in v:
                walk(x, m, path)
            return
        t = m.get("type", "object" if "properties" in m else None)
        if t == "flattened":
            if not _flattened_ok(v):
                problems.append(f"{path}: {v!r} is not a flattened object")
            return
        if isinstance(v, dict):
            if t != "object":
                problems.append(f"{path}: an object, mapped as {t}")
                return
            for k, x in v.items():
                walk(x, m["properties"].get(k), f"{path}.{k}")
            return
        if t == "object":
            problems.append(f"{path}: {v!r} where the template maps an object")
        elif t not in ES_VALID:
            problems.append(f"{path}: unexpected mapping type {t}")
        elif not ES_VALID[t](v):
            problems.append(f"{path}: {v!r} is not a valid {t}")

    for k, v in doc.items():
        walk(v, mappings["properties"].get(k), k)
    return problems


def test_index_template_is_a_composable_data_stream_template():
    """ES 8 composable template (PUT _index_template/xfer-sensor): index_patterns
    above the built-in logs-*-* (priority 100), a data stream, explicit mappings."""
    t = _template()
    assert set(t) <= {"index_patterns", "data_stream", "priority", "template", "_meta", "composed_of", "version"}
    assert t["index_patterns"] == ["logs-xfer_sensor.*-*"] and t["data_stream"] == {} and t["priority"] > 100
    m = t["template"]["mappings"]
    assert m["dynamic"] is False and m["date_detection"] is False
    assert m["properties"]["@timestamp"] == {"type": "date"}  # a data stream needs it

    def types(props: dict, path: str = "") -> None:
        for k, v in props.items():
            assert set(v) <= {"type", "properties", "fields", "ignore_above", "dynamic"}, (path, k, v)
            if "properties" in v:
                types(v["properties"], f"{path}{k}.")
            else:
                assert v["type"] in set(ES_VALID) | {"flattened"}, (path, k, v)

    types(m["properties"])


def test_ecs_fields_have_the_ecs_reference_types():
    """Each ECS field the profile writes (tests/data/ecs/ecs_fields_subset.yml, from
    elastic/ecs fields.csv) has its ECS type in the template."""
    subset = _yaml(REPO / "tests" / "data" / "ecs" / "ecs_fields_subset.yml")["fields"]
    props = _template()["template"]["mappings"]["properties"]
    for name, spec in subset.items():
        m: dict = {"properties": props}
        for part in name.split("."):
            m = m["properties"][part]
        assert m["type"] == spec["type"], (name, m, spec)


def test_every_emitted_ecs_field_is_mapped_with_its_type(docs):
    mappings = _template()["template"]["mappings"]
    problems = sorted({p for ds in docs["ecs"].values() for d in ds for p in es_problems(d, mappings)})
    assert problems == []


def test_the_es_check_can_fail(docs):
    mappings = _template()["template"]["mappings"]
    conn = json.loads(json.dumps(docs["ecs"]["connections"][0]))
    assert es_problems(conn, mappings) == []
    conn["source"]["port"] = "21"
    conn["destination"]["ip"] = "not-an-ip"
    conn["@timestamp"] = "27/11/2026"
    conn["xfer"]["new_field"] = 1
    conn["network"]["bytes"] = 2**63
    conn["xfer"].setdefault("details", {})["SmbEncrypted"] = "yes"
    assert sorted(p.split(":")[0] for p in es_problems(conn, mappings)) == [
        "@timestamp",
        "destination.ip",
        "network.bytes",
        "source.port",
        "xfer.details.SmbEncrypted",
        "xfer.new_field",
    ]
    # a mapping taken out of the template is found by the real documents
    del mappings["properties"]["xfer"]["properties"]["transfer"]["properties"]["claimed_bytes"]
    assert any(
        p == "xfer.transfer.claimed_bytes: not mapped"
        for d in docs["ecs"]["transfers"]
        for p in es_problems(d, mappings)
    )


# -- shippers: Filebeat, Vector -------------------------------------------------------------
def _indexes(pattern: str, index: str) -> bool:
    rx = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, index) is not None


def test_filebeat_filestream_input_reads_the_jsonl_into_the_templates_data_streams(docs):
    fb = _yaml(INGEST / "filebeat" / "filebeat.yml")
    (inp,) = fb["filebeat.inputs"]
    assert inp["type"] == "filestream" and inp["id"]
    assert all(p.endswith(".jsonl") for p in inp["paths"])
    (parser,) = inp["parsers"]
    assert parser["ndjson"]["target"] == "" and parser["ndjson"]["overwrite_keys"] is True
    assert inp["message_max_bytes"] >= config_from_dict({}, "<t>").output.max_line_bytes
    index = fb["output.elasticsearch"]["index"]
    (pattern,) = _template()["index_patterns"]
    for ds in docs["ecs"].values():
        for d in ds[:1]:
            name = index.replace("%{[event.dataset]}", d["event"]["dataset"])
            assert _indexes(pattern, name), name


def test_vector_example_parses_and_routes_to_the_templates_data_streams(docs):
    with (INGEST / "vector" / "vector.toml").open("rb") as f:
        v = tomllib.load(f)
    (src,) = v["sources"].values()
    assert src["type"] == "file" and all(p.endswith(".jsonl") for p in src["include"])
    assert src["max_line_bytes"] >= config_from_dict({}, "<t>").output.max_line_bytes
    (remap,) = v["transforms"].values()
    assert remap["type"] == "remap" and "parse_json" in remap["source"] and remap["inputs"] == list(v["sources"])
    (sink,) = v["sinks"].values()
    assert sink["type"] == "elasticsearch" and sink["mode"] == "data_stream" and sink["inputs"] == list(v["transforms"])
    dsc = sink["data_stream"]
    (pattern,) = _template()["index_patterns"]
    for ds in docs["ecs"].values():
        dataset = dsc["dataset"].replace("{{ event.dataset }}", ds[0]["event"]["dataset"])
        assert _indexes(pattern, f"{dsc['type']}-{dataset}-{dsc['namespace']}"), dataset


# -- Sentinel: custom tables and the data collection rule -----------------------------------
SENTINEL = INGEST / "sentinel"
TABLE_TYPES = {"string", "int", "long", "real", "boolean", "datetime", "guid", "dynamic"}
# names Log Analytics sets itself on every table (a custom column cannot take them)
RESERVED = {"id", "type", "tenantid", "sourcesystem", "mg", "managementgroupname", "computer", "rawdata"}
KQL_SIMPLE = re.compile(
    r"source(\s*\|\s*extend\s+\w+\s*=\s*\w+\(\s*\w+\s*\)(\s*,\s*\w+\s*=\s*\w+\(\s*\w+\s*\))*)?\s*\Z"
)


def _is_int32(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31


KUSTO_VALID = {
    "string": lambda v: isinstance(v, str),
    "int": _is_int32,
    "long": _is_long,
    "real": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    # "" (a process start time not known) is ingested as null
    "datetime": lambda v: v == "" or _is_date(v),
    "dynamic": lambda v: isinstance(v, (dict, list)),
}


def sentinel_tables() -> dict[str, dict[str, str]]:
    """{table: {column: type}} from the ARM template (Tables API type names, lower-cased)."""
    arm = json.loads((SENTINEL / "tables.json").read_text())
    out: dict[str, dict[str, str]] = {}
    for res in arm["resources"]:
        assert res["type"] == "Microsoft.OperationalInsights/workspaces/tables"
        schema = res["properties"]["schema"]
        assert res["name"].endswith(f"/{schema['name']}')]") and schema["name"].endswith("_CL")
        cols = [(c["name"], c["type"].lower()) for c in schema["columns"]]
        assert len({n for n, _ in cols}) == len(cols), schema["name"]
        assert not [n for n, _ in cols if n.lower() in RESERVED or n.startswith("_")], schema["name"]
        out[schema["name"]] = dict(cols)
    return out


def dcr_kinds() -> dict[str, tuple[str, dict[str, str]]]:
    """{record kind: (table, {column: type} of its stream)}, following the DCR from the
    file it reads (OUT/<kind>.jsonl) through its stream and data flow to the table."""
    arm = json.loads((SENTINEL / "dcr.json").read_text())
    (res,) = arm["resources"]
    assert res["type"] == "Microsoft.Insights/dataCollectionRules"
    props = res["properties"]
    streams = {s: {c["name"]: c["type"] for c in d["columns"]} for s, d in props["streamDeclarations"].items()}
    flows = {f["streams"][0]: f for f in props["dataFlows"]}
    out = {}
    for src in props["dataSources"]["logFiles"]:
        assert src["format"] == "json"
        (stream,) = src["streams"]
        (pattern,) = src["filePatterns"]
        kind = re.search(r"/(\w+)\.jsonl", pattern).group(1)  # type: ignore[union-attr]
        flow = flows[stream]
        assert KQL_SIMPLE.match(flow["transformKql"]), flow["transformKql"]
        assert flow["outputStream"].startswith("Custom-")
        out[kind] = (flow["outputStream"].removeprefix("Custom-"), streams[stream])
    return out


def test_dcr_streams_match_their_tables():
    tables, kinds = sentinel_tables(), dcr_kinds()
    assert set(kinds) == set(KINDS) and len({t for t, _ in kinds.values()}) == len(KINDS)
    for kind, (table, stream) in kinds.items():
        cols = tables[table]
        assert cols.pop("TimeGenerated") == "datetime", table  # set by the transform
        assert set(cols.values()) <= TABLE_TYPES and set(stream.values()) <= TABLE_TYPES
        assert stream == cols, (kind, table)
        assert "Timestamp" in stream and stream["Timestamp"] == "datetime"


def kusto_problems(rec: dict, cols: dict[str, str]) -> list[str]:
    return [
        f"{k}: not a column" if k not in cols else f"{k}: {v!r} is not a valid {cols[k]}"
        for k, v in rec.items()
        if k not in cols or not KUSTO_VALID[cols[k]](v)
    ]


def test_every_mde_field_is_a_column_of_its_kinds_table(docs):
    kinds = dcr_kinds()
    problems = set()
    for kind, recs in docs["mde"].items():
        cols = kinds[kind][1]
        for r in recs:
            assert r["RecordKind"] == kind
            problems.update(f"{kind}.{p}" for p in kusto_problems(r, cols))
    assert sorted(problems) == []


def test_defender_columns_keep_defenders_types():
    """The connections table is DeviceNetworkEvents-shaped: the hunt runs with the table name changed."""
    defender = _yaml(REPO / "tests" / "data" / "mde" / "device_network_events_columns.yml")["columns"]
    for kind, (_table, cols) in dcr_kinds().items():
        for name, typ in cols.items():
            if name in defender:
                assert typ == defender[name], (kind, name, typ, defender[name])


def test_the_kusto_check_can_fail(docs):
    cols = dcr_kinds()["connections"][1]
    rec = dict(docs["mde"]["connections"][0])
    assert kusto_problems(rec, cols) == []
    rec.update(LocalPort=2**31, Timestamp="yesterday", AdditionalFields="{}", Extra=1, Vlan=True)
    assert sorted(p.split(":")[0] for p in kusto_problems(rec, cols)) == [
        "AdditionalFields",
        "Extra",
        "LocalPort",
        "Timestamp",
        "Vlan",
    ]
    assert not KQL_SIMPLE.match("source | summarize count()") and KQL_SIMPLE.match("source")


def test_every_asset_parses():
    for p in INGEST.rglob("*"):
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix in (".yml", ".yaml"):
            yaml.safe_load(p.read_text())
        elif p.suffix == ".toml":
            with p.open("rb") as f:
                tomllib.load(f)
        else:
            assert p.is_dir() or p.suffix == ".md", p


def test_the_cli_writes_the_documents_checked_here(tmp_path, docs):
    """The documents above are the ones `xfer-sensor replay --out` writes (demo capture, ecs)."""
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(PCAPS / "demo.pcap"), "--config", str(PCAPS / "demo.yaml")]
        + ["--out", str(out), "--profile", "ecs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    mappings = _template()["template"]["mappings"]
    for kind in KINDS:
        written = [json.loads(line) for line in (out / f"{kind}.jsonl").read_text().splitlines()]
        assert all(d in docs["ecs"][kind] for d in written), kind
        assert [q for d in written for q in es_problems(d, mappings)] == []
