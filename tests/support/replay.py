"""Crafted packets or a capture through the whole pipeline, in process: the
``replay`` fixture of tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.capture import read_file
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import write_pcap

REPO = Path(__file__).resolve().parents[2]


class Replay:
    """Result of replaying crafted packets through the whole pipeline."""

    def __init__(self, pipe: Pipeline, sink: MemorySink) -> None:
        self.pipe = pipe
        self.connections = sink.records["connections"]
        self.alerts = [a for a in sink.records["alerts"] if "ConnectionCount" in a]
        self.weird = sink.records["weird"]
        self.transfers = sink.records["transfers"]
        self.hunt = pipe.detector.hunt_results()


def replay(
    pkts,
    tmp_dir: Path,
    config: dict | None = None,
    linktype: int | None = None,
    rules=None,
    capture_filter: bool = True,
) -> Replay:
    """Replay ``pkts`` (scapy packets, written to a pcap in ``tmp_dir``; or a
    capture's path) with ``config`` and ``rules`` (default: the shipped
    rules), the capture filter and refilter as the CLI uses them unless
    ``capture_filter`` is false."""
    if isinstance(pkts, (str, Path)):
        path = Path(pkts)
    else:
        path = write_pcap(tmp_dir / f"t{len(list(tmp_dir.iterdir()))}.pcap", pkts, linktype)
    cfg = config_from_dict(config or {}, "<test>")
    rs = rules or load_rules(REPO / "rules", RECORD_FIELDS)
    sink = MemorySink()
    pipe = Pipeline(cfg, rs, sink)
    res = read_file(path, pipe.handler_for, *((pipe.capture_filters(), pipe.refilter) if capture_filter else ()))
    assert not res.error, res.error
    pipe.finish()
    return Replay(pipe, sink)
