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

NOT_ROOT = (
    "needs root (network namespaces, live capture on lo, raw sockets, setpriv or other users); "
    "run it as root as CI does (sudo bash scripts/test.sh), or leave it out: pytest -m 'not root'"
)


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``root`` is skipped with the reason when the run is not
    root; as root (CI) it always runs."""
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip(NOT_ROOT)


@pytest.fixture
def replay(tmp_path):
    """replay(pkts or path, config=dict, linktype=None, rules=None, capture_filter=True) -> Replay
    (tests/support/replay.py)"""
    from tests.support.replay import replay

    def run(pkts, config: dict | None = None, linktype: int | None = None, rules=None, capture_filter: bool = True):
        return replay(pkts, tmp_path, config, linktype, rules, capture_filter)

    return run
