"""The endpoint/span-port daemon: live capture into the same pipeline as replay.

``python -m sensor.daemon -i IFACE [--config FILE] [--rules DIR] [--out DIR]``
(also ``xfer-sensor run``). Signals:
- SIGHUP: reopen the output files (logrotate with rename or copytruncate),
  reload config and rules; a config or rule that does not load is refused,
  logged, and the running ones stay. Rule windows of correlations whose
  definition did not change are kept.
- SIGTERM/SIGINT: end every flow, write every record, exit (well within 5 s).
Rule windows survive restarts: kept in SQLite under ``--state-dir``
(sensor/winstore.py), written every ``state_flush_interval`` s and at SIGTERM.
Privileges: refuses uid 0 unless ``--allow-root``; once the capture is open
it keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (attribution).
systemd: READY=1 once capturing, WATCHDOG=1 every half $WATCHDOG_USEC,
STATUS= with the counters, RELOADING=1/READY=1 around a reload, STOPPING=1.

Time: packets carry the kernel's timestamps; when no packet arrives the
daemon advances the pipeline with the clock (a heartbeat), so idle flows
still time out -- the pipeline itself only ever sees timestamps.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from .capture import CaptureError
from .config import Config, ConfigError, load_config
from .detect import Detector
from .live import DEFAULT_TIMEOUT_MS, LiveCapture
from .pipeline import Pipeline
from .records import RECORD_FIELDS, RecordBuilder
from .rules import RuleError, RuleSet, load_rules
from .privileges import RUNNING_CAPS, keep_only
from .sdnotify import SdNotifier
from .sinks import build_outputs
from .winstore import DEFAULT_STATE_DIR, WindowPersistence

log = logging.getLogger("xfer-sensor")

POLL_S = 0.25            # longest wait for packets before a heartbeat
STATUS_EVERY_S = 300.0   # counters to the journal
DRAIN_S = 1.0            # longest wait on SIGTERM for packets already captured


class Daemon:
    def __init__(self, interfaces: Sequence[str], config_path: str | None, rules_path: str,
                 outdir: Path, state_dir: str | None = None) -> None:
        self.config_path = config_path
        self.rules_path = rules_path
        self.cfg: Config = load_config(config_path)
        self.rules: RuleSet = load_rules(rules_path, RECORD_FIELDS)
        # the config's outputs (profile, files, stdout, syslog), each behind a
        # bounded queue that never blocks capture (overflow is counted)
        self.sink = build_outputs(self.cfg.output, config=self.cfg, rules=self.rules, outdir=outdir,
                                  block=False, truncate=False)
        self.pipe = Pipeline(self.cfg, self.rules, self.sink)
        # rule windows from the last run (a bad state file is logged and moved aside, never fatal)
        self.persist = WindowPersistence.open(state_dir or self.cfg.state_dir or DEFAULT_STATE_DIR,
                                              self.pipe.detector, self.cfg.state_flush_interval,
                                              self.cfg.limits.max_window_keys)
        self.capture = LiveCapture(interfaces)
        self.capture.install_filters(self.pipe.capture_filters())
        # the capture is open: from here on only attribution's capabilities
        try:
            eff = keep_only(RUNNING_CAPS)
            log.info("capabilities kept: CapEff=%016x", eff)
        except OSError as e:
            log.warning("could not drop capabilities: %s", e)
        self.notify = SdNotifier()
        self.hup = False
        self.stop = False

    # -- signals ---------------------------------------------------------------
    def _on_hup(self, signum, frame) -> None:
        self.hup = True

    def _on_term(self, signum, frame) -> None:
        self.stop = True

    def reload(self) -> None:
        self.notify.reloading("reloading")
        self.sink.request_reopen()
        try:
            cfg = load_config(self.config_path)
            rules = load_rules(self.rules_path, RECORD_FIELDS)
        except (ConfigError, RuleError) as e:
            log.error("reload refused, keeping the running config and rules: %s", e)
            self.notify.ready("reload refused: " + str(e)[:200])
            return
        restart_only = [f for f in ("tracked_ports", "timeouts", "limits", "output", "state_dir",
                                    "state_flush_interval")
                        if getattr(cfg, f) != getattr(self.cfg, f)]
        if restart_only:
            log.warning("options %s change only on restart; the others are applied", ", ".join(restart_only))
        self.cfg = cfg
        self.pipe.records = RecordBuilder(cfg)
        old = self.pipe.detector
        new = Detector(rules, self.pipe.cfg.limits)
        kept = 0
        for rid, windows in new.windows.items():
            for w in windows:
                for ow in old.windows.get(rid, ()):
                    if ow.rule == w.rule:   # same definition: carry its state over
                        w.keys, w.episodes = ow.keys, ow.episodes
                        kept += 1
        new.stats = old.stats
        self.persist.adopt(old, new)
        self.pipe.detector = new
        self.rules = rules
        log.info("reloaded %s and %s (%d rule window(s) kept)", self.config_path or "defaults", self.rules_path, kept)
        self.notify.ready("reloaded")

    def drain(self, handler_for) -> None:
        """Before stopping, take what the kernel already captured: libpcap
        hands packets over in blocks retired after its read timeout, so wait
        a little past it until nothing more comes (bounded by DRAIN_S)."""
        end = time.monotonic() + DRAIN_S
        quiet_since = time.monotonic()
        while time.monotonic() < end:
            if self.capture.poll(handler_for, 0.05):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 2 * DEFAULT_TIMEOUT_MS / 1000:
                break

    # -- loop ---------------------------------------------------------------------
    def status_line(self) -> str:
        st = self.pipe.stats()
        cap = self.capture.read_stats()
        drops = sum(s.kernel_dropped + s.interface_dropped for s in cap.values())
        recv = sum(s.received for s in cap.values())
        return (f"packets {recv}, dropped {drops}, flows active {len(self.pipe.flows.flows)}, "
                f"connections {sum(st['connections'].values())}, alerts {st['detect']['alerts']}")

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        ifaces = ", ".join(i for i, _, _ in self.capture.handles)
        log.info("capturing on %s", ifaces)
        self.notify.ready(f"capturing on {ifaces}")
        watchdog = self.notify.watchdog_interval()
        next_wd = time.monotonic()
        next_status = time.monotonic() + STATUS_EVERY_S
        handler_for = self.pipe.handler_for
        try:
            while not self.stop:
                got = self.capture.poll(handler_for, POLL_S)
                if not got:
                    self.pipe.flows.advance(time.time_ns() // 1000)   # heartbeat
                if self.hup:
                    self.hup = False
                    self.reload()
                self.persist.tick()
                now = time.monotonic()
                if watchdog is not None and now >= next_wd:
                    self.notify.watchdog()
                    next_wd = now + watchdog
                if now >= next_status:
                    line = self.status_line()
                    log.info("%s", line)
                    self.notify.status(line)
                    next_status = now + STATUS_EVERY_S
        finally:
            self.notify.stopping("flushing")
            self.drain(handler_for)
            self.pipe.finish()
            self.persist.close()
            self.sink.close()
            self.capture.close()
            log.info("stopped: %s", self.status_line() if self.capture.handles else "capture closed")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import default_rules_dir
    ap = argparse.ArgumentParser(prog="xfer-sensor run", description="capture live and write records")
    ap.add_argument("-i", "--interface", action="append", required=True, help="interface (repeatable)")
    ap.add_argument("--config", help="config YAML (default /etc/xfer-sensor/config.yaml when present)")
    ap.add_argument("--rules", help="rules folder (default: the shipped rules)")
    ap.add_argument("--out", default="/var/log/xfer-sensor", help="folder for the .jsonl files")
    ap.add_argument("--state-dir", help="folder for the rule-window state that survives restarts "
                    f"(default: the config's state_dir, else {DEFAULT_STATE_DIR})")
    ap.add_argument("--allow-root", action="store_true",
                    help="run as uid 0 (otherwise refused: run as an unprivileged user with the "
                         "capabilities of systemd/xfer-sensor.service)")
    args = ap.parse_args(argv)
    if os.geteuid() == 0 and not args.allow_root:
        print("xfer-sensor: error: refusing to run as root; run as an unprivileged user with "
              "CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH "
              "(see systemd/xfer-sensor.service), or pass --allow-root", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="xfer-sensor: %(levelname)s: %(message)s")
    config = args.config
    if config is None and Path("/etc/xfer-sensor/config.yaml").exists():
        config = "/etc/xfer-sensor/config.yaml"
    try:
        d = Daemon(args.interface, config, args.rules or str(default_rules_dir()), Path(args.out), args.state_dir)
    except (ConfigError, RuleError, CaptureError) as e:
        print(f"xfer-sensor: error: {e}", file=sys.stderr)
        return 2
    return d.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
