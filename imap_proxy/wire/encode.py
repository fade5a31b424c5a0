"""Encoding of rewritten commands and responses into framed `Message`s.

How this works: messages the proxy rewrites (or makes up) are built with a
`MessageBuilder`: text goes into the current line; a literal closes the line with its
announcement (`{n}` by default, `{n+}` when the caller passes the LITERAL+ marker, `~{n}`
for binary) and is stored beside it, so the result is a `Message` whose lines and
literals the session can send with proper synchronisation. Untouched messages are never
re-encoded: they go out as their original bytes.

Strings choose their own form: an atom when every octet is an ATOM-CHAR (and it does not
read as NIL), a quoted string when 7-bit printable, otherwise a literal. Mailbox names
follow Dovecot: INBOX (any case) stays an atom, any other name is quoted (or a literal),
which legacy servers parse most reliably. The `*_value` functions give the `Value` a
rewritten argument should be, the `encode_*` functions the token text.

`parse_command(encode_command(...))` and `parse_response(encode_response(...))` give back
what was encoded (tested with hypothesis), with two documented normalisations: a `Quoted`
holding CR, LF or NUL is sent as a literal, and the atom `NIL` reads back as `Nil()`.
Values that cannot be sent at all (an unkept literal, an atom with delimiters) raise
ValueError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final, assert_never

from imap_proxy.wire.errors import ProtocolError, Side
from imap_proxy.wire.lexer import Lexer
from imap_proxy.wire.message import Message
from imap_proxy.wire.response import (
    CapabilityData,
    Continuation,
    FetchData,
    GenericUntagged,
    IdData,
    ListData,
    NumberData,
    Response,
    ResponseCode,
    StatusData,
    StatusResponse,
)
from imap_proxy.wire.syntax import NIL, Atom, LiteralString, Nil, ParenList, Quoted, Value

CRLF: Final = b"\r\n"
# ASTRING-CHAR (RFC 3501): ATOM-CHAR plus "]"; less "[", which would open a section.
_ASTRING_ATOM: Final = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\[]+')
_QUOTABLE: Final = re.compile(rb"[\x20-\x7e]*")
_SENDABLE_QUOTED: Final = re.compile(rb"[^\x00\r\n]*")
_TEXT: Final = re.compile(rb"[^\x00\r\n]*")


class MessageBuilder:
    """Accumulates lines and literals; `finish()` ends the last line and returns a Message."""

    def __init__(self, literal_marker: bytes = b"") -> None:
        if literal_marker not in (b"", b"+", b"-"):
            raise ValueError(f"invalid literal marker {literal_marker!r}")
        self._marker = literal_marker
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._current = bytearray()

    def text(self, data: bytes) -> MessageBuilder:
        self._current += data
        return self

    def literal(self, data: bytes, *, binary: bool = False) -> MessageBuilder:
        prefix = b"~" if binary else b""
        self._current += b"%s{%d%s}\r\n" % (prefix, len(data), self._marker)
        self._lines.append(bytes(self._current))
        self._literals.append(data)
        self._current.clear()
        return self

    def value(self, value: Value) -> MessageBuilder:
        if isinstance(value, ParenList):
            self._current += b"("
            for index, item in enumerate(value.items):
                if index:
                    self._current += b" "
                self.value(item)
            self._current += b")"
        elif isinstance(value, Atom):
            if _bad_atom(value.value):
                raise ValueError(f"cannot send {value.value[:40]!r} as an atom")
            self._current += value.value
        elif isinstance(value, Quoted):
            if _SENDABLE_QUOTED.fullmatch(value.value):
                self._current += quote(value.value)
            else:
                self.literal(value.value)
        elif isinstance(value, LiteralString):
            if value.value is None:
                raise ValueError("cannot send a literal whose octets were not kept")
            self.literal(value.value, binary=value.binary)
        elif isinstance(value, Nil):
            self._current += b"NIL"
        return self

    def values(self, values: Iterable[Value]) -> MessageBuilder:
        """Values separated by single spaces, with a leading space before each."""
        for item in values:
            self._current += b" "
            self.value(item)
        return self

    def finish(self, terminator: bytes = CRLF) -> Message:
        lines = (*self._lines, bytes(self._current) + terminator)
        return Message(lines, tuple(self._literals))


def _bad_atom(value: bytes) -> bool:
    """True unless the lexer reads `value` back as this one atom (or as NIL)."""
    try:
        lexer = Lexer(Message.from_line(value), Side.CLIENT, max_depth=1)
        read = lexer.read_value()
    except ProtocolError:
        return True
    return not lexer.at_end() or read not in (Atom(value), NIL)


def quote(data: bytes) -> bytes:
    """`data` as a quoted string (no check that it may be quoted)."""
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring_value(data: bytes) -> Value:
    """The `Value` an astring argument should be: atom, quoted, or literal."""
    if _ASTRING_ATOM.fullmatch(data) and data.upper() != b"NIL":
        return Atom(data)
    return string_value(data)


def string_value(data: bytes) -> Value:
    """A string that must not be an atom (RFC 3501 `string`): quoted or literal."""
    if _QUOTABLE.fullmatch(data):
        return Quoted(data)
    return LiteralString(data)


def mailbox_value(name: bytes) -> Value:
    """A mailbox name the Dovecot way: INBOX (any case) as an atom, others quoted/literal."""
    if name.upper() == b"INBOX":
        return Atom(name)
    return string_value(name)


def _token(value: Value) -> tuple[bytes, bytes | None]:
    if isinstance(value, LiteralString) and value.value is not None:
        return b"{%d}" % len(value.value), value.value
    message = MessageBuilder().value(value).finish(b"")
    return message.first_line, None


def encode_astring(value: bytes) -> tuple[bytes, bytes | None]:
    """(token text, literal octets or None); a literal's token text ends with `{n}`."""
    return _token(astring_value(value))


def encode_mailbox(name: bytes) -> tuple[bytes, bytes | None]:
    """Like `encode_astring`, for a (mUTF-7) mailbox name; see `mailbox_value`."""
    return _token(mailbox_value(name))


def encode_value(value: Value) -> Message:
    """One value as a message fragment: the last line has no terminator."""
    return MessageBuilder().value(value).finish(b"")


def encode_command(
    tag: bytes, name: str, args: Sequence[Value], *, literal_marker: bytes = b""
) -> Message:
    """`tag NAME args...` with synchronizing literals (or `literal_marker` b"+"/b"-")."""
    builder = MessageBuilder(literal_marker).text(tag + b" " + name.encode("ascii"))
    return builder.values(args).finish()


def encode_untagged(kind: str, args: Sequence[Value], *, number: int | None = None) -> Message:
    """`* [number] KIND args...` (server literals are always synchronizing `{n}`)."""
    head = b"* " if number is None else b"* %d " % number
    return MessageBuilder().text(head + kind.encode("ascii")).values(args).finish()


def encode_capability_data(capabilities: Iterable[str]) -> bytes:
    """`* CAPABILITY a b\\r\\n`."""
    return b" ".join([b"* CAPABILITY", *(cap.encode("ascii") for cap in capabilities)]) + CRLF


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _id_value(params: Sequence[tuple[bytes | str, bytes | str | None]] | None) -> Value:
    if params is None:
        return Nil()
    items: list[Value] = []
    for field, field_value in params:
        items.append(string_value(_as_bytes(field)))
        items.append(Nil() if field_value is None else string_value(_as_bytes(field_value)))
    return ParenList(tuple(items))


def encode_id_response(params: Sequence[tuple[bytes | str, bytes | str | None]] | None) -> bytes:
    """`* ID ("name" "x")\\r\\n` or `* ID NIL\\r\\n` (literals inline where needed)."""
    return encode_untagged("ID", [_id_value(params)]).to_bytes()


def _checked_text(text: bytes) -> bytes:
    if not _TEXT.fullmatch(text):
        raise ValueError("response text cannot hold CR, LF or NUL")
    return text


def encode_status_response(tag: bytes | None, status: str, code: str | None, text: str) -> bytes:
    """`tag OK [code] text\\r\\n` (`*` for tag None); `code` is the text inside the brackets."""
    head = b"*" if tag is None else tag
    parts = [head, status.upper().encode("ascii")]
    if code is not None:
        parts.append(b"[" + _checked_text(code.encode("utf-8")) + b"]")
    if text:
        parts.append(_checked_text(text.encode("utf-8")))
    return b" ".join(parts) + CRLF


def encode_response_code(code: ResponseCode) -> bytes:
    """`[NAME args]` on one line (a literal cannot appear in a response code)."""
    if isinstance(code.args, bytes):
        inner = code.args
    else:
        fragment = MessageBuilder().values(code.args).finish(b"")
        if fragment.literals:
            raise ValueError("a response code argument needs a literal")
        inner = fragment.first_line.removeprefix(b" ")  # values() puts a space before each
    head = code.name.encode("ascii")
    return b"[" + _checked_text(head + (b" " + inner if inner else b"")) + b"]"


def encode_response(response: Response) -> Message:
    """Any parsed response, re-encoded (the inverse of `parse_response`)."""
    if isinstance(response, Continuation):
        return Message.from_line(b"+ " + _checked_text(response.text) + CRLF)
    if isinstance(response, StatusResponse):
        head = b"*" if response.tag is None else response.tag
        line = head + b" " + response.status.encode("ascii")
        if response.code is not None:
            line += b" " + encode_response_code(response.code)
        if response.text:
            line += b" " + _checked_text(response.text)
        return Message.from_line(line + CRLF)
    if isinstance(response, CapabilityData):
        return Message.from_line(encode_capability_data(response.capabilities))
    if isinstance(response, ListData):
        attributes = ParenList(tuple(Atom(a.encode("ascii")) for a in response.attributes))
        delimiter: Value = Nil() if response.delimiter is None else Quoted(response.delimiter)
        args = (attributes, delimiter, mailbox_value(response.mailbox), *response.extended)
        return encode_untagged(response.kind, args)
    if isinstance(response, StatusData):
        items: list[Value] = []
        for name, count in response.items:
            items += [Atom(name.encode("ascii")), Atom(b"%d" % count)]
        return encode_untagged("STATUS", [mailbox_value(response.mailbox), ParenList(tuple(items))])
    if isinstance(response, FetchData):
        fetch_items: list[Value] = []
        for name, value in response.items:
            fetch_items += [Atom(name.encode("ascii")), value]
        return encode_untagged("FETCH", [ParenList(tuple(fetch_items))], number=response.number)
    if isinstance(response, NumberData):
        return encode_untagged(response.kind, [], number=response.number)
    if isinstance(response, IdData):
        return encode_untagged("ID", [_id_value(response.params)])
    if isinstance(response, GenericUntagged):
        return encode_untagged(response.kind, response.args, number=response.number)
    assert_never(response)
