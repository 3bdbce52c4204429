"""The detection package's docs cannot rot: every shell block of
docs/investigation.md and docs/playbook.md runs here.

Conventions (docs/testing.md, "Commands in the docs"):

- a block fenced as ```` ```sh test ```` runs with ``bash -e -o pipefail``, the
  blocks of one page in order, in one temporary folder holding a copy of
  ``pcaps/`` and ``rules/``, with ``xfer-sensor`` on the PATH (this checkout's
  code); ``exit=N`` after ``test`` is the exit code it must end with (default 0);
- a ```` ```text output ```` block right after it lists lines its output
  (stdout and stderr) must contain, in that order, each whole line but for
  the spaces around it; ``...`` in a line matches
  anything, a line that is only ``...`` stands for lines left out;
- ```` ```sh report ```` blocks use the HTML report (``replay --report``,
  ``xfer-sensor report``): they run like ``test`` blocks as soon as this
  checkout has the ``report`` command, and until then are only checked to be
  report commands;
- any other ``sh`` block fails this test: a command in these pages either runs
  here or is not a command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = ("investigation.md", "playbook.md")
FENCE = re.compile(r"^```(\S*)(.*)$")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    flags: list[str]
    body: str
    expect: list[str] | None = None


def blocks(page: str) -> list[Block]:
    out: list[Block] = []
    lines = (REPO / "docs" / page).read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        b = Block(page, start + 1, m.group(1), m.group(2).split(), "\n".join(body) + "\n")
        if b.lang == "text" and b.flags[:1] == ["output"] and out and out[-1].lang == "sh":
            out[-1].expect = body
            continue
        out.append(b)
    return out


def report_available() -> bool:
    from sensor.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    return "report" in (sub.choices or {})


def expected_exit(b: Block) -> int:
    for f in b.flags:
        if f.startswith("exit="):
            return int(f[5:])
    return 0


def check_output(b: Block, output: str) -> None:
    got = [ln.strip() for ln in output.splitlines()]
    pos = 0
    for want in b.expect or ():
        want = want.strip()
        if not want or want == "...":
            continue
        pat = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        for j in range(pos, len(got)):
            if pat.fullmatch(got[j]):
                pos = j + 1
                break
        else:
            raise AssertionError(
                f"docs/{b.page}:{b.line}: expected line not in the output (in order):\n  {want}\n"
                f"--- output ---\n{output}"
            )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "pcaps", d / "pcaps", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copytree(REPO / "rules", d / "rules")
    bindir = d / ".bin"
    bindir.mkdir()
    exe = bindir / "xfer-sensor"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sensor "$@"\n')
    exe.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", PYTHONPATH=str(REPO))
    env.pop("XFER_UPDATE_GOLDEN", None)
    return d, env


def run_block(b: Block, cwd: Path, env: dict[str, str]) -> None:
    p = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", b.body],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = p.stdout + p.stderr
    assert p.returncode == expected_exit(b), (
        f"docs/{b.page}:{b.line}: exit {p.returncode}, expected {expected_exit(b)}\n{b.body}--- output ---\n{output}"
    )
    assert "Traceback" not in output, f"docs/{b.page}:{b.line}:\n{output}"
    check_output(b, output)


@pytest.mark.parametrize("page", PAGES)
def test_every_command_runs(page, workdir, tmp_path):
    base, env = workdir
    cwd = tmp_path / "work"
    shutil.copytree(base, cwd, symlinks=True)
    bs = [b for b in blocks(page) if b.lang in ("sh", "bash", "shell", "console")]
    tested = [b for b in bs if b.flags[:1] == ["test"]]
    report = [b for b in bs if b.flags[:1] == ["report"]]
    assert tested, f"docs/{page} has no tested command"
    untested = [b.line for b in bs if b not in tested and b not in report]
    assert not untested, f"docs/{page}: shell blocks neither 'test' nor 'report' at lines {untested}"
    live = report_available()
    for b in report:
        assert re.search(r"--report|xfer-sensor report", b.body), f"docs/{page}:{b.line}: not a report command"
    for b in bs:
        if b in tested or live:
            run_block(b, cwd, env)


def test_blocks_parse():
    """The harness sees the pages' blocks: each page's tested blocks and their expected output."""
    for page in PAGES:
        bs = blocks(page)
        assert any(b.expect for b in bs), f"docs/{page}: no output checked"
