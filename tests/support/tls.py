"""A real TLS ClientHello from this interpreter's OpenSSL, through memory BIOs
(no network)."""

from __future__ import annotations

import ssl


def openssl_client_hello(server_hostname: str | None) -> bytes:
    """The first flight of a real OpenSSL client (what curl/lftp send)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:  # the client waits for the ServerHello: its ClientHello is out
        return outgoing.read()
    raise AssertionError("a TLS client handshake completed without a server")
