"""TLS as a tap: the server name of a connection's ClientHello.

No ports of its own: a plugin whose connection is (or turns) TLS asks for
the tap by name (``ctx.start_tap("tls")``; FTPS on 990 and 989, after
``AUTH TLS``, and its data channels). The tap reads the client's first
bytes in packet order, at most ``SNI_SCAN_BYTES``, and sets the record's
``TlsSni``; it stops at the name, at that bound, or at a first byte that is
not a TLS handshake record."""

from __future__ import annotations

from sensor.analyzers.base import FlowContext, Plugin, Tap
from sensor.analyzers.tls.clienthello import parse_tls_client_hello_sni

SNI_SCAN_BYTES = 16 * 1024  # client bytes searched for a TLS ClientHello


class SniTap(Tap):
    __slots__ = ("ctx", "buf")

    def __init__(self, ctx: FlowContext) -> None:
        self.ctx = ctx
        self.buf = bytearray()

    def on_payload(self, from_orig: bool, payload: bytes) -> bool:
        if not from_orig:
            return True
        buf = self.buf
        buf += payload[: SNI_SCAN_BYTES - len(buf)]
        sni = parse_tls_client_hello_sni(bytes(buf))
        if sni:
            self.ctx.set_field("TlsSni", sni)
            return False
        # go on while under the bound and the bytes may still be a handshake record
        return len(buf) < SNI_SCAN_BYTES and (not buf or buf[0] == 0x16)


class TlsPlugin(Plugin):
    name = "tls"

    def tap(self, ctx: FlowContext) -> Tap | None:
        return SniTap(ctx)
