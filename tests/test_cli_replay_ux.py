"""Replay UX: a progress line on a terminal (a real pty), silence otherwise; --format json;
one-line errors with exit 2."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sensor.cli.progress import Progress

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pcaps" / "demo.pcap"
DEMO_CFG = REPO / "pcaps" / "demo.yaml"
SENSOR = [sys.executable, "-m", "sensor"]


@pytest.fixture(scope="module")
def big_pcap(tmp_path_factory) -> Path:
    """The demo's packets 40 times over, two days apart: ~100k packets, a couple of seconds."""
    raw = DEMO.read_bytes()
    header, body = raw[:24], raw[24:]
    magic = struct.unpack("<I", header[:4])[0]
    assert magic == 0xA1B2C3D4, "demo.pcap is a little-endian microsecond pcap"
    records = []
    off = 0
    while off < len(body):
        ts, us, incl, orig = struct.unpack("<IIII", body[off : off + 16])
        records.append((ts, us, body[off + 16 : off + 16 + incl], orig))
        off += 16 + incl
    out = tmp_path_factory.mktemp("big") / "big.pcap"
    with open(out, "wb") as f:
        f.write(header)
        for k in range(40):
            shift = k * 2 * 86400
            for ts, us, data, orig in records:
                f.write(struct.pack("<IIII", ts + shift, us, len(data), orig) + data)
    return out


def run_on_pty(args: list[str], timeout: float = 60) -> tuple[int, bytes, bytes]:
    """Runs the sensor with stderr on a pseudo-terminal; returns (rc, stdout, terminal bytes)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(SENSOR + args, cwd=REPO, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    term = b""
    deadline = time.monotonic() + timeout
    while True:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            term += chunk
        elif p.poll() is not None:
            break
        assert time.monotonic() < deadline, "timed out"
    out = p.stdout.read()
    p.wait(timeout=10)
    os.close(master)
    return p.returncode, out, term


def test_progress_frames_follow_the_clock(tmp_path):
    """The renderer driven by a clock and a reader position the test controls:
    one frame per tick, each with its percentage, rates and time left, then the
    final frame; the number of frames does not depend on the machine's speed."""
    mib = 1 << 20
    capture = tmp_path / "c.pcap"
    capture.write_bytes(b"\0" * 4 * mib)
    now, pos = [100.0], [0]
    term = io.StringIO()
    prog = Progress(
        [str(capture)],
        stream=term,
        enabled=True,
        interval=1e9,  # the thread never redraws
        clock=lambda: now[0],
        offset=lambda path: pos[0],
    )
    handle = prog.wrap(lambda linktype: lambda ts_us, data: None)(1)
    prog.begin(str(capture))
    for k in (1, 2, 3):
        now[0] += 1.0
        pos[0] = k * mib
        for _ in range(1000):
            handle(0, b"")
        prog.tick()
    prog.end(str(capture))
    now[0] += 1.0
    prog.finish()
    text = term.getvalue()
    frames = [f for f in text.split("\r") if f.strip()]
    assert len(frames) == 4, frames
    bar = lambda n: "#" * n + "-" * (24 - n)  # noqa: E731
    assert frames[0] == f" 25.0% [{bar(6)}] 1.0 MiB/4.0 MiB  1000 packets  1000 pkt/s  1.0 MiB/s  0:03 left\x1b[K"
    assert frames[1].startswith(" 50.0%") and "2000 packets" in frames[1] and "0:02 left" in frames[1]
    assert frames[2].startswith(" 75.0%") and "3000 packets" in frames[2] and "0:01 left" in frames[2]
    assert frames[3] == f"100.0% [{bar(24)}] 4.0 MiB/4.0 MiB  3000 packets  750 pkt/s  1.0 MiB/s  done in 0:04\x1b[K\n"


def test_progress_is_off_and_threadless_when_disabled(tmp_path):
    term = io.StringIO()
    prog = Progress([str(DEMO)], stream=term, enabled=False)
    inner = lambda linktype: None  # noqa: E731
    assert prog.wrap(inner) is inner  # no per-packet counting either
    prog.begin(str(DEMO))
    prog.end(str(DEMO))
    prog.finish()
    assert prog.thread is None and term.getvalue() == ""


def test_progress_on_a_terminal(big_pcap):
    """End to end on a real pty: what is true however fast the replay is."""
    rc, out, term = run_on_pty(["replay", str(big_pcap), "--config", str(DEMO_CFG)])
    assert rc == 0, term
    text = term.decode()
    frames = [f for f in text.split("\r") if f.strip()]
    last = frames[-1]
    assert "100.0%" in last and "done in" in last and "packets" in last
    assert all(f.rstrip("\n").endswith("\x1b[K") for f in frames)  # every frame erases to end of line
    assert b"alert(s)" in out and b"\r" not in out and b"%" not in out  # stdout: the summary, untouched


def test_progress_percent_grows(big_pcap):
    rc, _, term = run_on_pty(["replay", str(big_pcap), "--config", str(DEMO_CFG)])
    assert rc == 0
    pcts = [float(f.split("%")[0]) for f in term.decode().split("\r") if "%" in f]
    assert pcts and pcts == sorted(pcts) and pcts[-1] == 100.0


def test_silent_when_not_a_terminal(big_pcap):
    p = subprocess.run(
        SENSOR + ["replay", str(big_pcap), "--config", str(DEMO_CFG)], cwd=REPO, capture_output=True, timeout=60
    )
    assert p.returncode == 0
    assert p.stderr == b""
    # no progress frame (they end in "MM:SS left"; the summary's "left out" is not one)
    assert b"\r" not in p.stdout and re.search(rb"\d\d left|--:-- left", p.stdout) is None


def test_progress_never_on_a_terminal_when_asked(tmp_path):
    rc, _, term = run_on_pty(["replay", str(DEMO), "--config", str(DEMO_CFG), "--progress", "never"])
    assert rc == 0 and b"%" not in term


def test_format_json_is_one_document(tmp_path):
    p = subprocess.run(
        SENSOR
        + [
            "replay",
            str(DEMO),
            "--config",
            str(DEMO_CFG),
            "--format",
            "json",
            "--out",
            str(tmp_path),
            "--profile",
            "ecs",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["packets"] == 2548 and doc["connections"] == 44 and len(doc["alerts"]) == 2
    assert doc["outputs"]["profile"] == "ecs"
    sink = next(iter(doc["outputs"]["sinks"].values()))
    assert sink["written"] == 70 and sink["dropped_overflow"] == sink["dropped_error"] == 0


def test_stdout_sink_moves_the_summary_to_stderr():
    p = subprocess.run(
        SENSOR + ["replay", str(DEMO), "--config", str(DEMO_CFG), "--stdout", "--profile", "ecs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    docs = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(docs) == 70 and all("@timestamp" in d for d in docs)
    assert "2 alert(s)" in p.stderr


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda d: d / "missing.pcap", "no such file"),
        (lambda d: d, "empty folder"),  # a folder is an input (its captures); this one holds none
        (lambda d: (d / "notes.pcap").write_text("hello, not a capture\n") and d / "notes.pcap", "not a pcap"),
        (lambda d: (d / "empty.pcap").write_bytes(b"") or d / "empty.pcap", "empty file"),
    ],
)
def test_bad_capture_is_one_line_and_exit_2(tmp_path, make, words):
    path = make(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(
        SENSOR + ["replay", str(path), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfer-sensor: error: ") and words in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_unreadable_capture_is_one_line_and_exit_2():
    """Run as another user so the permission bits apply (root reads everything)."""
    d = Path(tempfile.mkdtemp(prefix="xfer-unreadable-", dir="/tmp"))  # traversable by that user
    try:
        d.chmod(0o755)
        path = d / "secret.pcap"
        path.write_bytes(DEMO.read_bytes())
        path.chmod(0o000)
        cmd = SENSOR + ["replay", str(path)]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] + cmd
        p = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        assert p.returncode == 2, p.stderr
        assert p.stderr.splitlines() == [f"xfer-sensor: error: {path}: permission denied"]
    finally:
        shutil.rmtree(d)


def test_replay_exit_loses_no_record_on_stdout_or_files(big_pcap, tmp_path):
    """The console script leaves a replay without the interpreter's teardown
    (sensor/cli/entry.py): every record is still on stdout and in the files, and
    the summary, with stdout and stderr block-buffered pipes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.run(
        SENSOR + ["replay", str(big_pcap), "--config", str(DEMO_CFG), "--format", "json"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["packets"] > 50_000
    p = subprocess.run(
        SENSOR
        + ["replay", str(big_pcap), "--config", str(DEMO_CFG), "--stdout", "--format", "json", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stderr)
    written = sum(summary["outputs"]["records"].values())
    lines = p.stdout.splitlines()
    assert written > 1000 and len(lines) == written and all(json.loads(x) for x in lines[-50:])
    on_disk = sum(len((tmp_path / f"{k}.jsonl").read_bytes().splitlines()) for k in summary["outputs"]["records"])
    assert on_disk == written
