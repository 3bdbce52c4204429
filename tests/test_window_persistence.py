"""Rule windows survive restarts (issue #4): the Detector's export/import, the
SQLite store (batched writes, pruning, bounds, a corrupt file), and the real
daemon killed with SIGKILL and restarted inside a window -- the 4th
connection still alerts, an alert already raised is not raised again.

The daemon tests use 127.0.0.3 on a free port (test_daemon.py uses 127.0.0.2)."""

import json
import logging
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from sensor.core.config import ConfigError, Limits, config_from_dict
from sensor.detect.detector import Detector, window_id
from sensor.detect.rules import load_rules
from sensor.detect.winstore import PRUNE_EVERY_S, PRUNE_GRACE_S, SCHEMA_VERSION, STATE_FILE, WindowPersistence
from sensor.io.sinks import MemorySink
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS
from tests.support.loopback_ftp import DaemonProcess, banner_server, login_sessions, records_of, wait_for

REPO = Path(__file__).resolve().parent.parent
RULES = load_rules(REPO / "rules", RECORD_FIELDS)
T0 = 1_700_000_000 * 1_000_000  # packet time, us
S = 1_000_000
DAY = 86400 * S


def rec(uid: str, ip: str = "203.0.113.10", account: str = "backup", port: int = 21) -> dict:
    return {
        "Timestamp": "-",
        "DeviceName": "WS-1",
        "InitiatingProcessFileName": "",
        "RemoteIP": ip,
        "RemotePort": port,
        "AccountName": account,
        "RemoteIPType": "Public",
        "ActionType": "ConnectionSuccess",
        "Uid": uid,
        "SentBytes": 100,
        "ReceivedBytes": 20,
    }


def counts(alerts: list[dict]) -> list[int]:
    return [a["ConnectionCount"] for a in alerts if "ConnectionCount" in a]


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def opened(state: Path, rules=RULES, limits: Limits = Limits(), clock=None, now_us: int = T0):
    det = Detector(rules, limits)
    p = WindowPersistence.open(
        state, det, 2.0, limits.max_window_keys, clock=clock or Clock(), wallclock=lambda: now_us / S
    )
    return det, p


def rows(state: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{state / STATE_FILE}?mode=ro", uri=True)
    try:
        return db.execute("SELECT wid, key, events, armed, last_alert_us, episode FROM keys ORDER BY seq").fetchall()
    finally:
        db.close()


# -- the Detector: export / import, pure ---------------------------------------------
def test_detector_export_import_round_trip_keeps_the_window_and_the_raised_alert():
    a = Detector(RULES, Limits())
    a.enable_tracking()
    for i in range(2):
        assert counts(a.observe(rec(f"C{i}"), T0 + i * S)) == []
    state = a.export_state()
    assert json.loads(json.dumps(state)) is not None  # plain data
    b = Detector(RULES, Limits())
    assert b.import_state({w: e["upserts"] for w, e in state.items()}) == (1, 0)
    assert counts(b.observe(rec("C2"), T0 + 2 * S)) == []
    assert counts(b.observe(rec("C3"), T0 + 3 * S)) == [4]  # the 4th still alerts
    st = b.export_state()
    c = Detector(RULES, Limits())
    c.import_state({w: e["upserts"] for w, e in st.items()})
    assert counts(c.observe(rec("C4"), T0 + 4 * S)) == []  # no second alert
    assert c.stats.suppressed == 1
    hunt = c.hunt_results()
    assert len(hunt) == 1 and hunt[0]["ConnectionCount"] == 5 and hunt[0]["Uids"] == [f"C{i}" for i in range(5)]
    # two days later the key has re-armed: four more raise a new alert, as without a restart
    assert counts(sum((c.observe(rec(f"D{i}"), T0 + 2 * DAY + i * S) for i in range(4)), [])) == [4]


def test_a_reload_carries_the_windows_and_keeps_counting_into_the_same_counters():
    old = Detector(RULES, Limits())
    for i in range(3):
        old.observe(rec(f"C{i}"), T0 + i * S)
    new = Detector(RULES, Limits())
    assert new.carry_over(old) >= 1
    assert counts(new.observe(rec("C3"), T0 + 3 * S)) == [4]  # the window went on
    assert counts(new.observe(rec("C4"), T0 + 4 * S)) == []
    assert new.stats is old.stats
    assert (old.stats.records, old.stats.suppressed) == (5, 1)  # counted by the new windows
    assert old.stats.alerts >= 1


def test_changes_are_tracked_only_when_asked():
    d = Detector(RULES, Limits())
    assert not d.tracking and all(w.dirty is None for ws in d.windows.values() for w in ws)
    d.observe(rec("C0"), T0)
    assert d.export_changes() == {}
    d.enable_tracking()
    d.observe(rec("C1"), T0 + S)
    ch = d.export_changes()
    assert len(ch) == 1 and len(next(iter(ch.values()))["upserts"]) == 1
    assert d.export_changes() == {}  # cleared


def test_replay_pipeline_keeps_no_window_state(tmp_path):
    pipe = Pipeline(config_from_dict({}), RULES, MemorySink())
    assert not pipe.detector.tracking


def test_evicted_keys_are_exported_as_deletes():
    d = Detector(RULES, Limits(max_window_keys=2))
    d.enable_tracking()
    for i, ip in enumerate(("203.0.113.1", "203.0.113.2", "203.0.113.3")):
        d.observe(rec(f"C{i}", ip=ip), T0 + i * S)
    (e,) = d.export_changes().values()
    assert [k[2] for k in e["deletes"]] == ["203.0.113.1"]
    assert [k[2] for k, _ in e["upserts"]] == ["203.0.113.2", "203.0.113.3"]


def test_window_id_follows_the_definition_not_the_wording(tmp_path):
    (c,) = RULES.correlations
    text = (REPO / "rules" / "t1071_002_file_transfer_protocols.yml").read_text()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "r.yml").write_text(text.replace("level: high", "level: critical"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "r.yml").write_text(text.replace("gt: 3", "gt: 4"))
    (ca,) = load_rules(tmp_path / "a", RECORD_FIELDS).correlations
    (cb,) = load_rules(tmp_path / "b", RECORD_FIELDS).correlations
    assert window_id(ca) == window_id(c) and window_id(c).startswith(c.id + ":")
    assert window_id(cb) != window_id(c)


# -- the store -------------------------------------------------------------------------
def test_store_schema_wal_and_version(tmp_path):
    det, p = opened(tmp_path)
    p.close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "windows", "keys"} <= tables
    db.close()


def test_writes_wait_for_the_flush_interval_then_commit(tmp_path):
    clock = Clock()
    det, p = opened(tmp_path, clock=clock)
    det.observe(rec("C0"), T0)
    det.observe(rec("C1"), T0 + S)
    clock.t += 1.9
    p.tick()
    assert rows(tmp_path) == []  # not yet: batched
    clock.t += 0.2
    p.tick()
    (r,) = rows(tmp_path)
    assert [e[3] for e in json.loads(r[2])] == ["C0", "C1"] and r[3] == 1 and r[4] == -1
    det.observe(rec("C2"), T0 + 2 * S)
    det.observe(rec("C3"), T0 + 3 * S)
    p.close()  # SIGTERM path: the rest is written
    (r,) = rows(tmp_path)
    assert len(json.loads(r[2])) == 4 and r[3] == 0 and r[4] == T0 + 3 * S
    assert json.loads(r[5])["ConnectionCount"] == 4


def test_restart_after_a_crash_alerts_once(tmp_path):
    """The sequence of the daemon test, through the store: 2, crash, 2 more ->
    one alert; a 5th -> none; crash, another -> none."""
    clock = Clock()
    det, p = opened(tmp_path, clock=clock)
    for i in range(2):
        det.observe(rec(f"C{i}"), T0 + i * S)
    clock.t += 2.5
    p.tick()  # committed; then kill -9: no close()
    det, p = opened(tmp_path, clock=clock)
    assert p.restored == 1
    out = []
    for i in range(2, 5):
        out += det.observe(rec(f"C{i}"), T0 + i * S)
    assert counts(out) == [4]
    clock.t += 2.5
    p.tick()
    det, p = opened(tmp_path, clock=clock)  # crashed again
    assert counts(det.observe(rec("C5"), T0 + 5 * S)) == []
    assert det.stats.suppressed == 1


@pytest.mark.parametrize("seed", range(6))
def test_restarts_anywhere_give_the_alerts_of_an_uninterrupted_run(tmp_path, seed):
    """Random traffic over three days (few keys, bursts, records slightly out
    of order), cut at random points by a restart through the SQLite file:
    exactly the alerts of one detector that never restarted. Small bounds so
    eviction and the event cap are exercised too."""
    rnd = random.Random(seed)
    limits = Limits(max_window_keys=3, max_window_events=6)
    t = T0
    evs = []
    for i in range(300):
        t += rnd.choice((1, 5, 60, 600, 3600, 4 * 3600)) * S
        jitter = rnd.choice((0, 0, 0, -30 * S, -300 * S))
        evs.append((rec(f"C{i}", ip=f"203.0.113.{rnd.randrange(5)}", account=rnd.choice("ab")), t + jitter))
    ref = Detector(RULES, limits)
    want = [a for r, ts in evs for a in ref.observe(r, ts)]
    assert len(counts(want)) >= 3, "the scenario must raise alerts to compare"
    cuts = sorted(rnd.sample(range(1, len(evs)), 12))
    got = []
    clock = Clock()
    det, p = opened(tmp_path / f"s{seed}", limits=limits, clock=clock, now_us=T0)
    for i, (r, ts) in enumerate(evs):
        if cuts and i == cuts[0]:
            cuts.pop(0)
            if rnd.random() < 0.5:
                p.close()  # SIGTERM
            else:
                clock.t += 3
                p.tick()  # flushed, then kill -9
            det, p = opened(tmp_path / f"s{seed}", limits=limits, clock=clock, now_us=max(x for _, x in evs[:i]))
        got += det.observe(r, ts)
    assert got == want


def test_a_changed_rule_starts_empty(tmp_path):
    det, p = opened(tmp_path / "st")
    for i in range(3):
        det.observe(rec(f"C{i}"), T0 + i * S)
    p.close()
    (tmp_path / "r").mkdir()
    text = (REPO / "rules" / "t1071_002_file_transfer_protocols.yml").read_text()
    (tmp_path / "r" / "r.yml").write_text(text.replace("gt: 3", "gte: 3"))
    changed = load_rules(tmp_path / "r", RECORD_FIELDS)
    det2, p2 = opened(tmp_path / "st", rules=changed)
    assert p2.restored == 0
    assert counts(det2.observe(rec("C3"), T0 + 3 * S)) == []  # 1 event, not 4
    det3, _ = opened(tmp_path / "st")  # the old definition still has its state
    assert counts(det3.observe(rec("C3"), T0 + 3 * S)) == [4]


def test_old_entries_are_pruned_at_load_and_periodically(tmp_path):
    clock = Clock()
    det, p = opened(tmp_path, clock=clock)
    det.observe(rec("C0", ip="203.0.113.1"), T0)
    det.observe(rec("C1", ip="203.0.113.2"), T0 + DAY)
    p.close()
    assert len(rows(tmp_path)) == 2
    # a day and more than the grace later: the first key is gone at load
    now = T0 + DAY + PRUNE_GRACE_S * S + 1
    det, p = opened(tmp_path, clock=clock, now_us=now)
    assert p.restored == 1 and [json.loads(r[1])[2] for r in rows(tmp_path)] == ["203.0.113.2"]
    # running: the periodic prune removes the second once it is old too
    later = T0 + 2 * DAY + PRUNE_GRACE_S * S + 1
    clock.t += PRUNE_EVERY_S + 1
    p.tick(wallclock=lambda: later / S)
    assert rows(tmp_path) == []


def test_load_keeps_the_most_recent_max_window_keys(tmp_path):
    det, p = opened(tmp_path)
    for i in range(10):
        det.observe(rec(f"C{i}", ip=f"203.0.113.{i}"), T0 + i * S)
    det.observe(rec("C10", ip="203.0.113.0"), T0 + 10 * S)  # .0 is now the most recent
    p.close()
    det, p = opened(tmp_path, limits=Limits(max_window_keys=4))
    (w,) = {id(w): w for ws in det.windows.values() for w in ws}.values()
    assert [k[2] for k in w.keys] == ["203.0.113.7", "203.0.113.8", "203.0.113.9", "203.0.113.0"]
    assert len(rows(tmp_path)) == 4
    p.close()


def test_reload_adopts_the_new_detector(tmp_path):
    det, p = opened(tmp_path)
    det.observe(rec("C0"), T0)
    new = Detector(RULES, Limits())
    new.carry_over(det)  # what the daemon's reload does
    p.adopt(det, new)
    new.observe(rec("C1"), T0 + S)
    p.close()
    (r,) = rows(tmp_path)
    assert [e[3] for e in json.loads(r[2])] == ["C0", "C1"]


def test_a_corrupt_file_is_moved_aside_and_the_windows_start_empty(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_bytes(b"this is not a database" * 300)
    with caplog.at_level(logging.ERROR, logger="xfer-sensor"):
        det, p = opened(tmp_path)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "unusable" in errors[0].getMessage() and ".corrupt-" in errors[0].getMessage()
    aside = list(tmp_path.glob(f"{STATE_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    det.observe(rec("C0"), T0)
    p.close()
    assert len(rows(tmp_path)) == 1  # a fresh, working file


def test_undecodable_rows_are_skipped(tmp_path, caplog):
    det, p = opened(tmp_path)
    det.observe(rec("C0", ip="203.0.113.1"), T0)
    det.observe(rec("C1", ip="203.0.113.2"), T0)
    p.close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    db.execute("UPDATE keys SET events = '[[1,2' WHERE key LIKE '%203.0.113.1%'")
    db.commit()
    db.close()
    with caplog.at_level(logging.INFO, logger="xfer-sensor"):
        det, p = opened(tmp_path)
    assert p.restored == 1 and "1 unreadable" in caplog.text
    # an alert state missing its totals is refused, never a crash when the key is seen again
    assert counts(sum((det.observe(rec(f"C{i}", ip="203.0.113.2"), T0 + i * S) for i in range(2, 5)), [])) == [4]
    p.close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    db.execute("UPDATE keys SET episode = '{\"Uids\": []}' WHERE key LIKE '%203.0.113.2%'")
    db.commit()
    db.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xfer-sensor"):
        det, p = opened(tmp_path)
    assert p.restored == 0 and "2 unreadable" in caplog.text
    assert counts(det.observe(rec("C9", ip="203.0.113.2"), T0 + 9 * S)) == []


def test_an_unusable_state_folder_runs_without_persistence(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.ERROR, logger="xfer-sensor"):
        det, p = opened(blocker / "state")
    assert p.store is None and "without window persistence" in caplog.text
    det.observe(rec("C0"), T0)
    p.tick()
    p.close()  # no-ops, no exception


def test_a_failed_write_is_kept_and_retried(tmp_path, caplog):
    clock = Clock()
    det, p = opened(tmp_path, clock=clock)
    det.observe(rec("C0"), T0)
    real = p.store.db
    p.store.db = sqlite3.connect(f"file:{tmp_path / STATE_FILE}?mode=ro", uri=True)  # writes fail
    with caplog.at_level(logging.ERROR, logger="xfer-sensor"):
        p.flush()
    assert "write failed" in caplog.text and p.write_errors == 1
    p.store.db.close()
    p.store.db = real
    det.observe(rec("C1"), T0 + S)
    p.close()
    (r,) = rows(tmp_path)
    assert [e[3] for e in json.loads(r[2])] == ["C0", "C1"]


def test_config_state_options():
    c = config_from_dict({"state_dir": "/srv/xs", "state_flush_interval": 0.5})
    assert (c.state_dir, c.state_flush_interval) == ("/srv/xs", 0.5)
    assert config_from_dict({}).state_flush_interval == 2.0
    for bad, field in (
        ({"state_flush_interval": 0}, "state_flush_interval"),
        ({"state_flush_interval": "2"}, "state_flush_interval"),
        ({"state_dir": ""}, "state_dir"),
        ({"state_dir": 3}, "state_dir"),
        ({"state_flush": 2}, "state_flush"),
    ):
        with pytest.raises(ConfigError) as e:
            config_from_dict(bad, "x.yaml")
        assert e.value.field == field and "x.yaml" in str(e.value)


def test_the_unit_provides_the_default_state_folder():
    from sensor.detect.winstore import DEFAULT_STATE_DIR

    unit = (REPO / "systemd" / "xfer-sensor.service").read_text()
    assert DEFAULT_STATE_DIR == "/var/lib/xfer-sensor"
    assert "\nStateDirectory=xfer-sensor\n" in unit
    rw = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    assert DEFAULT_STATE_DIR in rw.split("=", 1)[1].split()


# -- the daemon, for real --------------------------------------------------------------
PORT = 0  # set by the ftp_server fixture: a free port (a fixed one may be held by another run)
SERVER = "127.0.0.3"


@pytest.fixture
def ftp_server():
    global PORT
    with banner_server(SERVER) as PORT:
        yield


def sessions(n: int, user: str = "alice") -> None:
    login_sessions(SERVER, PORT, n, user)


def read(path: Path) -> list[dict]:
    return records_of(path, SERVER, PORT)


def stored_uids(state: Path) -> list[str]:
    """The events the daemon committed for our key (empty while there is no file)."""
    if not (state / STATE_FILE).exists():
        return []
    try:
        rs = rows(state)
    except sqlite3.Error:
        return []
    return [e[3] for r in rs if json.loads(r[1])[2] == SERVER for e in json.loads(r[2])]


class Daemon(DaemonProcess):
    def __init__(self, tmp: Path, state: Path):
        self.out = tmp / "out"
        self.rules = tmp / "rules"
        self.cfg = tmp / "config.yaml"
        if not self.rules.exists():
            self.rules.mkdir()
            r = self.rules / "t1071_002_file_transfer_protocols.yml"
            text = (REPO / "rules" / r.name).read_text()
            r.write_text(text.replace("      - 20\n", f"      - {PORT}\n      - 20\n"))
            self.cfg.write_text(
                f"tracked_ports: [{PORT}]\nhome_net: [127.0.0.1/32]\nip_type_overrides: {{'{SERVER}/32': Public}}\n"
                "timeouts: {tcp_closed: 0.3, tcp_attempt: 2}\nlimits: {flow_scan_interval: 0.1}\n"
            )
        super().__init__(
            [
                sys.executable,
                "-m",
                "sensor",
                "run",
                "-i",
                "lo",
                "--out",
                str(self.out),
                "--config",
                str(self.cfg),
                "--rules",
                str(self.rules),
                "--state-dir",
                str(state),
                "--allow-root",
                "--mode",
                "span",
            ],  # the key's account: the FTP login
            REPO,
        )

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        assert self.p.wait(10) == -signal.SIGKILL
        self.err()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        print(self.err().decode(errors="replace"))  # shown when the test fails


@pytest.mark.root
def test_daemon_window_survives_kill_9_restarts(tmp_path, ftp_server):
    state = tmp_path / "state"
    conns = tmp_path / "out" / "connections.jsonl"
    alerts = tmp_path / "out" / "alerts.jsonl"
    d = Daemon(tmp_path, state)
    try:
        assert b"0 key(s) restored" in d.err()
        sessions(2)
        wait_for(lambda: len(read(conns)) == 2, what="2 connection records")
        # committed by the periodic flush while the daemon runs, then SIGKILL: nothing is flushed at exit
        wait_for(lambda: len(stored_uids(state)) == 2, what="the 2 events in the state file")
        d.kill9()
        assert read(alerts) == []

        d = Daemon(tmp_path, state)
        assert b"1 key(s) restored" in d.err()
        sessions(2)
        wait_for(lambda: len(read(conns)) == 4, what="4 connection records")
        wait_for(lambda: len(read(alerts)) == 1, what="the alert after the restart")
        (a,) = read(alerts)
        assert (a["RemoteIP"], a["RemotePort"], a["AccountName"], a["ConnectionCount"]) == (SERVER, PORT, "alice", 4)
        assert a["Uids"] == [c["Uid"] for c in read(conns)]  # both runs' connections counted
        sessions(1)  # the 5th joins the alert
        wait_for(lambda: len(read(conns)) == 5, what="5 connection records")
        wait_for(lambda: len(stored_uids(state)) == 5, what="5 events stored")
        assert len(read(alerts)) == 1

        # a reload in between (the carried window keeps being written), then SIGKILL again
        d.p.send_signal(signal.SIGHUP)
        wait_for(lambda: b"reloaded" in d.err(), what="the reload")
        sessions(1)
        wait_for(lambda: len(read(conns)) == 6, what="6 connection records")
        wait_for(lambda: len(stored_uids(state)) == 6, what="6 events stored")
        d.kill9()

        d = Daemon(tmp_path, state)
        sessions(1)
        wait_for(lambda: len(read(conns)) == 7, what="7 connection records")
        wait_for(lambda: len(stored_uids(state)) == 7, what="7 events stored")
        assert len(read(alerts)) == 1, read(alerts)  # the alert is not raised again
        # SIGTERM writes what is pending and exits cleanly
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
        assert b"Traceback" not in d.err()
    finally:
        d.stop()


@pytest.mark.root
def test_daemon_with_a_corrupt_state_file_logs_starts_empty_and_works(tmp_path, ftp_server):
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(os.urandom(8192))
    d = Daemon(tmp_path, state)
    try:
        err = d.err().decode()
        assert err.count("ERROR") == 1 and "unusable" in err and ".corrupt-" in err, err
        assert len(list(state.glob(f"{STATE_FILE}.corrupt-*"))) == 1
        sessions(4)
        wait_for(lambda: len(read(tmp_path / "out" / "alerts.jsonl")) == 1, what="the alert")
        wait_for(lambda: len(stored_uids(state)) == 4, what="4 events in the new file")
        d.p.send_signal(signal.SIGTERM)
        assert d.p.wait(10) == 0
    finally:
        d.stop()
