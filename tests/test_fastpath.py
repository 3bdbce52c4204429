"""The fused per-packet path for Ethernet (sensor/fastpath.py) gives exactly
what the layered path gives (Decoder -> FlowTable -> AppLayer): every record
of every kind, in order, and every counter -- on the committed captures and on
mutated ones (VLAN, QinQ, IPv6, truncated, damaged headers, reordered,
retransmitted and dropped segments; fuzz/mutate.py's generator)."""
from __future__ import annotations

from pathlib import Path

import pytest

from linesink import LineSink
from mutated import ethernet_batches
from sensor.capture import read_file
from sensor.config import config_from_dict
from sensor.outputs import MemorySink
from sensor.pipeline import Pipeline
from sensor.records import RECORD_FIELDS
from sensor.rules import load_rules

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
