"""A replay progress line on stderr, only when stderr is a terminal.

Position in the capture files (from the reader's offset in
``/proc/self/fdinfo``), packets, rates and time left, redrawn by a small
thread every ``interval`` seconds; nothing at all when stderr is not a
terminal. Described in docs/usage.md.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

REDRAW_INTERVAL_S = 0.25
BAR_WIDTH = 24


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _human_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{int(n)}"


def _clock(s: float) -> str:
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def file_offset(path: str) -> int | None:
    """Read offset of this process's open descriptor for ``path`` (Linux)."""
    target = os.path.realpath(path)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    best = None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != target:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("pos:"):
                        pos = int(line.split()[1])
                        best = pos if best is None else max(best, pos)
                        break
        except (OSError, ValueError):
            continue
    return best


class Progress:
    def __init__(
        self,
        paths: Sequence[str],
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = REDRAW_INTERVAL_S,
        offset: Callable[[str], int | None] = file_offset,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = bool(enabled)
        self.paths = list(paths)
        self.sizes = {}
        for p in self.paths:
            try:
                self.sizes[p] = os.path.getsize(p)
            except OSError:
                self.sizes[p] = 0
        self.total = sum(self.sizes.values())
        self.interval = interval
        self.offset = offset
        self.clock = clock
        self.packets = 0
        self.done_bytes = 0  # sizes of the files already finished
        self.current: str | None = None
        self.pos = 0
        self.t0 = clock()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.drawn = False

    # -- hooks --------------------------------------------------------------------
    def wrap(self, handler_for: Callable[[int], Callable[[int, bytes], None]]) -> Callable[[int], Any]:
        """Counts the packets a ``handler_for`` delivers (only when enabled)."""
        if not self.enabled:
            return handler_for

        def counting_handler_for(linktype: int):
            inner = handler_for(linktype)

            def handle(ts_us: int, data: bytes, inner=inner) -> None:
                self.packets += 1
                inner(ts_us, data)

            return handle

        return counting_handler_for

    def begin(self, path: str) -> None:
        self.current = path
        self.pos = 0
        if self.enabled and self.thread is None:
            self.t0 = self.clock()
            self.thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self.thread.start()

    def end(self, path: str) -> None:
        self.done_bytes += self.sizes.get(path, 0)
        self.current = None
        self.pos = 0

    def finish(self) -> None:
        if not self.enabled:
            return
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        with self.lock:
            self.stream.write("\r" + self.line(final=True) + "\x1b[K\n")
            self.stream.flush()
            self.drawn = False

    def clear(self) -> None:
        """Erase the progress line (before another message goes to the terminal)."""
        if self.enabled and self.drawn:
            with self.lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self.drawn = False

    # -- drawing ------------------------------------------------------------------
    def line(self, final: bool = False) -> str:
        elapsed = max(self.clock() - self.t0, 1e-6)
        done = self.total if final else self.done_bytes + self.pos
        frac = min(done / self.total, 1.0) if self.total else (1.0 if final else 0.0)
        fill = int(round(frac * BAR_WIDTH))
        bar = "#" * fill + "-" * (BAR_WIDTH - fill)
        rate_b = done / elapsed
        rate_p = self.packets / elapsed
        if final:
            tail = f"done in {_clock(elapsed)}"
        elif rate_b > 0 and done > 0:
            tail = f"{_clock((self.total - done) / rate_b)} left"
        else:
            tail = "--:-- left"
        return (
            f"{frac * 100:5.1f}% [{bar}] {_human_bytes(done)}/{_human_bytes(self.total)}  "
            f"{_human_count(self.packets)} packets  {_human_count(rate_p)} pkt/s  "
            f"{_human_bytes(rate_b)}/s  {tail}"
        )

    def tick(self) -> None:
        """One redraw: the reader's position, then the line. The thread calls it
        every ``interval`` seconds; tests call it with a clock of their own."""
        cur = self.current
        if cur is not None:
            off = self.offset(cur)
            if off is not None:
                self.pos = min(off, self.sizes.get(cur, off))
        with self.lock:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
            self.drawn = True

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.tick()


class ProgressAwareHandler(logging.StreamHandler):
    """A log handler that erases the progress line before writing."""

    def __init__(self, progress: Progress | None = None, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)
