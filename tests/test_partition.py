"""A replay split by host pair over processes (sensor/replay/partition.py) gives
exactly what one process gives: the same records of every kind, in the same
order, with the same alerts, summary and counters (but those it names).

The captures: the committed ones, several files in a row, a generated
two-hour mixed capture (FTP with data channels, FTPS, SMB, TFTP, failures,
VLANs, IPv6; idle timeouts end flows all along), mutated ones
(fuzz/mutate.py), a damaged one; and the cases it must hand back to one
process: a capture filter that changes halfway (FTP on port 443) and a bound
the workers together could have reached."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from linesink import LineSink
from mutated import ethernet_batches, mutate
from sensor.replay import partition
from test_read_ahead import ftp_on_port_443
from sensor.io.capture import read_file
from sensor.core.config import config_from_dict
from sensor.detect.detector import Detector
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from sensor.detect.rules import load_rules

REPO = Path(__file__).resolve().parent.parent
CAPTURES = sorted([REPO / "pcaps" / "demo.pcap", *(REPO / "pcaps" / "real").glob("*.pcap")])
RULES = load_rules(REPO / "rules", RECORD_FIELDS)
SENSOR = [sys.executable, "-m", "sensor"]
# counters a worker may count differently (sensor/replay/partition.py says why)
PER_WORKER = {("decoder", "target"), ("decoder", "tcp"), ("decoder", "udp"), ("flows", "untracked"),
              ("flows", "active_max"), ("flows", "scan_max"), ("expectations", "peak")}


def _config(path: Path) -> dict:
    import yaml
    y = path.with_suffix(".yaml")
    return (yaml.safe_load(y.read_text()) or {}) if y.exists() else {}


def _stats(stats: dict) -> dict:
    return {sect: {k: v for k, v in vals.items() if (sect, k) not in PER_WORKER} if isinstance(vals, dict) else vals
            for sect, vals in stats.items() if sect != "detect"}


def one_process(paths: list[Path], config: dict, read_ahead: bool = True) -> tuple:
    sink = LineSink()
    pipe = Pipeline(config_from_dict(config, "<test>"), RULES, sink)
    results = []
    for p in paths:
        res = read_file(p, pipe.handler_for, pipe.capture_filters(), pipe.refilter, read_ahead=read_ahead)
        results.append((res.packets, res.error))
    pipe.finish()
    return sink.lines, pipe.detector.hunt_results(), results, _stats(pipe.stats())


def split(paths: list[Path], config: dict, n: int) -> tuple:
    cfg = config_from_dict(config, "<test>")
    out = partition.run([str(p) for p in paths], cfg, RULES, n)
    try:
        sink = LineSink()
        det = Detector(RULES, cfg.limits)
        if not out.fallback:
            out.deliver(sink, det)
    finally:
        out.cleanup()
    return (sink.lines, det.hunt_results(), out.results, _stats(out.stats)), out.fallback


# -- split by host pair -------------------------------------------------------------

def test_shares_are_symmetric_and_weighted():
    rng = random.Random(1)
    for n in (2, 3, 5):
        table = partition.share_table(n)
        assert len(table) == 256 and set(table) == set(range(n))
        counts = [table.count(k) for k in range(n)]
        assert counts[0] < min(counts[1:])               # the parent also reads: it takes less
        for _ in range(200):
            a, b = rng.randbytes(4), rng.randbytes(16 if rng.random() < 0.5 else 4)
            assert partition.owner(a, b, table) == partition.owner(b, a, table)


def test_raw_owner_finds_the_addresses_behind_vlan_tags():
    table = partition.share_table(7)
    src, dst = bytes([10, 1, 2, 3]), bytes([198, 51, 100, 9])
    ip4 = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + src + dst + bytes(20)
    plain = bytes(12) + b"\x08\x00" + ip4
    qinq = bytes(12) + b"\x88\xa8\x00\x05\x81\x00\x00\x07\x08\x00" + ip4
    want = partition.owner(src, dst, table)
    assert partition.raw_owner(plain, table) == partition.raw_owner(qinq, table) == want
    s6, d6 = bytes(range(16)), bytes(range(16, 32))
    ip6 = bytes([0x60, 0, 0, 0, 0, 20, 6, 64]) + s6 + d6 + bytes(20)
    assert partition.raw_owner(bytes(12) + b"\x86\xdd" + ip6, table) == partition.owner(s6, d6, table)
    for junk in (b"", bytes(13), bytes(12) + b"\x08\x00" + bytes(10), bytes(12) + b"\x08\x06" + bytes(28)):
        assert partition.raw_owner(junk, table) == 0      # no addresses: share 0 reports it


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_committed_captures_split_equals_one_process(path):
    config = _config(path)
    want = one_process([path], config)
    assert want[0], "no records"
    for n in (2, 3):
        got, fallback = split([path], config, n)
        assert not fallback
        assert got == want, n


def test_several_files_split_equal_one_process():
    paths = [REPO / "pcaps" / "real" / "ftp_passive_anon.pcap", REPO / "pcaps" / "real" / "tftp.pcap",
             REPO / "pcaps" / "real" / "smb445.pcap"]
    got, fallback = split(paths, {}, 2)
    assert not fallback and got == one_process(paths, {})


@pytest.mark.parametrize("seed", range(3))
def test_mutated_captures_split_equals_one_process(seed, tmp_path):
    compared = 0
    for i, (kind, config, frames) in enumerate(ethernet_batches(seed)):
        if i == 6:
            break
        path = mutate.write_pcapng(tmp_path / f"m{i}.pcapng", 1, frames)
        got, fallback = split([path], config, 2)
        if fallback:          # replayed in one process by the CLI: nothing to compare
            continue
        assert got == one_process([path], config), (seed, i, kind)
        compared += 1
    assert compared >= 3


def test_damaged_capture_split_equals_one_process(tmp_path):
    data = (REPO / "pcaps" / "real" / "ftp_passive_anon.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 2 + 7])
    want = one_process([cut], {})
    got, fallback = split([cut], {}, 2)
    assert want[2][0][1] and not fallback and got == want


def test_a_filter_change_falls_back_to_one_process(tmp_path):
    path = ftp_on_port_443(tmp_path / "ftp443.pcap")
    _, fallback = split([path], {}, 2)
    assert "capture filter changed" in fallback
    cp = subprocess.run(SENSOR + ["replay", str(path), "--workers", "2", "--format", "json"], cwd=REPO,
                        capture_output=True, timeout=120)
    assert cp.returncode == 0 and b"replaying in one process: the capture filter changed" in cp.stderr
    one = subprocess.run(SENSOR + ["replay", str(path), "--workers", "1", "--format", "json"], cwd=REPO,
                         capture_output=True, timeout=120)
    a, b = json.loads(cp.stdout), json.loads(one.stdout)
    assert a["stats"] == b["stats"] and a["alerts"] == b["alerts"] and a["connections"] == b["connections"] == 2


def test_a_bound_that_could_be_reached_falls_back(tmp_path):
    # 4 flows at once in the whole capture: each worker alone stays below the
    # emergency threshold of max_flows 4, the sum might not have
    config = {"limits": {"max_flows": 4}}
    path = REPO / "pcaps" / "real" / "ftp_passive_anon.pcap"
    _, fallback = split([path], config, 3)
    assert "emergency" in fallback


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Two hours of generated mixed traffic, 150,000 packets (128 MB: ``auto`` splits it)."""
    out = tmp_path_factory.mktemp("mixed") / "mixed.pcap"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_mixed.py"), "--packets", "150000", "--seed", "11",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    return out


def test_generated_mixed_capture_split_equals_one_process_through_the_cli(mixed, tmp_path):
    outs = {}
    for n in (1, 2, 3):
        out = tmp_path / f"w{n}"
        cp = subprocess.run(SENSOR + ["replay", str(mixed), "--workers", str(n), "--out", str(out)], cwd=REPO,
                            capture_output=True, timeout=300)
        assert cp.returncode == 0, cp.stderr
        assert b"replaying in one process" not in cp.stderr
        summary = [line for line in cp.stdout.decode().splitlines()[1:] if not line.startswith("records (")]
        outs[n] = ({k: (out / f"{k}.jsonl").read_bytes() for k in ("connections", "transfers", "weird", "alerts")},
                   summary, cp.stdout.decode().splitlines()[0].split(" in ")[0])
    assert outs[1][0]["connections"].count(b"\n") > 150 and outs[1][0]["alerts"]
    assert outs[1] == outs[2] == outs[3]
    assert partition.choose_workers("auto", [str(mixed)]) == min(len(os.sched_getaffinity(0)), 8)


def test_choose_workers():
    small = str(REPO / "pcaps" / "demo.pcap")
    assert partition.choose_workers("auto", [small]) == 1          # below PARTITION_MIN_BYTES
    assert partition.choose_workers(3, [small]) == 3
    assert partition.partitionable(str(REPO / "pcaps" / "real" / "tftp.pcap"))
    assert not partition.partitionable("/dev/stdin") and not partition.partitionable("/nonexistent")


def test_workers_option_is_checked():
    for bad in ("0", "x", "65"):
        cp = subprocess.run(SENSOR + ["replay", str(REPO / "pcaps" / "demo.pcap"), "--workers", bad], cwd=REPO,
                            capture_output=True, timeout=60)
        assert cp.returncode == 2 and b"--workers" in cp.stderr


def test_a_failing_worker_fails_the_replay_loudly_and_leaves_nothing(monkeypatch, tmp_path):
    def broken(k, fd, cfg, rules, spool_path, output=None):
        raise ValueError("worker exploded")
    monkeypatch.setattr(partition, "_work", broken)
    monkeypatch.setattr(partition.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="worker exploded"):
        partition.run([str(REPO / "pcaps" / "real" / "smb445.pcap")], config_from_dict({}, "<test>"), RULES, 3)
    assert list(tmp_path.iterdir()) == []


def test_write_all_writes_every_part_in_order_through_short_writes(monkeypatch):
    """The hand-out's writev: parts in order, whatever each call takes."""
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, bufs: real(fd, [bytes(b"".join(bufs))[:777]]))
    parts = (b"head", b"", os.urandom(5000), b"x", os.urandom(3000))
    r, w = os.pipe()
    try:
        partition._write_all(w, *parts)
        os.close(w)
        w = -1
        assert partition._read_all(r) == b"".join(parts)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_hand_out_gives_each_packet_raw_owners_share(monkeypatch):
    """The hand-out's inline share (remembered per address pair, forgotten
    when SHARE_MEMORY is reached) is raw_owner's, for every layout."""
    from sensor.io.capture import BATCH_META

    monkeypatch.setattr(partition, "SHARE_MEMORY", 3)
    frames = [f for _, _, batch in zip(range(6), range(6), ethernet_batches(4)) for _, f in batch[2]][:3000]
    frames += [b"\x00" * 12 + b"\x08\x00" + b"\x45" + b"\x00" * 11 + bytes([10, 0, 0, i, 10, 0, 1, i]) + b"\x00" * 20
               for i in range(40)]

    class Clock:
        now, next_scan = 0, 1 << 62

        def advance(self, ts):
            return ts

    class Pipe:
        flows = Clock()

        def handler_for(self, linktype):
            return lambda ts, data: None

    class Feed:
        def __init__(self):
            self.shares = []

        def put(self, parts):
            head, meta, shares, pb = parts
            assert partition._BATCH.unpack(head)[:2] == (len(shares), len(pb))
            self.shares += list(shares)

    class Spool:
        index = 0

    for n in (2, 3):
        feeds = [Feed() for _ in range(n - 1)]
        dist = partition._Distributor(feeds, Pipe(), Spool())
        handle = dist.handler()
        meta = b"".join(BATCH_META.pack(1, 0, sum(map(len, frames[:i])), len(f)) for i, f in enumerate(frames))
        handle.batch(b"".join(frames), meta)
        handle(2_000_000, frames[0])        # and one packet the plain way
        table = partition.share_table(n)
        assert feeds[0].shares == [partition.raw_owner(f, table) for f in frames + frames[:1]]
        assert len(set(feeds[0].shares)) == n


def test_workers_encode_lines_as_the_parent_would_ecs_and_cut(mixed, tmp_path):
    """Workers encode their records' lines (the merge only writes them): the
    same bytes as one process, in the ECS profile too, with records cut to
    max_line_bytes and counted the same."""
    cfg = tmp_path / "small-lines.yaml"
    cfg.write_text("output:\n  max_line_bytes: 1024\n")
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"w{n}"
        cp = subprocess.run(SENSOR + ["replay", str(mixed), "--workers", str(n), "--out", str(out), "--profile", "ecs",
                                      "--config", str(cfg), "--format", "json"], cwd=REPO, capture_output=True,
                            timeout=300)
        assert cp.returncode == 0, cp.stderr
        assert b"replaying in one process" not in cp.stderr
        summary = json.loads(cp.stdout)
        outs[n] = ({k: (out / f"{k}.jsonl").read_bytes() for k in ("connections", "transfers", "weird", "alerts")},
                   summary["outputs"]["truncated"], summary["outputs"]["records"])
    assert outs[1] == outs[2]
    assert outs[1][1] > 0, "no record was cut: the test would not see a wrong count"
    assert b'"@timestamp"' in outs[1][0]["connections"]


def test_worker_reads_exact_sizes_through_short_pipe_reads():
    """A worker's reads of a batch: exactly the bytes asked for, however the
    pipe splits them, and what is left at its end."""
    import threading

    data = os.urandom(3_000_001)
    r, w = os.pipe()

    def feed():
        partition._write_all(w, data)
        os.close(w)
    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as f:
        read = partition._reader(f)
        got = [read(1_000_000), read(9), read(1_999_990), read(100)]
    t.join()
    assert [len(g) for g in got] == [1_000_000, 9, 1_999_990, 2]
    assert b"".join(got) == data
