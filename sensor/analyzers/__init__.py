"""Protocol analyzers (sans-IO), one package per protocol, and the registry
of their plugins.

Each package listed in ``PLUGIN_PACKAGES`` exposes ``PLUGIN``, a
:class:`sensor.analyzers.base.Plugin`. The dispatcher
(``sensor.engine.dispatch``) builds its port tables, expectation and probe
lists from them, in this order (the order probes are tried). Adding a
protocol is one new package and one line here: docs/architecture.md,
"Adding a protocol". Packages are imported when the registry is first
asked for, not with this module.
"""

from __future__ import annotations

from importlib import import_module

from sensor.analyzers.base import Plugin

PLUGIN_PACKAGES: tuple[str, ...] = (
    "sensor.analyzers.ftp",
    "sensor.analyzers.smb",
    "sensor.analyzers.tls",
    "sensor.analyzers.tftp",
)


def registry(packages: tuple[str, ...] = PLUGIN_PACKAGES) -> tuple[Plugin, ...]:
    """The plugins of ``packages``, in order."""
    plugins = []
    for name in packages:
        plugin = import_module(name).PLUGIN
        if not isinstance(plugin, Plugin):
            raise TypeError(f"{name}.PLUGIN is not a sensor.analyzers.base.Plugin: {plugin!r}")
        plugins.append(plugin)
    return tuple(plugins)
