"""Stub FETCH responses for messages expunged by another session (RFC 2180 §4.1.3).

How this works: `stub_fetch(number, uid, items)` builds `* n FETCH (...)` for a message
the upstream no longer has, with a value of the right type for every requested item:
`UID` first (always, when known: clients key on it), `FLAGS ()`, `RFC822.SIZE 0`, a valid
`INTERNALDATE` (RFC 2180's `00-Jan-0000` breaks strict parsers), an all-NIL `ENVELOPE`,
the minimal text/plain `BODY`/`BODYSTRUCTURE`, and an empty string for every body item
(`BODY[…]`, `BODY.PEEK[…]<o.n>` -> `BODY[…]<o>`, `BINARY[…]`, `RFC822*`). Empty strings
are sent as `{0}` literals: Python's imaplib hands literal data to its caller as a
(header, data) pair but a quoted "" only as part of the line, which client code indexing
`data[0][1]` cannot take; every other parser reads `{0}` as the empty string too. Items
with no sensible empty value (extensions the stub does not know) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from imap_proxy.wire.syntax import split_section

EPOCH_INTERNALDATE: Final = b'"01-Jan-1970 00:00:00 +0000"'
NIL_ENVELOPE: Final = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
MINIMAL_BODY: Final = b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 0 0)'
EMPTY_STRING: Final = b"{0}\r\n"  # a literal: the line goes on after it

_SIMPLE: Final[dict[bytes, bytes]] = {
    b"FLAGS": b"()",
    b"RFC822.SIZE": b"0",
    b"INTERNALDATE": EPOCH_INTERNALDATE,
    b"ENVELOPE": NIL_ENVELOPE,
    b"BODY": MINIMAL_BODY,
    b"BODYSTRUCTURE": MINIMAL_BODY,
    b"RFC822": EMPTY_STRING,
    b"RFC822.HEADER": EMPTY_STRING,
    b"RFC822.TEXT": EMPTY_STRING,
    b"MODSEQ": b"(1)",  # RFC 7162: mod-sequence-value is at least 1
    b"SAVEDATE": b"NIL",  # RFC 8514 allows NIL
    b"PREVIEW": b"NIL",  # RFC 8970 allows NIL
}


def stub_item(item: bytes) -> tuple[bytes, bytes] | None:
    """(response item name, stub value) for one requested FETCH item, or None to leave
    it out. `item` is as `parse_fetch` gives it (name uppercase outside brackets)."""
    parts = split_section(item)
    name = parts.name.upper()
    if parts.section is None:
        if name == b"UID":
            return None  # the caller puts UID first
        value = _SIMPLE.get(name)
        return None if value is None else (name, value)
    section = b"[" + parts.section + b"]"
    if name in (b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK"):
        base = name.removesuffix(b".PEEK")
        origin = b""
        if parts.partial is not None:
            origin = b"<" + parts.partial.split(b".", 1)[0] + b">"
        return base + section + origin, EMPTY_STRING
    if name == b"BINARY.SIZE":
        return name + section, b"0"
    return None


def stub_fetch(number: int, uid: int | None, items: Iterable[bytes]) -> bytes:
    """The whole stub response, CRLF-terminated (literals inline, as they are sent)."""
    parts: list[bytes] = [] if uid is None else [b"UID %d" % uid]
    seen: set[bytes] = set()
    for item in items:
        stub = stub_item(item)
        if stub is None or stub[0] in seen:
            continue
        seen.add(stub[0])
        parts.append(stub[0] + b" " + stub[1])
    if not parts:
        parts.append(b"FLAGS ()")  # msg-att needs one item at least
    return b"* %d FETCH (" % number + b" ".join(parts) + b")\r\n"
