"""SMB over TCP 445/139: the analyzer (``analyzer``) and its plugin
(``plugin``: record fields, transfer records). Specification:
docs/analyzers/smb.md."""

from sensor.analyzers.smb.analyzer import *  # noqa: F403  (the analyzer's API, as before the package)
from sensor.analyzers.smb.analyzer import __all__ as _analyzer_all
from sensor.analyzers.smb.plugin import SmbPlugin

PLUGIN = SmbPlugin()

__all__ = [*_analyzer_all, "SmbPlugin", "PLUGIN"]
