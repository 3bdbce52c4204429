"""TFTP: the request and transfer analyzers (``analyzer``) and their plugin
(``plugin``: request fields, transfer records). Specification:
docs/analyzers/tftp.md."""

from sensor.analyzers.tftp.analyzer import *  # noqa: F403  (the analyzer's API, as before the package)
from sensor.analyzers.tftp.analyzer import __all__ as _analyzer_all
from sensor.analyzers.tftp.plugin import TftpPlugin

PLUGIN = TftpPlugin()

__all__ = [*_analyzer_all, "TftpPlugin", "PLUGIN"]
