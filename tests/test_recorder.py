"""The flight recorder (``run --pcap-dir``): pcapng blocks, the ring's
bounds and rotation, SIGHUP, a failing or slow disk, hostile comments and
files, and the replay that restores the process columns from the comments.
Live, with the real daemon: tests/test_e2e_endpoint.py and
tests/test_recorder_live.py."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.attribution.attributor import Attribution
from sensor.attribution.recording import (
    PREFIX,
    RecordingBook,
    comment_cap,
    comment_for,
    parse_comment,
    recording_book,
)
from sensor.core.config import ConfigError, PcapRing, config_from_dict
from sensor.io import metrics
from sensor.io.pcapng import PcapngError, comment_option, is_recording, packet_block, read_comments, section_header
from sensor.io.ring import USERAPPL, Recorder, RingWriter, flow_of
from tests.support.craft import tcp_session

CLI, SRV = "10.83.9.1", "10.83.9.2"
ATT = Attribution(
    InitiatingProcessFileName="curl",
    InitiatingProcessId=4242,
    InitiatingProcessCommandLine='curl -T "secret q3.7z" ftp://10.83.9.2/',
    InitiatingProcessAccountName="alice",
    InitiatingProcessParentFileName="bash",
    InitiatingProcessParentId=4000,
    InitiatingProcessCreationTime="2026-12-06T07:00:00.000000Z",
    InitiatingProcessFolderPath="/usr/bin/curl",
    InitiatingProcessAccountUid=1001,
    AttributionSource="socket",
)
TSHARK = shutil.which("tshark")


def _ftp(cport: int, t: float) -> list[tuple[int, bytes]]:
    pkts = tcp_session(CLI, SRV, cport, 21, t, c2s=b"USER anonymous\r\n", s2c=b"220 hi\r\n")
    return [(round(float(p.time) * 1e6), bytes(p)) for p in pkts]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".pcapng")


def _record_one(d: Path, cport: int, t: float, att: Attribution | None = ATT) -> tuple[Path, list]:
    """One FTP session recorded alone (no hold), its packets commented with ``att``."""
    w = RingWriter(d, PcapRing(hold_seconds=0.0), clock=Clock())
    pkts = _ftp(cport, t)
    if att is not None:
        w.annotate((6, CLI, cport, SRV, 21), pkts[0][0], comment_for(att, pkts[0][0], 1024))
    for ts, data in pkts:
        w.write(("packets", ts, 1), data)
    w.close()
    (f,) = _files(d)
    return f, pkts


def _tshark_comments(path: Path) -> list[tuple[str, str]]:
    assert TSHARK, "tshark is needed (scripts/deps.sh installs it)"
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "fields", "-e", "tcp.srcport", "-e", "frame.comment"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(ln.split("\t", 1)) for ln in out.splitlines()]  # type: ignore[misc]


# -- the blocks ------------------------------------------------------------------------------
def test_comment_escapes_and_caps_hostile_process_strings():
    att = Attribution(
        InitiatingProcessFileName="evil\x1b[2J\n\u202e",
        InitiatingProcessId=7,
        InitiatingProcessCommandLine="x" * 5000 + "\x00",
        InitiatingProcessAccountName="bob",
        AttributionSource="uid-only",
    )
    c = comment_for(att, 123, 100)
    assert c is not None and c.startswith(PREFIX.encode())
    assert all(32 <= b < 127 for b in c), "ASCII only: every control and non-ASCII character escaped"
    assert len(c) <= comment_cap(100)
    back = parse_comment(c, 100)
    assert back is not None
    a, first = back
    assert first == 123
    assert a.InitiatingProcessFileName == "evil\x1b[2J\n\u202e"
    assert a.InitiatingProcessCommandLine == "x" * 100
    assert a.AttributionSource == "recording"
    assert comment_for(Attribution(AttributionSource="none"), 1, 100) is None


def test_uid_only_names_the_account_alone():
    """A lookup that found the socket's account but not its process (uid-only): the account travels."""
    att = Attribution(InitiatingProcessAccountName="root", InitiatingProcessAccountUid=0, AttributionSource="uid-only")
    c = comment_for(att, 5, 1024)
    assert c is not None
    a, _first = parse_comment(c, 1024) or (None, None)
    assert a is not None and a.InitiatingProcessAccountName == "root" and a.InitiatingProcessFileName == ""
    assert comment_for(Attribution(AttributionSource="uid-only"), 5, 1024) is None  # names nothing


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello",
        b"xfer-sensor/1 ",
        b"xfer-sensor/1 []",
        b"xfer-sensor/1 " + b"[" * 50_000,
        b"xfer-sensor/1 " + b"{" * 5000,
        b'xfer-sensor/1 {"proc":"a"',
        b'xfer-sensor/1 {"proc":""}',
        b'xfer-sensor/1 {"pid":1}',
        b'xfer-sensor/1 {"proc":"a","pid":true}',
        b'xfer-sensor/1 {"proc":"a","pid":-1}',
        b'xfer-sensor/1 {"proc":"a","pid":99999999999999999999999}',
        b'xfer-sensor/1 {"proc":"a","pid":1.5}',
        b'xfer-sensor/1 {"proc":1}',
        b'xfer-sensor/1 {"proc":"a","evil":1}',
        b'xfer-sensor/1 {"proc":"a","src":"recording"}',
        b'xfer-sensor/1 {"proc":"a","first":-5}',
        b'xfer-sensor/1 {"proc":"' + b"a" * 2000 + b'"}',
        'xfer-sensor/1 {"proc":"é"}'.encode(),
        b"\xff\xfe" * 100,
    ],
)
def test_hostile_comments_are_refused(raw):
    assert parse_comment(raw, 1024) is None


def test_block_reader_and_tshark_read_what_the_writer_wrote(tmp_path):
    f, pkts = _record_one(tmp_path, 40001, 100.0)
    assert oct(f.stat().st_mode & 0o777) == "0o640"
    assert is_recording(str(f), USERAPPL)
    with open(f, "rb") as fh:
        got = list(read_comments(fh))
    assert len(got) == len(pkts)
    assert [ts for _lt, ts, _h, _c in got] == [ts for ts, _ in pkts]
    assert {flow_of(lt, h)[2] for lt, _ts, h, _c in got} == {40001, 21}
    assert {c for *_x, c in got} == {comment_for(ATT, pkts[0][0], 1024)}
    rows = _tshark_comments(f)
    assert len(rows) == len(pkts)
    for _port, comment in rows:
        d = json.loads(comment[len(PREFIX) :])
        assert (d["proc"], d["pid"], d["user"], d["parent"], d["ppid"]) == ("curl", 4242, "alice", "bash", 4000)
        assert d["cmd"] == ATT.InitiatingProcessCommandLine


def test_block_reader_reads_a_foreign_writers_comments(tmp_path):
    """editcap (Wireshark's) adds a comment to a frame: the reader reads it;
    editcap keeps the section header (still a recording), and the replay
    refuses a comment that is not the recorder's."""
    editcap = shutil.which("editcap")
    assert editcap, "editcap is needed (wireshark-common, scripts/deps.sh)"
    f, _pkts = _record_one(tmp_path / "r", 40002, 1.0, None)
    out = tmp_path / "edited.pcapng"
    subprocess.run([editcap, "-a", "2:hello world", str(f), str(out)], check=True, capture_output=True)
    with open(out, "rb") as fh:
        got = [(ts, c) for _lt, ts, _h, c in read_comments(fh)]
    assert [c for _t, c in got] == [b"hello world"]
    assert is_recording(str(out), USERAPPL)
    book = RecordingBook(1024)
    assert book.load(str(out)) == "" and (book.comments, book.rejected, len(book)) == (1, 1, 0)


def _valid_file(tmp_path: Path) -> bytes:
    return _record_one(tmp_path / "v", 40003, 5.0)[0].read_bytes()


@pytest.mark.parametrize(
    "mutate,why",
    [
        (lambda b: b[:-3], "cut"),
        (lambda b: b"\x00" * 4 + b[4:], "not pcapng"),
        (lambda b: b[:8] + b"\x00\x00\x00\x00" + b[12:], "byte-order"),
        (lambda b: b[:4] + struct.pack("<I", 1 << 30) + b[8:], "bad block length"),
        (lambda b: b[:4] + struct.pack("<I", 30) + b[8:], "bad block length"),
    ],
)
def test_malformed_files_stop_with_one_clear_error(tmp_path, mutate, why):
    data = mutate(_valid_file(tmp_path))
    with pytest.raises(PcapngError, match=why):
        list(read_comments(io.BytesIO(data)))


def test_block_reader_survives_random_damage_with_bounded_output(tmp_path):
    """Random bytes flipped, cut or grown: only ``PcapngError``, never
    another exception, never a head or comment past its bound."""
    good = _valid_file(tmp_path)
    rng = random.Random(16)
    errors = 0
    for _ in range(3000):
        b = bytearray(good)
        for _k in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        if rng.random() < 0.2:
            b = b[: rng.randrange(len(b))]
        try:
            for _lt, _ts, head, comment in read_comments(io.BytesIO(bytes(b)), head_bytes=64, max_comment_bytes=300):
                assert len(head) <= 64 and len(comment) <= 300
                parse_comment(comment, 1024)
        except PcapngError:
            errors += 1
    assert errors > 0


def test_other_block_types_and_big_endian_sections_are_read(tmp_path):
    """A big-endian section (another writer's byte order) with an unknown block type in it."""

    def be_block(btype: int, body: bytes) -> bytes:
        return struct.pack(">II", btype, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))

    shb = be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = be_block(1, struct.pack(">HHI", 1, 0, 65535))
    frame = _ftp(40004, 2.0)[0][1]
    pad = b"\0" * ((4 - len(frame) % 4) % 4)
    opts = struct.pack(">HH", 1, 5) + b"hello\0\0\0" + struct.pack(">HH", 0, 0)
    epb = be_block(6, struct.pack(">IIIII", 0, 0, 2_000_000, len(frame), len(frame)) + frame + pad + opts)
    unknown = be_block(0x0BAD, b"\1\2\3\4")
    got = list(read_comments(io.BytesIO(shb + idb + unknown + epb)))
    assert [(lt, ts, c) for lt, ts, _h, c in got] == [(1, 2_000_000, b"hello")]
    assert flow_of(1, got[0][2])[2:] == (40004, bytes(map(int, SRV.split("."))), 21)


# -- the ring --------------------------------------------------------------------------------
def _disk(d: Path) -> tuple[int, int]:
    fs = _files(d)
    return sum(f.stat().st_size for f in fs), len(fs)


def test_tiny_ring_never_exceeds_its_bounds_oldest_go_first(tmp_path):
    opts = PcapRing(max_bytes=6000, max_files=3, file_bytes=2500, hold_seconds=0.0)
    w = RingWriter(tmp_path, opts, clock=Clock())
    seen_max = 0
    for i in range(40):
        for ts, data in _ftp(41000 + i, 10.0 + i):
            w.write(("packets", ts, 1), data)
            size, n = _disk(tmp_path)
            assert size <= w.total <= opts.max_bytes and n <= opts.max_files  # buffered counts first
            w.tick()  # the end of a queue batch: written
            size, n = _disk(tmp_path)
            seen_max = max(seen_max, size)
            assert size == w.total <= opts.max_bytes and n <= opts.max_files
    w.close()
    assert w.stats["files_removed"] > 0
    names = [f.name for f in _files(tmp_path)]
    assert names == sorted(names) and names[-1] == f"xfer-sensor-{w.seq:08d}.pcapng"  # the newest kept
    with open(_files(tmp_path)[-1], "rb") as fh:  # and the kept files are whole
        assert list(read_comments(fh)) == []
    assert seen_max > opts.max_bytes // 2


def test_rotation_by_packet_time_and_restart_continues_the_ring(tmp_path):
    opts = PcapRing(file_seconds=60.0, hold_seconds=0.0)
    w = RingWriter(tmp_path, opts, clock=Clock())
    for k in range(3):
        for ts, data in _ftp(42000 + k, 1000.0 + 61 * k):
            w.write(("packets", ts, 1), data)
    w.close()
    assert [f.name for f in _files(tmp_path)] == [f"xfer-sensor-{i:08d}.pcapng" for i in (1, 2, 3)]
    w2 = RingWriter(tmp_path, opts, clock=Clock())  # a restart: the next file, the old ones counted
    assert w2.total == sum(f.stat().st_size for f in _files(tmp_path))
    w2.write(("packets", 5_000_000_000, 1), _ftp(42009, 5000.0)[0][1])
    w2.close()
    assert _files(tmp_path)[-1].name == "xfer-sensor-00000004.pcapng"


def test_hold_gives_the_first_packets_their_process(tmp_path):
    """The lookup arrives after the first packet was queued (as live): the
    packets still held get the comment; with no hold, the first go bare."""
    for hold, bare in ((0.5, 0), (0.0, 1)):
        d = tmp_path / f"h{hold}"
        clock = Clock()
        w = RingWriter(d, PcapRing(hold_seconds=hold), clock=clock)
        pkts = _ftp(43000, 50.0)
        w.write(
            (
                "packets",
                *((pkts[0][0], 1)),
            ),
            pkts[0][1],
        )
        clock.t = 0.01  # the helper answers 10 ms later
        w.annotate((6, CLI, 43000, SRV, 21), pkts[0][0], comment_for(ATT, pkts[0][0], 1024))
        for ts, data in pkts[1:]:
            w.write(("packets", ts, 1), data)
        clock.t = 2.0
        w.tick()
        assert w.stats["packets_written"] == len(pkts)
        w.close()
        rows = _tshark_comments(_files(d)[0])
        assert sum(1 for _p, c in rows if not c) == bare


def test_port_reuse_two_processes_each_get_their_own(tmp_path):
    w = RingWriter(tmp_path, PcapRing(hold_seconds=0.0), clock=Clock())
    a1, a2 = _ftp(44000, 10.0), _ftp(44000, 20.0)
    bob = Attribution(InitiatingProcessFileName="lftp", InitiatingProcessId=9, AttributionSource="socket")
    w.annotate((6, CLI, 44000, SRV, 21), a1[0][0], comment_for(ATT, a1[0][0], 1024))
    w.annotate((6, CLI, 44000, SRV, 21), a2[0][0], comment_for(bob, a2[0][0], 1024))
    for ts, data in a1 + a2:
        w.write(("packets", ts, 1), data)
    w.close()
    procs = [json.loads(c[len(PREFIX) :])["proc"] for _p, c in _tshark_comments(_files(tmp_path)[0])]
    assert procs == ["curl"] * len(a1) + ["lftp"] * len(a2)


def test_sighup_starts_a_new_file(tmp_path):
    rec = Recorder(tmp_path, PcapRing(hold_seconds=0.0))
    seen = []
    handler = rec.wrap(lambda lt: lambda ts, data: seen.append(ts))(1)
    pkts = _ftp(45000, 1.0)
    for ts, data in pkts[:3]:
        handler(ts, data)
    assert rec.sink.flush(10)
    rec.request_reopen()
    assert rec.sink.flush(10)
    for ts, data in pkts[3:]:
        handler(ts, data)
    rec.close()
    files = _files(tmp_path)
    assert len(files) == 2
    assert len(seen) == len(pkts) == rec.stats()["packets_written"]
    assert rec.sink.reopened == 1


def test_slow_disk_drops_recording_never_packets(tmp_path):
    """The writer thread is stuck (a disk that does not answer): capture
    goes on at full speed, the ring's queue overflows, counted."""
    rec = Recorder(tmp_path, PcapRing(hold_seconds=0.0, queue_packets=50))
    seen = []
    handler = rec.wrap(lambda lt: lambda ts, data: seen.append(ts))(1)
    frame = _ftp(46000, 1.0)[2][1]
    with rec.writer.lock:  # the writer blocks at its first packet's comment lookup
        t0 = time.monotonic()
        for i in range(5000):
            handler(i, frame)
        took = time.monotonic() - t0
        st = rec.stats()
    assert len(seen) == 5000, "every packet reached the pipeline"
    assert took < 2.0
    assert st["dropped_overflow"] >= 5000 - 50 - 64
    rec.close()
    st = rec.stats()
    assert st["packets_written"] + st["dropped_overflow"] == 5000
    text = metrics.render(metrics.collect(pipe_stats={}, capture_stats={}, flows_active=0, recording=rec.stats()))
    assert f'xfer_sensor_recording_dropped_total{{reason="overflow"}} {st["dropped_overflow"]}' in text or (
        f'recording_dropped_total{{reason="overflow"}} {st["dropped_overflow"]}' in text
    )


FULL_DISK = r"""
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.test_recorder import _ftp
from sensor.core.config import PcapRing
from sensor.io.ring import RingWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
w = RingWriter(sys.argv[2], PcapRing(hold_seconds=0.0, file_bytes=1 << 20, max_bytes=1 << 21))
for i in range(20):
    for ts, data in _ftp(47000 + i, 1.0 + i):
        w.write(("packets", ts, 1), data)
    w.tick()  # a queue batch: one session
w.close()
print(w.stats["packets_written"], w.stats["dropped_error"], int(w.failing))
"""


def test_full_disk_drops_recording_counted_files_stay_whole(tmp_path):
    """Writes past the file-size limit fail (EFBIG, as ENOSPC would): each
    packet of a failed write is counted, no half block is left, the file is
    closed and the next packet starts a whole new one."""
    cp = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(Path(__file__).resolve().parents[1]), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 0, cp.stderr
    written, dropped, failing = map(int, cp.stdout.split())
    assert written > 0 and dropped > 0 and written + dropped == 20 * len(_ftp(47000, 1.0))
    assert failing == 1
    assert "not recorded" in cp.stderr
    files = _files(tmp_path)
    assert files
    for f in files:
        assert 0 < f.stat().st_size <= 3000
        with open(f, "rb") as fh:
            list(read_comments(fh))  # whole blocks only: no PcapngError
    assert sum(len(_tshark_comments(f)) for f in files) == written


def test_unusable_folder_is_bad_input(tmp_path):
    from sensor.io.ring import RecorderError

    (tmp_path / "file").write_text("x")
    with pytest.raises(RecorderError, match="--pcap-dir"):
        Recorder(tmp_path / "file" / "ring", PcapRing())


def test_config_bounds_are_checked():
    cfg = config_from_dict({"pcap_dir": "/var/lib/xfer-sensor/ring", "pcap_ring": {"max_bytes": 1 << 20}})
    assert cfg.pcap_dir == "/var/lib/xfer-sensor/ring" and cfg.pcap_ring.max_bytes == 1 << 20
    assert cfg.pcap_ring.file_bytes == 1 << 18  # max_bytes alone: four files
    with pytest.raises(ConfigError, match="pcap_ring.file_bytes"):
        config_from_dict({"pcap_ring": {"max_bytes": 1000, "file_bytes": 2000}})
    with pytest.raises(ConfigError, match="pcap_ring.nope"):
        config_from_dict({"pcap_ring": {"nope": 1}})
    with pytest.raises(ConfigError, match="pcap_ring.max_files"):
        config_from_dict({"pcap_ring": {"max_files": 0}})


# -- the replay ------------------------------------------------------------------------------
def _replay(inputs: list[Path], out: Path, config: Path | None = None) -> dict[str, list[dict]]:
    argv = [sys.executable, "-m", "sensor", "replay", *map(str, inputs), "--out", str(out)]
    if config is not None:
        argv += ["--config", str(config)]
    cp = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )
    assert cp.returncode == 0, cp.stderr
    recs = {}
    for kind in ("connections", "alerts"):
        p = out / f"{kind}.jsonl"
        recs[kind] = [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []
    recs["stderr"] = cp.stderr  # type: ignore[assignment]
    return recs


def test_replay_of_a_recording_restores_the_process_columns(tmp_path):
    ring = tmp_path / "ring"
    w = RingWriter(ring, PcapRing(hold_seconds=0.0, file_bytes=3000), clock=Clock())
    bob = Attribution(
        InitiatingProcessFileName="lftp",
        InitiatingProcessId=99,
        InitiatingProcessAccountName="bob",
        AttributionSource="uid-only",
    )
    sessions = []
    for i in range(6):
        pkts = _ftp(48000 + i, 100.0 + i)
        who = ATT if i % 2 == 0 else bob
        if i != 5:  # the last one has no attribution: replayed without one
            w.annotate((6, CLI, 48000 + i, SRV, 21), pkts[0][0], comment_for(who, pkts[0][0], 1024))
        sessions.append((48000 + i, who if i != 5 else None))
        for ts, data in pkts:
            w.write(("packets", ts, 1), data)
    w.close()
    assert len(_files(ring)) > 1  # several files, one replay
    recs = _replay([ring], tmp_path / "out")
    by_port = {c["LocalPort"]: c for c in recs["connections"]}
    assert set(by_port) == {p for p, _ in sessions}
    for port, who in sessions:
        c = by_port[port]
        if who is None:
            assert c["AttributionSource"] == "none" and c["InitiatingProcessFileName"] == ""
            continue
        assert c["AttributionSource"] == "recording"
        assert (c["InitiatingProcessFileName"], c["InitiatingProcessId"], c["InitiatingProcessAccountName"]) == (
            who.InitiatingProcessFileName,
            who.InitiatingProcessId,
            who.InitiatingProcessAccountName,
        )
        assert c["InitiatingProcessCommandLine"] == who.InitiatingProcessCommandLine
        assert c["InitiatingProcessParentId"] == who.InitiatingProcessParentId
        assert c["AccountName"] == who.InitiatingProcessAccountName
    # an ordinary capture keeps the replay's columns as they were (no process columns)
    plain = tmp_path / "plain.pcapng"
    plain.write_bytes(section_header("someone else") + _files(ring)[0].read_bytes()[len(section_header(USERAPPL)) :])
    assert recording_book([str(plain)], 1024) is None
    recs = _replay([plain], tmp_path / "out2")
    assert recs["connections"] and all("AttributionSource" not in c for c in recs["connections"])


def test_replay_of_a_damaged_recording_warns_and_goes_on(tmp_path):
    f, _pkts = _record_one(tmp_path / "ring", 49000, 1.0)
    data = bytearray(f.read_bytes())
    data += packet_block(7, 5_000_000, b"\0" * 60, comment_option(b"x"))  # a packet of an undeclared interface
    f.write_bytes(bytes(data))
    book = RecordingBook(1024)
    assert "undeclared interface" in book.load(str(f))
    assert len(book) == 1  # the comments before the damage are in


def test_a_planted_last_file_number_does_not_escape_the_bound(tmp_path):
    """A file numbered 99,999,999 in the folder: the next is 100,000,000 and
    both count against the bounds (none escapes by its name's length)."""
    planted = tmp_path / "xfer-sensor-99999999.pcapng"
    planted.write_bytes(b"\0" * 3000)
    opts = PcapRing(max_bytes=6000, max_files=3, file_bytes=2500, hold_seconds=0.0)
    w = RingWriter(tmp_path, opts, clock=Clock())
    assert w.total == 3000
    for i in range(10):
        for ts, data in _ftp(50000 + i, 1.0 + i):
            w.write(("packets", ts, 1), data)
        w.tick()
        assert _disk(tmp_path)[0] <= opts.max_bytes
    w.close()
    assert not planted.exists()
    assert (tmp_path / "xfer-sensor-100000000.pcapng").exists() or w.seq > 100_000_000


def test_loopback_both_ends_looked_up_packets_carry_the_clients_process(tmp_path):
    """On lo both ends are the host's: the client's lookup (socket) and the
    server's (its account only, or its own process) are both in. The packets
    carry the one that named a process, else the client's -- as the record."""
    server_acct = Attribution(InitiatingProcessAccountName="root", AttributionSource="uid-only")
    server_proc = Attribution(InitiatingProcessFileName="vsftpd", InitiatingProcessId=1, AttributionSource="socket")
    for server, port in ((server_acct, 51000), (server_proc, 51001)):
        d = tmp_path / str(port)
        w = RingWriter(d, PcapRing(hold_seconds=0.0), clock=Clock())
        pkts = _ftp(port, 1.0)
        first = pkts[0][0]
        w.annotate((6, CLI, port, SRV, 21), first, comment_for(ATT, first, 1024), True)
        w.annotate((6, SRV, 21, CLI, port), first + 300, comment_for(server, first + 300, 1024), server is server_proc)
        for ts, data in pkts:
            w.write(("packets", ts, 1), data)
        w.close()
        procs = {json.loads(c[len(PREFIX) :])["proc"] for _p, c in _tshark_comments(_files(d)[0])}
        assert procs == {"curl"}, (server, procs)


def test_loopback_server_on_a_higher_port_than_its_client_still_gives_the_client(tmp_path):
    """Both ends name a process and the server's port (an ephemeral one, as a test server's) is
    above the client's: the SYN says who opened the connection, and its packets carry that
    process -- the one the record takes -- not the higher port's."""
    server_proc = Attribution(InitiatingProcessFileName="pyftpd", InitiatingProcessId=2, AttributionSource="socket")
    sport, cport = 60123, 40001
    pkts = [
        (round(float(p.time) * 1e6), bytes(p))
        for p in tcp_session(CLI, SRV, cport, sport, 1.0, c2s=b"USER alice\r\n", s2c=b"220 hi\r\n")
    ]
    first = pkts[0][0]
    for order in ("client first", "server first"):
        d = tmp_path / order.replace(" ", "-")
        w = RingWriter(d, PcapRing(hold_seconds=0.0), clock=Clock())
        notes = [
            ((6, CLI, cport, SRV, sport), first, comment_for(ATT, first, 1024)),
            ((6, SRV, sport, CLI, cport), first + 300, comment_for(server_proc, first + 300, 1024)),
        ]
        for key, t, note in notes if order == "client first" else notes[::-1]:
            w.annotate(key, t, note, True)
        for ts, data in pkts:
            w.write(("packets", ts, 1), data)
        w.close()
        procs = [json.loads(c[len(PREFIX) :])["proc"] for _p, c in _tshark_comments(_files(d)[0])]
        assert procs and set(procs) == {"curl"}, (order, procs)


def test_run_with_an_unusable_pcap_dir_is_one_line_exit_2(tmp_path):
    """``run --pcap-dir`` naming a place that cannot be a folder: one line, exit 2, before any capture."""
    (tmp_path / "file").write_text("x")
    argv = [sys.executable, "-m", "sensor.daemon", "-i", "lo", "--mode", "span", "--allow-root"]
    argv += ["--out", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"), "--metrics-listen", "off"]
    argv += ["--pcap-dir", str(tmp_path / "file" / "ring")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert cp.returncode == 2, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfer-sensor: error: --pcap-dir "), cp.stderr
    assert "Traceback" not in cp.stderr
