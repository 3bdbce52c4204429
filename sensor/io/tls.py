"""The TLS client side of syslog over TLS (RFC 5425): one ``ssl.SSLContext``
built when the sink is built, so a CA, certificate or key that does not load
is a bad-input error (exit 2) before any packet is read, and every reconnect
verifies the collector the same way. Never an unverified connection: the
collector's certificate must chain to ``ca`` (else the system's CAs) and carry
``server_name`` (else the host connected to). See docs/outputs.md, "syslog"."""

from __future__ import annotations

import ssl

from sensor.core.config import ConfigError, SyslogOutput

MIN_TLS = ssl.TLSVersion.TLSv1_2  # RFC 9662 updates RFC 5425: TLS 1.2 at least


def client_context(cfg: SyslogOutput, src: str = "syslog over TLS") -> ssl.SSLContext:
    """The verifying client context for ``cfg`` (protocol tls); a file that
    cannot be read or is no certificate/key raises ``ConfigError`` naming it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = MIN_TLS
    if cfg.ca is not None:
        try:
            ctx.load_verify_locations(cafile=cfg.ca)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ConfigError(src, "ca", f"{cfg.ca}: not a readable PEM CA file ({_why(e)})") from None
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cfg.cert is not None:
        try:
            ctx.load_cert_chain(cfg.cert, cfg.key)
        except (OSError, ValueError) as e:
            what = f"{cfg.cert}" + (f" / {cfg.key}" if cfg.key else "")
            raise ConfigError(src, "cert", f"{what}: not a readable PEM certificate and key ({_why(e)})") from None
    return ctx


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e) or type(e).__name__
