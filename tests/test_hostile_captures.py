"""Damaged and hostile capture files, through ``xfer-sensor replay`` (a
subprocess, as a user runs it) and through ``sensor.io.capture.read_file``.

What a user is promised (docs/usage.md, "Exit codes"): ``0`` done; ``2`` bad input
(missing, unreadable or non-capture file) with one line on stderr and never a
traceback; ``3`` a capture damaged part-way, with every whole packet before
the damage processed and everything flushed and written.

The number of whole packets before a cut comes from ``tcpdump -n -r FILE``
(an independent reader), never from the sensor itself.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from sensor.core.config import config_from_dict
from sensor.detect.rules import load_rules
from sensor.io.capture import CaptureError, read_file
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.craft import Tcp, relink, tcp_session, write_raw_pcap

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "rules", RECORD_FIELDS)

DEV = "192.168.56.10"
SRV = "203.0.113.10"
T0 = 1_790_000_000.0
CONFIG_YAML = """\
home_net: [192.168.56.0/24, fd00::/8]
ip_type_overrides: {203.0.113.0/24: Public, 2001:db8::/32: Public}
inventory: {192.168.56.10: WS-FIN-07}
"""
CONFIG = {
    "home_net": ["192.168.56.0/24", "fd00::/8"],
    "ip_type_overrides": {"203.0.113.0/24": "Public", "2001:db8::/32": "Public"},
    "inventory": {"192.168.56.10": "WS-FIN-07"},
}
KIND_FILES = ("connections.jsonl", "alerts.jsonl", "transfers.jsonl", "weird.jsonl")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def sensor_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "xfer-sensor"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "sensor"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*sensor_cmd(), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def tcpdump_count(path: Path) -> int:
    """Whole packets an independent reader (tcpdump) gets out of ``path``."""
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    assert Path(tcpdump).exists(), "tcpdump is needed (apt-get install tcpdump; scripts/deps.sh installs it)"
    out = subprocess.run([tcpdump, "-n", "-r", str(path)], capture_output=True, timeout=60)
    return out.stdout.count(b"\n")


def frames_of(pkts) -> list[tuple[float, bytes, int]]:
    out = []
    for p in sorted(pkts, key=lambda p: float(p.time)):
        b = bytes(p)
        out.append((float(p.time), b, len(b)))
    return out


def ftp(i: int, t: float, client: str = DEV, server: str = SRV) -> list:
    return tcp_session(
        client,
        server,
        40000 + i,
        21,
        t,
        c2s=b"USER anonymous\r\nPASS guest@\r\nQUIT\r\n",
        s2c=b"220 ready\r\n331 password\r\n230 ok\r\n221 bye\r\n",
    )


def five_sessions_then_a_sixth(t: float = T0) -> list:
    """Five FTP sessions to one public server (the hunt's threshold is > 3:
    one alert), then a sixth one, same account, ending with a 4 KB command."""
    pkts = []
    for i in range(5):
        pkts += ftp(i, t + 60 * i)
    c = Tcp(DEV, SRV, 40009, 21, t + 600).handshake()
    c.s2c(b"220 ready\r\n").c2s(b"USER anonymous\r\n").s2c(b"331 password\r\n").c2s(b"PASS guest@\r\n")
    c.s2c(b"230 ok\r\n").c2s(b"SITE " + b"X" * 4000 + b"\r\n")
    return pkts + c.fin().pkts


def record_offsets(path: Path) -> list[int]:
    """Byte offset of every record header of a classic little-endian pcap."""
    b = path.read_bytes()
    off, out = 24, []
    while off + 16 <= len(b):
        out.append(off)
        off += 16 + struct.unpack_from("<I", b, off + 8)[0]
    return out


def read_lines(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path.name} does not end with a newline (not flushed?)"
    out = []
    for line in raw.splitlines():
        rec = json.loads(line)
        assert isinstance(rec, dict)
        out.append(rec)
    return out


def out_files(out: Path) -> dict[str, list[dict]]:
    return {k.split(".")[0]: read_lines(out / k) for k in KIND_FILES}


def in_process(path: Path, config: dict | None = None, filters: bool = False):
    sink = MemorySink()
    pipe = Pipeline(config_from_dict(config or CONFIG, "<test>"), RULES, sink)
    res = read_file(path, pipe.handler_for, pipe.capture_filters() if filters else None)
    pipe.finish()
    return res, pipe, sink


def assert_one_error_line(cp: subprocess.CompletedProcess, path: str | Path) -> None:
    assert cp.returncode == 2, (cp.returncode, cp.stderr)
    lines = cp.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("xfer-sensor: error: ") and str(path) in lines[0], lines[0]
    assert "Traceback" not in cp.stderr and "Traceback" not in cp.stdout


@pytest.fixture
def cfg_file(tmp_path) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(CONFIG_YAML)
    return p


# --------------------------------------------------------------------------
# a capture cut part-way
# --------------------------------------------------------------------------


def _cut_capture(tmp_path: Path, where: str) -> tuple[Path, int]:
    """A capture damaged part-way; returns (path, whole records before the damage)."""
    full = write_raw_pcap(tmp_path / "full.pcap", frames_of(five_sessions_then_a_sixth()))
    offs = record_offsets(full)
    data = full.read_bytes()
    k = len(offs) - 6  # a record of the sixth session's upload
    if where == "record-data":
        cut = data[: offs[k] + 16 + 37]
    elif where == "record-header":
        cut = data[: offs[k] + 7]
    elif where == "bad-record-length":  # damage in the middle: a record header claiming 4 GB
        b = bytearray(data)
        struct.pack_into("<II", b, offs[k] + 8, 0xFFFFFF00, 0xFFFFFF00)
        cut = bytes(b)
    else:
        raise ValueError(where)
    p = tmp_path / f"cut-{where}.pcap"
    p.write_bytes(cut)
    return p, k


@pytest.mark.parametrize("where", ["record-data", "record-header", "bad-record-length"])
def test_cut_capture_cli_processes_every_whole_packet_and_flushes(tmp_path, cfg_file, where):
    path, whole = _cut_capture(tmp_path, where)
    assert tcpdump_count(path) == whole  # the independent reader agrees on the damage point
    out = tmp_path / "out"
    cp = run_cli("replay", str(path), "--config", str(cfg_file), "--out", str(out), "--format", "json")
    assert cp.returncode == 3, (cp.returncode, cp.stderr)
    assert "Traceback" not in cp.stderr
    warn = cp.stderr.splitlines()
    assert len(warn) == 1, warn
    assert warn[0].startswith("xfer-sensor: warning: ") and str(path) in warn[0] and "damaged" in warn[0], warn[0]
    summary = json.loads(cp.stdout)
    # every packet here is FTP on port 21, so the capture filter passes them all
    assert summary["packets"] == whole
    files = out_files(out)
    conns = files["connections"]
    # five whole sessions and the sixth, cut short, flushed at the end
    assert len(conns) == 6
    assert sorted(c["LocalPort"] for c in conns) == [40000, 40001, 40002, 40003, 40004, 40009]
    assert all(c["ActionType"] == "ConnectionSuccess" and c["RemoteIP"] == SRV for c in conns)
    assert len(files["alerts"]) == 1
    a = files["alerts"][0]
    assert a["ConnectionCount"] == 4 and a["RemoteIP"] == SRV and a["DeviceName"] == "WS-FIN-07"
    assert summary["alerts"][0]["ConnectionCount"] == 6  # the hunt's view: all six joined the alert


@pytest.mark.parametrize("where", ["record-data", "record-header", "bad-record-length"])
def test_cut_capture_read_file_delivers_the_whole_packets(tmp_path, where):
    path, whole = _cut_capture(tmp_path, where)
    res, pipe, sink = in_process(path)
    assert res.error  # the damage is reported ...
    assert res.packets == whole == tcpdump_count(path)  # ... after every whole packet
    assert pipe.decode_stats.packets == whole
    assert len(sink.records["connections"]) == 6
    assert pipe.flows.flows == {}


def test_cut_capture_warning_names_the_byte_offset(tmp_path, cfg_file):
    path, whole = _cut_capture(tmp_path, "record-data")
    damaged_at = record_offsets(path)[whole]  # where the first incomplete record starts
    cp = run_cli("replay", str(path), "--config", str(cfg_file))
    assert cp.returncode == 3
    warn = cp.stderr.strip()
    assert str(damaged_at) in warn or f"{damaged_at:,}" in warn or str(path.stat().st_size) in warn, warn


def test_cut_pcapng_mid_block(tmp_path, cfg_file):
    from fuzz.mutate import write_pcapng

    frames = frames_of(five_sessions_then_a_sixth())
    full = write_pcapng(tmp_path / "full.pcapng", 1, [(int(round(t * 1e6)), b) for t, b, _ in frames])
    data = full.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) - 300])  # inside the last blocks
    whole = tcpdump_count(cut)
    assert 0 < whole < len(frames)
    out = tmp_path / "out"
    cp = run_cli("replay", str(cut), "--config", str(cfg_file), "--out", str(out), "--format", "json")
    assert cp.returncode == 3, cp.stderr
    assert len(cp.stderr.splitlines()) == 1 and "Traceback" not in cp.stderr
    assert json.loads(cp.stdout)["packets"] == whole
    assert len(out_files(out)["alerts"]) == 1


def test_file_header_only_is_an_empty_capture(tmp_path, cfg_file):
    full = write_raw_pcap(tmp_path / "full.pcap", frames_of(ftp(0, T0)))
    p = tmp_path / "header-only.pcap"
    p.write_bytes(full.read_bytes()[:24])
    assert tcpdump_count(p) == 0
    out = tmp_path / "out"
    cp = run_cli("replay", str(p), "--config", str(cfg_file), "--out", str(out), "--format", "json")
    assert cp.returncode == 0, cp.stderr
    assert cp.stderr == ""
    assert json.loads(cp.stdout)["packets"] == 0
    assert all(v == [] for v in out_files(out).values())


# --------------------------------------------------------------------------
# not a capture at all: exit 2, one line, no traceback
# --------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    full = write_raw_pcap(tmp / "full.pcap", frames_of(ftp(0, T0)))
    cases = {}
    (tmp / "empty.pcap").write_bytes(b"")
    cases["empty"] = tmp / "empty.pcap"
    (tmp / "notes.txt").write_text("this is not a capture\nUSER root\r\n" * 50)
    cases["text"] = tmp / "notes.txt"
    (tmp / "random.bin").write_bytes(bytes((i * 131 + 7) % 251 for i in range(4096)))
    cases["random-bytes"] = tmp / "random.bin"
    (tmp / "header-cut.pcap").write_bytes(full.read_bytes()[:10])
    cases["file-header-cut"] = tmp / "header-cut.pcap"
    (tmp / "adir.pcap").mkdir()
    cases["directory"] = tmp / "adir.pcap"
    cases["missing"] = tmp / "does-not-exist.pcap"
    (tmp / "ng-header-cut.pcapng").write_bytes(struct.pack("<II", 0x0A0D0D0A, 28) + b"\x4d\x3c")
    cases["pcapng-header-cut"] = tmp / "ng-header-cut.pcapng"
    return cases


BAD = ["empty", "text", "random-bytes", "file-header-cut", "directory", "missing", "pcapng-header-cut"]


@pytest.mark.parametrize("case", BAD)
def test_not_a_capture_exits_2_with_one_line(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    cp = run_cli("replay", str(path), "--out", str(out))
    assert_one_error_line(cp, path)
    assert cp.stdout == ""


@pytest.mark.parametrize("case", BAD)
def test_not_a_capture_read_file_raises_capture_error(tmp_path, case):
    path = _bad_inputs(tmp_path)[case]
    sink = MemorySink()
    pipe = Pipeline(config_from_dict({}), RULES, sink)
    with pytest.raises(CaptureError) as ei:
        read_file(path, pipe.handler_for)
    assert str(path) in str(ei.value) and "\n" not in str(ei.value)


def test_bad_file_after_a_good_one_exits_2_and_flushes_what_was_read(tmp_path):
    bad = _bad_inputs(tmp_path)["text"]
    good = write_raw_pcap(tmp_path / "good.pcap", frames_of(ftp(0, T0)))
    out = tmp_path / "out"
    cp = run_cli("replay", str(good), str(bad), "--out", str(out))
    assert_one_error_line(cp, bad)
    assert len(out_files(out)["connections"]) == 1


# -- unreadable files ------------------------------------------------------------
# We run as root, and root reads a chmod 000 file: the sensor then simply reads it.
# "Unreadable" is shown by dropping to nobody (uid 65534) inside the CLI's own
# process after its imports (the interpreter lives under /root, which nobody
# cannot read), with a positive control that the same harness reads a
# readable file.

_AS_NOBODY = """
import os, sys, shutil, locale, gettext
from sensor.cli.main import build_parser, main
build_parser().format_help()
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def shared_dir():
    d = Path(tempfile.mkdtemp(prefix="xfer-hostile-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_unreadable_file(shared_dir):
    path = write_raw_pcap(shared_dir / "secret.pcap", frames_of(ftp(0, T0)))
    if os.geteuid() == 0:
        path.chmod(0o644)
        ok = _as_nobody("replay", str(path))  # control: the harness reads a readable file
        assert ok.returncode == 0, ok.stderr
        path.chmod(0o000)
        as_root = run_cli("replay", str(path))  # what root can do: read it anyway, and the sensor does
        assert as_root.returncode == 0, as_root.stderr
        cp = _as_nobody("replay", str(path))
    else:
        path.chmod(0o000)
        cp = run_cli("replay", str(path))
    assert_one_error_line(cp, path)
    assert "permission denied" in cp.stderr


def _fifo_writer(path: Path, payload: bytes) -> threading.Thread:
    def w():
        with open(path, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=w, daemon=True)
    t.start()
    return t


def test_fifo_with_a_capture_is_read(tmp_path):
    good = write_raw_pcap(tmp_path / "good.pcap", frames_of(ftp(0, T0)))
    fifo = tmp_path / "stream.pcap"
    os.mkfifo(fifo)
    t = _fifo_writer(fifo, good.read_bytes())
    cp = run_cli("replay", str(fifo), "--format", "json", timeout=60)
    t.join(5)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["packets"] == tcpdump_count(good)


def test_fifo_with_text_exits_2(tmp_path):
    fifo = tmp_path / "stream.pcap"
    os.mkfifo(fifo)
    t = _fifo_writer(fifo, b"hello, not a capture\n" * 10)
    cp = run_cli("replay", str(fifo), timeout=60)
    t.join(5)
    assert_one_error_line(cp, fifo)


def test_fifo_with_text_is_not_called_empty(tmp_path):
    fifo = tmp_path / "stream.pcap"
    os.mkfifo(fifo)
    t = _fifo_writer(fifo, b"hello, not a capture\n" * 10)
    cp = run_cli("replay", str(fifo), timeout=60)
    t.join(5)
    assert cp.returncode == 2
    assert "empty file" not in cp.stderr, cp.stderr


# --------------------------------------------------------------------------
# snaplen: packets cut by the capture, not by damage
# --------------------------------------------------------------------------


def _snap(frames, snaplen: int) -> list[tuple[float, bytes, int]]:
    return [(t, b[:snaplen], wl) for t, b, wl in frames]


def _by_port(conns: list[dict]) -> dict[int, dict]:
    return {c["LocalPort"]: c for c in conns}


COUNTED = (
    "ActionType",
    "SentBytes",
    "ReceivedBytes",
    "SentPackets",
    "ReceivedPackets",
    "ConnState",
    "FirstSeen",
    "LastSeen",
    "Uid",
    "RemoteIP",
    "RemotePort",
)


def _snap_sessions(v6: bool = False):
    c, s = ("fd00::5", "2001:db8::10") if v6 else (DEV, SRV)
    pkts = tcp_session(
        c, s, 41000, 21, T0, c2s=b"USER anonymous\r\nSTOR x\r\n" + b"A" * 3000, s2c=b"220 ready\r\n" + b"B" * 5000
    )
    big = Tcp(c, s, 41001, 445, T0 + 10, isn_c=0xFFFFF000, isn_s=0x7FFFFF00)  # both directions wrap / cross 2^31
    big.handshake().c2s(bytes(range(256)) * 80).s2c(b"\xfeSMB" * 3000)
    big.retransmit_last(True, (bytes(range(256)) * 80)[-1400:])
    pkts += big.fin().pkts
    pkts += tcp_session(c, s, 41002, 990, T0 + 20, c2s=b"\x16\x03\x01" + b"C" * 700)
    return frames_of(pkts)


@pytest.mark.parametrize("snaplen", [54, 68, 96])
def test_snaplen_cut_packets_keep_byte_counts(tmp_path, snaplen):
    frames = _snap_sessions()
    full = write_raw_pcap(tmp_path / "full.pcap", frames)
    cut = write_raw_pcap(tmp_path / f"snap{snaplen}.pcap", _snap(frames, snaplen), snaplen=snaplen)
    _, _, ref = in_process(full)
    res, pipe, sink = in_process(cut)
    assert not res.error and res.packets == len(frames) == tcpdump_count(cut)
    want = _by_port(ref.records["connections"])
    got = _by_port(sink.records["connections"])
    assert set(got) == set(want) == {41000, 41001, 41002}
    for port in want:
        for f in COUNTED:
            assert got[port][f] == want[port][f], (port, f, got[port][f], want[port][f])
    assert got[41001]["SentBytes"] == 256 * 80 and got[41001]["ReceivedBytes"] == 4 * 3000
    n_cut = sum(1 for _, b, _ in frames if len(b) > snaplen)
    assert n_cut > 0
    assert pipe.decode_stats.truncated == n_cut


def test_snaplen_cut_real_capture_keeps_byte_counts(tmp_path):
    """A real capture (TCP timestamp options: 32-byte TCP headers) cut at 54 bytes:
    the fixed TCP header is whole, options and payload are not."""
    from fuzz.mutate import read_capture

    lt, frames = read_capture(REPO / "pcaps/real/smb445.pcap")
    assert lt == 1
    fr = [(ts / 1e6, b, len(b)) for ts, b in frames]
    cfg = {"home_net": ["10.77.0.0/16"]}  # both hosts are the capturing side (offloaded checksums)
    _, _, ref = in_process(write_raw_pcap(tmp_path / "full.pcap", fr), cfg)
    res, pipe, sink = in_process(write_raw_pcap(tmp_path / "s54.pcap", _snap(fr, 54), snaplen=54), cfg)
    assert not res.error

    def tracked(recs):
        return {c["Uid"]: c for c in recs if c["RemotePort"] in (445, 139)}

    want, got = tracked(ref.records["connections"]), tracked(sink.records["connections"])
    assert want and set(got) == set(want)
    for uid in want:
        for f in ("SentBytes", "ReceivedBytes", "SentPackets", "ReceivedPackets", "ConnState"):
            assert got[uid][f] == want[uid][f], (f, got[uid][f], want[uid][f])
    assert pipe.decode_stats.truncated == sum(1 for _, b, _ in fr if len(b) > 54)


def test_snaplen_below_the_transport_header_is_counted_not_recorded(tmp_path):
    frames = _snap_sessions()
    cut = write_raw_pcap(tmp_path / "snap30.pcap", _snap(frames, 30), snaplen=30)
    res, pipe, sink = in_process(cut)
    assert res.packets == len(frames)
    assert pipe.decode_stats.truncated == len(frames)
    assert sink.records["connections"] == []
    assert {w["Name"] for w in sink.records["weird"]} == {"ipv4_truncated"}


def test_snaplen_68_ipv6_keeps_byte_counts(tmp_path):
    frames = _snap_sessions(v6=True)
    full = write_raw_pcap(tmp_path / "full.pcap", frames)
    cut = write_raw_pcap(tmp_path / "snap68.pcap", _snap(frames, 68), snaplen=68)
    _, _, ref = in_process(full)
    _, pipe, sink = in_process(cut)
    want, got = _by_port(ref.records["connections"]), _by_port(sink.records["connections"])
    assert set(want) == {41000, 41001, 41002}
    assert set(got) == set(want)
    for port in want:
        for f in COUNTED:
            assert got[port][f] == want[port][f], (port, f)


# --------------------------------------------------------------------------
# timestamps
# --------------------------------------------------------------------------


def _backwards(frames):
    """Every 7th packet stamped an hour early, the last 12 packets (the sixth
    session's login and command) a day early (a clock reset), one packet at the epoch."""
    out = []
    n = len(frames)
    for i, (t, b, wl) in enumerate(frames):
        if i % 7 == 3:
            t -= 3600
        if i >= n - 12:
            t -= 86400
        if i == n // 2:
            t = 0.0
        out.append((t, b, wl))
    return out


def test_backwards_timestamps_sane_and_deterministic(tmp_path, cfg_file):
    frames = frames_of(five_sessions_then_a_sixth())
    ordered = write_raw_pcap(tmp_path / "ordered.pcap", frames)
    back = write_raw_pcap(tmp_path / "backwards.pcap", _backwards(frames))
    assert tcpdump_count(back) == len(frames)
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        cp = run_cli("replay", str(back), "--config", str(cfg_file), "--out", str(out))
        assert cp.returncode == 0, cp.stderr
        assert "Traceback" not in cp.stderr
        outs.append({k2: (out / k2).read_bytes() for k2 in KIND_FILES})
    assert outs[0] == outs[1], "same capture, different output"
    conns = [json.loads(x) for x in outs[0]["connections.jsonl"].splitlines()]
    _, _, ref = in_process(ordered)
    want = _by_port(ref.records["connections"])
    got = _by_port(conns)
    assert set(got) == set(want)
    for port, c in got.items():
        assert c["FirstSeen"] <= c["LastSeen"], c
        for f in ("SentBytes", "ReceivedBytes", "SentPackets", "ReceivedPackets", "ConnState", "ActionType"):
            assert c[f] == want[port][f], (port, f, c[f], want[port][f])
    _, pipe, _ = in_process(back)
    assert pipe.flows.now == int(round(max(t for t, _, _ in _backwards(frames)) * 1e6))  # packet time never went back
    alerts = [json.loads(x) for x in outs[0]["alerts.jsonl"].splitlines()]
    assert [a["ConnectionCount"] for a in alerts] == [4]


def test_same_capture_twice_gives_identical_files(tmp_path):
    cfg = REPO / "pcaps/demo.yaml"
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        cp = run_cli("replay", str(REPO / "pcaps/demo.pcap"), "--config", str(cfg), "--out", str(out))
        assert cp.returncode == 0, cp.stderr
        outs.append({f: (out / f).read_bytes() for f in KIND_FILES})
    assert outs[0] == outs[1]
    assert outs[0]["connections.jsonl"] and outs[0]["alerts.jsonl"]


# -- pcapng: several interfaces, link types, 64-bit timestamps -----------------------


def _blk(btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


SHB = _blk(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def _idb(linktype: int) -> bytes:
    return _blk(1, struct.pack("<HHI", linktype, 0, 262144))


def _epb(iface: int, ts_us: int, data: bytes) -> bytes:
    return _blk(6, struct.pack("<IIIII", iface, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), len(data)) + data)


def _two_interfaces(tmp_path: Path, second_linktype: int) -> Path:
    """Interface 0: Ethernet; interface 1: raw IP (101) or Ethernet. One FTP
    session on each, interleaved in time."""
    a = ftp(0, T0)
    b = ftp(1, T0 + 0.0005, server="203.0.113.11")
    if second_linktype == 101:
        b, _ = relink(b, "raw")
    ev = sorted([(float(p.time), 0, bytes(p)) for p in a] + [(float(p.time), 1, bytes(p)) for p in b])
    body = SHB + _idb(1) + _idb(second_linktype) + b"".join(_epb(i, int(round(t * 1e6)), d) for t, i, d in ev)
    p = tmp_path / f"two-ifaces-{second_linktype}.pcapng"
    p.write_bytes(body)
    return p


def test_pcapng_two_ethernet_interfaces(tmp_path, cfg_file):
    p = _two_interfaces(tmp_path, 1)
    out = tmp_path / "out"
    cp = run_cli("replay", str(p), "--config", str(cfg_file), "--out", str(out), "--format", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["packets"] == tcpdump_count(p) == 2 * len(ftp(0, T0))
    conns = out_files(out)["connections"]
    assert sorted(c["RemoteIP"] for c in conns) == ["203.0.113.10", "203.0.113.11"]


def test_pcapng_two_link_types_never_a_traceback(tmp_path, cfg_file):
    p = _two_interfaces(tmp_path, 101)
    cp = run_cli("replay", str(p), "--config", str(cfg_file), "--out", str(tmp_path / "out"))
    assert cp.returncode in (0, 3), cp.stderr
    assert "Traceback" not in cp.stderr and len(cp.stderr.splitlines()) <= 1


def test_pcapng_two_link_types_all_packets_decoded(tmp_path, cfg_file):
    p = _two_interfaces(tmp_path, 101)
    out = tmp_path / "out"
    cp = run_cli("replay", str(p), "--config", str(cfg_file), "--out", str(out), "--format", "json")
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["packets"] == 2 * len(ftp(0, T0))
    conns = out_files(out)["connections"]
    assert sorted(c["RemoteIP"] for c in conns) == ["203.0.113.10", "203.0.113.11"]


def test_pcapng_timestamp_beyond_year_9999(tmp_path, cfg_file):
    """One packet stamped 2^62 us (year 148108; pcapng timestamps are 64-bit):
    no traceback, nothing damaged, and the session's bytes are all counted
    (the jump ends the open flow by timeout, so the session may be split)."""
    pkts = ftp(0, T0)
    body = SHB + _idb(1)
    for i, p in enumerate(pkts):
        us = int(round(float(p.time) * 1e6)) + ((1 << 62) if i == 3 else 0)
        body += _epb(0, us, bytes(p))
    path = tmp_path / "far-future.pcapng"
    path.write_bytes(body)
    out = tmp_path / "out"
    cp = run_cli("replay", str(path), "--config", str(cfg_file), "--out", str(out))
    assert "Traceback" not in cp.stderr, cp.stderr[-2000:]
    assert cp.returncode == 0, cp.stderr
    conns = out_files(out)["connections"]
    assert conns and all(c["RemoteIP"] == SRV and c["LocalPort"] == 40000 for c in conns)
    assert sum(c["SentBytes"] for c in conns) == len(b"USER anonymous\r\nPASS guest@\r\nQUIT\r\n")
    assert sum(c["ReceivedBytes"] for c in conns) == len(b"220 ready\r\n331 password\r\n230 ok\r\n221 bye\r\n")
    for c in conns:
        assert c["FirstSeen"] <= c["LastSeen"] <= "9999-12-31T23:59:59.999999Z"


def test_pcapng_odd_blocks(tmp_path, cfg_file):
    """Unknown block types are skipped; an EPB naming an interface that does not
    exist is damage (exit 3) after the packets before it."""
    pkts = ftp(0, T0)
    epbs = [_epb(0, int(round(float(p.time) * 1e6)), bytes(p)) for p in pkts]
    unknown = tmp_path / "unknown-block.pcapng"
    unknown.write_bytes(SHB + _idb(1) + _blk(0x0BAD0001, b"zzzz") + b"".join(epbs))
    cp = run_cli("replay", str(unknown), "--config", str(cfg_file), "--format", "json")
    assert cp.returncode == 0 and json.loads(cp.stdout)["packets"] == len(pkts), cp.stderr
    bad_iface = tmp_path / "bad-iface.pcapng"
    p3 = bytes(pkts[3])
    bad_iface.write_bytes(SHB + _idb(1) + b"".join(epbs[:3]) + _epb(5, int(T0 * 1e6), p3) + b"".join(epbs[4:]))
    cp = run_cli("replay", str(bad_iface), "--config", str(cfg_file), "--format", "json")
    assert cp.returncode == 3 and json.loads(cp.stdout)["packets"] == 3 == tcpdump_count(bad_iface), cp.stderr
    assert len(cp.stderr.splitlines()) == 1 and "Traceback" not in cp.stderr
