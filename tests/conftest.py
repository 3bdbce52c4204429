import logging
import sys
from pathlib import Path

import os

import pytest
from hypothesis import settings

# The normal run (.ci/run) is deterministic: the same examples every time, so
# a red run is about the change and not about the seed.  Random exploration
# is its own command (docs/testing.md, "Long runs"): HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

sys.path.insert(0, str(Path(__file__).parent))
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from sensor.io.capture import read_file  # noqa: E402
from sensor.core.config import config_from_dict  # noqa: E402
from sensor.io.sinks import MemorySink  # noqa: E402
from sensor.pipeline import Pipeline  # noqa: E402
from sensor.records.mde import RECORD_FIELDS  # noqa: E402
from sensor.detect.rules import load_rules  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class Replay:
    """Result of replaying crafted packets through the whole pipeline."""

    def __init__(self, pipe: Pipeline, sink: MemorySink) -> None:
        self.pipe = pipe
        self.connections = sink.records["connections"]
        self.alerts = [a for a in sink.records["alerts"] if "ConnectionCount" in a]
        self.weird = sink.records["weird"]
        self.transfers = sink.records["transfers"]
        self.hunt = pipe.detector.hunt_results()


@pytest.fixture
def replay(tmp_path):
    """replay(pkts or path, config=dict, linktype=None) -> Replay"""
    from craft import write_pcap

    def run(pkts, config: dict | None = None, linktype: int | None = None, rules=None,
            capture_filter: bool = True) -> Replay:
        if isinstance(pkts, (str, Path)):
            path = Path(pkts)
        else:
            path = write_pcap(tmp_path / f"t{len(list(tmp_path.iterdir()))}.pcap", pkts, linktype)
        cfg = config_from_dict(config or {}, "<test>")
        rs = rules or load_rules(REPO / "rules", RECORD_FIELDS)
        sink = MemorySink()
        pipe = Pipeline(cfg, rs, sink)
        res = read_file(path, pipe.handler_for, *((pipe.capture_filters(), pipe.refilter) if capture_filter else ()))
        assert not res.error, res.error
        pipe.finish()
        return Replay(pipe, sink)

    return run
