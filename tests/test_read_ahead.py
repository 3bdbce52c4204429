"""Reading a capture ahead on a thread (sensor/io/capture.py) delivers exactly
what one plain ``pcap_loop`` delivers: the same packets, in order, with the
same result -- on the committed captures, on a damaged one, and when the
pipeline changes the capture filter halfway through a batch read ahead."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.capture import read_file
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import ftp_on_port_443

REPO = Path(__file__).resolve().parent.parent
CAPTURES = sorted([REPO / "pcaps" / "demo.pcap", *(REPO / "pcaps" / "real").glob("*.pcap")])
RULES = load_rules(REPO / "rules", RECORD_FIELDS)


def _packets(path: Path, read_ahead: bool, filters=None, refilter=None) -> tuple[list, object]:
    got = []
    res = read_file(path, lambda lt: lambda ts, data: got.append((ts, data)), filters, refilter, read_ahead=read_ahead)
    return got, res


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_read_ahead_delivers_what_one_pcap_loop_delivers(path):
    pipe = Pipeline(config_from_dict({}, "<test>"), RULES, MemorySink())
    ahead, r1 = _packets(path, True, pipe.capture_filters())
    plain, r2 = _packets(path, False, pipe.capture_filters())
    assert ahead and ahead == plain
    assert (
        (r1.packets, r1.capture_filter, r1.error)
        == (r2.packets, r2.capture_filter, r2.error)
        == (len(plain), r2.capture_filter, "")
    )


def test_read_ahead_on_a_damaged_capture_delivers_every_whole_packet(tmp_path):
    src = REPO / "pcaps" / "real" / "smb445.pcap"
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])  # cut inside a record, past the first batch
    ahead, r1 = _packets(cut, True)
    plain, r2 = _packets(cut, False)
    assert len(plain) > 1024 and ahead == plain
    assert r1.error and r1.error == r2.error and r1.packets == r2.packets == len(plain)


@pytest.mark.parametrize("watched", [False, True], ids=["refilter-each-packet", "watch-portset"])
def test_read_ahead_applies_a_new_capture_filter_from_the_next_packet(tmp_path, watched):
    """Also when refilter is asked only as the pipeline's PortSet changes
    (``watch``, as the replay does)."""
    path = ftp_on_port_443(tmp_path / "ftp443.pcap")
    runs = {}
    for ahead in (True, False):
        pipe = Pipeline(config_from_dict({}, "<test>"), RULES, MemorySink())
        got = []
        h = pipe.handler_for(1)

        def handler_for(lt, h=h, got=got):
            def handle(ts, data):
                got.append((ts, data))
                h(ts, data)

            return handle

        res = read_file(
            path,
            handler_for,
            pipe.capture_filters(),
            pipe.refilter,
            read_ahead=ahead,
            watch=pipe.portset if watched else None,
        )
        pipe.finish()
        runs[ahead] = (got, res.packets, res.capture_filter, pipe.stats())
    assert "port 443" in runs[True][2]  # the filter did change
    assert runs[True][0] == runs[False][0] and runs[True][1:] == runs[False][1:]
    assert len(runs[True][0]) > 2000  # the change came past the first batch
