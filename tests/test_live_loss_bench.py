"""bench/live_loss.py, briefly and slowly: 1 s at 2,000 packets/s in a network
namespace of its own, attribution helper on (and through a span port, in span
mode). Behaviour, not timing: every packet sent reaches the sensor's records,
no kernel drops, every flow recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """bench/live_loss.py for 1 s at 2,000 pps with *args*: its output and JSON result."""
    assert os.geteuid() == 0, "the daemon tests run as root (scripts/test.sh)"
    out = tmp_path / "r.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "live_loss.py"),
            "--rate",
            "2000",
            "--seconds",
            "1",
            *args,
            "--json",
            str(out),
            "--sensor",
            str(Path(sys.executable).parent / "xfer-sensor"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r, json.loads(out.read_text())


@pytest.mark.root
@pytest.mark.parametrize("traffic", ["tftp", "tcp"])
def test_live_loss_bench_reports_no_loss_at_a_low_rate(tmp_path, traffic):
    r, res = _bench(tmp_path, "--traffic", traffic)
    assert res["netns"] == "own" and res["attribution"] is True
    assert res["sent"] == 2000 and res["flows_sent"] == 1000  # 1000 flows of 2 packets
    assert res["flows_recorded"] == res["flows_sent"] > 0
    assert res["sensor_processed_of_ours"] == res["sent"] and res["loss_pct"] == 0.0
    assert res["kernel_dropped"] == 0 and res["pcap_received"] >= res["sent"]
    assert res["attribution_helper"]["lookups"] > 0
    assert "loss 0.0 %" in r.stdout


@pytest.mark.root
def test_live_loss_bench_span_port_reports_no_loss_at_a_low_rate(tmp_path):
    """--span: the packets reach the sensor only through the tc mirror to the
    span interface it captures in span mode (no attribution helper): every
    packet sent is in the records, the mirror copied each and dropped none."""
    r, res = _bench(tmp_path, "--span", "--traffic", "tcp-session")
    assert res["span"] is True and res["attribution"] is False and "attribution_helper" not in res
    assert res["sent"] == 2000 and res["flows_recorded"] == res["flows_sent"] == 1000
    assert res["sensor_processed_of_ours"] == res["sent"] and res["loss_pct"] == 0.0
    m = res["mirror"]
    assert m["mirrored"] >= res["sent"] and m["mirror_dropped"] == 0, m
    assert res["pcap_received"] >= res["sent"] and res["kernel_dropped"] == 0
    assert "span mirror:" in r.stdout
