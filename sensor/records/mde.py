"""Connection records shaped like Defender's DeviceNetworkEvents.

Built once per flow when it ends. Field order is fixed (the order below), so
the same capture always gives byte-identical output.
"""

from __future__ import annotations

from typing import Any

from sensor.core.config import Config
from sensor.core.iptype import IpTyper, NetSet
from sensor.core.timefmt import MAX_TS_US as MAX_TS_US  # re-exported: importers of records.mde
from sensor.core.timefmt import iso_us as iso_us
from sensor.engine.dispatch import AppState
from sensor.engine.flows import Flow, address_text
from sensor.records.communityid import community_id_v1

RECORD_FIELDS = (
    "Timestamp",
    "DeviceName",
    "ActionType",
    "LocalIP",
    "LocalPort",
    "RemoteIP",
    "RemotePort",
    "Protocol",
    "LocalIPType",
    "RemoteIPType",
    "InitiatingProcessFileName",
    "InitiatingProcessId",
    "InitiatingProcessAccountName",
    "AccountName",
    "SentBytes",
    "ReceivedBytes",
    "SentPackets",
    "ReceivedPackets",
    "FirstSeen",
    "LastSeen",
    "ConnState",
    "History",
    "Uid",
    "CommunityId",
    "Direction",
    "Vlan",
    "AppProtocol",
    "AppUser",
    "DataSentBytes",
    "DataReceivedBytes",
    "ParentUid",
    "AdditionalFields",
)

# the hunt's protocol label by well-known remote port
PORT_PROTOCOL = {20: "FTP/FTPS", 21: "FTP/FTPS", 990: "FTP/FTPS", 989: "FTP/FTPS", 445: "SMB", 139: "SMB", 69: "TFTP"}


# the weird record of a group of unanswered attempts (attempt_records: aggregate)
ATTEMPTS_WEIRD = "connection_attempts"

# the fields every unanswered attempt's record (``RecordBuilder.attempt``) has
# alike: a rule that fails on them never matches one (DetectionRule.could_match)
ATTEMPT_CONSTANT_FIELDS = tuple(
    "ActionType Protocol InitiatingProcessFileName InitiatingProcessId InitiatingProcessAccountName AccountName "
    "SentBytes ReceivedBytes ConnState History AppUser DataSentBytes DataReceivedBytes ParentUid".split()
)


# the process details endpoint mode adds to a record, after the others
# (sensor/attribution/book.py fills them)
ENDPOINT_FIELDS = (
    "InitiatingProcessCommandLine",
    "InitiatingProcessFolderPath",
    "InitiatingProcessParentFileName",
    "InitiatingProcessParentId",
    "InitiatingProcessCreationTime",
    "AttributionSource",
)


class RecordBuilder:
    """``endpoint``: the records carry the process columns of endpoint mode
    (``ENDPOINT_FIELDS``, after the others) and ``build`` takes the
    connection's attribution."""

    __slots__ = ("cfg", "typer", "home", "endpoint")

    def __init__(self, config: Config, endpoint: bool = False) -> None:
        self.cfg = config
        self.typer = IpTyper(config.ip_type_overrides)
        self.home = NetSet(config.home_net)
        self.endpoint = endpoint

    def local_key(self, flow: Flow) -> tuple[int, str, int, str, int]:
        """``(proto, local_ip, local_port, remote_ip, remote_port)`` as the record sees it."""
        if self.device_is_orig(flow):
            return (flow.proto, flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p)
        return (flow.proto, flow.resp_h, flow.resp_p, flow.orig_h, flow.orig_p)

    def device_of(self, client: str, server: str) -> str:
        """The device of a connection from ``client`` to ``server``: the one
        inside ``home_net``; if both or neither are, the client."""
        if (client in self.home) != (server in self.home):
            return client if client in self.home else server
        return client

    def device_is_orig(self, flow: Flow) -> bool:
        """Is the flow's originator its device? A data channel or TFTP
        transfer takes its control session's device (when it is one of the
        flow's ends), so one session never names two devices."""
        st = flow.ctx
        control = st.control if st is not None else None
        if control is not None:
            dev = self.device_of(*control)
            if dev == flow.orig_h:
                return True
            if dev == flow.resp_h:
                return False
        return self.device_of(flow.orig_h, flow.resp_h) == flow.orig_h

    def action_type(self, flow: Flow, outbound: bool) -> str:
        if flow.proto == 6:
            if "S" not in flow.history and "h" not in flow.history:
                return "ConnectionFound"
            if not flow.successful:
                return "ConnectionFailed"
        else:
            if not flow.successful:
                return "ConnectionFailed" if "D" in flow.history else "ConnectionFound"
        return "ConnectionSuccess" if outbound else "InboundConnectionAccepted"

    def attempt(
        self, orig_b: bytes, resp_b: bytes, orig_p: int, resp_p: int, ts: int, vlan: int, uid: str, app: str
    ) -> dict[str, Any]:
        """The record ``build`` gives an unanswered TCP attempt: a flow of one
        bare SYN (history ``S``, state ``S0``) with no application state and no
        attribution (``endpoint`` off) -- an embryo ending under a SYN scan
        (sensor/engine/flows.py), without its Flow. ``app``: its protocol name
        from the port registry. tests/test_scan_speed.py compares the two."""
        orig_h, resp_h = address_text(orig_b), address_text(resp_b)
        home = self.home
        outbound = (orig_h in home) or (resp_h not in home)  # device_of(orig_h, resp_h) == orig_h
        if outbound:
            lip, lport, rip, rport, sent_pkts, recv_pkts = orig_h, orig_p, resp_h, resp_p, 1, 0
        else:
            lip, lport, rip, rport, sent_pkts, recv_pkts = resp_h, resp_p, orig_h, orig_p, 0, 1
        cfg = self.cfg
        first = iso_us(ts)
        type_of = self.typer.type_of
        rec = {
            "Timestamp": first,
            "DeviceName": cfg.device_name or cfg.inventory.get(lip, lip),
            "ActionType": "ConnectionFailed",
            "LocalIP": lip,
            "LocalPort": lport,
            "RemoteIP": rip,
            "RemotePort": rport,
            "Protocol": "Tcp",
            "LocalIPType": type_of(lip),
            "RemoteIPType": type_of(rip),
            "InitiatingProcessFileName": "",
            "InitiatingProcessId": 0,
            "InitiatingProcessAccountName": "",
            "AccountName": "",
            "SentBytes": 0,
            "ReceivedBytes": 0,
            "SentPackets": sent_pkts,
            "ReceivedPackets": recv_pkts,
            "FirstSeen": first,
            "LastSeen": first,
            "ConnState": "S0",
            "History": "S",
            "Uid": uid,
            "CommunityId": community_id_v1(orig_b, resp_b, 6, orig_p, resp_p),
            "Direction": "outbound" if outbound else "inbound",
            "Vlan": vlan,
            "AppProtocol": app,
            "AppUser": "",
            "DataSentBytes": 0,
            "DataReceivedBytes": 0,
            "ParentUid": "",
            "AdditionalFields": {},
        }
        if cfg.hostnames:
            rec["RemoteUrl"] = cfg.hostnames.get(rip, "")
        return rec

    def attempt_constants(self) -> dict[str, Any]:
        """``ATTEMPT_CONSTANT_FIELDS`` with the values every ``attempt`` record has."""
        rec = self.attempt(b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", 1, 2, 0, 0, "", "")
        return {f: rec[f] for f in ATTEMPT_CONSTANT_FIELDS}

    def attempts(self, orig_b: bytes, resp_p: int, n: int, first: int, last: int, resp_b: bytes) -> dict[str, Any]:
        """The ``connection_attempts`` weird record of a group of ``n``
        unanswered attempts from ``orig_b`` to port ``resp_p``, the last to
        ``resp_b`` (sensor/engine/attempts.py)."""
        first_text = iso_us(first)
        return {
            "Timestamp": first_text,
            "Name": ATTEMPTS_WEIRD,
            "Detail": f"{n} unanswered connection attempt(s) to port {resp_p}, evicted from the full flow table",
            "Uid": "",
            "Source": "flow",
            "OriginatorIP": address_text(orig_b),
            "ResponderPort": resp_p,
            "Attempts": n,
            "FirstSeen": first_text,
            "LastSeen": iso_us(last),
            "LastResponderIP": address_text(resp_b),
        }

    def build(self, flow: Flow, att: Any = None) -> dict[str, Any]:
        """The connection's record; ``att`` its ``Attribution`` (endpoint mode)."""
        outbound = self.device_is_orig(flow)
        st: AppState | None = flow.ctx  # its read API: user, fields, files, child_*, parent_uid
        if outbound:
            lip, lport, rip, rport, sent, recv = flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p, flow.o, flow.r
        else:
            lip, lport, rip, rport, sent, recv = flow.resp_h, flow.resp_p, flow.orig_h, flow.orig_p, flow.r, flow.o
        cfg = self.cfg
        device = cfg.device_name or cfg.inventory.get(lip, lip)
        first = iso_us(flow.first_ts)
        action = self.action_type(flow, outbound)
        user = ""
        data_sent = data_recv = 0
        parent_uid = ""
        fields: dict[str, Any] = {}
        if st is not None:
            user = st.user
            # children's bytes are kept from the parent's originator's view
            data_sent, data_recv = (st.child_sent, st.child_recv) if outbound else (st.child_recv, st.child_sent)
            parent_uid = st.parent_uid
            if st.fields:
                fields = dict(st.fields)
                parent_uid = parent_uid or fields.pop("ParentUid", "")
            if st.files:
                fields["Files"] = list(st.files)
            if flow.proto == 17 and st.child_answered and action == "ConnectionFailed":
                # TFTP: the server answers from a new port; that answer is the success
                action = "ConnectionSuccess" if outbound else "InboundConnectionAccepted"
            elif flow.proto == 17 and st.control is not None:
                # a TFTP transfer is its request's: the request's client opened it (whoever sent
                # the first datagram on the new port), and the server's datagrams are its answer
                outbound = self.device_of(*st.control) == st.control[0]
                server = st.control[1]
                answered = (flow.o if flow.orig_h == server else flow.r).pkts > 0
                if answered:
                    action = "ConnectionSuccess" if outbound else "InboundConnectionAccepted"
                else:
                    action = "ConnectionFailed"
        detail = getattr(att, "AttributionDetail", "") if att is not None else ""
        if detail:  # how exactly the process was found (or why not): for the operator
            fields["AttributionDetail"] = detail
        rec = {
            "Timestamp": first,
            "DeviceName": device,
            "ActionType": action,
            "LocalIP": lip,
            "LocalPort": lport,
            "RemoteIP": rip,
            "RemotePort": rport,
            "Protocol": "Tcp" if flow.proto == 6 else "Udp",
            "LocalIPType": self.typer.type_of(lip),
            "RemoteIPType": self.typer.type_of(rip),
            "InitiatingProcessFileName": att.InitiatingProcessFileName if att else "",
            "InitiatingProcessId": att.InitiatingProcessId if att else 0,
            "InitiatingProcessAccountName": att.InitiatingProcessAccountName if att else "",
            # the hunt's account: the process's when known, else the protocol login
            "AccountName": (att.InitiatingProcessAccountName if att else "") or user,
            "SentBytes": sent.bytes,
            "ReceivedBytes": recv.bytes,
            "SentPackets": sent.pkts,
            "ReceivedPackets": recv.pkts,
            "FirstSeen": first,
            "LastSeen": first if flow.last_ts == flow.first_ts else iso_us(flow.last_ts),
            "ConnState": flow.conn_state,
            "History": flow.history,
            "Uid": flow.uid,
            "CommunityId": community_id_v1(flow.orig_b, flow.resp_b, flow.proto, flow.orig_p, flow.resp_p),
            "Direction": "outbound" if outbound else "inbound",
            "Vlan": flow.vlan,
            "AppProtocol": flow.app,
            "AppUser": user,
            "DataSentBytes": data_sent,
            "DataReceivedBytes": data_recv,
            "ParentUid": parent_uid,
            "AdditionalFields": fields,
        }
        if cfg.hostnames:  # Defender's RemoteUrl, from the config's static map
            rec["RemoteUrl"] = cfg.hostnames.get(rip, "")
        if self.endpoint:
            for k in ENDPOINT_FIELDS:
                rec[k] = (
                    getattr(att, k)
                    if att is not None
                    else ("none" if k == "AttributionSource" else 0 if k == "InitiatingProcessParentId" else "")
                )
        return rec
