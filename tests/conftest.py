import logging
import os

import pytest
from hypothesis import settings

# The normal run (.ci/run) is deterministic: the same examples every time, so
# a red run is about the change and not about the seed.  Random exploration
# is its own command (docs/testing.md, "Long runs"): HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


@pytest.fixture
def replay(tmp_path):
    """replay(pkts or path, config=dict, linktype=None, rules=None, capture_filter=True) -> Replay
    (tests/support/replay.py)"""
    from tests.support.replay import replay

    def run(pkts, config: dict | None = None, linktype: int | None = None, rules=None,
            capture_filter: bool = True):
        return replay(pkts, tmp_path, config, linktype, rules, capture_filter)

    return run
