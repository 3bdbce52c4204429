"""The endpoint/span-port daemon: live capture into the same pipeline as replay.

``python -m sensor.daemon -i IFACE [--config FILE] [--rules DIR] [--out DIR]``
(also ``xfer-sensor run``). SIGHUP reopens the outputs and reloads config and
rules (a bad one is refused); SIGTERM writes everything and exits. When no
packet comes, a heartbeat moves the pipeline's clock. Modes, signals,
privileges, systemd, metrics and the state folder: docs/daemon.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sensor.attribution.book import AttributionBook, endpoint_config
from sensor.attribution.recording import comment_for
from sensor.core.config import Config, ConfigError, load_config, parse_listen, parse_workers
from sensor.detect.detector import Detector
from sensor.detect.rules import RuleError, RuleSet, load_rules
from sensor.detect.winstore import DEFAULT_STATE_DIR, WindowPersistence
from sensor.io import metrics
from sensor.io.capture import CaptureError
from sensor.io.live import DEFAULT_TIMEOUT_MS, LiveCapture
from sensor.io.outdir import check_outdir
from sensor.io.privileges import drop_daemon_caps
from sensor.io.ring import Recorder
from sensor.io.sdnotify import SdNotifier
from sensor.io.sinks import build_outputs
from sensor.pipeline import Pipeline
from sensor.records.mde import RECORD_FIELDS, RecordBuilder
from sensor.workers import WorkerLink, resolve_workers, ring_share, run_workers

log = logging.getLogger("xfer-sensor")

POLL_S = 0.25  # longest wait for packets before a heartbeat
BOUNDS_CHECK_S = 1.0  # wall-clock seconds between two checks of the flow table's bounds (a log line per burst)
STATUS_EVERY_S = 300.0  # counters to the journal (default of the status_interval option)
ATTRIBUTION_SETTLE_S = 0.1  # on SIGTERM, wait this long for lookups in flight
DRAIN_S = 1.0  # longest wait on SIGTERM for packets already captured


def start_helper(cfg: Config, interfaces: Sequence[str]):
    from sensor.attribution.attributor import start_helper as start  # endpoint mode only: psutil, /proc

    return start(cfg.tracked_ports, interfaces)


class Daemon:
    def __init__(
        self,
        interfaces: Sequence[str],
        config_path: str | None,
        rules_path: str,
        outdir: Path,
        mode: str = "endpoint",
        metrics_listen: tuple[str, int] | None | bool = True,
        state_dir: str | None = None,
        filters: Sequence[str] = (),
        pcap_dir: str | None = None,
        link: WorkerLink | None = None,
    ) -> None:
        # link: this daemon is one worker of `run --workers N` (sensor/workers.py): its share of
        # the traffic, its records and figures to the supervisor, the supervisor's attributions
        self.link = link
        self.config_path = config_path
        self.rules_path = rules_path
        self.filters = tuple(filters)  # --filters (the config's filters: are read with each config)
        self.endpoint = mode == "endpoint"
        self.cfg: Config = self._config(load_config(config_path))
        self.rules: RuleSet = self._rules(self.cfg)
        if self.cfg.output.files:
            check_outdir(outdir)  # an unusable --out: exit 2 before capturing
        # the config's outputs (profile, files, stdout, syslog), each behind a
        # bounded queue that never blocks capture (overflow is counted)
        self.sink = (
            link.outputs(self.cfg.output, self.cfg, self.rules)
            if link is not None
            else build_outputs(
                self.cfg.output, config=self.cfg, rules=self.rules, outdir=outdir, block=False, truncate=False
            )
        )
        self.book = AttributionBook() if self.endpoint else None
        self.pipe = Pipeline(self.cfg, self.rules, self.sink, attribution=self.book)
        # the flight recorder (--pcap-dir): the tracked packets, with their process (sensor/io/ring.py)
        ring_dir = pcap_dir or self.cfg.pcap_dir
        self.recorder = None
        if ring_dir:
            where, ring = (ring_dir, self.cfg.pcap_ring) if link is None else link.ring(ring_dir, self.cfg.pcap_ring)
            self.recorder = Recorder(where, ring)  # with --workers: DIR/worker-K-of-N, 1/N of the bounds
        # rule windows from the last run (a bad state file is logged and moved aside, never fatal)
        state = Path(state_dir or self.cfg.state_dir or DEFAULT_STATE_DIR)
        self.persist = WindowPersistence.open(
            link.state_dir(state) if link is not None else state,
            self.pipe.detector,
            self.cfg.state_flush_interval,
            self.cfg.limits.max_window_keys,
        )
        self.capture = LiveCapture(interfaces)
        if link is not None:
            self.capture.install_filters(link.filters(self.pipe.portset.filter_ports))
            link.check_filters(self.capture.filters)
        else:
            self.capture.install_filters(self.pipe.capture_filters())
        self.helper = None
        # /metrics on loopback (metrics_listen; True: as the config says)
        self.started = time.time()
        self.allow_base: dict[tuple[str, str], tuple[int, int]] = {}  # allow hits of reloaded-away rules
        listen = self.cfg.metrics_listen if metrics_listen is True else metrics_listen
        self.metrics_server: metrics.MetricsServer | WorkerLink | None = link
        if listen and link is None:
            try:
                self.metrics_server = metrics.MetricsServer(*listen).start()
            except metrics.MetricsError:
                self.capture.close()
                raise
            self.metrics_server.publish(self.snapshot())
            log.info("metrics on %s", self.metrics_server.url)
        if self.endpoint:  # before the capabilities go: the helper's tap needs CAP_NET_RAW
            self.helper = link.helper if link is not None else start_helper(self.cfg, interfaces)
        # the captures are open and the helper runs: no capability is needed any more
        drop_daemon_caps(log)
        self.notify = SdNotifier()
        self.hup = False
        self.stop = False
        self.exit_code = 0

    def _config(self, cfg: Config) -> Config:
        return endpoint_config(cfg) if self.endpoint else cfg

    def collect_attributions(self) -> int:
        """Move the helper's finished lookups into the pipeline's book."""
        if self.helper is None:
            return 0
        got = self.helper.poll_timed()
        assert self.book is not None  # the helper runs in endpoint mode only, which has the book
        for key, a, t in got:
            # the first packet's kernel time (the capture's clock); else when the tap saw it
            ts = t[2] if len(t) > 2 and t[2] else t[0] if t else 0.0
            self.book.add(key, a, int(ts * 1e6) if ts else None)
            if self.recorder is not None:
                first = int(ts * 1e6) if ts else None
                note = comment_for(a, first, self.cfg.limits.max_comment_chars)
                if note:
                    self.recorder.annotate(key, first, note, bool(a.InitiatingProcessFileName))
        if got:
            self.pipe.attributions_arrived()
        return len(got)

    # -- signals ---------------------------------------------------------------
    def _on_hup(self, signum, frame) -> None:
        self.hup = True

    def _rules(self, cfg: Config) -> RuleSet:
        """The rules folder with the filters of ``cfg`` and --filters applied;
        the match cap is the running one (limits change on restart only)."""
        cap = self.cfg.limits.max_match_chars
        return load_rules(self.rules_path, RECORD_FIELDS, cap, [*cfg.filters, *self.filters])

    def _on_term(self, signum, frame) -> None:
        self.stop = True

    def reload(self) -> None:
        self.notify.reloading("reloading")
        self.sink.request_reopen()
        if self.recorder is not None:
            self.recorder.request_reopen()
        try:
            cfg = self._config(load_config(self.config_path))
            # limits change on restart only: the running cap, as the running rules have
            rules = self._rules(cfg)
        except (ConfigError, RuleError) as e:
            log.error("reload refused, keeping the running config and rules: %s", e)
            self.notify.ready("reload refused: " + str(e)[:200])
            return
        except Exception as e:  # a loader bug must not stop capture: refuse the reload, say what
            log.error("reload refused, keeping the running config and rules: unexpected %s: %s", type(e).__name__, e)
            self.notify.ready("reload refused: " + type(e).__name__)
            return
        restart_only = [
            f
            for f in (
                "tracked_ports",
                "timeouts",
                "limits",
                "output",
                "metrics_listen",
                "state_dir",
                "state_flush_interval",
                "pcap_dir",
                "pcap_ring",
            )
            if getattr(cfg, f) != getattr(self.cfg, f)
        ]
        if restart_only:
            log.warning("options %s change only on restart; the others are applied", ", ".join(restart_only))
        self.cfg = cfg
        self.pipe.records = RecordBuilder(cfg, endpoint=self.endpoint)
        old = self.pipe.detector
        new = Detector(rules, self.pipe.cfg.limits)
        kept = new.carry_over(old)
        self.persist.adopt(old, new)
        self.pipe.detector = new
        self.pipe.attempt_policy(cfg, rules)  # a new rule may count unanswered attempts: no aggregation then
        for entry in self.rules.allow_entries:  # keep the suppressed counts monotonic across reloads
            k = (entry.rule_id, entry.name)
            h, x = self.allow_base.get(k, (0, 0))
            self.allow_base[k] = (h + entry.hits, x + entry.expired_hits)
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
    def snapshot(self):
        """Every figure, read here on the daemon thread (sensor/io/metrics.py)."""
        st = self.pipe.stats()
        if self.helper is not None:
            st["attribution"]["helper"] = self.helper.figures()
        return metrics.collect(
            pipe_stats=st,
            capture_stats=self.capture.read_stats(),
            flows_active=self.pipe.flows.active(),
            allow_entries=self.rules.allow_entries,
            allow_base=self.allow_base,
            outputs=self.sink.stats(),
            start_time=self.started,
            state_write_errors=self.persist.write_errors,
            recording=self.recorder.stats() if self.recorder is not None else None,
        )

    def status_line(self) -> str:
        return metrics.summary(self.snapshot())

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        ifaces = ", ".join(i for i, _, _ in self.capture.handles)
        log.info("capturing on %s", ifaces)
        self.notify.ready(f"capturing on {ifaces}")
        watchdog = self.notify.watchdog_interval()
        next_wd = time.monotonic()
        next_status = time.monotonic() + self.cfg.status_interval
        next_publish = time.monotonic() + metrics.PUBLISH_EVERY_S
        next_bounds = time.monotonic() + BOUNDS_CHECK_S
        handler_for: Callable[[int], Callable[[int, bytes], None]] = self.pipe.handler_for
        if self.recorder is not None:
            handler_for = self.recorder.wrap(handler_for)
        wake = [self.link.chan.fileno()] if self.link is not None else []  # the supervisor's attributions
        try:
            while not self.stop:
                self.collect_attributions()  # before the packets whose flows may end now
                got = self.capture.poll(handler_for, POLL_S, wake)
                if not got:
                    self.pipe.flows.advance(time.time_ns() // 1000)  # heartbeat
                if self.hup:
                    self.hup = False
                    self.reload()
                self.persist.tick()
                if self.link is not None and not self.link.pump():
                    log.error("the supervisor is gone; stopping")
                    break
                if self.helper is not None and not self.stop and not self.helper.alive():
                    log.error("the attribution helper exited; stopping so the service restarts with it")
                    self.exit_code = 1
                    break
                now = time.monotonic()
                if now >= next_bounds:  # the flow table's bounds: a line per burst (Pipeline.bound_news)
                    for line in self.pipe.bound_news():
                        log.warning("%s", line)
                    next_bounds = now + BOUNDS_CHECK_S
                if watchdog is not None and now >= next_wd:
                    self.notify.watchdog()
                    next_wd = now + watchdog
                if now >= next_status:
                    line = self.status_line()
                    log.info("%s", line)
                    self.notify.status(line)
                    next_status = now + self.cfg.status_interval
                if self.metrics_server is not None and now >= next_publish:
                    self.metrics_server.publish(self.snapshot())
                    next_publish = now + metrics.PUBLISH_EVERY_S
        finally:
            self.notify.stopping("flushing")
            self.drain(handler_for)
            if self.helper is not None:  # lookups still in flight for the last connections
                time.sleep(ATTRIBUTION_SETTLE_S)
                self.collect_attributions()
            self.pipe.finish()
            if self.recorder is not None:
                self.recorder.close()
            self.persist.close()
            self.sink.close()
            self.sink.log_losses()
            final = self.status_line()
            if self.metrics_server is not None:
                self.metrics_server.publish(self.snapshot())  # the last figures (a worker's: its sums' share)
                self.metrics_server.close()
            self.capture.close()
            if self.helper is not None:
                self.helper.stop()
            log.info("stopped: %s", final)
        return self.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    from sensor.core.runtime import tune_gc
    from sensor.detect.rules import default_rules_dir

    tune_gc()
    ap = argparse.ArgumentParser(prog="xfer-sensor run", description="capture live and write records")
    ap.add_argument("-i", "--interface", action="append", required=True, help="interface (repeatable)")
    ap.add_argument("--config", help="config YAML (default /etc/xfer-sensor/config.yaml when present)")
    ap.add_argument("--rules", help="rules folder (default: the shipped rules)")
    ap.add_argument(
        "--filters",
        action="append",
        default=[],
        metavar="PATH",
        help="allow filters: a Sigma filter file or folder (repeatable; beside the config's filters:)",
    )
    ap.add_argument("--out", default="/var/log/xfer-sensor", help="folder for the .jsonl files")
    ap.add_argument(
        "--mode",
        choices=("endpoint", "span"),
        default="endpoint",
        help="endpoint: this host's traffic, with the process of each connection (default); "
        "span: a mirror port, no attribution",
    )
    ap.add_argument(
        "--state-dir",
        help="folder for the rule-window state that survives restarts "
        f"(default: the config's state_dir, else {DEFAULT_STATE_DIR})",
    )
    ap.add_argument(
        "--allow-root",
        action="store_true",
        help="run as uid 0 (otherwise refused: run as an unprivileged user with the "
        "capabilities of systemd/xfer-sensor.service)",
    )
    ap.add_argument(
        "--metrics-listen",
        metavar="ADDR:PORT",
        help="serve Prometheus /metrics on this loopback address, or 'off' "
        "(default: the config's metrics_listen, else off)",
    )
    ap.add_argument(
        "--pcap-dir",
        metavar="DIR",
        help="keep a ring of pcapng files of the tracked packets here, each packet of an attributed "
        "connection commented with its process (default: the config's pcap_dir, else off; "
        "bounds: the config's pcap_ring)",
    )
    ap.add_argument(
        "--workers",
        metavar="N",
        help="capture processes sharing the traffic by host pair: a number or 'auto' "
        "(default: the config's workers, else 1; docs/daemon.md, Several cores)",
    )
    args = ap.parse_args(argv)
    if os.geteuid() == 0 and not args.allow_root:
        print(
            "xfer-sensor: error: refusing to run as root; run as an unprivileged user with "
            "CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH "
            "(see systemd/xfer-sensor.service), or pass --allow-root",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="xfer-sensor: %(levelname)s: %(message)s")
    config = args.config
    if config is None and Path("/etc/xfer-sensor/config.yaml").exists():
        config = "/etc/xfer-sensor/config.yaml"
    try:
        listen = (
            True
            if args.metrics_listen is None
            else parse_listen("command line", "--metrics-listen", args.metrics_listen)
        )
        rules = args.rules or str(default_rules_dir())

        def daemon(link: WorkerLink | None = None) -> Daemon:
            return Daemon(
                args.interface,
                config,
                rules,
                Path(args.out),
                mode=args.mode,
                metrics_listen=listen,
                state_dir=args.state_dir,
                filters=args.filters,
                pcap_dir=args.pcap_dir,
                link=link,
            )

        cfg = load_config(config)
        n = resolve_workers(
            cfg.workers if args.workers is None else parse_workers("command line", "--workers", args.workers)
        )
        if n > 1 and (args.pcap_dir or cfg.pcap_dir):  # each worker's ring: 1/N of the bounds (refused before forking)
            ring_share(cfg.pcap_ring, n)
        if n > 1:
            return _supervise(n, daemon, cfg, rules, args, listen)
        d = daemon()
    except (ConfigError, RuleError, CaptureError, metrics.MetricsError) as e:
        print(f"xfer-sensor: error: {e}", file=sys.stderr)
        return 2
    return d.run()


def _supervise(n: int, daemon, cfg: Config, rules_path: str, args: argparse.Namespace, listen) -> int:
    """``run --workers n``: n workers, each this daemon on its share (sensor/workers.py)."""
    endpoint = args.mode == "endpoint"
    if endpoint:
        cfg = endpoint_config(cfg)
    rules = load_rules(rules_path, RECORD_FIELDS, cfg.limits.max_match_chars, [*cfg.filters, *args.filters])
    if cfg.output.files:
        check_outdir(Path(args.out))

    def worker(link: WorkerLink) -> int:
        try:
            d = daemon(link)
        except (ConfigError, RuleError, CaptureError, metrics.MetricsError) as e:
            link.error(str(e))
            return 2
        link.ready(d.capture.filters, d)
        code = d.run()
        link.bye()
        return code

    return run_workers(
        n,
        worker,
        cfg=cfg,
        rules=rules,
        outdir=Path(args.out),
        metrics_listen=cfg.metrics_listen if listen is True else listen,
        start_helper=(lambda: start_helper(cfg, args.interface)) if endpoint else None,
        interfaces=args.interface,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
