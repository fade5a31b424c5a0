"""Modified UTF-7 (RFC 3501 section 5.1.3): examples, strictness, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imap_proxy.wire.mutf7 import MUTF7Error, decode_mutf7, encode_mutf7


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("&", b"&-"),
        ("Tom & Jerry", b"Tom &- Jerry"),
        ("", b""),
        ("INBOX", b"INBOX"),
        ("Entw\u00fcrfe", b"Entw&APw-rfe"),
        ("Gel\u00f6schte Elemente", b"Gel&APY-schte Elemente"),
        ("\u00e9\u00e9", b"&AOkA6Q-"),
        ("\U0001f600", b"&2D3eAA-"),
        ("a\tb", b"a&AAk-b"),
    ],
)
def test_examples(text: str, encoded: bytes) -> None:
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


def test_adjacent_runs_decode() -> None:
    assert decode_mutf7(b"&AOk-&AOk-") == "\u00e9\u00e9"
    assert decode_mutf7(b"&-&AOk-") == "&\u00e9"


@pytest.mark.parametrize(
    "bad",
    [
        b"&AGE-",  # "a" encoded: printable ASCII must be direct
        b"&ACY-",  # "&" encoded instead of "&-"
        b"&",  # unterminated
        b"abc&U,BTFw",  # unterminated
        b"&U,BTF-",  # leftover bits that do not fit
        b"&U,BTFx-",  # non-zero padding bits
        b"&U/BTFw-",  # "/" is not in the modified alphabet
        b"&U=BTFw-",
        b"&2D0-",  # lone high surrogate
        b"&3gA-",  # lone low surrogate
        b"caf\xc3\xa9",  # raw 8-bit
        b"a\tb",  # control octet
        b"a\x7fb",
        b"&A-",  # too short for a UTF-16 unit
    ],
)
def test_invalid_input_raises(bad: bytes) -> None:
    with pytest.raises(MUTF7Error):
        decode_mutf7(bad)


def test_error_is_a_value_error() -> None:
    assert issubclass(MUTF7Error, ValueError)


@given(st.text())
def test_round_trip_from_text(text: str) -> None:
    encoded = encode_mutf7(text)
    assert all(0x20 <= octet <= 0x7E for octet in encoded)
    assert decode_mutf7(encoded) == text


@given(st.binary(max_size=60))
def test_any_bytes_decode_canonically_or_raise(data: bytes) -> None:
    try:
        text = decode_mutf7(data)
    except ValueError:
        return
    # Whatever decodes re-encodes to the same text, and (adjacent runs aside) the same bytes.
    assert decode_mutf7(encode_mutf7(text)) == text
    if b"-&" not in data:
        assert encode_mutf7(text) == data


_MUTF7_PIECES = st.lists(
    st.sampled_from([b"&", b"-", b"A", b"O", b"k", b"2D3eAA", b",", b"+", b"a", b"&-", b"U,BTFw"]),
    max_size=12,
).map(b"".join)


@given(_MUTF7_PIECES)
def test_mutf7_shaped_bytes_decode_canonically_or_raise(data: bytes) -> None:
    try:
        text = decode_mutf7(data)
    except ValueError:
        return
    if b"-&" not in data:
        assert encode_mutf7(text) == data
