"""File sinks under logrotate (rename + SIGHUP, copytruncate) and sinks that fail or block."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from sensor.core.config import Output, SyslogOutput
from sensor.io.sinks import AsyncSink, FileWriter, Outputs, build_outputs
from sensor.records.encode import Encoder

ROTATIONS = 8  # the rotation tests rotate after every n / ROTATIONS records


def record(seq: int) -> dict:
    return {
        "Timestamp": "2026-11-27T01:00:00.000000Z",
        "DeviceName": "WS-1",
        "ActionType": "ConnectionSuccess",
        "LocalIP": "10.0.0.5",
        "LocalPort": 40000 + seq % 20000,
        "RemoteIP": "93.184.216.34",
        "RemotePort": 21,
        "Protocol": "Tcp",
        "Uid": f"C{seq:08d}",
        "SentBytes": seq,
        "AdditionalFields": {"Files": ["a" * (seq % 300)]},
    }


def produce(outputs: Outputs, n: int, rate: float, rotate) -> None:
    """Emits n records, paced to at most `rate` per second so the writer thread
    keeps up, and calls rotate() after every n / ROTATIONS records: the
    rotations are counted in records, not seconds, so a slow machine rotates
    as often as a fast one, while the writer thread is writing."""
    t0 = time.monotonic()
    every = n // ROTATIONS
    for i in range(n):
        outputs.emit("connections", record(i))
        if i % 500 == 499:
            ahead = (i + 1) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if i % every == every - 1 and i < n - 1:
            rotate()


def all_lines(folder: Path) -> list[bytes]:
    lines = []
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        assert b"\x00" not in data, f"{f.name}: NUL bytes (a write landed past a truncation)"
        assert not data or data.endswith(b"\n"), f"{f.name}: ends with a partial line"
        lines += data.splitlines()
    return lines


def test_rename_and_sighup_lose_no_line(tmp_path):
    out = tmp_path / "out"
    outputs = build_outputs(Output(), outdir=out, block=True)
    outputs.install_sighup()
    path = out / "connections.jsonl"
    n = 40_000
    rotations = []

    def rotate() -> None:
        rotations.append(len(rotations) + 1)
        os.rename(path, out / f"connections.jsonl.{len(rotations)}")
        os.kill(os.getpid(), signal.SIGHUP)  # logrotate's postrotate: kill -HUP

    try:
        produce(outputs, n, rate=15_000, rotate=rotate)
    finally:
        outputs.close()
    assert len(rotations) == ROTATIONS - 1
    st = next(iter(outputs.stats()["sinks"].values()))
    assert st["reopened"] >= len(rotations) and st["written"] == n
    lines = all_lines(out)
    seqs = [int(json.loads(line)["Uid"][1:]) for line in lines]  # every line parses
    assert sorted(seqs) == list(range(n)), "lines lost or duplicated across the rotations"
    # the rotated files and the live file each got a share (the rotation did happen)
    sizes = [len(f.read_bytes().splitlines()) for f in out.iterdir() if f.name.startswith("connections")]
    assert len([s for s in sizes if s]) >= 4


def test_copytruncate_keeps_every_line_whole(tmp_path):
    out = tmp_path / "out"
    rot = tmp_path / "rotated"
    rot.mkdir()
    outputs = build_outputs(Output(), outdir=out, block=True)
    path = out / "connections.jsonl"
    n = 30_000
    copies = []

    def rotate() -> None:
        copies.append(len(copies) + 1)
        shutil.copyfile(path, rot / f"c.{len(copies)}")  # logrotate copytruncate: copy, then truncate in place
        os.truncate(path, 0)

    try:
        produce(outputs, n, rate=15_000, rotate=rotate)
    finally:
        outputs.close()
    assert len(copies) == ROTATIONS - 1
    lines = all_lines(rot) + all_lines(out)
    seqs = [int(json.loads(line)["Uid"][1:]) for line in lines]  # every line parses, none torn
    assert len(seqs) == len(set(seqs))
    # copytruncate loses what was written between the copy and the truncate, and nothing else
    assert len(seqs) >= n * 0.5 and max(seqs) == n - 1


def test_long_record_is_one_flagged_line(tmp_path):
    outputs = build_outputs(Output(max_line_bytes=2048), outdir=tmp_path)
    rec = record(1)
    rec["AdditionalFields"] = {"Files": [f"f{i}" * 40 for i in range(500)], "SmbTrees": ["\\\\x\\" + "y" * 5000]}
    outputs.emit("connections", rec)
    outputs.close()
    lines = (tmp_path / "connections.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 and len(lines[0]) <= 2048
    doc = json.loads(lines[0])
    assert doc["RecordTruncated"] is True and doc["Uid"] == "C00000001" and doc["RemoteIP"] == "93.184.216.34"
    assert len(rec["AdditionalFields"]["Files"]) == 500  # the pipeline's record is untouched


# -- sinks that fail or block ------------------------------------------------------------
class BlockingWriter:
    """A writer stuck in write() until released (a stalled file system, a full pipe)."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines = 0

    def write(self, meta, line) -> None:
        self.release.wait()
        self.lines += 1

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def count_waits(sink: AsyncSink) -> list[int]:
    """Counts the producer's waits for room (AsyncSink._wait_room): the only
    place where emit can wait for the writer."""
    waits = [0]
    inner = sink._wait_room

    def counted() -> None:
        waits[0] += 1
        inner()

    sink._wait_room = counted  # type: ignore[method-assign]
    return waits


def test_blocked_sink_never_stalls_the_pipeline_live(caplog):
    w = BlockingWriter()
    sink = AsyncSink(w, queue_max=100, block=False, error_log_interval=60)
    waits = count_waits(sink)
    outputs = Outputs(Encoder(), [sink])
    caplog.set_level(logging.WARNING, logger="xfer-sensor.outputs")
    for i in range(20_000):
        outputs.emit("connections", record(i))
    assert waits == [0], "live mode: emit never waits for the writer"
    st = sink.stats()
    # the writer holds one batch (stuck in write), the queue holds queue_max more: the rest is dropped
    assert st["queued"] + st["dropped_overflow"] == 20_000
    assert st["queued"] <= 2 * 100 and st["dropped_overflow"] >= 20_000 - 200
    overflow_logs = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(overflow_logs) == 1, [r.getMessage() for r in caplog.records]  # once per interval
    w.release.set()
    sink.close()
    assert w.lines == st["queued"]


def test_blocked_sink_in_replay_waits_then_gives_up(caplog):
    w = BlockingWriter()
    sink = AsyncSink(w, queue_max=50, block=True, stall_timeout=0.5, error_log_interval=60)
    waits = count_waits(sink)
    outputs = Outputs(Encoder(), [sink])
    caplog.set_level(logging.WARNING, logger="xfer-sensor.outputs")
    t0 = time.monotonic()
    for i in range(5_000):
        outputs.emit("connections", record(i))
    elapsed = time.monotonic() - t0
    # at most one short wait until the writer took its first batch (then stuck in write()),
    # then one wait of stall_timeout with no progress, then dropping without waiting
    assert waits[0] in (1, 2) and elapsed >= 0.4
    assert sink.stalled and sink.stats()["dropped_overflow"] > 4_000
    assert any("no progress" in r.getMessage() for r in caplog.records)
    w.release.set()
    sink.close()


def test_collector_down_is_counted_and_logged_once_per_interval(caplog):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = port.getsockname()[1]
    port.close()  # nothing listens there
    caplog.set_level(logging.WARNING, logger="xfer-sensor.outputs")
    sl = SyslogOutput(host="127.0.0.1", port=dead, protocol="tcp", timeout=0.5, retry_interval=0.2)
    outputs = build_outputs(Output(error_log_interval=60), syslog=sl, block=False)
    waits = [count_waits(s) for s in outputs.sinks]
    for i in range(2_000):
        outputs.emit("connections", record(i))
    assert waits == [[0]]  # the connects happen on the writer's thread, never in emit
    outputs.close()
    st = next(iter(outputs.stats()["sinks"].values()))
    assert st["written"] == 0 and st["dropped_error"] + st["dropped_overflow"] == 2_000
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # one report while running (rate limited), one summary at close
    assert 1 <= len(errors) <= 2, [r.getMessage() for r in errors]
    assert "lost" in errors[0].getMessage()


def test_collector_that_stops_reading_never_stalls_the_pipeline():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts (kernel) but never reads
    sl = SyslogOutput(host="127.0.0.1", port=srv.getsockname()[1], protocol="tcp", timeout=0.3, retry_interval=0.2)
    outputs = build_outputs(Output(queue_max=200), syslog=sl, block=False)
    waits = [count_waits(s) for s in outputs.sinks]
    for i in range(30_000):
        outputs.emit("connections", record(i))
    assert waits == [[0]]
    outputs.close(timeout=3)
    srv.close()
    st = next(iter(outputs.stats()["sinks"].values()))
    assert st["dropped_overflow"] + st["dropped_error"] > 0
    assert st["written"] + st["dropped_overflow"] + st["dropped_error"] == 30_000


def test_reopen_request_is_only_a_flag(tmp_path):
    """What the SIGHUP handler calls must not take a lock the interrupted code may hold."""
    w = FileWriter(tmp_path)
    sink = AsyncSink(w, queue_max=10)
    with sink.cond:  # the producer holds the queue lock when the signal arrives
        sink.request_reopen()  # must not block
    sink.close()
    assert sink.stats()["reopened"] >= 1
