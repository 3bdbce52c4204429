"""Golden records: every committed capture, replayed as the CLI replays it,
must write exactly the committed record files (Zeek's btest baselines).

For ``pcaps/demo.pcap`` (with ``pcaps/demo.yaml``) and each
``pcaps/real/*.pcap`` the five record files the sensor writes --
connections, transfers, alerts, weird, files -- are committed under
``tests/golden/<capture>/<kind>.jsonl``.  The replay is the CLI's own:
``python -m sensor replay PCAP --out DIR [--config pcaps/demo.yaml]``
in a child process, from an unrelated working directory, with the shipped
rules.  A record holds packet time only (no wall clock), so the files are the
same on every run and every machine; a difference is a change of behaviour
and is shown as a unified diff.

The files were first written by the pre-redesign tree (f503e77) and the
redesigned tree wrote the same bytes.  When a change of behaviour is
intended, rewrite them and review the diff before committing::

    XFER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_golden.py
    git diff tests/golden

(tests/README.md, "Golden records").
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
KINDS = ("connections", "transfers", "alerts", "weird", "files")
UPDATE = os.environ.get("XFER_UPDATE_GOLDEN", "") not in ("", "0")
DIFF_LINES = 200  # a diff longer than this is cut (the rest: git diff after an update)

# capture name -> (pcap, config or None)
CAPTURES: dict[str, tuple[Path, Path | None]] = {
    "demo": (REPO / "pcaps" / "demo.pcap", REPO / "pcaps" / "demo.yaml"),
    **{p.stem: (p, None) for p in sorted((REPO / "pcaps" / "real").glob("*.pcap"))},
}


def replay_cli(pcap: Path, config: Path | None, out: Path, hash_seed: str | None = None) -> None:
    """The CLI's replay of one capture into ``out``/<kind>.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sensor", "replay", str(pcap), "--out", str(out), "--progress", "never"]
    if config is not None:
        argv += ["--config", str(config)]
    env = {**os.environ, **({"PYTHONHASHSEED": hash_seed} if hash_seed is not None else {})}
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=out, env=env)
    assert cp.returncode == 0, f"{' '.join(argv)} exited {cp.returncode}:\n{cp.stderr}"


def unified(want: str, got: str, name: str) -> str:
    lines = list(
        difflib.unified_diff(
            want.splitlines(keepends=True), got.splitlines(keepends=True), f"golden/{name}", f"replay/{name}"
        )
    )
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + [f"... {len(lines) - DIFF_LINES} more diff lines\n"]
    return "".join(lines)


def test_every_capture_has_golden_records_and_no_golden_is_orphaned():
    assert CAPTURES["demo"][0].exists()
    assert len(CAPTURES) > 1, "no pcaps/real/*.pcap"
    if UPDATE:
        return
    have = {p.name for p in GOLDEN.iterdir() if p.is_dir()}
    assert have == set(CAPTURES), (
        f"captures without golden records: {sorted(set(CAPTURES) - have)}; "
        f"golden records without a capture: {sorted(have - set(CAPTURES))} "
        "(XFER_UPDATE_GOLDEN=1 writes the missing ones)"
    )


@pytest.mark.parametrize("capture", sorted(CAPTURES))
def test_replay_writes_the_golden_records(capture, tmp_path):
    pcap, config = CAPTURES[capture]
    out = tmp_path / capture
    replay_cli(pcap, config, out)
    got = {kind: (out / f"{kind}.jsonl").read_bytes() for kind in KINDS}
    if UPDATE:
        (GOLDEN / capture).mkdir(parents=True, exist_ok=True)
        for kind, data in got.items():
            (GOLDEN / capture / f"{kind}.jsonl").write_bytes(data)
        warnings.warn(
            f"XFER_UPDATE_GOLDEN: rewrote tests/golden/{capture}/ (review: git diff tests/golden)", stacklevel=1
        )
        return
    diffs = []
    for kind in KINDS:
        path = GOLDEN / capture / f"{kind}.jsonl"
        assert path.exists(), f"{path} missing (XFER_UPDATE_GOLDEN=1 writes it)"
        want = path.read_bytes()
        if got[kind] != want:
            diffs.append(unified(want.decode(), got[kind].decode(), f"{capture}/{kind}.jsonl"))
    if diffs:  # the diff itself, not pytest's abridged repr of a long message
        pytest.fail(
            f"replay of {pcap.relative_to(REPO)} differs from tests/golden/{capture}/ "
            "(intended? XFER_UPDATE_GOLDEN=1, then review git diff):\n" + "\n".join(diffs),
            pytrace=False,
        )


def test_replay_is_deterministic(tmp_path):
    """Two replays of the same capture write the same bytes: the records
    carry packet time only, nothing from the clock or the process (not even
    the order of a set of strings: the two runs hash differently)."""
    pcap, config = CAPTURES["demo"]
    replay_cli(pcap, config, tmp_path / "a", hash_seed="1")
    replay_cli(pcap, config, tmp_path / "b", hash_seed="2")
    for kind in KINDS:
        a, b = (tmp_path / "a" / f"{kind}.jsonl").read_bytes(), (tmp_path / "b" / f"{kind}.jsonl").read_bytes()
        assert a == b, unified(a.decode(), b.decode(), f"demo/{kind}.jsonl")
