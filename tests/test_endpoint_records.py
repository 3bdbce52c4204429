"""Endpoint mode in the pipeline, without a network: attributions handed to the
``AttributionBook`` (as the daemon does with the helper's results) end up in
the records; FTP data connections and TFTP transfers inherit the process of
their control connection / request; AccountName is the process's account,
else the protocol login; records without a lookup say "none"; a result that
comes after its record is only counted.  Real lab captures (pcaps/real/)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sensor.attribution.attributor import Attribution
from sensor.attribution.book import AttributionBook, endpoint_config
from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.capture import read_file
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import ENDPOINT_FIELDS, RECORD_FIELDS

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "pcaps" / "real"
CLIENT, SERVER = "10.77.0.1", "10.77.0.2"
# the captures were taken on a veth pair: the server's packets carry offloaded
# (partial) checksums too, which ``auto`` accepts only from home_net senders
# and the senders named in checksum_offload_nets
CONFIG = {
    "home_net": [f"{CLIENT}/32"],
    "ip_type_overrides": {f"{SERVER}/32": "Public"},
    "checksum_offload_nets": [f"{SERVER}/32"],
}


def pipeline(book: AttributionBook | None, config: dict = CONFIG) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    return Pipeline(
        config_from_dict(config, "<test>"), load_rules(REPO / "rules", RECORD_FIELDS), sink, attribution=book
    ), sink


def feed(pipe: Pipeline, path: Path) -> None:
    res = read_file(path, pipe.handler_for, pipe.capture_filters(), pipe.refilter)
    assert not res.error, res.error


def run(pcap: str | Path, book: AttributionBook | None, config: dict = CONFIG):
    """Replay ``pcap`` (a name in pcaps/real, or a path) to the end."""
    pipe, sink = pipeline(book, config)
    feed(pipe, REAL / pcap)
    pipe.finish()
    return pipe, sink


def tftp_get(client_port: int, transfer_port: int, t: float) -> list:
    """A one-block TFTP get (RRQ to 69, DATA from ``transfer_port``, ACK) at ``t``."""
    from tests.support.craft import udp_exchange

    rrq = b"\x00\x01a.txt\x00octet\x00"
    return udp_exchange(CLIENT, SERVER, client_port, 69, t, [(True, rrq)]) + udp_exchange(
        CLIENT,
        SERVER,
        client_port,
        transfer_port,
        t + 0.001,
        [(False, b"\x00\x03\x00\x01xyz"), (True, b"\x00\x04\x00\x01")],
    )


def key(r: dict) -> tuple:
    return (6 if r["Protocol"] == "Tcp" else 17, r["LocalIP"], r["LocalPort"], r["RemoteIP"], r["RemotePort"])


def proc(pid: int, name: str, user: str) -> Attribution:
    return Attribution(
        InitiatingProcessFileName=name,
        InitiatingProcessId=pid,
        InitiatingProcessCommandLine=f"{name} --demo {pid}",
        InitiatingProcessAccountName=user,
        InitiatingProcessParentFileName="bash",
        AttributionSource="socket",
        InitiatingProcessFolderPath=f"/usr/bin/{name}",
        InitiatingProcessParentId=1,
    )


def attribute_sessions(pcap: str) -> tuple[AttributionBook, dict]:
    """A book holding one process per control connection / request of the
    capture (not for data channels or transfers: those must inherit)."""
    _, plain = run(pcap, None)
    book = AttributionBook()
    expected = {}
    for i, r in enumerate(plain.records["connections"]):
        if not r["ParentUid"] and r["Direction"] == "outbound":
            a = proc(1000 + i, "curl" if i % 2 else "lftp", "alice" if i % 2 else "bob")
            book.add(key(r), a)
            expected[r["Uid"]] = a
    assert expected, "the capture has control connections"
    return book, expected


@pytest.mark.parametrize("pcap", ["ftp_passive_anon.pcap", "ftp_active_local.pcap", "tftp.pcap"])
def test_children_inherit_their_control_connection_process(pcap):
    book, expected = attribute_sessions(pcap)
    pipe, sink = run(pcap, book)
    recs = sink.records["connections"]
    children = [r for r in recs if r["ParentUid"]]
    assert children, "the capture has data channels / transfers"
    for r in recs:
        assert list(r)[-len(ENDPOINT_FIELDS) :] == list(ENDPOINT_FIELDS)
        a = expected.get(r["Uid"]) or expected.get(r["ParentUid"])
        assert a is not None, r
        assert (
            r["InitiatingProcessFileName"],
            r["InitiatingProcessId"],
            r["InitiatingProcessAccountName"],
            r["InitiatingProcessCommandLine"],
            r["InitiatingProcessParentFileName"],
        ) == (
            a.InitiatingProcessFileName,
            a.InitiatingProcessId,
            a.InitiatingProcessAccountName,
            a.InitiatingProcessCommandLine,
            "bash",
        ), r
        assert r["AccountName"] == a.InitiatingProcessAccountName
        want = "linked-control-connection" if r["ParentUid"] else "socket"
        assert r["AttributionSource"] == want, r
    st = pipe.stats()["attribution"]
    assert st["by_source"] == {"linked-control-connection": len(children), "socket": len(recs) - len(children)}
    assert st["misses"] == 0 and st["waiting"] == 0
    # transfers name the process too (the control connection's)
    for t in sink.records["transfers"]:
        a = expected.get(t["ControlUid"]) or expected.get(t.get("Uid"))
        assert a is not None and t["InitiatingProcessFileName"] == a.InitiatingProcessFileName, t
        assert t["InitiatingProcessId"] == a.InitiatingProcessId and t["AttributionSource"] != "none", t


def test_without_a_lookup_the_account_is_the_protocol_login():
    pipe, sink = run("ftp_passive_anon.pcap", AttributionBook())
    recs = sink.records["connections"]
    ctrl = [r for r in recs if r["RemotePort"] == 21]
    assert ctrl and all(r["AttributionSource"] == "none" and r["InitiatingProcessId"] == 0 for r in recs)
    assert all(r["AccountName"] == r["AppUser"] != "" for r in ctrl)
    assert pipe.stats()["attribution"]["misses"] == len(recs)


def test_a_data_channel_with_its_own_lookup_but_an_unknown_control_keeps_its_own():
    _, plain = run("ftp_passive_anon.pcap", None)
    book = AttributionBook()
    data = [r for r in plain.records["connections"] if r["ParentUid"]]
    for r in data:
        book.add(key(r), proc(77, "wget", "carol"))
    _, sink = run("ftp_passive_anon.pcap", book)
    got = {r["Uid"]: r for r in sink.records["connections"]}
    for r in data:
        assert (got[r["Uid"]]["InitiatingProcessFileName"], got[r["Uid"]]["AttributionSource"]) == ("wget", "socket")


def test_a_result_after_its_record_is_counted_late_and_not_reused():
    book = AttributionBook(max_entries=4)
    book.missed((6, "10.0.0.1", 40000, "192.0.2.1", 21))
    book.add((6, "10.0.0.1", 40000, "192.0.2.1", 21), proc(1, "curl", "a"))
    assert book.stats["late"] == 1 and len(book) == 0
    for port in range(6):  # bounded: the oldest go first
        book.add((6, "10.0.0.1", port, "192.0.2.1", 21), proc(port, "curl", "a"))
    assert len(book) == 4 and book.stats["evicted"] == 2
    assert book.take((6, "10.0.0.1", 0, "192.0.2.1", 21)) is None
    assert book.take((6, "10.0.0.1", 5, "192.0.2.1", 21)).InitiatingProcessId == 5


def test_replay_records_have_no_endpoint_columns():
    _, sink = run("tftp.pcap", None)
    for r in sink.records["connections"]:
        assert "AttributionSource" not in r and list(r) == list(RECORD_FIELDS)


def test_endpoint_config_uses_the_host_name_and_addresses_unless_set():
    nets = (ipaddress.ip_network("10.9.8.7/32"), ipaddress.ip_network("fd00::7/128"))
    cfg = endpoint_config(config_from_dict({}, "<t>"), hostname="ws-17", networks=nets)
    assert cfg.device_name == "ws-17" and cfg.home_net == nets
    cfg = endpoint_config(
        config_from_dict({"device_name": "db-1", "home_net": ["10.0.0.0/8"]}, "<t>"), hostname="ws-17", networks=nets
    )
    assert cfg.device_name == "db-1" and cfg.home_net == (ipaddress.ip_network("10.0.0.0/8"),)


def test_endpoint_records_validate_as_ecs():
    """The process columns map onto ECS process.* (connections and transfers)."""
    from sensor.records.ecs import EcsProfile
    from tests.test_outputs_profiles import ecs_problems

    book, expected = attribute_sessions("ftp_active_local.pcap")
    _, sink = run("ftp_active_local.pcap", book)
    prof = EcsProfile(config_from_dict(CONFIG, "<test>"), load_rules(REPO / "rules", RECORD_FIELDS), "sensor-1")
    n = 0
    for kind in ("connections", "transfers"):
        for rec in sink.records[kind]:
            doc = prof.connection(rec) if kind == "connections" else prof.transfer(rec)
            assert ecs_problems(doc) == [], (kind, doc)
            assert doc["process"]["name"] in ("curl", "lftp") and doc["process"]["pid"] >= 1000, doc
            n += 1
    assert n > 4


def test_reused_client_port_each_connection_gets_its_own_process(tmp_path):
    """Two TFTP requests from one client port by two processes (the e2e lab's
    curl --local-port runs): the book holds both lookups under one key, each
    record takes the one of its own first packet, and each transfer inherits
    its own request's process -- also when the newer lookup is in before the
    older record is written (it is: that record ends at the newer request)."""
    from tests.support.craft import write_pcap

    t0 = 1_800_000_000.0
    pcap = write_pcap(tmp_path / "reuse.pcap", tftp_get(46969, 50000, t0) + tftp_get(46969, 50001, t0 + 0.3))
    k = (17, CLIENT, 46969, SERVER, 69)
    first, second = proc(501, "curl", "alice"), proc(502, "curl", "bob")
    book = AttributionBook()
    book.add(k, first, int(t0 * 1e6))
    book.add(k, second, int((t0 + 0.3) * 1e6))
    _, sink = run(pcap, book)
    recs = sorted(sink.records["connections"], key=lambda r: r["FirstSeen"])
    got = [(r["RemotePort"], r["InitiatingProcessId"], r["AccountName"], r["AttributionSource"]) for r in recs]
    assert got == [
        (69, 501, "alice", "socket"),
        (50000, 501, "alice", "linked-control-connection"),
        (69, 502, "bob", "socket"),
        (50001, 502, "bob", "linked-control-connection"),
    ], got
    assert len(book) == 0
    # a record asking while only an earlier connection's result is in gets none
    b1 = AttributionBook()
    b1.add(k, first, int(t0 * 1e6))
    assert b1.take(k, int((t0 + 0.3) * 1e6)) is None and b1.take(k, int(t0 * 1e6)) is first
    # without times, the newest result (as before)
    b2 = AttributionBook()
    b2.add(k, first)
    b2.add(k, second)
    assert b2.take(k) is second and b2.take(k) is first and b2.take(k) is None


def test_transfer_waits_for_its_lookup(tmp_path):
    """A TFTP transfer that ends before the daemon has its request's lookup
    (the whole exchange in one capture batch): its transfers.jsonl record
    waits, and goes out with the process once the result is in
    (``attributions_arrived``); one whose lookup never comes goes out with
    "none" when its connection's record is written."""
    from tests.support.craft import write_pcap

    t0 = 1_800_000_000.0
    pcap = write_pcap(tmp_path / "late.pcap", tftp_get(40001, 50000, t0) + tftp_get(40002, 50001, t0 + 1))
    book = AttributionBook()
    pipe, sink = pipeline(book)
    feed(pipe, pcap)
    assert sink.records["transfers"] == []  # both ended, no lookup in yet: held
    book.add((17, CLIENT, 40001, SERVER, 69), proc(601, "tftp", "carol"), int(t0 * 1e6))
    pipe.attributions_arrived()
    got = [(t["InitiatingProcessId"], t["AttributionSource"]) for t in sink.records["transfers"]]
    assert got == [(601, "socket")], sink.records["transfers"]
    pipe.finish()  # the other lookup never came
    last = sink.records["transfers"][-1]
    assert len(sink.records["transfers"]) == 2 and last["AttributionSource"] == "none", last
    assert "InitiatingProcessId" not in last or not last["InitiatingProcessId"]


def test_the_lookup_detail_is_kept_for_the_operator():
    """AdditionalFields.AttributionDetail says how the process was found (or
    why not); a linked connection keeps its control connection's detail."""
    from dataclasses import replace

    _, plain = run("ftp_passive_anon.pcap", None)
    book = AttributionBook()
    ctrl = [r for r in plain.records["connections"] if not r["ParentUid"]]
    for r in ctrl:
        book.add(key(r), replace(proc(5, "curl", "alice"), AttributionDetail="procfs-scan"))
    _, sink = run("ftp_passive_anon.pcap", book)
    recs = sink.records["connections"]
    assert recs and all(r["AdditionalFields"]["AttributionDetail"] == "procfs-scan" for r in recs)
    _, sink = run("ftp_passive_anon.pcap", AttributionBook())
    assert all("AttributionDetail" not in r["AdditionalFields"] for r in sink.records["connections"])


def test_a_failed_lookup_is_reported_on_its_own_record_after_the_children_asked():
    """A TFTP request whose lookup found nothing ("none", "no-socket": the
    client was gone) keeps that detail on its record, although its transfer
    asked for the request's process first; the transfer has no process to
    inherit and says so too."""
    from dataclasses import replace

    from sensor.attribution.attributor import NO_ATTRIBUTION

    _, plain = run("tftp.pcap", None)
    book = AttributionBook()
    reqs = [r for r in plain.records["connections"] if r["RemotePort"] == 69]
    assert reqs and any(r["ParentUid"] for r in plain.records["connections"])
    for r in reqs:
        book.add(key(r), replace(NO_ATTRIBUTION, AttributionDetail="no-socket"))
    pipe, sink = run("tftp.pcap", book)
    recs = sink.records["connections"]
    for r in recs:
        assert r["AttributionSource"] == "none", r
        if r["RemotePort"] == 69:
            assert r["AdditionalFields"]["AttributionDetail"] == "no-socket", r
    assert book.stats["taken"] == len(reqs) and len(book) == 0
