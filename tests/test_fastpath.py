"""The fused per-packet path for Ethernet (sensor/engine/fastpath.py) gives exactly
what the general path gives -- the general decoder (``Decoder.decode``, as
every other link type takes it), the flow table and the application layer,
which is what ``Pipeline.fused = False`` runs: every record of every kind, in
order, every counter, and the flow table's state (each flow, both sides'
sequence accounting, the timeout queues, the clock) every few packets -- on
every committed capture and on mutated ones (VLAN, QinQ, IPv6, truncated,
damaged headers, reordered, retransmitted and dropped segments;
fuzz/mutate.py's generator). Also the one header walk (``decode.locate``) and
the one sequence unwrap (``decode.seq_unwrap``) they share."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.engine.decode import ETHERTYPE_IPV4, ETHERTYPE_IPV6, LATER_FRAGMENT, NOT_IP, OTHER_PROTO, locate, seq_unwrap
from sensor.io.capture import read_file
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.linesink import LineSink
from tests.support.mutated import ethernet_batches

REPO = Path(__file__).resolve().parent.parent
CAPTURES = sorted([*(REPO / "pcaps").glob("*.pcap"), *(REPO / "pcaps" / "real").glob("*.pcap")])
RULES = load_rules(REPO / "rules", RECORD_FIELDS)
SNAPSHOT_EVERY = 37  # packets between two looks at the flow table


def _side(s) -> tuple:
    return s.pkts, s.state, s.base, s.lo, s.hi, s.seen_seq, s.udp_bytes, s.syn_seq


def _flow_table(pipe: Pipeline) -> tuple:
    """Everything the flow table holds, comparable between two pipelines."""
    ft = pipe.flows
    flows = tuple(
        (
            k,
            f.uid,
            f.orig_b,
            f.orig_p,
            f.resp_b,
            f.resp_p,
            f.first_ts,
            f.last_ts,
            f.qts,
            f.qver,
            f.inq,
            f.tclass,
            f.history,
            f.vlan,
            f.flipped,
            f.app,
            f.weirds,
            _side(f.o),
            _side(f.r),
        )
        for k, f in sorted(ft.flows.items())
    )
    queues = tuple(tuple((e[0], e[1], e[2], e[3].uid) for e in q) for q in ft.queues)
    return (
        ft.now,
        ft.next_scan,
        ft.emergency,
        ft.timeouts_us,
        tuple(ft.qlive),
        ft.stats.as_dict(),
        pipe.decode_stats.as_dict(),
        flows,
        queues,
    )


def _watched(pipe: Pipeline, snaps: list):
    """``pipe.handler_for``, whose handlers also take a snapshot of the flow
    table every ``SNAPSHOT_EVERY`` packets."""

    def handler_for(linktype: int):
        h = pipe.handler_for(linktype)
        n = 0

        def handle(ts: int, data: bytes) -> None:
            nonlocal n
            h(ts, data)
            n += 1
            if n % SNAPSHOT_EVERY == 0:
                snaps.append(_flow_table(pipe))

        return handle

    return handler_for


def _new(fused: bool, config: dict) -> tuple[Pipeline, LineSink]:
    sink = LineSink()
    pipe = Pipeline(config_from_dict(config, "<test>"), RULES, sink)
    pipe.fused = fused
    return pipe, sink


def _outcome(pipe: Pipeline, sink: LineSink, snaps: list) -> tuple:
    snaps.append(_flow_table(pipe))  # the table at the end of the capture
    pipe.finish()
    return sink.lines, pipe.stats(), pipe.detector.hunt_results(), snaps


def _replay_file(path: Path, fused: bool, config: dict) -> tuple:
    pipe, sink = _new(fused, config)
    snaps: list = []
    res = read_file(path, _watched(pipe, snaps), pipe.capture_filters(), pipe.refilter)
    assert not res.error
    return _outcome(pipe, sink, snaps)


def _replay_frames(frames, fused: bool, config: dict, linktype: int = 1) -> tuple:
    pipe, sink = _new(fused, config)
    snaps: list = []
    h = _watched(pipe, snaps)(linktype)
    for ts, data in frames:
        h(ts, data)
    return _outcome(pipe, sink, snaps)


def _config(path: Path) -> dict:
    if path.with_suffix(".yaml").exists():
        import yaml

        return yaml.safe_load(path.with_suffix(".yaml").read_text()) or {}
    return {}


def test_every_committed_capture_is_here():
    assert len(CAPTURES) >= 12 and REPO / "pcaps" / "demo.pcap" in CAPTURES


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_committed_captures_fused_equals_general(path):
    config = _config(path)
    fused = _replay_file(path, True, config)
    general = _replay_file(path, False, config)
    assert fused[0], "no records"
    assert fused[1] == general[1]  # counters first: the smaller diff
    assert fused[3] == general[3]  # the flow table, step by step
    assert fused == general


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_committed_captures_without_the_capture_filter(path):
    """Every frame of the capture, not only what the BPF filter keeps: the
    untracked ones are counted (and dropped) the same way too."""
    from scapy.utils import PcapReader

    with PcapReader(str(path)) as r:
        frames = [(int(p.time * 1_000_000), bytes(p)) for p in r]
    config = _config(path)
    assert _replay_frames(frames, True, config) == _replay_frames(frames, False, config)


def test_the_general_path_is_the_general_decoder():
    pipe = Pipeline(config_from_dict({}, "<test>"), RULES, MemorySink())
    assert pipe.handler_for(1).__qualname__.startswith("ethernet_handler")
    pipe.fused = False
    pipe._decoders.clear()
    # no shortcut of its own: Decoder.decode for every frame
    assert pipe.handler_for(1).__qualname__ == "_clocked.<locals>.handle"


@pytest.mark.parametrize("seed", range(6))
def test_mutated_captures_fused_equals_general(seed):
    checked = 0
    for kind, config, frames in ethernet_batches(seed):
        assert _replay_frames(frames, True, config) == _replay_frames(frames, False, config), kind
        checked += len(frames)
        if checked >= 4000:
            break


def _ip4(proto: int, l4: bytes, frag: int = 0, ihl: int = 5) -> bytes:
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            ihl * 4 + len(l4),
            1,
            frag,
            64,
            proto,
            0,
            bytes((10, 0, 0, 1)),
            bytes((10, 0, 0, 2)),
        )
        + bytes(ihl * 4 - 20)
        + l4
    )


def test_locate_walks_tags_and_ip_headers():
    tcp = struct.pack("!HHIIBB", 40000, 21, 1, 0, 0x50, 0x02) + bytes(6)
    eth = bytes(12)
    plain = eth + b"\x08\x00" + _ip4(6, tcp)
    assert locate(plain, 14, 0x0800) == ("", 0, 0, 4, 6, 34, 54, bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 0)
    qinq = eth + b"\x88\xa8\x00\x05\x81\x00\x00\x07\x08\x00" + _ip4(6, tcp, ihl=6)
    assert locate(qinq, 14, 0x88A8)[:7] == ("", 2, 5, 4, 6, 22 + 24, 22 + 24 + 20)
    assert locate(_ip4(17, bytes(8), frag=0x2000), 0, ETHERTYPE_IPV4)[0::9] == ("", 1)  # a first fragment
    assert locate(_ip4(17, bytes(8), frag=0x0010), 0, ETHERTYPE_IPV4)[0] == LATER_FRAGMENT
    assert locate(_ip4(1, bytes(8)), 0, ETHERTYPE_IPV4)[0] == OTHER_PROTO
    assert locate(bytes(20), 0, 0x0806)[0] == NOT_IP
    assert locate(_ip4(6, tcp)[:19], 0, ETHERTYPE_IPV4)[:4] == ("ipv4_truncated", 0, 0, 4)
    assert locate(b"\x81\x00" * 10, 0, 0x8100)[0] == "vlan_too_many_tags"
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(tcp), 0, 64, bytes(16), bytes(15) + b"\x01")
    hop = bytes((6, 0)) + bytes(6)
    where = locate(ip6 + hop + tcp, 0, ETHERTYPE_IPV6)
    assert where[:7] == ("", 0, 0, 6, 6, 48, 48 + len(tcp))


def test_seq_unwrap_takes_the_nearest_offset():
    assert seq_unwrap(100, 90, 0) == 10
    assert seq_unwrap(0x10, 0xFFFFFFF0, 0) == 0x20  # the sequence number wrapped
    assert seq_unwrap(80, 90, 0) == -10  # a little before the base
    base = 12345
    assert seq_unwrap((base + 5) & 0xFFFFFFFF, base, 1 << 32) == (1 << 32) + 5  # past 4 GiB
    assert seq_unwrap((base - 5) & 0xFFFFFFFF, base, (1 << 32) + 100) == (1 << 32) - 5


def _index_problems(pipe: Pipeline) -> list[str]:
    """What is wrong with the flow table's wire-order index (FlowTable.fast):
    each live IPv4 TCP flow (not a connection to itself) has exactly its two
    entries, pointing at it with the right direction, and nothing else is there."""
    ft = pipe.flows
    want = {}
    for flow in ft.flows.values():
        if flow.proto == 6 and len(flow.orig_b) == 4:
            ko, kr = ft._wire_keys(flow)
            if ko != kr:
                want[ko] = (flow, True)
                want[kr] = (flow, False)
    problems = []
    for k, (flow, fo) in ft.fast.items():
        if want.get(k) != (flow, fo):
            problems.append(f"stale or wrong entry {k.hex()} -> {flow.uid} from_orig={fo}")
    problems += [f"missing entry {k.hex()} -> {f.uid}" for k, (f, _) in want.items() if k not in ft.fast]
    return problems


@pytest.mark.parametrize("seed", range(3))
def test_wire_order_index_follows_the_flow_table(seed):
    """After every packet (committed and mutated captures, reused ports,
    expiry, eviction at a small max_flows), the index is exactly the table's."""
    batches = [("committed", {}, frames) for frames in _committed_frames()] if seed == 0 else []
    checked = indexed = 0
    for kind, config, frames in batches or ethernet_batches(seed):
        config = {**config, "limits": {**config.get("limits", {}), "max_flows": 8}} if checked % 2 else config
        pipe = Pipeline(config_from_dict(config, "<test>"), RULES, MemorySink())
        h = pipe.handler_for(1)
        for i, (ts, data) in enumerate(frames):
            h(ts, data)
            problems = _index_problems(pipe)
            assert not problems, (kind, i, problems[:3])
            indexed += bool(pipe.flows.fast)
        pipe.finish()
        assert pipe.flows.fast == {}
        checked += len(frames)
        if checked >= 3000:
            break
    assert indexed > 500, "the index was empty almost all the time: the check saw nothing"


def _committed_frames() -> list[list]:
    from scapy.utils import PcapReader

    out = []
    for path in CAPTURES:
        with PcapReader(str(path)) as r:
            out.append([(int(p.time * 1_000_000), bytes(p)) for p in r])
    return out
