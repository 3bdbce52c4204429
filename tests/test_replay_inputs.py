"""Issue #15, inputs as analysts expect: ``replay -r FILE``, ``-`` for stdin,
folders of captures, ``--filter BPF`` and ``--since/--until``, through the
real command line on committed captures. Each form is compared with an
independent path to the same packets: the positional file, the file itself,
the folder's files listed in the order scapy reads their first packets in,
a capture pre-filtered or pre-cut by scapy. Bad values are one line, exit 2,
before any packet is read."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

from sensor.io.inputs import InputError, resolve
from sensor.records.encode import KINDS
from tests.support.craft import tcp_session, write_pcap

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "pcaps" / "demo.pcap"
DEMO_CFG = REPO / "pcaps" / "demo.yaml"
REAL = REPO / "pcaps" / "real"
SENSOR = [sys.executable, "-m", "sensor"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# the demo's config, and the lab's hosts (pcaps/real) as the capturing side: their checksums were offloaded
CFG_TEXT = DEMO_CFG.read_text() + "checksum_offload_nets: [10.77.0.0/16]\n"


def config(tmp_path: Path) -> str:
    cfg = tmp_path / "config.yaml"
    if not cfg.exists():
        cfg.write_text(CFG_TEXT)
    return str(cfg)


def replay(tmp_path: Path, args: list[str], name: str, stdin=None, cmd: str = "replay") -> dict:
    """``xfer-sensor replay ARGS`` with the demo config (and the lab's hosts
    as the capturing side); the records it wrote (kind -> text of the
    file) and the JSON summary."""
    out = tmp_path / name
    p = subprocess.run(
        SENSOR + [cmd] + args + ["--config", config(tmp_path), "--out", str(out), "--format", "json"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        stdin=stdin,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    assert b"Traceback" not in p.stderr
    res = {k: (out / f"{k}.jsonl").read_text() for k in KINDS}
    res["summary"] = json.loads(p.stdout)
    res["stderr"] = p.stderr.decode()
    return res


def same_records(a: dict, b: dict) -> None:
    for k in KINDS:
        assert a[k] == b[k], k


def raw_packets(path: Path):
    """(sec, usec, frame) of every record, read by scapy, not libpcap."""
    for data, meta in RawPcapReader(str(path)):
        yield meta.sec, meta.usec, data


def write_subset(src: Path, dst: Path, keep: Callable[[int, bytes], bool]) -> int:
    """A classic pcap of the records of ``src`` that ``keep(ts_us, frame)``
    admits, timestamps exact; returns how many."""
    r = RawPcapReader(str(src))
    linktype = r.linktype
    r.close()
    n = 0
    with open(dst, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        for sec, usec, data in raw_packets(src):
            if keep(sec * 1_000_000 + usec, data):
                f.write(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
                n += 1
    return n


def first_time(path: Path) -> int:
    sec, usec, _ = next(raw_packets(path))
    return sec * 1_000_000 + usec


# -- -r ---------------------------------------------------------------------


def test_read_option_equals_the_positional_argument(tmp_path):
    a = replay(tmp_path, [str(DEMO)], "pos")
    b = replay(tmp_path, ["-r", str(DEMO)], "r")
    c = replay(tmp_path, [f"--read={DEMO}"], "read")
    assert a["summary"]["alerts"] and a["connections"]
    same_records(a, b)
    same_records(a, c)


def test_read_options_and_positionals_keep_their_command_line_order(tmp_path):
    x, y, z = REAL / "ftp_lossy.pcap", REAL / "smb445.pcap", DEMO
    ref = replay(tmp_path, [str(x), str(y), str(z)], "ref")
    mixed = replay(tmp_path, ["-r", str(x), str(y), "--progress", "never", f"-r{z}"], "mixed")
    same_records(ref, mixed)
    # the order matters (the clock goes back between captures): another order gives other records
    other = replay(tmp_path, [str(z), "-r", str(y), str(x)], "other")
    assert other["connections"] != ref["connections"]


# -- stdin ------------------------------------------------------------------


def test_dash_reads_stdin_redirected_from_a_file(tmp_path):
    ref = replay(tmp_path, [str(DEMO)], "ref")
    with open(DEMO, "rb") as f:
        got = replay(tmp_path, ["-"], "stdin", stdin=f)
    same_records(ref, got)


def test_dash_reads_stdin_from_a_pipe(tmp_path):
    ref = replay(tmp_path, [str(REAL / "smb445.pcap")], "ref")
    cat = subprocess.Popen(["cat", str(REAL / "smb445.pcap")], stdout=subprocess.PIPE)
    try:
        got = replay(tmp_path, ["-r", "-"], "pipe", stdin=cat.stdout)
    finally:
        cat.stdout.close()
        cat.wait()
    same_records(ref, got)
    assert got["summary"]["connections"] > 0


# -- folders ------------------------------------------------------------------


def test_folder_is_its_captures_in_first_packet_order(tmp_path):
    d = tmp_path / "rotated"
    d.mkdir()
    picks = ["tftp.pcap", "ftp_lossy.pcap", "smb445.pcap", "ftp_active_local.pcap"]
    # names in reverse time order, so that name order is not time order
    by_time = sorted(picks, key=lambda n: first_time(REAL / n))
    for i, n in enumerate(reversed(by_time)):
        shutil.copy(REAL / n, d / f"cap{i}")
    shutil.copy(DEMO, d / "zz-demo.pcap")  # the earliest of all, named last
    (d / "README.txt").write_text("rotated captures of sensor 7\n")
    (d / "sub").mkdir()
    shutil.copy(REAL / "smb139.pcap", d / "sub" / "x.pcap")  # not recursive: not read
    files = sorted(d.iterdir(), key=lambda p: (first_time(p), p.name) if p.is_file() and p.suffix != ".txt" else (0,))
    ordered = [str(p) for p in files if p.is_file() and p.name != "README.txt"]
    assert Path(ordered[0]).name == "zz-demo.pcap"
    ref = replay(tmp_path, ordered, "ref")
    got = replay(tmp_path, [str(d)], "folder")
    same_records(ref, got)
    assert got["summary"]["packets"] == ref["summary"]["packets"] > 0
    notes = [line for line in got["stderr"].splitlines() if "note" in line]
    assert notes == [f"xfer-sensor: note: {d}: skipped 2 file(s) that are not captures: README.txt, sub/"]


def test_resolve_orders_ties_by_name_and_empty_captures_first(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    pkts = tcp_session("10.0.0.1", "203.0.113.5", 40000, 21, 1000.0, c2s=b"USER x\r\n", s2c=b"220 hi\r\n")
    write_pcap(d / "b.pcap", pkts)
    write_pcap(d / "a.pcap", pkts)
    write_pcap(d / "c.pcap", [p for p in pkts if p[TCP].dport == 21])  # later first packet? same start
    write_pcap(d / "0-late.pcap", [p.copy() for p in pkts[1:]])
    write_pcap(d / "z-empty.pcap", [])
    got = [Path(p).name for p in resolve([str(d)]).paths]
    assert got == ["z-empty.pcap", "a.pcap", "b.pcap", "c.pcap", "0-late.pcap"]


# -- --filter -------------------------------------------------------------------


def _untagged_ipv4(data: bytes) -> IP | None:
    e = Ether(data)
    return e[IP] if e.type == 0x0800 and IP in e else None


@pytest.mark.parametrize(
    "capture,expr,keep",
    [
        (DEMO, "host 203.0.113.10", lambda ip: "203.0.113.10" in (ip.src, ip.dst)),
        (
            REAL / "ftp_active_local.pcap",
            "not port 20",
            lambda ip: not (TCP in ip and 20 in (ip[TCP].sport, ip[TCP].dport)),
        ),
    ],
)
def test_filter_equals_the_capture_prefiltered_by_scapy(tmp_path, capture, expr, keep):
    pre = tmp_path / "pre.pcap"

    def admit(ts: int, data: bytes) -> bool:
        ip = _untagged_ipv4(data)
        return ip is not None and keep(ip)

    n = write_subset(capture, pre, admit)
    full = replay(tmp_path, [str(capture)], "full")
    ref = replay(tmp_path, [str(pre)], "ref")
    got = replay(tmp_path, [str(capture), "--filter", expr], "filtered")
    same_records(ref, got)
    assert 0 < got["summary"]["connections"] < full["summary"]["connections"]
    assert got["summary"]["stats"]["decoder"]["packets"] <= n


def test_filter_on_stdin_equals_the_file_filtered(tmp_path):
    ref = replay(tmp_path, [str(DEMO), "--filter", "host 198.51.100.20"], "ref")
    with open(DEMO, "rb") as f:
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
        try:
            got = replay(tmp_path, ["-", "--filter", "host 198.51.100.20"], "pipe", stdin=cat.stdout)
        finally:
            cat.stdout.close()
            cat.wait()
    same_records(ref, got)
    assert got["summary"]["alerts"]


def test_filter_that_matches_nothing_is_said(tmp_path):
    got = replay(tmp_path, [str(DEMO), "--filter", "host 192.0.2.99"], "none")
    assert got["summary"]["connections"] == 0 and got["summary"]["exit_code"] == 0
    assert got["summary"]["note"] == "no packet matched --filter 'host 192.0.2.99'"


# -- --since / --until ------------------------------------------------------------


def _us(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000


@pytest.mark.parametrize(
    "since,until",
    [
        ("2026-11-27T01:30:00", "2026-11-27T02:30:00Z"),  # no zone: UTC
        ("2026-11-27T03:30:00+02:00", "2026-11-27T02:30:00+00:00"),
        ("2026-11-27T02:00:00.000000", None),
        (None, "2026-11-27T02:00:00"),
    ],
)
def test_time_range_equals_the_capture_cut_by_scapy(tmp_path, since, until):
    lo = _us(since[:19]) - (2 * 3600 * 1_000_000 if since and "+02:00" in since else 0) if since else None
    hi = _us(until[:19]) if until else None
    cut = tmp_path / "cut.pcap"
    n = write_subset(DEMO, cut, lambda ts, data: (lo is None or ts >= lo) and (hi is None or ts < hi))
    args = [str(DEMO)]
    args += ["--since", since] if since else []
    args += ["--until", until] if until else []
    ref = replay(tmp_path, [str(cut)], "ref")
    got = replay(tmp_path, args, "range")
    same_records(ref, got)
    assert 0 < got["summary"]["connections"] and n > 0
    # packets outside the range are not seen at all: not counted, not decoded
    assert got["summary"]["packets"] == ref["summary"]["packets"]
    assert got["summary"]["stats"]["decoder"] == ref["summary"]["stats"]["decoder"]


def test_time_range_outside_the_capture_is_said(tmp_path):
    got = replay(tmp_path, [str(DEMO), "--since", "2030-01-01"], "late")
    assert got["summary"]["packets"] == 0 and got["summary"]["exit_code"] == 0
    assert got["summary"]["note"] == "no packet matched --since 2030-01-01"


# -- bad values -------------------------------------------------------------------


def _empty(d: Path) -> Path:
    (d / "e").mkdir()
    return d / "e"


def _no_captures(d: Path) -> Path:
    (d / "n").mkdir()
    (d / "n" / "notes.txt").write_text("x")
    (d / "n" / "cap.pcap.gz").write_bytes(b"\x1f\x8b\x08\x00")
    return d / "n"


@pytest.mark.parametrize(
    "make,extra,words",
    [
        (lambda d: d / "missing.pcap", [], "missing.pcap: no such file"),
        (_empty, [], "empty folder"),
        (_no_captures, [], "no pcap or pcapng capture in the folder (2 other file(s): cap.pcap.gz, notes.txt)"),
        (lambda d: DEMO, ["--filter", "hots 10.0.0.1"], "--filter 'hots 10.0.0.1': can't parse filter expression"),
        (lambda d: DEMO, ["--filter", "x" * 5000], "longer than 4096"),
        (lambda d: DEMO, ["--since", "yesterday"], "--since 'yesterday': not an ISO 8601 date"),
        (lambda d: DEMO, ["--until", "2026-02-30"], "--until '2026-02-30': not an ISO 8601 date"),
        (
            lambda d: DEMO,
            ["--since", "2026-11-27T02:00", "--until", "2026-11-27T01:00"],
            "--since 2026-11-27T02:00 is not before --until 2026-11-27T01:00",
        ),
        (lambda d: DEMO, ["-", "-"], "stdin named twice"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2_before_reading(tmp_path, make, extra, words):
    path = make(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(
        SENSOR + ["replay", str(path), *extra, "--out", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfer-sensor: error: ") and words in lines[0], p.stderr
    assert p.stdout == "" and not out.exists()  # nothing read, nothing written


def test_bad_input_after_good_ones_reads_none(tmp_path):
    out = tmp_path / "out"
    p = subprocess.run(
        SENSOR + ["replay", str(DEMO), "-r", str(tmp_path / "gone.pcap"), "--out", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"xfer-sensor: error: {tmp_path / 'gone.pcap'}: no such file"
    ]
    assert p.stdout == "" and not out.exists()


def test_filter_that_does_not_apply_to_a_files_link_type(tmp_path):
    pkts = tcp_session("10.0.0.1", "203.0.113.5", 40000, 21, 1000.0, c2s=b"USER x\r\n", s2c=b"220 hi\r\n")
    raw = write_pcap(tmp_path / "raw.pcap", [p[IP] for p in pkts], linktype=101)
    p = subprocess.run(
        SENSOR + ["replay", str(DEMO), str(raw), "--filter", "ether host 02:00:00:00:00:01"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"xfer-sensor: error: {raw}: --filter"), p.stderr
    assert "link type" in lines[0] and p.stdout == ""


def test_resolve_refuses_in_process_too(tmp_path):
    with pytest.raises(InputError, match="no capture given"):
        resolve([])


# -- rules test -------------------------------------------------------------------


def rules_test(tmp_path: Path, args: list[str], stdin=None) -> dict:
    p = subprocess.run(
        SENSOR
        + ["rules", "test", "xfer_repeated_public_file_transfer"]
        + args
        + ["--config", config(tmp_path), "--format", "json"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        stdin=stdin,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def test_rules_test_takes_the_same_inputs(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(DEMO, d / "b")
    shutil.copy(REAL / "ftp_lossy.pcap", d / "a")  # later than the demo, named first
    (d / "notes").write_text("not a capture")
    ref = rules_test(tmp_path, [str(DEMO), str(REAL / "ftp_lossy.pcap")])
    assert ref["alerts"]
    assert rules_test(tmp_path, [str(d)]) == ref
    assert rules_test(tmp_path, ["-r", str(DEMO), "-r", str(REAL / "ftp_lossy.pcap")]) == ref
    with open(DEMO, "rb") as f:
        assert rules_test(tmp_path, ["-"], stdin=f) == rules_test(tmp_path, [str(DEMO)])
    one = rules_test(tmp_path, [str(DEMO), "--filter", "host 203.0.113.10", "--until", "2026-11-27T01:40:00Z"])
    assert one["events"] and all(e["RemoteIP"] == "203.0.113.10" for e in one["events"])
    assert all(e["Timestamp"] < "2026-11-27T01:40:00" for e in one["events"])
    assert len(one["events"]) < len(ref["events"])


def test_dash_refuses_a_terminal(tmp_path):
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.run(
            SENSOR + ["replay", "-"], cwd=REPO, env=ENV, capture_output=True, text=True, stdin=slave, timeout=60
        )
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [
        "xfer-sensor: error: -: stdin is a terminal, not a capture (pipe one in: ... | xfer-sensor replay -)"
    ]


@pytest.mark.parametrize(
    "argv,rule,inputs",
    [
        (["replay", "-r", "a", "b", "--config", "c", "-r", "d", "--", "-e", "-r"], None, ["a", "b", "d", "-e", "-r"]),
        (
            ["replay", "--read=a", "-rb", "--rea", "c", "-", "--progress", "never", "-r", "-"],
            None,
            list("abc-") + ["-"],
        ),
        (["rules", "test", "-r", "a", "RULE", "b", "--format", "json", "-r", "c"], "RULE", ["a", "b", "c"]),
        (["rules", "test", "--", "RULE", "-x"], "RULE", ["-x"]),
    ],
)
def test_inputs_keep_the_command_line_order(argv, rule, inputs):
    from sensor.cli.main import parse_args

    args = parse_args(argv)
    assert args.inputs == inputs and args.pcap == inputs
    if rule is not None:
        assert args.rule == rule
    assert all("\0" not in str(v) for v in vars(args).values())


# -- the selection where libpcap does not filter, and "nothing decodable" ----------


def test_filter_on_a_pcapng_of_two_link_types(tmp_path):
    """libpcap cannot open it: --filter runs per frame on each interface's
    link type (Ethernet, raw IP). The filtered replay gives exactly the
    unfiltered records of the host it names."""
    from tests.test_hostile_captures import T0, _two_interfaces

    p = _two_interfaces(tmp_path, 101)
    assert resolve([str(p)]).paths == [str(p)]
    from sensor.io.capture import first_packet_us

    assert first_packet_us(p) == int(round(T0 * 1e6))
    full = replay(tmp_path, [str(p)], "full")
    got = replay(tmp_path, [str(p), "--filter", "host 203.0.113.11"], "filtered")
    conns = [json.loads(line) for line in full["connections"].splitlines()]
    assert sorted(c["RemoteIP"] for c in conns) == ["203.0.113.10", "203.0.113.11"]
    want = [
        line for line, c in zip(full["connections"].splitlines(), conns, strict=True) if c["RemoteIP"] == "203.0.113.11"
    ]
    assert got["connections"].splitlines() == want
    assert got["summary"]["packets"] == full["summary"]["packets"] // 2


def test_nothing_decodable_is_judged_on_the_selected_frames(tmp_path):
    frames = [(1000.0 + i, b"\x00" * 60, 60) for i in range(10)]
    from tests.support.craft import write_raw_pcap

    user0 = write_raw_pcap(tmp_path / "user0.pcap", frames, linktype=147)

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            SENSOR + ["replay", str(user0), *extra, "--format", "json"],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = run("--since", "1970-01-01T00:16:45")  # 1005 s: frames 5..9
    assert p.returncode == 5, p.stderr
    assert "none of its 5 packet(s) decoded" in p.stderr
    p = run("--filter", "len > 1000")  # no frame selected: nothing undecodable, exit 0
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["note"] == "no packet matched --filter 'len > 1000'"
