"""Tests for sensor.analyzers.tls.parse_tls_client_hello_sni.

Real ClientHellos come from this interpreter's OpenSSL through memory BIOs
(tests/support/tls.py, no network); edge cases are built by hand with ``client_hello()`` below.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.analyzers.tls import MAX_HANDSHAKE_BYTES, parse_tls_client_hello_sni
from tests.support.tls import openssl_client_hello


def _vec(n: int, body: bytes) -> bytes:
    return len(body).to_bytes(n, "big") + body


def sni_ext(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(bytes([t]) + _vec(2, name) for t, name in entries)
    return struct.pack("!H", 0) + _vec(2, _vec(2, names))


def client_hello(extensions: bytes | None, record_split: int | None = None) -> bytes:
    body = (
        b"\x03\x03"
        + bytes(32)  # legacy_version, random
        + _vec(1, b"")  # session id
        + _vec(2, b"\x13\x01\x13\x02")  # cipher suites
        + _vec(1, b"\x00")  # compression
    )
    if extensions is not None:
        body += _vec(2, extensions)
    hs = b"\x01" + _vec(3, body)
    if record_split is None:
        return b"\x16\x03\x01" + _vec(2, hs)
    first, second = hs[:record_split], hs[record_split:]
    return b"\x16\x03\x01" + _vec(2, first) + b"\x16\x03\x01" + _vec(2, second)


GREASE_EXT = b"\x0a\x0a" + _vec(2, b"")  # an unrelated extension before SNI


def test_real_openssl_client_hello_sni() -> None:
    hello = openssl_client_hello("files.example.com")
    assert hello[0] == 0x16
    assert parse_tls_client_hello_sni(hello) == "files.example.com"


def test_real_openssl_client_hello_without_sni() -> None:
    assert parse_tls_client_hello_sni(openssl_client_hello(None)) is None


def test_real_hello_every_prefix_is_none_or_the_name() -> None:
    hello = openssl_client_hello("ftp.example.org")
    results = {parse_tls_client_hello_sni(hello[:n]) for n in range(len(hello) + 1)}
    assert results == {None, "ftp.example.org"}
    # once the SNI is complete every longer prefix keeps returning it
    first = next(n for n in range(len(hello) + 1) if parse_tls_client_hello_sni(hello[:n]))
    assert all(parse_tls_client_hello_sni(hello[:n]) == "ftp.example.org" for n in range(first, len(hello) + 1))
    assert first < len(hello)  # SNI comes before e.g. key shares: truncation tolerated


def test_handmade_hello_with_other_extension_first() -> None:
    hello = client_hello(GREASE_EXT + sni_ext((0, b"upload.example.net")))
    assert parse_tls_client_hello_sni(hello) == "upload.example.net"


def test_hello_split_across_two_records() -> None:
    hello = client_hello(sni_ext((0, b"split.example.com")), record_split=20)
    assert parse_tls_client_hello_sni(hello) == "split.example.com"
    assert parse_tls_client_hello_sni(hello[:30]) is None


def test_non_host_name_type_skipped() -> None:
    hello = client_hello(sni_ext((7, b"odd"), (0, b"real.example.com")))
    assert parse_tls_client_hello_sni(hello) == "real.example.com"
    assert parse_tls_client_hello_sni(client_hello(sni_ext((7, b"odd")))) is None


def test_hello_without_extensions() -> None:
    assert parse_tls_client_hello_sni(client_hello(None)) is None


def test_invalid_utf8_name_is_backslash_escaped_str() -> None:
    hello = client_hello(sni_ext((0, b"bad\xffname")))
    assert parse_tls_client_hello_sni(hello) == "bad\\xffname"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x16",
        b"\x16\x03\x01\x00",
        b"USER anonymous\r\n",
        b"\x17\x03\x03\x00\x05hello",  # application data, not handshake
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello type
        b"\x16\x02\x00\x00\x05\x01\x00\x00\x01\x00",  # SSLv2-ish version
        b"\x16\x03\x01\xff\xff" + b"\x01" * 10,  # record longer than allowed
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    assert parse_tls_client_hello_sni(data) is None


def test_lengths_pointing_past_the_end() -> None:
    hello = bytearray(client_hello(sni_ext((0, b"x.example"))))
    # inflate the host name length: the name now runs past the extension
    i = hello.index(b"x.example")
    hello[i - 2 : i] = b"\xff\xff"
    assert parse_tls_client_hello_sni(bytes(hello)) is None


def test_reassembly_is_bounded() -> None:
    # many 1-byte handshake records: we stop after MAX_HANDSHAKE_BYTES of payload
    rec = b"\x16\x03\x01\x00\x01\x01"
    data = b"\x16\x03\x01\x00\x04\x01\xff\xff\xff" + rec * (MAX_HANDSHAKE_BYTES + 10)
    assert parse_tls_client_hello_sni(data) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    got = parse_tls_client_hello_sni(data)
    assert got is None or isinstance(got, str)


@settings(max_examples=200, deadline=None)
@given(
    name=st.binary(min_size=1, max_size=80),
    cut=st.integers(min_value=0, max_value=400),
    flip=st.tuples(st.integers(min_value=0, max_value=400), st.integers(0, 255)),
)
def test_built_hellos_roundtrip_and_mutations_never_raise(name: bytes, cut: int, flip: tuple[int, int]) -> None:
    hello = client_hello(GREASE_EXT + sni_ext((0, name)))
    assert parse_tls_client_hello_sni(hello) == name.decode("utf-8", "backslashreplace")
    got = parse_tls_client_hello_sni(hello[:cut])
    assert got is None or got == name.decode("utf-8", "backslashreplace")
    mutated = bytearray(hello)
    pos, value = flip
    if pos < len(mutated):
        mutated[pos] = value
    got = parse_tls_client_hello_sni(bytes(mutated))
    assert got is None or isinstance(got, str)
