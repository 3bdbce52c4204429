"""The pipeline, wiring only: decode -> flows -> records -> detection -> sink.

Sans-IO: ``handler_for(linktype)`` returns the function that takes
``(ts_us, frame_bytes)``; ``finish()`` ends every flow. Whatever feeds it
(a pcap file, a live interface, a test) and wherever the sink writes, the
logic between is the same.
"""
from __future__ import annotations

from typing import Any, Callable

from .bpf import build_filter
from .config import Config
from .decode import DecodeStats, Decoder
from .detect import Detector
from .flows import Flow, FlowTable
from .records import RecordBuilder, iso_us
from .rules import RuleSet

# weird records written per name before only counting (Zeek samples weirds too)
WEIRD_LOG_PER_NAME = 1000


class Pipeline:
    def __init__(self, config: Config, rules: RuleSet, sink: Any) -> None:
        self.cfg = config
        self.sink = sink
        self.ports: set[int] = set(config.tracked_ports)
        self.decode_stats = DecodeStats()
        self.flows = FlowTable(config, self._flow_ended, self._flow_weird)
        self.records = RecordBuilder(config)
        self.detector = Detector(rules, config.limits)
        self.weird_counts: dict[str, int] = {}
        self.action_counts: dict[str, int] = {}
        self._decoders: dict[int, Callable[[int, bytes], None]] = {}

    # -- input ----------------------------------------------------------------
    def handler_for(self, linktype: int) -> Callable[[int, bytes], None]:
        h = self._decoders.get(linktype)
        if h is None:
            dec = Decoder(linktype, self.ports, self.decode_stats, self._decode_weird)
            h = self._decoders[linktype] = dec.handler(self.flows.process)
        return h

    def capture_filters(self) -> list[str | None]:
        """BPF filters to try, best first (see sensor/bpf.py)."""
        return [build_filter(self.ports), build_filter(self.ports, vlan=False), None]

    def finish(self) -> None:
        self.flows.flush()

    # -- events ---------------------------------------------------------------
    def _flow_ended(self, flow: Flow) -> None:
        rec = self.records.build(flow)
        at = rec["ActionType"]
        self.action_counts[at] = self.action_counts.get(at, 0) + 1
        self.sink.emit("connections", rec)
        for alert in self.detector.observe(rec, flow.first_ts):
            self.sink.emit("alerts", alert)

    def _weird(self, ts: int, name: str, detail: str, uid: str, source: str) -> None:
        n = self.weird_counts.get(name, 0) + 1
        self.weird_counts[name] = n
        if n <= WEIRD_LOG_PER_NAME:
            self.sink.emit("weird", {"Timestamp": iso_us(ts), "Name": name, "Detail": detail[:512],
                                     "Uid": uid, "Source": source})

    def _decode_weird(self, ts: int, name: str, detail: str) -> None:
        self._weird(ts, name, detail, "", "decoder")

    def _flow_weird(self, ts: int, flow: Flow | None, name: str, detail: str) -> None:
        self._weird(ts, name, detail, flow.uid if flow else "", "flow")

    # -- reporting -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "decoder": self.decode_stats.as_dict(),
            "flows": self.flows.stats.as_dict(),
            "detect": self.detector.stats.as_dict(),
            "connections": dict(sorted(self.action_counts.items())),
            "weird": dict(sorted(self.weird_counts.items())),
        }
