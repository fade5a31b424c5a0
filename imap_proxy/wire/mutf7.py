"""Modified UTF-7 (RFC 3501 §5.1.3), the encoding of IMAP4rev1 mailbox names.

How this works: printable US-ASCII (0x20-0x7E) stands for itself, except `&`, written
`&-`. Any run of other characters is written as `&`, the modified BASE64 (`,` instead of
`/`, no `=` padding) of its UTF-16BE form, and `-`.

`decode_mutf7` is strict, so that one name has one spelling (the proxy compares names):
it raises `MUTF7Error` (a `ValueError`) for octets outside 0x20-0x7E, an unterminated
`&`, characters outside the modified BASE64 alphabet, leftover bits that are not zero or
do not fit, UTF-16 that is not well formed (lone surrogates), and non-minimal forms: a
printable ASCII character inside a BASE64 run (`&AGE-` for `a`). Two adjacent BASE64 runs
(`&AOk-&AOk-`) are accepted: they decode unambiguously.
"""

from __future__ import annotations

import binascii
from typing import Final

_AMPERSAND: Final = ord("&")
_MINUS: Final = ord("-")
_B64_VALUES: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_B64_ALPHABET: Final = frozenset(_B64_VALUES)


class MUTF7Error(ValueError):
    """The octets are not canonical modified UTF-7."""


def _is_direct(char: str) -> bool:
    return " " <= char <= "~"


def _encode_run(run: str) -> bytes:
    utf16 = run.encode("utf-16-be")
    b64 = binascii.b2a_base64(utf16, newline=False).rstrip(b"=").replace(b"/", b",")
    return b"&" + b64 + b"-"


def encode_mutf7(name: str) -> bytes:
    """Encode a mailbox name; lone surrogates raise UnicodeEncodeError (a ValueError)."""
    out = bytearray()
    run_start: int | None = None
    for index, char in enumerate(name):
        if _is_direct(char):
            if run_start is not None:
                out += _encode_run(name[run_start:index])
                run_start = None
            out += b"&-" if char == "&" else char.encode("ascii")
        elif run_start is None:
            run_start = index
    if run_start is not None:
        out += _encode_run(name[run_start:])
    return bytes(out)


def _decode_run(b64: bytes) -> str:
    if not b64:
        raise MUTF7Error("empty BASE64 run")
    if not _B64_ALPHABET.issuperset(b64):
        raise MUTF7Error(f"invalid modified BASE64 in {b64[:40]!r}")
    total_bits = 6 * len(b64)
    if total_bits % 16 >= 6:
        raise MUTF7Error(f"modified BASE64 run of bad length: {b64[:40]!r}")
    padded = b64.replace(b",", b"/") + b"=" * (-len(b64) % 4)
    try:
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as error:
        raise MUTF7Error(f"invalid modified BASE64: {error}") from None
    # The bits beyond the last whole UTF-16 unit (fewer than 6, all in the last character)
    # must be zero, or two spellings would decode to one name.
    spare_bits = total_bits % 16
    if spare_bits and _B64_VALUES.index(b64[-1]) & ((1 << spare_bits) - 1):
        raise MUTF7Error("non-zero padding bits in modified BASE64")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise MUTF7Error("modified BASE64 holds malformed UTF-16") from None
    if any(_is_direct(char) for char in text):
        raise MUTF7Error("printable ASCII must not be BASE64-encoded")
    return text


def decode_mutf7(data: bytes) -> str:
    """Decode a mailbox name; MUTF7Error (a ValueError) if it is not canonical mUTF-7."""
    parts: list[str] = []
    pos = 0
    while pos < len(data):
        amp = data.find(b"&", pos)
        direct = data[pos:] if amp < 0 else data[pos:amp]
        if direct and (min(direct) < 0x20 or max(direct) > 0x7E):
            raise MUTF7Error(f"octet outside printable ASCII in {data[:60]!r}")
        parts.append(direct.decode("ascii"))
        if amp < 0:
            break
        end = data.find(b"-", amp + 1)
        if end < 0:
            raise MUTF7Error(f"unterminated & in {data[:60]!r}")
        if end == amp + 1:
            parts.append("&")
        else:
            parts.append(_decode_run(data[amp + 1 : end]))
        pos = end + 1
    return "".join(parts)
