"""Octet-counted syslog frames (RFC 6587 3.4.1, RFC 5425 4.3), as the tests' collectors read them."""

from __future__ import annotations


def octet_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole ``MSG-LEN SP MSG`` frames at the start of ``buf``, and the rest (an incomplete frame)."""
    frames = []
    while b" " in buf:
        n, _, rest = buf.partition(b" ")
        assert n.isdigit(), buf[:40]
        if len(rest) < int(n):
            break
        frames.append(rest[: int(n)])
        buf = rest[int(n) :]
    return frames, buf
