"""Metrics: one snapshot of the daemon's counters, rendered two ways.

``collect`` (daemon thread only) builds a never-mutated snapshot, ``render``
writes it as Prometheus text 0.0.4, ``summary`` as one journal line;
``MetricsServer`` serves ``GET /metrics`` on loopback from the latest
*published* snapshot only, never touching pipeline objects. The metrics:
docs/daemon.md.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any

log = logging.getLogger("xfer-sensor")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PUBLISH_EVERY_S = 1.0  # wall-clock seconds between two snapshots
MAX_SCRAPES_IN_FLIGHT = 4  # concurrent requests served; more get 503
REQUEST_TIMEOUT_S = 5.0  # a slow client is dropped after this
# attribution sources always exported (zero when absent), so a dashboard has every series
ATTRIBUTION_SOURCES = ("socket", "uid-only", "linked-control-connection", "none")
DECODE_ERRORS = (
    "truncated",
    "malformed",
    "unknown_linktype",
    "bad_ip_checksum",
    "bad_tcp_checksum",
    "bad_udp_checksum",
)


class MetricsError(OSError):
    """The metrics endpoint could not be opened."""


def freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return MappingProxyType({k: freeze(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(freeze(x) for x in v)
    return v


def collect(
    *,
    pipe_stats: Mapping[str, Any],
    capture_stats: Mapping[str, Any],
    flows_active: int,
    allow_entries: Iterable[Any] = (),
    outputs: Mapping[str, Any] | None = None,
    start_time: float = 0.0,
    allow_base: Mapping[tuple, tuple[int, int]] | None = None,
    state_write_errors: int = 0,
    recording: Mapping[str, Any] | None = None,
) -> Mapping:
    """A read-only snapshot (nested ``MappingProxyType``) of every figure.

    ``capture_stats``: interface -> IfaceStats (sensor/io/live.py);
    ``allow_entries``: the rules' AllowEntry objects (``hits`` = events suppressed);
    ``allow_base``: counts of entries replaced by a reload, added so the
    counters never go backwards; ``state_write_errors``: failed commits of
    the rule-window state file."""
    allow: dict[tuple[str, str], int] = {}
    for (rid, name), (hits, _exp) in (allow_base or {}).items():
        allow[(rid, name)] = allow.get((rid, name), 0) + hits
    for e in allow_entries:
        k = (e.rule_id, e.name)
        allow[k] = allow.get(k, 0) + e.hits
    att = pipe_stats.get("attribution") or {}
    by_source = {s: 0 for s in ATTRIBUTION_SOURCES}
    for s, n in (att.get("by_source") or {}).items():
        by_source[str(s)] = int(n)
    snap = {
        "time": time.time(),
        "start_time": start_time,
        "interfaces": {
            i: {
                "received": s.received,
                "kernel_received": s.kernel_received,
                "kernel_dropped": s.kernel_dropped,
                "interface_dropped": s.interface_dropped,
            }
            for i, s in capture_stats.items()
        },
        "decoder": dict(pipe_stats.get("decoder", {})),
        "flows": dict(pipe_stats.get("flows", {}), active=flows_active),
        "attempts": dict(pipe_stats.get("attempts", {})),
        "expectations": dict(pipe_stats.get("expectations", {})),
        "connections": dict(pipe_stats.get("connections", {})),
        "detect": dict(pipe_stats.get("detect", {})),
        "allow": allow,
        "attribution": {
            "by_source": by_source,
            "misses": int(att.get("misses") or 0),
            "late": int(att.get("late") or 0),
            "helper": dict(att.get("helper") or {}),
        },
        "weird": dict(pipe_stats.get("weird", {})),
        "outputs": dict(outputs or {}),
        "state": {"write_errors": state_write_errors},
        "recording": dict(recording or {}),  # the flight recorder (sensor/io/ring.py), when on
    }
    return freeze(snap)


# -- text exposition 0.0.4 ------------------------------------------------------------------


def _escape_label(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    f = float(v)
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    return repr(f)


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[Mapping[str, Any], Any]]) -> None:
        name = "xfer_sensor_" + name
        assert kind != "counter" or name.endswith("_total"), name
        self.lines.append(f"# HELP {name} {_escape_help(help_)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                ls = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{ls}}} {_num(value)}")
            else:
                self.lines.append(f"{name} {_num(value)}")

    def one(self, name: str, kind: str, help_: str, value: Any) -> None:
        self.family(name, kind, help_, [({}, value)])


def render(snap: Mapping[str, Any]) -> str:
    o = _Out()
    ifs = snap["interfaces"]
    o.family(
        "packets_received_total",
        "counter",
        "Packets handed to the sensor by libpcap, per interface.",
        [({"interface": i}, s["received"]) for i, s in ifs.items()],
    )
    o.family(
        "packets_kernel_received_total",
        "counter",
        "Packets that passed the capture filter in the kernel (pcap_stats ps_recv, drops included).",
        [({"interface": i}, s["kernel_received"]) for i, s in ifs.items()],
    )
    o.family(
        "packets_dropped_total",
        "counter",
        "Packets lost before the sensor saw them: by='kernel' (capture buffer full, ps_drop), "
        "by='interface' (the NIC or driver, ps_ifdrop).",
        [({"interface": i, "by": by}, s[f"{by}_dropped"]) for i, s in ifs.items() for by in ("kernel", "interface")],
    )
    dec = snap["decoder"]
    o.one(
        "packets_decoded_total",
        "counter",
        "Frames the decoder read (every frame the capture delivered).",
        dec.get("packets", 0),
    )
    o.family(
        "decode_errors_total",
        "counter",
        "Packets the decoder could not use, by kind.",
        [({"kind": k}, dec.get(k, 0)) for k in DECODE_ERRORS],
    )
    o.one(
        "packets_checksum_offloaded_total",
        "counter",
        "Packets whose partial checksum was accepted as checksum offload (checksum_validation: auto).",
        dec.get("checksum_offloaded", 0),
    )
    fl = snap["flows"]
    o.one("flows_active", "gauge", "Flows tracked right now.", fl.get("active", 0))
    o.one("flows_active_max", "gauge", "Most flows tracked at once since start.", fl.get("active_max", 0))
    o.one("flows_created_total", "counter", "Flows created.", fl.get("created", 0))
    o.one("flows_ended_total", "counter", "Flows ended (timed out, closed, evicted or flushed).", fl.get("ended", 0))
    o.one("flows_expired_total", "counter", "Flows ended by their idle timeout.", fl.get("expired", 0))
    o.one(
        "flows_evicted_total",
        "counter",
        "Flows evicted because the flow table was full (limits.max_flows).",
        fl.get("evicted", 0),
    )
    o.one(
        "flows_emergency",
        "gauge",
        "1 while the flow table is in emergency mode (shortened timeouts).",
        fl.get("emergency", 0),
    )
    o.one(
        "flows_emergency_entered_total",
        "counter",
        "Times the flow table entered emergency mode (90 % of limits.max_flows).",
        fl.get("emergency_entered", 0),
    )
    at = snap.get("attempts") or {}
    o.one(
        "attempts_aggregated_total",
        "counter",
        "Unanswered attempts (bare SYNs) that ended while the flow table was in emergency mode, counted in "
        "connection_attempts records instead of a connection record each (attempt_records: aggregate).",
        at.get("aggregated", 0),
    )
    o.one(
        "attempt_groups_written_total",
        "counter",
        "connection_attempts weird records written (groups of unanswered attempts).",
        at.get("groups", 0),
    )
    o.one(
        "expectations_dropped_total",
        "counter",
        "Expected connections (FTP data channels, TFTP transfers) dropped because their table was full.",
        (snap.get("expectations") or {}).get("dropped", 0),
    )
    o.family(
        "connections_total",
        "counter",
        "Connection records written, by ActionType.",
        [({"action_type": a}, n) for a, n in sorted(snap["connections"].items())],
    )
    det = snap["detect"]
    o.one("alerts_total", "counter", "Alerts raised.", det.get("alerts", 0))
    allow = snap["allow"]
    o.family(
        "alerts_suppressed_total",
        "counter",
        "Detections not alerted: reason='allow_entry' (an allow filter suppressed the event), "
        "reason='already_raised' (the key's alert was raised and has not re-armed).",
        [({"reason": "allow_entry"}, sum(allow.values())), ({"reason": "already_raised"}, det.get("suppressed", 0))],
    )
    o.family(
        "allow_entry_suppressed_total",
        "counter",
        "Events suppressed per allow filter (rule id, filter name or id).",
        [({"rule": r, "filter": s}, n) for (r, s), n in sorted(allow.items())],
    )
    o.one("detection_matches_total", "counter", "Records that matched a detection rule.", det.get("matched", 0))
    o.one(
        "rule_keys_evicted_total",
        "counter",
        "Correlation group keys evicted (limits.max_window_keys).",
        det.get("keys_evicted", 0),
    )
    att = snap["attribution"]
    o.family(
        "attributions_total",
        "counter",
        "Connections attributed, by how the process was found.",
        [({"source": s}, n) for s, n in att["by_source"].items()],
    )
    o.one(
        "attribution_misses_total", "counter", "Connections whose attribution was not available in time.", att["misses"]
    )
    o.one(
        "attribution_late_total",
        "counter",
        "Lookups that finished after their connection's record was written.",
        att.get("late", 0),
    )
    hp = att.get("helper") or {}
    if hp:
        o.one(
            "attribution_helper_up", "gauge", "1 while the attribution helper process runs.", int(bool(hp.get("alive")))
        )
        o.one("attribution_lookups_total", "counter", "Lookups made by the attribution helper.", hp.get("lookups", 0))
        o.one(
            "attribution_rate_limited_total",
            "counter",
            "Connection starts not looked up (the helper's lookups-per-second bound).",
            hp.get("rate_limited", 0),
        )
        o.one(
            "attribution_tap_dropped_total",
            "counter",
            "First packets the helper's socket lost (its kernel buffer was full).",
            hp.get("tap_kernel_drops", 0),
        )
    o.family(
        "weird_total",
        "counter",
        "Malformed input, by weird name.",
        [({"name": n}, c) for n, c in sorted(snap["weird"].items())],
    )
    outs = snap.get("outputs") or {}
    recs = outs.get("records") or {}
    o.family(
        "records_emitted_total",
        "counter",
        "Records handed to the outputs, by kind.",
        [({"kind": k}, n) for k, n in sorted(recs.items())],
    )
    sinks = outs.get("sinks") or {}
    o.family(
        "output_dropped_total",
        "counter",
        "Records an output did not write: reason='overflow' (its queue was full), reason='error'.",
        [
            ({"sink": s, "reason": r}, st.get(f"dropped_{r}", 0))
            for s, st in sorted(sinks.items())
            for r in ("overflow", "error")
        ],
    )
    o.family(
        "output_failing",
        "gauge",
        "1 while an output's writes fail (disk full, I/O error, collector down): its records are being lost.",
        [({"sink": s}, int(bool(st.get("failing")))) for s, st in sorted(sinks.items())],
    )
    o.one(
        "state_write_errors_total",
        "counter",
        "Failed commits of the rule-window state file (the windows stay in memory and are retried).",
        (snap.get("state") or {}).get("write_errors", 0),
    )
    rec = snap.get("recording") or {}
    if rec:
        o.one(
            "recording_packets_total",
            "counter",
            "Packets written to the flight recorder's ring.",
            rec["packets_written"],
        )
        o.one(
            "recording_comments_total",
            "counter",
            "Recorded packets that carry their connection's process in a comment.",
            rec["comments_written"],
        )
        o.family(
            "recording_dropped_total",
            "counter",
            "Packets not recorded (never packets lost to the pipeline): reason='overflow' (the writer's queue was "
            "full: a slow disk), reason='error' (a write failed: disk full), reason='too_big' (one packet larger "
            "than the ring's bounds).",
            [
                ({"reason": "overflow"}, rec["dropped_overflow"]),
                ({"reason": "error"}, rec["dropped_error"]),
                ({"reason": "too_big"}, rec["dropped_too_big"]),
            ],
        )
        o.one("recording_bytes", "gauge", "Bytes in the ring's files (pcap_ring.max_bytes bounds it).", rec["bytes"])
        o.one("recording_files", "gauge", "Files in the ring (pcap_ring.max_files bounds it).", rec["files"])
        o.one(
            "recording_files_removed_total",
            "counter",
            "Ring files removed to keep within the bounds.",
            rec["files_removed"],
        )
        o.one("recording_failing", "gauge", "1 while the ring's writes fail.", int(bool(rec["failing"])))
    o.one("start_time_seconds", "gauge", "When the daemon started (Unix time).", snap["start_time"])
    o.one("snapshot_time_seconds", "gauge", "When these figures were taken (Unix time).", snap["time"])
    return "\n".join(o.lines) + "\n"


def summary(snap: Mapping[str, Any]) -> str:
    """The same figures, compact, for the journal and systemd's STATUS=."""
    ifs = snap["interfaces"].values()
    recv = sum(s["received"] for s in ifs)
    kd = sum(s["kernel_dropped"] for s in ifs)
    idr = sum(s["interface_dropped"] for s in ifs)
    dec = snap["decoder"]
    derr = sum(dec.get(k, 0) for k in DECODE_ERRORS)
    fl = snap["flows"]
    conns = snap["connections"]
    det = snap["detect"]
    att = snap["attribution"]
    by_at = " ".join(f"{a}={n}" for a, n in sorted(conns.items()))
    by_src = " ".join(f"{s}={n}" for s, n in att["by_source"].items())
    return (
        f"packets {recv} (dropped kernel {kd}, interface {idr}), decode errors {derr}, "
        f"flows active {fl.get('active', 0)} (evicted {fl.get('evicted', 0)}), "
        f"connections {sum(conns.values())}" + (f" ({by_at})" if by_at else "") + ", "
        f"alerts {det.get('alerts', 0)} (suppressed allow {sum(snap['allow'].values())}, "
        f"already raised {det.get('suppressed', 0)}), "
        f"attributions {by_src} misses {att['misses']} late {att.get('late', 0)}"
    )


# -- the endpoint ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self._send(404, b"not found: only /metrics is served\n", "text/plain; charset=utf-8", body)
            return
        snap = self.server.owner.latest  # one reference read: the published snapshot
        if snap is None:
            self._send(503, b"no figures yet\n", "text/plain; charset=utf-8", body)
            return
        self._send(200, render(snap).encode(), CONTENT_TYPE, body)

    def _send(self, code: int, data: bytes, ctype: str, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, fmt: str, *args: Any) -> None:  # no access log in the journal
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MetricsServer

    def process_request(self, request, client_address) -> None:
        if not self.owner._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._slots.release()


class MetricsServer:
    """``GET /metrics`` on ``(address, port)``, loopback only, in daemon threads."""

    def __init__(self, address: str, port: int) -> None:
        ip = ipaddress.ip_address(address)
        if not ip.is_loopback:  # config.parse_listen refuses it first; never bind elsewhere
            raise MetricsError(f"metrics: refusing non-loopback address {address}")
        self.latest: Mapping | None = None
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES_IN_FLIGHT)
        cls = type("_S", (_Server,), {"address_family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET})
        try:
            self.httpd = cls((str(ip), port), _Handler)
        except OSError as e:
            raise MetricsError(f"metrics: cannot listen on {address}:{port}: {e.strerror or e}") from None
        self.httpd.owner = self
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics http", daemon=True
        )

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def publish(self, snap: Mapping) -> None:
        self.latest = snap  # an atomic reference swap; the snapshot is never mutated afterwards

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
