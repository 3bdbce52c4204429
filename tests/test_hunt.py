"""``xfer-sensor hunt RECORDS...``: the rules over connection records, without the captures.

The alerts of ``hunt`` over a replay's own ``connections.jsonl`` must be the
bytes of that replay's ``alerts.jsonl``, for every committed capture and in
both profiles; over the records of two sensors (a capture split in two) they
must be those of one replay of the whole capture. Hostile input: a bad line
is one counted warning naming file:line, a file that is not JSONL is one
line and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.cli.main import main
from tests.support.captures import ALERTING, CAPTURES, PCAPS, REPO
from tests.support.captures import config_for as _config


def _run(argv: list[str]) -> int:
    return main(argv)


@pytest.mark.parametrize("profile", ["mde", "ecs"])
@pytest.mark.parametrize("name,pcap,cfg", CAPTURES, ids=[c[0] for c in CAPTURES])
def test_hunt_over_replay_records_gives_replay_alerts(tmp_path, capsys, name, pcap, cfg, profile):
    config = str(_config(tmp_path, cfg))
    rdir, hdir = tmp_path / "replay", tmp_path / "hunt"
    argv = ["replay", str(pcap), "--config", config, "--out", str(rdir), "--profile", profile, "--progress", "never"]
    assert _run(argv) == 0
    assert (
        _run(["hunt", str(rdir / "connections.jsonl"), "--config", config, "--out", str(hdir), "--profile", profile])
        == 0
    )
    capsys.readouterr()
    want = (rdir / "alerts.jsonl").read_bytes()
    got = (hdir / "alerts.jsonl").read_bytes()
    assert got == want
    assert sorted(os.listdir(hdir)) == ["alerts.jsonl"]  # hunt writes the alerts only
    if name in ALERTING:
        assert want.count(b"\n") >= 1, f"{name} raised no alert: the comparison proves nothing"
        if profile == "ecs":
            assert b'"xfer_sensor.alerts"' in want


def _split_pcap(src: Path, a: Path, b: Path, slot_s: int = 900) -> None:
    """Packets of even 15-minute slots to ``a``, of odd ones to ``b``: two sensors, each seeing
    every other session (demo.pcap's sessions are seconds long and 15+ minutes apart)."""
    data = src.read_bytes()
    assert data[:4] == bytes.fromhex("d4c3b2a1"), "little-endian classic pcap expected"
    outs: list[list[bytes]] = [[data[:24]], [data[:24]]]
    off = 24
    while off < len(data):
        ts, _us, incl, _orig = struct.unpack_from("<IIII", data, off)
        outs[(ts // slot_s) % 2].append(data[off : off + 16 + incl])
        off += 16 + incl
    a.write_bytes(b"".join(outs[0]))
    b.write_bytes(b"".join(outs[1]))


@pytest.mark.parametrize("profile", ["mde", "ecs"])
def test_hunt_over_two_sensors_raises_the_alerts_of_one_replay(tmp_path, capsys, profile):
    cfg = str(PCAPS / "demo.yaml")
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    _split_pcap(PCAPS / "demo.pcap", a, b)
    common = ["--config", cfg, "--profile", profile, "--progress", "never"]
    assert _run(["replay", str(PCAPS / "demo.pcap"), "--out", str(tmp_path / "whole"), *common]) == 0
    assert _run(["replay", str(a), "--out", str(tmp_path / "sa"), *common]) == 0
    assert _run(["replay", str(b), "--out", str(tmp_path / "sb"), *common]) == 0
    whole = (tmp_path / "whole" / "alerts.jsonl").read_bytes()
    # each sensor alone sees too few connections for the correlation rule; together they do
    assert b"ConnectionCount" in whole or b"connection_count" in whole
    for s in ("sa", "sb"):
        assert (tmp_path / s / "alerts.jsonl").read_bytes() == b""
    # folders (a replay's --out), in either order: the merge is by time, not by the order named
    for order in (("sb", "sa"), ("sa", "sb")):
        out = tmp_path / f"hunt-{order[0]}"
        argv = ["hunt", *(str(tmp_path / s) for s in order), "--config", cfg, "--profile", profile, "--out", str(out)]
        assert _run(argv) == 0
        assert (out / "alerts.jsonl").read_bytes() == whole
    capsys.readouterr()


def _records(tmp_path: Path, profile: str = "mde") -> Path:
    out = tmp_path / f"r-{profile}"
    argv = ["replay", str(PCAPS / "demo.pcap"), "--config", str(PCAPS / "demo.yaml"), "--out", str(out)]
    assert main([*argv, "--profile", profile, "--progress", "never"]) == 0
    return out


def test_bad_lines_are_counted_warnings_with_file_and_line(tmp_path, capsys):
    r = _records(tmp_path)
    capsys.readouterr()
    lines = (r / "connections.jsonl").read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    junk = [
        b"{not json\n",
        b"[1, 2]\n",
        b'{"Timestamp": "yesterday", "ActionType": "ConnectionSuccess"}\n',
        b'{"Timestamp": "2026-11-27T01:00:00.000000Z", "ActionType": "x", "RemotePort": "21"}\n',
        b'{"Timestamp": "2026-11-27T01:00:00.000000Z", "ActionType": "x", "RemoteIP": ["a"]}\n',
        b'{"Timestamp": "2026-11-27T01:00:00.000000Z", "ActionType": "x", "SentBytes": NaN}\n',
        b"[" * 10_000 + b"\n",  # deeper than the JSON parser recurses
        b'{"Timestamp": "2026-11-27T01:00:00.000000Z", "x": "' + b"A" * 20_000 + b'"}\n',  # > max_line_bytes
        b"\xff\xfe\n",
    ]
    # the first line is a record (else the file is not JSONL); junk between the others
    mixed = lines[:1] + [j for pair in zip(junk, lines[1:]) for j in pair] + lines[1 + len(junk) :]
    bad.write_bytes(b"".join(mixed))
    out = tmp_path / "h"
    rc = main(["hunt", str(bad), "--config", str(PCAPS / "demo.yaml"), "--out", str(out), "--format", "json"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "Traceback" not in cap.err
    warned = [ln for ln in cap.err.splitlines() if ": skipped: " in ln]
    assert len(warned) == len(junk)
    bad_lines = sorted(i + 1 for i, ln in enumerate(mixed) if ln in junk)
    assert [int(w.split(f"{bad}:")[1].split(":")[0]) for w in warned] == bad_lines
    summary = json.loads(cap.out)
    assert summary["bad_lines"] == len(junk)
    assert summary["connections"] == len(lines)
    # the good records still raise the replay's alerts
    assert (out / "alerts.jsonl").read_bytes() == (r / "alerts.jsonl").read_bytes()


def test_a_file_that_is_not_jsonl_is_one_line_exit_2(tmp_path):
    for name, content in (
        ("capture.pcap", (PCAPS / "demo.pcap").read_bytes()),
        ("list.json", b"[1,2,3]\n"),
        ("blob.bin", b"\x00" * 100_000),  # no newline within output.max_line_bytes
    ):
        f = tmp_path / name
        f.write_bytes(content)
        cp = subprocess.run(
            [sys.executable, "-m", "sensor", "hunt", str(f)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert cp.returncode == 2, cp.stderr
        assert cp.stderr.count("\n") == 1 and "not JSONL" in cp.stderr and str(f) in cp.stderr, cp.stderr
    for arg in (str(tmp_path / "missing.jsonl"), str(tmp_path / "*.nothing")):
        cp = subprocess.run(
            [sys.executable, "-m", "sensor", "hunt", arg],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "Traceback" not in cp.stderr, cp.stderr


def test_stdin_glob_and_mixed_stream(tmp_path, capsys, monkeypatch):
    """``-`` reads stdin; a --stdout stream mixing record kinds keeps only connections; a glob names files."""
    r = _records(tmp_path, "ecs")
    mixed = b"".join((r / f"{k}.jsonl").read_bytes() for k in ("transfers", "connections", "alerts"))
    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(mixed)
    with stream.open("rb") as f:
        monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": f, "isatty": lambda self: False})())
        out = tmp_path / "h"
        rc = main(["hunt", "-", "--config", str(PCAPS / "demo.yaml"), "--profile", "ecs", "--out", str(out)])
    assert rc == 0
    assert (out / "alerts.jsonl").read_bytes() == (r / "alerts.jsonl").read_bytes()
    capsys.readouterr()
    rc = main(["hunt", str(r / "conn*.jsonl"), "--config", str(PCAPS / "demo.yaml"), "--format", "json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["alerts"] == (r / "alerts.jsonl").read_bytes().count(b"\n") > 0
    assert summary["inputs"] == [str(r / "connections.jsonl")]
    # a sensor writes connections as they end: its file is not in Timestamp order, and that is counted
    assert summary["out_of_order"] > 0


def test_out_never_overwrites_an_input(tmp_path, capsys):
    r = _records(tmp_path)
    capsys.readouterr()
    before = (r / "alerts.jsonl").read_bytes()
    rc = main(["hunt", str(r / "alerts.jsonl"), "--out", str(r)])
    assert rc == 2
    assert "is also an input" in capsys.readouterr().err
    assert (r / "alerts.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    "pcap,cfg", [(PCAPS / "demo.pcap", PCAPS / "demo.yaml"), (PCAPS / "real" / "smb445.pcap", None)]
)
def test_ecs_connections_read_back_as_the_mde_records(tmp_path, capsys, pcap, cfg):
    """Every field a rule can name comes back from an ecs connection as the mde record has it."""
    from sensor.records.ecs_read import connection_from_ecs

    config = str(_config(tmp_path, cfg))
    for p in ("mde", "ecs"):
        argv = ["replay", str(pcap), "--config", config, "--out", str(tmp_path / p), "--profile", p]
        assert main([*argv, "--progress", "never"]) == 0
    capsys.readouterr()
    mde = [json.loads(ln) for ln in (tmp_path / "mde" / "connections.jsonl").read_text().splitlines()]
    ecs = [json.loads(ln) for ln in (tmp_path / "ecs" / "connections.jsonl").read_text().splitlines()]
    assert len(mde) == len(ecs) > 0
    for m, e in zip(mde, ecs, strict=True):
        m.pop("RecordKind")
        assert connection_from_ecs(e) == m
