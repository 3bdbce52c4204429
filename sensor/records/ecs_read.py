"""The ``ecs`` profile read back: a connection document as the sensor's own record.

``connection_from_ecs(doc)`` inverts ``EcsProfile.connection`` (sensor/records/ecs.py)
for the fields the rules see (``RECORD_FIELDS`` and the endpoint columns), so
``xfer-sensor hunt`` runs the rules over ECS records as over ``mde`` ones. A
field ECS leaves out when empty comes back as the value the sensor writes for
"none" (``""``, ``0``). Values are not checked here: the caller does
(sensor/cli/hunt.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# ECS process.* paths -> the endpoint columns (EcsProfile's _PROCESS, inverted)
_PROCESS = (
    ("InitiatingProcessFileName", ("name",), ""),
    ("InitiatingProcessId", ("pid",), 0),
    ("InitiatingProcessCommandLine", ("command_line",), ""),
    ("InitiatingProcessFolderPath", ("executable",), ""),
    ("InitiatingProcessCreationTime", ("start",), ""),
    ("InitiatingProcessAccountName", ("user", "name"), ""),
    ("InitiatingProcessParentFileName", ("parent", "name"), ""),
    ("InitiatingProcessParentId", ("parent", "pid"), 0),
)
_TRANSPORT = {"tcp": "Tcp", "udp": "Udp"}


def _get(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def is_ecs(doc: Mapping[str, Any]) -> bool:
    return "@timestamp" in doc and isinstance(doc.get("event"), Mapping)


def ecs_dataset(doc: Mapping[str, Any]) -> str:
    """The record kind of an ECS document (connections, alerts, ...), "" if none."""
    ds = _get(doc, "event", "dataset")
    if isinstance(ds, str) and ds.startswith("xfer_sensor."):
        return ds[len("xfer_sensor.") :]
    return ""


def connection_from_ecs(doc: Mapping[str, Any], hostnames: bool = False) -> dict[str, Any]:
    """The ``mde`` record of an ECS connection document. ``hostnames``: the
    config maps addresses to names, so every record carries ``RemoteUrl``."""
    x = _get(doc, "xfer")
    x = x if isinstance(x, Mapping) else {}
    direction = x.get("direction", "")
    outbound = direction != "inbound"
    src, dst = _get(doc, "source"), _get(doc, "destination")
    src = src if isinstance(src, Mapping) else {}
    dst = dst if isinstance(dst, Mapping) else {}
    local, remote = (src, dst) if outbound else (dst, src)
    transport = _get(doc, "network", "transport")
    details = x.get("details")
    extra: dict[str, Any] = dict(details) if isinstance(details, Mapping) else {}
    sni = _get(doc, "tls", "client", "server_name")
    if sni:
        extra["TlsSni"] = sni
    vlan = _get(doc, "network", "vlan", "id")
    user = _get(doc, "user", "name") or ""
    rec: dict[str, Any] = {
        "Timestamp": doc.get("@timestamp"),
        "DeviceName": _get(doc, "host", "name") or "",
        "ActionType": _get(doc, "event", "action") or "",
        "LocalIP": local.get("ip", ""),
        "LocalPort": local.get("port", 0),
        "RemoteIP": remote.get("ip", ""),
        "RemotePort": remote.get("port", 0),
        "Protocol": _TRANSPORT.get(transport, transport) if isinstance(transport, str) else "",
        "LocalIPType": x.get("local_ip_type", ""),
        "RemoteIPType": x.get("remote_ip_type", ""),
        "InitiatingProcessFileName": _get(doc, "process", "name") or "",
        "InitiatingProcessId": _get(doc, "process", "pid") or 0,
        "InitiatingProcessAccountName": _get(doc, "process", "user", "name") or "",
        "AccountName": user,
        "SentBytes": x.get("sent_bytes", 0),
        "ReceivedBytes": x.get("received_bytes", 0),
        "SentPackets": x.get("sent_packets", 0),
        "ReceivedPackets": x.get("received_packets", 0),
        "FirstSeen": _get(doc, "event", "start") or "",
        "LastSeen": _get(doc, "event", "end") or "",
        "ConnState": x.get("conn_state", ""),
        "History": x.get("history", ""),
        "Uid": x.get("uid", ""),
        "CommunityId": _get(doc, "network", "community_id") or "",
        "Direction": direction,
        "Vlan": int(vlan) if isinstance(vlan, str) and vlan.isdigit() and len(vlan) <= 5 else 0,
        "AppProtocol": _get(doc, "network", "protocol") or "",
        "AppUser": x.get("app_user", ""),
        "DataSentBytes": x.get("data_sent_bytes", 0),
        "DataReceivedBytes": x.get("data_received_bytes", 0),
        "ParentUid": x.get("parent_uid", ""),
        "AdditionalFields": extra,
    }
    url = remote.get("domain")
    if url or hostnames:
        rec["RemoteUrl"] = url or ""
    proc = _get(doc, "process")
    if isinstance(proc, Mapping) or x.get("attribution_source"):
        for col, path, none in _PROCESS[2:]:
            if col not in rec:
                rec[col] = _get(proc, *path) or none
        rec["AttributionSource"] = x.get("attribution_source") or "none"
    return rec
