"""The dispatcher / protocol-plugin contract (issue #12).

- the registry (sensor.analyzers.PLUGIN_PACKAGES) is what the dispatcher's
  port tables, expectations and probes are built from, and a port claimed
  twice is refused;
- a plugin's analyzer events become the connection record's fields and
  user, its transfers transfer records, its weirds weird records -- shown
  with a plugin defined here, for a test-only line protocol on TCP port 7;
- a plugin package imports only sensor.analyzers.base, itself and
  sensor.core, and the dispatcher names no protocol.
"""

from __future__ import annotations

import grimp
import pytest

import sensor.engine.dispatch as dispatch
from sensor.analyzers import PLUGIN_PACKAGES, registry
from sensor.analyzers.base import Analyzer, FlowContext, Plugin, Session
from sensor.core.events import Event, Weird
from sensor.core.frozen import frozen
from sensor.engine.dispatch import Dispatcher
from sensor.engine.ports import PortSet
from tests.support.craft import tcp_session


def dispatcher(plugins: tuple[Plugin, ...] | None = None) -> Dispatcher:
    return Dispatcher(frozenset({21}), PortSet({21}), lambda kind, rec: None, lambda *a: None, plugins)


def table(t: dict) -> dict:
    return {port: (pl.name, app, pending) for port, (pl, app, pending) in t.items()}


# -- the registry builds the tables ---------------------------------------------------------
def test_registry_builds_the_port_tables():
    d = dispatcher()
    assert [p.name for p in d.plugins] == ["ftp", "smb", "tls", "tftp"]
    assert table(d.tcp_ports) == {
        21: ("ftp", "ftp", True),
        990: ("ftp", "ftps", True),
        989: ("ftp", "ftps-data", True),
        20: ("ftp", "ftp-data", False),
        445: ("smb", "smb", True),
        139: ("smb", "smb", True),
    }
    assert table(d.tcp_orig_ports) == {20: ("ftp", "ftp-data", False)}
    assert table(d.udp_ports) == {69: ("tftp", "tftp", True)}
    # ports of sessions of their own; a followed FTPS host pair may use the others
    assert d.service_ports == frozenset({21, 990, 445, 139, 69})
    assert {k: p.name for k, p in d.by_expect.items()} == {"ftp-data": "ftp", "tftp-transfer": "tftp"}
    assert [p.name for p in d.probes] == ["ftp"]
    assert set(d.by_name) == {"ftp", "smb", "tls", "tftp"}


def test_registry_without_a_package_has_none_of_its_ports():
    d = dispatcher(registry(tuple(p for p in PLUGIN_PACKAGES if p != "sensor.analyzers.tftp")))
    assert d.udp_ports == {} and "tftp-transfer" not in d.by_expect
    assert d.service_ports == frozenset({21, 990, 445, 139})


def test_a_port_claimed_twice_is_refused():
    class Other(Plugin):
        name = "other"
        tcp_ports = {445: "other"}

    with pytest.raises(ValueError, match="TCP port 445: claimed by plugins 'smb' and 'other'"):
        dispatcher((*registry(), Other()))


def test_a_plugin_name_claimed_twice_is_refused():
    class Ftp2(Plugin):
        name = "ftp"

    with pytest.raises(ValueError, match="plugin name 'ftp'"):
        dispatcher((*registry(), Ftp2()))


def test_registry_refuses_what_is_not_a_plugin(monkeypatch):
    import sensor.analyzers.tls as tls

    monkeypatch.setattr(tls, "PLUGIN", object())
    with pytest.raises(TypeError, match="sensor.analyzers.tls.PLUGIN is not"):
        registry(("sensor.analyzers.tls",))


# -- a plugin's events become the records -------------------------------------------------------
@frozen
class Said(Event):
    line: str


class LineAnalyzer(Analyzer):
    """Client lines become events; any server byte is a weird."""

    name = "line"

    def receive_ts(self, data: bytes, ts: int) -> list[Event]:
        return [Said(ts, x) for x in data.decode().split("\n") if x]

    def receive_tc(self, data: bytes, ts: int) -> list[Event]:
        return [Weird(ts, "line_from_server", data.decode(), "line")]


class LineSession(Session):
    depth = 1 << 20

    def __init__(self, ctx: FlowContext) -> None:
        super().__init__(ctx)
        self.analyzer = LineAnalyzer(ctx.conn())
        self.seen: list[str] = []

    def on_event(self, ev: Event) -> None:
        assert isinstance(ev, Said)  # weirds are the dispatcher's, never passed here
        if ev.line.startswith("user "):
            self.ctx.set_user(ev.line[5:])
        else:
            self.ctx.set_field("Lines", self.seen)
            self.seen.append(ev.line)
            flow = self.ctx.flow
            self.ctx.transfer({"Protocol": "line", "Uid": flow.uid, "ServerPort": flow.resp_p, "Filename": ev.line})

    def flow_ending(self) -> None:
        self.ctx.set_field("Ended", True)


class LinePlugin(Plugin):
    name = "line"
    tcp_ports = {7: "line"}

    def attach(self, ctx: FlowContext, app: str, midstream: bool) -> Session | None:
        assert app == "line" and not midstream
        return LineSession(ctx)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layered"])
def test_a_plugins_events_become_fields_user_transfers_and_weirds(tmp_path, monkeypatch, fused):
    from sensor.core.config import config_from_dict
    from sensor.detect.rules import RuleSet
    from sensor.io.capture import read_file
    from sensor.io.sinks import MemorySink
    from sensor.pipeline import Pipeline
    from tests.support.craft import write_pcap

    monkeypatch.setattr(dispatch, "registry", lambda: (LinePlugin(), *registry()))
    pkts = tcp_session(
        "10.0.0.5", "192.0.2.7", 40000, 7, 1_800_000_000.0, c2s=b"user alice\nget a.txt\nget b.txt\n", s2c=b"ok"
    )
    sink = MemorySink()
    pipe = Pipeline(config_from_dict({"tracked_ports": [7, 21]}, "<test>"), RuleSet((), ()), sink)
    pipe.fused = fused
    res = read_file(write_pcap(tmp_path / "line.pcap", pkts), pipe.handler_for)
    assert not res.error
    pipe.finish()
    [conn] = sink.records["connections"]
    assert (conn["RemotePort"], conn["AppProtocol"], conn["AppUser"]) == (7, "line", "alice")
    assert conn["AdditionalFields"] == {
        "Lines": ["get a.txt", "get b.txt"],
        "Ended": True,
        "Files": ["get a.txt", "get b.txt"],
    }
    assert sink.records["transfers"] == [
        {"Protocol": "line", "Uid": conn["Uid"], "ServerPort": 7, "Filename": "get a.txt"},
        {"Protocol": "line", "Uid": conn["Uid"], "ServerPort": 7, "Filename": "get b.txt"},
    ]
    assert [(w["Name"], w["Detail"], w["Uid"], w["Source"]) for w in sink.records["weird"]] == [
        ("line_from_server", "ok", conn["Uid"], "line")
    ]
    assert pipe.app.stats["analyzed_flows"] == 1 and pipe.app.stats["transfers"] == 2


# -- what a plugin may import --------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(
        "sensor", include_external_packages=False, exclude_type_checking_imports=False, cache_dir=None
    )


@pytest.mark.parametrize("package", PLUGIN_PACKAGES)
def test_a_plugin_package_imports_only_base_itself_and_core(graph, package):
    for module in sorted(graph.find_descendants(package) | {package}):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            assert (
                imported == "sensor.analyzers.base"
                or imported == package
                or imported.startswith(package + ".")
                or imported.startswith("sensor.core.")
            ), f"{module} imports {imported}"


def test_the_dispatcher_names_no_protocol(graph):
    analyzers = {
        m for m in graph.find_modules_directly_imported_by("sensor.engine.dispatch") if m.startswith("sensor.analyzers")
    }
    assert analyzers == {"sensor.analyzers", "sensor.analyzers.base"}
