"""The ``ecs`` output profile: records as Elastic Common Schema 8.x documents.

``EcsProfile.transform(kind, record)`` reshapes the sensor's own
(``mde``-shaped) record; a field is written only when its value is known, and
what ECS has no field for goes under ``xfer.*``. The mapping, field by field:
docs/outputs.md; tests/test_outputs_profiles.py validates it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sensor import __version__
from sensor.core.config import Config
from sensor.core.iptype import NetSet

ECS_VERSION = "8.11.0"
MODULE = "xfer_sensor"

# MITRE ATT&CK enterprise tactics, by the Sigma tag that names them
TACTICS = {
    "reconnaissance": ("TA0043", "Reconnaissance"),
    "resource-development": ("TA0042", "Resource Development"),
    "initial-access": ("TA0001", "Initial Access"),
    "execution": ("TA0002", "Execution"),
    "persistence": ("TA0003", "Persistence"),
    "privilege-escalation": ("TA0004", "Privilege Escalation"),
    "defense-evasion": ("TA0005", "Defense Evasion"),
    "credential-access": ("TA0006", "Credential Access"),
    "discovery": ("TA0007", "Discovery"),
    "lateral-movement": ("TA0008", "Lateral Movement"),
    "collection": ("TA0009", "Collection"),
    "command-and-control": ("TA0011", "Command and Control"),
    "exfiltration": ("TA0010", "Exfiltration"),
    "impact": ("TA0040", "Impact"),
}
# names of the techniques this sensor's rules use; others are written by id only
TECHNIQUE_NAMES = {
    "T1071": "Application Layer Protocol",
    "T1071.002": "File Transfer Protocols",
    "T1048": "Exfiltration Over Alternative Protocol",
    "T1105": "Ingress Tool Transfer",
}
# Sigma level -> event.severity (a number, as ECS asks; larger is worse)
SEVERITY = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}

_OUTCOME = {
    "ConnectionSuccess": "success",
    "InboundConnectionAccepted": "success",
    "ConnectionFailed": "failure",
    "ConnectionFound": "unknown",
}
_TRANSPORT = {"Tcp": ("tcp", "6"), "Udp": ("udp", "17")}
_FILE_ACTION = {"upload": "file-upload", "download": "file-download", "listing": "directory-listing"}
_FILE_TYPE = {"upload": ["creation"], "download": ["access"], "listing": ["access"]}

# process columns (endpoint mode) -> ECS process.* paths
_PROCESS = (
    ("InitiatingProcessFileName", ("name",)),
    ("InitiatingProcessId", ("pid",)),
    ("InitiatingProcessCommandLine", ("command_line",)),
    ("InitiatingProcessFolderPath", ("executable",)),
    ("InitiatingProcessCreationTime", ("start",)),
    ("InitiatingProcessAccountName", ("user", "name")),
    ("InitiatingProcessParentFileName", ("parent", "name")),
    ("InitiatingProcessParentId", ("parent", "pid")),
)


def _us(iso: str) -> int | None:
    """Our ISO 8601 UTC timestamps (``...T..:..:...ffffffZ``) -> µs since the epoch."""
    try:
        d = datetime.fromisoformat(iso[:-1] + "+00:00" if iso.endswith("Z") else iso)
    except (TypeError, ValueError):
        return None
    return int(d.timestamp()) * 1_000_000 + d.microsecond


def _duration_ns(first: Any, last: Any) -> int | None:
    a, b = _us(first) if isinstance(first, str) else None, _us(last) if isinstance(last, str) else None
    if a is None or b is None or b < a:
        return None
    return (b - a) * 1000


def _endpoint(ip: Any, port: Any, nbytes: Any, pkts: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if ip:
        d["ip"] = ip
    if isinstance(port, int) and not isinstance(port, bool):
        d["port"] = port
    d["bytes"] = int(nbytes or 0)
    d["packets"] = int(pkts or 0)
    return d


def _uniq(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in (None, "") and v not in out:
            out.append(v)
    return out


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    d = doc
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value


def _basename(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def threat_from_tags(tags: Iterable[str]) -> dict[str, Any] | None:
    """Sigma ``attack.*`` tags -> ECS ``threat.*`` (framework MITRE ATT&CK)."""
    tactics: list[tuple[str, str]] = []
    techniques: list[str] = []
    subs: list[str] = []
    for t in tags:
        t = t.lower()
        if not t.startswith("attack."):
            continue
        name = t[len("attack.") :]
        if name in TACTICS:
            if TACTICS[name] not in tactics:
                tactics.append(TACTICS[name])
        elif name[:1] == "t" and name[1:].replace(".", "").isdigit():
            tid = name.upper()
            if "." in tid:
                if tid not in subs:
                    subs.append(tid)
                tid = tid.split(".", 1)[0]
            if tid not in techniques:
                techniques.append(tid)
    if not (tactics or techniques):
        return None
    threat: dict[str, Any] = {"framework": "MITRE ATT&CK"}
    if tactics:
        threat["tactic"] = {
            "id": [i for i, _ in tactics],
            "name": [n for _, n in tactics],
            "reference": [f"https://attack.mitre.org/tactics/{i}/" for i, _ in tactics],
        }
    if techniques:
        tech: dict[str, Any] = {"id": techniques}
        names = [TECHNIQUE_NAMES[t] for t in techniques if t in TECHNIQUE_NAMES]
        if len(names) == len(techniques):
            tech["name"] = names
        tech["reference"] = [f"https://attack.mitre.org/techniques/{t}/" for t in techniques]
        if subs:
            sub: dict[str, Any] = {"id": subs}
            snames = [TECHNIQUE_NAMES[s] for s in subs if s in TECHNIQUE_NAMES]
            if len(snames) == len(subs):
                sub["name"] = snames
            sub["reference"] = [f"https://attack.mitre.org/techniques/{s.replace('.', '/')}/" for s in subs]
            tech["subtechnique"] = sub
        threat["technique"] = tech
    return threat


class EcsProfile:
    """Turns the sensor's records into ECS documents. ``rules`` (a RuleSet)
    supplies the rule metadata of alerts (description, references, author)."""

    name = "ecs"

    def __init__(self, config: Config, rules: Any = None, observer_hostname: str | None = None) -> None:
        self.cfg = config
        self.home = NetSet(config.home_net)
        self.observer = {
            "type": "sensor",
            "vendor": "xfer-sensor",
            "product": "xfer-sensor",
            "version": __version__,
            "hostname": observer_hostname or socket.gethostname(),
        }
        self.rules: dict[str, Any] = {}
        if rules is not None:
            for r in tuple(getattr(rules, "detections", ())) + tuple(getattr(rules, "correlations", ())):
                self.rules[r.id] = r

    # -- helpers ------------------------------------------------------------------
    def _head(self, ts: Any, kind: str, category: list[str], types: list[str], dataset: str) -> dict[str, Any]:
        return {
            "@timestamp": ts,
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": kind,
                "category": category,
                "type": types,
                "module": MODULE,
                "dataset": f"{MODULE}.{dataset}",
            },
            "observer": dict(self.observer),
        }

    def _direction(self, src: str, dst: str) -> str:
        """network.direction from the device's point of view: egress/ingress when
        exactly one side is inside home_net, internal when both, external when neither."""
        s_in, d_in = self._home(src), self._home(dst)
        if s_in and d_in:
            return "internal"
        if not s_in and not d_in:
            return "external"
        return "egress" if s_in else "ingress"

    def _home(self, ip: Any) -> bool:
        try:
            return str(ip) in self.home  # NetSet caches by the address string
        except ValueError:
            return False

    def _device(self, client: str, server: str) -> str:
        """The device of a client->server pair, as RecordBuilder picks it."""
        return client if self._home(client) or not self._home(server) else server

    def _device_name(self, ip: str) -> str:
        return self.cfg.device_name or self.cfg.inventory.get(ip, ip)

    @staticmethod
    def _type(ip: str) -> str | None:
        """Addresses in records are already normalized strings."""
        if not ip:
            return None
        return "ipv6" if ":" in ip else "ipv4"

    # -- records ------------------------------------------------------------------
    def transform(self, kind: str, rec: Mapping[str, Any]) -> dict[str, Any]:
        if kind == "connections":
            return self.connection(rec)
        if kind == "alerts":
            return self.alert(rec)
        if kind == "transfers":
            return self.transfer(rec)
        if kind == "files":
            return self.file_event(rec)
        return self.weird(rec)

    def connection(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        action = rec.get("ActionType", "")
        doc = self._head(rec.get("Timestamp"), "event", ["network"], ["connection", "end"], "connections")
        ev = doc["event"]
        ev["action"] = action
        ev["outcome"] = _OUTCOME.get(action, "unknown")
        if rec.get("Uid"):
            ev["id"] = rec["Uid"]
        if rec.get("FirstSeen"):
            ev["start"] = rec["FirstSeen"]
        if rec.get("LastSeen"):
            ev["end"] = rec["LastSeen"]
        dur = _duration_ns(rec.get("FirstSeen"), rec.get("LastSeen"))
        if dur is not None:
            ev["duration"] = dur
        outbound = rec.get("Direction", "outbound") == "outbound"
        local = _endpoint(rec.get("LocalIP"), rec.get("LocalPort"), rec.get("SentBytes"), rec.get("SentPackets"))
        remote = _endpoint(
            rec.get("RemoteIP"), rec.get("RemotePort"), rec.get("ReceivedBytes"), rec.get("ReceivedPackets")
        )
        if rec.get("RemoteUrl"):
            remote["domain"] = rec["RemoteUrl"]
        src, dst = (local, remote) if outbound else (remote, local)
        doc["source"], doc["destination"] = src, dst
        transport, iana = _TRANSPORT.get(rec.get("Protocol", ""), (str(rec.get("Protocol", "")).lower(), ""))
        net: dict[str, Any] = {"transport": transport}
        if iana:
            net["iana_number"] = iana
        ntype = self._type(str(rec.get("LocalIP", "")))
        if ntype:
            net["type"] = ntype
        if rec.get("AppProtocol"):
            net["protocol"] = rec["AppProtocol"]
        net["direction"] = self._direction(str(src.get("ip", "")), str(dst.get("ip", "")))
        if rec.get("CommunityId"):
            net["community_id"] = rec["CommunityId"]
        net["bytes"] = src["bytes"] + dst["bytes"]
        net["packets"] = src["packets"] + dst["packets"]
        if rec.get("Vlan"):
            net["vlan"] = {"id": str(rec["Vlan"])}
        doc["network"] = net
        host: dict[str, Any] = {}
        if rec.get("DeviceName"):
            host["name"] = rec["DeviceName"]
        if rec.get("LocalIP"):
            host["ip"] = [rec["LocalIP"]]
        if host:
            doc["host"] = host
        proc: dict[str, Any] = {}
        for col, path in _PROCESS:
            v = rec.get(col)
            if v not in (None, "", 0, -1):
                _set(proc, path, v)
        if proc:
            doc["process"] = proc
        if rec.get("AccountName"):
            doc["user"] = {"name": rec["AccountName"]}
        extra = dict(rec.get("AdditionalFields") or {})
        sni = extra.pop("TlsSni", None)
        if sni:
            doc["tls"] = {"client": {"server_name": sni}}
        related: dict[str, Any] = {}
        ips = _uniq((rec.get("LocalIP"), rec.get("RemoteIP")))
        if ips:
            related["ip"] = ips
        users = _uniq((rec.get("AccountName"), rec.get("AppUser"), rec.get("InitiatingProcessAccountName")))
        if users:
            related["user"] = users
        hosts = _uniq((rec.get("RemoteUrl"), sni))
        if hosts:
            related["hosts"] = hosts
        if related:
            doc["related"] = related
        x: dict[str, Any] = {
            "uid": rec.get("Uid", ""),
            "conn_state": rec.get("ConnState", ""),
            "history": rec.get("History", ""),
            "local_ip_type": rec.get("LocalIPType", ""),
            "remote_ip_type": rec.get("RemoteIPType", ""),
            "direction": rec.get("Direction", ""),
            "sent_bytes": int(rec.get("SentBytes") or 0),
            "received_bytes": int(rec.get("ReceivedBytes") or 0),
            "sent_packets": int(rec.get("SentPackets") or 0),
            "received_packets": int(rec.get("ReceivedPackets") or 0),
            "data_sent_bytes": int(rec.get("DataSentBytes") or 0),
            "data_received_bytes": int(rec.get("DataReceivedBytes") or 0),
        }
        if rec.get("ParentUid"):
            x["parent_uid"] = rec["ParentUid"]
        if rec.get("AppUser"):
            x["app_user"] = rec["AppUser"]
        if rec.get("AttributionSource"):
            x["attribution_source"] = rec["AttributionSource"]
        if extra:
            x["details"] = extra
        doc["xfer"] = x
        return doc

    def alert(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        rid = rec.get("RuleId", "")
        rule = self.rules.get(rid)
        doc = self._head(rec.get("Timestamp"), "alert", ["network", "intrusion_detection"], ["info"], "alerts")
        ev = doc["event"]
        ev["action"] = (getattr(rule, "name", "") or rid) if rule is not None else rid
        level = rec.get("Level", "")
        if level in SEVERITY:
            ev["severity"] = SEVERITY[level]
        if rec.get("FirstSeen"):
            ev["start"] = rec["FirstSeen"]
        if rec.get("LastSeen"):
            ev["end"] = rec["LastSeen"]
        if "ConnectionCount" in rec:
            ev["reason"] = f"{rec['ConnectionCount']} connections, threshold {rec.get('Threshold', '')}"
        r: dict[str, Any] = {"id": rid, "uuid": rid, "name": rec.get("RuleTitle", ""), "ruleset": "xfer-sensor"}
        if rule is not None:
            if getattr(rule, "description", ""):
                r["description"] = rule.description
            refs = getattr(rule, "references", ())
            if refs:
                r["reference"] = refs[0]
            if getattr(rule, "author", ""):
                r["author"] = [a.strip() for a in rule.author.split(",") if a.strip()]
        doc["rule"] = r
        threat = threat_from_tags(rec.get("Tags", ()))
        if threat:
            doc["threat"] = threat
        if rec.get("DeviceName"):
            doc["host"] = {"name": rec["DeviceName"]}
        if rec.get("RemoteIP"):
            dst: dict[str, Any] = {"ip": rec["RemoteIP"]}
            if isinstance(rec.get("RemotePort"), int):
                dst["port"] = rec["RemotePort"]
            name = self.cfg.hostnames.get(str(rec["RemoteIP"]))
            if name:
                dst["domain"] = name
            doc["destination"] = dst
        if rec.get("InitiatingProcessFileName"):
            doc["process"] = {"name": rec["InitiatingProcessFileName"]}
        if rec.get("AccountName"):
            doc["user"] = {"name": rec["AccountName"]}
        related: dict[str, Any] = {}
        if rec.get("RemoteIP"):
            related["ip"] = [rec["RemoteIP"]]
        if rec.get("AccountName"):
            related["user"] = [rec["AccountName"]]
        hosts = _uniq((rec.get("DeviceName"), doc.get("destination", {}).get("domain")))
        if hosts:
            related["hosts"] = hosts
        if related:
            doc["related"] = related
        x: dict[str, Any] = {"uids": list(rec.get("Uids") or ())}
        for src_key, dst_key in (
            ("ConnectionCount", "connection_count"),
            ("BytesSent", "bytes_sent"),
            ("BytesReceived", "bytes_received"),
            ("Threshold", "threshold"),
            ("Protocol", "protocol_label"),
            ("Level", "level"),
        ):
            if src_key in rec:
                x[dst_key] = rec[src_key]
        doc["xfer"] = {"alert": x}
        return doc

    def transfer(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        direction = rec.get("Direction", "")
        doc = self._head(
            rec.get("Timestamp"), "event", ["file", "network"], list(_FILE_TYPE.get(direction, ["info"])), "transfers"
        )
        ev = doc["event"]
        ev["action"] = _FILE_ACTION.get(direction, direction or "file-transfer")
        if rec.get("Complete"):
            ev["outcome"] = "success"
        elif rec.get("Outcome") in ("failed", "unexpected") or rec.get("ErrorCode") is not None:
            ev["outcome"] = "failure"
        else:
            ev["outcome"] = "unknown"
        client, server = self._client_server(doc, rec)
        net: dict[str, Any] = {"direction": self._direction(client, server)}
        if rec.get("Protocol"):
            net["protocol"] = rec["Protocol"]
            net["transport"] = "udp" if rec["Protocol"] == "tftp" else "tcp"
        doc["network"] = net
        device = self._device(client, server)
        doc["host"] = {"name": self._device_name(device), "ip": [device]}
        filename = str(rec.get("Filename") or "")
        f: dict[str, Any] = {}
        if filename:
            f["path"] = filename
            base = _basename(filename)
            if base:
                f["name"] = base
        if rec.get("Complete") and direction != "listing":
            f["size"] = int(rec.get("Bytes") or 0)
        elif isinstance(rec.get("AnnouncedSize"), int) and "ClaimedBytes" not in rec:
            f["size"] = rec["AnnouncedSize"]  # never a claim above what moved (that is claimed_bytes)
        if f:
            doc["file"] = f
        _user_process_related(doc, rec, client, server)
        x: dict[str, Any] = {
            "uid": rec.get("Uid", ""),
            "control_uid": rec.get("ControlUid", ""),
            "command": rec.get("Command", ""),
            "direction": direction,
            "bytes": int(rec.get("Bytes") or 0),
            "complete": bool(rec.get("Complete")),
            "filename_truncated": bool(rec.get("FilenameTruncated")),
        }
        for src_key, dst_key in (
            ("DataUids", "data_uids"),
            ("Mode", "mode"),
            ("ReplyCode", "reply_code"),
            ("Outcome", "outcome"),
            ("AnnouncedSize", "announced_size"),
            ("ClaimedBytes", "claimed_bytes"),
            ("Blocks", "blocks"),
            ("BlockSize", "block_size"),
            ("ErrorCode", "error_code"),
            ("ErrorMessage", "error_message"),
            ("Share", "share"),
            ("Note", "note"),
        ):
            if src_key in rec:
                x[dst_key] = rec[src_key]
        if rec.get("AttributionSource"):
            x["attribution_source"] = rec["AttributionSource"]
        doc["xfer"] = {"transfer": x}
        return doc

    def _client_server(self, doc: dict[str, Any], rec: Mapping[str, Any]) -> tuple[str, str]:
        """``source``/``destination`` of a transfer or file event (client, server); returns both."""
        client, server = str(rec.get("ClientIP", "")), str(rec.get("ServerIP", ""))
        doc["source"] = {"ip": client}
        doc["destination"] = {"ip": server}
        if isinstance(rec.get("ServerPort"), int):
            doc["destination"]["port"] = rec["ServerPort"]
        name = self.cfg.hostnames.get(server)
        if name:
            doc["destination"]["domain"] = name
        return client, server

    def file_event(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """A file event that moved no data (an SMB file opened, neither read nor written)."""
        action = str(rec.get("Action") or "open")
        doc = self._head(rec.get("Timestamp"), "event", ["file", "network"], ["access"], "files")
        doc["event"]["action"] = f"file-{action}"
        client, server = self._client_server(doc, rec)
        net: dict[str, Any] = {"direction": self._direction(client, server), "transport": "tcp"}
        if rec.get("Protocol"):
            net["protocol"] = rec["Protocol"]
        doc["network"] = net
        device = self._device(client, server)
        doc["host"] = {"name": self._device_name(device), "ip": [device]}
        filename = str(rec.get("Filename") or "")
        if filename:
            f: dict[str, Any] = {"path": filename}
            base = _basename(filename)
            if base:
                f["name"] = base
            doc["file"] = f
        _user_process_related(doc, rec, client, server)
        x: dict[str, Any] = {
            "uid": rec.get("Uid", ""),
            "action": action,
            "filename_truncated": bool(rec.get("FilenameTruncated")),
        }
        for src_key, dst_key in (
            ("Share", "share"),
            ("Disposition", "disposition"),
            ("Access", "access"),
            ("Closed", "closed"),
            ("AttributionSource", "attribution_source"),
        ):
            if rec.get(src_key) not in (None, "", []):
                x[dst_key] = rec[src_key]
        doc["xfer"] = {"file": x}
        return doc

    def weird(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        doc = self._head(rec.get("Timestamp"), "event", ["network"], ["protocol"], "weird")
        doc["event"]["action"] = rec.get("Name", "")
        if rec.get("Detail"):
            doc["message"] = rec["Detail"]
        doc["xfer"] = {
            "weird": {"name": rec.get("Name", ""), "source": rec.get("Source", ""), "uid": rec.get("Uid", "")}
        }
        if "Attempts" in rec:  # connection_attempts: a group of unanswered attempts (sensor/engine/attempts.py)
            doc["event"]["start"], doc["event"]["end"] = rec.get("FirstSeen"), rec.get("LastSeen")
            doc["source"] = {"ip": rec.get("OriginatorIP")}
            doc["destination"] = {"ip": rec.get("LastResponderIP"), "port": rec.get("ResponderPort")}
            doc["xfer"]["weird"]["attempts"] = rec["Attempts"]
        return doc


def _user_process_related(doc: dict[str, Any], rec: Mapping[str, Any], client: str, server: str) -> None:
    """``user``, ``process`` (endpoint mode: the process of the connection, or of
    the control connection for a transfer) and ``related`` of a transfer or file event."""
    if rec.get("User"):
        doc["user"] = {"name": rec["User"]}
    proc: dict[str, Any] = {}
    for col, path in _PROCESS[:2] + _PROCESS[5:6]:
        v = rec.get(col)
        if v not in (None, "", 0, -1):
            _set(proc, path, v)
    if proc:
        doc["process"] = proc
    related: dict[str, Any] = {"ip": _uniq((client, server))}
    if rec.get("User"):
        related["user"] = [rec["User"]]
    doc["related"] = related
