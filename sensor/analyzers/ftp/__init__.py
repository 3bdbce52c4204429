"""FTP and FTPS: the control-channel analyzer (``analyzer``) and the plugin
that puts it on flows (``plugin``: control sessions, data channels,
transfer records). Specification: docs/analyzers/ftp.md."""

from sensor.analyzers.ftp.analyzer import *  # noqa: F403  (the analyzer's API, as before the package)
from sensor.analyzers.ftp.analyzer import __all__ as _analyzer_all
from sensor.analyzers.ftp.plugin import FtpPlugin
from sensor.core.events import NEED_DATA as NEED_DATA  # tests took it from here

PLUGIN = FtpPlugin()

__all__ = [*_analyzer_all, "NEED_DATA", "FtpPlugin", "PLUGIN"]
