"""Issue #13, the edges: write failures lose nothing silently (exit 4, only
whole lines), SIGINT/SIGTERM stop a replay within a second whatever the
reader is doing (exit 130/143, what was read written), and a capture with
packets but nothing decodable says why (exit 5)."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sensor.io.sinks import AsyncSink, FileWriter, StreamWriter, write_line
from sensor.records.encode import KINDS
from tests.support.craft import tcp_session, write_raw_pcap

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pcaps" / "demo.pcap"
SENSOR = [sys.executable, "-m", "sensor"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def demo_summary(tmp_path: Path) -> dict:
    """The demo replayed normally: the reference counts."""
    p = subprocess.run(
        SENSOR + ["replay", str(DEMO), "--out", str(tmp_path / "ref"), "--format", "json"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def whole_lines(path: Path) -> int:
    """Every line of ``path`` is a whole JSON object ending in a newline; returns how many."""
    data = path.read_bytes()
    if not data:
        return 0
    assert data.endswith(b"\n"), f"{path.name} ends in half a line: {data[-80:]!r}"
    lines = data.split(b"\n")[:-1]
    for line in lines:
        assert isinstance(json.loads(line), dict), line[:80]
    return len(lines)


# -- write failures ------------------------------------------------------------------------
# A child replay whose writes into one folder see CAP bytes of room per file:
# a write that does not fit is short, the next one fails with ENOSPC -- what
# a full disk does. No root needed; the real rollback path runs. The room is
# per file, not shared: the sinks write from their own threads, and a shared
# budget would let the thread scheduler decide which file loses records.
FULL_DISK_CHILD = textwrap.dedent(
    """
    import errno, os, sys
    import sensor.io.sinks as sinks
    DIR, CAP = os.path.realpath(sys.argv[1]), int(sys.argv[2])
    real_write = os.write

    def write(fd, data):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            where = ""
        if os.path.dirname(where) != DIR:
            return real_write(fd, data)
        room = CAP - os.fstat(fd).st_size
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:room]))

    sinks.os.write = write  # the sinks' module sees the full disk, nothing else does
    from sensor.cli.entry import main
    sys.argv = ["xfer-sensor"] + sys.argv[3:]
    sys.exit(main())
    """
)


def test_injected_full_disk_exit_4_whole_lines_and_losses_per_file(tmp_path):
    ref = demo_summary(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    stdout_file = out / "stdout.ndjson"  # --stdout into a regular file on the same full disk
    with open(stdout_file, "wb") as so:
        p = subprocess.run(
            [sys.executable, "-c", FULL_DISK_CHILD, str(out), "20000"]
            + ["replay", str(DEMO), "--out", str(out), "--stdout", "--format", "json"],
            cwd=REPO,
            env=ENV,
            stdout=so,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    err = p.stderr.decode()
    assert p.returncode == 4, err
    assert "Traceback" not in err
    summary = json.loads(err[err.index("{") : err.rindex("}") + 1])  # --stdout: the summary is on stderr
    assert summary["exit_code"] == 4
    total = sum(ref["outputs"]["records"].values())
    assert sum(summary["outputs"]["records"].values()) == total  # the same records were made
    files = summary["outputs"]["sinks"][f"files:{out}"]
    lines = {k: whole_lines(out / f"{k}.jsonl") for k in KINDS}
    assert sum(lines.values()) == files["written"] > 0
    assert files["dropped_error"] == total - files["written"] > 0
    for k in KINDS:  # the losses per file are exactly what is missing from each file
        assert files["lost_by_kind"].get(k, 0) == ref["outputs"]["records"].get(k, 0) - lines[k]
    assert "No space left on device" in files["last_error"]
    st = summary["outputs"]["sinks"]["stdout"]
    assert whole_lines(stdout_file) == st["written"] and st["dropped_error"] == total - st["written"] > 0
    lost_line = [ln for ln in err.splitlines() if ln.startswith(f"xfer-sensor: error: files:{out}:")]
    assert lost_line and f"{files['dropped_error']} record(s) not written" in lost_line[0]
    assert "connections.jsonl" in lost_line[0]


def test_injected_full_disk_table_summary_does_not_claim_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(out), "20000", "replay", str(DEMO), "--out", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 4, p.stderr
    text = p.stdout.decode()
    assert "records (mde) NOT all written" in text and "written to" not in text.replace("NOT all written to", "")
    for k in KINDS:
        whole_lines(out / f"{k}.jsonl")


@pytest.mark.root
def test_tmpfs_of_16k_exit_4_and_only_whole_lines(tmp_path):
    ref = demo_summary(tmp_path)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], check=True)
    try:
        with open(mnt / "stdout.ndjson", "wb") as so:
            p = subprocess.run(
                SENSOR + ["replay", str(DEMO), "--out", str(mnt / "out"), "--stdout", "--format", "json"],
                cwd=REPO,
                env=ENV,
                stdout=so,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        err = p.stderr.decode()
        assert p.returncode == 4, err
        assert "Traceback" not in err
        summary = json.loads(err[err.index("{") : err.rindex("}") + 1])
        files = summary["outputs"]["sinks"][f"files:{mnt / 'out'}"]
        lines = sum(whole_lines(mnt / "out" / f"{k}.jsonl") for k in KINDS)
        assert lines == files["written"]
        total = sum(ref["outputs"]["records"].values())
        assert files["dropped_error"] == total - lines > 0
        assert whole_lines(mnt / "stdout.ndjson") == summary["outputs"]["sinks"]["stdout"]["written"]
        assert "No space left on device" in err
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_write_line_rolls_back_a_short_write(tmp_path, monkeypatch):
    fd = os.open(tmp_path / "f.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    write_line(fd, b'{"a":1}\n', True)
    calls = []
    real = os.write

    def short_then_full(f, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(f, bytes(data[:5]))
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr("sensor.io.sinks.os.write", short_then_full)
    with pytest.raises(OSError):
        write_line(fd, b'{"b":"' + b"x" * 100 + b'"}\n', True)
    os.close(fd)
    assert (tmp_path / "f.jsonl").read_bytes() == b'{"a":1}\n'
    assert calls[0] > 5


def test_daemon_sink_logs_once_per_burst_keeps_going_and_resumes_whole(tmp_path, monkeypatch, caplog):
    """Live outputs (block=False): a burst of failures is one error line, then
    one line when writing works again; records after it are whole lines."""
    room = [400]
    real = os.write
    w = FileWriter(tmp_path, truncate=True)
    ours = set(w.fds.values())

    def disk(fd, data):
        if fd not in ours:
            return real(fd, data)
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: room[0]]))
        room[0] -= n
        return n

    monkeypatch.setattr("sensor.io.sinks.os.write", disk)
    caplog.set_level(logging.INFO, logger="xfer-sensor.outputs")
    s = AsyncSink(w, queue_max=10_000, block=False, error_log_interval=3600)
    line = b'{"Timestamp":"t","pad":"' + b"p" * 60 + b'"}\n'
    for _ in range(200):
        s.put(("connections", "t", 6), line)
    assert s.flush(30)
    st = s.stats()
    assert st["failing"] and st["written"] >= 1 and st["dropped_error"] == 200 - st["written"]
    assert st["lost_by_kind"] == {"connections": st["dropped_error"]}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    room[0] = 10**9  # the disk frees up
    for _ in range(50):
        s.put(("transfers", "t", 6), line)
    assert s.flush(30)
    s.close()
    st = s.stats()
    assert not st["failing"] and st["written"] >= 51
    again = [r.getMessage() for r in caplog.records if "writing again" in r.getMessage()]
    assert len(again) == 1 and f"{200 - (st['written'] - 50)} record(s) were lost" in again[0]
    assert whole_lines(tmp_path / "connections.jsonl") == st["written"] - 50
    assert whole_lines(tmp_path / "transfers.jsonl") == 50


def test_stream_writer_on_a_pipe_reports_failure(monkeypatch):
    r, wfd = os.pipe()
    os.close(r)
    w = StreamWriter(wfd)
    assert w.rollback is False
    with pytest.raises(OSError):
        w.write(("connections", "t", 6), b"{}\n")
    os.close(wfd)


# -- SIGINT / SIGTERM -------------------------------------------------------------------------
def _start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        SENSOR + ["replay", *args, "--format", "json"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def _stopped(p: subprocess.Popen, sig: int) -> tuple[dict, str]:
    """Signal ``p``, wait for it (up to 30 s: a loaded CI machine), and return
    its JSON summary; the child itself measures signal-to-exit time."""
    p.send_signal(sig)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"replay did not stop within 30 s of {signal.Signals(sig).name}")
    assert p.returncode == 128 + sig, err
    summary = json.loads(out)
    assert summary["exit_code"] == 128 + sig
    assert summary["interrupted"]["signal"] == signal.Signals(sig).name
    assert summary["interrupted"]["stop_seconds"] <= 1.0, summary["interrupted"]
    assert b"Traceback" not in err
    return summary, err.decode()


def _feed_zero_records(pipe, stop: threading.Event, fed: list[int]) -> None:
    """A pcap header, then zero-length records for as long as the reader takes them
    (``fed[0]``: the bytes written so far)."""
    rec = struct.pack("<IIII", 1_700_000_000, 0, 0, 0) * 4096
    try:
        pipe.write(PCAP_HEADER)
        while not stop.is_set():
            pipe.write(rec)
            fed[0] += len(rec)
    except (BrokenPipeError, ValueError, OSError):
        pass


def _wait_read(p: subprocess.Popen, ready, secs: float = 0.2) -> None:
    """Wait (up to 60 s: a loaded CI machine starts Python slowly) until ``ready()``
    says the child is reading -- its signal handlers are installed before it opens
    its input --, then let it run a moment (it must be reading when the signal comes)."""
    deadline = time.monotonic() + 60
    while not ready():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the replay never started reading"
        time.sleep(0.02)
    time.sleep(secs)
    assert p.poll() is None, p.communicate()


def _catches_sigterm(p: subprocess.Popen):
    """``ready`` for _wait_read: the replay installed its handlers (Python itself
    catches SIGINT from the start, SIGTERM only once the replay asks for it)."""

    def ready() -> bool:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            return False
        cgt = next(int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigCgt:"))
        return bool(cgt >> (signal.SIGTERM - 1) & 1)

    return ready


def _has_open(p: subprocess.Popen, path: Path):
    """``ready`` for _wait_read: the child holds ``path`` open."""

    def ready() -> bool:
        try:
            fds = os.listdir(f"/proc/{p.pid}/fd")
        except OSError:
            return False
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p.pid}/fd/{fd}") == str(path):
                    return True
            except OSError:
                pass
        return False

    return ready


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_endless_zero_length_records_on_a_pipe(tmp_path, sig):
    p = _start(["/dev/stdin", "--out", str(tmp_path / "out")], stdin=subprocess.PIPE)
    halt = threading.Event()
    fed = [0]
    t = threading.Thread(target=_feed_zero_records, args=(p.stdin, halt, fed), daemon=True)
    t.start()
    try:
        _wait_read(p, lambda: fed[0] > 1 << 20)  # more than a pipe holds: the child reads
        summary, err = _stopped(p, sig)
    finally:
        halt.set()
    assert summary["packets"] > 0  # the records read so far were processed
    assert summary["stats"]["decoder"]["packets"] == summary["packets"]
    # a zero-length Ethernet frame is a weird; those read were written (capped per name)
    assert whole_lines(tmp_path / "out" / "weird.jsonl") == min(summary["packets"], 1000)
    assert f"interrupted by {signal.Signals(sig).name}" in err


def test_sigint_stops_a_fifo_that_no_writer_opened(tmp_path):
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    p = _start([str(fifo), "--out", str(tmp_path / "out")])
    _wait_read(p, _catches_sigterm(p), secs=0.5)  # its reader thread waits for a writer
    summary, _ = _stopped(p, signal.SIGINT)
    assert summary["packets"] == 0


def _frames(path: Path) -> int:
    data = path.read_bytes()
    off, n = 24, 0
    while off < len(data):
        off += 16 + struct.unpack("<I", data[off + 8 : off + 12])[0]
        n += 1
    return n


def _fionread(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def test_sigint_on_an_idle_pipe_writes_everything_read_before(tmp_path):
    """The whole demo through a pipe that then stays open and idle: the reader
    is blocked in read(); SIGINT ends it and every record of the demo is written."""
    ref = demo_summary(tmp_path)
    p = _start(["/dev/stdin", "--out", str(tmp_path / "out")], stdin=subprocess.PIPE)
    assert p.stdin is not None
    p.stdin.write(DEMO.read_bytes())
    p.stdin.flush()
    deadline = time.monotonic() + 30
    while _fionread(p.stdin.fileno()) and time.monotonic() < deadline:  # the child took every byte
        time.sleep(0.05)
    _wait_read(p, lambda: True)
    try:
        summary, _ = _stopped(p, signal.SIGINT)
    finally:
        p.stdin.close()
    assert summary["packets"] == _frames(DEMO)  # a pipe has no capture filter: every frame is read
    assert summary["connections"] == ref["connections"] == whole_lines(tmp_path / "out" / "connections.jsonl")
    assert summary["transfers"] == ref["transfers"] == whole_lines(tmp_path / "out" / "transfers.jsonl")


def test_sigterm_stops_a_file_of_endless_filtered_records(tmp_path):
    """A regular (sparse) file of 64 GiB: a pcap header, then all-zero
    records the capture filter rejects inside libpcap, never reaching Python."""
    f = tmp_path / "sparse.pcap"
    with open(f, "wb") as fh:
        fh.write(PCAP_HEADER)
        fh.truncate(64 << 30)
    p = _start([str(f), "--out", str(tmp_path / "out")])
    _wait_read(p, _has_open(p, f))
    summary, _ = _stopped(p, signal.SIGTERM)
    assert summary["packets"] == 0


# -- nothing decodable ---------------------------------------------------------------------
def _ftp_frames() -> list[tuple[float, bytes, int]]:
    pkts = tcp_session("10.0.0.5", "203.0.113.9", 40000, 21, 1_700_000_000.0, c2s=b"USER a\r\n", s2c=b"220 hi\r\n")
    return [(float(q.time), bytes(q), len(bytes(q))) for q in pkts]


def _pcapng(path: Path, frames: list[tuple[float, bytes, int]], linktype: int, snaplen: int) -> Path:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", linktype, 0, snaplen))
    for t, data, wirelen in frames:
        us = int(round(t * 1e6))
        out += block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(data), wirelen) + data)
    path.write_bytes(out)
    return path


def _replay(path: Path, tmp_path: Path) -> tuple[int, dict, str]:
    p = subprocess.run(
        SENSOR + ["replay", str(path), "--out", str(tmp_path / "out"), "--format", "json"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        timeout=120,
    )
    assert b"Traceback" not in p.stderr
    return p.returncode, json.loads(p.stdout), p.stderr.decode()


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_unknown_link_type_warns_and_exits_5(tmp_path, fmt):
    frames = _ftp_frames()
    path = tmp_path / f"c.{fmt}"
    if fmt == "pcap":
        write_raw_pcap(path, frames, linktype=147)
    else:
        _pcapng(path, frames, 147, 65535)
    rc, summary, err = _replay(path, tmp_path)
    assert rc == 5, err
    assert f"link type 147 (USER0) is not one the sensor decodes: none of its {len(frames)} packet(s)" in err
    assert summary["exit_code"] == 5 and summary["stats"]["decoder"]["unknown_linktype"] == len(frames)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_snaplen_too_small_warns_and_exits_5(tmp_path, fmt):
    frames = [(t, data[:20], n) for t, data, n in _ftp_frames()]
    path = tmp_path / f"c.{fmt}"
    if fmt == "pcap":
        write_raw_pcap(path, frames, linktype=1, snaplen=20)
    else:
        _pcapng(path, frames, 1, 20)
    rc, summary, err = _replay(path, tmp_path)
    assert rc == 5, err
    assert "snaplen 20 leaves no room for headers (link type 1 (EN10MB) needs 42 bytes)" in err
    assert f"none of its {len(frames)} packet(s) decoded" in err
    assert summary["undecodable"] and summary["connections"] == 0


def test_frames_cut_before_headers_under_a_large_snaplen_exit_5(tmp_path):
    """The header promises 65535 bytes, every record holds 30: the capture
    filter rejects them all inside libpcap, and the replay still says why."""
    frames = [(t, data[:30], n) for t, data, n in _ftp_frames()]
    path = write_raw_pcap(tmp_path / "c.pcap", frames, linktype=1, snaplen=65535)
    rc, _, err = _replay(path, tmp_path)
    assert rc == 5, err
    assert f"{len(frames)} of {len(frames)} packets truncated before their headers" in err


def test_no_packet_on_tracked_ports_is_exit_0_and_said(tmp_path):
    pkts = tcp_session("10.0.0.5", "203.0.113.9", 40000, 443, 1_700_000_000.0, c2s=b"x" * 50, s2c=b"y" * 50)
    frames = [(float(q.time), bytes(q), len(bytes(q))) for q in pkts]
    path = write_raw_pcap(tmp_path / "c.pcap", frames)
    rc, summary, err = _replay(path, tmp_path)
    assert rc == 0, err
    assert summary["note"] == f"no packet on tracked ports ({len(frames)} packet(s) read)"
    p = subprocess.run(SENSOR + ["replay", str(path)], cwd=REPO, env=ENV, capture_output=True, timeout=120)
    assert p.returncode == 0 and b"no packet on tracked ports" in p.stdout


def test_decodable_capture_has_no_note(tmp_path):
    path = write_raw_pcap(tmp_path / "c.pcap", _ftp_frames())
    rc, summary, err = _replay(path, tmp_path)
    assert rc == 0 and summary["note"] == "" and not summary["undecodable"], err
    assert summary["connections"] == 1


def test_metrics_show_a_failing_output_and_state_write_errors(tmp_path, monkeypatch):
    from sensor.io import metrics
    from sensor.io.sinks import Outputs
    from sensor.records.encode import Encoder

    monkeypatch.setattr(
        "sensor.io.sinks.os.write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
    )
    sink = AsyncSink(FileWriter(tmp_path), block=False)
    outs = Outputs(Encoder(), [sink])
    outs.emit("connections", {"Timestamp": "t"})
    assert outs.flush(30)
    snap = metrics.collect(pipe_stats={}, capture_stats={}, flows_active=0, outputs=outs.stats(), state_write_errors=3)
    text = metrics.render(snap)
    assert f'xfer_sensor_output_failing{{sink="files:{tmp_path}"}} 1' in text
    assert f'xfer_sensor_output_dropped_total{{sink="files:{tmp_path}",reason="error"}} 1' in text
    assert "xfer_sensor_state_write_errors_total 3" in text
    outs.close()
