"""TLS: the ClientHello's server name (``clienthello``) and the plugin whose
tap reads it from a flow's first client bytes (``plugin``; FTPS asks for it
by name)."""

from sensor.analyzers.tls.clienthello import MAX_HANDSHAKE_BYTES, parse_tls_client_hello_sni
from sensor.analyzers.tls.plugin import SNI_SCAN_BYTES, TlsPlugin

PLUGIN = TlsPlugin()

__all__ = ["MAX_HANDSHAKE_BYTES", "parse_tls_client_hello_sni", "SNI_SCAN_BYTES", "TlsPlugin", "PLUGIN"]
