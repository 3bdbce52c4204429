"""Debian's chromium driven by Playwright, for the report's browser tests.

Never downloads a browser: the executable is /usr/bin/chromium (apt
``chromium``, scripts/deps.sh test), launched with a fresh profile and the
flags a closed network and root need."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def browser_context() -> Iterator[Any]:
    """A headless chromium context (Playwright's ``headless=True`` passes --headless)."""
    from playwright.sync_api import sync_playwright

    if sys.version_info < (3, 12):
        # pyshark (the tshark oracle, earlier in the same pytest process) installs a
        # SafeChildWatcher attached to its own event loop and leaves it detached when
        # that loop closes; Playwright's driver subprocess then fails with "child
        # watcher is not activated". The default watcher needs no loop.
        asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())
    with tempfile.TemporaryDirectory(prefix="xfer-chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900}
        )
        try:
            yield ctx
        finally:
            ctx.close()
