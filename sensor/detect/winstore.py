"""Rule-window state across restarts: SQLite under the state folder.

Only persistence: the Detector exports its window state as plain data and
imports it back; this module writes and reads it (WAL, batched commits every
``state_flush_interval`` seconds and at close, pruning, ``max_window_keys``).
A corrupt file is moved aside, never fatal. Design: docs/daemon.md, "The
state folder".
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("xfer-sensor")

DEFAULT_STATE_DIR = "/var/lib/xfer-sensor"
STATE_FILE = "windows.sqlite"
SCHEMA_VERSION = 1
PRUNE_EVERY_S = 600.0  # wall-clock seconds between two prunes while running
# a connection's record is written when it ends but timed by its first packet,
# so it can reach the detector late: keep a key this long past its window
PRUNE_GRACE_S = 3600
ERROR_LOG_EVERY_S = 60.0  # at most one write-error log line per this many seconds
BUSY_TIMEOUT_S = 0.5  # never block capture long on a locked file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    wid      TEXT PRIMARY KEY,          -- rule id ':' hash of the rule's definition
    rule_id  TEXT NOT NULL,
    span_us  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    wid           TEXT NOT NULL,
    key           TEXT NOT NULL,        -- the group-by values, a JSON list
    seq           INTEGER NOT NULL,     -- write order: least recently seen first
    newest_us     INTEGER NOT NULL,     -- newest event time (packet time, us)
    events        TEXT NOT NULL,        -- JSON [[ts_us, sent, recv, uid], ...]
    armed         INTEGER NOT NULL,     -- 0: an alert was raised and the key has not re-armed
    last_alert_us INTEGER NOT NULL,     -- -1: never alerted
    episode       TEXT,                 -- JSON: the raised alert with its running totals
    PRIMARY KEY (wid, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_newest ON keys (wid, newest_us);
CREATE INDEX IF NOT EXISTS keys_seq ON keys (wid, seq);
"""


class StoreError(Exception):
    """The file is not a usable window-state database."""


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


class WindowStore:
    """The SQLite file. ``open()`` raises ``StoreError``/``sqlite3.Error`` on a
    file it cannot use; ``WindowPersistence.open`` handles that."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db: sqlite3.Connection | None = None
        self.seq = 0
        # staged rows: (wid, key json) -> row tuple, or None for a delete;
        # windows: wid -> (rule_id, span_us). Bounded by the keys held in memory.
        self.pending: dict[tuple[str, str], tuple[Any, ...] | None] = {}
        self.pending_windows: dict[str, tuple[str, int]] = {}

    # -- open / load --------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot use WAL journal mode (got {mode})")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise StoreError("integrity check failed: " + "; ".join(str(r[0]) for r in check[:3]))
            db.executescript(_SCHEMA)
            rows = db.execute("SELECT version FROM schema_version").fetchall()
            if not rows:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif rows != [(SCHEMA_VERSION,)]:
                raise StoreError(
                    f"schema version {', '.join(str(r[0]) for r in rows)}, this sensor reads version {SCHEMA_VERSION}"
                )
            self.seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM keys").fetchone()[0]
        except BaseException:
            db.close()
            raise
        self.db = db

    def prune(self, now_us: int) -> int:
        """Delete rows no window ending now can count (newest event older than
        the window's span plus ``PRUNE_GRACE_S``), and windows left without rows."""
        assert self.db is not None
        db = self.db
        db.execute("BEGIN")
        try:
            n = db.execute(
                "DELETE FROM keys WHERE newest_us < ? - "
                "COALESCE((SELECT span_us FROM windows w WHERE w.wid = keys.wid), 0)",
                (now_us - PRUNE_GRACE_S * 1_000_000,),
            ).rowcount
            db.execute("DELETE FROM windows WHERE wid NOT IN (SELECT DISTINCT wid FROM keys)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def load(
        self, windows: Mapping[str, int], max_keys: int
    ) -> dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]]:
        """The rows of the given windows (wid -> span), the ``max_keys`` most
        recently seen per window, least recently seen first, decoded. Rows
        beyond ``max_keys`` are deleted; undecodable rows are skipped and
        counted in ``self.refused``."""
        assert self.db is not None
        db = self.db
        out: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        self.refused = 0
        for wid in windows:
            rows = db.execute(
                "SELECT key, events, armed, last_alert_us, episode FROM keys WHERE wid = ? ORDER BY seq DESC LIMIT ?",
                (wid, max_keys),
            ).fetchall()
            entries = []
            for key, events, armed, last_alert_us, episode in reversed(rows):
                try:
                    k = json.loads(key)
                    if not isinstance(k, list):
                        raise ValueError("key is not a list")
                    entries.append(
                        (
                            tuple(k),
                            {
                                "events": json.loads(events),
                                "armed": bool(armed),
                                "last_alert_ts": int(last_alert_us),
                                "episode": None if episode is None else json.loads(episode),
                            },
                        )
                    )
                except (ValueError, TypeError, OverflowError, RecursionError):  # damaged or hostile rows
                    self.refused += 1
            out[wid] = entries
            if len(rows) == max_keys:
                db.execute(
                    "DELETE FROM keys WHERE wid = ? AND seq < ?",
                    (
                        wid,
                        db.execute(
                            "SELECT MIN(seq) FROM (SELECT seq FROM keys WHERE wid = ? ORDER BY seq DESC LIMIT ?)",
                            (wid, max_keys),
                        ).fetchone()[0],
                    ),
                )
        return out

    # -- writes ---------------------------------------------------------------------
    def stage(self, changes: Mapping[str, Mapping[str, Any]]) -> int:
        """Take ``Detector.export_changes()`` output; nothing is written until
        ``commit()``. Returns the rows staged."""
        n = 0
        for wid, ch in changes.items():
            self.pending_windows[wid] = (ch["rule_id"], int(ch["span_us"]))
            for key in ch["deletes"]:
                self.pending[(wid, _dumps(list(key)))] = None
                n += 1
            for key, st in ch["upserts"]:
                k = (wid, _dumps(list(key)))
                self.pending.pop(k, None)  # keep touch order: re-staged rows go last
                evs = st["events"]
                self.pending[k] = (
                    max(e[0] for e in evs) if evs else -1,
                    _dumps(evs),
                    int(bool(st["armed"])),
                    int(st["last_alert_ts"]),
                    None if st["episode"] is None else _dumps(st["episode"]),
                )
                n += 1
        return n

    def commit(self) -> int:
        """Write every staged row in one transaction. On an error the rows stay
        staged (the next commit retries them) and the error is raised."""
        if not self.pending and not self.pending_windows:
            return 0
        assert self.db is not None
        db = self.db
        seq = self.seq
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO windows (wid, rule_id, span_us) VALUES (?, ?, ?) "
                "ON CONFLICT (wid) DO UPDATE SET span_us = excluded.span_us",
                [(w, r, s) for w, (r, s) in self.pending_windows.items()],
            )
            ups, dels = [], []
            for (wid, key), row in self.pending.items():
                if row is None:
                    dels.append((wid, key))
                else:
                    seq += 1
                    ups.append((wid, key, seq, *row))
            db.executemany("DELETE FROM keys WHERE wid = ? AND key = ?", dels)
            db.executemany(
                "INSERT OR REPLACE INTO keys (wid, key, seq, newest_us, events, armed, last_alert_us, "
                "episode) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ups,
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        n = len(self.pending)
        self.seq = seq
        self.pending.clear()
        self.pending_windows.clear()
        return n

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename the file (and its -wal/-shm) to ``<name>.corrupt-<unix time>``."""
    stamp = int(time.time() if now is None else now)
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 0
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    if path.exists():
        os.replace(path, dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, dest.with_name(dest.name + suffix))
    return dest


class WindowPersistence:
    """Ties a Detector to a WindowStore for the daemon: load at start,
    ``tick()`` from the loop (wall clock), ``adopt()`` on reload, ``close()``
    at stop. With ``store`` None (no usable file) every call is a no-op."""

    def __init__(
        self, store: WindowStore | None, detector: Any, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.detector = detector
        self.interval = interval_s
        self.clock = clock
        now = clock()
        self.next_flush = now + interval_s
        self.next_prune = now + PRUNE_EVERY_S
        self.last_error_log = -1e18
        self.write_errors = 0
        self.restored = 0
        if store is not None:
            detector.enable_tracking()

    @classmethod
    def open(
        cls,
        state_dir: str | Path,
        detector: Any,
        interval_s: float,
        max_keys: int,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ) -> WindowPersistence:
        path = Path(state_dir) / STATE_FILE
        store: WindowStore | None = None  # the one that opened, if any
        trying = WindowStore(path)
        now_us = int(wallclock() * 1_000_000)
        loaded = None
        for attempt in (1, 2):
            try:
                trying.open()
                trying.prune(now_us)
                loaded = trying.load(detector.window_ids(), max_keys)
                store = trying
                break
            except (sqlite3.Error, StoreError, OSError, ValueError) as e:
                trying.close()
                if attempt == 1 and path.exists():
                    try:
                        aside = move_aside(path, wallclock())
                    except OSError as e2:
                        log.error(
                            "rule-window state %s is unusable (%s) and cannot be moved aside (%s); "
                            "running without window persistence",
                            path,
                            e,
                            e2,
                        )
                        break
                    log.error(
                        "rule-window state %s is unusable (%s); moved it to %s, rule windows start empty",
                        path,
                        e,
                        aside,
                    )
                    trying = WindowStore(path)
                    continue
                log.error(
                    "rule-window state %s cannot be opened (%s); running without window persistence "
                    "(rule windows start empty on every restart)",
                    path,
                    e,
                )
                break
        p = cls(store, detector, interval_s, clock)
        if store is not None and loaded is not None:
            restored, refused = detector.import_state(loaded)
            refused += store.refused
            p.restored = restored
            log.info(
                "rule-window state %s: %d key(s) restored%s",
                path,
                restored,
                f", {refused} unreadable entr(y/ies) skipped" if refused else "",
            )
        return p

    def flush(self) -> None:
        if self.store is None:
            return
        try:
            self.store.stage(self.detector.export_changes())
            self.store.commit()
        except (sqlite3.Error, OverflowError, ValueError) as e:  # OverflowError: an int SQLite cannot hold
            self.write_errors += 1
            now = self.clock()
            if now - self.last_error_log >= ERROR_LOG_EVERY_S:
                self.last_error_log = now
                log.error(
                    "rule-window state %s: write failed (%s); kept in memory, retrying (%d failure(s) so far)",
                    self.store.path,
                    e,
                    self.write_errors,
                )

    def tick(self, wallclock: Callable[[], float] = time.time) -> None:
        """Called from the daemon loop: commit at most every interval, prune now and then."""
        if self.store is None:
            return
        now = self.clock()
        if now >= self.next_flush:
            self.flush()
            self.next_flush = now + self.interval
        if now >= self.next_prune:
            self.next_prune = now + PRUNE_EVERY_S
            try:
                self.store.prune(int(wallclock() * 1_000_000))
            except sqlite3.Error as e:
                log.error("rule-window state %s: prune failed (%s)", self.store.path, e)

    def adopt(self, old: Any, new: Any) -> None:
        """A reload replaced the Detector (windows of unchanged rules carried
        over): stage what the old one changed, then follow the new one."""
        if self.store is None:
            return
        self.store.stage(old.export_changes())
        new.enable_tracking()
        self.detector = new

    def close(self) -> None:
        if self.store is None:
            return
        self.flush()
        self.store.close()
