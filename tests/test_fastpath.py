"""The fused per-packet path for Ethernet (sensor/engine/fastpath.py) gives exactly
what the layered path gives (Decoder -> FlowTable -> AppLayer): every record
of every kind, in order, and every counter -- on the committed captures and on
mutated ones (VLAN, QinQ, IPv6, truncated, damaged headers, reordered,
retransmitted and dropped segments; fuzz/mutate.py's generator)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.linesink import LineSink
from tests.support.mutated import ethernet_batches
from sensor.io.capture import read_file
from sensor.core.config import config_from_dict
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from sensor.detect.rules import load_rules

REPO = Path(__file__).resolve().parent.parent
CAPTURES = sorted([REPO / "pcaps" / "demo.pcap", *(REPO / "pcaps" / "real").glob("*.pcap")])
RULES = load_rules(REPO / "rules", RECORD_FIELDS)


def _outcome(pipe: Pipeline, sink: LineSink) -> tuple:
    return sink.lines, pipe.stats(), pipe.detector.hunt_results()


def _replay_file(path: Path, fused: bool, config: dict) -> tuple:
    sink = LineSink()
    pipe = Pipeline(config_from_dict(config, "<test>"), RULES, sink)
    pipe.fused = fused
    res = read_file(path, pipe.handler_for, pipe.capture_filters(), pipe.refilter)
    assert not res.error
    pipe.finish()
    return _outcome(pipe, sink)


def _replay_frames(frames, fused: bool, config: dict, linktype: int = 1) -> tuple:
    sink = LineSink()
    pipe = Pipeline(config_from_dict(config, "<test>"), RULES, sink)
    pipe.fused = fused
    h = pipe.handler_for(linktype)
    for ts, data in frames:
        h(ts, data)
    pipe.finish()
    return _outcome(pipe, sink)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_committed_captures_fused_equals_layered(path):
    config = {}
    if path.with_suffix(".yaml").exists():
        import yaml
        config = yaml.safe_load(path.with_suffix(".yaml").read_text()) or {}
    fused = _replay_file(path, True, config)
    layered = _replay_file(path, False, config)
    assert fused[0], "no records"
    assert fused == layered


def test_fused_handler_is_used_for_ethernet():
    pipe = Pipeline(config_from_dict({}, "<test>"), RULES, MemorySink())
    assert pipe.handler_for(1).__qualname__.startswith("ethernet_handler")
    pipe.fused = False
    pipe._decoders.clear()
    assert not pipe.handler_for(1).__qualname__.startswith("ethernet_handler")


@pytest.mark.parametrize("seed", range(6))
def test_mutated_captures_fused_equals_layered(seed):
    checked = 0
    for kind, config, frames in ethernet_batches(seed):
        assert _replay_frames(frames, True, config) == _replay_frames(frames, False, config), kind
        checked += len(frames)
        if checked >= 4000:
            break


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
