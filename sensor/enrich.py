"""Record enrichment from configuration, before detection and outputs.

``HostnameEnricher`` fills Defender's ``RemoteUrl`` column of connection
records from the config's static ``hostnames`` map (IP -> name), so rules can
allow a partner by name (``RemoteUrl|endswith: .partner.example``) and the
``ecs`` profile can write ``destination.domain``. Names seen in DNS answers
on the wire are future work: DNS is not parsed today.

It is a sink placed *first* in the pipeline's tee: the pipeline emits a
connection record to its sink before it hands the same record to detection
(sensor/pipeline.py ``_emit_connection``), so the rules see the field. With
no ``hostnames`` configured it does nothing and records stay unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping


class HostnameEnricher:
    def __init__(self, hostnames: Mapping[str, str]) -> None:
        self.hostnames = dict(hostnames)

    def emit(self, kind: str, rec: dict) -> None:
        if kind == "connections" and self.hostnames:
            rec["RemoteUrl"] = self.hostnames.get(str(rec.get("RemoteIP", "")), "")

    def close(self) -> None:
        pass


def enrich_sinks(config: Any, *sinks: Any) -> list[Any]:
    """The tee members: the enricher (when configured) first, then ``sinks``."""
    out: list[Any] = []
    if getattr(config, "hostnames", None):
        out.append(HostnameEnricher(config.hostnames))
    out.extend(sinks)
    return out
