"""TLS ClientHello helpers (pure; never raise on any input).

Used by the pipeline for FTPS: implicit FTPS (TLS from the first byte, port
990) and explicit FTPS after the FTP analyzer reports ``FtpTlsUpgrade`` (the
client's next bytes are its ClientHello). The server name a client asks for is
the only name visible in an FTPS session, so it is what allow rules key on.

API:

``parse_tls_client_hello_sni(data: bytes) -> str | None``
    ``data`` is the first bytes the client sent on the (TLS part of the)
    connection. Returns the first ``host_name`` entry of the server_name
    extension (RFC 6066), decoded as UTF-8 with ``errors="backslashreplace"``
    (the project's convention, as in the FTP and TFTP analyzers: always a
    valid ``str``; an invalid byte 0xff reads ``\\xff``). Returns
    None when the bytes are not a TLS handshake, not a ClientHello, carry no
    SNI, or are cut before the SNI ends. It reassembles a ClientHello that is
    split over several TLS records (large post-quantum key shares), reading at
    most ``MAX_HANDSHAKE_BYTES`` of handshake data.

    Truncation is not an error: a caller that has only part of the first
    flight gets None and may call again with more bytes (bound its own buffer,
    e.g. to ``MAX_HANDSHAKE_BYTES + 5 * 4`` bytes, and stop once it has that
    much or the connection's second direction speaks).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_HANDSHAKE_BYTES", "parse_tls_client_hello_sni"]

MAX_HANDSHAKE_BYTES: Final = 1 << 16
"""Bound on the reassembled handshake bytes examined (a ClientHello is a few
hundred bytes to ~2 KiB in practice; 64 KiB leaves room for odd ones)."""

_CONTENT_HANDSHAKE: Final = 0x16
_HANDSHAKE_CLIENT_HELLO: Final = 0x01
_EXT_SERVER_NAME: Final = 0x0000
_NAME_TYPE_HOST: Final = 0x00
_MAX_RECORD: Final = (1 << 14) + 2048  # RFC 8446 5.2 TLSCiphertext bound


class _Short(Exception):
    """Internal: a length points past the bytes we have."""


class _Reader:
    __slots__ = ("_buf", "_pos", "_end")

    def __init__(self, buf: bytes, start: int = 0, end: int | None = None) -> None:
        self._buf = buf
        self._pos = start
        self._end = len(buf) if end is None else min(end, len(buf))

    def take(self, n: int) -> bytes:
        if self._pos + n > self._end:
            raise _Short
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def skip(self, n: int) -> None:
        self.take(n)

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))

    def sub(self, len_bytes: int) -> _Reader:
        """Reader over the next length-prefixed block, cut to the bytes we have
        (a truncated block can still yield the entries that are complete)."""
        n = self.uint(len_bytes)
        sub = _Reader(self._buf, self._pos, min(self._pos + n, self._end))
        self._pos = min(self._pos + n, self._end)
        return sub

    @property
    def remaining(self) -> int:
        return self._end - self._pos


def _handshake_bytes(data: bytes) -> bytes | None:
    """Concatenate the payloads of the leading handshake records.

    Stops at the first non-handshake record, at a record that is cut, once the
    first handshake message is complete, or at MAX_HANDSHAKE_BYTES."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(data) and len(out) < MAX_HANDSHAKE_BYTES:
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != _CONTENT_HANDSHAKE or major != 0x03 or length == 0 or length > _MAX_RECORD:
            break
        out += data[pos + 5 : pos + 5 + length]  # may be cut: keep what is there
        pos += 5 + length
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            break
    if not out:
        return None
    return bytes(out[:MAX_HANDSHAKE_BYTES])


def _sni_from_client_hello(hs: bytes) -> str | None:
    r = _Reader(hs)
    if r.uint(1) != _HANDSHAKE_CLIENT_HELLO:
        return None
    body_len = r.uint(3)
    body = _Reader(hs, 4, 4 + body_len)
    body.skip(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    body.vector(2)  # cipher_suites
    body.vector(1)  # legacy_compression_methods
    if body.remaining == 0:
        return None  # SSLv3-style hello without extensions
    exts = body.sub(2)
    while exts.remaining:
        ext_type = exts.uint(2)
        ext = exts.vector(2)
        if ext_type != _EXT_SERVER_NAME:
            continue
        names = _Reader(_Reader(ext).vector(2))
        while names.remaining:
            name_type = names.uint(1)
            name = names.vector(2)
            if name_type == _NAME_TYPE_HOST and name:
                return name.decode("utf-8", "backslashreplace")
        return None
    return None


def parse_tls_client_hello_sni(data: bytes) -> str | None:
    """Server name from a TLS ClientHello, or None (see module docstring)."""
    try:
        hs = _handshake_bytes(bytes(data))
        if hs is None:
            return None
        return _sni_from_client_hello(hs)
    except _Short:
        return None
